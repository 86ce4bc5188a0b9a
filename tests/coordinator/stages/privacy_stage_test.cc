// The privacy stage without a server: the round's clip norm and the edges'
// noise shares, the clip bound enforced on uploads (never rescaled), the
// DP mean (exactly the plain mean without noise, noise of z·C on the sum
// with it), the accountant's epsilon at q = selected / alive, its state
// across a restart, and an edge taking C from the cloud's task. Expected
// values are computed here by hand, or with security/rdp_accountant.h's
// closed ComputeEpsilon for the privacy spent.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "coordinator/stages/privacy.h"
#include "security/rdp_accountant.h"
#include "tests/coordinator/stages/stage_test_util.h"

namespace fedpeft {
namespace coordinator {
namespace {

using stage_test::AKey;
using stage_test::BKey;
using stage_test::Join;
using stage_test::kQ;
using stage_test::kV;
using stage_test::MaxAbsDiff;
using ::testing::AllOf;
using ::testing::HasSubstr;

class PrivacyStageTest : public ::testing::Test {
 protected:
  PrivacyStageTest() : registry_("fed", 30) {
    round_.registry = &registry_;
    round_.round = 1;
  }

  // A cloud stage with clip norm `c` and noise multiplier `z`, initialised
  // for `direct` workers (and `edges` edges) at sampling rate `q`.
  std::unique_ptr<PrivacyStage> Cloud(double c, double z,
                                      std::vector<std::string> more = {},
                                      int direct = 4, int edges = 0,
                                      double q = 0.5) {
    std::vector<std::string> o = {"dp.enabled=true",
                                  "dp.clip_norm=" + std::to_string(c),
                                  "dp.noise_multiplier=" + std::to_string(z),
                                  "dp.noise_seed=7", "dp.delta=1e-5"};
    o.insert(o.end(), more.begin(), more.end());
    auto stage = std::make_unique<PrivacyStage>(stage_test::Config(o), true);
    Registry::Counts alive;
    alive.direct = direct;
    alive.edges = edges;
    Status s = stage->Init(alive, q);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return stage;
  }

  Status Check(const PrivacyStage& stage, const std::string& id, bool edge,
               const TensorMap& delta, const UpdateHeader& header) {
    const UploadExpectation none;
    return stage.CheckUpdate(UpdateCheck{id, edge, header, delta, none});
  }

  void Close(PrivacyStage* stage, std::vector<Update>* updates) {
    std::mutex mu;
    std::unique_lock<std::mutex> lock(mu);
    stage->OnClose(round_, lock, updates, &m_);
  }

  static Update Worker(const std::string& id, TensorMap delta) {
    Update u;
    u.worker_id = id;
    u.header.num_samples = 10;
    u.header.unclipped = 1;
    u.delta = std::move(delta);
    return u;
  }

