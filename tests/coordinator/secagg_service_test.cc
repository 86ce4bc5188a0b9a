// Secure aggregation through the real service: workers written by hand
// against the gRPC stub run the protocol (security/secagg.h) with the
// coordinator as its server. The round's result must be exactly the mean of
// the masked updates the coordinator never saw in the clear, with a worker
// dropping out after key agreement and one that never agrees on keys.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "coordinator/checkpoint.h"
#include "security/secagg.h"
#include "security/secagg_update.h"
#include "tests/coordinator/service_fixture.h"

namespace fedpeft {
namespace coordinator {
namespace {

using ::testing::HasSubstr;
using testing_util::ServiceTest;

class SecAggServiceTest : public ServiceTest {
 protected:
  CoordinatorConfig SecAggConfig(int workers, std::vector<std::string> more) {
    std::vector<std::string> o = {
        "dp.enabled=true",
        "dp.clip_norm=1",
        "dp.noise_multiplier=0",  // the mean is then exact
        "secagg.enabled=true",
        "secagg.unmask_timeout_s=10",
        "federation.min_available=" + std::to_string(workers),
        "federation.min_workers=" + std::to_string(workers),
    };
    o.insert(o.end(), more.begin(), more.end());
    return Config(o);
  }

  // One step of the exchange, long-polling until the result is ready.
  grpc::Status Exchange(const std::string& session, uint64_t round,
                        proto::SecAggRequest::Step step,
                        const std::vector<uint8_t>& message,
                        std::string* result) {
    bool sent = message.empty();
    for (int i = 0; i < 100; ++i) {
      proto::SecAggRequest req;
      req.set_session_id(session);
      req.set_round(round);
      req.set_step(step);
      if (!sent) req.set_message(std::string(message.begin(), message.end()));
      req.set_wait_ms(500);
      proto::SecAggReply reply;
      grpc::ClientContext ctx;
      transport::SetTimeout(&ctx, std::chrono::seconds(5));
      grpc::Status s = stub_->SecAgg(&ctx, req, &reply);
      if (!s.ok()) return s;
      sent = true;
      if (reply.ready()) {
        *result = reply.message();
        return s;
      }
    }
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "never ready");
  }

  // A hand-written participant.
  struct Participant {
    std::string session;
    proto::Task task;
    std::unique_ptr<secagg::Client> client;
    secagg::RoutedShares routed;
  };

  // Rounds 0 and 1 for `p` (blocks until the server closes both).
  void AgreeOnKeys(Participant* p) {
    const proto::SecAggTask& t = p->task.secagg();
    secagg::Params params;
    params.num_clients = t.num_clients();
    params.threshold = t.threshold();
    params.vector_length = t.vector_length();
    params.session_id = t.session_id();
    auto client = secagg::Client::Create(t.index(), params);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    p->client = std::move(client).value();
    auto adv = p->client->Advertise();
    ASSERT_TRUE(adv.ok());
    std::string reply;
    grpc::Status s =
        Exchange(p->session, p->task.round(), proto::SecAggRequest::ADVERTISE,
                 adv->Serialize(), &reply);
    ASSERT_TRUE(s.ok()) << s.error_message();
    auto u1 = secagg::FromBytes<secagg::AdvertiseBroadcast>(reply);
    ASSERT_TRUE(u1.ok());
    auto shares = p->client->ShareKeys(*u1);
    ASSERT_TRUE(shares.ok()) << shares.status().ToString();
    s = Exchange(p->session, p->task.round(), proto::SecAggRequest::SHARE_KEYS,
                 shares->Serialize(), &reply);
    ASSERT_TRUE(s.ok()) << s.error_message();
    auto routed = secagg::FromBytes<secagg::RoutedShares>(reply);
    ASSERT_TRUE(routed.ok());
    p->routed = *routed;
  }

