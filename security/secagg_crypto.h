// The cryptographic building blocks of secure aggregation (security/secagg.h),
// each a thin, checked wrapper around OpenSSL 3's libcrypto:
//
//   X25519        key agreement (RFC 7748; EVP_PKEY_X25519)
//   HKDF-SHA256   key derivation (RFC 5869; EVP_KDF "HKDF")
//   PRG           AES-256-CTR keystream under a 32-byte seed, zero IV, read
//                 as little-endian uint32 words (masks in Z_2^32)
//   AEAD          AES-256-GCM, 96-bit nonce, 128-bit tag (EVP_aes_256_gcm)
//   Shamir        t-of-n secret sharing over GF(p), p = 2^521 - 1 (BIGNUM)
//
// Secrets live in SecretBytes, which wipes its buffer (OPENSSL_cleanse) when
// destroyed or overwritten. Randomness comes from a RandomSource:
// SystemRandom() (OpenSSL's RAND_bytes) in production; tests inject a seeded
// one.
//
// Thread-safety: every free function is reentrant. SystemRandom() is
// thread-safe (RAND_bytes is); other RandomSource implementations say.
#ifndef FEDPEFT_SECURITY_SECAGG_CRYPTO_H_
#define FEDPEFT_SECURITY_SECAGG_CRYPTO_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace secagg {

// Bytes of an X25519 key (private or public), a shared secret, a PRG seed,
// an AES-256 key and a self-mask seed.
inline constexpr size_t kKeyBytes = 32;
using PublicKey = std::array<uint8_t, kKeyBytes>;

// A byte buffer for key material: wiped with OPENSSL_cleanse when destroyed,
// assigned over or moved from. Never resized after construction (a
// reallocation would leave an unwiped copy behind). Copyable (each copy wipes
// itself).
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t size) : bytes_(size, 0) {}
  SecretBytes(const uint8_t* data, size_t size) : bytes_(data, data + size) {}
  SecretBytes(const SecretBytes& other) = default;
  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(const SecretBytes& other);
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  ~SecretBytes();

  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  // Constant-time comparison (CRYPTO_memcmp) of size and contents.
  bool Equals(const SecretBytes& other) const;
  // Wipes and empties the buffer.
  void Clear();

 private:
  std::vector<uint8_t> bytes_;
};

// A source of cryptographically strong random bytes.
class RandomSource {
 public:
  virtual ~RandomSource() = default;
  // Fills out[0, size) or returns why it could not.
  virtual Status Fill(uint8_t* out, size_t size) = 0;
};

// OpenSSL's default DRBG (RAND_bytes). Thread-safe; lives for the process.
RandomSource& SystemRandom();

// ---- X25519 -----------------------------------------------------------------

struct X25519KeyPair {
  SecretBytes private_key;  // 32 bytes
  PublicKey public_key;
};

// A fresh key pair whose private key is 32 bytes drawn from `rng` (clamped
// by X25519 itself, RFC 7748 section 5).
StatusOr<X25519KeyPair> GenerateX25519KeyPair(RandomSource& rng);

// The public key of a 32-byte private key.
StatusOr<PublicKey> X25519PublicKey(const SecretBytes& private_key);

// The 32-byte shared secret X25519(private_key, peer_public_key). Fails
// (InvalidArgument) for a peer key of small order, whose shared secret is
// all zeros (RFC 7748 section 6.1), so a peer cannot force a known secret.
StatusOr<SecretBytes> X25519Agree(const SecretBytes& private_key,
                                  const PublicKey& peer_public_key);

// ---- HKDF -------------------------------------------------------------------

// HKDF-SHA256 (extract then expand, RFC 5869) of `ikm` into `out_size` bytes.
// REQUIRES: 0 < out_size <= 255 * 32.
StatusOr<SecretBytes> HkdfSha256(const SecretBytes& ikm,
                                 const std::vector<uint8_t>& salt,
                                 const std::vector<uint8_t>& info,
                                 size_t out_size);

// ---- PRG --------------------------------------------------------------------

// Adds (sign = +1) or subtracts (sign = -1) PRG(seed) to words[0, count)
// modulo 2^32: word i of the stream is bytes [4i, 4i+4) of the AES-256-CTR
// keystream under key = seed and a zero 128-bit initial counter, read little
// endian. The stream depends on nothing but the seed, so two parties holding
// the same seed produce the same mask. Works in bounded memory (64 KiB
// chunks). REQUIRES: seed.size() == 32, sign is +1 or -1.
Status PrgAccumulate(const SecretBytes& seed, int sign, uint32_t* words,
                     size_t count);

// The first `count` words of PRG(seed) (for tests and diagnostics).
StatusOr<std::vector<uint32_t>> PrgWords(const SecretBytes& seed, size_t count);

