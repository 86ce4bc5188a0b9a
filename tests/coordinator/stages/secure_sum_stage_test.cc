// The secure-sum stage without a server: real secagg::Clients (one per
// worker) run the protocol against the stage, the test playing the engine:
// it holds the mutex the stage waits on, calls Exchange() for each step,
// OnTick() to close the key-agreement steps, Flatten() + Receive() for the
// masked uploads and OnClose() for the unmasking, with the clients answering
// the unmask request from their own threads. The recovered mean is checked
// against the mean of the updates computed here in double.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "coordinator/stages/secure_sum.h"
#include "security/secagg.h"
#include "security/secagg_fixed_point.h"
#include "security/secagg_update.h"
#include "tests/coordinator/stages/stage_test_util.h"
#include "tests/security/seeded_random.h"

namespace fedpeft {
namespace coordinator {
namespace {

using stage_test::Join;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

class SecureSumStageTest : public ::testing::Test {
 protected:
  SecureSumStageTest()
      : registry_("fed", 30),
        template_(std::make_shared<const TensorMap>(stage_test::Adapter(2))) {
    round_.registry = &registry_;
    round_.changed = &cv_;
    round_.round = 3;
    round_.deadline_s = 20;
    round_.clip_norm = 1.0;
    round_.label = "round";
    options_.enabled = true;
    options_.setup_timeout_s = 10;
    options_.unmask_timeout_s = 10;
  }

  void Open(SecureSumStage* stage, std::vector<std::string> ids,
            std::vector<std::string> edges = {}) {
    for (const auto& id : ids) Join(&registry_, id);
    for (const auto& id : edges) Join(&registry_, id, /*edge=*/true);
    round_.selected = std::set<std::string>(ids.begin(), ids.end());
    round_.selected.insert(edges.begin(), edges.end());
    std::lock_guard<std::mutex> lock(mu_);
    stage->OnOpen(round_, &m_);
  }

  // One step from the test thread: hands over `message` (if any) and
  // polls once with an `until` already past.
  StatusOr<SecAggResult> Poll(SecureSumStage* stage, const std::string& id,
                              SecAggStep step, const std::string& message) {
    std::unique_lock<std::mutex> lock(mu_);
    return stage->Exchange(round_, lock, id, round_.round, step, message,
                           Clock::now());
  }

  void Tick(SecureSumStage* stage, Clock::time_point now = Clock::now()) {
    std::lock_guard<std::mutex> lock(mu_);
    stage->OnTick(round_, now);
  }

  void Close(SecureSumStage* stage, std::vector<Update>* updates) {
    std::unique_lock<std::mutex> lock(mu_);
    stage->OnClose(round_, lock, updates, &m_);
  }

