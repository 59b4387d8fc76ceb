import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol

@testable import MartletVMM

/// `serial: "socket:PATH"`: a client of the VMM's serial socket sees the guest's output and
/// types into its UART; the log file gets the output too.
@Suite struct SerialSocketTests {
    /// Connects to the unix socket at `path`, retrying while the VMM starts.
    func connect(_ path: String, timeout: Double = 10) throws -> FileDescriptor {
        var connected: FileDescriptor?
        guard Poll.until(timeout: timeout, { connected = try? UnixSocket.connect(path); return connected != nil }),
            let connected
        else { throw VMMError(.io, "no serial socket at \(path) after \(timeout) s") }
        return connected
    }

    /// Reads from `socket` until it closes or `timeout` seconds pass without data.
    func readAll(_ socket: FileDescriptor, timeout: Double = 20) -> String {
        socket.setTimeouts(receive: timeout)
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = socket.read(into: &chunk)
            guard count > 0 else { break }
            bytes += chunk.prefix(count)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test(.timeLimit(.minutes(30)))
    func keysFromTheSocketReachTheGuestAndItsOutputComesBack() throws {
        let elf = try TestSupport.guestELF.get()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let socketPath = directory.appendingPathComponent("serial.sock").path
        let logPath = directory.appendingPathComponent("serial.log").path
        // Nothing may come from stdin or go to stdout: the socket is the console.
        let null = try FileDescriptor.open("/dev/null", O_RDONLY)
        let stdout = try FileDescriptor.pipe()
        let pid = try ChildProcess.spawn(
            [
                TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=echo", "--memory", "16", "--timeout", "20",
                "--serial", "socket:\(socketPath)", "--serial-log", logPath,
            ],
            stdin: null.raw, stdout: stdout.write.raw, stderr: STDERR_FILENO)
        stdout.write.close()
        var ended: ChildProcess.Termination?
        defer { if ended == nil { kill(pid, SIGKILL); _ = ChildProcess.wait(pid) } }
        let socket = try connect(socketPath)
        #expect(socket.writeAll("typed into the socket\n".utf8))
        let output = readAll(socket)
        ended = ChildProcess.wait(pid)
        #expect(ended == .exited(0), "\(output)")
        // The banner was printed before anyone connected: kept for the first client.
        #expect(output.contains("martlet test guest: test=echo"), "\(output)")
        #expect(output.contains("echo: typed into the socket"), "\(output)")
        #expect(output.contains("guest done"), "\(output)")
        let log = try String(contentsOfFile: logPath, encoding: .utf8)
        #expect(log == output, "the log holds the same output")
        var byte = [UInt8](repeating: 0, count: 1)
        #expect(stdout.read.read(into: &byte) == 0, "the VMM wrote to stdout")
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
