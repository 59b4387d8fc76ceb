import Foundation
import Synchronization

/// One step of long work, reported to a person (text on stderr) or a script (JSON lines).
public struct ProgressEvent: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable { case begin, update, end, note }

    public var kind: Kind
    /// The stage name, e.g. `rootfs` or `copy`.
    public var stage: String
    /// 1-based position of the stage in its pipeline, with the pipeline's stage count.
    public var index: Int?
    public var count: Int?
    public var message: String?
    public var completed: UInt64?
    public var total: UInt64?
    /// What `completed` counts: `bytes`, `files`, `percent`.
    public var unit: String?
    /// Seconds since the stage began (on `end`) or since the run began.
    public var elapsed: Double?

    public init(
        _ kind: Kind, stage: String, index: Int? = nil, count: Int? = nil, message: String? = nil,
        completed: UInt64? = nil, total: UInt64? = nil, unit: String? = nil,
        elapsed: Double? = nil
    ) {
        self.kind = kind
        self.stage = stage
        self.index = index
        self.count = count
        self.message = message
        self.completed = completed
        self.total = total
        self.unit = unit
        self.elapsed = elapsed
    }

    /// Fraction done, when the event carries both counts.
    public var fraction: Double? {
        guard let completed, let total, total > 0 else { return nil }
        return min(1, Double(completed) / Double(total))
    }
}

/// Where progress goes. Implementations must be cheap: stages call them often.
public protocol ProgressSink: Sendable {
    func emit(_ event: ProgressEvent)
}

/// Discards progress (tests, `--quiet`).
public struct SilentProgress: ProgressSink {
    public init() {}
    public func emit(_ event: ProgressEvent) {}
}

/// Collects events in memory, for tests and for front ends that poll.
public final class RecordingProgress: ProgressSink {
    private let storage = Mutex<[ProgressEvent]>([])
    public init() {}
    public func emit(_ event: ProgressEvent) { storage.withLock { $0.append(event) } }
    public var events: [ProgressEvent] { storage.withLock { $0 } }
}

/// One JSON object a line on stdout, for `--json`.
public struct JSONLinesProgress: ProgressSink {
    public init() {}
    public func emit(_ event: ProgressEvent) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard var data = try? encoder.encode(event) else { return }
        data.append(0x0A)
        FileHandle.standardOutput.write(data)
    }
}

/// Human progress on stderr: a line per stage, updated in place on a terminal and
/// throttled to a line every few seconds when stderr is a file or a pipe.
public final class TextProgress: ProgressSink {
    private let isTerminal = isatty(STDERR_FILENO) == 1
    /// When the last update was printed, and whether the line it printed is still open.
    private let screen = Mutex((lastPrint: Date.distantPast, openLine: false))

    public init() {}

    public func emit(_ event: ProgressEvent) {
        screen.withLock { screen in
            let position = event.index.map { i in event.count.map { "[\(i)/\($0)] " } ?? "" } ?? ""
            switch event.kind {
            case .begin:
                write(
                    "\(position)\(event.stage): \(event.message ?? "started")", final: true,
                    openLine: &screen.openLine)
            case .update:
                let now = Date()
                let interval = isTerminal ? 0.2 : 5
                guard now.timeIntervalSince(screen.lastPrint) >= interval else { return }
                screen.lastPrint = now
                write(
                    "\(position)\(event.stage): \(Self.amount(event))", final: !isTerminal,
                    openLine: &screen.openLine)
            case .end:
                let time = event.elapsed.map { String(format: " (%.1fs)", $0) } ?? ""
                write(
                    "\(position)\(event.stage): \(event.message ?? "done")\(time)", final: true,
                    openLine: &screen.openLine)
            case .note:
                write(
                    "\(position)\(event.stage): \(event.message ?? "")", final: true,
                    openLine: &screen.openLine)
            }
        }
    }

    static func amount(_ event: ProgressEvent) -> String {
        var parts: [String] = []
        if let fraction = event.fraction { parts.append(String(format: "%3.0f%%", fraction * 100)) }
        if let completed = event.completed {
            if event.unit == "bytes" {
                let total = event.total.map { " / \(ByteSize($0))" } ?? ""
                parts.append("\(ByteSize(completed))\(total)")
            } else if event.unit != "percent" {
                let total = event.total.map { "/\($0)" } ?? ""
                parts.append("\(completed)\(total) \(event.unit ?? "")")
            }
        }
        if let message = event.message { parts.append(message) }
        return parts.joined(separator: "  ")
    }

    private func write(_ text: String, final: Bool, openLine: inout Bool) {
        var out = ""
        if isTerminal && openLine { out += "\r\u{1B}[K" }
        out += text
        if final || !isTerminal { out += "\n" }
        openLine = !final && isTerminal
        FileHandle.standardError.write(Data(out.utf8))
    }
}

/// Times a stage and reports its begin, updates and end to a sink.
public struct StageReporter: Sendable {
    public let sink: any ProgressSink
    public let stage: String
    public let index: Int?
    public let count: Int?
    let start: Date

    public init(sink: any ProgressSink, stage: String, index: Int? = nil, count: Int? = nil) {
        self.sink = sink
        self.stage = stage
        self.index = index
        self.count = count
        self.start = Date()
    }

    public var elapsed: Double { Date().timeIntervalSince(start) }

    public func begin(_ message: String? = nil) {
        sink.emit(ProgressEvent(.begin, stage: stage, index: index, count: count, message: message))
    }

    public func update(
        completed: UInt64? = nil, total: UInt64? = nil, unit: String? = nil, message: String? = nil
    ) {
        sink.emit(
            ProgressEvent(
                .update, stage: stage, index: index, count: count, message: message,
                completed: completed, total: total, unit: unit, elapsed: elapsed))
    }

    public func note(_ message: String) {
        sink.emit(ProgressEvent(.note, stage: stage, index: index, count: count, message: message))
    }

    public func end(_ message: String? = nil) {
        sink.emit(
            ProgressEvent(
                .end, stage: stage, index: index, count: count, message: message, elapsed: elapsed))
    }
}