  Registry registry_;
  std::shared_ptr<const TensorMap> template_;
  SecAggOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  RoundContext round_;
  RoundMetrics m_;
};

// A worker's side: its task, its protocol client, its update.
struct Worker {
  std::string id;
  SecAggTaskInfo task;
  std::unique_ptr<secagg::SeededRandom> rng;
  std::unique_ptr<secagg::Client> client;
  secagg::RoutedShares routed;
  TensorMap update;
  UpdateHeader header;
};

TEST_F(SecureSumStageTest, RecoversTheMeanOfThreeMaskedUpdates) {
  SecureSumStage stage(options_, template_);
  Open(&stage, {"a", "b", "c"});
  EXPECT_TRUE(round_.answered.empty());
  std::vector<std::string> names;
  for (const auto& [key, t] : *template_) names.push_back(key);  // sorted
  const double scale = 3 * 1.0 / (std::ldexp(1.0, 30) - 3);  // n·C/(2^30-n)

  std::vector<Worker> ws(3);
  const char* ids[] = {"a", "b", "c"};
  for (uint32_t i = 0; i < 3; ++i) {
    Worker& w = ws[i];
    w.id = ids[i];
    TaskInfo task;
    stage.FillTask(round_, *registry_.Find(w.id), &task);
    ASSERT_TRUE(task.secagg.has_value()) << w.id;
    w.task = *task.secagg;
    EXPECT_EQ(w.task.index, i);  // in the order of the sorted ids
    EXPECT_EQ(w.task.num_clients, 3u);
    EXPECT_EQ(w.task.threshold, 2u);       // 3 - floor(3/3)
    EXPECT_EQ(w.task.vector_length, 45u);  // 2·(2·5 + 6·2) + 1
    EXPECT_EQ(w.task.tensors, names);
    EXPECT_NEAR(w.task.scale, scale, 1e-6 * scale);
    EXPECT_EQ(stage.MaskedNames(w.id), names);
    secagg::Params params;
    params.num_clients = w.task.num_clients;
    params.threshold = w.task.threshold;
    params.vector_length = w.task.vector_length;
    params.session_id = w.task.session_id;
    w.rng = std::make_unique<secagg::SeededRandom>(100 + i);
    auto client = secagg::Client::Create(w.task.index, params, w.rng.get());
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    w.client = std::move(client).value();
  }
  EXPECT_EQ(ws[0].task.session_id, ws[2].task.session_id);

  // Round 0: keys advertised; the step closes once everyone is in.
  for (Worker& w : ws) {
    auto adv = w.client->Advertise();
    ASSERT_TRUE(adv.ok());
    auto r = Poll(&stage, w.id, SecAggStep::kAdvertise, secagg::ToBytes(*adv));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->ready);  // the others have not advertised yet
  }
  Tick(&stage);
  // Round 1: key shares, routed by the stage.
  for (Worker& w : ws) {
    auto r = Poll(&stage, w.id, SecAggStep::kAdvertise, "");
    ASSERT_TRUE(r.ok() && r->ready) << w.id;
    auto u1 = secagg::FromBytes<secagg::AdvertiseBroadcast>(r->message);
    ASSERT_TRUE(u1.ok());
    EXPECT_EQ(u1->clients.size(), 3u);
    auto shares = w.client->ShareKeys(*u1);
    ASSERT_TRUE(shares.ok()) << shares.status().ToString();
    r = Poll(&stage, w.id, SecAggStep::kShareKeys, secagg::ToBytes(*shares));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  Tick(&stage);
  for (Worker& w : ws) {
    auto r = Poll(&stage, w.id, SecAggStep::kShareKeys, "");
    ASSERT_TRUE(r.ok() && r->ready) << w.id;
    auto routed = secagg::FromBytes<secagg::RoutedShares>(r->message);
    ASSERT_TRUE(routed.ok());
    w.routed = *routed;
  }

  // Round 2: each update clipped to C = 1, fixed-point encoded and masked;
  // the stage sees only words.
  torch::manual_seed(21);
  std::vector<Update> updates;
  for (uint32_t i = 0; i < 3; ++i) {
    Worker& w = ws[i];
    for (const auto& name : names) {
      w.update[name] = 0.05 * torch::randn_like(template_->at(name));
    }
    std::mt19937_64 rng(7 + i);
    auto words = secagg::EncodeUpdateWords(w.update, *template_, names,
                                           w.task.scale, true, rng);
    ASSERT_TRUE(words.ok()) << words.status().ToString();
    auto masked = w.client->MaskedInput(*words, w.routed);
    ASSERT_TRUE(masked.ok()) << masked.status().ToString();
    TensorMap upload;  // as the decoder hands CODEC_MASKED tensors over
    size_t offset = 0;
    for (const auto& name : names) {
      const torch::Tensor& like = template_->at(name);
      upload[name] = torch::from_blob(masked->masked.data() + offset,
                                      like.sizes(), torch::kInt32)
                         .clone();
      offset += static_cast<size_t>(like.numel());
    }
    w.header.round = round_.round;
    w.header.num_samples = 10 * (i + 1);
    w.header.train_loss = i + 1;
    w.header.masked_unclipped = masked->masked.back();
    auto flat = SecureSumStage::Flatten(w.id, w.header, upload, names);
    ASSERT_TRUE(flat.ok()) << flat.status().ToString();
    EXPECT_EQ(*flat, masked->masked);  // session order, unclipped bit last
    std::lock_guard<std::mutex> lock(mu_);
    ASSERT_TRUE(stage.Accepting(w.id));
    Status s = stage.Receive(w.id, std::move(flat).value());
    ASSERT_TRUE(s.ok()) << s.ToString();
    round_.answered.insert(w.id);
    updates.push_back(Update{w.id, w.header, TensorMap{}, false, 0, false, {}});
  }

  // Round 3: OnClose asks the survivors to unmask and waits for them.
  std::vector<std::thread> threads;
  for (Worker& w : ws) {
    threads.emplace_back([this, &stage, &w] {
      std::unique_lock<std::mutex> lock(mu_);
      const auto give_up = Clock::now() + std::chrono::seconds(20);
      StatusOr<SecAggResult> r = SecAggResult{};
      while (Clock::now() < give_up) {
        r = stage.Exchange(round_, lock, w.id, round_.round,
                           SecAggStep::kUnmask, "",
                           Clock::now() + std::chrono::milliseconds(100));
        if (!r.ok() || r->ready) break;
      }
      ASSERT_TRUE(r.ok() && r->ready) << w.id << ": " << r.status().ToString();
      auto request = secagg::FromBytes<secagg::UnmaskRequest>(r->message);
      ASSERT_TRUE(request.ok());
      auto answer = w.client->Unmask(*request);
      ASSERT_TRUE(answer.ok()) << answer.status().ToString();
      r = stage.Exchange(round_, lock, w.id, round_.round, SecAggStep::kUnmask,
                         secagg::ToBytes(*answer), Clock::now());
      EXPECT_TRUE(r.ok() && r->ready) << w.id;
    });
  }
  Close(&stage, &updates);
  for (auto& t : threads) t.join();

  ASSERT_EQ(updates.size(), 1u);
  const Update& sum = updates[0];
  EXPECT_TRUE(sum.summed);
  EXPECT_EQ(sum.header.workers, 3u);
  EXPECT_EQ(sum.header.unclipped, 3);  // every bit summed under the masks
  EXPECT_EQ(sum.header.num_samples, 60u);
  EXPECT_DOUBLE_EQ(sum.header.train_loss, (10 * 1 + 20 * 2 + 30 * 3) / 60.0);
  std::vector<std::string> members;
  for (const auto& [id, h] : sum.members) members.push_back(id);
  EXPECT_THAT(members, ElementsAre("a", "b", "c"));
  EXPECT_EQ(m_.secagg_workers, 3);
  ASSERT_EQ(sum.delta.size(), names.size());
  for (const auto& name : names) {
    torch::Tensor want =
        torch::zeros_like(template_->at(name), torch::kFloat64);
    for (const Worker& w : ws) want += w.update.at(name).to(torch::kFloat64);
    want /= 3;
    // Each word rounds its value to within one unit; the float32 sum adds
    // its own rounding (2^-23 relative).
    const double tol =
        scale + std::ldexp(3 * want.abs().max().item<double>(), -23);
    EXPECT_LE(stage_test::MaxAbsDiff(sum.delta.at(name), want), tol) << name;
  }
}

TEST_F(SecureSumStageTest, ASingleWorkerIsRejectedAndNothingIsMasked) {
  SecureSumStage stage(options_, template_);
  Open(&stage, {"alone"});
  // Its update alone would be the sum: it sits the round out.
  EXPECT_EQ(round_.answered, std::set<std::string>{"alone"});
  EXPECT_EQ(round_.rejected, 1);
  EXPECT_FALSE(stage.Accepting("alone"));
  auto r = Poll(&stage, "alone", SecAggStep::kAdvertise, "");
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);

