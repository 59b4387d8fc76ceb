import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost

/// The web UI in a real browser: headless Chromium from Debian, driven through
/// chromium-driver's WebDriver protocol, against `martlet api serve` with HTTPS on a loopback
/// port and the UI's files from overlays/, and a PAM stack of the test's own. A wrong password
/// and a made-up token are refused; the right password logs in (a session cookie + CSRF);
/// a VM (the tiny test guest) is created from the form, edited in its detail (vCPUs, memory;
/// refusals shown with the API's message), started (its uptime counts), its console read and
/// typed into in the page's terminal (xterm.js over the console WebSocket), force-stopped and
/// deleted; a volume is created, resized and an image uploaded from a local file; the install
/// log page shows the log, or why there is none; a read-only token logs in and follows the
/// live list and a console. Screenshots of each page go to artifacts/webui/.
@Suite(.serialized, .timeLimit(.minutes(30))) struct WebUITests {
    static let driverPath = "/usr/bin/chromedriver"
    /// scripts/setup installs chromium and chromium-driver; without them there is no browser.
    static let available = FileManager.default.isExecutableFile(atPath: driverPath)
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium")

    @Test(.enabled(if: available, "needs chromium and chromium-driver (scripts/setup installs them)"))
    func logInCreateStartReadConsoleStopDelete() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "webui")
        let port = try HTTPSAPITests.freePort()
        try "[https]\naddress = \"127.0.0.1\"\nport = \(port)\nlogin-users = [\"webadmin\"]\n".write(
            toFile: fixture.paths.apiConfiguration, atomically: true, encoding: .utf8)
        let pam = try HTTPSAPITests.pamStack(in: fixture.root, user: "webadmin", password: "correct horse")
        let installLog = fixture.root + "/install.log"
        let reader = try HTTPSAPITests.martlet(fixture, ["api", "token", "create", "viewer", "--read-only"])
        try #require(reader.status == 0, "\(reader.stderr)")
        let api = try APIProcess(
            fixture: fixture,
            extraEnvironment: [
                "MARTLET_WEB_ROOT": TestSupport.repository.appendingPathComponent("overlays/host/usr/share/martlet/www").path,
                "MARTLET_PAM_DIR": pam, "MARTLET_INSTALL_LOG": installLog,
            ])
        _ = api
        let base = "https://127.0.0.1:\(port)"
        #expect(
            Poll.until(timeout: 30) {
                (try? ChildProcess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", base + "/"]).stdout) == "200"
            }, "the UI's index did not load from \(base)/; see \(fixture.root)/api.log")
        let headers = try ChildProcess.run(["curl", "-skI", base + "/app.js"]).stdout.lowercased()
        #expect(headers.contains("content-security-policy: default-src 'self'") && headers.contains("x-frame-options: deny"), "\(headers)")

        let artifacts = TestSupport.repository.appendingPathComponent("artifacts/webui")
        try FileManager.default.createDirectory(at: artifacts, withIntermediateDirectories: true)
        let browser = try WebDriver(profile: fixture.root + "/chromium")
        defer { browser.quit() }
        try browser.open(base + "/")
        try browser.waitFor("login form", "return !document.querySelector('#login').hidden")
        try browser.screenshot(to: artifacts.appendingPathComponent("1-login.png"))

        // A wrong password, then a made-up token: refused in the page, still on the login form.
        try browser.script("document.querySelector('#user').value = 'webadmin'")
        try browser.type("#password", "wrong")
        try browser.click("#login-form button[type=submit]")
        try browser.waitFor("the password's refusal", "return document.querySelector('#login-error').textContent.includes('Wrong user name or password')")
        try browser.click("#use-token summary")
        try browser.type("#token", "martlet_" + String(repeating: "0", count: 64))
        try browser.click("#login-form button[type=submit]")
        try browser.waitFor("the token's refusal", "return document.querySelector('#login-error').textContent.includes('not valid')")
        #expect(try browser.script("return document.querySelector('#tabs').hidden") as? Bool == true)

        // The right password: a session (every change below carries its CSRF token).
        try browser.script("document.querySelector('#token').value = ''; document.querySelector('#password').value = ''")
        try browser.type("#password", "correct horse")
        try browser.click("#login-form button[type=submit]")
        try browser.waitFor("the VM page", "return !document.querySelector('#vms').hidden")
        try browser.screenshot(to: artifacts.appendingPathComponent("2-vms-empty.png"))

        // Create a VM from the form: the tiny guest, booted from a kernel.
        try browser.click("#create summary")
        try browser.type("#create-form input[name=name]", "web-ui")
        try browser.script("document.querySelector('#create-form select[name=boot]').value = 'kernel'")
        try browser.script("document.querySelector('#create-form input[name=memory]').value = '16MiB'")
        try browser.script("document.querySelector('#create-form input[name=cmdline]').value = 'test=echo'")
        try browser.script("document.querySelector('#create-form input[name=nic]').checked = false")
        try browser.type("#create-form input[name=kernel]", guest)
        try browser.screenshot(to: artifacts.appendingPathComponent("3-create.png"))
        try browser.click("#create-form button[type=submit]")
        try browser.waitFor("the new VM's row", "return !!document.querySelector('tr[data-vm=\"web-ui\"]')")
        #expect(try fixture.host.definition("web-ui").vcpus == 1, "the form's VM is on the host")

        // Its detail: disks and NICs, and the edit form. A bad value and then a good one.
        try browser.click("tr[data-vm=\"web-ui\"] button[data-action=details]")
        try browser.waitFor("the VM's detail", "return !document.querySelector('#vm-detail').hidden && document.querySelector('#detail-nics').textContent.includes('no NICs')")
        // (The form's own min and max keep the vCPUs in range; a size only the API can judge.)
        try browser.script("document.querySelector('#edit-form input[name=memory]').value = '3MiB'")
        try browser.click("#edit-form button[type=submit]")
        try browser.waitFor("the API's refusal of 3 MiB", "return document.querySelector('#edit-error').textContent.includes('memory: 3 MiB is not a whole number of MiB of at least 4 MiB')")
        try browser.script("document.querySelector('#edit-form input[name=vcpus]').value = '2'; document.querySelector('#edit-form input[name=memory]').value = '32MiB'")
        try browser.click("#edit-form button[type=submit]")
        try browser.waitFor("the edited row", "return document.querySelector('#edit-error').textContent === '' && document.querySelector('tr[data-vm=\"web-ui\"]').textContent.includes('32 MiB')")
        let edited = try fixture.host.definition("web-ui")
        #expect(edited.vcpus == 2 && edited.memory == ByteSize(32 << 20), "the edit reached the host: \(edited)")
        try browser.screenshot(to: artifacts.appendingPathComponent("3b-vm-detail-edit.png"))

        try browser.click("tr[data-vm=\"web-ui\"] button[data-action=start]")
        try browser.waitFor("the running state", "return document.querySelector('tr[data-vm=\"web-ui\"]').textContent.includes('running')", timeout: 60)
        #expect(try fixture.host.isRunning("web-ui"))
        // The uptime column counts from the runner's start; an edit while running is refused.
        try browser.waitFor("the uptime", "return / s$/.test(document.querySelector('tr[data-vm=\"web-ui\"] .uptime').textContent)")
        try browser.script("window.scrollTo(0, 0)")
        try browser.screenshot(to: artifacts.appendingPathComponent("3c-vm-list-uptime.png"))
        try browser.click("#edit-form button[type=submit]")
        try browser.waitFor("the refusal while running", "return document.querySelector('#edit-error').textContent.includes('is running')")
        // The console: xterm.js over the WebSocket. The recent output is replayed, then a line
        // typed into the terminal reaches the guest, which echoes it and powers off. Ctrl-J is
        // the newline the test guest waits for (Enter sends a carriage return, as a terminal does).
        try browser.click("tr[data-vm=\"web-ui\"] button[data-action=console]")
        // The terminal draws on a canvas; its screen reader mode keeps the text in the page.
        func terminalShows(_ text: String) -> String {
            "return (document.querySelector('#console .xterm-accessibility-tree')?.textContent ?? '').includes('\(text)')"
        }
        try browser.waitFor("the guest's output in the terminal", terminalShows("martlet test guest: test=echo"), timeout: 60)
        try browser.waitFor("the console's WebSocket", "return document.querySelector('#console-state').textContent.startsWith('Connected')")
        try browser.type("#console textarea", "hello from the page\u{E009}j\u{E000}")
        try browser.waitFor("the guest's echo of the typed line", terminalShows("echo: hello from the page"), timeout: 30)
        try browser.screenshot(to: artifacts.appendingPathComponent("4-vm-console.png"))
        let log = try String(contentsOfFile: fixture.paths.consoleLog("web-ui"), encoding: .utf8)
        #expect(log.contains("echo: hello from the page\n"), "the typed line reached the guest: \(log)")

        // The guest powered off after its echo; started again, it is stopped from the page.
        try browser.waitFor("the stopped state", "return document.querySelector('tr[data-vm=\"web-ui\"]').textContent.includes('stopped')", timeout: 60)
        try browser.click("tr[data-vm=\"web-ui\"] button[data-action=start]")
        try browser.waitFor("the running state again", "return document.querySelector('tr[data-vm=\"web-ui\"]').textContent.includes('running')", timeout: 60)

        try browser.click("tr[data-vm=\"web-ui\"] button[data-action=\"force stop\"]")
        try browser.waitFor("the stopped state", "return document.querySelector('tr[data-vm=\"web-ui\"]').textContent.includes('stopped')", timeout: 60)
        #expect(try !fixture.host.isRunning("web-ui"))
        try browser.click("tr[data-vm=\"web-ui\"] button[data-action=delete]")
        try browser.acceptDialog()
        try browser.waitFor("the row gone", "return !document.querySelector('tr[data-vm=\"web-ui\"]')")
        #expect((try? fixture.host.definition("web-ui")) == nil, "the VM is deleted on the host")

        try browser.click("nav button[data-view=summary]")
        try browser.waitFor("the host summary", "return document.querySelector('#host-facts').textContent.includes('KVM')")
        try browser.screenshot(to: artifacts.appendingPathComponent("5-host.png"))
        try browser.click("nav button[data-view=storage]")
        try browser.waitFor("the storage page", "return !document.querySelector('#storage').hidden && document.querySelector('#volume-form select[name=pool]').options.length > 0")
        // A new volume, grown through the resize form; shrinking it is refused in the page.
        try browser.type("#volume-form input[name=name]", "grows")
        try browser.type("#volume-form input[name=size]", "4MiB")
        try browser.click("#volume-form button[type=submit]")
        try browser.waitFor("the new volume", "return !!document.querySelector('tr[data-volume=\"local/grows\"]')")
        try browser.script("document.querySelector('#resize-form select[name=volume]').value = 'local/grows'")
        try browser.type("#resize-form input[name=size]", "12MiB")
        try browser.click("#resize-form button[type=submit]")
        try browser.waitFor("the grown volume", "return document.querySelector('tr[data-volume=\"local/grows\"]').textContent.includes('12 MiB')")
        #expect(try fixture.host.pool("local").volume("grows").size == 12 << 20)
        try browser.type("#resize-form input[name=size]", "1MiB")
        try browser.click("#resize-form button[type=submit]")
        try browser.waitFor("the refused shrink", "return document.querySelector('#resize-error').textContent.includes('would cut off guest data')")
        // An upload from a local file (WebDriver puts its path into the file input).
        let image = fixture.root + "/upload.raw"
        var bytes = [UInt8](repeating: 0, count: 3 << 20)
        for index in stride(from: 0, to: bytes.count, by: 65537) { bytes[index] = 0x4D }
        try Data(bytes).write(to: URL(fileURLWithPath: image))
        try browser.type("#upload-form input[name=name]", "uploaded")
        try browser.type("#upload-form input[name=file]", image)
        try browser.click("#upload-form button[type=submit]")
        try browser.waitFor("the upload", "return document.querySelector('#upload-state').textContent.includes('Uploaded: local/uploaded, 3 MiB')", timeout: 60)
        try browser.waitFor("the uploaded volume's row", "return !!document.querySelector('tr[data-volume=\"local/uploaded\"]')")
        #expect(try Digest.sha256(file: fixture.host.pool("local").volume("uploaded").path) == Digest.sha256(file: image), "the volume holds the file")
        try browser.type("#upload-form input[name=name]", "uploaded")
        try browser.type("#upload-form input[name=file]", image)
        try browser.click("#upload-form button[type=submit]")
        try browser.waitFor("the refused second upload", "return document.querySelector('#upload-error').textContent.includes('already exists')", timeout: 60)
        try browser.screenshot(to: artifacts.appendingPathComponent("6-storage.png"))

        // The install log: first none (the page says why), then the installer's.
        try browser.click("nav button[data-view=install-log]")
        try browser.waitFor("no install log", "return document.querySelector('#install-log-state').textContent.includes('no install log')")
        try browser.screenshot(to: artifacts.appendingPathComponent("7-install-log-absent.png"))
        try "2026-11-30T10:00:00Z info stage partition started\n2026-11-30T10:00:02Z info run: sgdisk --zap-all /dev/vda\n2026-11-30T10:00:04Z info stage partition finished in 4.0 s\n"
            .write(toFile: installLog, atomically: true, encoding: .utf8)
        try browser.click("nav button[data-view=summary]")
        try browser.click("nav button[data-view=install-log]")
        try browser.waitFor("the install log", "return document.querySelector('#install-log-text').textContent.includes('run: sgdisk --zap-all /dev/vda')")
        try browser.screenshot(to: artifacts.appendingPathComponent("8-install-log.png"))

        // A read-only token's login: a session with its rights, so the live list and a
        // console work in the page (watch only); a change is refused with the API's message.
        try browser.click("#logout")
        try browser.waitFor("the login form again", "return !document.querySelector('#login').hidden")
        try browser.script("document.querySelector('#use-token').open = true")
        try browser.type("#token", reader.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines))
        try browser.click("#login-form button[type=submit]")
        try browser.waitFor("the read-only VM page", "return !document.querySelector('#vms').hidden && document.querySelector('#host-name').textContent.includes('read-only')")
        let watched = try HTTPSAPITests.martlet(
            fixture, ["vm", "create", "watched", "--kernel", guest, "--cmdline", "test=echo watched by a token", "--memory", "16MiB"])
        #expect(watched.status == 0, "\(watched.stderr)")
        #expect(try HTTPSAPITests.martlet(fixture, ["vm", "start", "watched"]).status == 0)
        try browser.waitFor("the live list's new running VM", "return (document.querySelector('tr[data-vm=\"watched\"]')?.textContent ?? '').includes('running')", timeout: 60)
        try browser.click("tr[data-vm=\"watched\"] button[data-action=console]")
        try browser.waitFor("the watched console", terminalShows("martlet test guest: test=echo"), timeout: 60)
        try browser.waitFor("the watch-only note", "return document.querySelector('#console-state').textContent.includes('watching only')")
        #expect(try browser.script("return document.querySelector('#edit-form').hidden") as? Bool == true, "a read-only login gets no edit form")
        // Its first key closes the console; the echoing guest never gets the line.
        try browser.type("#console textarea", "sneaky\u{E009}j\u{E000}")
        try browser.waitFor("the closed read-only console", "return document.querySelector('#console-state').textContent.startsWith('Disconnected')")
        #expect(try fixture.host.isRunning("watched"), "the guest got the read-only login's line and powered off")
        #expect(try !String(contentsOfFile: fixture.paths.consoleLog("watched"), encoding: .utf8).contains("sneaky"))
        try browser.screenshot(to: artifacts.appendingPathComponent("9-read-only-console.png"))
        try browser.click("tr[data-vm=\"watched\"] button[data-action=\"force stop\"]")
        try browser.acceptDialogText(containing: "read-only")
        #expect(try fixture.host.isRunning("watched"), "a read-only login stopped a VM")
        _ = try fixture.host.stop("watched")
    }
}

