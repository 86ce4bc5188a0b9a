// The adapter planner without a server: the round's shape it sets in
// OnOpen (frozen set, FFA, ranks and their metrics), what tasks carry,
// what an upload may hold, the download view, the frozen tensors kept after
// a merge, the keys a round changed, and ranks assigned at registration,
// moved after a round and kept across a restart.
#include "coordinator/stages/adapter_planner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/coordinator/stages/stage_test_util.h"

namespace fedpeft {
namespace coordinator {
namespace {

using stage_test::AKey;
using stage_test::BKey;
using stage_test::Join;
using stage_test::kQ;
using stage_test::kV;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

class AdapterPlannerTest : public ::testing::Test {
 protected:
  AdapterPlannerTest() : registry_("fed", 30) {
    model_.dim = 8;
    model_.hidden_dim = 16;
    model_.n_layers = 1;
    model_.n_heads = 2;
    model_.n_kv_heads = 2;
    model_.vocab_size = 32;
    model_.max_seq_len = 64;
    round_.registry = &registry_;
    round_.round = 1;
    round_.deadline_s = 10;
  }

  std::unique_ptr<AdapterPlanner> Make(const std::vector<std::string>& o,
                                       bool upstream_frozen = false) {
    std::vector<std::string> all = {"peft.lora.r=4"};
    all.insert(all.end(), o.begin(), o.end());
    auto p = AdapterPlanner::Create(
        stage_test::Config(all), model_,
        std::make_shared<const TensorMap>(stage_test::Adapter(4)), &registry_,
        upstream_frozen);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(p).value() : nullptr;
  }

