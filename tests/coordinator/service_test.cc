// The coordinator behind a real gRPC server on 127.0.0.1 (port 0), driven by
// hand-written clients: registration, tasks, downloads, and every kind of
// bad upload, each rejected with a reason while the round completes.
#include "coordinator/service.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "coordinator/checkpoint.h"
#include "coordinator/coordinator.h"
#include "coordinator/edge.h"
#include "proto/grpc_util.h"
#include "proto/tensor_codec.h"
#include "security/dp.h"
#include "security/rdp_accountant.h"
#include "security/tls.h"
#include "serve/serve_config.h"
#include "tests/coordinator/service_fixture.h"
#include "worker/federation_client.h"
#include "worker/train_config.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace coordinator {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using testing_util::ServiceTest;
using testing_util::Zeros;

// The workers of `sessions` answer every round with small (unclipped)
// updates until the coordinator says SHUTDOWN; returns the rounds trained.
int AnswerEveryRound(ServiceTest* t, const std::vector<std::string>& sessions) {
  int rounds = 0;
  while (true) {
    std::vector<proto::Task> tasks;
    for (const auto& s : sessions) tasks.push_back(t->GetTask(s));
    if (tasks[0].kind() != proto::Task::TRAIN) return rounds;
    TensorMap global = t->Download(sessions[0], tasks[0].round());
    for (size_t i = 0; i < sessions.size(); ++i) {
      EXPECT_EQ(tasks[i].kind(), proto::Task::TRAIN);
      TensorMap d = Zeros(global);
      for (auto it = d.begin(); it != d.end();) {
        // FFA-LoRA (DP's default): lora_A is fixed, so it is not sent.
        if (tasks[i].train().train_b_only() &&
            it->first.find("lora_A") != std::string::npos) {
          it = d.erase(it);
          continue;
        }
        if (it->first.find("lora_B") != std::string::npos) {
          it->second.fill_(1e-4);
        }
        ++it;
      }
      grpc::Status st = t->Upload(sessions[i], tasks[i].round(), d);
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
    ++rounds;
  }
}

TEST_F(ServiceTest, HostileUploadsAreRejectedAndTheRoundCompletes) {
  Start(Config());
  std::string good = Register("good");
  std::string bad = Register("bad");
  RunLoop();
  proto::Task tg = GetTask(good);
  proto::Task tb = GetTask(bad);
  ASSERT_EQ(tg.kind(), proto::Task::TRAIN);
  ASSERT_EQ(tb.kind(), proto::Task::TRAIN);
  const uint64_t round = tg.round();
  TensorMap global = Download(bad, round);
  ASSERT_FALSE(global.empty());

  // Unknown session.
  grpc::Status s = Upload("no-such-session", round, Zeros(global));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  // Stale round.
  s = Upload(bad, round + 7, Zeros(global));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("stale upload"));
  // Malformed stream: data before any header.
  proto::TensorChunk orphan;
  orphan.mutable_data()->set_data("xxxx");
  {
    // The bad worker answered with a malformed upload: it counts as its
    // answer, so further uploads from it are duplicates.
    s = Upload(bad, round, {}, {orphan}, 1);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    s = Upload(bad, round, Zeros(global));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(s.error_message(), HasSubstr("duplicate"));
  }
  // The good worker's round still completes.
  TensorMap delta = Zeros(global);
  delta.begin()->second.fill_(0.5);
  s = Upload(good, round, delta);
  EXPECT_TRUE(s.ok()) << s.error_message();
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_TRUE(history[0].aggregated);
  EXPECT_EQ(history[0].answered, 1);
  EXPECT_EQ(history[0].rejected, 1);
  EXPECT_EQ(history[0].dropped, 1);
  // The aggregate is the good worker's update (fedavg of one).
  auto ckpt = LoadLatestCheckpoint((dir_ / "ckpt").string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  const std::string key = delta.begin()->first;
  EXPECT_TRUE(torch::allclose(ckpt->global.at(key), global.at(key) + 0.5));
}

// One bad upload per case, each from its own worker; one good worker makes
// the quorum.
TEST_F(ServiceTest, EachBadUploadKindNamesItsReason) {
  const int kBad = 5;
  Start(Config({"federation.min_available=6", "federation.min_workers=6",
                "federation.quorum=0.1"}));
  std::string good = Register("good");
  std::vector<std::string> bad;
  for (int i = 0; i < kBad; ++i)
    bad.push_back(Register("bad" + std::to_string(i)));
  RunLoop();
  uint64_t round = GetTask(good).round();
  for (const auto& b : bad) ASSERT_EQ(GetTask(b).kind(), proto::Task::TRAIN);
  TensorMap global = Download(good, round);
  const std::string key = global.begin()->first;

  // NaN.
  TensorMap nan = Zeros(global);
  nan[key][0][0] = std::nan("");
  grpc::Status s = Upload(bad[0], round, nan);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr(key));
  // Wrong shape.
  TensorMap shape = Zeros(global);
  shape[key] = torch::zeros({3, 3});
  s = Upload(bad[1], round, shape);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr(key));
  EXPECT_THAT(s.error_message(), HasSubstr("shape"));
  // Unknown tensor name.
  TensorMap extra = Zeros(global);
  extra["base_model.model.model.layers.0.self_attn.evil.lora_A.weight"] =
      torch::zeros({2, 2});
  s = Upload(bad[2], round, extra);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("evil"));
  // Oversized: a header claiming far more bytes than limits.max_update_mb.
  proto::TensorChunk huge;
  huge.mutable_header()->set_name(key);
  huge.mutable_header()->set_dtype(proto::DTYPE_F32);
  huge.mutable_header()->add_shape(1 << 20);
  huge.mutable_header()->add_shape(1 << 10);
  huge.mutable_header()->set_encoded_bytes(uint64_t{4} << 30);
  s = Upload(bad[3], round, {}, {huge}, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A truncated stream: fewer tensors than the header announced. (Fewer
  // tensors as such are fine: what a worker did not train stays home.)
  TensorMap partial = Zeros(global);
  partial.erase(partial.begin());
  s = Upload(bad[4], round, partial, {}, static_cast<int>(global.size()));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("announced"));

  s = Upload(good, round, Zeros(global));
  EXPECT_TRUE(s.ok()) << s.error_message();
  loop_.join();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_TRUE(history[0].aggregated);
  EXPECT_EQ(history[0].answered, 1);
  EXPECT_EQ(history[0].rejected, kBad);
}

