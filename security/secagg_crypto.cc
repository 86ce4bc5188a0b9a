#include "security/secagg_crypto.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <utility>

namespace fedpeft {
namespace secagg {
namespace {

// ---- RAII for OpenSSL handles -----------------------------------------------

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct CipherCtxFree {
  // Also wipes the expanded key schedule.
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
struct KdfFree {
  void operator()(EVP_KDF* p) const { EVP_KDF_free(p); }
};
struct KdfCtxFree {
  void operator()(EVP_KDF_CTX* p) const { EVP_KDF_CTX_free(p); }
};
struct BnCtxFree {
  void operator()(BN_CTX* p) const { BN_CTX_free(p); }
};
struct BnClearFree {
  // Secret coefficients and shares: zeroed before release.
  void operator()(BIGNUM* p) const { BN_clear_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
using KdfPtr = std::unique_ptr<EVP_KDF, KdfFree>;
using KdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, KdfCtxFree>;
using BnCtxPtr = std::unique_ptr<BN_CTX, BnCtxFree>;
using BnPtr = std::unique_ptr<BIGNUM, BnClearFree>;

// "<what>: <OpenSSL's first queued error>", and clears the error queue.
Status OpenSslError(const std::string& what) {
  unsigned long code = ERR_get_error();  // NOLINT(runtime/int): OpenSSL API
  std::string detail = "unknown OpenSSL error";
  if (code != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    detail = buf;
  }
  ERR_clear_error();
  return Status::Internal(what + ": " + detail);
}

Status CheckKeySize(const SecretBytes& key, const char* what) {
  if (key.size() != kKeyBytes) {
    return Status::InvalidArgument(std::string(what) + ": expected " +
                                   std::to_string(kKeyBytes) + " bytes, got " +
                                   std::to_string(key.size()));
  }
  return Status::Ok();
}

class OpenSslRandom : public RandomSource {
 public:
  Status Fill(uint8_t* out, size_t size) override {
    while (size > 0) {
      int n = static_cast<int>(std::min<size_t>(size, 1 << 20));
      if (RAND_bytes(out, n) != 1) return OpenSslError("RAND_bytes");
      out += n;
      size -= n;
    }
    return Status::Ok();
  }
};

StatusOr<PkeyPtr> PrivateKey(const SecretBytes& private_key) {
  RETURN_IF_ERROR(CheckKeySize(private_key, "X25519 private key"));
  PkeyPtr pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr,
                                            private_key.data(), kKeyBytes));
  if (!pkey) return OpenSslError("X25519 private key");
  return pkey;
}

// ---- GF(2^521 - 1) ----------------------------------------------------------

BnPtr NewBn() { return BnPtr(BN_new()); }

// p = 2^521 - 1.
BnPtr FieldPrime() {
  BnPtr p = NewBn();
  if (!p || !BN_set_bit(p.get(), 521) || !BN_sub_word(p.get(), 1)) return {};
  return p;
}

constexpr int kFieldBits = 521;

// A uniform element of [0, p) by rejection: 521 random bits are < p unless
// all ones (probability 2^-521).
Status RandomElement(RandomSource& rng, const BIGNUM* p, BIGNUM* out) {
  SecretBytes buf(kShamirElementBytes);
  const int excess_bits =
      static_cast<int>(kShamirElementBytes * 8) - kFieldBits;  // 7
  for (;;) {
    RETURN_IF_ERROR(rng.Fill(buf.data(), buf.size()));
    buf.data()[0] &= static_cast<uint8_t>(0xFF >> excess_bits);
    if (!BN_bin2bn(buf.data(), static_cast<int>(buf.size()), out)) {
      return OpenSslError("Shamir coefficient");
    }
    if (BN_cmp(out, p) < 0) return Status::Ok();
  }
}

StatusOr<SecretBytes> ElementToBytes(const BIGNUM* v) {
  SecretBytes out(kShamirElementBytes);
  if (BN_bn2binpad(v, out.data(), static_cast<int>(out.size())) < 0) {
    return Status::Internal("Shamir: field element does not fit 66 bytes");
  }
  return out;
}

// Parses share y values and x values; checks they are field elements and the
// xs distinct and non-zero.
Status ParseShares(const std::vector<ShamirShare>& shares, const BIGNUM* p,
                   std::vector<BnPtr>* xs, std::vector<BnPtr>* ys) {
  std::vector<uint32_t> seen;
  seen.reserve(shares.size());
  for (size_t i = 0; i < shares.size(); ++i) {
    const ShamirShare& s = shares[i];
    const std::string where = "Shamir share " + std::to_string(i) +
                              " (x=" + std::to_string(s.x) + ")";
    if (s.x == 0) {
      return Status::InvalidArgument(where +
                                     ": x must be non-zero (x = 0 is the "
                                     "secret itself)");
    }
    if (std::find(seen.begin(), seen.end(), s.x) != seen.end()) {
      return Status::InvalidArgument(where + ": duplicate x");
    }
    seen.push_back(s.x);
    if (s.y.size() != kShamirElementBytes) {
      return Status::InvalidArgument(
          where + ": y must be " + std::to_string(kShamirElementBytes) +
          " bytes, got " + std::to_string(s.y.size()));
    }
    BnPtr x = NewBn();
    BnPtr y = NewBn();
    if (!x || !y || !BN_set_word(x.get(), s.x) ||
        !BN_bin2bn(s.y.data(), static_cast<int>(s.y.size()), y.get())) {
      return OpenSslError(where);
    }
    if (BN_cmp(y.get(), p) >= 0) {
      return Status::InvalidArgument(where + ": y is not below 2^521 - 1");
    }
    xs->push_back(std::move(x));
    ys->push_back(std::move(y));
  }
  return Status::Ok();
}

// Value at `at` of the polynomial through the first k points (Lagrange):
//   sum_i y_i prod_{j != i} (at - x_j) / (x_i - x_j)   (mod p)
Status InterpolateAt(const std::vector<BnPtr>& xs, const std::vector<BnPtr>& ys,
                     size_t k, const BIGNUM* at, const BIGNUM* p, BN_CTX* ctx,
                     BIGNUM* out) {
  BnPtr num = NewBn(), den = NewBn(), t = NewBn(), term = NewBn();
  if (!num || !den || !t || !term) return OpenSslError("Shamir interpolation");
  BN_zero(out);
  for (size_t i = 0; i < k; ++i) {
    if (!BN_one(num.get()) || !BN_one(den.get())) {
      return OpenSslError("Shamir interpolation");
    }
    for (size_t j = 0; j < k; ++j) {
      if (j == i) continue;
      if (!BN_mod_sub(t.get(), at, xs[j].get(), p, ctx) ||
          !BN_mod_mul(num.get(), num.get(), t.get(), p, ctx) ||
          !BN_mod_sub(t.get(), xs[i].get(), xs[j].get(), p, ctx) ||
          !BN_mod_mul(den.get(), den.get(), t.get(), p, ctx)) {
        return OpenSslError("Shamir interpolation");
      }
    }
    if (!BN_mod_inverse(den.get(), den.get(), p, ctx) ||
        !BN_mod_mul(term.get(), num.get(), den.get(), p, ctx) ||
        !BN_mod_mul(term.get(), term.get(), ys[i].get(), p, ctx) ||
        !BN_mod_add(out, out, term.get(), p, ctx)) {
      return OpenSslError("Shamir interpolation");
    }
  }
  return Status::Ok();
}

}  // namespace

// ---- SecretBytes ------------------------------------------------------------

SecretBytes::SecretBytes(SecretBytes&& other) noexcept
    : bytes_(std::move(other.bytes_)) {
  other.bytes_.clear();  // the buffer moved with bytes_; nothing to wipe
}

SecretBytes& SecretBytes::operator=(const SecretBytes& other) {
  if (this != &other) {
    Clear();
    bytes_ = other.bytes_;
  }
  return *this;
}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Clear();
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

SecretBytes::~SecretBytes() { Clear(); }

void SecretBytes::Clear() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

bool SecretBytes::Equals(const SecretBytes& other) const {
  return size() == other.size() &&
         (empty() || CRYPTO_memcmp(data(), other.data(), size()) == 0);
}

RandomSource& SystemRandom() {
  static OpenSslRandom* const random = new OpenSslRandom();
  return *random;
}

// ---- X25519 -----------------------------------------------------------------

StatusOr<X25519KeyPair> GenerateX25519KeyPair(RandomSource& rng) {
  X25519KeyPair pair;
  pair.private_key = SecretBytes(kKeyBytes);
  RETURN_IF_ERROR(rng.Fill(pair.private_key.data(), kKeyBytes));
  ASSIGN_OR_RETURN(pair.public_key, X25519PublicKey(pair.private_key));
  return pair;
}

StatusOr<PublicKey> X25519PublicKey(const SecretBytes& private_key) {
  ASSIGN_OR_RETURN(PkeyPtr pkey, PrivateKey(private_key));
  PublicKey pub;
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), pub.data(), &len) != 1 ||
      len != kKeyBytes) {
    return OpenSslError("X25519 public key");
  }
  return pub;
}