  std::vector<Update> updates;
  Close(&stage, &updates);
  EXPECT_TRUE(updates.empty());
  EXPECT_EQ(m_.secagg_workers, 0);
}

TEST_F(SecureSumStageTest, ARoundWithoutAClipNormRejectsItsWorkers) {
  // The clip norm bounds every coordinate, which sizes the fixed point.
  round_.clip_norm = 0;
  SecureSumStage stage(options_, template_);
  Open(&stage, {"a", "b", "c"});
  EXPECT_EQ(round_.rejected, 3);
  EXPECT_EQ(round_.answered, (std::set<std::string>{"a", "b", "c"}));
  for (const char* id : {"a", "b", "c"}) EXPECT_FALSE(stage.Accepting(id));
}

TEST_F(SecureSumStageTest, AnEdgeIsNeverMasked) {
  SecureSumStage stage(options_, template_);
  Open(&stage, {"a", "b"}, /*edges=*/{"edge"});
  EXPECT_TRUE(round_.answered.empty());
  TaskInfo edge, worker;
  stage.FillTask(round_, *registry_.Find("edge"), &edge);
  stage.FillTask(round_, *registry_.Find("a"), &worker);
  EXPECT_FALSE(edge.secagg.has_value());
  EXPECT_FALSE(stage.MaskedNames("edge").has_value());
  EXPECT_FALSE(stage.Accepting("edge"));
  ASSERT_TRUE(worker.secagg.has_value());
  EXPECT_EQ(worker.secagg->num_clients, 2u);  // the two workers only
  auto r = Poll(&stage, "edge", SecAggStep::kAdvertise, "");
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("is not part of it"));

