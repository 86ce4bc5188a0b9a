// Tests of per-worker rank assignment (peft/rank_assignment.h). Every
// expected rank is worked out by hand from the cost model in the header; the
// arithmetic is written next to each case.
#include "peft/rank_assignment.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fedpeft {
namespace peft {
namespace {

using ::testing::HasSubstr;

RankPolicy Policy() {
  RankPolicy p;
  p.r_min = 2;
  p.r_max = 16;
  p.safety = 0.8;
  p.grow_below = 0.5;
  return p;
}

// 10k tokens per round, each unit of rank slows a step by 5%, 1M adapter
// params per unit of rank (4 MB per unit on the wire each way), 1 GB of
// rank-independent memory plus 10 MB of activations per unit of rank.
AdapterCost Cost() {
  AdapterCost c;
  c.params_per_rank = 1'000'000;
  c.tokens_per_round = 10'000;
  c.act_bytes_fixed = 1'000'000'000;
  c.act_bytes_per_rank = 10'000'000;
  c.upload_bytes_per_param = 4;
  c.compute_per_rank = 0.05;
  return c;
}

TEST(InitialRankTest, SlowWorkerGetsALowerRankThanAFastOne) {
  DeviceProfile fast, slow, very_slow;
  fast.tokens_per_second = 10'000;  // 1 s·(1 + 0.05·16) = 1.8 s <= 16 s
  // 9.90 s·(1 + 0.05 r) <= 16 s -> r <= 12.3
  slow.tokens_per_second = 1'010;
  very_slow.tokens_per_second = 100;  // 100 s even at r_min: r_min
  const double deadline = 20;         // planned: 0.8 · 20 = 16 s
  EXPECT_EQ(InitialRank(Policy(), Cost(), fast, deadline), 16);
  EXPECT_EQ(InitialRank(Policy(), Cost(), slow, deadline), 12);
  EXPECT_EQ(InitialRank(Policy(), Cost(), very_slow, deadline), 2);
}

TEST(InitialRankTest, MemoryBound) {
  DeviceProfile d;
  // memory(r) = 16 B·1M·r + 1 GB + 10 MB·r = 1e9 + 2.6e7·r <= 1.2e9 -> r <= 7.
  d.ram_bytes = 1'200'000'000;
  EXPECT_EQ(InitialRank(Policy(), Cost(), d, /*deadline_s=*/0), 7);
  // Not even r_min fits: r_min (the caller logs it).
  d.ram_bytes = 1'000'000'000;
  EXPECT_EQ(InitialRank(Policy(), Cost(), d, 0), 2);
}

TEST(InitialRankTest, UplinkBound) {
  DeviceProfile d;
  // 2 directions · 1M params · 4 B · r / 1 MB/s = 8 s·r <= 0.8 · 61 = 48.8
  // -> r <= 6.
  d.uplink_bytes_per_second = 1'000'000;
  EXPECT_EQ(InitialRank(Policy(), Cost(), d, 61), 6);
  // Compute and communication add up: 10 s·(1 + 0.05 r) + 8 s·r <= 48.8
  // -> 8.5 r <= 38.8 -> r <= 4.
  d.tokens_per_second = 1'000;
  EXPECT_EQ(InitialRank(Policy(), Cost(), d, 61), 4);
}

TEST(InitialRankTest, UnknownFiguresDoNotConstrainAndBoundsHold) {
  EXPECT_EQ(InitialRank(Policy(), Cost(), DeviceProfile{}, 20), 16);
  RankPolicy narrow = Policy();
  narrow.r_min = 3;
  narrow.r_max = 5;
  DeviceProfile fast;
  fast.tokens_per_second = 1e9;
  EXPECT_EQ(InitialRank(narrow, Cost(), fast, 20), 5);
  DeviceProfile tiny;
  tiny.ram_bytes = 1;
  EXPECT_EQ(InitialRank(narrow, Cost(), tiny, 20), 3);
}

TEST(NextRankTest, MissedDeadlineHalvesDownToRMin) {
  RoundObservation missed;
  missed.missed_deadline = true;
  const DeviceProfile d;
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 12, missed), 6);
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 5, missed), 2);
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 3, missed), 2);
}

TEST(NextRankTest, EarlyAnswerGrowsByHalf) {
  RoundObservation early;
  early.answered = true;
  early.seconds = 2;  // <= 0.5 · 20
  const DeviceProfile d;
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 8, early), 12);
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 2, early), 3);    // max(1, 1)
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 14, early), 16);  // r_max
}

TEST(NextRankTest, GrowthNeverExceedsTheMemoryBound) {
  RoundObservation early;
  early.answered = true;
  early.seconds = 1;
  DeviceProfile d;
  d.ram_bytes = 1'000'000'000 + 26'000'000 * 10;  // fits r <= 10
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 8, early), 10);
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 10, early), 10);
}

TEST(NextRankTest, GrowthStopsWhereTheMeasuredTimePredictsAMiss) {
  AdapterCost c = Cost();
  c.compute_per_rank = 1.0;  // round time ∝ (1 + r) when compute-bound
  RankPolicy p = Policy();
  p.safety = 0.6;  // planned: 12 s of a 20 s deadline
  RoundObservation early;
  early.answered = true;
  early.seconds = 10;  // at r = 8, exactly grow_below · deadline
  early.tokens_per_second = 500;
  // predicted(r) = 10 s · (1 + r) / 9 <= 12 -> r <= 9 (target was 12).
  EXPECT_EQ(NextRank(p, c, DeviceProfile{}, 20, 8, early), 9);
  // Without a measured throughput the device's figure serves the same way.
  DeviceProfile d;
  d.tokens_per_second = 1'000;
  early.tokens_per_second = 0;
  EXPECT_EQ(NextRank(p, c, d, 20, 8, early), 9);
}

