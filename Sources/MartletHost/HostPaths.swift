import Foundation

/// Where the host keeps VM definitions, storage configuration and runtime state. The
/// defaults are the installed host's; `MARTLET_*` environment variables move them (tests,
/// and a runner started by the CLI inherits them).
public struct HostPaths: Sendable, Equatable {
    /// `NAME.toml` files, one a VM.
    public var vmsDirectory: String
    /// The storage pools (`[[pool]]` tables, written by the installer).
    public var storageConfiguration: String
    /// One directory a running VM: VMM config, control and console sockets, console log, pid.
    public var runDirectory: String
    /// The VMM executable (a name on PATH or a path).
    public var vmm: String
    /// The user the VMM runs as when the runner is root and the user exists.
    public var vmmUser: String
    /// Where the API listens besides its socket (`[https]`).
    public var apiConfiguration = "/etc/martlet/api.toml"
    /// The API's tokens (hashes only), mode 0600.
    public var apiTokens = "/etc/martlet/api/tokens.json"
    /// The HTTPS certificate and key: `cert.pem`, `key.pem`.
    public var tlsDirectory = "/etc/martlet/tls"
    /// The console login banner's part that shows the API's address and fingerprint.
    public var apiIssueFile = "/etc/issue.d/martlet-api.issue"
    /// The web UI's static files, served over HTTPS.
    public var webRoot = "/usr/share/martlet/www"
    /// Where PAM reads the `martlet-api` service from; nil: /etc/pam.d.
    public var pamDirectory: String?
    /// The installer's log, copied onto the host at the end of the install.
    public var installLog = "/var/log/martlet/install.log"

    public init(
        vmsDirectory: String = "/etc/martlet/vms",
        storageConfiguration: String = "/etc/martlet/storage.toml",
        runDirectory: String = "/run/martlet/vms", vmm: String = "martlet-vmm",
        vmmUser: String = "martlet-vm"
    ) {
        self.vmsDirectory = vmsDirectory
        self.storageConfiguration = storageConfiguration
        self.runDirectory = runDirectory
        self.vmm = vmm
        self.vmmUser = vmmUser
    }

    /// The defaults, overridden by MARTLET_VMS_DIR, MARTLET_STORAGE_CONFIG, MARTLET_RUN_DIR,
    /// MARTLET_VMM, MARTLET_VMM_USER, MARTLET_API_CONFIG, MARTLET_API_TOKENS, MARTLET_TLS_DIR
    /// MARTLET_API_ISSUE, MARTLET_WEB_ROOT, MARTLET_PAM_DIR and MARTLET_INSTALL_LOG.
    public static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> HostPaths {
        var paths = HostPaths()
        if let value = environment["MARTLET_VMS_DIR"] { paths.vmsDirectory = value }
        if let value = environment["MARTLET_STORAGE_CONFIG"] { paths.storageConfiguration = value }
        if let value = environment["MARTLET_RUN_DIR"] { paths.runDirectory = value }
        if let value = environment["MARTLET_VMM"] { paths.vmm = value }
        if let value = environment["MARTLET_VMM_USER"] { paths.vmmUser = value }
        if let value = environment["MARTLET_API_CONFIG"] { paths.apiConfiguration = value }
        if let value = environment["MARTLET_API_TOKENS"] { paths.apiTokens = value }
        if let value = environment["MARTLET_TLS_DIR"] { paths.tlsDirectory = value }
        if let value = environment["MARTLET_API_ISSUE"] { paths.apiIssueFile = value }
        if let value = environment["MARTLET_WEB_ROOT"] { paths.webRoot = value }
        if let value = environment["MARTLET_PAM_DIR"] { paths.pamDirectory = value }
        if let value = environment["MARTLET_INSTALL_LOG"] { paths.installLog = value }
        return paths
    }

    public func definition(_ name: String) -> String { "\(vmsDirectory)/\(name).toml" }
    public func state(_ name: String) -> String { "\(runDirectory)/\(name)" }
    /// The VMM's own directory: the only place under `state` the (unprivileged) VMM may write.
    public func vmmDirectory(_ name: String) -> String { "\(state(name))/vmm" }
    public func controlSocket(_ name: String) -> String { "\(vmmDirectory(name))/control.sock" }
    public func consoleSocket(_ name: String) -> String { "\(state(name))/console.sock" }
    /// The VMM's serial port (`serial: "socket:PATH"`); only the runner connects to it.
    public func serialSocket(_ name: String) -> String { "\(vmmDirectory(name))/serial.sock" }
    public func consoleLog(_ name: String) -> String { "\(state(name))/console.log" }
    /// The jailed VMM's root: an empty directory on the host; the VMM's own mount namespace
    /// has a tmpfs there holding what that VM uses (`VMJail`).
    public func jailRoot(_ name: String) -> String { "\(state(name))/root" }
    public func runnerPID(_ name: String) -> String { "\(state(name))/runner.pid" }
    public func vmmConfig(_ name: String) -> String { "\(state(name))/vmm.json" }
    public func runnerLog(_ name: String) -> String { "\(state(name))/runner.log" }
    /// The runner's exit status, written as it ends: `vm start` sees a VM that could not
    /// start without waiting for its timeout.
    public func runnerExit(_ name: String) -> String { "\(state(name))/runner.exit" }
    /// The cloud-init NoCloud seed image, written by the runner at every start.
    public func cloudInitSeed(_ name: String) -> String { "\(state(name))/cidata.iso" }
}
