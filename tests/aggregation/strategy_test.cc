// Tests of the aggregation strategies against hand-computed values (written
// out below, computed by hand / in plain Python, never by calling the code
// under test), the shared update validation, option binding, and checkpoint
// round trips of the stateful strategies.
#include "aggregation/strategy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "aggregation/robust.h"

namespace fedpeft {
namespace aggregation {
namespace {

using ::testing::HasSubstr;

torch::Tensor T(std::vector<float> values, std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
  return torch::tensor(values, torch::kFloat32).reshape(shape);
}

ClientUpdate Update(std::string worker, TensorMap delta, int64_t n = 1) {
  ClientUpdate u;
  u.worker_id = std::move(worker);
  u.delta = std::move(delta);
  u.num_samples = n;
  return u;
}

std::unique_ptr<Strategy> Make(StrategyOptions options) {
  auto made = MakeStrategy(options);
  EXPECT_TRUE(made.ok()) << made.status().ToString();
  return made.ok() ? std::move(made).value() : nullptr;
}

std::unique_ptr<Strategy> Make(const std::string& name) {
  StrategyOptions options;
  options.name = name;
  return Make(options);
}

TensorMap AggregateOk(Strategy& s, const TensorMap& global,
                      const std::vector<ClientUpdate>& updates,
                      int64_t round = 1) {
  RoundContext ctx;
  ctx.round = round;
  auto out = s.Aggregate(ctx, global, updates);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? std::move(out).value() : TensorMap{};
}

// Element-wise closeness with a message printing both tensors.
// The defaults are a few float32 ulps: tight enough to tell apart e.g. the
// two initialisations of FedAdam's v (0 vs τ²), which differ by ~5e-5
// relative after one round.
void ExpectNear(const torch::Tensor& got, const torch::Tensor& want,
                double rtol = 1e-6, double atol = 1e-7) {
  ASSERT_TRUE(got.defined());
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::allclose(got, want, rtol, atol)) << "got\n"
                                                      << got << "\nwant\n"
                                                      << want;
}

// ---------------------------------------------------------------- fedavg --

// global A = [1, 2], B = [[0.5], [-0.5]]; w1 (n=1): ΔA = [1, 0], ΔB = [2, 4];
// w2 (n=3): ΔA = [3, 4], ΔB = [-2, 0].
TensorMap TwoKeyGlobal() {
  return {{"A", T({1, 2}, {1, 2})}, {"B", T({0.5, -0.5}, {2, 1})}};
}
std::vector<ClientUpdate> TwoKeyUpdates() {
  return {
      Update("w1", {{"A", T({1, 0}, {1, 2})}, {"B", T({2, 4}, {2, 1})}}, 1),
      Update("w2", {{"A", T({3, 4}, {1, 2})}, {"B", T({-2, 0}, {2, 1})}}, 3)};
}

TEST(FedAvgTest, WeightsByNumSamples) {
  auto s = Make("fedavg");
  const TensorMap out = AggregateOk(*s, TwoKeyGlobal(), TwoKeyUpdates());
  // ΔA = (1·[1,0] + 3·[3,4]) / 4 = [2.5, 3]; ΔB = (1·[2,4] + 3·[-2,0]) / 4
  // = [-1, 1].
  ExpectNear(out.at("A"), T({3.5, 5}, {1, 2}));
  ExpectNear(out.at("B"), T({-0.5, 0.5}, {2, 1}));
}

TEST(FedAvgTest, UniformWhenNotWeighted) {
  StrategyOptions o;
  o.weighted = false;
  auto s = Make(o);
  const TensorMap out = AggregateOk(*s, TwoKeyGlobal(), TwoKeyUpdates());
  // ΔA = ([1,0] + [3,4]) / 2 = [2, 2]; ΔB = ([2,4] + [-2,0]) / 2 = [0, 2].
  ExpectNear(out.at("A"), T({3, 4}, {1, 2}));
  ExpectNear(out.at("B"), T({0.5, 1.5}, {2, 1}));
}

TEST(FedAvgTest, LeavesInputsUntouchedAndReturnsFreshTensors) {
  auto s = Make("fedavg");
  const TensorMap global = TwoKeyGlobal();
  const std::vector<ClientUpdate> updates = TwoKeyUpdates();
  TensorMap out = AggregateOk(*s, global, updates);
  out.at("A").fill_(-7);  // must not write through to the inputs
  ExpectNear(global.at("A"), T({1, 2}, {1, 2}));
  ExpectNear(updates[0].delta.at("A"), T({1, 0}, {1, 2}));
  ExpectNear(updates[1].delta.at("A"), T({3, 4}, {1, 2}));
}

TEST(FedAvgTest, RejectsNoUpdatesAndMismatchedShapes) {
  auto s = Make("fedavg");
  auto none = s->Aggregate({}, TwoKeyGlobal(), {});
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("no client updates"));

