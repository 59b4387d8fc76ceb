/// The ISO builder: profiles, build pipeline stages, cache and ISO assembly.
public enum MartletBuilder {}