// With DP, the task carries the clip norm and the codec, FFA-LoRA is on by
// default, an update over the clip norm is refused (not rescaled), and the
// round's result is the mean of the accepted clipped updates (here without
// noise, z = 0, so it is exact).
TEST_F(ServiceTest, DpRefusesUpdatesOverTheClipNorm) {
  Start(Config({"dp.enabled=true", "dp.clip_norm=0.5", "dp.noise_multiplier=0",
                "compression.bits=4", "compression.block_size=64"}));
  std::string good = Register("good");
  std::string over = Register("over");
  RunLoop();
  proto::Task tg = GetTask(good);
  ASSERT_EQ(tg.kind(), proto::Task::TRAIN);
  ASSERT_EQ(GetTask(over).kind(), proto::Task::TRAIN);
  EXPECT_DOUBLE_EQ(tg.train().clip_norm(), 0.5);
  EXPECT_EQ(tg.train().upload_bits(), 4u);
  EXPECT_EQ(tg.train().block_size(), 64u);
  EXPECT_TRUE(tg.train().train_b_only());
  const uint64_t round = tg.round();
  TensorMap global = Download(good, round);
  std::string key_b;
  for (const auto& kv : global) {
    if (kv.first.find("lora_B") != std::string::npos) key_b = kv.first;
  }
  ASSERT_FALSE(key_b.empty());

  // FFA-LoRA (DP's default) fixes lora_A: uploads carry only lora_B.
  auto only_b = [&global]() {
    TensorMap d;
    for (const auto& [key, t] : global) {
      if (key.find("lora_B") != std::string::npos) {
        d[key] = torch::zeros_like(t);
      }
    }
    return d;
  };
  TensorMap big = only_b();
  big[key_b].fill_(1.0);  // norm sqrt(numel) >> 0.5
  grpc::Status s = Upload(over, round, big);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("exceeds the round's clip norm"));

  TensorMap small = only_b();
  small[key_b].fill_(0.01);
  s = Upload(good, round, small);
  EXPECT_TRUE(s.ok()) << s.error_message();
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0].answered, 1);
  EXPECT_EQ(history[0].rejected, 1);
  EXPECT_DOUBLE_EQ(history[0].clip_norm, 0.5);
  auto ckpt = LoadLatestCheckpoint((dir_ / "ckpt").string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_TRUE(torch::allclose(ckpt->global.at(key_b), global.at(key_b) + 0.01));
  ASSERT_TRUE(ckpt->extra.contains("dp"));
  EXPECT_EQ(ckpt->extra["dp"]["rdp"].size(), privacy::DefaultOrders().size());
}