  const std::vector<std::string> kHetero = {"heterogeneity.enabled=true",
                                            "heterogeneity.r_min=1"};
  model::LlamaConfig model_;
  Registry registry_;
  RoundContext round_;
  RoundMetrics m_;
};

TEST_F(AdapterPlannerTest, CloudFreezesNothingWithoutApfAndTasksSaySo) {
  auto planner =
      Make({"freezing.ffa=true", "hierarchy.edge_rounds=3",
            "train.local_steps=7", "heterogeneity.prune_threshold=0.25"});
  Join(&registry_, "a");
  Join(&registry_, "e", /*edge=*/true);
  round_.selected = {"a", "e"};
  round_.frozen = {"left over from an earlier round"};
  planner->OnOpen(round_, &m_);
  EXPECT_THAT(round_.frozen, IsEmpty());
  EXPECT_TRUE(round_.ffa);
  EXPECT_EQ(m_.frozen_fraction, 0);
  // Without heterogeneous ranks the worker trains peft.lora.r; edges are
  // left out of the rank metrics.
  EXPECT_EQ(m_.rank_min, 4);
  EXPECT_EQ(m_.rank_max, 4);
  EXPECT_EQ(m_.rank_mean, 4);

  TaskInfo worker, edge;
  planner->FillTask(round_, *registry_.Find("a"), &worker);
  planner->FillTask(round_, *registry_.Find("e"), &edge);
  EXPECT_EQ(worker.rank, 0);
  EXPECT_THAT(worker.frozen, IsEmpty());
  EXPECT_TRUE(worker.train_b_only);
  EXPECT_EQ(worker.prune_threshold, 0.25);
  EXPECT_EQ(worker.train.local_steps, 7);
  EXPECT_EQ(worker.edge_rounds, 0);
  EXPECT_EQ(edge.edge_rounds, 3);
}

TEST_F(AdapterPlannerTest, EdgeKeepsTheCloudsFrozenSetAcrossItsRounds) {
  auto planner = Make({}, /*upstream_frozen=*/true);
  Join(&registry_, "a");
  TensorMap previous = stage_test::Adapter(4);
  TensorMap cloud = stage_test::Adapter(4);
  cloud[AKey(kQ)] = torch::ones({4, 5});  // the only tensor the cloud moved
  EdgeTask task;
  task.frozen = {BKey(kV)};
  task.train_b_only = true;
  task.prune_threshold = 0.5;
  task.train.local_steps = 11;
  planner->BeginUpstreamTask(previous, cloud, /*round=*/5, task);
  EXPECT_THAT(planner->last_changed(), ElementsAre(Pair(AKey(kQ), 5)));

  round_.selected = {"a"};
  for (int64_t edge_round : {1, 2}) {  // OnOpen must not clear it
    round_.round = edge_round;
    planner->OnOpen(round_, &m_);
    EXPECT_EQ(round_.frozen, std::set<std::string>{BKey(kV)});
    EXPECT_TRUE(round_.ffa);
    EXPECT_DOUBLE_EQ(m_.frozen_fraction, 1.0 / 4);  // 1 of 4 tensors
  }
  TaskInfo t;
  planner->FillTask(round_, *registry_.Find("a"), &t);
  EXPECT_THAT(t.frozen, ElementsAre(BKey(kV)));
  EXPECT_TRUE(t.train_b_only);
  EXPECT_EQ(t.prune_threshold, 0.5);
  EXPECT_EQ(t.train.local_steps, 11);

  // After the merge the frozen tensor is put back as it was.
  TensorMap next = stage_test::Adapter(4, 6, 5, 0.5f);
  planner->KeepFrozen(cloud, &next);
  EXPECT_TRUE(torch::equal(next.at(BKey(kV)), cloud.at(BKey(kV))));
  EXPECT_TRUE(torch::equal(next.at(AKey(kQ)), torch::full({4, 5}, 0.5)));
}

TEST_F(AdapterPlannerTest, ViewTruncatesAndLeavesOutWhatTheCacheHolds) {
  torch::manual_seed(2);
  auto global = std::make_shared<TensorMap>();
  for (const auto& [key, t] : stage_test::Adapter(4)) {
    (*global)[key] = torch::randn_like(t);
  }
  // Nothing to change: the global itself, not a copy.
  EXPECT_EQ(AdapterPlanner::View(global, 0, 0, {}).get(), global.get());

  auto rank2 = AdapterPlanner::View(global, 2, 0, {});
  ASSERT_EQ(rank2->size(), 4u);
  for (const std::string& m : {kQ, kV}) {
    EXPECT_TRUE(
        torch::equal(rank2->at(AKey(m)), global->at(AKey(m)).slice(0, 0, 2)));
    EXPECT_TRUE(
        torch::equal(rank2->at(BKey(m)), global->at(BKey(m)).slice(1, 0, 2)));
  }

  // A copy of round 3 is cached: only what changed in round 3 or later
  // travels (v_proj never changed since the start).
  const std::map<std::string, int64_t> changed = {{AKey(kQ), 3}, {BKey(kQ), 2}};
  auto cached = AdapterPlanner::View(global, 0, 3, changed);
  ASSERT_EQ(cached->size(), 1u);
  EXPECT_TRUE(torch::equal(cached->at(AKey(kQ)), global->at(AKey(kQ))));
  auto both = AdapterPlanner::View(global, 1, 3, changed);
  ASSERT_EQ(both->size(), 1u);
  EXPECT_TRUE(
      torch::equal(both->at(AKey(kQ)), global->at(AKey(kQ)).slice(0, 0, 1)));
}

TEST_F(AdapterPlannerTest, ExpectTakesRanksUpToTheAssignedOne) {
  auto planner = Make(kHetero);  // zero_pad
  const TensorMap global = stage_test::Adapter(4);
  UpdateHeader h;
  h.rank = 4;
  auto over = planner->Expect("a", h, global, /*assigned_rank=*/3);
  EXPECT_EQ(over.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(over.status().message(),
              AllOf(HasSubstr("'a'"), HasSubstr("rank 4"),
                    HasSubstr("1..3 (the assigned rank)")));
  h.rank = 0;
  EXPECT_FALSE(planner->Expect("a", h, global, 3).ok());

  h.rank = 2;  // below the assigned rank: a worker that pruned itself
  auto e = planner->Expect("a", h, global, 3);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_TRUE(e->specs.has_value());
  ASSERT_EQ(e->specs->size(), 4u);
  EXPECT_EQ(e->specs->at(AKey(kQ)).shape, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(e->specs->at(BKey(kV)).shape, (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(e->specs->at(BKey(kV)).dtype, torch::kFloat32);
  EXPECT_EQ(e->max_tensors, 4u);

  // Without an assigned rank only the global's shapes.
  h.rank = 1;
  auto plain = planner->Expect("b", h, global, 0);
  EXPECT_THAT(plain.status().message(), HasSubstr("expected 0"));
}

TEST_F(AdapterPlannerTest, AWholeAdapterOnlyWithTheStackMerge) {
  UpdateHeader h;
  h.whole_adapter = true;
  const TensorMap global = stage_test::Adapter(4);
  auto zero_pad = Make(kHetero);
  auto refused = zero_pad->Expect("edge", h, global, 0);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("heterogeneity.method stack"));

  std::vector<std::string> stack = kHetero;
  stack.push_back("heterogeneity.method=stack");
  auto taken = Make(stack)->Expect("edge", h, global, 0);
  ASSERT_TRUE(taken.ok()) << taken.status().ToString();
  EXPECT_FALSE(taken->specs.has_value());  // checked once decoded
}

TEST_F(AdapterPlannerTest, SettleReturnsExactlyTheChangedKeys) {
  auto planner = Make({});
  const TensorMap current = stage_test::Adapter(4, 6, 5, 1.0f);
  TensorMap next = current;                     // same tensors: unchanged
  next[AKey(kQ)] = current.at(AKey(kQ)) + 0.0;  // equal values, new tensor
  next[BKey(kQ)] = current.at(BKey(kQ)).clone();
  next[BKey(kQ)][5][3] = 1.5f;           // one element moved
  next[AKey(kV)] = torch::ones({2, 5});  // another shape
  // In key order: q_proj before v_proj.
  EXPECT_THAT(planner->Settle(1, current, next),
              ElementsAre(BKey(kQ), AKey(kV)));

  planner->MarkChanged({BKey(kQ)}, 7);
  EXPECT_THAT(planner->last_changed(), ElementsAre(Pair(BKey(kQ), 7)));
}

TEST_F(AdapterPlannerTest, RegistrationAssignsARankWithinTheRange) {
  auto planner = Make(kHetero);  // r_min 1, r_max peft.lora.r = 4
  // Nothing known of the device: nothing limits it, the largest rank.
  Participant& unknown = Join(&registry_, "unknown");
  planner->OnRegister(unknown);
  EXPECT_EQ(unknown.rank, 4);
  // One byte of memory fits no rank: the smallest.
  WorkerProfile tiny = stage_test::Profile("tiny");
  tiny.ram_bytes = 1;
  bool rejoin = false;
  Participant& small = registry_.Open(tiny, &rejoin);
  planner->OnRegister(small);
  EXPECT_EQ(small.rank, 1);
  EXPECT_EQ(planner->RankOf(small), 1);
  // An edge trains no rank of its own.
  Participant& edge = Join(&registry_, "e", /*edge=*/true);
  planner->OnRegister(edge);
  EXPECT_EQ(edge.rank, 0);
  EXPECT_EQ(planner->RankOf(edge), 0);
  // A rank restored from a checkpoint is kept.
  Participant& restored = Join(&registry_, "restored");
  restored.rank = 3;
  planner->OnRegister(restored);
  EXPECT_EQ(restored.rank, 3);
}

TEST_F(AdapterPlannerTest, RanksMoveAfterTheRoundFromWhatWorkersDid) {
  auto planner = Make(kHetero);
  Join(&registry_, "a").rank = 4;
  Join(&registry_, "b").rank = 2;
  round_.selected = {"a", "b"};
  planner->OnOpen(round_, &m_);
  EXPECT_EQ(m_.rank_min, 2);
  EXPECT_EQ(m_.rank_max, 4);
  EXPECT_DOUBLE_EQ(m_.rank_mean, 3);
  TaskInfo t;
  planner->FillTask(round_, *registry_.Find("a"), &t);
  EXPECT_EQ(t.rank, 4);

  // "a" missed the round: half its rank. "b" answered after 9 of 10 s (too
  // slow to grow) having pruned itself to rank 1: that is its rank now.
  Update b;
  b.worker_id = "b";
  b.header.rank = 1;
  b.header.train_seconds = 9;
  std::vector<Update> updates = {b};
  std::mutex mu;
  std::unique_lock<std::mutex> lock(mu);
  planner->OnClose(round_, lock, &updates, &m_);
  EXPECT_EQ(registry_.Find("a")->rank, 2);
  EXPECT_EQ(registry_.Find("b")->rank, 1);
}

TEST_F(AdapterPlannerTest, BehindEdgesTheRanksAreTheOnesEdgesAssigned) {
  auto planner = Make({});
  std::vector<Update> updates(2);
  for (Update& u : updates) u.edge = true;
  updates[0].header = UpdateHeader{};
  updates[0].header.rank_min = 2;
  updates[0].header.rank_max = 6;
  updates[0].header.rank_mean = 3;
  updates[0].header.workers = 2;
  updates[1].header.rank_min = 1;
  updates[1].header.rank_max = 4;
  updates[1].header.rank_mean = 2;
  updates[1].header.workers = 3;
  std::mutex mu;
  std::unique_lock<std::mutex> lock(mu);
  planner->OnClose(round_, lock, &updates, &m_);
  EXPECT_EQ(m_.rank_min, 1);
  EXPECT_EQ(m_.rank_max, 6);
  EXPECT_DOUBLE_EQ(m_.rank_mean, (3.0 * 2 + 2.0 * 3) / 5);  // per worker
}

TEST_F(AdapterPlannerTest, RanksSurviveARestartThroughTheCheckpoint) {
  auto planner = Make(kHetero);
  Join(&registry_, "a").rank = 3;
  Join(&registry_, "b").rank = 1;
  Join(&registry_, "e", /*edge=*/true);  // rank 0: not saved
  nlohmann::json extra = nlohmann::json::object();
  planner->SaveState(&extra);
  EXPECT_EQ(extra.at("ranks"), nlohmann::json({{"a", 3}, {"b", 1}}));

  // A new coordinator: nobody registered yet.
  Registry fresh("fed", 30);
  auto resumed = AdapterPlanner::Create(
      stage_test::Config({"peft.lora.r=4", "heterogeneity.enabled=true",
                          "heterogeneity.r_min=1"}),
      model_, std::make_shared<const TensorMap>(stage_test::Adapter(4)), &fresh,
      false);
  ASSERT_TRUE(resumed.ok());
  const std::string where = "checkpoint in 'test'";
  Status s = (*resumed)->LoadState(SavedState{extra, 1, where});
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_NE(fresh.Find("a"), nullptr);
  EXPECT_EQ(fresh.Find("a")->rank, 3);
  EXPECT_EQ(fresh.Find("b")->rank, 1);
  EXPECT_EQ(fresh.Find("e"), nullptr);
  // Registering keeps the restored rank instead of assigning a new one.
  Participant& a = Join(&fresh, "a");
  (*resumed)->OnRegister(a);
  EXPECT_EQ(a.rank, 3);
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
