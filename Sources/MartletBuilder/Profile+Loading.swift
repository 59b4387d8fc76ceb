import MartletCore

extension Profile {
    /// Reads and validates a profile given as a name (`default` → `profiles/default`) or as
    /// a path to a folder or a profile.toml.
    public static func load(_ nameOrPath: String, profilesDirectory: String = "profiles") throws
        -> Profile
    {
        throw MartletError(.unavailable, "profile loading is not available yet")
    }
}