  std::vector<ClientUpdate> bad = TwoKeyUpdates();
  bad[1].delta["A"] = T({1, 2});  // [2], not [1, 2]: would broadcast
  auto out = s->Aggregate({}, TwoKeyGlobal(), bad);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(out.status().message(), HasSubstr("'w2'"));
}

// --------------------------------------------------------------- fedavgm --

TEST(FedAvgMTest, ThreeRoundsOfServerMomentum) {
  StrategyOptions o;
  o.name = "fedavgm";
  o.server_lr = 0.5;
  o.momentum = 0.9;
  auto s = Make(o);
  TensorMap x = {{"w", T({1, -1})}};
  // Round 1: Δ̄ = ([2,0] + [0,2]) / 2 = [1, 1]; v = [1, 1];
  // x = [1, -1] + 0.5·[1, 1] = [1.5, -0.5].
  x = AggregateOk(
      *s, x,
      {Update("a", {{"w", T({2, 0})}}, 4), Update("b", {{"w", T({0, 2})}}, 4)},
      1);
  ExpectNear(x.at("w"), T({1.5, -0.5}));
  ExpectNear(s->State().at("momentum/w"), T({1, 1}));
  // Round 2: Δ̄ = [2, -1]; v = 0.9·[1, 1] + [2, -1] = [2.9, -0.1];
  // x = [1.5, -0.5] + 0.5·v = [2.95, -0.55].
  x = AggregateOk(*s, x, {Update("a", {{"w", T({2, -1})}}, 5)}, 2);
  ExpectNear(x.at("w"), T({2.95, -0.55}));
  ExpectNear(s->State().at("momentum/w"), T({2.9, -0.1}));
  // Round 3: Δ̄ = [0, 0]; v = 0.9·[2.9, -0.1] = [2.61, -0.09];
  // x = [2.95, -0.55] + 0.5·v = [4.255, -0.595].
  x = AggregateOk(*s, x, {Update("a", {{"w", T({0, 0})}}, 5)}, 3);
  ExpectNear(x.at("w"), T({4.255, -0.595}));
  ExpectNear(s->State().at("momentum/w"), T({2.61, -0.09}));
}

TEST(FedAvgMTest, WeightsByNumSamples) {
  StrategyOptions o;
  o.name = "fedavgm";
  o.server_lr = 1.0;
  auto s = Make(o);
  // Δ̄ = (1·[4] + 3·[0]) / 4 = [1]; first round v = Δ̄; x = 0 + 1 = [1].
  const TensorMap x = AggregateOk(
      *s, {{"w", T({0})}},
      {Update("a", {{"w", T({4})}}, 1), Update("b", {{"w", T({0})}}, 3)});
  ExpectNear(x.at("w"), T({1}));
}

// ------------------------------------------------------ fedadam, fedyogi --

// η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-3, x0 = [0, 0], one client per round
// with Δ = [1, -2], [0.05, 0.5], [-0.3, 0]. Expected values from the
// recurrences in Reddi et al. 2021, Algorithm 2, with m_{-1} = 0 and
// v_{-1} = τ² = 1e-6, evaluated in double precision by hand in Python:
//   adam round 1: m = [0.1, -0.2]; v = 0.99e-6 + 0.01·[1, 4]
//                 = [0.01000099, 0.04000099];
//                 x = 0.1·m / (sqrt(v) + 1e-3) = [0.0990050489, -0.0995012624]
struct AdaptiveRound {
  std::vector<float> delta, x, m, v;
};

void RunAdaptive(const std::string& name,
                 const std::vector<AdaptiveRound>& rounds) {
  StrategyOptions o;
  o.name = name;
  o.server_lr = 0.1;
  o.beta1 = 0.9;
  o.beta2 = 0.99;
  o.tau = 1e-3;
  auto s = Make(o);
  TensorMap x = {{"w", T({0, 0})}};
  int64_t round = 1;
  for (const AdaptiveRound& r : rounds) {
    SCOPED_TRACE(name + " round " + std::to_string(round));
    x = AggregateOk(*s, x, {Update("a", {{"w", T(r.delta)}}, 3)}, round++);
    ExpectNear(x.at("w"), T(r.x), 1e-6, 1e-9);
    const TensorMap state = s->State();
    ASSERT_EQ(state.size(), 2u);
    ExpectNear(state.at("m/w"), T(r.m), 1e-6, 1e-9);
    ExpectNear(state.at("v/w"), T(r.v), 1e-6, 1e-9);
  }
}

TEST(FedAdamTest, ThreeRoundsMatchAlgorithm2) {
  RunAdaptive(
      "fedadam",
      {{{1, -2},
        {0.0990050489, -0.0995012624},
        {0.1, -0.2},
        {0.01000099, 0.04000099}},
       // m = 0.9·[0.1, -0.2] + 0.1·[0.05, 0.5] = [0.095, -0.13]
       // v = 0.99·v + 0.01·[0.0025, 0.25] = [0.0099259801, 0.0421009801]
       {{0.05, 0.5},
        {0.193411034, -0.162551364},
        {0.095, -0.13},
        {0.0099259801, 0.0421009801}},
       // m = [0.0555, -0.117]; v = 0.99·v + 0.01·[0.09, 0]
       {{-0.3, 0},
        {0.24648559, -0.219580934},
        {0.0555, -0.117},
        {0.0107267203, 0.0416799703}}});
}

TEST(FedYogiTest, ThreeRoundsMatchAlgorithm2) {
  RunAdaptive(
      "fedyogi",
      // v = 1e-6 - 0.01·[1, 4]·sign(1e-6 - [1, 4]) = [0.010001, 0.040001]
      {{{1, -2},
        {0.0990049999, -0.09950125},
        {0.1, -0.2},
        {0.010001, 0.040001}},
       // Δ² = [0.0025, 0.25]: v[0] > Δ²[0] so it shrinks by 0.01·0.0025,
       // v[1] < Δ²[1] so it grows by 0.01·0.25: [0.009976, 0.042501]
       {{0.05, 0.5},
        {0.19317636, -0.162255372},
        {0.095, -0.13},
        {0.009976, 0.042501}},
       // Δ² = [0.09, 0]: v[0] grows by 0.0009; v[1] - 0 > 0 shrinks by 0.
       {{-0.3, 0},
        {0.245888888, -0.218734082},
        {0.0555, -0.117},
        {0.010876, 0.042501}}});
}

// ---------------------------------------------------------------- median --

TEST(MedianTest, OddCountTakesTheMiddleValue) {
  auto s = Make("median");
  const TensorMap out = AggregateOk(
      *s, {{"w", T({1, 1, 1})}},
      {Update("a", {{"w", T({1, 5, -1})}}, 1),
       Update("b", {{"w", T({2, -3, 0})}}, 100),  // weight is ignored
       Update("c", {{"w", T({10, 0, 0})}}, 1)});
  // Per coordinate: {1, 2, 10} -> 2; {-3, 0, 5} -> 0; {-1, 0, 0} -> 0.
  ExpectNear(out.at("w"), T({3, 1, 1}));
}

TEST(MedianTest, EvenCountAveragesTheTwoMiddleValues) {
  auto s = Make("median");
  const TensorMap out =
      AggregateOk(*s, {{"w", T({0, 0}, {1, 2})}},
                  {Update("a", {{"w", T({1, 4}, {1, 2})}}),
                   Update("b", {{"w", T({2, -4}, {1, 2})}}),
                   Update("c", {{"w", T({3, 0}, {1, 2})}}),
                   Update("d", {{"w", T({100, 1}, {1, 2})}})});
  // {1, 2, 3, 100} -> (2 + 3) / 2 = 2.5; {-4, 0, 1, 4} -> (0 + 1) / 2 = 0.5
  // (the lower median torch::median returns would give 2 and 0).
  ExpectNear(out.at("w"), T({2.5, 0.5}, {1, 2}));
}

TEST(MedianTest, SingleUpdateIsItself) {
  auto s = Make("median");
  const TensorMap out =
      AggregateOk(*s, {{"w", T({1, 2})}}, {Update("a", {{"w", T({0.5, -4})}})});
  ExpectNear(out.at("w"), T({1.5, -2}));
}

// ---------------------------------------------------------- trimmed mean --

TEST(TrimmedMeanTest, DropsTheExtremesAtEachEnd) {
  StrategyOptions o;
  o.name = "trimmed_mean";
  o.trim_ratio = 0.2;  // n = 5 -> k = floor(0.2 · 5) = 1 from each end
  auto s = Make(o);
  const TensorMap out = AggregateOk(
      *s, {{"w", T({10, 10})}},
      {Update("a", {{"w", T({1, -50})}}), Update("b", {{"w", T({1000, 0})}}),
       Update("c", {{"w", T({2, 1})}}), Update("d", {{"w", T({3, 2})}}),
       Update("e", {{"w", T({4, 3})}})});
  // {1, 2, 3, 4, 1000} -> mean(2, 3, 4) = 3; {-50, 0, 1, 2, 3} ->
  // mean(0, 1, 2) = 1.
  ExpectNear(out.at("w"), T({13, 11}));
}

TEST(TrimmedMeanTest, NothingCutIsTheUniformMean) {
  StrategyOptions o;
  o.name = "trimmed_mean";
  o.trim_ratio = 0.1;  // n = 5 -> k = floor(0.5) = 0
  auto s = Make(o);
  const TensorMap out = AggregateOk(
      *s, {{"w", T({0})}},
      {Update("a", {{"w", T({1})}}, 9), Update("b", {{"w", T({2})}}),
       Update("c", {{"w", T({3})}}), Update("d", {{"w", T({4})}}),
       Update("e", {{"w", T({1000})}})});
  ExpectNear(out.at("w"), T({202}));  // 1010 / 5, num_samples ignored
}

TEST(TrimmedMeanTest, TrimCountIsFloorOfRatioTimesCount) {
  EXPECT_EQ(TrimmedMean(0.25).TrimCount(10), 2);
  EXPECT_EQ(TrimmedMean(0.49).TrimCount(3), 1);  // one value remains
  EXPECT_EQ(TrimmedMean(0.0).TrimCount(100), 0);
  EXPECT_EQ(TrimmedMean(0.1).TrimCount(9), 0);
}

// ------------------------------------------------------------ robustness --

TEST(RobustTest, OneHugeOutlierDragsFedAvgButNotMedianOrTrimmedMean) {
  torch::manual_seed(7);
  const int kHonest = 9;
  std::vector<ClientUpdate> updates;
  torch::Tensor honest_sum = torch::zeros({64});
  for (int k = 0; k < kHonest; ++k) {
    torch::Tensor d = 1.0 + 0.1 * torch::randn({64});
    honest_sum += d;
    updates.push_back(Update("honest" + std::to_string(k), {{"w", d}}, 10));
  }
  updates.push_back(Update("attacker", {{"w", torch::full({64}, 1e6)}}, 10));
  const torch::Tensor honest_mean = honest_sum / kHonest;
  const TensorMap global = {{"w", torch::zeros({64})}};

  const TensorMap avg = AggregateOk(*Make("fedavg"), global, updates);
  EXPECT_GT(avg.at("w").min().item<float>(), 1e4);

  StrategyOptions trimmed;
  trimmed.name = "trimmed_mean";
  trimmed.trim_ratio = 0.1;  // n = 10 -> k = 1
  for (auto* s : {Make("median").release(), Make(trimmed).release()}) {
    std::unique_ptr<Strategy> owned(s);
    SCOPED_TRACE(owned->name());
    const TensorMap out = AggregateOk(*owned, global, updates);
    const float err = (out.at("w") - honest_mean).abs().max().item<float>();
    EXPECT_LT(err, 0.15);  // the honest spread is 0.1
  }
}

// ------------------------------------------------------- ValidateUpdate --

class ValidateUpdateTest : public ::testing::Test {
 protected:
  TensorMap global_ = {{"A", torch::zeros({2, 3})}, {"B", torch::zeros({3})}};
  ClientUpdate Good() const {
    return Update("w7", {{"A", torch::ones({2, 3})}, {"B", torch::ones({3})}},
                  12);
  }
  std::string Reject(const ClientUpdate& u, UpdateLimits limits = {}) {
    const Status s = ValidateUpdate(global_, u, limits);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("worker 'w7'"));
    return s.message();
  }
};

