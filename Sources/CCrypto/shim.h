// OpenSSL's libcrypto: only the EVP message digests (SHA-256 for the builder and the flasher).
#include <openssl/evp.h>