StatusOr<SecretBytes> X25519Agree(const SecretBytes& private_key,
                                  const PublicKey& peer_public_key) {
  ASSIGN_OR_RETURN(PkeyPtr pkey, PrivateKey(private_key));
  PkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr,
                                           peer_public_key.data(), kKeyBytes));
  if (!peer) return OpenSslError("X25519 peer public key");
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new(pkey.get(), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1) {
    return OpenSslError("X25519 agreement setup");
  }
  SecretBytes shared(kKeyBytes);
  size_t len = shared.size();
  if (EVP_PKEY_derive(ctx.get(), shared.data(), &len) != 1) {
    // OpenSSL refuses an all-zero result (a small-order peer key).
    ERR_clear_error();
    return Status::InvalidArgument(
        "X25519 agreement failed: the peer public key is of small order "
        "(all-zero shared secret) or invalid");
  }
  uint8_t any = 0;
  for (size_t i = 0; i < len; ++i) any |= shared.data()[i];
  if (len != kKeyBytes || any == 0) {
    return Status::InvalidArgument(
        "X25519 agreement: all-zero shared secret (small-order peer key)");
  }
  return shared;
}

// ---- HKDF -------------------------------------------------------------------

StatusOr<SecretBytes> HkdfSha256(const SecretBytes& ikm,
                                 const std::vector<uint8_t>& salt,
                                 const std::vector<uint8_t>& info,
                                 size_t out_size) {
  if (out_size == 0 || out_size > 255 * 32) {
    return Status::InvalidArgument("HKDF-SHA256: output size must be in [1, " +
                                   std::to_string(255 * 32) + "], got " +
                                   std::to_string(out_size));
  }
  KdfPtr kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (!kdf) return OpenSslError("HKDF fetch");
  KdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return OpenSslError("HKDF context");
  char digest[] = "SHA256";
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] =
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  // OpenSSL copies the key; the const_casts are for its C signature only.
  params[n++] = OSSL_PARAM_construct_octet_string(
      OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm.data()), ikm.size());
  // An absent salt is the RFC's default (HashLen zero bytes).
  if (!salt.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size());
  }
  if (!info.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()), info.size());
  }
  params[n] = OSSL_PARAM_construct_end();
  SecretBytes out(out_size);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    return OpenSslError("HKDF-SHA256 derive");
  }
  return out;
}