  // Round 2: masks `update` and uploads it as CODEC_MASKED tensors.
  grpc::Status UploadMasked(Participant* p, const TensorMap& update,
                            const TensorMap& global) {
    const proto::SecAggTask& t = p->task.secagg();
    std::vector<std::string> names(t.tensors().begin(), t.tensors().end());
    std::mt19937_64 rng(7);
    auto words = secagg::EncodeUpdateWords(update, global, names, t.scale(),
                                           /*unclipped=*/true, rng);
    EXPECT_TRUE(words.ok()) << words.status().ToString();
    auto masked = p->client->MaskedInput(*words, p->routed);
    EXPECT_TRUE(masked.ok()) << masked.status().ToString();
    transport::WireTensors wire;
    size_t offset = 0;
    for (const auto& name : names) {
      const torch::Tensor& like = global.at(name);
      wire[name] = transport::EncodeMaskedWords(
          like.sizes().vec(), masked->masked.data() + offset,
          static_cast<size_t>(like.numel()));
      offset += static_cast<size_t>(like.numel());
    }
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    proto::UploadReply reply;
    auto writer = stub_->UploadUpdate(&ctx, &reply);
    proto::UploadMessage m;
    proto::UpdateHeader* h = m.mutable_header();
    h->set_session_id(p->session);
    h->set_round(p->task.round());
    h->set_num_samples(10);
    h->set_train_loss(1.0);
    h->set_num_tensors(static_cast<uint32_t>(names.size()));
    h->set_masked_unclipped(masked->masked.back());
    writer->Write(m);
    const transport::Schema schema = transport::Schema::OfKeys(global);
    Status s = transport::WriteTensors(wire, 32 << 10, &schema,
                                       [&](const proto::TensorChunk& c) {
                                         proto::UploadMessage u;
                                         *u.mutable_chunk() = c;
                                         return writer->Write(u);
                                       });
    EXPECT_TRUE(s.ok()) << s.ToString();
    writer->WritesDone();
    return writer->Finish();
  }