// ---- AEAD -------------------------------------------------------------------

inline constexpr size_t kAeadNonceBytes = 12;
inline constexpr size_t kAeadTagBytes = 16;

// AES-256-GCM: returns ciphertext || tag (plaintext size + 16 bytes),
// authenticating `aad` too. A (key, nonce) pair must never encrypt two
// messages; secagg uses each key once. REQUIRES: key.size() == 32.
StatusOr<std::vector<uint8_t>> AeadSeal(
    const SecretBytes& key, const std::array<uint8_t, kAeadNonceBytes>& nonce,
    const std::vector<uint8_t>& aad, const SecretBytes& plaintext);

// Inverse of AeadSeal. Fails (Corruption) when the ciphertext, tag, aad,
// nonce or key differ from the sealing ones.
StatusOr<SecretBytes> AeadOpen(
    const SecretBytes& key, const std::array<uint8_t, kAeadNonceBytes>& nonce,
    const std::vector<uint8_t>& aad, const std::vector<uint8_t>& sealed);

// ---- Shamir secret sharing --------------------------------------------------

// Field elements are integers in [0, p), p = 2^521 - 1 (a Mersenne prime),
// written big-endian in exactly this many bytes.
inline constexpr size_t kShamirElementBytes = 66;
// Largest secret (in bytes, read as a big-endian integer) that is one field
// element: 64 bytes < 2^512 < p.
inline constexpr size_t kShamirMaxSecretBytes = 64;

// One share: the polynomial's value y at x. secagg uses x = client id + 1.
struct ShamirShare {
  uint32_t x = 0;
  SecretBytes y;  // kShamirElementBytes, big-endian, < p
};

// Splits `secret` (big-endian integer of <= 64 bytes) into one share per
// entry of `xs`, any `threshold` of which recover it: the shares are the
// values at xs of a random polynomial of degree threshold - 1 whose constant
// term is the secret (coefficients uniform in GF(p), drawn from `rng`).
// Fails (InvalidArgument) unless 1 <= threshold <= xs.size() and the xs are
// distinct and non-zero.
StatusOr<std::vector<ShamirShare>> ShamirSplit(const SecretBytes& secret,
                                               uint32_t threshold,
                                               const std::vector<uint32_t>& xs,
                                               RandomSource& rng);

// The value at 0 of the polynomial of degree shares.size() - 1 through all
// `shares` (Lagrange interpolation), as a kShamirElementBytes field element.
// Fails (InvalidArgument) on no shares, a zero or duplicate x, or a y that
// is not a field element.
StatusOr<SecretBytes> ShamirInterpolateAtZero(
    const std::vector<ShamirShare>& shares);

// Recovers a secret of `secret_size` bytes from at least `threshold` shares:
// interpolates through the first `threshold` and checks that every further
// share lies on the same polynomial (so one wrong share is an error, not a
// wrong secret, whenever there are spare shares). Fails with
// FailedPrecondition on fewer than `threshold` shares, InvalidArgument on a
// malformed share, Corruption on inconsistent shares or a result that does
// not fit `secret_size` bytes.
StatusOr<SecretBytes> ShamirCombine(const std::vector<ShamirShare>& shares,
                                    uint32_t threshold, size_t secret_size);

// ---- The key schedule of secure aggregation ---------------------------------
//
// Both derivations are HKDF-SHA256 of an X25519 shared secret with
//   salt = "fedpeft-secagg-v1" || session_id (u64 little-endian)
// so keys and masks of one session never recur in another, and an info
// string naming the purpose and the client ids (u32 little-endian).

// The seed of the pairwise mask between clients a and b:
//   info = "pair-mask" || min(a, b) || max(a, b)
// from X25519(s_a^SK, s_b^PK) == X25519(s_b^SK, s_a^PK), so a, b and (after
// reconstructing a dropped client's key) the server derive the same seed.
StatusOr<SecretBytes> DerivePairMaskSeed(const SecretBytes& private_key,
                                         const PublicKey& peer_public_key,
                                         uint64_t session_id, uint32_t a,
                                         uint32_t b);

// The AES-256-GCM key of the one message carrying sender's shares to
// recipient: info = "share-enc" || sender || recipient, from
// X25519(c_sender^SK, c_recipient^PK). One key per direction and session,
// used once, so its nonce is fixed (all zeros).
StatusOr<SecretBytes> DeriveShareKey(const SecretBytes& private_key,
                                     const PublicKey& peer_public_key,
                                     uint64_t session_id, uint32_t sender,
                                     uint32_t recipient);

}  // namespace secagg
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_SECAGG_CRYPTO_H_