// dp.target_epsilon with budget calibrate: z is set before round 1 so that
// the configured rounds spend exactly the target.
TEST_F(ServiceTest, DpCalibratesTheNoiseToTheTargetEpsilon) {
  Start(Config({"federation.rounds=2", "dp.enabled=true", "dp.clip_norm=0.5",
                "dp.target_epsilon=20", "dp.delta=1e-3", "dp.noise_seed=3"}));
  std::vector<std::string> s = {Register("a"), Register("b")};
  RunLoop();
  EXPECT_EQ(AnswerEveryRound(this, s), 2);
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 2u);
  auto z = privacy::NoiseMultiplierFor(20, 1.0, 2, 1e-3);
  ASSERT_TRUE(z.ok());
  EXPECT_DOUBLE_EQ(history[1].noise_multiplier, *z);
  EXPECT_LE(history[1].epsilon, 20.0);
  EXPECT_GT(history[1].epsilon, 19.9);
  EXPECT_DOUBLE_EQ(history[1].delta, 1e-3);
}

// budget stop: the federation ends before a round that would overspend;
// adaptive clipping shrinks C when (nearly) every update is unclipped.
TEST_F(ServiceTest, DpStopsWhenTheBudgetIsSpentAndAdaptsTheClipNorm) {
  const double z = 2.0;
  const double eps1 = privacy::ComputeEpsilon(1.0, z, 1, 1e-3).epsilon;
  const double eps2 = privacy::ComputeEpsilon(1.0, z, 2, 1e-3).epsilon;
  const double eps3 = privacy::ComputeEpsilon(1.0, z, 3, 1e-3).epsilon;
  ASSERT_LT(eps2, eps3);
  Start(Config({"federation.rounds=5", "dp.enabled=true", "dp.clip_norm=0.5",
                "dp.noise_multiplier=2", "dp.delta=1e-3", "dp.budget=stop",
                "dp.target_epsilon=" + std::to_string((eps2 + eps3) / 2),
                "dp.adaptive_clipping=true", "dp.count_stddev=1.5",
                "dp.noise_seed=5"}));
  std::vector<std::string> s = {Register("a"), Register("b")};
  RunLoop();
  EXPECT_EQ(AnswerEveryRound(this, s), 2);
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 2u);
  EXPECT_NEAR(history[0].epsilon, eps1, 1e-9 * eps1);
  EXPECT_NEAR(history[1].epsilon, eps2, 1e-9 * eps2);
  // The update's share of z once the count is paid for.
  auto zu = privacy::UpdateNoiseMultiplier(z, 1.5);
  ASSERT_TRUE(zu.ok());
  EXPECT_DOUBLE_EQ(history[0].noise_multiplier, *zu);
  // Both updates were far below C; the noised unclipped fraction (seeded)
  // is above the target quantile 0.5, so C shrank by exp(-0.2 (b - 0.5)).
  EXPECT_DOUBLE_EQ(history[0].clip_norm, 0.5);
  ASSERT_TRUE(std::isfinite(history[0].unclipped_fraction));
  EXPECT_NEAR(history[1].clip_norm,
              0.5 * std::exp(-0.2 * (history[0].unclipped_fraction - 0.5)),
              1e-12);
}

