import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol

@testable import MartletVMM

/// `serial: "socket:PATH"`: a client of the VMM's serial socket sees the guest's output and
/// types into its UART; the log file gets the output too.
@Suite struct SerialSocketTests {
    /// Connects to the unix socket at `path`, retrying while the VMM starts.
    func connect(_ path: String, timeout: Double = 10) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
            }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if connected == 0 { return fd }
            close(fd)
            usleep(20_000)
        }
        throw VMMError(.io, "no serial socket at \(path) after \(timeout) s")
    }

    /// Reads from `fd` until it closes or `timeout` seconds pass.
    func readAll(_ fd: Int32, timeout: Int = 20) -> String {
        var time = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            bytes += chunk.prefix(count)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func keysFromTheSocketReachTheGuestAndItsOutputComesBack() throws {
        let elf = try TestSupport.guestELF.get()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let socketPath = directory.appendingPathComponent("serial.sock").path
        let logPath = directory.appendingPathComponent("serial.log").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestSupport.vmmBinary)
        process.arguments = [
            "--kernel", elf, "--cmdline", "test=echo", "--memory", "16", "--timeout", "20",
            "--serial", "socket:\(socketPath)", "--serial-log", logPath,
        ]
        // Nothing may come from stdin or go to stdout: the socket is the console.
        let stdout = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let fd = try connect(socketPath)
        defer { close(fd) }
        let line = Array("typed into the socket\n".utf8)
        #expect(line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == line.count)
        let output = readAll(fd)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(output)")
        // The banner was printed before anyone connected: kept for the first client.
        #expect(output.contains("martlet test guest: test=echo"), "\(output)")
        #expect(output.contains("echo: typed into the socket"), "\(output)")
        #expect(output.contains("guest done"), "\(output)")
        let log = try String(contentsOfFile: logPath, encoding: .utf8)
        #expect(log == output, "the log holds the same output")
        #expect(stdout.fileHandleForReading.readDataToEndOfFile().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: socketPath), "the socket file is removed at the end")
    }

    @Test func serialSocketConfiguration() throws {
        let config = try VMConfig(
            json: #"{"kernel": "k", "serial": "socket:/run/vm1/serial.sock", "serial_log": "/var/log/vm1.log"}"#,
            source: "vm.json")
        #expect(config.serial == .socket("/run/vm1/serial.sock"))
        #expect(config.serialLog == "/var/log/vm1.log")
        #expect(throws: ProtocolError(#"vm.json: serial: 'socket:' is not "stdout", "none", "file:PATH" or "socket:PATH""#)) {
            try VMConfig(json: #"{"kernel": "k", "serial": "socket:"}"#, source: "vm.json")
        }
        var long = VMConfig()
        long.kernel = try TestSupport.guestELF.get()
        long.serial = .socket("/tmp/" + String(repeating: "s", count: 120))
        #expect(throws: VMMError.self) { try Machine(config: long) }
    }
}
