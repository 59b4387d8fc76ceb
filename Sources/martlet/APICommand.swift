import ArgumentParser
import Foundation
import Logging
import MartletCore
import MartletHost
import Synchronization

struct APICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api",
        abstract: "The REST API of this host (OpenAPI: Sources/MartletHost/openapi.yaml).",
        discussion: """
            The API listens on a unix socket for local tools (root only, no credentials) and, \
            as /etc/martlet/api.toml says (default: every address, port 8443), over HTTPS, \
            where every request needs a token from 'martlet api token create'.
            """,
        subcommands: [APIServeCommand.self, APIFingerprintCommand.self, APITokenCommand.self])
}

struct APIServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the API until stopped (SIGTERM/SIGINT).",
        discussion: """
            Makes a self-signed certificate (ECDSA P-256) in /etc/martlet/tls the first time \
            HTTPS is on and none is there, and writes the address and the certificate's \
            fingerprint to the console's login banner (/etc/issue.d/martlet-api.issue).
            """)

    @Option(help: "The unix socket to listen on (mode 0600: root only).")
    var socket = "/run/martlet/api.sock"

    @Flag(help: "Serve the unix socket only, whatever api.toml says.")
    var noHTTPS = false

    func run() throws {
        MartletLogging.bootstrap(level: .info)
        let logger = Logger(label: "martlet.api")
        let host = VMHost()
        let paths = host.paths
        var https: APIServer.HTTPSListener?
        if !noHTTPS {
            do {
                let configuration = try APIConfiguration(path: paths.apiConfiguration)
                if configuration.httpsEnabled { https = httpsListener(configuration, paths, logger) }
            } catch {
                logger.error("HTTPS listener not started, the unix socket serves alone: \(error)")
            }
        }
        let server = APIServer(host: host, socketPath: socket, https: https, logger: logger)
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

extension APIServeCommand {
    /// The HTTPS side as api.toml asks, its certificate made when missing and its banner
    /// written; nil (with the reason in the journal) when the certificate cannot be had, so
    /// the unix socket serves alone.
    func httpsListener(_ configuration: APIConfiguration, _ paths: HostPaths, _ logger: Logger) -> APIServer.HTTPSListener? {
        let certificate = APICertificate(directory: paths.tlsDirectory)
        let fingerprint: String
        do {
            let identity = APICertificate.localIdentity()
            if try certificate.ensure(hostName: identity.hostName, addresses: identity.addresses) {
                logger.notice("made a self-signed certificate for \(identity.hostName) at \(certificate.certificatePath)")
            }
            fingerprint = try certificate.fingerprint()
        } catch {
            logger.error("HTTPS listener not started, the unix socket serves alone: \(error)")
            return nil
        }
        logger.notice("HTTPS on port \(configuration.httpsPort), certificate SHA-256 \(fingerprint)")
        do {
            try APICertificate.writeIssue(
                APICertificate.issueText(port: configuration.httpsPort, fingerprint: fingerprint),
                to: paths.apiIssueFile)
        } catch {
            // The banner is a convenience; the API serves without it.
            logger.warning("\(error)")
        }
        return .init(
            address: configuration.httpsAddress, port: configuration.httpsPort,
            certificate: certificate, tokens: APITokenStore(path: paths.apiTokens), webRoot: paths.webRoot,
            pam: PAMAuthenticator(configurationDirectory: paths.pamDirectory), loginUsers: configuration.loginUsers)
    }
}

struct APIFingerprintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fingerprint",
        abstract: "Print the SHA-256 fingerprint of the API's HTTPS certificate.",
        discussion: "Compare it with what the browser shows for https://HOST:8443/ before you log in.")

    @OptionGroup var options: HostOptions

    struct Fingerprint: Encodable {
        var certificate: String
        var sha256: String
    }

    func run() throws {
        try runHostCommand("api fingerprint", json: options.json) { host in
            let certificate = APICertificate(directory: host.paths.tlsDirectory)
            guard FileManager.default.fileExists(atPath: certificate.certificatePath) else {
                throw MartletError(
                    .notFound, "no certificate at '\(certificate.certificatePath)'",
                    hint: "the API makes one when it first starts with HTTPS on (systemctl start martlet-api)")
            }
            return Fingerprint(certificate: certificate.certificatePath, sha256: try certificate.fingerprint())
        } text: { $0.sha256 }
    }
}

struct APITokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Tokens for the HTTPS API: create, list, revoke.",
        subcommands: [Create.self, List.self, Revoke.self])

    /// A token as shown: never its secret or hash.
    struct Listed: Encodable {
        var name: String
        var readOnly: Bool
        var created: String
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a token and print it; it is shown this once (only its hash is kept).",
            discussion: "Send it as 'Authorization: Bearer TOKEN'.")

        @Argument(help: "A name for the token (who or what uses it).")
        var name: String

        @Flag(help: "The token may only read (GET); anything else is refused with 403.")
        var readOnly = false

        @OptionGroup var options: HostOptions

        struct Created: Encodable {
            var name: String
            var readOnly: Bool
            var token: String
        }

        func run() throws {
            try runHostCommand("api token create", json: options.json) { host in
                let secret = try APITokenStore(path: host.paths.apiTokens).create(name: name, readOnly: readOnly)
                return Created(name: name, readOnly: readOnly, token: secret)
            } text: { $0.token }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the tokens (names and roles; never the secrets).")

        @OptionGroup var options: HostOptions

        func run() throws {
            try runHostCommand("api token list", json: options.json) { host in
                try APITokenStore(path: host.paths.apiTokens).list().map {
                    Listed(name: $0.name, readOnly: $0.readOnly, created: $0.created)
                }
            } text: { tokens in
                tokens.isEmpty
                    ? "no API tokens; martlet api token create NAME makes one"
                    : table(["NAME", "ROLE", "CREATED"], tokens.map { [$0.name, $0.readOnly ? "read-only" : "full", $0.created] })
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token; requests carrying it are refused at once.")

        @Argument(help: "The token's name.")
        var name: String

        @OptionGroup var options: HostOptions

        func run() throws {
            try runHostCommand("api token revoke", json: options.json) { host in
                try APITokenStore(path: host.paths.apiTokens).revoke(name: name)
                return Done(message: "revoked API token '\(name)'")
            } text: { $0.message }
        }
    }
}
