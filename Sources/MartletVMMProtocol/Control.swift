import MartletSystem

/// What a VM is doing, as the control socket reports it.
public enum VMState: String, Sendable, CaseIterable {
    case created, running, paused, stopped
}

/// One request on the control socket: the line `{"command": "NAME"}`.
public enum ControlRequest: String, Sendable, CaseIterable {
    /// The state and the configuration summary (`ControlReply.info`).
    case info
    case state
    case pause
    case resume
    /// Presses the ACPI power button: the guest shuts down on its own.
    case shutdown
    /// Ends the VM at once (exit code 4).
    case stop

    /// The request line, without its newline.
    public var json: JSON { .object([("command", .string(rawValue))]) }

    /// Reads a request line; the error says which commands exist.
    public init(line: String) throws {
        let request = try JSON(parsing: line)
        let names = ControlRequest.allCases.map(\.rawValue)
        guard case .string(let command)? = request["command"] else {
            throw ProtocolError("expected {\"command\": \"\(names.joined(separator: "|"))\"}")
        }
        guard let known = ControlRequest(rawValue: command) else {
            throw ProtocolError("unknown command '\(command)'; use \(names.joined(separator: ", "))")
        }
        self = known
    }
}

/// The one-line answer to a `ControlRequest`.
public struct ControlReply: Equatable, Sendable {
    /// The running machine, as `info` describes it.
    public struct Info: Equatable, Sendable {
        public var vcpus = 0
        public var memoryMiB = 0
        public var kernel = ""
        public var disks: [String] = []
        public var nics: [String] = []
        public var portIOExits = 0
        public var deviceErrors: [String] = []
        /// Per virtio device, in MMIO window order: what it served and what that cost.
        public var devices: [Device] = []

        public init(
            vcpus: Int, memoryMiB: Int, kernel: String, disks: [String], nics: [String],
            portIOExits: Int, deviceErrors: [String], devices: [Device] = []
        ) {
            self.vcpus = vcpus
            self.memoryMiB = memoryMiB
            self.kernel = kernel
            self.disks = disks
            self.nics = nics
            self.portIOExits = portIOExits
            self.deviceErrors = deviceErrors
            self.devices = devices
        }
    }

    /// The counters of one virtio device. `notifyExits` counts the queue notifications that
    /// reached the VMM as MMIO exits; with ioeventfd it stays 0 while `notifications` grows.
    public struct Device: Equatable, Sendable {
        /// "blk", "net" or "rng".
        public var kind = ""
        /// Requests (descriptor chains) completed.
        public var requests = 0
        /// Payload bytes moved between the guest and the backend.
        public var bytes = 0
        /// Queue notifications from the driver, however they arrived.
        public var notifications = 0
        /// Notifications that were VM exits handled on a vCPU thread.
        public var notifyExits = 0
        /// Interrupts raised towards the guest.
        public var interrupts = 0
        /// Which engine moves the data, for devices that have a choice: a disk's "io_uring", or
        /// "sync" (preadv/pwritev) where io_uring is refused; a NIC's "vhost-net" (the kernel)
        /// or "userspace" (the VMM). With vhost-net the requests, bytes and interrupts the
        /// kernel served are not counted.
        public var engine: String?
        /// A NIC's queue pairs in use: 1 until its driver negotiated multi-queue and set more.
        public var queuePairs: Int?

        public init(kind: String, requests: Int, bytes: Int, notifications: Int, notifyExits: Int, interrupts: Int, engine: String? = nil, queuePairs: Int? = nil) {
            self.kind = kind
            self.queuePairs = queuePairs
            self.engine = engine
            self.requests = requests
            self.bytes = bytes
            self.notifications = notifications
            self.notifyExits = notifyExits
            self.interrupts = interrupts
            self.engine = engine
        }

        /// The counters as the object `info` and `--stats` print.
        public var json: JSON { JSON(encoding: self, fields: Self.fields) }

        static var fields: [JSONField<Self>] {
            [
                .string("kind", \.kind), .integer("requests", \.requests), .integer("bytes", \.bytes),
                .integer("notifications", \.notifications), .integer("notify_exits", \.notifyExits),
                .integer("interrupts", \.interrupts), .string("engine", \.engine), .integer("queue_pairs", \.queuePairs),
            ]
        }
    }

    public var ok: Bool
    public var state: VMState?
    public var error: String?
    public var info: Info?

    /// A successful reply carrying the state (and, for `info`, the machine).
    public init(state: VMState, info: Info? = nil) {
        ok = true
        self.state = state
        self.info = info
    }

    /// A refused request.
    public init(error: String) {
        ok = false
        self.error = error
    }

    /// The reply as JSON; `info` members sit next to `ok` and `state`.
    public var json: JSON {
        var members: [(String, JSON)] = [("ok", .bool(ok))]
        if let state { members.append(("state", .string(state.rawValue))) }
        if let error { members.append(("error", .string(error))) }
        if let info, case .object(let fields) = JSON(encoding: info, fields: Info.fields) {
            members += fields
        }
        return .object(members)
    }

    /// Reads a reply line; unknown keys and wrong types are errors naming the key.
    public init(line: String) throws {
        let json = try JSON(parsing: line)
        var reply = ControlReply(error: "")
        var info = Info(vcpus: 0, memoryMiB: 0, kernel: "", disks: [], nics: [], portIOExits: 0, deviceErrors: [])
        var hasInfo = false
        let fields: [JSONField<ControlReply>] =
            [
                .bool("ok", \.ok), .choice("state", \.state), .string("error", \.error),
            ]
            + Info.fields.map { field in
                JSONField(
                    field.key,
                    decode: { _, value, path in
                        hasInfo = true
                        try field.decode(&info, value, path)
                    }, encode: { _ in nil })
            }
        try json.decode(into: &reply, fields: fields)
        if json["error"] == nil { reply.error = nil }
        if hasInfo { reply.info = info }
        self = reply
    }
}

extension ControlReply.Info {
    static var fields: [JSONField<Self>] {
        [
            .integer("vcpus", \.vcpus), .integer("memory_mib", \.memoryMiB), .string("kernel", \.kernel),
            .strings("disks", \.disks), .strings("nics", \.nics), .integer("port_io_exits", \.portIOExits),
            .strings("device_errors", \.deviceErrors),
            .objects("devices", \.devices, of: ControlReply.Device(kind: "", requests: 0, bytes: 0, notifications: 0, notifyExits: 0, interrupts: 0), fields: ControlReply.Device.fields),
        ]
    }
}

/// The client side of the control socket, for the host's tooling and `martlet-vmm control`.
public enum ControlClient {
    /// Sends `request` to the VMM listening on `path` and reads its reply; waits at most
    /// `timeout` seconds for it.
    public static func send(_ request: ControlRequest, to path: String, timeout: Double = 5) throws -> ControlReply {
        let socket = try UnixSocket.connect(path)
        socket.setTimeouts(receive: timeout, send: timeout)
        guard socket.writeAll((request.json.text + "\n").utf8) else { throw SystemError("send", path: path) }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(0x0A) {
            let count = socket.read(into: &chunk)
            guard count > 0 else {
                if count < 0 { throw SystemError("recv", path: path) }
                break
            }
            reply += chunk.prefix(count)
        }
        let line = reply.split(separator: 0x0A, omittingEmptySubsequences: false).first ?? []
        do {
            return try ControlReply(line: String(decoding: line, as: UTF8.self))
        } catch let error as ProtocolError {
            throw ProtocolError("the control socket '\(path)' gave no valid reply to '\(request.rawValue)': \(error.message)")
        }
    }
}