TEST(NextRankTest, KeepsOtherwise) {
  const DeviceProfile d;
  RoundObservation late;
  late.answered = true;
  late.seconds = 15;  // > 0.5 · 20 but within the deadline
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 8, late), 8);
  RoundObservation not_sampled;  // no answer, no miss: no information
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 8, not_sampled), 8);
  RoundObservation early;
  early.answered = true;
  early.seconds = 1;
  EXPECT_EQ(NextRank(Policy(), Cost(), d, /*deadline_s=*/0, 8, early), 8);
  // An out-of-range current rank is clamped first.
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 40, late), 16);
  EXPECT_EQ(NextRank(Policy(), Cost(), d, 20, 1, late), 2);
}

// --------------------------------------------------------------- pruning --

const std::string kQ = "base_model.model.model.layers.0.self_attn.q_proj";
const std::string kV = "base_model.model.model.layers.0.self_attn.v_proj";

// Factors whose component i has ‖B[:, i]‖·‖A[i, :]‖ = norms[i]: A rows and B
// columns are scaled unit vectors (split as 2·x and x/2 to make sure the
// product, not either factor, decides).
void AddModule(TensorMap& adapter, const std::string& module,
               const std::vector<double>& norms, int64_t out = 6,
               int64_t in = 5) {
  const int64_t r = static_cast<int64_t>(norms.size());
  torch::Tensor a = torch::zeros({r, in});
  torch::Tensor b = torch::zeros({out, r});
  for (int64_t i = 0; i < r; ++i) {
    a[i][i % in] = 2.0 * norms[i];
    b[(i + 1) % out][i] = 0.5;
  }
  adapter[module + ".lora_A.weight"] = a;
  adapter[module + ".lora_B.weight"] = b;
}

TEST(PrunedRankTest, KeepsEveryComponentAboveTheThresholdInEveryModule) {
  TensorMap adapter;
  AddModule(adapter, kQ, {1.0, 0.5, 0.001, 0.2});
  EXPECT_EQ(PrunedRank(adapter, 0.1), 4);  // index 3 (0.2) still counts
  EXPECT_EQ(PrunedRank(adapter, 0.3), 2);  // 0.2 and 0.001 go
  EXPECT_EQ(PrunedRank(adapter, 0.9), 1);
  AddModule(adapter, kV, {1.0, 0.01, 0.4, 0.0});
  EXPECT_EQ(PrunedRank(adapter, 0.3), 3);  // v_proj's index 2 (0.4)
  EXPECT_EQ(PrunedRank(adapter, 0.5), 2);  // q_proj's index 1 (0.5)
}

TEST(PrunedRankTest, NonPositiveThresholdAndZeroAdaptersKeepTheRank) {
  TensorMap adapter;
  AddModule(adapter, kQ, {1.0, 0.001, 0.001});
  EXPECT_EQ(PrunedRank(adapter, 0), 3);
  EXPECT_EQ(PrunedRank(adapter, -1), 3);
  // A fresh adapter (B = 0) has all component norms 0: nothing to prune.
  TensorMap fresh;
  fresh[kQ + ".lora_A.weight"] = torch::ones({4, 5});
  fresh[kQ + ".lora_B.weight"] = torch::zeros({6, 4});
  EXPECT_EQ(PrunedRank(fresh, 0.5), 4);
  EXPECT_EQ(PrunedRank(TensorMap{}, 0.5), 1);
}

// ---------------------------------------------------------------- policy --

Status ReadPolicy(const std::string& yaml, RankPolicy* out) {
  ConfigReader in(YAML::Load(yaml), "test.yaml");
  ConfigReader section = in.Section("ranks");
  out->Read(section);
  return in.Finish();
}

TEST(RankPolicyTest, ReadsAndValidates) {
  RankPolicy p;
  Status s = ReadPolicy(
      "ranks: {r_min: 4, r_max: 32, safety: 0.7, grow_below: 0.3}", &p);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(p.r_min, 4);
  EXPECT_EQ(p.r_max, 32);
  EXPECT_DOUBLE_EQ(p.safety, 0.7);
  EXPECT_DOUBLE_EQ(p.grow_below, 0.3);

  s = ReadPolicy("ranks: {r_min: 8, r_max: 4, safety: 0, grow_below: 2}", &p);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("ranks.r_max: must be >= r_min (8)"));
  EXPECT_THAT(s.message(), HasSubstr("ranks.safety: must be in (0, 1]"));
  EXPECT_THAT(s.message(), HasSubstr("ranks.grow_below: must be in (0, 1]"));
  EXPECT_THAT(p.Validate().message(), HasSubstr("r_max"));

  s = ReadPolicy("ranks: {r_min: 0}", &p);
  EXPECT_THAT(s.message(), HasSubstr("ranks.r_min: must be >= 1, got 0"));
}

}  // namespace
}  // namespace peft
}  // namespace fedpeft