// The privacy spent survives a restart: a coordinator resumed from the
// round-1 checkpoint goes on composing from there (and keeps its clip norm).
TEST_F(ServiceTest, DpAccountingResumesFromTheCheckpoint) {
  const std::vector<std::string> dp = {
      "dp.enabled=true", "dp.clip_norm=0.5",          "dp.noise_multiplier=1.5",
      "dp.delta=1e-4",   "dp.adaptive_clipping=true", "dp.count_stddev=1"};
  std::vector<std::string> first = dp;
  first.push_back("federation.rounds=1");
  Start(Config(first));
  RunLoop();
  EXPECT_EQ(AnswerEveryRound(this, {Register("a"), Register("b")}), 1);
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  const double c1 = coordinator_->History()[0].clip_norm;
  server_.reset();
  coordinator_.reset();

  std::vector<std::string> second = dp;
  second.push_back("federation.rounds=2");
  Start(Config(second));
  RunLoop();
  EXPECT_EQ(AnswerEveryRound(this, {Register("a"), Register("b")}), 1);
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0].round, 2);
  auto zu = privacy::UpdateNoiseMultiplier(1.5, 1.0);
  ASSERT_TRUE(zu.ok());
  EXPECT_DOUBLE_EQ(history[0].noise_multiplier, *zu);
  const double want = privacy::ComputeEpsilon(1.0, 1.5, 2, 1e-4).epsilon;
  EXPECT_NEAR(history[0].epsilon, want, 1e-9 * want);
  EXPECT_NE(history[0].clip_norm, c1);  // the adapted C of round 2
}

// The metrics file keeps step with the checkpoints: a coordinator killed
// after its round-1 checkpoint, before the line reached the file (here with
// a torn line instead), still ends with one line per round; a clean resume
// repeats none.
TEST_F(ServiceTest, MetricsFileKeepsOneLinePerRoundAcrossACrash) {
  const fs::path metrics = dir_ / "metrics.jsonl";
  auto lines = [&] {
    std::vector<std::string> out;
    std::ifstream in(metrics);
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  };
  // A federation of `rounds` in all (a resumed one runs the rest): one
  // round answered by two workers, then the coordinator stopped.
  auto run = [&](const std::string& rounds) {
    Start(Config({"federation.rounds=" + rounds}));
    RunLoop();
    EXPECT_EQ(AnswerEveryRound(this, {Register("a"), Register("b")}), 1);
    Join();
    EXPECT_TRUE(run_status_.ok()) << run_status_.ToString();
    server_.reset();
    coordinator_.reset();
  };
  run("1");
  const std::vector<std::string> round1 = lines();
  ASSERT_EQ(round1.size(), 1u);

  std::ofstream(metrics, std::ios::trunc) << R"({"round":1,"attem)";
  run("2");
  std::vector<std::string> both = lines();
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[0], round1[0]);  // the checkpoint's copy, byte for byte
  EXPECT_EQ(nlohmann::json::parse(both[1]).at("round"), 2);

  Start(Config({"federation.rounds=2"}));  // nothing left to run
  RunLoop();
  Join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  EXPECT_EQ(lines(), both);
}

TEST_F(ServiceTest, LateUploadAfterTheRoundClosedIsRejected) {
  Start(Config({"federation.rounds=2", "federation.min_available=1",
                "federation.min_workers=1"}));
  std::string w = Register("w");
  RunLoop();
  proto::Task t1 = GetTask(w);
  TensorMap global = Download(w, t1.round());
  ASSERT_TRUE(Upload(w, t1.round(), Zeros(global)).ok());
  proto::Task t2 = GetTask(w);
  ASSERT_EQ(t2.round(), t1.round() + 1);
  // Replay of round 1's upload during round 2.
  grpc::Status s = Upload(w, t1.round(), Zeros(global));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("stale"));
  ASSERT_TRUE(Upload(w, t2.round(), Zeros(global)).ok());
  EXPECT_EQ(GetTask(w).kind(), proto::Task::SHUTDOWN);
  loop_.join();
  EXPECT_EQ(coordinator_->completed_rounds(), 2);
}

TEST_F(ServiceTest, QuorumMissSkipsAtTheDeadline) {
  Start(Config({"federation.rounds=1", "federation.round_deadline_s=1",
                "federation.quorum=1.0", "federation.on_quorum_miss=skip"}));
  std::string a = Register("a");
  std::string b = Register("b");
  RunLoop();
  proto::Task ta = GetTask(a);
  GetTask(b);
  TensorMap global = Download(a, ta.round());
  ASSERT_TRUE(Upload(a, ta.round(), Zeros(global)).ok());
  // b never answers (but stays alive): the deadline closes the round, one of
  // two answers misses a quorum of 1.0, the round is skipped, not hung.
  loop_.join();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_FALSE(history[0].aggregated);
  EXPECT_EQ(history[0].answered, 1);
  EXPECT_EQ(history[0].dropped, 1);
}

