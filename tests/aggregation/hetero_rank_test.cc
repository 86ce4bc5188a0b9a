// Tests of heterogeneous-rank aggregation against dense references: every
// expected value is computed straightforwardly from explicit out×in products
// (local factors multiplied out, weighted sums, torch::linalg_svd of the
// dense matrix), never through the low-rank QR path under test. Products are
// compared rather than factors where factors are only unique up to rotation.
#include "aggregation/hetero_rank.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace fedpeft {
namespace aggregation {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kOut = 12;
constexpr int64_t kIn = 10;
constexpr int64_t kRMax = 4;
constexpr double kScale = 2.0;

const std::string kQ = "base_model.model.model.layers.0.self_attn.q_proj";
const std::string kV = "base_model.model.model.layers.0.self_attn.v_proj";
std::string AKey(const std::string& m) { return m + ".lora_A.weight"; }
std::string BKey(const std::string& m) { return m + ".lora_B.weight"; }

torch::Tensor Randn(std::vector<int64_t> shape, double scale = 1.0) {
  return torch::randn(shape, torch::kFloat32) * scale;
}

// A global with modules `modules`, all at `rank`, random A and B (B nonzero
// so products are nonzero, as after a few rounds of training).
TensorMap RandomGlobal(const std::vector<std::string>& modules,
                       int64_t rank = kRMax, int64_t out = kOut,
                       int64_t in = kIn) {
  TensorMap g;
  for (const std::string& m : modules) {
    g[AKey(m)] = Randn({rank, in});
    g[BKey(m)] = Randn({out, rank}, 0.5);
  }
  return g;
}

// PEFT-style initial adapter: random A, zero B.
TensorMap InitAdapter(const std::vector<std::string>& modules,
                      int64_t rank = kRMax, int64_t out = kOut,
                      int64_t in = kIn) {
  TensorMap g;
  for (const std::string& m : modules) {
    g[AKey(m)] = Randn({rank, in});
    g[BKey(m)] = torch::zeros({out, rank});
  }
  return g;
}

enum class Send { kBoth, kAOnly, kBOnly };

// A random delta at `rank` for `modules` of `global`.
HeteroUpdate RandomUpdate(const std::string& worker, const TensorMap& global,
                          int64_t rank, int64_t n,
                          const std::vector<std::string>& modules,
                          Send send = Send::kBoth) {
  HeteroUpdate u;
  u.worker_id = worker;
  u.rank = rank;
  u.num_samples = n;
  for (const std::string& m : modules) {
    const torch::Tensor& a = global.at(AKey(m));
    const torch::Tensor& b = global.at(BKey(m));
    const int64_t r = std::min(rank, a.size(0));
    if (send != Send::kBOnly) u.delta[AKey(m)] = Randn({r, a.size(1)}, 0.3);
    if (send != Send::kAOnly) u.delta[BKey(m)] = Randn({b.size(0), r}, 0.3);
  }
  return u;
}

// ------------------------------------------------------ dense reference --

torch::Tensor F64(const torch::Tensor& t) { return t.to(torch::kFloat64); }

bool Touches(const HeteroUpdate& u, const std::string& m) {
  return u.delta.count(AKey(m)) || u.delta.count(BKey(m));
}

// The worker's local factors for module m: the global's leading components
// (written as explicit slices) plus its delta, a missing delta being zero.
std::pair<torch::Tensor, torch::Tensor> LocalFactors(const TensorMap& global,
                                                     const HeteroUpdate& u,
                                                     const std::string& m) {
  torch::Tensor a = F64(global.at(AKey(m)));
  torch::Tensor b = F64(global.at(BKey(m)));
  const int64_t r = std::min(u.rank, a.size(0));
  a = a.slice(0, 0, r).clone();
  b = b.slice(1, 0, r).clone();
  if (u.delta.count(AKey(m))) a += F64(u.delta.at(AKey(m)));
  if (u.delta.count(BKey(m))) b += F64(u.delta.at(BKey(m)));
  return {b, a};
}

torch::Tensor DenseProduct(const TensorMap& adapter, const std::string& m) {
  return kScale * F64(adapter.at(BKey(m))).mm(F64(adapter.at(AKey(m))));
}

// n_k / Σ n over the workers touching m (0 for the others).
std::vector<double> SampleShares(const std::vector<HeteroUpdate>& updates,
                                 const std::string& m) {
  double total = 0;
  for (const auto& u : updates) {
    if (Touches(u, m)) total += u.num_samples;
  }
  std::vector<double> w;
  for (const auto& u : updates) {
    w.push_back(Touches(u, m) ? u.num_samples / total : 0.0);
  }
  return w;
}

// FlexLoRA's W = Σ w_k s B_k A_k, dense.
torch::Tensor SvdReferenceW(const TensorMap& global,
                            const std::vector<HeteroUpdate>& updates,
                            const std::string& m) {
  const std::vector<double> w = SampleShares(updates, m);
  torch::Tensor sum = torch::zeros({kOut, kIn}, torch::kFloat64);
  for (size_t k = 0; k < updates.size(); ++k) {
    if (!Touches(updates[k], m)) continue;
    auto [b, a] = LocalFactors(global, updates[k], m);
    sum += w[k] * kScale * b.mm(a);
  }
  return sum;
}

// FLoRA-exact: s B_G A_G + Σ w_k (s B_k A_k − s B_gk A_gk), dense.
torch::Tensor StackReferenceP(const TensorMap& global,
                              const std::vector<HeteroUpdate>& updates,
                              const std::string& m, int64_t out = kOut,
                              int64_t in = kIn) {
  const std::vector<double> w = SampleShares(updates, m);
  torch::Tensor p = DenseProduct(global, m);
  for (size_t k = 0; k < updates.size(); ++k) {
    if (!Touches(updates[k], m)) continue;
    auto [b, a] = LocalFactors(global, updates[k], m);
    HeteroUpdate start = updates[k];
    start.delta.clear();
    auto [bg, ag] = LocalFactors(global, start, m);
    p += w[k] * (kScale * b.mm(a) - kScale * bg.mm(ag));
  }
  return p;
}

// The best rank-r approximation of a dense matrix and its truncated energy.
torch::Tensor BestRank(const torch::Tensor& w, int64_t r,
                       double* truncated_energy = nullptr) {
  auto [u, s, vh] = torch::linalg_svd(w, /*full_matrices=*/false);
  const int64_t q = std::min<int64_t>(r, s.size(0));
  if (truncated_energy) {
    const double total = s.square().sum().item<double>();
    *truncated_energy =
        std::sqrt(s.slice(0, q).square().sum().item<double>() / total);
  }
  return u.slice(1, 0, q)
      .mm(torch::diag(s.slice(0, 0, q)))
      .mm(vh.slice(0, 0, q));
}

// ‖got − want‖_F <= rtol · ‖want‖_F (+ atol for a zero want).
void ExpectMatrixNear(const torch::Tensor& got, const torch::Tensor& want,
                      double rtol = 1e-4, double atol = 1e-6) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const double err = (F64(got) - F64(want)).norm().item<double>();
  const double ref = F64(want).norm().item<double>();
  EXPECT_LE(err, rtol * ref + atol)
      << "relative error " << err / std::max(ref, 1e-300) << "\ngot\n"
      << got << "\nwant\n"
      << want;
}