// ---- PRG --------------------------------------------------------------------

Status PrgAccumulate(const SecretBytes& seed, int sign, uint32_t* words,
                     size_t count) {
  RETURN_IF_ERROR(CheckKeySize(seed, "PRG seed"));
  if (sign != 1 && sign != -1) {
    return Status::InvalidArgument("PRG: sign must be +1 or -1, got " +
                                   std::to_string(sign));
  }
  if (count > std::numeric_limits<size_t>::max() / 4) {
    return Status::InvalidArgument("PRG: too many words");
  }
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  const uint8_t iv[16] = {0};
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ctr(), nullptr,
                                 seed.data(), iv) != 1) {
    return OpenSslError("PRG (AES-256-CTR) init");
  }
  constexpr size_t kChunkWords = 16384;  // 64 KiB of keystream at a time
  const std::vector<uint8_t> zeros(kChunkWords * 4, 0);
  SecretBytes stream(kChunkWords * 4);
  for (size_t done = 0; done < count;) {
    const size_t w = std::min(kChunkWords, count - done);
    int len = 0;
    if (EVP_EncryptUpdate(ctx.get(), stream.data(), &len, zeros.data(),
                          static_cast<int>(w * 4)) != 1 ||
        len != static_cast<int>(w * 4)) {
      return OpenSslError("PRG (AES-256-CTR) keystream");
    }
    const uint8_t* s = stream.data();
    uint32_t* out = words + done;
    for (size_t i = 0; i < w; ++i, s += 4) {
      const uint32_t m = static_cast<uint32_t>(s[0]) |
                         (static_cast<uint32_t>(s[1]) << 8) |
                         (static_cast<uint32_t>(s[2]) << 16) |
                         (static_cast<uint32_t>(s[3]) << 24);
      out[i] = sign > 0 ? out[i] + m : out[i] - m;  // mod 2^32
    }
    done += w;
  }
  return Status::Ok();
}