  // The round closes before the workers agreed on keys: no sum, and the
  // edge's plain update goes on untouched.
  Update from_edge;
  from_edge.worker_id = "edge";
  from_edge.edge = true;
  from_edge.delta = stage_test::Adapter(2, 6, 5, 0.5f);
  std::vector<Update> updates = {from_edge};
  Close(&stage, &updates);
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].worker_id, "edge");
  EXPECT_FALSE(updates[0].summed);
  EXPECT_EQ(m_.secagg_workers, 0);
}

TEST_F(SecureSumStageTest, AWorkerThatMissesKeyAgreementIsLeftOut) {
  // Each setup step may take min(setup_timeout_s, deadline / 4) = 5 s.
  SecureSumStage stage(options_, template_);
  Open(&stage, {"a", "b", "late"});
  std::vector<std::unique_ptr<secagg::SeededRandom>> rngs;
  for (const char* id : {"a", "b"}) {
    TaskInfo task;
    stage.FillTask(round_, *registry_.Find(id), &task);
    ASSERT_TRUE(task.secagg.has_value());
    secagg::Params params;
    params.num_clients = task.secagg->num_clients;
    params.vector_length = task.secagg->vector_length;
    params.session_id = task.secagg->session_id;
    rngs.push_back(std::make_unique<secagg::SeededRandom>(rngs.size() + 1));
    auto client =
        secagg::Client::Create(task.secagg->index, params, rngs.back().get());
    ASSERT_TRUE(client.ok());
    auto adv = (*client)->Advertise();
    ASSERT_TRUE(adv.ok());
    ASSERT_TRUE(
        Poll(&stage, id, SecAggStep::kAdvertise, secagg::ToBytes(*adv)).ok());
  }
  Tick(&stage);  // within the setup time, one missing: still open
  EXPECT_TRUE(round_.answered.empty());
  Tick(&stage, Clock::now() + std::chrono::seconds(6));  // past it
  EXPECT_EQ(round_.answered, std::set<std::string>{"late"});
  EXPECT_EQ(round_.rejected, 1);
  auto late = Poll(&stage, "late", SecAggStep::kAdvertise, "");
  EXPECT_THAT(late.status().message(), HasSubstr("advertised no keys in time"));
  // The other two go on with a U1 of two (the threshold).
  auto r = Poll(&stage, "a", SecAggStep::kAdvertise, "");
  ASSERT_TRUE(r.ok() && r->ready);
  auto u1 = secagg::FromBytes<secagg::AdvertiseBroadcast>(r->message);
  ASSERT_TRUE(u1.ok());
  std::vector<uint32_t> senders;
  for (const auto& c : u1->clients) senders.push_back(c.sender);
  EXPECT_THAT(senders, ElementsAreArray({0u, 1u}));
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