TensorMap AggregateOk(const HeteroOptions& options, const TensorMap& global,
                      const TensorMap& init,
                      const std::vector<HeteroUpdate>& updates,
                      HeteroStats* stats = nullptr) {
  auto out = HeteroAggregate(options, global, init, updates, stats);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? std::move(out).value() : TensorMap{};
}

HeteroOptions Options(HeteroMethod method) {
  HeteroOptions o;
  o.method = method;
  o.r_max = kRMax;
  o.scaling = kScale;
  return o;
}

// Balanced SVD form: A·Aᵀ = s²·BᵀB = diag(σ), σ descending.
void ExpectBalancedDescending(const TensorMap& out, const std::string& m,
                              int64_t kept) {
  const torch::Tensor a = F64(out.at(AKey(m))).slice(0, 0, kept);
  const torch::Tensor b = F64(out.at(BKey(m))).slice(1, 0, kept);
  const torch::Tensor gram_a = a.mm(a.t());
  const torch::Tensor gram_b = kScale * kScale * b.t().mm(b);
  const torch::Tensor sigma = torch::diagonal(gram_a);
  ExpectMatrixNear(gram_a, torch::diag(sigma), 1e-4);
  ExpectMatrixNear(gram_b, torch::diag(sigma), 1e-4);
  for (int64_t i = 1; i < kept; ++i) {
    EXPECT_GE(sigma[i - 1].item<double>(), sigma[i].item<double>() * (1 - 1e-5))
        << "component " << i;
  }
}

// ---------------------------------------------------------------- helpers --