  Registry registry_;
  RoundContext round_;
  RoundMetrics m_;
};

TEST_F(PrivacyStageTest, OpenSetsTheClipNormAndEdgesGetTheirNoiseShares) {
  auto stage = Cloud(0.5, 1.2, {"dp.placement=edges", "dp.population=100"},
                     /*direct=*/1, /*edges=*/3, /*q=*/1.0);
  Join(&registry_, "w");
  for (const char* e : {"e1", "e2", "e3"}) Join(&registry_, e, /*edge=*/true);
  round_.selected = {"w", "e1", "e2", "e3"};
  stage->OnOpen(round_, &m_);
  EXPECT_EQ(round_.clip_norm, 0.5);
  EXPECT_EQ(m_.clip_norm, 0.5);
  EXPECT_DOUBLE_EQ(m_.noise_multiplier, 1.2);
  EXPECT_TRUE(stage->enabled());

  TaskInfo edge, worker;
  stage->FillTask(round_, *registry_.Find("e2"), &edge);
  stage->FillTask(round_, *registry_.Find("w"), &worker);
  // Three edges each add z·C/√3, so their shares make N(0, (z·C)²).
  EXPECT_NEAR(edge.noise_stddev, 1.2 * 0.5 / std::sqrt(3.0), 1e-12);
  EXPECT_EQ(edge.count_noise_stddev, 0);  // no adaptive clipping
  EXPECT_EQ(edge.clip_norm, 0.5);
  EXPECT_EQ(worker.noise_stddev, 0);
  EXPECT_EQ(worker.clip_norm, 0.5);

  // Central placement: the cloud adds all the noise, edges none.
  auto central = Cloud(0.5, 1.2, {"dp.population=100"}, 1, 3, 1.0);
  central->OnOpen(round_, &m_);
  TaskInfo central_edge;
  central->FillTask(round_, *registry_.Find("e2"), &central_edge);
  EXPECT_EQ(central_edge.noise_stddev, 0);
  EXPECT_EQ(central_edge.clip_norm, 0.5);
}

TEST_F(PrivacyStageTest, RefusesAWorkerUpdateOverTheClipNorm) {
  auto stage = Cloud(0.5, 1.0);
  stage->OnOpen(round_, &m_);
  UpdateHeader h;
  h.num_samples = 10;
  TensorMap d;
  d[BKey(kQ)] = torch::zeros({6, 2});
  d[BKey(kV)] = torch::zeros({6, 2});
  d[BKey(kQ)][0][0] = 0.3f;  // L2 norm over both tensors: sqrt(.09 + .16)
  d[BKey(kV)][5][1] = 0.4f;
  Status at = Check(*stage, "w1", false, d, h);
  EXPECT_TRUE(at.ok()) << at.ToString();  // exactly C passes

  d[BKey(kV)][5][1] = 0.4001f;  // norm 0.50008
  Status over = Check(*stage, "w1", false, d, h);
  EXPECT_EQ(over.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(over.message(),
              AllOf(HasSubstr("'w1'"), HasSubstr("exceeds the round's clip "
                                                 "norm 0.5")));
  // An edge sends a mean plus its noise: no norm bound applies to it.
  h.workers = 2;
  h.users_selected = 2;
  h.users_alive = 2;
  EXPECT_TRUE(Check(*stage, "e", true, d, h).ok());

  d[BKey(kV)][5][1] = 0.4f;
  h = UpdateHeader{};
  h.unclipped = 0.5;  // a worker's bit is 0 or 1
  EXPECT_THAT(Check(*stage, "w1", false, d, h).message(),
              HasSubstr("unclipped 0.5"));
  h.unclipped = 1;
  h.whole_adapter = true;
  EXPECT_THAT(Check(*stage, "w1", false, d, h).message(),
              HasSubstr("a whole adapter under DP"));
}

TEST_F(PrivacyStageTest, RefusesAnInconsistentEdgeHeader) {
  auto stage = Cloud(0.5, 1.0, {"dp.population=100"});
  stage->OnOpen(round_, &m_);
  TensorMap d = stage_test::Adapter(2, 6, 5, 0.1f);
  UpdateHeader h;
  h.workers = 3;
  h.users_selected = 3;
  h.users_alive = 8;
  EXPECT_TRUE(Check(*stage, "e", true, d, h).ok());
  h.users_selected = 2;  // fewer users selected than workers merged
  Status s = Check(*stage, "e", true, d, h);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("edge 'e'"), HasSubstr("workers 3"),
                                 HasSubstr("users selected 2 of 8")));
  h.users_selected = 9;  // more selected than alive
  EXPECT_FALSE(Check(*stage, "e", true, d, h).ok());
  h.users_selected = 3;
  h.unclipped = std::nan("");
  EXPECT_FALSE(Check(*stage, "e", true, d, h).ok());
}

TEST_F(PrivacyStageTest, NoiselessMeanIsThePlainMeanOverUsers) {
  auto stage = Cloud(1.0, 0.0);
  stage->OnOpen(round_, &m_);
  const TensorMap current = stage_test::Adapter(2, 6, 5, 1.0f);
  std::vector<Update> updates = {
      Worker("w1", stage_test::Adapter(2, 6, 5, 0.2f)),
      Worker("w2", stage_test::Adapter(2, 6, 5, -0.4f)),
      Worker("e", stage_test::Adapter(2, 6, 5, 0.1f))};
  updates[2].edge = true;  // the mean of its 3 workers' clipped updates
  updates[2].header.workers = 3;
  // v_proj's B frozen, every lora_A fixed (FFA): only q_proj's B is
  // released: (0.2 - 0.4 + 3 · 0.1) / (1 + 1 + 3) = 0.02.
  auto mean = stage->Mean(current, {BKey(kV)}, /*ffa=*/true, false, updates,
                          "round", &m_);
  ASSERT_TRUE(mean.ok()) << mean.status().ToString();
  ASSERT_EQ(mean->size(), 4u);
  EXPECT_LE(MaxAbsDiff(mean->at(BKey(kQ)), torch::full({6, 2}, 0.02)), 1e-7);
  for (const std::string& key : {AKey(kQ), AKey(kV), BKey(kV)}) {
    EXPECT_TRUE(torch::equal(mean->at(key), torch::zeros_like(current.at(key))))
        << key;
  }
  // Without FFA and frozen tensors every tensor is released.
  auto all = stage->Mean(current, {}, false, false, updates, "round", &m_);
  ASSERT_TRUE(all.ok());
  EXPECT_LE(MaxAbsDiff(all->at(AKey(kV)), torch::full({2, 5}, 0.02)), 1e-7);
}

TEST_F(PrivacyStageTest, NoiseOnTheSumHasStddevZTimesC) {
  const double z = 1.5, c = 0.2;
  auto stage = Cloud(c, z);
  stage->OnOpen(round_, &m_);
  // 2 · (40·100 + 200·40) = 24,000 released coordinates.
  const TensorMap current = stage_test::Adapter(40, 200, 100);
  torch::manual_seed(1);
  std::vector<Update> updates;
  for (const char* id : {"w1", "w2"}) {
    TensorMap d;
    for (const auto& [key, t] : current) d[key] = 0.01 * torch::randn_like(t);
    updates.push_back(Worker(id, d));
  }
  auto mean = stage->Mean(current, {}, false, false, updates, "round", &m_);
  ASSERT_TRUE(mean.ok()) << mean.status().ToString();
  std::vector<torch::Tensor> noise;  // (Mean - plain mean) · users
  for (const auto& [key, t] : current) {
    torch::Tensor plain = (updates[0].delta.at(key).to(torch::kFloat64) +
                           updates[1].delta.at(key).to(torch::kFloat64)) /
                          2;
    noise.push_back(
        ((mean->at(key).to(torch::kFloat64) - plain) * 2).flatten());
  }
  const torch::Tensor all = torch::cat(noise);
  const double n = static_cast<double>(all.numel());
  ASSERT_EQ(n, 24000);
  const double sd = all.std().item<double>();
  // The sample stddev of n normal draws has relative standard error
  // 1/√(2n) (0.46% here): allow 5 of them. The mean: 5 σ/√n.
  EXPECT_NEAR(sd / (z * c), 1.0, 5 / std::sqrt(2 * n));
  EXPECT_NEAR(all.mean().item<double>(), 0.0, 5 * z * c / std::sqrt(n));

  // A fixed dp.noise_seed draws the same noise again.
  auto again = Cloud(c, z);
  again->OnOpen(round_, &m_);
  auto repeat = again->Mean(current, {}, false, false, updates, "round", &m_);
  ASSERT_TRUE(repeat.ok());
  EXPECT_TRUE(torch::equal(repeat->at(BKey(kV)), mean->at(BKey(kV))));
}

TEST_F(PrivacyStageTest, CloseSpendsPrivacyAtSelectedOverAlive) {
  auto stage = Cloud(0.5, 1.1);
  for (const char* id : {"a", "b", "c", "d", "gone"}) Join(&registry_, id);
  registry_.Find("gone")->last_seen = Clock::now() - std::chrono::hours(1);
  round_.selected = {"a", "b"};
  stage->OnOpen(round_, &m_);
  std::vector<Update> none;
  Close(stage.get(), &none);  // nothing answered: nothing released
  EXPECT_TRUE(std::isnan(m_.epsilon));

  std::vector<Update> updates = {Worker("a", {}), Worker("b", {})};
  Close(stage.get(), &updates);
  EXPECT_DOUBLE_EQ(m_.sampling_rate, 0.5);  // 2 of 4 alive
  EXPECT_EQ(m_.delta, 1e-5);
  const double want = privacy::ComputeEpsilon(0.5, 1.1, 1, 1e-5).epsilon;
  ASSERT_TRUE(std::isfinite(want));
  EXPECT_NEAR(m_.epsilon, want, 1e-9 * want);
}

// Two guarantees: against everyone who sees the global adapter (z), and
// against the cloud itself, which with placement edges sees each edge's
// release noised by its share only (z/√E), and which chose the edges, so
// their sampling amplifies nothing against it; every user behind a
// selected edge counts as selected (the cloud cannot check an edge's
// sampling), and an edge may not declare more users than the cap.
TEST_F(PrivacyStageTest, EpsilonAgainstTheCloudUsesTheEdgesShare) {
  auto stage = Cloud(
      0.5, 1.2,
      {"dp.placement=edges", "dp.population=100", "dp.max_users_per_edge=50"},
      /*direct=*/0, /*edges=*/3, /*q=*/1.0);
  for (const char* e : {"e1", "e2", "e3", "e4"}) {
    Join(&registry_, e, /*edge=*/true);
  }
  round_.selected = {"e1", "e2", "e3"};
  stage->OnOpen(round_, &m_);
  auto edge_update = [](const std::string& id, uint32_t selected,
                        uint32_t alive) {
    Update u;
    u.worker_id = id;
    u.edge = true;
    u.header.num_samples = 10;
    u.header.workers = selected;
    u.header.users_selected = selected;
    u.header.users_alive = alive;
    return u;
  };
  // An edge claiming 60 users behind it is over the cap of 50.
  UpdateHeader over = edge_update("e1", 2, 60).header;
  Status s = Check(*stage, "e1", true, {}, over);
  EXPECT_THAT(s.message(), HasSubstr("more than dp.max_users_per_edge 50"));

  // Each edge says it sampled 2 of its 40 users: ignored, q = 3/4 edges;
  // against the cloud, which picked those 3 edges, q = 1.
  std::vector<Update> updates = {edge_update("e1", 2, 40),
                                 edge_update("e2", 2, 40),
                                 edge_update("e3", 2, 40)};
  Close(stage.get(), &updates);
  EXPECT_DOUBLE_EQ(m_.sampling_rate, 0.75);
  const double want = privacy::ComputeEpsilon(0.75, 1.2, 1, 1e-5).epsilon;
  const double cloud =
      privacy::ComputeEpsilon(1.0, 1.2 / std::sqrt(3.0), 1, 1e-5).epsilon;
  EXPECT_NEAR(m_.epsilon, want, 1e-9 * want);
  EXPECT_NEAR(m_.epsilon_cloud, cloud, 1e-9 * cloud);
  EXPECT_GT(m_.epsilon_cloud, m_.epsilon);

  // Trusting the edges' sampling: q = 3/4 · 2/40 for everyone, and 2/40
  // against the cloud (not 3/4 · 2/40: the cloud knows its 3/4).
  auto trusting =
      Cloud(0.5, 1.2,
            {"dp.placement=edges", "dp.population=100",
             "dp.max_users_per_edge=50", "dp.trust_edge_sampling=true"},
            0, 3, 1.0);
  trusting->OnOpen(round_, &m_);
  Close(trusting.get(), &updates);
  EXPECT_DOUBLE_EQ(m_.sampling_rate, 0.75 * 0.05);
  const double trusted_cloud =
      privacy::ComputeEpsilon(0.05, 1.2 / std::sqrt(3.0), 1, 1e-5).epsilon;
  EXPECT_NEAR(m_.epsilon_cloud, trusted_cloud, 1e-9 * trusted_cloud);

  // Central placement: the cloud saw un-noised sums, no bound against it.
  auto central = Cloud(0.5, 1.2, {"dp.population=100"}, 0, 3, 1.0);
  central->OnOpen(round_, &m_);
  Close(central.get(), &updates);
  EXPECT_TRUE(std::isinf(m_.epsilon_cloud));
  EXPECT_TRUE(std::isfinite(m_.epsilon));
}

TEST_F(PrivacyStageTest, SavedStateKeepsThePrivacySpent) {
  auto stage = Cloud(0.5, 1.1);
  for (const char* id : {"a", "b", "c", "d"}) Join(&registry_, id);
  round_.selected = {"a", "b"};
  stage->OnOpen(round_, &m_);
  std::vector<Update> updates = {Worker("a", {}), Worker("b", {})};
  Close(stage.get(), &updates);
  nlohmann::json extra = nlohmann::json::object();
  stage->SaveState(&extra);
  ASSERT_TRUE(extra.contains("dp"));

  // A restarted coordinator: a new stage, not initialised, loads it and
  // spends round 2 on top of round 1.
  auto resumed = std::make_unique<PrivacyStage>(
      stage_test::Config({"dp.enabled=true", "dp.clip_norm=0.5",
                          "dp.noise_multiplier=1.1", "dp.noise_seed=7"}),
      true);
  const std::string where = "checkpoint in 'test'";
  Status s = resumed->LoadState(SavedState{extra, 1, where});
  ASSERT_TRUE(s.ok()) << s.ToString();
  round_.round = 2;
  resumed->OnOpen(round_, &m_);
  EXPECT_DOUBLE_EQ(m_.noise_multiplier, 1.1);
  Close(resumed.get(), &updates);
  const double want = privacy::ComputeEpsilon(0.5, 1.1, 2, 1e-5).epsilon;
  EXPECT_NEAR(m_.epsilon, want, 1e-9 * want);
  EXPECT_EQ(m_.delta, 1e-5);  // the saved delta, not the config's default

  // A checkpoint written without DP cannot say what was spent.
  const nlohmann::json plain = nlohmann::json::object();
  auto fresh = std::make_unique<PrivacyStage>(
      stage_test::Config({"dp.enabled=true"}), true);
  EXPECT_TRUE(fresh->LoadState(SavedState{plain, 0, where}).ok());
  Status missing = fresh->LoadState(SavedState{plain, 3, where});
  EXPECT_EQ(missing.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.message(), HasSubstr(where));
}

TEST_F(PrivacyStageTest, AnEdgeTakesTheClipNormFromTheCloudsTask) {
  PrivacyStage edge(stage_test::Config({"dp.enabled=true", "dp.noise_seed=7"}),
                    /*cloud=*/false);
  edge.OnOpen(round_, &m_);
  EXPECT_EQ(round_.clip_norm, 0);  // no task yet: no DP round
  EXPECT_FALSE(edge.enabled());

  EdgeTask task;
  task.cloud_round = 4;
  task.clip_norm = 0.3;
  task.noise_stddev = 0.05;
  ASSERT_TRUE(edge.BeginUpstreamTask(task).ok());
  edge.OnOpen(round_, &m_);
  EXPECT_EQ(round_.clip_norm, 0.3);
  EXPECT_EQ(m_.clip_norm, 0.3);
  UpdateHeader h;
  TensorMap d;
  d[BKey(kQ)] = torch::zeros({6, 2});
  d[BKey(kQ)][2][1] = 0.31f;
  EXPECT_THAT(Check(edge, "w", false, d, h).message(),
              HasSubstr("clip norm 0.3"));

  task.clip_norm = 0;
  Status s = edge.BeginUpstreamTask(task);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("cloud round 4"), HasSubstr("no clip norm")));
  EXPECT_FALSE(edge.enabled());
  edge.OnOpen(round_, &m_);
  EXPECT_EQ(round_.clip_norm, 0);
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