/// A WebDriver session with headless Chromium through chromedriver, spoken with curl.
final class WebDriver {
    let driver: pid_t
    let base: String
    var session = ""

    static let elementKey = "element-6066-11e4-a52e-4f735466cecf"

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    init(profile: String) throws {
        let port = try HTTPSAPITests.freePort()
        base = "http://127.0.0.1:\(port)"
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        driver = try ChildProcess.spawn(
            [WebUITests.driverPath, "--port=\(port)"], stdin: null.raw, stdout: null.raw, stderr: null.raw)
        let base = self.base
        guard Poll.until(timeout: 30, { (try? ChildProcess.run(["curl", "-sf", base + "/status"]).status) == 0 }) else {
            throw Failure(description: "chromedriver did not answer on \(base)")
        }
        // The certificate is self-signed: the browser is told to accept it, as a person does
        // after comparing its fingerprint (HTTPSAPITests compares the fingerprint).
        let capabilities: [String: Any] = [
            "capabilities": [
                "alwaysMatch": [
                    "browserName": "chrome", "acceptInsecureCerts": true,
                    "goog:chromeOptions": [
                        "binary": "/usr/bin/chromium",
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900", "--user-data-dir=\(profile)"],
                    ] as [String: Any],
                ] as [String: Any]
            ]
        ]
        let value = try call("POST", "/session", capabilities) as? [String: Any]
        guard let id = value?["sessionId"] as? String else { throw Failure(description: "no WebDriver session: \(String(describing: value))") }
        session = id
    }

