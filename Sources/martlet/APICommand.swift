import ArgumentParser
import Foundation
import Logging
import MartletCore
import MartletHost
import Synchronization

struct APICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api",
        abstract: "The local REST API of this host (OpenAPI: Sources/MartletHost/openapi.yaml).",
        subcommands: [APIServeCommand.self])
}

struct APIServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the API on a unix socket until stopped (SIGTERM/SIGINT).")

    @Option(help: "The unix socket to listen on (mode 0600: root only).")
    var socket = "/run/martlet/api.sock"

    func run() throws {
        MartletLogging.bootstrap(level: .info)
        let server = APIServer(
            host: VMHost(), socketPath: socket, logger: Logger(label: "martlet.api"))
        // The root command is synchronous (the builder's commands are), so the server runs in
        // a task while this thread waits for it.
        let outcome = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            do { try await server.run() } catch { outcome.withLock { $0 = "\(error)" } }
            done.signal()
        }
        done.wait()
        if let message = outcome.withLock({ $0 }) {
            FileHandle.standardError.write(Data("martlet api serve: \(message)\n".utf8))
            throw ExitCode(1)
        }
    }
}
