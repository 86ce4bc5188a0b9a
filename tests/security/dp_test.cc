// Tests of the DP-FedAvg mechanisms: norms, clipping, Gaussian noise and
// adaptive clipping's updates.
#include "security/dp.h"

#include <gtest/gtest.h>

#include <cmath>

#include "security/rdp_accountant.h"

namespace fedpeft {
namespace privacy {
namespace {

TensorMap TwoTensors() {
  TensorMap m;
  m["a"] = torch::tensor({3.0f, 0.0f});
  m["b"] = torch::tensor({{4.0f}, {12.0f}});
  return m;  // global norm sqrt(9 + 16 + 144) = 13
}

TEST(DpTest, GlobalNormSpansAllTensors) {
  EXPECT_DOUBLE_EQ(GlobalNorm(TwoTensors()), 13.0);
  EXPECT_EQ(GlobalNorm(TensorMap{}), 0.0);
  TensorMap with_empty = TwoTensors();
  with_empty["empty"] = torch::zeros({0});
  EXPECT_DOUBLE_EQ(GlobalNorm(with_empty), 13.0);
}

TEST(DpTest, GlobalNormAccumulatesInDouble) {
  // 4M elements of 1e-3: a float32 running sum of squares drifts; the
  // double one gives sqrt(4e6 * 1e-6) = 2 to about float precision.
  TensorMap m;
  m["x"] = torch::full({4'000'000}, 1e-3f);
  EXPECT_NEAR(GlobalNorm(m), 2.0, 1e-6);
}

TEST(DpTest, ClipToNormBoundsTheNorm) {
  torch::manual_seed(7);
  for (double clip : {0.01, 0.5, 1.0, 3.0}) {
    TensorMap m;
    m["lora_A"] = torch::randn({8, 64}) * 2;
    m["lora_B"] = torch::randn({64, 8});
    const double before = GlobalNorm(m);
    ASSERT_GT(before, clip);
    EXPECT_DOUBLE_EQ(ClipToNorm(&m, clip), before);
    EXPECT_LE(GlobalNorm(m), clip * (1 + 1e-6)) << "clip " << clip;
    EXPECT_GE(GlobalNorm(m), clip * (1 - 1e-6)) << "clip " << clip;
  }
}

TEST(DpTest, ClipToNormKeepsDirection) {
  TensorMap m = TwoTensors();
  EXPECT_DOUBLE_EQ(ClipToNorm(&m, 1.3), 13.0);
  EXPECT_TRUE(torch::allclose(m["a"], torch::tensor({0.3f, 0.0f})));
  EXPECT_TRUE(torch::allclose(m["b"], torch::tensor({{0.4f}, {1.2f}})));
}

TEST(DpTest, ClipToNormLeavesSmallUpdatesUnchanged) {
  TensorMap m = TwoTensors();
  const TensorMap original = {{"a", m["a"].clone()}, {"b", m["b"].clone()}};
  EXPECT_DOUBLE_EQ(ClipToNorm(&m, 13.5), 13.0);
  EXPECT_TRUE(torch::equal(m["a"], original.at("a")));
  EXPECT_TRUE(torch::equal(m["b"], original.at("b")));
  // Exactly at the bound: unchanged too.
  EXPECT_DOUBLE_EQ(ClipToNorm(&m, 13.0), 13.0);
  EXPECT_TRUE(torch::equal(m["b"], original.at("b")));
}

TEST(DpTest, ClipToNormZeroesNonFiniteUpdates) {
  TensorMap m = TwoTensors();
  m["a"][0] = std::nanf("");
  EXPECT_TRUE(std::isnan(ClipToNorm(&m, 1.0)));
  EXPECT_EQ(GlobalNorm(m), 0.0);
}

TEST(DpTest, GaussianNoiseHasTheRequestedMoments) {
  // 10^6 draws of N(0, s^2): the sample mean has standard error s / sqrt(n)
  // = 1e-3 s and the sample standard deviation s / sqrt(2 (n - 1)) ~= 7.1e-4
  // s. Five standard errors leave a ~6e-7 chance of a false failure (and
  // the seed is fixed, so the test is deterministic anyway).
  const double s = 0.37;
  const int64_t n = 1'000'000;
  GaussianNoise noise(/*seed=*/20240611);
  TensorMap m;
  m["x"] = torch::zeros({1000, 1000});
  noise.AddTo(&m, s);
  const torch::Tensor x = m["x"].to(torch::kDouble);
  const double mean = x.mean().item<double>();
  const double sd = x.std().item<double>();
  EXPECT_NEAR(mean, 0.0, 5 * s / std::sqrt(double(n)));
  EXPECT_NEAR(sd, s, 5 * s / std::sqrt(2.0 * (n - 1)));
  EXPECT_EQ(m["x"].scalar_type(), torch::kFloat);

  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = noise.Sample(s);
    sum += v;
    sum_sq += v * v;
  }
  const double sample_mean = sum / n;
  const double sample_sd =
      std::sqrt((sum_sq - n * sample_mean * sample_mean) / (n - 1));
  EXPECT_NEAR(sample_mean, 0.0, 5 * s / std::sqrt(double(n)));
  EXPECT_NEAR(sample_sd, s, 5 * s / std::sqrt(2.0 * (n - 1)));
}

TEST(DpTest, GaussianNoiseIsReproducibleWithASeed) {
  TensorMap a = TwoTensors(), b = TwoTensors(), c = TwoTensors();
  GaussianNoise(5).AddTo(&a, 1.0);
  GaussianNoise(5).AddTo(&b, 1.0);
  GaussianNoise(6).AddTo(&c, 1.0);
  EXPECT_TRUE(torch::equal(a["b"], b["b"]));
  EXPECT_FALSE(torch::equal(a["b"], c["b"]));
  EXPECT_EQ(GaussianNoise(9).Sample(2.0), GaussianNoise(9).Sample(2.0));
}

// Seed 0 is OpenSSL's DRBG: two samplers never agree, yet the draws have
// the requested moments; a seeded one restarts exactly on Reseed.
TEST(DpTest, DefaultNoiseIsTheDrbgAndSeededNoiseReseeds) {
  GaussianNoise a, b;
  EXPECT_FALSE(a.seeded());
  TensorMap x = {{"t", torch::zeros({4096})}};
  TensorMap y = {{"t", torch::zeros({4096})}};
  a.AddTo(&x, 2.0);
  b.AddTo(&y, 2.0);
  EXPECT_FALSE(torch::equal(x["t"], y["t"]));
  const double n = 4096;
  const double mean = x["t"].to(torch::kDouble).mean().item<double>();
  const double sd = x["t"].to(torch::kDouble).std().item<double>();
  EXPECT_NEAR(mean, 0.0, 5 * 2.0 / std::sqrt(n));
  EXPECT_NEAR(sd, 2.0, 5 * 2.0 / std::sqrt(2 * (n - 1)));
  a.Reseed(7);  // no-op for the DRBG
  EXPECT_FALSE(a.seeded());

  GaussianNoise s(11);
  EXPECT_TRUE(s.seeded());
  const double first = s.Sample(1.0);
  s.Sample(1.0);
  s.Reseed(11);
  EXPECT_EQ(s.Sample(1.0), first);
  s.Reseed(12);
  EXPECT_NE(s.Sample(1.0), first);
}

TEST(DpTest, GaussianNoiseWithZeroStddevChangesNothing) {
  TensorMap m = TwoTensors();
  GaussianNoise noise(3);
  noise.AddTo(&m, 0.0);
  EXPECT_TRUE(torch::equal(m["a"], TwoTensors()["a"]));
  EXPECT_EQ(noise.Sample(0.0), 0.0);
}

TEST(DpTest, NextClipNormFollowsAndrewEtAl) {
  // Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning
  // with Adaptive Clipping" (NeurIPS 2021), geometric update
  // C <- C exp(-eta (b - gamma)), b the fraction of updates NOT clipped.
  // More unclipped than the target quantile: C is too large and shrinks.
  const double c = 2.0, eta = 0.2, gamma = 0.5;
  const double shrunk = NextClipNorm(c, 0.8, gamma, eta);
  EXPECT_LT(shrunk, c);
  EXPECT_DOUBLE_EQ(shrunk, c * std::exp(-eta * (0.8 - gamma)));
  // Fewer unclipped than the target: C grows.
  const double grown = NextClipNorm(c, 0.1, gamma, eta);
  EXPECT_GT(grown, c);
  EXPECT_DOUBLE_EQ(grown, c * std::exp(-eta * (0.1 - gamma)));
  // At the target quantile it stays.
  EXPECT_DOUBLE_EQ(NextClipNorm(c, gamma, gamma, eta), c);
}

TEST(DpTest, UpdateNoiseMultiplierFormula) {
  // z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) (Andrew et al. 2021, Thm. 1).
  StatusOr<double> z = UpdateNoiseMultiplier(1.0, 5.0);
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  EXPECT_DOUBLE_EQ(*z, 1.0 / std::sqrt(1.0 - 1.0 / 100.0));
  // The pair costs exactly what z alone costs: Gaussian RDP adds up.
  for (double order : {2.0, 8.0, 32.0}) {
    EXPECT_NEAR(SampledGaussianRdp(1.0, *z, order) +
                    SampledGaussianRdp(1.0, 2 * 5.0, order),
                SampledGaussianRdp(1.0, 1.0, order), 1e-12);
  }
  // Infinite count noise: the update gets the whole budget.
  StatusOr<double> all = UpdateNoiseMultiplier(1.3, INFINITY);
  ASSERT_TRUE(all.ok());
  EXPECT_DOUBLE_EQ(*all, 1.3);
}

TEST(DpTest, UpdateNoiseMultiplierRejectsTooLittleCountNoise) {
  for (double count_stddev : {0.5, 0.3, 0.0, -1.0}) {
    StatusOr<double> z = UpdateNoiseMultiplier(1.0, count_stddev);
    ASSERT_FALSE(z.ok()) << count_stddev;
    EXPECT_EQ(z.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(z.status().message().find("count noise"), std::string::npos)
        << z.status().ToString();
  }
  EXPECT_FALSE(UpdateNoiseMultiplier(0.0, 10.0).ok());
  EXPECT_TRUE(UpdateNoiseMultiplier(1.0, 0.51).ok());
}

}  // namespace
}  // namespace privacy
}  // namespace fedpeft
