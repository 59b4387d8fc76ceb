import Foundation

// The installer lands with its own issue; until then say so instead of pretending.
FileHandle.standardError.write(Data("martlet-installer: not available yet in this build\n".utf8))
exit(69)