TEST_F(ValidateUpdateTest, AcceptsAMatchingUpdate) {
  const Status s = ValidateUpdate(global_, Good());
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(ValidateUpdateTest, RejectsMissingKey) {
  ClientUpdate u = Good();
  u.delta.erase("B");
  const std::string m = Reject(u);
  EXPECT_THAT(m, HasSubstr("missing key 'B'"));
  EXPECT_THAT(m, HasSubstr("expected the 2 keys"));
  EXPECT_THAT(m, HasSubstr("got 1"));
}

TEST_F(ValidateUpdateTest, RejectsExtraKey) {
  ClientUpdate u = Good();
  u.delta["C.lora_A.weight"] = torch::ones({1});
  EXPECT_THAT(Reject(u), HasSubstr("unexpected key 'C.lora_A.weight'"));
}

TEST_F(ValidateUpdateTest, RejectsWrongShape) {
  ClientUpdate u = Good();
  u.delta["A"] = torch::ones({3, 2});
  const std::string m = Reject(u);
  EXPECT_THAT(m, HasSubstr("key 'A'"));
  EXPECT_THAT(m, HasSubstr("shape got [3, 2], expected [2, 3]"));
}

TEST_F(ValidateUpdateTest, RejectsWrongDtype) {
  ClientUpdate u = Good();
  u.delta["B"] = torch::ones({3}, torch::kFloat64);
  const std::string m = Reject(u);
  EXPECT_THAT(m, HasSubstr("key 'B'"));
  EXPECT_THAT(m, HasSubstr("dtype got Double, expected float32"));
}

TEST_F(ValidateUpdateTest, RejectsNaN) {
  ClientUpdate u = Good();
  u.delta["A"][1][2] = std::nanf("");
  const std::string m = Reject(u);
  EXPECT_THAT(m, HasSubstr("key 'A'"));
  EXPECT_THAT(m, HasSubstr("got 1 NaN and 0 Inf, expected all finite"));
}

TEST_F(ValidateUpdateTest, RejectsInf) {
  ClientUpdate u = Good();
  u.delta["B"][0] = -std::numeric_limits<float>::infinity();
  const std::string m = Reject(u);
  EXPECT_THAT(m, HasSubstr("key 'B'"));
  EXPECT_THAT(m, HasSubstr("got 0 NaN and 1 Inf, expected all finite"));
}

TEST_F(ValidateUpdateTest, RejectsNonPositiveNumSamples) {
  ClientUpdate u = Good();
  u.num_samples = 0;
  EXPECT_THAT(Reject(u), HasSubstr("num_samples must be > 0, got 0"));
  u.num_samples = -3;
  EXPECT_THAT(Reject(u), HasSubstr("num_samples must be > 0, got -3"));
}

TEST_F(ValidateUpdateTest, RejectsTensorsOverTheElementLimit) {
  UpdateLimits limits;
  limits.max_tensor_elements = 5;
  const std::string m = Reject(Good(), limits);
  EXPECT_THAT(m, HasSubstr("key 'A'"));
  EXPECT_THAT(m, HasSubstr("6 elements, more than the limit of 5"));
}

// ------------------------------------------------ registry and options --

TEST(MakeStrategyTest, BuildsEveryRegisteredName) {
  EXPECT_THAT(StrategyNames(),
              ::testing::ElementsAre("fedavg", "fedavgm", "fedadam", "fedyogi",
                                     "median", "trimmed_mean"));
  for (const std::string& name : StrategyNames()) {
    auto s = Make(name);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->name(), name);
  }
}