TEST(LoraPairsTest, ListsPairsSortedByModule) {
  torch::manual_seed(1);
  const TensorMap g = RandomGlobal({kV, kQ});
  auto pairs = LoraPairs(g);
  ASSERT_TRUE(pairs.ok()) << pairs.status().ToString();
  ASSERT_EQ(pairs->size(), 2u);
  EXPECT_EQ((*pairs)[0].module, kQ);
  EXPECT_EQ((*pairs)[0].a_key, AKey(kQ));
  EXPECT_EQ((*pairs)[0].b_key, BKey(kQ));
  EXPECT_EQ((*pairs)[1].module, kV);
}

TEST(LoraPairsTest, RejectsForeignKeyIncompletePairAndRankMismatch) {
  torch::manual_seed(1);
  TensorMap g = RandomGlobal({kQ});
  g["model.layers.0.attn_adapter.down.weight"] = Randn({4, 4});
  auto foreign = LoraPairs(g);
  ASSERT_FALSE(foreign.ok());
  EXPECT_EQ(foreign.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(foreign.status().message(), HasSubstr("attn_adapter.down"));

  TensorMap half = RandomGlobal({kQ});
  half.erase(BKey(kQ));
  auto incomplete = LoraPairs(half);
  ASSERT_FALSE(incomplete.ok());
  EXPECT_THAT(incomplete.status().message(), HasSubstr(BKey(kQ)));

  TensorMap mismatch = RandomGlobal({kQ});
  mismatch[BKey(kQ)] = Randn({kOut, 3});
  auto bad = LoraPairs(mismatch);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(kQ));
  EXPECT_THAT(bad.status().message(), HasSubstr("[12, 3]"));
}

TEST(ModuleRanksTest, RowsOfAOrColumnsOfBForPartialMaps) {
  torch::manual_seed(1);
  TensorMap g = RandomGlobal({kQ});
  g[BKey(kV)] = Randn({kOut, 3});  // B only, as in an FFA-LoRA update
  const auto ranks = ModuleRanks(g);
  ASSERT_EQ(ranks.size(), 2u);
  EXPECT_EQ(ranks.at(kQ), kRMax);
  EXPECT_EQ(ranks.at(kV), 3);
}

TEST(TruncateRankTest, KeepsLeadingComponentsAsContiguousClones) {
  torch::manual_seed(2);
  const TensorMap g = RandomGlobal({kQ});
  const TensorMap t = TruncateRank(g, 2);
  const torch::Tensor& a = t.at(AKey(kQ));
  const torch::Tensor& b = t.at(BKey(kQ));
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{2, kIn}));
  EXPECT_EQ(b.sizes(), (std::vector<int64_t>{kOut, 2}));
  EXPECT_TRUE(a.is_contiguous());
  EXPECT_TRUE(b.is_contiguous());
  EXPECT_TRUE(torch::equal(a, g.at(AKey(kQ)).slice(0, 0, 2)));
  EXPECT_TRUE(torch::equal(b, g.at(BKey(kQ)).slice(1, 0, 2)));
  // Already small enough: an unchanged clone, not an alias.
  TensorMap same = TruncateRank(g, 8);
  EXPECT_TRUE(torch::equal(same.at(AKey(kQ)), g.at(AKey(kQ))));
  same.at(AKey(kQ)).fill_(0);
  EXPECT_FALSE(torch::equal(same.at(AKey(kQ)), g.at(AKey(kQ))));
}

TEST(TruncateRankTest, TruncatesPartialMaps) {
  torch::manual_seed(2);
  TensorMap partial = {{BKey(kQ), Randn({kOut, 4})}};
  const TensorMap t = TruncateRank(partial, 3);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t.at(BKey(kQ)).sizes(), (std::vector<int64_t>{kOut, 3}));
}

TEST(TruncateRankTest, RoundTripWithZeroPadRank) {
  torch::manual_seed(3);
  const TensorMap g = RandomGlobal({kQ, kV});
  // Pad then truncate is the identity.
  const TensorMap padded = ZeroPadRank(g, 7);
  EXPECT_EQ(padded.at(AKey(kQ)).sizes(), (std::vector<int64_t>{7, kIn}));
  EXPECT_EQ(padded.at(BKey(kQ)).sizes(), (std::vector<int64_t>{kOut, 7}));
  EXPECT_EQ(padded.at(AKey(kQ)).slice(0, kRMax).abs().sum().item<float>(), 0);
  EXPECT_EQ(padded.at(BKey(kQ)).slice(1, kRMax).abs().sum().item<float>(), 0);
  ExpectMatrixNear(DenseProduct(padded, kQ), DenseProduct(g, kQ), 1e-6);
  const TensorMap back = TruncateRank(padded, kRMax);
  for (const auto& [key, t] : g) {
    EXPECT_TRUE(torch::equal(back.at(key), t)) << key;
  }
  // Truncate then pad keeps the leading components and zeros the rest.
  const TensorMap tp = ZeroPadRank(TruncateRank(g, 2), kRMax);
  EXPECT_TRUE(torch::equal(tp.at(AKey(kV)).slice(0, 0, 2),
                           g.at(AKey(kV)).slice(0, 0, 2)));
  EXPECT_EQ(tp.at(AKey(kV)).slice(0, 2).abs().sum().item<float>(), 0);
  EXPECT_EQ(tp.at(BKey(kV)).slice(1, 2).abs().sum().item<float>(), 0);
}