StatusOr<std::vector<uint32_t>> PrgWords(const SecretBytes& seed,
                                         size_t count) {
  std::vector<uint32_t> words(count, 0);
  RETURN_IF_ERROR(PrgAccumulate(seed, +1, words.data(), words.size()));
  return words;
}

// ---- AEAD -------------------------------------------------------------------

StatusOr<std::vector<uint8_t>> AeadSeal(
    const SecretBytes& key, const std::array<uint8_t, kAeadNonceBytes>& nonce,
    const std::vector<uint8_t>& aad, const SecretBytes& plaintext) {
  RETURN_IF_ERROR(CheckKeySize(key, "AES-256-GCM key"));
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx ||
      EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr,
                         nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kAeadNonceBytes,
                          nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(),
                         nonce.data()) != 1) {
    return OpenSslError("AES-256-GCM init");
  }
  int len = 0;
  if (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(),
                                        static_cast<int>(aad.size())) != 1) {
    return OpenSslError("AES-256-GCM aad");
  }
  std::vector<uint8_t> out(plaintext.size() + kAeadTagBytes);
  int total = 0;
  if (!plaintext.empty()) {
    if (EVP_EncryptUpdate(ctx.get(), out.data(), &len, plaintext.data(),
                          static_cast<int>(plaintext.size())) != 1) {
      return OpenSslError("AES-256-GCM encrypt");
    }
    total = len;
  }
  if (EVP_EncryptFinal_ex(ctx.get(), out.data() + total, &len) != 1) {
    return OpenSslError("AES-256-GCM final");
  }
  total += len;
  if (static_cast<size_t>(total) != plaintext.size() ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kAeadTagBytes,
                          out.data() + total) != 1) {
    return OpenSslError("AES-256-GCM tag");
  }
  return out;
}

StatusOr<SecretBytes> AeadOpen(
    const SecretBytes& key, const std::array<uint8_t, kAeadNonceBytes>& nonce,
    const std::vector<uint8_t>& aad, const std::vector<uint8_t>& sealed) {
  RETURN_IF_ERROR(CheckKeySize(key, "AES-256-GCM key"));
  if (sealed.size() < kAeadTagBytes) {
    return Status::Corruption("AES-256-GCM: ciphertext of " +
                              std::to_string(sealed.size()) +
                              " bytes is shorter than its 16-byte tag");
  }
  const size_t body = sealed.size() - kAeadTagBytes;
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx ||
      EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr,
                         nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kAeadNonceBytes,
                          nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(),
                         nonce.data()) != 1) {
    return OpenSslError("AES-256-GCM init");
  }
  int len = 0;
  if (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(),
                                        static_cast<int>(aad.size())) != 1) {
    return OpenSslError("AES-256-GCM aad");
  }
  SecretBytes plain(body);
  int total = 0;
  if (body > 0) {
    if (EVP_DecryptUpdate(ctx.get(), plain.data(), &len, sealed.data(),
                          static_cast<int>(body)) != 1) {
      return OpenSslError("AES-256-GCM decrypt");
    }
    total = len;
  }
  std::array<uint8_t, kAeadTagBytes> tag;
  std::copy(sealed.end() - kAeadTagBytes, sealed.end(), tag.begin());
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kAeadTagBytes,
                          tag.data()) != 1) {
    return OpenSslError("AES-256-GCM tag");
  }
  uint8_t dummy[16];
  if (EVP_DecryptFinal_ex(ctx.get(), body > 0 ? plain.data() + total : dummy,
                          &len) != 1) {
    ERR_clear_error();
    return Status::Corruption(
        "AES-256-GCM: authentication failed (wrong key, or the ciphertext "
        "or its header was altered)");
  }
  return plain;
}