TEST_F(ServiceTest, StatusReportsWorkersAndRound) {
  Start(Config());
  Register("a");
  Register("b");
  RunLoop();
  proto::StatusRequest req;
  proto::StatusReply reply;
  for (int i = 0; i < 50 && reply.state() != "collect"; ++i) {
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(5));
    ASSERT_TRUE(stub_->GetStatus(&ctx, req, &reply).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(reply.state(), "collect");
  EXPECT_EQ(reply.round(), 1u);
  EXPECT_EQ(reply.workers_size(), 2);
  EXPECT_EQ(reply.selected(), 2u);
  EXPECT_EQ(reply.strategy(), "fedavg");
}

// A worker's decoded update must respect the clip norm exactly, for every
// encoding: clipping in float32 can leave the norm a few ulps above C, and
// rounding up a quantized value more (regression: at 32 bits the shrink
// step used to round to 1.0f and the worker gave up).
TEST(EncodeUpdateTest, DecodedNormNeverExceedsTheClipNorm) {
  std::mt19937_64 rng(11);
  for (int bits : {32, 16, 8, 4, 2}) {
    for (int trial = 0; trial < 20; ++trial) {
      torch::manual_seed(trial);
      TensorMap update = {{"a", torch::randn({64, 8})},
                          {"b", torch::randn({172, 8}) * 3}};
      const double clip = 2.0;
      privacy::ClipToNorm(&update, clip);
      auto e = worker::EncodeUpdate(update, {bits, 256}, clip, &rng);
      ASSERT_TRUE(e.ok()) << bits << " bits: " << e.status().ToString();
      EXPECT_LE(privacy::GlobalNorm(e->decoded), clip) << bits << " bits";
    }
  }
}

TEST(CoordinatorConfigTest, ErrorsNameTheKey) {
  auto cfg = LoadCoordinatorConfig(
      "", {"federation.quorum=2", "federation.on_quorum_miss=panic",
           "server.adress=x", "strategy.name=fedmagic"});
  ASSERT_FALSE(cfg.ok());
  const std::string& m = cfg.status().message();
  EXPECT_THAT(m, HasSubstr("federation.quorum: must be in (0, 1], got 2"));
  EXPECT_THAT(m, HasSubstr("federation.on_quorum_miss"));
  EXPECT_THAT(m, HasSubstr("unknown key 'server.adress'"));
  EXPECT_THAT(m, HasSubstr("strategy.name"));
  EXPECT_THAT(m, HasSubstr("fedavg"));  // lists the valid names
}

// Plaintext must be asked for: a config with neither tls.enabled nor
// tls.insecure is an error naming the key, for every kind of process.
TEST(CoordinatorConfigTest, PlaintextNeedsTheInsecureKey) {
  auto c = LoadCoordinatorConfig("", {});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("tls.enabled"));
  EXPECT_THAT(c.status().message(), HasSubstr("tls.insecure: true"));
  auto w = worker::LoadWorkerConfig(
      "", {"data.path=" + kSource + "/assets/data/tinyshakespeare/input.txt"});
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("tls.enabled"));
  auto e = LoadEdgeConfig("", {});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("tls.enabled"));
  // TLS needs its three files; the insecure key cannot be combined with it.
  auto t = LoadCoordinatorConfig("", {"tls.enabled=true", "tls.cert=c.crt"});
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("tls.ca: required"));
  EXPECT_THAT(t.status().message(), HasSubstr("tls.key: required"));
  auto both =
      LoadCoordinatorConfig("", {"tls.enabled=true", "tls.insecure=true",
                                 "tls.ca=a", "tls.cert=b", "tls.key=c"});
  ASSERT_FALSE(both.ok());
  EXPECT_THAT(both.status().message(), HasSubstr("tls.insecure: cannot"));
  // Server-only keys are unknown to a worker.
  auto wl = worker::LoadWorkerConfig(
      "", {"tls.insecure=true", "tls.allowed_names=[a]",
           "data.path=" + kSource + "/assets/data/tinyshakespeare/input.txt"});
  ASSERT_FALSE(wl.ok());
  EXPECT_THAT(wl.status().message(),
              HasSubstr("unknown key 'tls.allowed_names'"));
  auto ok = LoadEdgeConfig("", {"tls.insecure=true"});
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(ok->upstream.tls.insecure && ok->server.tls.insecure);
}

