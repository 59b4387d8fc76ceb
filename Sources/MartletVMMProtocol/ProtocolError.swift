/// A configuration or message the protocol refuses: the message names the key (and, for
/// JSON syntax, the line and column) and says what is expected.
public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}
