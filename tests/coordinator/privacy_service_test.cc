// The privacy promises of a running coordinator, over real gRPC: the
// sampling rate is the population's at selection, Poisson sampling is what
// is accounted, and under DP nothing about a worker's data but its clipped
// update is kept or logged.
#include <cmath>

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

// federation.sampling poisson: each worker independently with probability
// `fraction`, and the accountant composes exactly that rate every round.
TEST_F(ServiceTest, PoissonSamplingIsAccountedAtItsRate) {
  Start(Config({"federation.rounds=6", "federation.sampling=poisson",
                "federation.fraction=0.5", "federation.min_available=4",
                "federation.on_quorum_miss=skip", "dp.enabled=true",
                "dp.clip_norm=0.5", "dp.noise_multiplier=1", "dp.delta=1e-3",
                "federation.round_deadline_s=20"}));
  std::vector<std::string> s = {Register("a"), Register("b"), Register("c"),
                                Register("d")};
  RunLoop();
  // Answer whatever each worker is asked until the federation ends.
  std::vector<std::thread> workers;
  for (const std::string& session : s) {
    workers.emplace_back([this, session] {
      while (true) {
        proto::Task task = GetTask(session);
        if (task.kind() != proto::Task::TRAIN) return;
        EXPECT_TRUE(AnswerRound(this, session, task).ok());
      }
    });
  }
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  for (auto& w : workers) w.join();
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
