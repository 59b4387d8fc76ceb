import ArgumentParser
import Foundation
import MartletCore
import MartletHost

/// `vm create` flags for a cloud image's first boot: a cloud-init NoCloud seed.
struct CloudInitOptions: ParsableArguments {
    @Flag(
        name: .customLong("cloud-init"),
        help: "Give the guest a cloud-init NoCloud seed (a read-only disk labelled cidata).")
    var enabled = false

    @Option(
        name: .customLong("ssh-key"),
        help: ArgumentHelp(
            "With --cloud-init: a public key file for the image's default user; repeatable.",
            valueName: "FILE"))
    var sshKeyFiles: [String] = []

    @Option(
        name: .customLong("user-data"),
        help: ArgumentHelp(
            "With --cloud-init: a user-data file (absolute path, read at every start) instead of the generated #cloud-config.",
            valueName: "FILE"))
    var userData: String?

    @Option(
        help: ArgumentHelp(
            "With --cloud-init: the guest's host name (default: the VM's name).",
            valueName: "NAME"))
    var hostname: String?

    @Option(
        help: ArgumentHelp(
            "With --cloud-init: a static address for the first NIC (DHCP when left out).",
            valueName: "CIDR"))
    var ip: String?

    @Option(help: ArgumentHelp("With --ip: the default gateway.", valueName: "IP"))
    var gateway: String?

    @Option(
        name: .customLong("dns"),
        help: ArgumentHelp("With --cloud-init: a DNS server; repeatable.", valueName: "IP"))
    var dns: [String] = []

    /// The `[cloud-init]` table these flags describe, nil without `--cloud-init`; the key
    /// files are read (and checked) now, the definition keeps the keys themselves.
    func table() throws -> VMDefinition.CloudInit? {
        guard enabled else {
            let given = [
                ("--ssh-key", !sshKeyFiles.isEmpty), ("--user-data", userData != nil),
                ("--hostname", hostname != nil), ("--ip", ip != nil),
                ("--gateway", gateway != nil), ("--dns", !dns.isEmpty),
            ].filter(\.1).map(\.0)
            if let first = given.first {
                throw MartletError(
                    .invalidInput, "\(first) applies to the cloud-init seed only",
                    hint: "add --cloud-init")
            }
            return nil
        }
        return VMDefinition.CloudInit(
            hostname: hostname,
            sshKeys: try sshKeyFiles.flatMap(VMDefinition.CloudInit.readKeys(file:)),
            userData: userData.map {
                $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0
            }, ip: ip, gateway: gateway, dns: dns)
    }
}
