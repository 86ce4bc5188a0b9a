// Tests of Adaptive Parameter Freezing (peft/freezing.h). The expected
// freezing schedules below were worked out by hand from the rule in the
// header (and cross-checked with a few lines of plain Python), not by running
// the code under test. With ema β = 0.9 and updates alternating ±d per
// observation, the effective perturbation after observation n is
//   n = 10: 0.0526, 11: 0.1008, 12: 0.0526, 13: 0.0885, 14: 0.0526, ...
// (odd n run above the steady (1 − β)/(1 + β) = 0.0526 while M still warms
// up), so with threshold 0.15 and warmup 10 every check after the 10th
// observation finds the tensor stable.
#include "peft/freezing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace fedpeft {
namespace peft {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

ApfOptions TestOptions() {
  ApfOptions o;
  o.enabled = true;
  o.threshold = 0.15;
  o.ema = 0.9;
  o.warmup_rounds = 10;
  o.period_step = 1;
  return o;
}

torch::Tensor D() { return torch::tensor({1.0f, -2.0f, 0.5f}); }

// +d, −d, +d, ... one step per call: a parameter oscillating around its
// optimum, moving only in the rounds it is trained.
class Oscillator {
 public:
  explicit Oscillator(torch::Tensor d) : d_(std::move(d)) {}
  torch::Tensor Next() { return (count_++ % 2 == 0) ? d_ : -d_; }