TEST(HeteroMethodTest, ParsesNamesAndListsThemOnError) {
  for (HeteroMethod m :
       {HeteroMethod::kZeroPad, HeteroMethod::kSvd, HeteroMethod::kStack}) {
    auto parsed = ParseHeteroMethod(HeteroMethodName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  auto bad = ParseHeteroMethod("flexlora");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("zero_pad, svd, stack"));
  EXPECT_THAT(bad.status().message(), HasSubstr("'flexlora'"));
}

// --------------------------------------------------------------- zero_pad --

// Three workers of ranks {2, 3, 4} on a rank-4 global (two modules).
class HeteroRankTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(42);
    global_ = RandomGlobal({kQ, kV});
    init_ = InitAdapter({kQ, kV});
    updates_ = {RandomUpdate("w2", global_, 2, 10, {kQ, kV}),
                RandomUpdate("w3", global_, 3, 20, {kQ, kV}),
                RandomUpdate("w4", global_, 4, 30, {kQ, kV})};
  }

  TensorMap global_, init_;
  std::vector<HeteroUpdate> updates_;
};

// HetLoRA reference: weights n_k·‖s B_k A_k‖_F from dense local products,
// deltas zero-padded with torch::constant_pad_nd.
TensorMap ZeroPadReference(const TensorMap& global,
                           const std::vector<HeteroUpdate>& updates,
                           const std::vector<std::string>& modules) {
  TensorMap out;
  for (const std::string& m : modules) {
    std::vector<double> raw;
    double total = 0;
    for (const auto& u : updates) {
      double x = 0;
      if (Touches(u, m)) {
        auto [b, a] = LocalFactors(global, u, m);
        x = u.num_samples * (kScale * b.mm(a)).norm().item<double>();
      }
      raw.push_back(x);
      total += x;
    }
    if (total == 0) {  // all products zero: fall back to n_k
      raw.clear();
      for (const auto& u : updates) {
        raw.push_back(Touches(u, m) ? u.num_samples : 0.0);
        total += raw.back();
      }
    }
    torch::Tensor a = F64(global.at(AKey(m)));
    torch::Tensor b = F64(global.at(BKey(m)));
    const int64_t r = a.size(0);
    for (size_t k = 0; k < updates.size(); ++k) {
      const TensorMap& d = updates[k].delta;
      const double w = raw[k] / total;
      if (d.count(AKey(m))) {
        const torch::Tensor da = F64(d.at(AKey(m)));
        a = a + w * torch::constant_pad_nd(da, {0, 0, 0, r - da.size(0)});
      }
      if (d.count(BKey(m))) {
        const torch::Tensor db = F64(d.at(BKey(m)));
        b = b + w * torch::constant_pad_nd(db, {0, r - db.size(1)});
      }
    }
    out[AKey(m)] = a;
    out[BKey(m)] = b;
  }
  return out;
}

TEST_F(HeteroRankTest, ZeroPadIsTheNormWeightedPaddedAverage) {
  HeteroStats stats;
  const TensorMap out = AggregateOk(Options(HeteroMethod::kZeroPad), global_,
                                    init_, updates_, &stats);
  const TensorMap want = ZeroPadReference(global_, updates_, {kQ, kV});
  ASSERT_EQ(out.size(), 4u);
  for (const auto& [key, t] : want) {
    EXPECT_EQ(out.at(key).scalar_type(), torch::kFloat32);
    ExpectMatrixNear(out.at(key), t, 1e-6);
  }
  EXPECT_EQ(stats.max_rank, kRMax);
  EXPECT_EQ(stats.truncated_energy, 0);
}