// Every YAML under configs/ loads with the reader of its kind, as shipped.
// configs/tls/ names certificates under out/certs that exist only after
// `fedpeft certs` (FederationTest.MutualTlsWithCertsCommands runs it with
// them); loading a config checks its keys, not its files.
TEST(ShippedConfigsTest, EveryConfigLoads) {
  const std::string shakespeare =
      kSource + "/assets/data/tinyshakespeare/input.txt";
  int checked = 0;
  for (const auto& e : fs::recursive_directory_iterator(kSource + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    const std::string path = e.path().string();
    const std::string name = e.path().filename().string();
    SCOPED_TRACE(path);
    YAML::Node root = YAML::LoadFile(path);
    if (root["simulation"]) {
      std::string cmd = "cd " + kSource + " && " + std::string(FEDPEFT_BINARY) +
                        " simulate --check --config " + path + " >/dev/null";
      EXPECT_EQ(std::system(cmd.c_str()), 0);
    } else if (root["serve"]) {
      auto cfg = serve::LoadServeConfig(path, {});
      EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
    } else if (name == "coordinator.yaml") {
      auto cfg = LoadCoordinatorConfig(path, {});
      EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
    } else if (name == "worker.yaml") {
      auto cfg = worker::LoadWorkerConfig(path, {});
      EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
    } else if (name == "edge.yaml") {
      auto cfg = LoadEdgeConfig(path, {});
      EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
    } else if (name == "allowlist.yaml") {
      auto names = security::ReadAllowlistFile(path);
      EXPECT_TRUE(names.ok()) << names.status().ToString();
    } else if (name.size() > 11 &&
               name.compare(name.size() - 11, 11, "_train.yaml") == 0) {
      // instruct_train.yaml leaves data.path for the user to set.
      auto cfg = worker::LoadTrainJobConfig(path, {"data.path=" + shakespeare});
      EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
    } else {
      ADD_FAILURE() << "no test knows how to load " << path;
    }
    ++checked;
  }
  EXPECT_GE(checked, 6);
}

TEST(CheckpointTest, SaveLoadIsBitIdenticalAndKeepsN) {
  fs::path dir = fs::temp_directory_path() /
                 ("fedpeft_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  Checkpoint c;
  c.federation_id = "f";
  c.rng_state = "1 2 3";
  c.strategy = "fedavg";
  c.base_model = "m";
  c.adapter_config = {{"r", 2}};
  c.global["a"] = torch::randn({3, 4});
  c.global["b"] = torch::randn({5});
  for (int r = 1; r <= 4; ++r) {
    c.round = r;
    ASSERT_TRUE(SaveCheckpoint(dir.string(), c, 2).ok());
  }
  auto loaded = LoadLatestCheckpoint(dir.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->round, 4);
  EXPECT_EQ(TensorDigest(loaded->global), TensorDigest(c.global));
  EXPECT_TRUE(torch::equal(loaded->global.at("a"), c.global.at("a")));
  int folders = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("round-", 0) == 0) ++folders;
  }
  EXPECT_EQ(folders, 2);
  // A damaged state.json is named.
  std::ofstream(dir / "round-000004" / "state.json") << "{";
  auto bad = LoadLatestCheckpoint(dir.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("state.json"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft

namespace fedpeft {
namespace coordinator {
namespace testing_util {
namespace {

using ::testing::HasSubstr;

// A rejected upload stream is closed at the first error, not drained: the
// server stops reading (and counting) after the chunk that decided it, however
// much the client goes on sending, and the client reads the reason.
TEST_F(ServiceTest, ARejectedUploadStreamIsClosedNotDrained) {
  Start(Config({"limits.max_update_mb=256", "server.max_message_mb=4"}));
  std::string a = Register("a");
  Register("b");
  RunLoop();
  proto::Task task = GetTask(a);
  ASSERT_EQ(task.kind(), proto::Task::TRAIN);
  grpc::ClientContext ctx;
  transport::SetTimeout(&ctx, std::chrono::seconds(120));
  proto::UploadReply reply;
  auto writer = stub_->UploadUpdate(&ctx, &reply);
  proto::UploadMessage m;
  m.mutable_header()->set_session_id(a);
  m.mutable_header()->set_round(task.round());
  m.mutable_header()->set_num_samples(10);
  m.mutable_header()->set_num_tensors(1);
  ASSERT_TRUE(writer->Write(m));
  // Data before any tensor header: the decoder's first error. Then 16 MiB
  // more that the old server read to the end.
  proto::UploadMessage bad;
  bad.mutable_chunk()->mutable_data()->set_data(std::string(64 << 10, 'x'));
  for (int i = 0; i < 256; ++i) {
    if (!writer->Write(bad)) break;
  }
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("before any tensor header"));
  // What the server read: the header and the one chunk.
  EXPECT_LT(coordinator_->engine().GetStatus().bytes_up, 1u << 20);
}

// FFA-LoRA keeps every lora_A at its seeded init: an upload that carries
// one is refused by name (a single worker would otherwise set the global A,
// the mean of each tensor being taken over those who sent it).
TEST_F(ServiceTest, AnUploadOfFfaFixedLoraAIsRefused) {
  Start(Config({"freezing.ffa=true"}));
  std::string a = Register("a");
  Register("b");
  RunLoop();
  proto::Task task = GetTask(a);
  ASSERT_EQ(task.kind(), proto::Task::TRAIN);
  EXPECT_TRUE(task.train().train_b_only());
  TensorMap global = Download(a, task.round());
  TensorMap evil;
  for (const auto& [key, t] : global) {
    if (key.find(".lora_A.") != std::string::npos) {
      evil[key] = torch::full_like(t, 0.25);
      break;
    }
  }
  ASSERT_EQ(evil.size(), 1u);
  grpc::Status s = Upload(a, task.round(), evil);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr(evil.begin()->first));
}

// What one registration may declare: an executor's users are bounded, an
// edge hosts none, and secure aggregation (pairwise masks among the round's
// participants) is not offered to virtual users.
TEST_F(ServiceTest, ExecutorRegistrationsAreBounded) {
  Start(Config({"dp.enabled=true", "dp.clip_norm=1", "secagg.enabled=true",
                "federation.min_available=3"}));
  auto reg = [&](const std::string& id, uint32_t users, proto::Role role) {
    proto::RegisterRequest req;
    req.mutable_profile()->set_worker_id(id);
    req.mutable_profile()->set_role(role);
    req.mutable_profile()->set_hosted_users(users);
    proto::RegisterReply reply;
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    return stub_->Register(&ctx, req, &reply);
  };
  grpc::Status s = reg("x", 100, proto::ROLE_WORKER);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(),
              ::testing::HasSubstr("not supported for virtual users"));
  s = reg("x", 20000000, proto::ROLE_WORKER);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("hosted_users"));
  s = reg("e", 4, proto::ROLE_EDGE);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("an edge cannot host"));
  // None of them entered anyone; a plain worker still registers.
  EXPECT_TRUE(reg("w", 0, proto::ROLE_WORKER).ok());
  EXPECT_EQ(coordinator_->engine().GetStatus().workers.size(), 1u);
}

// A sample count is bounded (it sizes a worker's steps, and FedAvg weights
// must stay exact), and an edge admits workers only: one level of edges,
// since only the cloud bounds what an edge declares.
TEST_F(ServiceTest, RegistrationsClaimBoundedSamplesAndOneLevelOfEdges) {
  Start(Config());
  proto::RegisterRequest req;
  req.mutable_profile()->set_worker_id("w");
  req.mutable_profile()->set_num_samples(uint64_t{1} << 63);
  proto::RegisterReply reply;
  grpc::ClientContext ctx;
  transport::SetTimeout(&ctx, std::chrono::seconds(10));
  grpc::Status s = stub_->Register(&ctx, req, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              HasSubstr("profile.num_samples: expected at most "
                        "1099511627776, got 9223372036854775808"));
  EXPECT_TRUE(coordinator_->engine().GetStatus().workers.empty());

  auto edge = RoundEngine::Create(Config(), /*cloud=*/false);
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  WorkerProfile p;
  p.worker_id = "edge-1";
  p.edge = true;
  auto r = (*edge)->Register(p);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(),
              HasSubstr("edge 'edge-1': an edge aggregator admits workers "
                        "only"));
  p.worker_id = "worker-1";
  p.edge = false;
  p.num_samples = 5;
  EXPECT_TRUE((*edge)->Register(p).ok());
}

}  // namespace
}  // namespace testing_util
}  // namespace coordinator
}  // namespace fedpeft
