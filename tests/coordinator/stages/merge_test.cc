// The merge on its own: fedavg's sample-weighted mean (and the uniform one),
// a tensor an update left out averaged over the workers that sent it, a DP
// round's mean applied as given, and the zero_pad merge of heterogeneous
// ranks against a dense HetLoRA reference. Expected values are computed
// here by hand or with explicit slices, pads and products.
#include "coordinator/stages/merge.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/coordinator/stages/stage_test_util.h"

namespace fedpeft {
namespace coordinator {
namespace {

using stage_test::AKey;
using stage_test::BKey;
using stage_test::kQ;
using stage_test::kV;
using stage_test::MaxAbsDiff;

std::unique_ptr<Merge> MakeMerge(
    bool weighted = true,
    std::optional<aggregation::HeteroOptions> hetero = std::nullopt) {
  aggregation::StrategyOptions s;
  s.name = "fedavg";
  s.weighted = weighted;
  auto m = Merge::Create(s, hetero);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(m).value() : nullptr;
}

Update MakeUpdate(const std::string& id, uint64_t samples, TensorMap delta,
                  int64_t rank = 0) {
  Update u;
  u.worker_id = id;
  u.header.num_samples = samples;
  u.header.train_loss = 1.0;
  u.header.rank = rank;
  u.delta = std::move(delta);
  return u;
}

TensorMap Next(Merge& merge, const TensorMap& current,
               const std::vector<Update>& updates,
               std::optional<TensorMap> dp_mean = std::nullopt) {
  auto next = merge.Next(1, current, current, updates, std::move(dp_mean), 1.0);
  EXPECT_TRUE(next.ok()) << next.status().ToString();
  return next.ok() ? std::move(next).value() : TensorMap{};
}

TEST(MergeTest, FedAvgIsTheSampleWeightedMeanOfTheDeltas) {
  auto merge = MakeMerge();
  const TensorMap current = stage_test::Adapter(2, 6, 5, 1.0f);
  // 10 samples with delta 0.4, 30 with -0.2 (everywhere):
  // 1 + (10 * 0.4 + 30 * -0.2) / 40 = 1 - 0.05 = 0.95.
  const std::vector<Update> updates = {
      MakeUpdate("a", 10, stage_test::Adapter(2, 6, 5, 0.4f)),
      MakeUpdate("b", 30, stage_test::Adapter(2, 6, 5, -0.2f))};
  const TensorMap next = Next(*merge, current, updates);
  ASSERT_EQ(next.size(), current.size());
  for (const auto& [key, t] : next) {
    EXPECT_LE(MaxAbsDiff(t, torch::full_like(t, 0.95)), 1e-6) << key;
  }
  EXPECT_EQ(merge->strategy_name(), "fedavg");
}

TEST(MergeTest, UnweightedFedAvgGivesEveryWorkerTheSameWeight) {
  auto merge = MakeMerge(/*weighted=*/false);
  const TensorMap current = stage_test::Adapter(2, 6, 5, 1.0f);
  // (0.4 - 0.2) / 2 = 0.1, whatever the sample counts.
  const TensorMap next =
      Next(*merge, current,
           {MakeUpdate("a", 10, stage_test::Adapter(2, 6, 5, 0.4f)),
            MakeUpdate("b", 30, stage_test::Adapter(2, 6, 5, -0.2f))});
  for (const auto& [key, t] : next) {
    EXPECT_LE(MaxAbsDiff(t, torch::full_like(t, 1.1)), 1e-6) << key;
  }
}

TEST(MergeTest, ATensorLeftOutIsAveragedOverTheWorkersThatSentIt) {
  auto merge = MakeMerge();
  const TensorMap current = stage_test::Adapter(2, 6, 5, 0.0f);
  TensorMap a = stage_test::Adapter(2, 6, 5, 0.3f);  // every tensor
  TensorMap b;                                       // q_proj's B only
  b[BKey(kQ)] = torch::full({6, 2}, 0.7f);
  const TensorMap next =
      Next(*merge, current, {MakeUpdate("a", 10, a), MakeUpdate("b", 30, b)});
  // q_proj B: (10 * 0.3 + 30 * 0.7) / 40 = 0.6. The other tensors only
  // "a" trained: its delta, not diluted by b's absence (0.3, not 0.075).
  EXPECT_LE(MaxAbsDiff(next.at(BKey(kQ)), torch::full({6, 2}, 0.6)), 1e-6);
  for (const std::string& key : {AKey(kQ), AKey(kV), BKey(kV)}) {
    EXPECT_LE(MaxAbsDiff(next.at(key), torch::full_like(current.at(key), 0.3)),
              1e-6)
        << key;
  }
}

TEST(MergeTest, NoUpdateTouchingATensorLeavesItUnchanged) {
  auto merge = MakeMerge();
  torch::manual_seed(3);
  TensorMap current;
  for (const auto& [key, t] : stage_test::Adapter(2)) {
    current[key] = torch::randn_like(t);
  }
  TensorMap only_b;
  only_b[BKey(kV)] = torch::full({6, 2}, 0.5f);
  const TensorMap next = Next(*merge, current, {MakeUpdate("a", 5, only_b)});
  EXPECT_TRUE(torch::equal(next.at(AKey(kQ)), current.at(AKey(kQ))));
  EXPECT_LE(MaxAbsDiff(next.at(BKey(kV)), current.at(BKey(kV)) + 0.5), 1e-6);
}

TEST(MergeTest, ADpRoundAppliesTheGivenMeanExactly) {
  auto merge = MakeMerge();
  torch::manual_seed(5);
  TensorMap current, mean;
  for (const auto& [key, t] : stage_test::Adapter(2)) {
    current[key] = torch::randn_like(t);
    mean[key] = 0.01 * torch::randn_like(t);
  }
  // The updates are what the mean was made of; the merge must not look at
  // them again (their sample counts would re-weight the users).
  const std::vector<Update> updates = {
      MakeUpdate("a", 10, stage_test::Adapter(2, 6, 5, 5.0f)),
      MakeUpdate("b", 90, stage_test::Adapter(2, 6, 5, -5.0f))};
  const TensorMap next = Next(*merge, current, updates, mean);
  ASSERT_EQ(next.size(), current.size());
  for (const auto& [key, t] : current) {
    EXPECT_LE(MaxAbsDiff(next.at(key), t + mean.at(key)), 1e-7) << key;
  }
}

// ------------------------------------------------ heterogeneous (zero_pad) --

constexpr double kScaling = 2.0;

torch::Tensor F64(const torch::Tensor& t) { return t.to(torch::kFloat64); }

// HetLoRA written out: the local factors (the global's leading `rank`
// components plus the delta), weights n_k * ||s B_k A_k||_F normalised over
// the workers, deltas zero-padded to the global's rank and added.
TensorMap ZeroPadReference(const TensorMap& global,
                           const std::vector<Update>& updates,
                           const std::vector<int64_t>& ranks) {
  TensorMap out;
  for (const std::string& m : {kQ, kV}) {
    const torch::Tensor a = F64(global.at(AKey(m)));
    const torch::Tensor b = F64(global.at(BKey(m)));
    std::vector<double> w;
    double total = 0;
    for (size_t k = 0; k < updates.size(); ++k) {
      const int64_t r = ranks[k];
      const torch::Tensor ak =
          a.slice(0, 0, r) + F64(updates[k].delta.at(AKey(m)));
      const torch::Tensor bk =
          b.slice(1, 0, r) + F64(updates[k].delta.at(BKey(m)));
      w.push_back(static_cast<double>(updates[k].header.num_samples) *
                  (kScaling * bk.mm(ak)).norm().item<double>());
      total += w.back();
    }
    torch::Tensor new_a = a.clone(), new_b = b.clone();
    for (size_t k = 0; k < updates.size(); ++k) {
      const torch::Tensor da = F64(updates[k].delta.at(AKey(m)));
      const torch::Tensor db = F64(updates[k].delta.at(BKey(m)));
      new_a += w[k] / total *
               torch::constant_pad_nd(da, {0, 0, 0, a.size(0) - da.size(0)});
      new_b += w[k] / total *
               torch::constant_pad_nd(db, {0, b.size(1) - db.size(1)});
    }
    out[AKey(m)] = new_a;
    out[BKey(m)] = new_b;
  }
  return out;
}

TEST(MergeTest, ZeroPadMergesRanksOneAndTwoAsTheDenseReference) {
  aggregation::HeteroOptions h;
  h.method = aggregation::HeteroMethod::kZeroPad;
  h.r_max = 2;
  h.scaling = kScaling;
  auto merge = MakeMerge(true, h);
  torch::manual_seed(11);
  TensorMap global;
  for (const auto& [key, t] : stage_test::Adapter(2)) {
    global[key] = torch::randn_like(t);
  }
  auto delta = [](int64_t rank) {
    TensorMap d;
    for (const auto& [key, t] : stage_test::Adapter(rank)) {
      d[key] = 0.1 * torch::randn_like(t);
    }
    return d;
  };
  std::vector<Update> updates = {MakeUpdate("r1", 10, delta(1), 1),
                                 MakeUpdate("r2", 30, delta(2), 2),
                                 // An edge: rank 0 means the global's shapes.
                                 MakeUpdate("edge", 20, delta(2), 0)};
  updates[2].edge = true;
  const TensorMap next = Next(*merge, global, updates);
  const TensorMap want = ZeroPadReference(global, updates, {1, 2, 2});
  ASSERT_EQ(next.size(), want.size());
  for (const auto& [key, t] : want) {
    ASSERT_EQ(next.at(key).sizes(), t.sizes()) << key;
    EXPECT_LE(MaxAbsDiff(next.at(key), t), 1e-5) << key;
  }
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