TEST(MakeStrategyTest, UnknownNameListsTheValidOnes) {
  StrategyOptions o;
  o.name = "fedsgd";
  auto s = MakeStrategy(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(),
              HasSubstr("strategy.name: expected one of fedavg, fedavgm, "
                        "fedadam, fedyogi, median, trimmed_mean, got "
                        "'fedsgd'"));
}

TEST(MakeStrategyTest, RejectsOutOfRangeOptions) {
  StrategyOptions o;
  o.trim_ratio = 0.5;
  auto s = MakeStrategy(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(),
              HasSubstr("strategy.trim_ratio: must be in [0, 0.5), got 0.5"));
}

Status ReadOptions(const std::string& yaml, StrategyOptions* o) {
  YAML::Node root = YAML::Load(yaml);
  ConfigReader in(root, "test.yaml");
  ConfigReader section = in.Section("strategy");
  o->Read(section);
  return in.Finish();
}

TEST(StrategyOptionsTest, ReadsEveryKey) {
  StrategyOptions o;
  const Status s = ReadOptions(
      "strategy: {name: fedyogi, server_lr: 0.01, momentum: 0.5, beta1: 0.8, "
      "beta2: 0.95, tau: 0.01, trim_ratio: 0.2, weighted: false}",
      &o);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(o.name, "fedyogi");
  EXPECT_DOUBLE_EQ(o.server_lr, 0.01);
  EXPECT_DOUBLE_EQ(o.momentum, 0.5);
  EXPECT_DOUBLE_EQ(o.beta1, 0.8);
  EXPECT_DOUBLE_EQ(o.beta2, 0.95);
  EXPECT_DOUBLE_EQ(o.tau, 0.01);
  EXPECT_DOUBLE_EQ(o.trim_ratio, 0.2);
  EXPECT_FALSE(o.weighted);
}