    /// One WebDriver command; returns its `value`, throws on a WebDriver error.
    @discardableResult
    func call(_ method: String, _ path: String, _ body: Any? = nil) throws -> Any? {
        var arguments = ["curl", "-sS", "--max-time", "60", "-X", method, "-H", "Content-Type: application/json"]
        if let body { arguments += ["--data-binary", String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)] }
        let output = try ChildProcess.run(arguments + [base + path])
        guard let reply = try? JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any] else {
            throw Failure(description: "\(method) \(path): not a WebDriver reply: \(output.stdout) \(output.stderr)")
        }
        let value = reply["value"]
        if let error = value as? [String: Any], let kind = error["error"] as? String {
            throw Failure(description: "\(method) \(path): \(kind): \(error["message"] ?? "")")
        }
        return value
    }

    func open(_ url: String) throws { try call("POST", "/session/\(session)/url", ["url": url]) }

    func element(_ selector: String) throws -> String {
        let value = try call("POST", "/session/\(session)/element", ["using": "css selector", "value": selector]) as? [String: Any]
        guard let id = value?[Self.elementKey] as? String else { throw Failure(description: "no element \(selector)") }
        return id
    }

    func click(_ selector: String) throws { try call("POST", "/session/\(session)/element/\(try element(selector))/click", [String: Any]()) }

    func type(_ selector: String, _ text: String) throws {
        try call("POST", "/session/\(session)/element/\(try element(selector))/value", ["text": text])
    }

    @discardableResult
    func script(_ source: String) throws -> Any? {
        try call("POST", "/session/\(session)/execute/sync", ["script": source, "args": [Any]()])
    }

    /// Waits until `condition` (a script returning a boolean) holds; a timeout is a failure.
    func waitFor(_ what: String, _ condition: String, timeout: Double = 30) throws {
        var last: Any?
        let held = Poll.until(timeout: timeout, interval: 0.2) {
            last = try? self.script(condition)
            return last as? Bool == true
        }
        if !held {
            let body = (try? script("return document.body.innerText")) as? String ?? ""
            throw Failure(description: "waited \(timeout) s for \(what); the page says:\n\(body.suffix(1500))")
        }
    }

    /// Accepts the open dialog (an alert) after checking that its text holds `text`.
    func acceptDialogText(containing text: String) throws {
        var shown = ""
        let open = Poll.until(timeout: 10, interval: 0.2) {
            shown = ((try? self.call("GET", "/session/\(self.session)/alert/text")) as? String) ?? ""
            return !shown.isEmpty
        }
        guard open else { throw Failure(description: "no dialog") }
        guard shown.contains(text) else { throw Failure(description: "the dialog says '\(shown)', not \(text)") }
        try acceptDialog()
    }

    func acceptDialog() throws {
        guard Poll.until(timeout: 10, interval: 0.2, { (try? self.call("POST", "/session/\(self.session)/alert/accept", [String: Any]())) != nil }) else {
            throw Failure(description: "no dialog to accept")
        }
    }

    func screenshot(to file: URL) throws {
        guard let text = try call("GET", "/session/\(session)/screenshot") as? String, let png = Data(base64Encoded: text) else {
            throw Failure(description: "no screenshot")
        }
        try png.write(to: file)
    }

    func quit() {
        _ = try? call("DELETE", "/session/\(session)")
        kill(driver, SIGTERM)
        _ = ChildProcess.wait(driver)
    }
}
