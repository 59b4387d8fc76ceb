import Foundation
import MartletCore

/// xterm.js for the web UI's console, from Debian's packages. Debian 12's `libjs-xterm`
/// ships as its browser file (/usr/share/javascript/xterm/xterm.js) only a stub that
/// `require`s xterm's CommonJS modules, which a browser cannot run; the modules themselves are
/// in `node-xterm` (/usr/share/nodejs/xterm/lib). `script` wraps those modules, unchanged,
/// into one script that defines `window.Terminal`: no npm, no build step, and no eval (the
/// page's Content-Security-Policy allows none).
public enum WebTerminal {
    /// Where node-xterm puts xterm.js's modules and stylesheet.
    public static let defaultLibrary = "/usr/share/nodejs/xterm/lib"

    /// The modules under `library` (tests and add-ons left out) as one browser script.
    public static func script(library: String) throws -> String {
        let root = URL(fileURLWithPath: library).standardizedFileURL
        guard let walker = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil),
            FileManager.default.fileExists(atPath: root.appendingPathComponent("xterm.js").path)
        else {
            throw MartletError(
                .missingDependency, "no xterm.js modules in '\(library)'",
                hint: "install Debian's node-xterm (the web UI's terminal)")
        }
        var modules: [(id: String, source: String)] = []
        for case let file as URL in walker {
            let relative = file.standardizedFileURL.path.dropFirst(root.path.count + 1)
            guard relative.hasSuffix(".js"), !relative.hasSuffix(".test.js"), !relative.hasPrefix("addons/") else { continue }
            let source = try String(contentsOf: file, encoding: .utf8)
            // A source map comment would point the browser at files nobody serves.
            let lines = source.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("//# sourceMappingURL=") }
            modules.append((String(relative.dropLast(".js".count)), lines.joined(separator: "\n")))
        }
        modules.sort { $0.id < $1.id }
        var script = """
            // xterm.js from Debian's node-xterm, its CommonJS modules wrapped for the browser by martlet-api.
            (function () {
            "use strict";
            var modules = {};

            """
        for module in modules {
            script += "modules[\(jsonString(module.id))] = function (require, module, exports) {\n\(module.source)\n};\n"
        }
        script += """
            var loaded = {};
            function resolve(from, path) {
                var parts = from.split("/").slice(0, -1);
                path.split("/").forEach(function (part) {
                    if (part === "..") parts.pop(); else if (part !== ".") parts.push(part);
                });
                return parts.join("/");
            }
            function load(id) {
                if (!Object.prototype.hasOwnProperty.call(modules, id)) throw new Error("xterm.js: no module " + id);
                if (!loaded[id]) {
                    var module = { exports: {} };
                    loaded[id] = module;
                    modules[id](function (path) { return load(resolve(id, path)); }, module, module.exports);
                }
                return loaded[id].exports;
            }
            window.Terminal = load("xterm");
            })();

            """
        return script
    }

    static func jsonString(_ text: String) -> String {
        let data = (try? JSONEncoder().encode(text)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
