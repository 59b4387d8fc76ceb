import ArgumentParser
import Foundation
import MartletCore
import MartletInstaller

struct DisksCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disks",
        abstract: "List the disks, what is on them, who uses them, and which is the boot medium.")

    @Flag(name: .long, help: "Print JSON (an array of disks) instead of a table.")
    var json = false

    @Flag(name: .long, help: "Leave out loop devices.")
    var noLoop = false

    func run() throws {
        try runReporting {
            let disks = try DiskDiscovery(includeLoop: !noLoop).disks()
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                FileHandle.standardOutput.write(try encoder.encode(disks) + Data("\n".utf8))
            } else {
                print(DiskListing.text(disks), terminator: "")
            }
        }
    }
}