// ---- Shamir -----------------------------------------------------------------

StatusOr<std::vector<ShamirShare>> ShamirSplit(const SecretBytes& secret,
                                               uint32_t threshold,
                                               const std::vector<uint32_t>& xs,
                                               RandomSource& rng) {
  if (secret.size() > kShamirMaxSecretBytes) {
    return Status::InvalidArgument(
        "Shamir split: secret of " + std::to_string(secret.size()) +
        " bytes exceeds " + std::to_string(kShamirMaxSecretBytes));
  }
  if (threshold < 1 || threshold > xs.size()) {
    return Status::InvalidArgument(
        "Shamir split: threshold must be in [1, " + std::to_string(xs.size()) +
        "] (number of shares), got " + std::to_string(threshold));
  }
  for (size_t i = 0; i < xs.size(); ++i) {
    if (xs[i] == 0) {
      return Status::InvalidArgument("Shamir split: x must be non-zero");
    }
    if (std::find(xs.begin(), xs.begin() + i, xs[i]) != xs.begin() + i) {
      return Status::InvalidArgument("Shamir split: duplicate x " +
                                     std::to_string(xs[i]));
    }
  }
  BnPtr p = FieldPrime();
  BnCtxPtr ctx(BN_CTX_new());
  if (!p || !ctx) return OpenSslError("Shamir split");
  // coeffs[0] is the secret, coeffs[1..threshold) uniform in GF(p).
  std::vector<BnPtr> coeffs;
  coeffs.push_back(NewBn());
  if (!coeffs[0] || !BN_bin2bn(secret.data(), static_cast<int>(secret.size()),
                               coeffs[0].get())) {
    return OpenSslError("Shamir split");
  }
  for (uint32_t i = 1; i < threshold; ++i) {
    coeffs.push_back(NewBn());
    if (!coeffs.back()) return OpenSslError("Shamir split");
    RETURN_IF_ERROR(RandomElement(rng, p.get(), coeffs.back().get()));
  }
  std::vector<ShamirShare> shares;
  shares.reserve(xs.size());
  BnPtr x = NewBn(), y = NewBn();
  if (!x || !y) return OpenSslError("Shamir split");
  for (uint32_t xv : xs) {
    // Horner: y = (...(c_{t-1} x + c_{t-2}) x + ...) x + c_0.
    if (!BN_set_word(x.get(), xv) || !BN_copy(y.get(), coeffs.back().get())) {
      return OpenSslError("Shamir split");
    }
    for (size_t i = coeffs.size() - 1; i-- > 0;) {
      if (!BN_mod_mul(y.get(), y.get(), x.get(), p.get(), ctx.get()) ||
          !BN_mod_add(y.get(), y.get(), coeffs[i].get(), p.get(), ctx.get())) {
        return OpenSslError("Shamir split");
      }
    }
    ShamirShare share;
    share.x = xv;
    ASSIGN_OR_RETURN(share.y, ElementToBytes(y.get()));
    shares.push_back(std::move(share));
  }
  return shares;
}

StatusOr<SecretBytes> ShamirInterpolateAtZero(
    const std::vector<ShamirShare>& shares) {
  if (shares.empty()) {
    return Status::InvalidArgument("Shamir interpolation: no shares");
  }
  BnPtr p = FieldPrime();
  BnCtxPtr ctx(BN_CTX_new());
  BnPtr zero = NewBn(), out = NewBn();
  if (!p || !ctx || !zero || !out) return OpenSslError("Shamir");
  BN_zero(zero.get());
  std::vector<BnPtr> xs, ys;
  RETURN_IF_ERROR(ParseShares(shares, p.get(), &xs, &ys));
  RETURN_IF_ERROR(InterpolateAt(xs, ys, xs.size(), zero.get(), p.get(),
                                ctx.get(), out.get()));
  return ElementToBytes(out.get());
}

