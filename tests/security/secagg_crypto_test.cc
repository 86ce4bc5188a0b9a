// Tests of secure aggregation's building blocks (security/secagg_crypto.h,
// secagg_fixed_point.h): X25519, HKDF and the AES-CTR PRG against published
// vectors, AES-GCM, Shamir sharing over GF(2^521 - 1), fixed-point encoding.
// The protocol and the wire format: secagg_test.cc.
#include "security/secagg_crypto.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "security/secagg_fixed_point.h"
#include "tests/security/seeded_random.h"

namespace fedpeft {
namespace secagg {
namespace {

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(
        static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}
SecretBytes SecretFromHex(const std::string& hex) {
  std::vector<uint8_t> b = FromHex(hex);
  return SecretBytes(b.data(), b.size());
}
std::string ToHex(const uint8_t* data, size_t size) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < size; ++i) {
    s += kDigits[data[i] >> 4];
    s += kDigits[data[i] & 15];
  }
  return s;
}
std::string ToHex(const SecretBytes& b) { return ToHex(b.data(), b.size()); }

// ---- Crypto building blocks
// ---------------------------------------------------

TEST(SecAggCryptoTest, X25519MatchesRfc7748) {
  SecretBytes alice = SecretFromHex(
      "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  SecretBytes bob = SecretFromHex(
      "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  StatusOr<PublicKey> alice_pub = X25519PublicKey(alice);
  StatusOr<PublicKey> bob_pub = X25519PublicKey(bob);
  ASSERT_TRUE(alice_pub.ok()) << alice_pub.status().ToString();
  ASSERT_TRUE(bob_pub.ok()) << bob_pub.status().ToString();
  EXPECT_EQ(ToHex(alice_pub->data(), 32),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(ToHex(bob_pub->data(), 32),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  StatusOr<SecretBytes> k = X25519Agree(alice, *bob_pub);
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_EQ(ToHex(*k),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
}

TEST(SecAggCryptoTest, X25519AgreementIsSymmetric) {
  SeededRandom rng(1);
  for (int i = 0; i < 5; ++i) {
    StatusOr<X25519KeyPair> a = GenerateX25519KeyPair(rng);
    StatusOr<X25519KeyPair> b = GenerateX25519KeyPair(rng);
    StatusOr<X25519KeyPair> c = GenerateX25519KeyPair(rng);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    StatusOr<SecretBytes> ab = X25519Agree(a->private_key, b->public_key);
    StatusOr<SecretBytes> ba = X25519Agree(b->private_key, a->public_key);
    StatusOr<SecretBytes> ac = X25519Agree(a->private_key, c->public_key);
    ASSERT_TRUE(ab.ok() && ba.ok() && ac.ok());
    EXPECT_TRUE(ab->Equals(*ba));
    EXPECT_FALSE(ab->Equals(*ac));
    // The derived seeds agree too, whichever side derives them.
    StatusOr<SecretBytes> s1 =
        DerivePairMaskSeed(a->private_key, b->public_key, 7, 3, 5);
    StatusOr<SecretBytes> s2 =
        DerivePairMaskSeed(b->private_key, a->public_key, 7, 5, 3);
    StatusOr<SecretBytes> other_session =
        DerivePairMaskSeed(b->private_key, a->public_key, 8, 5, 3);
    ASSERT_TRUE(s1.ok() && s2.ok() && other_session.ok());
    EXPECT_TRUE(s1->Equals(*s2));
    EXPECT_FALSE(s1->Equals(*other_session));
  }
}

TEST(SecAggCryptoTest, X25519RejectsSmallOrderPeerKey) {
  SeededRandom rng(2);
  StatusOr<X25519KeyPair> a = GenerateX25519KeyPair(rng);
  ASSERT_TRUE(a.ok());
  PublicKey zero{};  // the identity: every shared secret would be zero
  StatusOr<SecretBytes> k = X25519Agree(a->private_key, zero);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(k.status().message().find("small order"), std::string::npos)
      << k.status().ToString();
}

TEST(SecAggCryptoTest, HkdfMatchesRfc5869AndIsDeterministic) {
  const SecretBytes ikm(std::vector<uint8_t>(22, 0x0b).data(), 22);
  StatusOr<SecretBytes> case1 =
      HkdfSha256(ikm, FromHex("000102030405060708090a0b0c"),
                 FromHex("f0f1f2f3f4f5f6f7f8f9"), 42);
  ASSERT_TRUE(case1.ok()) << case1.status().ToString();
  EXPECT_EQ(ToHex(*case1),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
            "34007208d5b887185865");
  StatusOr<SecretBytes> case3 = HkdfSha256(ikm, {}, {}, 42);  // no salt/info
  ASSERT_TRUE(case3.ok()) << case3.status().ToString();
  EXPECT_EQ(ToHex(*case3),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
            "9d201395faa4b61a96c8");
  StatusOr<SecretBytes> again = HkdfSha256(ikm, {1}, {2}, 32);
  StatusOr<SecretBytes> again2 = HkdfSha256(ikm, {1}, {2}, 32);
  StatusOr<SecretBytes> other_info = HkdfSha256(ikm, {1}, {3}, 32);
  ASSERT_TRUE(again.ok() && again2.ok() && other_info.ok());
  EXPECT_TRUE(again->Equals(*again2));
  EXPECT_FALSE(again->Equals(*other_info));
  EXPECT_FALSE(HkdfSha256(ikm, {}, {}, 0).ok());
}

TEST(SecAggCryptoTest, PrgIsAesCtrAndDeterministic) {
  // AES-256 of the zero block under the zero key (FIPS-197 style vector):
  // dc95c078 a2408989 ad48a214 92842087, read little-endian per word.
  const SecretBytes zero_key(kKeyBytes);
  StatusOr<std::vector<uint32_t>> w = PrgWords(zero_key, 4);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(*w, (std::vector<uint32_t>{0x78c095dcu, 0x898940a2u, 0x14a248adu,
                                       0x87208492u}));

  SeededRandom rng(3);
  SecretBytes seed(kKeyBytes), seed2(kKeyBytes);
  ASSERT_TRUE(rng.Fill(seed.data(), seed.size()).ok());
  ASSERT_TRUE(rng.Fill(seed2.data(), seed2.size()).ok());
  // Longer than one 16384-word chunk: prefixes agree across chunking.
  const size_t n = 16384 * 2 + 5;
  StatusOr<std::vector<uint32_t>> a = PrgWords(seed, n);
  StatusOr<std::vector<uint32_t>> b = PrgWords(seed, n);
  StatusOr<std::vector<uint32_t>> prefix = PrgWords(seed, 16390);
  StatusOr<std::vector<uint32_t>> other = PrgWords(seed2, n);
  ASSERT_TRUE(a.ok() && b.ok() && prefix.ok() && other.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_TRUE(std::equal(prefix->begin(), prefix->end(), a->begin()));
  size_t same = 0;
  for (size_t i = 0; i < n; ++i) same += (*a)[i] == (*other)[i];
  EXPECT_LE(same, 2u);
  // Adding then subtracting the same mask is the identity mod 2^32.
  std::vector<uint32_t> x(n, 0xdeadbeefu);
  ASSERT_TRUE(PrgAccumulate(seed, +1, x.data(), x.size()).ok());
  EXPECT_NE(x[0], 0xdeadbeefu);
  ASSERT_TRUE(PrgAccumulate(seed, -1, x.data(), x.size()).ok());
  EXPECT_EQ(x, std::vector<uint32_t>(n, 0xdeadbeefu));
  EXPECT_FALSE(PrgAccumulate(SecretBytes(16), +1, x.data(), 1).ok());
}

TEST(SecAggCryptoTest, AeadRoundTripAndTamperDetection) {
  SeededRandom rng(4);
  SecretBytes key(kKeyBytes), other_key(kKeyBytes), plain(132);
  ASSERT_TRUE(rng.Fill(key.data(), key.size()).ok());
  ASSERT_TRUE(rng.Fill(other_key.data(), other_key.size()).ok());
  ASSERT_TRUE(rng.Fill(plain.data(), plain.size()).ok());
  const std::array<uint8_t, kAeadNonceBytes> nonce{};
  const std::vector<uint8_t> aad = {1, 2, 3};
  StatusOr<std::vector<uint8_t>> sealed = AeadSeal(key, nonce, aad, plain);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->size(), plain.size() + kAeadTagBytes);
  StatusOr<SecretBytes> opened = AeadOpen(key, nonce, aad, *sealed);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_TRUE(opened->Equals(plain));

  std::vector<uint8_t> flipped = *sealed;
  flipped[5] ^= 1;
  EXPECT_EQ(AeadOpen(key, nonce, aad, flipped).status().code(),
            StatusCode::kCorruption);
  EXPECT_FALSE(AeadOpen(key, nonce, {1, 2, 4}, *sealed).ok());
  EXPECT_FALSE(AeadOpen(other_key, nonce, aad, *sealed).ok());
  EXPECT_FALSE(AeadOpen(key, nonce, aad, {1, 2}).ok());
}

// ---- Shamir
// -------------------------------------------------------------------

SecretBytes RandomSecret(RandomSource& rng, size_t size) {
  SecretBytes s(size);
  EXPECT_TRUE(rng.Fill(s.data(), s.size()).ok());
  return s;
}

TEST(ShamirTest, AnyThresholdSubsetRecoversTheSecret) {
  SeededRandom rng(10);
  const SecretBytes secret = RandomSecret(rng, 32);
  const std::vector<uint32_t> xs = {1, 2, 3, 4, 5};
  StatusOr<std::vector<ShamirShare>> shares = ShamirSplit(secret, 3, xs, rng);
  ASSERT_TRUE(shares.ok()) << shares.status().ToString();
  ASSERT_EQ(shares->size(), 5u);
  // Every 3-subset, every 4-subset (spare share checked) and all 5.
  for (int mask = 0; mask < 32; ++mask) {
    std::vector<ShamirShare> subset;
    for (int i = 0; i < 5; ++i) {
      if (mask & (1 << i)) subset.push_back((*shares)[i]);
    }
    if (subset.size() < 3) continue;
    StatusOr<SecretBytes> got = ShamirCombine(subset, 3, 32);
    ASSERT_TRUE(got.ok()) << "subset " << mask << ": "
                          << got.status().ToString();
    EXPECT_TRUE(got->Equals(secret)) << "subset " << mask;
  }
  // Edge thresholds and the largest secret.
  for (uint32_t t : {1u, 5u}) {
    const SecretBytes big = RandomSecret(rng, kShamirMaxSecretBytes);
    StatusOr<std::vector<ShamirShare>> s = ShamirSplit(big, t, xs, rng);
    ASSERT_TRUE(s.ok());
    StatusOr<SecretBytes> got = ShamirCombine(*s, t, kShamirMaxSecretBytes);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_TRUE(got->Equals(big));
  }
}

TEST(ShamirTest, FewerThanThresholdSharesAreRejectedAndRevealNothing) {
  SeededRandom rng(11);
  const SecretBytes secret = RandomSecret(rng, 32);
  StatusOr<std::vector<ShamirShare>> shares =
      ShamirSplit(secret, 4, {1, 2, 3, 4, 5, 6}, rng);
  ASSERT_TRUE(shares.ok());
  std::vector<ShamirShare> three(shares->begin(), shares->begin() + 3);
  StatusOr<SecretBytes> got = ShamirCombine(three, 4, 32);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(got.status().message().find("need at least 4"), std::string::npos)
      << got.status().ToString();
  // Interpolating t - 1 shares anyway gives a field element that is not the
  // secret (with a degree-(t-1) polynomial, t - 1 points fit every secret).
  SecretBytes padded(kShamirElementBytes);
  std::copy(secret.data(), secret.data() + 32,
            padded.data() + kShamirElementBytes - 32);
  StatusOr<SecretBytes> at_zero = ShamirInterpolateAtZero(three);
  ASSERT_TRUE(at_zero.ok()) << at_zero.status().ToString();
  EXPECT_FALSE(at_zero->Equals(padded));
  // Whereas t shares interpolate to exactly the secret.
  std::vector<ShamirShare> four(shares->begin(), shares->begin() + 4);
  StatusOr<SecretBytes> exact = ShamirInterpolateAtZero(four);
  ASSERT_TRUE(exact.ok());
  EXPECT_TRUE(exact->Equals(padded));
}

TEST(ShamirTest, RejectsZeroAndDuplicateXAndMalformedShares) {
  SeededRandom rng(12);
  const SecretBytes secret = RandomSecret(rng, 32);
  EXPECT_FALSE(ShamirSplit(secret, 2, {0, 1, 2}, rng).ok());
  EXPECT_FALSE(ShamirSplit(secret, 2, {1, 2, 2}, rng).ok());
  EXPECT_FALSE(ShamirSplit(secret, 4, {1, 2, 3}, rng).ok());
  EXPECT_FALSE(ShamirSplit(secret, 0, {1, 2, 3}, rng).ok());
  EXPECT_FALSE(ShamirSplit(RandomSecret(rng, 65), 2, {1, 2}, rng).ok());

  StatusOr<std::vector<ShamirShare>> shares =
      ShamirSplit(secret, 2, {1, 2, 3}, rng);
  ASSERT_TRUE(shares.ok());
  std::vector<ShamirShare> dup = {(*shares)[0], (*shares)[0]};
  StatusOr<SecretBytes> got = ShamirCombine(dup, 2, 32);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("duplicate x"), std::string::npos)
      << got.status().ToString();
  std::vector<ShamirShare> zero = {(*shares)[0], (*shares)[1]};
  zero[1].x = 0;
  got = ShamirCombine(zero, 2, 32);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("non-zero"), std::string::npos);
  std::vector<ShamirShare> short_y = {(*shares)[0], (*shares)[1]};
  short_y[1].y = SecretBytes(10);
  EXPECT_EQ(ShamirCombine(short_y, 2, 32).status().code(),
            StatusCode::kInvalidArgument);
  std::vector<ShamirShare> above_p = {(*shares)[0], (*shares)[1]};
  above_p[1].y = SecretBytes(kShamirElementBytes);
  std::fill(above_p[1].y.data(), above_p[1].y.data() + kShamirElementBytes,
            0xff);
  EXPECT_EQ(ShamirCombine(above_p, 2, 32).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ShamirTest, SpareShareDetectsACorruptedOne) {
  SeededRandom rng(13);
  const SecretBytes secret = RandomSecret(rng, 32);
  StatusOr<std::vector<ShamirShare>> shares =
      ShamirSplit(secret, 3, {1, 2, 3, 4}, rng);
  ASSERT_TRUE(shares.ok());
  (*shares)[3].y.data()[kShamirElementBytes - 1] ^= 1;
  StatusOr<SecretBytes> got = ShamirCombine(*shares, 3, 32);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kCorruption)
      << got.status().ToString();
}

// ---- Fixed point
// --------------------------------------------------------------

TEST(FixedPointTest, ScaleKeepsHeadroomAndCheckRejectsTooFine) {
  StatusOr<double> scale = ChooseFixedPointScale(/*bound=*/1.0, 10);
  ASSERT_TRUE(scale.ok()) << scale.status().ToString();
  EXPECT_GT(*scale, 0);
  EXPECT_LT(*scale, 1e-7);
  EXPECT_TRUE(CheckFixedPointHeadroom(*scale, 1.0, 10).ok());
  Status too_fine = CheckFixedPointHeadroom(*scale / 4, 1.0, 10);
  ASSERT_FALSE(too_fine.ok());
  EXPECT_NE(too_fine.message().find("2^31"), std::string::npos)
      << too_fine.ToString();
  EXPECT_FALSE(ChooseFixedPointScale(0, 10).ok());
  EXPECT_FALSE(ChooseFixedPointScale(NAN, 10).ok());
  EXPECT_FALSE(ChooseFixedPointScale(1, 0).ok());
}

TEST(FixedPointTest, StochasticRoundingIsUnbiased) {
  std::mt19937_64 rng(20);
  const int draws = 20000;
  for (double v : {0.3, -1.7, 2.5, 0.0, -0.01}) {
    std::vector<float> values(draws, static_cast<float>(v));
    StatusOr<std::vector<uint32_t>> enc = FixedPointEncode(values, 1.0, rng);
    ASSERT_TRUE(enc.ok()) << enc.status().ToString();
    std::vector<double> dec = FixedPointDecode(*enc, 1.0);
    double mean = 0;
    const double f = std::floor(static_cast<float>(v));
    for (double d : dec) {
      ASSERT_TRUE(d == f || d == f + 1) << d;  // one of the two neighbours
      mean += d / draws;
    }
    // Standard error <= 0.5 / sqrt(draws) = 0.0035; allow 5 of them.
    EXPECT_NEAR(mean, static_cast<float>(v), 5 * 0.5 / std::sqrt(draws))
        << "value " << v;
  }
}

TEST(FixedPointTest, SumOfEncodingsDecodesExactly) {
  const uint32_t n = 10;
  const double bound = 0.5;  // e.g. a clip norm
  StatusOr<double> scale = ChooseFixedPointScale(bound, n);
  ASSERT_TRUE(scale.ok());
  std::mt19937_64 rng(21);
  std::uniform_real_distribution<float> value(-bound, bound);
  const size_t len = 1000;
  std::vector<uint32_t> sum(len, 0);
  std::vector<int64_t> int_sum(len, 0);
  std::vector<double> float_sum(len, 0);
  for (uint32_t c = 0; c < n; ++c) {
    std::vector<float> x(len);
    for (float& v : x) v = value(rng);
    // The extremes too: every client at +bound or -bound on element 0/1.
    x[0] = static_cast<float>(bound);
    x[1] = static_cast<float>(-bound);
    StatusOr<std::vector<uint32_t>> enc = FixedPointEncode(x, *scale, rng);
    ASSERT_TRUE(enc.ok()) << enc.status().ToString();
    for (size_t i = 0; i < len; ++i) {
      sum[i] += (*enc)[i];
      int_sum[i] += static_cast<int32_t>((*enc)[i]);
      float_sum[i] += x[i];
    }
  }
  std::vector<double> dec = FixedPointDecode(sum, *scale);
  for (size_t i = 0; i < len; ++i) {
    EXPECT_EQ(dec[i], static_cast<double>(int_sum[i]) * *scale) << i;
    EXPECT_NEAR(dec[i], float_sum[i], n * *scale) << i;
  }
}

TEST(FixedPointTest, RejectsOutOfRangeAndNonFinite) {
  std::mt19937_64 rng(22);
  StatusOr<std::vector<uint32_t>> enc =
      FixedPointEncode(std::vector<float>{0.0f, 3e9f}, 1.0, rng);
  ASSERT_FALSE(enc.ok());
  EXPECT_NE(enc.status().message().find("element 1"), std::string::npos)
      << enc.status().ToString();
  EXPECT_FALSE(FixedPointEncode(std::vector<float>{NAN}, 1.0, rng).ok());
  EXPECT_FALSE(FixedPointEncode(std::vector<float>{1.0f}, 0.0, rng).ok());
  // -2^31 + 2 is the most negative accepted value; it round-trips.
  enc = FixedPointEncode(std::vector<float>{-2147483520.0f}, 1.0, rng);
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(FixedPointDecode(*enc, 1.0)[0], -2147483520.0);
}

}  // namespace
}  // namespace secagg
}  // namespace fedpeft