TEST_F(HeteroRankTest, ZeroPadFallsBackToSampleCountsWhenProductsAreZero) {
  // First round: B = 0 and the workers train only A, so every local product
  // is zero and the norm weights are undefined.
  torch::manual_seed(5);
  const TensorMap g = InitAdapter({kQ});
  std::vector<HeteroUpdate> updates = {
      RandomUpdate("a", g, 2, 1, {kQ}, Send::kAOnly),
      RandomUpdate("b", g, 4, 3, {kQ}, Send::kAOnly)};
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kZeroPad), g, {}, updates);
  // Written out: A += 1/4·pad(δA_a) + 3/4·δA_b.
  torch::Tensor want = g.at(AKey(kQ)).clone();
  want.slice(0, 0, 2) += 0.25 * updates[0].delta.at(AKey(kQ));
  want += 0.75 * updates[1].delta.at(AKey(kQ));
  ExpectMatrixNear(out.at(AKey(kQ)), want, 1e-6);
  EXPECT_TRUE(torch::equal(out.at(BKey(kQ)), g.at(BKey(kQ))));
}

// -------------------------------------------------------------------- svd --

TEST_F(HeteroRankTest, SvdIsTheBestRankRMaxApproximationOfTheMeanProduct) {
  HeteroStats stats;
  const TensorMap out = AggregateOk(Options(HeteroMethod::kSvd), global_, init_,
                                    updates_, &stats);
  double worst_energy = 0;
  for (const std::string& m : {kQ, kV}) {
    double energy = 0;
    const torch::Tensor want =
        BestRank(SvdReferenceW(global_, updates_, m), kRMax, &energy);
    worst_energy = std::max(worst_energy, energy);
    EXPECT_EQ(out.at(AKey(m)).sizes(), (std::vector<int64_t>{kRMax, kIn}));
    EXPECT_EQ(out.at(BKey(m)).sizes(), (std::vector<int64_t>{kOut, kRMax}));
    ExpectMatrixNear(DenseProduct(out, m), want);
    ExpectBalancedDescending(out, m, kRMax);
  }
  EXPECT_EQ(stats.max_rank, kRMax);
  EXPECT_NEAR(stats.truncated_energy, worst_energy, 1e-5);
  EXPECT_GT(stats.truncated_energy, 0);
}

TEST_F(HeteroRankTest, SvdSingularValuesMatchTheDenseOnes) {
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kSvd), global_, init_, updates_);
  const torch::Tensor sv =
      torch::linalg_svdvals(SvdReferenceW(global_, updates_, kQ));
  const torch::Tensor a = F64(out.at(AKey(kQ)));
  // A·Aᵀ = diag(σ) in balanced form.
  ExpectMatrixNear(torch::diagonal(a.mm(a.t())), sv.slice(0, 0, kRMax), 1e-4);
}

TEST(HeteroReseedTest, SvdAndStackReseedEverythingWhenTheProductIsZero) {
  // First round: global = init (B = 0) and the workers train only A, so
  // W = 0: every component is re-seeded from init (A rows), B stays zero.
  torch::manual_seed(7);
  const TensorMap init = InitAdapter({kQ});
  std::vector<HeteroUpdate> updates = {
      RandomUpdate("a", init, 2, 5, {kQ}, Send::kAOnly),
      RandomUpdate("b", init, 4, 5, {kQ}, Send::kAOnly)};
  for (HeteroMethod method : {HeteroMethod::kSvd, HeteroMethod::kStack}) {
    SCOPED_TRACE(HeteroMethodName(method));
    HeteroStats stats;
    const TensorMap out =
        AggregateOk(Options(method), init, init, updates, &stats);
    EXPECT_TRUE(torch::equal(out.at(AKey(kQ)), init.at(AKey(kQ))));
    EXPECT_EQ(out.at(BKey(kQ)).abs().max().item<float>(), 0);
    EXPECT_EQ(stats.max_rank, kRMax);
    EXPECT_EQ(stats.truncated_energy, 0);
    // Every A row stays nonzero, so every component remains trainable.
    EXPECT_GT(out.at(AKey(kQ)).norm(2, {1}).min().item<float>(), 0);
  }
}

TEST(HeteroSvdTest, ReseedsComponentsBeyondTheRankOfTheProduct) {
  // One rank-2 worker: W has rank 2, components 2 and 3 are re-seeded.
  torch::manual_seed(8);
  const TensorMap global = RandomGlobal({kQ});
  const TensorMap init = InitAdapter({kQ}, /*rank=*/6);
  const std::vector<HeteroUpdate> updates = {
      RandomUpdate("a", global, 2, 5, {kQ})};
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kSvd), global, init, updates);
  ExpectMatrixNear(DenseProduct(out, kQ), SvdReferenceW(global, updates, kQ));
  EXPECT_TRUE(torch::equal(out.at(AKey(kQ)).slice(0, 2),
                           init.at(AKey(kQ)).slice(0, 2, kRMax)));
  EXPECT_EQ(out.at(BKey(kQ)).slice(1, 2).abs().max().item<float>(), 0);
}

