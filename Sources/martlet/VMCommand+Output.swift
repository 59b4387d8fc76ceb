import ArgumentParser
import Foundation
import MartletCore
import MartletHost

/// Flags every host command takes.
struct HostOptions: ParsableArguments {
    @Flag(help: "Print JSON on stdout (errors too, as {\"error\": …}) for scripts.")
    var json = false
}

/// Runs a host command body: prints its result as JSON or text, and turns a `MartletError`
/// into a message and its exit status.
func runHostCommand<T: Encodable>(
    _ command: String, json: Bool, _ body: (VMHost) throws -> T, text: (T) -> String
) throws {
    do {
        let result = try body(VMHost())
        if json {
            print(try encodeJSON(result))
        } else {
            let rendered = text(result)
            if !rendered.isEmpty { print(rendered) }
        }
    } catch let error as MartletError {
        if json {
            let payload = [
                "error": [
                    "code": error.code.rawValue, "message": error.message, "hint": error.hint ?? "",
                ]
            ]
            print(try encodeJSON(payload))
        }
        FileHandle.standardError.write(Data("martlet \(command): \(error.description)\n".utf8))
        throw ExitCode(error.code.exitStatus)
    }
}

func encodeJSON<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// Left-aligned columns for people.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1
                ? cell : cell.padding(toLength: widths[index] + 2, withPad: " ", startingAt: 0)
        }.joined()
    }.joined(separator: "\n")
}

/// An empty result for commands that only act.
struct Done: Encodable {
    var ok = true
    var message: String
}

extension ByteSize: ExpressibleByArgument {
    public init?(argument: String) { self.init(parsing: argument) }
}
