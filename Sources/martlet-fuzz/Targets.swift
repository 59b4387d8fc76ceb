import Foundation
import MartletAnswer
import MartletBuilder
import MartletCore
import MartletFuzzing
import MartletHost

/// The host's parsers of outside input: files a person or a script writes (answer file,
/// profile, VM definition) and the REST API's bodies. The guest-facing ones are
/// martlet-fuzz-vmm's.
let targets: [FuzzTarget] = [
    FuzzTarget(name: "answer", summary: "an installer answer file (TOML), parsed and validated") { bytes in
        _ = try? AnswerFile.parse(path: "fuzz.toml", contents: String(decoding: bytes, as: UTF8.self))
    },
    FuzzTarget(name: "profile", summary: "a build profile (profile.toml), parsed and validated") { bytes in
        let text = String(decoding: bytes, as: UTF8.self)
        if let document = try? TOMLDocument(path: "/nonexistent/fuzz/profile.toml", contents: text) {
            _ = try? Profile.parse(document)
        }
    },
    FuzzTarget(name: "vm-definition", summary: "a VM definition (/etc/martlet/vms/NAME.toml), parsed and validated") { bytes in
        _ = try? VMDefinition(path: "/nonexistent/fuzz/vm.toml", contents: String(decoding: bytes, as: UTF8.self))
    },
    FuzzTarget(name: "api-body", summary: "a REST API request body (VM, volume, resize), decoded and validated") { bytes in
        let body = Data(bytes)
        let decoder = JSONDecoder()
        if let request = try? decoder.decode(APIServer.VMRequest.self, from: body) {
            _ = try? request.definition(name: request.name ?? "fuzz")
        }
        if let request = try? decoder.decode(APIServer.VolumeRequest.self, from: body) {
            _ = request.size.flatMap(ByteSize.init(parsing:))
        }
        if let request = try? decoder.decode(APIServer.ResizeRequest.self, from: body) {
            _ = ByteSize(parsing: request.size)
        }
    },
]
