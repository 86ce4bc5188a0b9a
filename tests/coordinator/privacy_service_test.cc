// The privacy promises of a running coordinator, over real gRPC: the
// sampling rate is the population's at selection, Poisson sampling is what
// is accounted, and under DP nothing about a worker's data but its clipped
// update is kept or logged.
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "security/rdp_accountant.h"
#include "tests/coordinator/service_fixture.h"

namespace fedpeft {
namespace coordinator {
namespace testing_util {
namespace {

using ::testing::HasSubstr;

// Uploads an update of zeros but `value` on every lora_B for `session`.
grpc::Status AnswerRound(ServiceTest* t, const std::string& session,
                         const proto::Task& task, float value = 1e-4f,
                         double loss = 1.0) {
  TensorMap d = Zeros(t->Download(session, task.round()));
  for (auto it = d.begin(); it != d.end();) {
    // FFA-LoRA (DP's default): lora_A is fixed, so it is not sent.
    if (task.train().train_b_only() &&
        it->first.find("lora_A") != std::string::npos) {
      it = d.erase(it);
      continue;
    }
    if (it->first.find("lora_B") != std::string::npos) it->second.fill_(value);
    ++it;
  }
  return t->Upload(session, task.round(), d, {}, -1, loss);
}

// Workers that register while a round runs had no chance to be selected:
// q is selected / alive at selection (2 of 2), not at the round's end (2 of
// 4, which would under-report epsilon).
TEST_F(ServiceTest, DpSamplingRateIsThePopulationAtSelection) {
  Start(Config({"federation.rounds=1", "dp.enabled=true", "dp.clip_norm=0.5",
                "dp.noise_multiplier=1", "dp.delta=1e-3"}));
  std::vector<std::string> s = {Register("a"), Register("b")};
  RunLoop();
  std::vector<proto::Task> tasks = {GetTask(s[0]), GetTask(s[1])};
  ASSERT_EQ(tasks[0].kind(), proto::Task::TRAIN);
  ASSERT_EQ(tasks[1].kind(), proto::Task::TRAIN);
  // Two more join mid-round.
  Register("c");
  Register("d");
  for (int i = 0; i < 2; ++i) {
    grpc::Status st = AnswerRound(this, s[i], tasks[i]);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_DOUBLE_EQ(history[0].sampling_rate, 1.0);
  EXPECT_NEAR(history[0].epsilon,
              privacy::ComputeEpsilon(1.0, 1.0, 1, 1e-3).epsilon, 1e-9);
  // Central placement: the cloud saw the clipped updates themselves.
  EXPECT_TRUE(std::isinf(history[0].epsilon_cloud));
}

// Runs a federation of workers a, b, c, d under `overrides`, answering
// whatever each is asked until it ends; returns the (round, worker) of
// every training task.
std::set<std::pair<uint64_t, std::string>> RunFourWorkers(
    ServiceTest* t, const std::vector<std::string>& overrides) {
  t->Start(t->Config(overrides));
  std::map<std::string, std::string> sessions;
  for (const char* id : {"a", "b", "c", "d"}) sessions[id] = t->Register(id);
  t->RunLoop();
  std::mutex mu;
  std::set<std::pair<uint64_t, std::string>> tasks;
  std::vector<std::thread> workers;
  for (const auto& [id, session] : sessions) {
    workers.emplace_back([&, id = id, session = session] {
      while (true) {
        proto::Task task = t->GetTask(session);
        if (task.kind() != proto::Task::TRAIN) return;
        {
          std::lock_guard<std::mutex> lock(mu);
          tasks.emplace(task.round(), id);
        }
        EXPECT_TRUE(AnswerRound(t, session, task).ok());
      }
    });
  }
  t->Join();
  for (auto& w : workers) w.join();
  return tasks;
}

// federation.sampling poisson: each worker independently with probability
// `fraction`, and the accountant composes exactly that rate every round.
TEST_F(ServiceTest, PoissonSamplingIsAccountedAtItsRate) {
  // dp.noise_seed: a reproducible run, whose selection is federation.seed's.
  RunFourWorkers(this,
                 {"federation.rounds=6", "federation.sampling=poisson",
                  "federation.fraction=0.5", "federation.min_available=4",
                  "federation.on_quorum_miss=skip", "dp.enabled=true",
                  "dp.clip_norm=0.5", "dp.noise_multiplier=1", "dp.delta=1e-3",
                  "dp.noise_seed=7", "federation.round_deadline_s=20"});
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 6u);
  std::set<int> sizes;
  int accounted = 0;
  for (const RoundMetrics& m : history) {
    sizes.insert(m.selected);
    if (m.answered == 0) continue;
    ++accounted;
    EXPECT_DOUBLE_EQ(m.sampling_rate, 0.5) << "round " << m.round;
  }
  // The sample size varies (seeded: it does over these 6 rounds).
  EXPECT_GT(sizes.size(), 1u);
  ASSERT_GT(accounted, 0);
  EXPECT_NEAR(history.back().epsilon,
              privacy::ComputeEpsilon(0.5, 1.0, accounted, 1e-3).epsilon, 1e-9);
}

// Sampling amplifies privacy only if nobody can predict who is selected:
// under DP the selection comes from OpenSSL's DRBG, so two federations with
// the same federation.seed select differently (the chance that 6 rounds of
// Poisson selection over 4 workers coincide is 16^-6, 6e-8); with
// dp.noise_seed (experiments) it is federation.seed's, and repeats.
TEST_F(ServiceTest, DpSelectionIsUnpredictableUnlessSeeded) {
  auto run = [this](int n, const std::string& noise_seed) {
    std::vector<std::string> o = {
        "federation.rounds=6",
        "federation.sampling=poisson",
        "federation.fraction=0.5",
        "federation.min_available=4",
        "federation.on_quorum_miss=skip",
        "federation.seed=3",
        "dp.enabled=true",
        "dp.clip_norm=0.5",
        "dp.noise_multiplier=1",
        "dp.delta=1e-3",
        "dp.noise_seed=" + noise_seed,
        "checkpoint.dir=" + (dir_ / ("ckpt" + std::to_string(n))).string()};
    auto tasks = RunFourWorkers(this, o);
    EXPECT_TRUE(run_status_.ok()) << run_status_.ToString();
    Reset();
    return tasks;
  };
  const auto secret1 = run(1, "0");
  const auto secret2 = run(2, "0");
  EXPECT_NE(secret1, secret2);
  const auto seeded1 = run(3, "7");
  const auto seeded2 = run(4, "7");
  EXPECT_EQ(seeded1, seeded2);
  EXPECT_FALSE(seeded1.empty());
}

// Under DP (dp.report_worker_metrics false, the default) the task asks for
// no losses, and whatever a worker reports anyway is neither kept nor
// logged: the round has no train loss.
TEST_F(ServiceTest, DpWithholdsWorkerMetricsByDefault) {
  Start(Config({"federation.rounds=1", "dp.enabled=true", "dp.clip_norm=0.5",
                "dp.noise_multiplier=0"}));
  std::vector<std::string> s = {Register("a"), Register("b")};
  RunLoop();
  for (const std::string& session : s) {
    proto::Task task = GetTask(session);
    ASSERT_EQ(task.kind(), proto::Task::TRAIN);
    EXPECT_TRUE(task.train().withhold_metrics());
    grpc::Status st = AnswerRound(this, session, task, 1e-4f, /*loss=*/2.5);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_TRUE(history[0].aggregated);
  EXPECT_TRUE(std::isnan(history[0].train_loss));
  EXPECT_TRUE(std::isnan(history[0].eval_loss));
}

// With dp.report_worker_metrics the losses travel (and are the user's
// choice to leak).
TEST_F(ServiceTest, DpReportsWorkerMetricsWhenAskedTo) {
  Start(Config({"federation.rounds=1", "dp.enabled=true", "dp.clip_norm=0.5",
                "dp.noise_multiplier=0", "dp.report_worker_metrics=true"}));
  std::vector<std::string> s = {Register("a"), Register("b")};
  RunLoop();
  for (const std::string& session : s) {
    proto::Task task = GetTask(session);
    ASSERT_EQ(task.kind(), proto::Task::TRAIN);
    EXPECT_FALSE(task.train().withhold_metrics());
    ASSERT_TRUE(AnswerRound(this, session, task, 1e-4f, 2.5).ok());
  }
  loop_.join();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_DOUBLE_EQ(history[0].train_loss, 2.5);
}

}  // namespace
}  // namespace testing_util
}  // namespace coordinator
}  // namespace fedpeft