 private:
  torch::Tensor d_;
  int64_t count_ = 0;
};

// Runs rounds [first, last]: "osc" oscillates, "steady" always moves by +d,
// and "big" (when big_from > 0) moves by +20·d instead of oscillating from
// round big_from on. Frozen tensors get no update, as in a federation.
// Returns the rounds at which "osc" was frozen.
std::vector<int64_t> Drive(ApfController& apf, Oscillator& osc, int64_t first,
                           int64_t last, int64_t big_from = 0) {
  std::vector<int64_t> frozen_rounds;
  for (int64_t round = first; round <= last; ++round) {
    const std::set<std::string> frozen = apf.FrozenAt(round);
    EXPECT_EQ(frozen.count("steady"), 0u) << "round " << round;
    TensorMap applied = {{"steady", D()}};
    if (frozen.count("osc")) {
      frozen_rounds.push_back(round);
    } else {
      applied["osc"] =
          (big_from > 0 && round >= big_from) ? 20 * D() : osc.Next();
    }
    apf.Observe(round, applied);
  }
  return frozen_rounds;
}

TEST(ApfTest, OscillatingTensorFreezesForGrowingPeriods) {
  ApfController apf(TestOptions());
  Oscillator osc(D());
  // Observed at 1..10, stable at the 10th: period 1 (round 11). Each later
  // check (rounds 12, 15, 19, 24) finds it stable again: periods 2, 3, 4, 5.
  EXPECT_THAT(Drive(apf, osc, 1, 26),
              ElementsAre(11, 13, 14, 16, 17, 18, 20, 21, 22, 23, 25, 26));
}

TEST(ApfTest, ConsistentUpdatesNeverFreeze) {
  ApfOptions o = TestOptions();
  o.warmup_rounds = 1;
  ApfController apf(o);
  for (int64_t round = 1; round <= 30; ++round) {
    EXPECT_TRUE(apf.FrozenAt(round).empty()) << "round " << round;
    apf.Observe(round, {{"steady", D() * static_cast<float>(round)}});
  }
}

TEST(ApfTest, NothingFreezesBeforeWarmup) {
  ApfOptions o = TestOptions();
  o.warmup_rounds = 3;
  ApfController apf(o);
  // Zero updates have perturbation 0: stable from the first observation,
  // but frozen only once 3 observations were made (after round 3).
  for (int64_t round = 1; round <= 3; ++round) {
    EXPECT_TRUE(apf.FrozenAt(round).empty());
    apf.Observe(round, {{"idle", torch::zeros({4})}});
  }
  EXPECT_THAT(apf.FrozenAt(4), ElementsAre("idle"));
}

TEST(ApfTest, TensorThatStartsMovingIsUnfrozenAndItsPeriodHalves) {
  ApfController apf(TestOptions());
  Oscillator osc(D());
  // As above up to the freeze for rounds 20..23 (period 4); from round 20 on
  // it would move by +20·d, which shows at its check in round 24.
  EXPECT_THAT(Drive(apf, osc, 1, 30, /*big_from=*/20),
              ElementsAre(11, 13, 14, 16, 17, 18, 20, 21, 22, 23));
  EXPECT_EQ(apf.State()["tensors"]["osc"]["period"], 2);
  EXPECT_EQ(apf.State()["tensors"]["osc"]["pending_check"], false);
}

TEST(ApfTest, PeriodIsCappedAtMaxPeriod) {
  ApfOptions o = TestOptions();
  o.max_period = 2;
  ApfController apf(o);
  Oscillator osc(D());
  EXPECT_THAT(Drive(apf, osc, 1, 21), ElementsAre(11, 13, 14, 16, 17, 19, 20));
}

TEST(ApfTest, StableAgainAfterAFailedCheckKeepsTheHalvedPeriod) {
  // A tensor that failed its last check (period halved to 3, no check
  // pending) and is stable again is frozen for 3 rounds, not 4.
  ApfController apf(TestOptions());
  nlohmann::json state = apf.State();
  state["tensors"]["w"] = {
      {"shape", {3}},       {"ema", "AAAAAAAAAAAAAAAA"},  // 3 zeros
      {"magnitude", 1.0},   {"observations", 20},
      {"period", 3},        {"frozen_from", 5},
      {"frozen_until", 10}, {"pending_check", false}};
  ASSERT_TRUE(apf.LoadState(state).ok());
  apf.Observe(12, {{"w", torch::zeros({3})}});
  for (int64_t round : {13, 14, 15}) {
    EXPECT_THAT(apf.FrozenAt(round), ElementsAre("w")) << round;
  }
  EXPECT_TRUE(apf.FrozenAt(16).empty());
  EXPECT_EQ(apf.State()["tensors"]["w"]["period"], 3);
}

TEST(ApfTest, FrozenTensorsUpdatesAndAbsentTensorsAreIgnored) {
  ApfOptions o = TestOptions();
  o.warmup_rounds = 1;
  ApfController apf(o);
  apf.Observe(1, {{"idle", torch::zeros({2})}});  // frozen at round 2
  const nlohmann::json before = apf.State();
  // Whatever the caller passes for a frozen tensor does not count.
  apf.Observe(2, {{"idle", torch::full({2}, 1e6)}});
  EXPECT_EQ(apf.State(), before);
  // Round 3: absent, so not observed (its check waits for an observation).
  apf.Observe(3, {});
  EXPECT_EQ(apf.State(), before);
  EXPECT_TRUE(apf.FrozenAt(3).empty());
}

TEST(ApfTest, ShapeChangeRestartsTheStatistics) {
  ApfOptions o = TestOptions();
  o.warmup_rounds = 2;
  ApfController apf(o);
  apf.Observe(1, {{"a", torch::ones({4})}});
  apf.Observe(2, {{"a", torch::zeros({6})}});  // a new rank: 1 observation
  EXPECT_EQ(apf.State()["tensors"]["a"]["observations"], 1);
  EXPECT_EQ(apf.State()["tensors"]["a"]["shape"], nlohmann::json({6}));
  EXPECT_TRUE(apf.FrozenAt(3).empty());
}

TEST(ApfTest, FrozenFraction) {
  ApfOptions o = TestOptions();
  o.warmup_rounds = 1;
  ApfController apf(o);
  apf.Observe(1, {{"idle", torch::zeros({2})}, {"busy", torch::ones({2})}});
  EXPECT_DOUBLE_EQ(apf.FrozenFraction(2, 4), 0.25);
  EXPECT_DOUBLE_EQ(apf.FrozenFraction(3, 4), 0.0);
  EXPECT_DOUBLE_EQ(apf.FrozenFraction(2, 0), 0.0);
}

// ---------------------------------------------------------------- state --

TEST(ApfStateTest, RoundTripContinuesIdentically) {
  ApfController original(TestOptions());
  Oscillator osc_a(D());
  Drive(original, osc_a, 1, 14);
  const nlohmann::json saved = original.State();
  EXPECT_EQ(saved["version"], 1);

  ApfController restored(TestOptions());
  const Status s = restored.LoadState(saved);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(restored.State(), saved);

  // Both continue from round 15 with the same oscillator phase.
  Oscillator osc_b = osc_a;
  const std::vector<int64_t> a = Drive(original, osc_a, 15, 26);
  const std::vector<int64_t> b = Drive(restored, osc_b, 15, 26);
  EXPECT_THAT(a, ElementsAre(16, 17, 18, 20, 21, 22, 23, 25, 26));
  EXPECT_EQ(a, b);
  EXPECT_EQ(original.State(), restored.State());
}

TEST(ApfStateTest, EmaSurvivesBitExactly) {
  ApfController apf(TestOptions());
  const torch::Tensor odd = torch::tensor({1.0f / 3, -1e-30f, 7e30f, 0.1f});
  apf.Observe(1, {{"x", odd.reshape({2, 2})}});
  ApfController copy(TestOptions());
  const Status s = copy.LoadState(apf.State());
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(copy.State(), apf.State());
  EXPECT_EQ(copy.State()["tensors"]["x"]["shape"], nlohmann::json({2, 2}));
}

class ApfBadStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ApfOptions o = TestOptions();
    o.warmup_rounds = 1;
    apf_ = std::make_unique<ApfController>(o);
    apf_->Observe(1, {{"idle", torch::zeros({3})}});
    good_ = apf_->State();
  }

  // Loads `state`, expects InvalidArgument containing `want`, and checks the
  // controller kept its state.
  void ExpectRejected(const nlohmann::json& state, const std::string& want) {
    const Status s = apf_->LoadState(state);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(want));
    EXPECT_EQ(apf_->State(), good_);
  }

  nlohmann::json& Entry(nlohmann::json& state) {
    return state["tensors"]["idle"];
  }

  std::unique_ptr<ApfController> apf_;
  nlohmann::json good_;
};

