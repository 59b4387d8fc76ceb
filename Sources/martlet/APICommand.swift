import ArgumentParser
import Foundation
import Logging
import MartletCore
import MartletHost

struct APICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api",
        abstract: "The local REST API of this host (OpenAPI: Sources/MartletHost/openapi.yaml).",
        subcommands: [APIServeCommand.self])
}

struct APIServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Serve the API on a unix socket until stopped.")

    @Option(help: "The unix socket to listen on (mode 0600: root only).")
    var socket = "/run/martlet/api.sock"

    func run() async throws {
        MartletLogging.bootstrap(level: .info)
        let server = APIServer(host: VMHost(), socketPath: socket, logger: Logger(label: "martlet.api"))
        try await server.run()
    }
}