TEST(StrategyOptionsTest, DefaultsAreValid) {
  StrategyOptions o;
  const Status s = ReadOptions("{}", &o);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(o.name, "fedavg");
}

TEST(StrategyOptionsTest, ReportsEveryBadValueWithItsKey) {
  StrategyOptions o;
  const Status s = ReadOptions(
      "strategy: {name: fedsgd, server_lr: 0, momentum: 1, beta1: -0.1, "
      "beta2: 1.5, tau: 0, trim_ratio: 0.5, weighted: maybe, lr: 1}",
      &o);
  ASSERT_FALSE(s.ok());
  const std::string& m = s.message();
  EXPECT_THAT(m, HasSubstr("strategy.name: expected one of fedavg, fedavgm, "
                           "fedadam, fedyogi, median, trimmed_mean, got "
                           "'fedsgd'"));
  EXPECT_THAT(m, HasSubstr("strategy.server_lr: must be > 0, got 0"));
  EXPECT_THAT(m, HasSubstr("strategy.momentum: must be in [0, 1), got 1"));
  EXPECT_THAT(m, HasSubstr("strategy.beta1: must be in [0, 1), got -0.1"));
  EXPECT_THAT(m, HasSubstr("strategy.beta2: must be in [0, 1), got 1.5"));
  EXPECT_THAT(m, HasSubstr("strategy.tau: must be > 0, got 0"));
  EXPECT_THAT(m,
              HasSubstr("strategy.trim_ratio: must be in [0, 0.5), got 0.5"));
  EXPECT_THAT(m, HasSubstr("strategy.weighted: expected a boolean"));
  EXPECT_THAT(m, HasSubstr("unknown key 'strategy.lr'"));
}