// ------------------------------------------------------------------ stack --

TEST(HeteroStackTest, ProductIsExactAndCompressionLossless) {
  // out = 40, in = 30 with 4 + 2·(2 + 3) = 14 stacked components: the exact
  // product has lower rank (7 here: its columns lie in the span of B_G and
  // the δB's, and the global's two leading components, seen by both workers
  // whose weights sum to 1, are replaced rather than added to), so lossless
  // compression shows as exactly the dense rank, below 14 and min(out, in).
  torch::manual_seed(9);
  const int64_t out_f = 40, in_f = 30;
  const TensorMap global = RandomGlobal({kQ}, kRMax, out_f, in_f);
  const TensorMap init = InitAdapter({kQ}, kRMax, out_f, in_f);
  const std::vector<HeteroUpdate> updates = {
      RandomUpdate("a", global, 2, 10, {kQ}),
      RandomUpdate("b", global, 3, 30, {kQ})};
  HeteroStats stats;
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kStack), global, init, updates, &stats);
  const torch::Tensor p = StackReferenceP(global, updates, kQ, out_f, in_f);
  const int64_t dense_rank = torch::linalg_matrix_rank(p).item<int64_t>();
  EXPECT_LT(dense_rank, 14);
  EXPECT_EQ(out.at(AKey(kQ)).size(0), dense_rank);
  EXPECT_EQ(out.at(BKey(kQ)).size(1), dense_rank);
  EXPECT_EQ(stats.max_rank, dense_rank);
  EXPECT_LT(stats.truncated_energy, 1e-5);
  ExpectMatrixNear(DenseProduct(out, kQ), p);
  ExpectBalancedDescending(out, kQ, dense_rank);
  // Largest first: a worker's truncated download is the best low-rank start.
  ExpectMatrixNear(DenseProduct(TruncateRank(out, 2), kQ), BestRank(p, 2));
}

TEST_F(HeteroRankTest, StackEqualsTheDenseExactSum) {
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kStack), global_, init_, updates_);
  for (const std::string& m : {kQ, kV}) {
    // 12×10 with 4 + 2·9 stacked components: full rank 10.
    EXPECT_EQ(out.at(AKey(m)).size(0), std::min(kOut, kIn));
    ExpectMatrixNear(DenseProduct(out, m),
                     StackReferenceP(global_, updates_, m));
  }
}

TEST_F(HeteroRankTest, StackTruncatesToTheCap) {
  HeteroOptions o = Options(HeteroMethod::kStack);
  o.stack_max_rank = 6;
  HeteroStats stats;
  const TensorMap out = AggregateOk(o, global_, init_, updates_, &stats);
  double worst_energy = 0;
  for (const std::string& m : {kQ, kV}) {
    double energy = 0;
    const torch::Tensor want =
        BestRank(StackReferenceP(global_, updates_, m), 6, &energy);
    worst_energy = std::max(worst_energy, energy);
    EXPECT_EQ(out.at(AKey(m)).size(0), 6);
    ExpectMatrixNear(DenseProduct(out, m), want);
    ExpectBalancedDescending(out, m, 6);
  }
  EXPECT_EQ(stats.max_rank, 6);
  EXPECT_GT(worst_energy, 0.01);
  EXPECT_NEAR(stats.truncated_energy, worst_energy, 1e-5);
}

// An edge under the stack merge uploads its whole adapter (its own rank,
// its own basis): the cloud adds w_e·(B_e·A_e − B_G·A_G) exactly.
TEST(HeteroStackTest, WholeAdaptersOfAnyRankAddTheirExactChange) {
  torch::manual_seed(12);
  const TensorMap global = RandomGlobal({kQ}, kRMax);
  const TensorMap init = InitAdapter({kQ}, kRMax);
  HeteroUpdate e1{"edge-0", 1, RandomGlobal({kQ}, 6), 30};
  e1.whole_adapter = true;
  HeteroUpdate e2{"edge-1", 1, RandomGlobal({kQ}, 5), 10};
  e2.whole_adapter = true;
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kStack), global, init, {e1, e2});
  const torch::Tensor g = DenseProduct(global, kQ);
  const torch::Tensor want = g + 0.75 * (DenseProduct(e1.delta, kQ) - g) +
                             0.25 * (DenseProduct(e2.delta, kQ) - g);
  ExpectMatrixNear(DenseProduct(out, kQ), want);
  // Other methods refuse a whole adapter rather than misread it.
  auto svd = HeteroAggregate(Options(HeteroMethod::kSvd), global, init, {e1});
  ASSERT_FALSE(svd.ok());
  EXPECT_THAT(svd.status().message(), HasSubstr("only merged by the stack"));
}

