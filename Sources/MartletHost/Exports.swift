// The VM definition and the API's request bodies are MartletHostModel's (kept free of the
// HTTP stack for martlet-fuzz); whoever uses MartletHost uses them too.
@_exported import MartletHostModel
