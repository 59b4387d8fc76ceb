import Foundation
import MartletAnswer
import MartletBuilder
import MartletCore
import MartletFuzzing
import MartletHostModel

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
    FuzzTarget(name: "api-body", summary: "a REST API request body (VM, VM change, volume, resize), decoded and checked as the server does") { bytes in
        let body = Data(bytes)
        if let request = try? APIBody.decode(APIBody.VMRequest.self, from: body) {
            _ = try? request.definition(name: request.name ?? "fuzz")
        }
        if let change = try? APIBody.decode(APIBody.VMChange.self, from: body) {
            _ = try? change.applied(to: VMDefinition(name: "fuzz", boot: .init(kernel: .path("/boot/vmlinuz"))))
        }
        if let request = try? APIBody.decode(APIBody.VolumeRequest.self, from: body) {
            _ = try? request.emptyVolumeSize()
        }
        if let request = try? APIBody.decode(APIBody.ResizeRequest.self, from: body) {
            _ = try? request.newSize()
        }
    },
]