TEST(HeteroStackTest, PadsUpToRMaxWithReseededComponents) {
  // First round, one rank-2 worker training only B (FFA-LoRA): the product
  // δB·A_g has rank 2, below r_max = 4, so components 2 and 3 are re-seeded.
  torch::manual_seed(10);
  const TensorMap init = InitAdapter({kQ});
  const std::vector<HeteroUpdate> updates = {
      RandomUpdate("a", init, 2, 5, {kQ}, Send::kBOnly)};
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kStack), init, init, updates);
  ASSERT_EQ(out.at(AKey(kQ)).size(0), kRMax);
  ExpectMatrixNear(DenseProduct(out, kQ), StackReferenceP(init, updates, kQ));
  EXPECT_TRUE(torch::equal(out.at(AKey(kQ)).slice(0, 2),
                           init.at(AKey(kQ)).slice(0, 2, kRMax)));
  EXPECT_EQ(out.at(BKey(kQ)).slice(1, 2).abs().max().item<float>(), 0);
}

// ------------------------------------- partial updates, untouched modules --

// w2 sends only B of q_proj (FFA-LoRA), w3 both factors of q_proj, w4 only
// A of q_proj; nobody touches v_proj except w3's B.
class HeteroPartialTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(11);
    global_ = RandomGlobal({kQ, kV});
    init_ = InitAdapter({kQ, kV});
    updates_ = {RandomUpdate("w2", global_, 2, 10, {kQ}, Send::kBOnly),
                RandomUpdate("w3", global_, 3, 20, {kQ}),
                RandomUpdate("w4", global_, 4, 30, {kQ}, Send::kAOnly)};
    updates_[1].delta[BKey(kV)] = Randn({kOut, 3}, 0.3);
  }

  TensorMap global_, init_;
  std::vector<HeteroUpdate> updates_;
};

TEST_F(HeteroPartialTest, ZeroPadTreatsMissingKeysAsZeroDeltas) {
  const TensorMap out =
      AggregateOk(Options(HeteroMethod::kZeroPad), global_, init_, updates_);
  const TensorMap want = ZeroPadReference(global_, updates_, {kQ, kV});
  for (const auto& [key, t] : want) ExpectMatrixNear(out.at(key), t, 1e-6);
}

TEST_F(HeteroPartialTest, SvdAndStackMatchTheirReferences) {
  const TensorMap svd =
      AggregateOk(Options(HeteroMethod::kSvd), global_, init_, updates_);
  const TensorMap stack =
      AggregateOk(Options(HeteroMethod::kStack), global_, init_, updates_);
  for (const std::string& m : {kQ, kV}) {
    SCOPED_TRACE(m);
    ExpectMatrixNear(DenseProduct(svd, m),
                     BestRank(SvdReferenceW(global_, updates_, m), kRMax));
    ExpectMatrixNear(DenseProduct(stack, m),
                     StackReferenceP(global_, updates_, m));
  }
  // v_proj is touched by w3 alone, so its weight is 1: svd replaces the
  // product by w3's local one, stack adds w3's whole change.
  auto [b3, a3] = LocalFactors(global_, updates_[1], kV);
  ExpectMatrixNear(DenseProduct(svd, kV), BestRank(kScale * b3.mm(a3), kRMax));
}

TEST(HeteroUntouchedTest, ModulesNoWorkerTouchedKeepTheirFactors) {
  torch::manual_seed(12);
  const TensorMap global = RandomGlobal({kQ, kV});
  const TensorMap init = InitAdapter({kQ, kV});
  const std::vector<HeteroUpdate> updates = {
      RandomUpdate("a", global, 2, 1, {kQ}),
      RandomUpdate("b", global, 3, 1, {kQ}, Send::kBOnly)};
  for (HeteroMethod method :
       {HeteroMethod::kZeroPad, HeteroMethod::kSvd, HeteroMethod::kStack}) {
    SCOPED_TRACE(HeteroMethodName(method));
    const TensorMap out = AggregateOk(Options(method), global, init, updates);
    EXPECT_TRUE(torch::equal(out.at(AKey(kV)), global.at(AKey(kV))));
    EXPECT_TRUE(torch::equal(out.at(BKey(kV)), global.at(BKey(kV))));
    EXPECT_FALSE(torch::equal(out.at(BKey(kQ)), global.at(BKey(kQ))));
  }
}

