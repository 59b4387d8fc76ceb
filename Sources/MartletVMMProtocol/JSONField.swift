/// One key of a JSON object and the field of `Model` it stands for: the one place that
/// reads and writes that key. A model lists its fields once (`VMConfig.fields`); decoding
/// refuses keys that are not listed, naming them, and encoding writes the listed ones.
public struct JSONField<Model> {
    public let key: String
    /// Sets the field from `value`; `path` ("disks[0].id") names it in errors.
    let decode: (inout Model, _ value: JSON, _ path: String) throws -> Void
    /// The field's JSON value, nil to leave the key out.
    let encode: (Model) -> JSON?

    public init(
        _ key: String, decode: @escaping (inout Model, JSON, String) throws -> Void,
        encode: @escaping (Model) -> JSON?
    ) {
        self.key = key
        self.decode = decode
        self.encode = encode
    }

    public static func integer(_ key: String, _ field: WritableKeyPath<Model, Int>) -> JSONField {
        JSONField(key, decode: { $0[keyPath: field] = try $1.integer($2) }, encode: { .number(Double($0[keyPath: field])) })
    }

    public static func integer(_ key: String, _ field: WritableKeyPath<Model, Int?>) -> JSONField {
        JSONField(key, decode: { $0[keyPath: field] = try $1.integer($2) }, encode: { $0[keyPath: field].map { .number(Double($0)) } })
    }

    public static func string(_ key: String, _ field: WritableKeyPath<Model, String>) -> JSONField {
        JSONField(key, decode: { $0[keyPath: field] = try $1.string($2) }, encode: { .string($0[keyPath: field]) })
    }

    public static func string(_ key: String, _ field: WritableKeyPath<Model, String?>) -> JSONField {
        JSONField(key, decode: { $0[keyPath: field] = try $1.string($2) }, encode: { $0[keyPath: field].map(JSON.string) })
    }

    public static func strings(_ key: String, _ field: WritableKeyPath<Model, [String]>) -> JSONField {
        JSONField(
            key,
            decode: { model, value, path in
                guard case .array(let entries) = value else { throw ProtocolError("\(path): expected an array of strings") }
                model[keyPath: field] = try entries.enumerated().map { try $1.string("\(path)[\($0)]") }
            }, encode: { .array($0[keyPath: field].map(JSON.string)) })
    }

    public static func bool(_ key: String, _ field: WritableKeyPath<Model, Bool>) -> JSONField {
        JSONField(key, decode: { $0[keyPath: field] = try $1.bool($2) }, encode: { .bool($0[keyPath: field]) })
    }

    /// A string that must be one of `Choice`'s raw values.
    public static func choice<Choice: RawRepresentable & CaseIterable>(
        _ key: String, _ field: WritableKeyPath<Model, Choice>
    ) -> JSONField where Choice.RawValue == String {
        JSONField(
            key,
            decode: { model, value, path in model[keyPath: field] = try JSON.choice(Choice.self, value, path) },
            encode: { .string($0[keyPath: field].rawValue) })
    }

    /// An optional string that must be one of `Choice`'s raw values.
    public static func choice<Choice: RawRepresentable & CaseIterable>(
        _ key: String, _ field: WritableKeyPath<Model, Choice?>
    ) -> JSONField where Choice.RawValue == String {
        JSONField(
            key, decode: { model, value, path in model[keyPath: field] = try JSON.choice(Choice.self, value, path) },
            encode: { $0[keyPath: field].map { .string($0.rawValue) } })
    }

    /// An array of objects, each decoded from `empty` through `fields`.
    public static func objects<Element>(
        _ key: String, _ field: WritableKeyPath<Model, [Element]>, of empty: Element,
        fields: [JSONField<Element>]
    ) -> JSONField {
        JSONField(
            key,
            decode: { model, value, path in
                guard case .array(let entries) = value else { throw ProtocolError("\(path): expected an array of objects") }
                model[keyPath: field] = try entries.enumerated().map { index, entry in
                    var element = empty
                    try entry.decode(into: &element, fields: fields, path: "\(path)[\(index)]")
                    return element
                }
            }, encode: { .array($0[keyPath: field].map { JSON(encoding: $0, fields: fields) }) })
    }
}

extension JSON {
    /// Sets `model`'s fields from this object's members; a key not in `fields` is an error
    /// naming it (under `path`, "" at the top level) and listing the known ones.
    public func decode<Model>(into model: inout Model, fields: [JSONField<Model>], path: String = "") throws {
        let prefix = path.isEmpty ? "" : "\(path)."
        guard case .object(let members) = self else {
            throw ProtocolError(path.isEmpty ? "the top level must be an object" : "\(path): expected an object")
        }
        for (key, value) in members {
            guard let field = fields.first(where: { $0.key == key }) else {
                let known = fields.map(\.key).sorted().joined(separator: ", ")
                throw ProtocolError("\(prefix)\(key): unknown key; known keys: \(known)")
            }
            try field.decode(&model, value, "\(prefix)\(key)")
        }
    }

    /// The object with one member per field of `model` (in the order of `fields`).
    public init<Model>(encoding model: Model, fields: [JSONField<Model>]) {
        self = .object(fields.compactMap { field in field.encode(model).map { (field.key, $0) } })
    }

    /// This value as an integer; the error names `path`.
    public func integer(_ path: String) throws -> Int {
        guard case .number(let number) = self, number == number.rounded(), abs(number) < 1e15 else {
            throw ProtocolError("\(path): expected an integer, got \(text)")
        }
        return Int(number)
    }

    /// This value as a string; the error names `path`.
    public func string(_ path: String) throws -> String {
        guard case .string(let string) = self else { throw ProtocolError("\(path): expected a string, got \(text)") }
        return string
    }

    /// This string value as one of `Choice`'s raw values; the error names `path` and lists them.
    static func choice<Choice: RawRepresentable & CaseIterable>(_ type: Choice.Type, _ value: JSON, _ path: String) throws
        -> Choice where Choice.RawValue == String
    {
        guard let choice = Choice(rawValue: try value.string(path)) else {
            let names = Choice.allCases.map { JSON.quote($0.rawValue) }.joined(separator: ", ")
            throw ProtocolError("\(path): \(value.text) is not one of \(names)")
        }
        return choice
    }

    /// This value as a boolean; the error names `path`.
    public func bool(_ path: String) throws -> Bool {
        guard case .bool(let flag) = self else { throw ProtocolError("\(path): expected true or false, got \(text)") }
        return flag
    }
}