// ------------------------------------------------- checkpoint round trip --

// Random two-key rounds with unequal weights.
std::vector<std::vector<ClientUpdate>> RandomRounds(int rounds, int clients) {
  torch::manual_seed(42);
  std::vector<std::vector<ClientUpdate>> all(rounds);
  for (auto& round : all) {
    for (int k = 0; k < clients; ++k) {
      round.push_back(Update(
          "w" + std::to_string(k),
          {{"A", torch::randn({4, 16})}, {"B", torch::randn({16, 4}) * 0.01}},
          1 + 7 * k));
    }
  }
  return all;
}

TEST(CheckpointTest, RestoredStrategyIsBitIdentical) {
  const auto rounds = RandomRounds(4, 3);
  const TensorMap start = {{"A", torch::randn({4, 16})},
                           {"B", torch::zeros({16, 4})}};
  for (const std::string name : {"fedavgm", "fedadam", "fedyogi"}) {
    SCOPED_TRACE(name);
    // Uninterrupted run.
    auto straight = Make(name);
    TensorMap x = start;
    for (size_t r = 0; r < rounds.size(); ++r) {
      x = AggregateOk(*straight, x, rounds[r], r + 1);
    }
    // Two rounds, checkpoint, a fresh strategy resumes.
    auto first = Make(name);
    TensorMap y = start;
    for (size_t r = 0; r < 2; ++r) y = AggregateOk(*first, y, rounds[r], r + 1);
    const TensorMap state = first->State();
    EXPECT_FALSE(state.empty());
    first.reset();
    auto resumed = Make(name);
    const Status loaded = resumed->LoadState(state);
    ASSERT_TRUE(loaded.ok()) << loaded.ToString();
    for (size_t r = 2; r < rounds.size(); ++r) {
      y = AggregateOk(*resumed, y, rounds[r], r + 1);
    }
    for (const auto& [key, t] : x) {
      EXPECT_TRUE(torch::equal(t, y.at(key))) << key;
    }
    const TensorMap final_a = straight->State();
    const TensorMap final_b = resumed->State();
    ASSERT_EQ(final_a.size(), final_b.size());
    for (const auto& [key, t] : final_a) {
      EXPECT_TRUE(torch::equal(t, final_b.at(key))) << key;
    }
  }
}