  // Round 3: waits for the unmask request and answers it.
  void Unmask(Participant* p) {
    std::string reply;
    grpc::Status s = Exchange(p->session, p->task.round(),
                              proto::SecAggRequest::UNMASK, {}, &reply);
    ASSERT_TRUE(s.ok()) << s.error_message();
    auto request = secagg::FromBytes<secagg::UnmaskRequest>(reply);
    ASSERT_TRUE(request.ok());
    auto answer = p->client->Unmask(*request);
    ASSERT_TRUE(answer.ok()) << answer.status().ToString();
    s = Exchange(p->session, p->task.round(), proto::SecAggRequest::UNMASK,
                 answer->Serialize(), &reply);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // A small update of the masked tensors, different for every seed.
  static TensorMap SmallUpdate(const TensorMap& global,
                               const proto::SecAggTask& t, int seed) {
    torch::manual_seed(seed);
    TensorMap d;
    for (const auto& name : t.tensors()) {
      d[name] = 1e-3 * torch::randn_like(global.at(name));
    }
    return d;
  }
};

// Four workers agree on keys. One then sends a plain (unmasked) update,
// which is refused, so it drops out after key agreement; the other three
// upload masked updates. The round's result is exactly the mean of the
// three (no DP noise here), recovered with the dropped worker's masks
// removed. Protocol violations along the way are refused with a reason.
TEST_F(SecAggServiceTest, MeanOfMaskedUpdatesIsExactWithADropout) {
  Start(SecAggConfig(4, {}));
  std::vector<Participant> ps(4);
  const char* names[] = {"a", "b", "c", "d"};
  for (int i = 0; i < 4; ++i) ps[i].session = Register(names[i]);
  RunLoop();
  std::set<uint32_t> indices;
  for (auto& p : ps) {
    p.task = GetTask(p.session);
    ASSERT_EQ(p.task.kind(), proto::Task::TRAIN);
    ASSERT_TRUE(p.task.has_secagg());
    EXPECT_EQ(p.task.secagg().num_clients(), 4u);
    EXPECT_EQ(p.task.secagg().threshold(), 3u);  // 4 - floor(4/3)
    indices.insert(p.task.secagg().index());
  }
  EXPECT_EQ(indices.size(), 4u);
  const uint64_t round = ps[0].task.round();
  TensorMap global = Download(ps[0].session, round);
  // FFA-LoRA (the default with DP): only the B matrices are masked.
  for (const auto& name : ps[0].task.secagg().tensors()) {
    EXPECT_THAT(name, HasSubstr("lora_B"));
  }

  // Garbage, a message in another worker's name, another round: refused,
  // and the exchange goes on.
  std::string reply;
  grpc::Status s = Exchange(ps[0].session, round,
                            proto::SecAggRequest::ADVERTISE, {1, 2, 3}, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = Exchange(ps[0].session, round + 7, proto::SecAggRequest::ADVERTISE,
               {1, 2, 3}, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  std::vector<std::thread> threads;
  for (auto& p : ps) threads.emplace_back([&, pp = &p] { AgreeOnKeys(pp); });
  for (auto& t : threads) t.join();
  threads.clear();
  for (const auto& p : ps) ASSERT_NE(p.client, nullptr);

  // d sends its update in the clear: refused, d is out of the sum.
  TensorMap plain = SmallUpdate(global, ps[3].task.secagg(), 99);
  s = Upload(ps[3].session, round, plain);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("CODEC_MASKED"));

  std::vector<TensorMap> updates;
  for (int i = 0; i < 3; ++i) {
    updates.push_back(SmallUpdate(global, ps[i].task.secagg(), i + 1));
    s = UploadMasked(&ps[i], updates.back(), global);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, pp = &ps[i]] { Unmask(pp); });
  }
  for (auto& t : threads) t.join();
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();

  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_TRUE(history[0].aggregated);
  EXPECT_EQ(history[0].answered, 3);
  EXPECT_EQ(history[0].rejected, 1);
  EXPECT_EQ(history[0].secagg_workers, 3);
  auto ckpt = LoadLatestCheckpoint((dir_ / "ckpt").string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  const double unit = ps[0].task.secagg().scale();
  for (const auto& [name, t] : global) {
    torch::Tensor want = t.clone();
    if (name.find("lora_B") != std::string::npos) {
      want +=
          (updates[0].at(name) + updates[1].at(name) + updates[2].at(name)) / 3;
    }
    // Stochastic rounding moves each element by under one unit.
    EXPECT_LE((ckpt->global.at(name) - want).abs().max().item<double>(),
              unit + 1e-7)
        << name;
  }
}

// A worker that never takes part in key agreement is left out when the
// setup time is up; the others' sum is recovered without it.
TEST_F(SecAggServiceTest, AWorkerThatMissesKeyAgreementIsLeftOut) {
  Start(SecAggConfig(3, {"secagg.setup_timeout_s=1"}));
  std::vector<Participant> ps(3);
  const char* names[] = {"a", "b", "silent"};
  for (int i = 0; i < 3; ++i) ps[i].session = Register(names[i]);
  RunLoop();
  for (auto& p : ps) p.task = GetTask(p.session);
  const uint64_t round = ps[0].task.round();
  TensorMap global = Download(ps[0].session, round);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, pp = &ps[i]] { AgreeOnKeys(pp); });
  }
  for (auto& t : threads) t.join();
  threads.clear();
  // Too late for the silent one.
  std::string reply;
  auto adv = secagg::AdvertiseMsg{};
  adv.session_id = ps[2].task.secagg().session_id();
  adv.sender = ps[2].task.secagg().index();
  grpc::Status s =
      Exchange(ps[2].session, round, proto::SecAggRequest::ADVERTISE,
               adv.Serialize(), &reply);
  EXPECT_NE(s.error_code(), grpc::StatusCode::OK);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(UploadMasked(
                    &ps[i], SmallUpdate(global, ps[i].task.secagg(), i), global)
                    .ok());
  }
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, pp = &ps[i]] { Unmask(pp); });
  }
  for (auto& t : threads) t.join();
  loop_.join();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_TRUE(history[0].aggregated);
  EXPECT_EQ(history[0].answered, 2);
  EXPECT_EQ(history[0].secagg_workers, 2);
}

// Secure aggregation needs DP's clip norm and one vector layout (ranks
// zero-padded to the global one).
TEST(SecAggConfigTest, NeedsDpAndTheZeroPadMerge) {
  auto cfg =
      LoadCoordinatorConfig("", {"secagg.enabled=true", "tls.insecure=true"});
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("secagg.enabled"));
  EXPECT_THAT(cfg.status().message(), HasSubstr("dp.enabled"));
  cfg = LoadCoordinatorConfig(
      "", {"secagg.enabled=true", "dp.enabled=true",
           "heterogeneity.enabled=true", "heterogeneity.method=stack",
           "strategy.name=fedavg", "tls.insecure=true"});
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(),
              HasSubstr("secagg.enabled: secure aggregation sums one vector "
                        "layout"));
  cfg = LoadCoordinatorConfig(
      "", {"secagg.enabled=true", "dp.enabled=true",
           "heterogeneity.enabled=true", "tls.insecure=true"});
  EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