StatusOr<SecretBytes> ShamirCombine(const std::vector<ShamirShare>& shares,
                                    uint32_t threshold, size_t secret_size) {
  if (threshold < 1) {
    return Status::InvalidArgument("Shamir combine: threshold must be >= 1");
  }
  if (shares.size() < threshold) {
    return Status::FailedPrecondition(
        "Shamir combine: " + std::to_string(shares.size()) +
        " shares, need at least " + std::to_string(threshold) +
        " (the threshold)");
  }
  if (secret_size == 0 || secret_size > kShamirMaxSecretBytes) {
    return Status::InvalidArgument(
        "Shamir combine: secret size must be in "
        "[1, 64], got " +
        std::to_string(secret_size));
  }
  BnPtr p = FieldPrime();
  BnCtxPtr ctx(BN_CTX_new());
  BnPtr zero = NewBn(), out = NewBn(), check = NewBn();
  if (!p || !ctx || !zero || !out || !check) return OpenSslError("Shamir");
  BN_zero(zero.get());
  std::vector<BnPtr> xs, ys;
  RETURN_IF_ERROR(ParseShares(shares, p.get(), &xs, &ys));
  RETURN_IF_ERROR(InterpolateAt(xs, ys, threshold, zero.get(), p.get(),
                                ctx.get(), out.get()));
  for (size_t j = threshold; j < xs.size(); ++j) {
    RETURN_IF_ERROR(InterpolateAt(xs, ys, threshold, xs[j].get(), p.get(),
                                  ctx.get(), check.get()));
    if (BN_cmp(check.get(), ys[j].get()) != 0) {
      return Status::Corruption(
          "Shamir combine: share x=" + std::to_string(shares[j].x) +
          " does not lie on the polynomial of the first " +
          std::to_string(threshold) +
          " shares (a corrupted share, or shares "
          "of different secrets)");
    }
  }
  SecretBytes secret(secret_size);
  if (BN_bn2binpad(out.get(), secret.data(), static_cast<int>(secret_size)) <
      0) {
    return Status::Corruption(
        "Shamir combine: the interpolated value does not fit " +
        std::to_string(secret_size) +
        " bytes (inconsistent shares or a wrong threshold)");
  }
  return secret;
}

// ---- Key schedule -----------------------------------------------------------

namespace {

void AppendU32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

std::vector<uint8_t> SessionSalt(uint64_t session_id) {
  static constexpr char kLabel[] = "fedpeft-secagg-v1";
  std::vector<uint8_t> salt(kLabel, kLabel + sizeof(kLabel) - 1);
  for (int i = 0; i < 8; ++i) {
    salt.push_back(static_cast<uint8_t>(session_id >> (8 * i)));
  }
  return salt;
}

StatusOr<SecretBytes> DeriveFromAgreement(const SecretBytes& private_key,
                                          const PublicKey& peer_public_key,
                                          uint64_t session_id,
                                          const std::string& label,
                                          uint32_t first, uint32_t second) {
  ASSIGN_OR_RETURN(SecretBytes shared,
                   X25519Agree(private_key, peer_public_key));
  std::vector<uint8_t> info(label.begin(), label.end());
  AppendU32(&info, first);
  AppendU32(&info, second);
  return HkdfSha256(shared, SessionSalt(session_id), info, kKeyBytes);
}

}  // namespace

StatusOr<SecretBytes> DerivePairMaskSeed(const SecretBytes& private_key,
                                         const PublicKey& peer_public_key,
                                         uint64_t session_id, uint32_t a,
                                         uint32_t b) {
  return DeriveFromAgreement(private_key, peer_public_key, session_id,
                             "pair-mask", std::min(a, b), std::max(a, b));
}

StatusOr<SecretBytes> DeriveShareKey(const SecretBytes& private_key,
                                     const PublicKey& peer_public_key,
                                     uint64_t session_id, uint32_t sender,
                                     uint32_t recipient) {
  return DeriveFromAgreement(private_key, peer_public_key, session_id,
                             "share-enc", sender, recipient);
}

}  // namespace secagg
}  // namespace fedpeft
