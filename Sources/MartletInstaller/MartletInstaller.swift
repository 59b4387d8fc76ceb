/// The installer engine: disk discovery, install plans and their execution.
public enum MartletInstaller {}