TEST_F(ApfBadStateTest, RejectsWrongTopLevel) {
  ExpectRejected(nlohmann::json::array(), "expected a JSON object");
  nlohmann::json s = good_;
  s["version"] = 2;
  ExpectRejected(s, "version: expected 1, got 2");
  s = good_;
  s.erase("tensors");
  ExpectRejected(s, "tensors: expected an object");
  s = good_;
  s["extra"] = 1;
  ExpectRejected(s, "unexpected field 'extra'");
}

TEST_F(ApfBadStateTest, RejectsMalformedTensorEntries) {
  nlohmann::json s = good_;
  Entry(s).erase("period");
  ExpectRejected(s, "tensors.'idle'.period: missing");

  s = good_;
  Entry(s)["period"] = -1;
  ExpectRejected(s, "tensors.'idle'.period: expected an integer >= 0");

  s = good_;
  Entry(s)["ema"] = "not base64!";
  ExpectRejected(s, "tensors.'idle'.ema: not valid base64");

  s = good_;
  Entry(s)["shape"] = {4};  // 12 bytes stored, 16 expected
  ExpectRejected(s, "holds 12 bytes, expected 16");

  s = good_;
  Entry(s)["ema"] = "AADAfwAAAAAAAAAA";  // a NaN first value
  ExpectRejected(s, "NaN or Inf");

  s = good_;
  Entry(s)["magnitude"] = "big";
  ExpectRejected(s, "tensors.'idle'.magnitude");

  s = good_;
  Entry(s)["frozen_from"] = 9;
  ExpectRejected(s, "after frozen_until");

  s = good_;
  Entry(s)["pending_check"] = 1;
  ExpectRejected(s, "pending_check: expected a boolean");

  s = good_;
  Entry(s)["colour"] = "red";
  ExpectRejected(s, "tensors.'idle'.colour: unexpected field");
}

// --------------------------------------------------------------- options --

Status ReadApf(const std::string& yaml, ApfOptions* out) {
  ConfigReader in(YAML::Load(yaml), "test.yaml");
  ConfigReader section = in.Section("apf");
  out->Read(section);
  return in.Finish();
}

TEST(ApfOptionsTest, ReadsEveryKey) {
  ApfOptions o;
  const Status s = ReadApf(
      "apf: {enabled: true, threshold: 0.05, ema: 0.5, warmup_rounds: 4, "
      "period_step: 2, max_period: 8}",
      &o);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(o.enabled);
  EXPECT_DOUBLE_EQ(o.threshold, 0.05);
  EXPECT_DOUBLE_EQ(o.ema, 0.5);
  EXPECT_EQ(o.warmup_rounds, 4);
  EXPECT_EQ(o.period_step, 2);
  EXPECT_EQ(o.max_period, 8);
  EXPECT_TRUE(o.Validate().ok());
}

TEST(ApfOptionsTest, ReportsEveryRangeErrorAndUnknownKeys) {
  ApfOptions o;
  const Status s = ReadApf(
      "apf: {threshold: 0, ema: 1, warmup_rounds: 0, period_step: 0, "
      "max_period: -1, treshold: 0.1}",
      &o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("apf.threshold: must be in (0, 1]"));
  EXPECT_THAT(s.message(), HasSubstr("apf.ema: must be in [0, 1), got 1"));
  EXPECT_THAT(s.message(), HasSubstr("apf.warmup_rounds: must be >= 1"));
  EXPECT_THAT(s.message(), HasSubstr("apf.period_step: must be >= 1"));
  EXPECT_THAT(s.message(), HasSubstr("apf.max_period: must be >= 0"));
  EXPECT_THAT(s.message(), HasSubstr("unknown key 'apf.treshold'"));
  EXPECT_THAT(o.Validate().message(), HasSubstr("apf.ema"));
}

}  // namespace
}  // namespace peft
}  // namespace fedpeft