TEST(CheckpointTest, StateIsACopy) {
  auto s = Make("fedavgm");
  TensorMap x =
      AggregateOk(*s, {{"w", T({0})}}, {Update("a", {{"w", T({1})}})});
  s->State().at("momentum/w").fill_(100);  // must not reach the strategy
  ExpectNear(s->State().at("momentum/w"), T({1}));
}

TEST(CheckpointTest, LoadStateRejectsForeignOrIncompleteState) {
  auto adam = Make("fedadam");
  // m without v.
  Status s = adam->LoadState({{"m/w", torch::zeros({2})}});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("missing key 'v/w'"));
  // m and v of different shapes.
  s = adam->LoadState({{"m/w", torch::zeros({2})}, {"v/w", torch::ones({3})}});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("shape got [3], expected [2]"));
  // A fedavgm checkpoint.
  s = adam->LoadState({{"momentum/w", torch::zeros({2})}});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("unexpected key 'momentum/w'"));
  // A negative second moment.
  s = adam->LoadState({{"m/w", torch::zeros({2})}, {"v/w", -torch::ones({2})}});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("must be >= 0"));
  // Non-finite values, wrong dtype.
  s = Make("fedavgm")->LoadState(
      {{"momentum/w", torch::full({2}, std::nanf(""))}});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("NaN or Inf"));
  s = Make("fedavgm")->LoadState(
      {{"momentum/w", torch::zeros({2}, torch::kFloat64)}});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("dtype got Double, expected float32"));
  // Stateless strategies take only an empty state.
  for (const std::string name : {"fedavg", "median", "trimmed_mean"}) {
    auto stateless = Make(name);
    EXPECT_TRUE(stateless->LoadState({}).ok());
    s = stateless->LoadState({{"m/w", torch::zeros({2})}});
    ASSERT_FALSE(s.ok()) << name;
    EXPECT_THAT(s.message(), HasSubstr("keeps no optimizer state"));
  }
}

TEST(CheckpointTest, StateOfAnotherAdapterFailsAtAggregateAndIsKept) {
  auto s = Make("fedavgm");
  ASSERT_TRUE(s->LoadState({{"momentum/w", T({5, 5, 5})}}).ok());
  RoundContext ctx;
  auto out =
      s->Aggregate(ctx, {{"w", T({0, 0})}}, {Update("a", {{"w", T({1, 1})}})});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(out.status().message(),
              HasSubstr("key 'momentum/w': shape got [3], expected [2]"));
  ExpectNear(s->State().at("momentum/w"), T({5, 5, 5}));
}

}  // namespace
}  // namespace aggregation
}  // namespace fedpeft