TEST(HeteroUntouchedTest, DoesNotModifyOrAliasItsInputs) {
  torch::manual_seed(13);
  const TensorMap global = RandomGlobal({kQ, kV});
  const TensorMap before = TruncateRank(global, kRMax);  // deep copy
  const std::vector<HeteroUpdate> updates = {
      RandomUpdate("a", global, 2, 1, {kQ})};
  TensorMap out =
      AggregateOk(Options(HeteroMethod::kZeroPad), global, {}, updates);
  for (auto& [key, t] : out) t.fill_(-7);
  for (const auto& [key, t] : before) {
    EXPECT_TRUE(torch::equal(global.at(key), t)) << key;
  }
}

// ------------------------------------------------------------- validation --

class HeteroValidationTest : public HeteroRankTest {
 protected:
  Status Run(HeteroMethod method = HeteroMethod::kZeroPad) {
    return HeteroAggregate(Options(method), global_, init_, updates_).status();
  }
};

TEST_F(HeteroValidationTest, NoUpdatesIsFailedPrecondition) {
  updates_.clear();
  const Status s = Run();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("no worker updates"));
}

TEST_F(HeteroValidationTest, RejectsAKeyNotInTheGlobal) {
  const std::string k =
      "base_model.model.model.layers.0.self_attn.k_proj"
      ".lora_A.weight";
  updates_[1].delta[k] = Randn({3, kIn});
  const Status s = Run();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'w3'"));
  EXPECT_THAT(s.message(), HasSubstr(k));
}

TEST_F(HeteroValidationTest, RejectsAShapeOtherThanTheTruncatedGlobal) {
  // w2 reports rank 2 but sends a rank-3 A.
  updates_[0].delta[AKey(kV)] = Randn({3, kIn});
  const Status s = Run(HeteroMethod::kSvd);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'w2'"));
  EXPECT_THAT(s.message(), HasSubstr(AKey(kV)));
  EXPECT_THAT(s.message(), HasSubstr("got [3, 10], expected [2, 10]"));
}

TEST_F(HeteroValidationTest, RejectsNonFiniteValues) {
  updates_[2].delta[BKey(kQ)][0][0] = std::nanf("");
  const Status s = Run(HeteroMethod::kStack);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'w4'"));
  EXPECT_THAT(s.message(), HasSubstr(BKey(kQ)));
  EXPECT_THAT(s.message(), HasSubstr("1 NaN"));
}

TEST_F(HeteroValidationTest, RejectsWrongDtypeRankAndSampleCount) {
  updates_[0].delta[AKey(kQ)] = updates_[0].delta[AKey(kQ)].to(torch::kF64);
  Status s = Run();
  EXPECT_THAT(s.message(), HasSubstr("expected float32"));
  SetUp();
  updates_[1].rank = 0;
  s = Run();
  EXPECT_THAT(s.message(), HasSubstr("'w3': rank must be >= 1, got 0"));
  SetUp();
  updates_[2].num_samples = 0;
  s = Run();
  EXPECT_THAT(s.message(), HasSubstr("'w4': num_samples must be > 0"));
}

TEST_F(HeteroValidationTest, RejectsBadOptionsAndInit) {
  HeteroOptions o = Options(HeteroMethod::kStack);
  o.stack_max_rank = 2;  // below r_max
  Status s = HeteroAggregate(o, global_, init_, updates_).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("stack_max_rank"));

  // svd re-seeds from init, which must reach r_max.
  const TensorMap small_init = TruncateRank(init_, 2);
  s = HeteroAggregate(Options(HeteroMethod::kSvd), global_, small_init,
                      updates_)
          .status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("init adapter"));
  EXPECT_THAT(s.message(), HasSubstr("[2, 10]"));

  // A global that is not all LoRA pairs.
  TensorMap g = global_;
  g.erase(BKey(kV));
  s = HeteroAggregate(Options(HeteroMethod::kZeroPad), g, init_, updates_)
          .status();
  EXPECT_THAT(s.message(), HasSubstr("global adapter"));
}

}  // namespace
}  // namespace aggregation
}  // namespace fedpeft
