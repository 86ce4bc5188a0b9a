// The fixture of the service tests: a Coordinator behind a real gRPC server
// on 127.0.0.1 (port 0) and a stub to drive it by hand.
#ifndef FEDPEFT_TESTS_COORDINATOR_SERVICE_FIXTURE_H_
#define FEDPEFT_TESTS_COORDINATOR_SERVICE_FIXTURE_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/coordinator.h"
#include "coordinator/service.h"
#include "proto/grpc_util.h"
#include "proto/tensor_codec.h"
#include "tests/test_paths.h"

namespace fedpeft {
namespace coordinator {
namespace testing_util {

namespace fs = std::filesystem;

class ServiceTest : public ::testing::Test {
 public:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_svc_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    Reset();
    fs::remove_all(dir_);
  }

  // Stops and drops the coordinator and its server (a test may Start
  // another).
  void Reset() {
    if (coordinator_) coordinator_->Stop();
    if (loop_.joinable()) loop_.join();
    server_.reset();
    coordinator_.reset();
  }

  CoordinatorConfig Config(std::vector<std::string> overrides = {}) {
    std::vector<std::string> base = {
        "server.address=127.0.0.1:0",
        "server.max_message_mb=1",
        "server.chunk_kb=64",
        "federation.rounds=1",
        "federation.min_available=2",
        "federation.min_workers=2",
        "federation.quorum=0.5",
        "federation.round_deadline_s=20",
        "federation.heartbeat_interval_ms=500",
        "federation.worker_timeout_s=30",
        "federation.task_wait_ms=500",
        "federation.shutdown_grace_s=0",
        "model.path=" + kSource + "/assets/stories260K",
        "peft.lora.r=2",
        "peft.lora.target_modules=[q_proj, v_proj]",
        "checkpoint.dir=" + (dir_ / "ckpt").string(),
        "logging.metrics_file=" + (dir_ / "metrics.jsonl").string(),
        "limits.max_update_mb=1",
    };
    const std::vector<std::string> transport = Transport();
    base.insert(base.end(), transport.begin(), transport.end());
    base.insert(base.end(), overrides.begin(), overrides.end());
    auto cfg = LoadCoordinatorConfig("", base);
    EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
    return *cfg;
  }

  // The `tls` keys of Config(): plaintext here.
  virtual std::vector<std::string> Transport() { return {"tls.insecure=true"}; }

  void Start(const CoordinatorConfig& cfg) {
    auto c = Coordinator::Create(cfg);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    coordinator_ = std::move(c).value();
    auto s = FederationServer::Start(*coordinator_, cfg.server);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s).value();
    auto channel =
        transport::MakeChannel("127.0.0.1:" + std::to_string(server_->port()),
                               transport::ChannelOptions{});
    ASSERT_TRUE(channel.ok());
    stub_ = proto::Federation::NewStub(*channel);
  }

  void RunLoop() {
    loop_ = std::thread([this] { run_status_ = coordinator_->Run(); });
  }
  // Waits for the federation RunLoop started to end.
  void Join() { loop_.join(); }

  std::string Register(const std::string& id) {
    proto::RegisterRequest req;
    req.mutable_profile()->set_worker_id(id);
    req.mutable_profile()->set_num_samples(10);
    proto::RegisterReply reply;
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    grpc::Status s = stub_->Register(&ctx, req, &reply);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_FALSE(reply.adapter_config_json().empty());
    return reply.session_id();
  }

  proto::Task GetTask(const std::string& session) {
    for (int i = 0; i < 40; ++i) {
      proto::TaskRequest req;
      req.set_session_id(session);
      req.set_wait_ms(500);
      proto::Task task;
      grpc::ClientContext ctx;
      transport::SetTimeout(&ctx, std::chrono::seconds(5));
      grpc::Status s = stub_->GetTask(&ctx, req, &task);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (task.kind() != proto::Task::WAIT) return task;
    }
    ADD_FAILURE() << "no task";
    return proto::Task();
  }

  TensorMap Download(const std::string& session, uint64_t round) {
    proto::DownloadRequest req;
    req.set_session_id(session);
    req.set_round(round);
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    auto reader = stub_->DownloadAdapter(&ctx, req);
    transport::TensorDecoder decoder;
    proto::TensorChunk chunk;
    while (reader->Read(&chunk)) EXPECT_TRUE(decoder.Add(chunk).ok());
    EXPECT_TRUE(reader->Finish().ok());
    auto t = decoder.Finish();
    EXPECT_TRUE(t.ok());
    return *t;
  }

  // Sends an upload: header fields, then `tensors` (or raw `chunks`).
  grpc::Status Upload(const std::string& session, uint64_t round,
                      const TensorMap& tensors,
                      std::vector<proto::TensorChunk> raw = {},
                      int num_tensors = -1, double loss = 1.0) {
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    proto::UploadReply reply;
    auto writer = stub_->UploadUpdate(&ctx, &reply);
    proto::UploadMessage m;
    m.mutable_header()->set_session_id(session);
    m.mutable_header()->set_round(round);
    m.mutable_header()->set_num_samples(10);
    m.mutable_header()->set_train_loss(loss);
    m.mutable_header()->set_num_tensors(
        num_tensors >= 0 ? num_tensors : static_cast<int>(tensors.size()));
    writer->Write(m);
    if (raw.empty()) {
      Status s = transport::EncodeTensors(tensors, 32 << 10,
                                          [&](const proto::TensorChunk& c) {
                                            proto::UploadMessage u;
                                            *u.mutable_chunk() = c;
                                            return writer->Write(u);
                                          });
      EXPECT_TRUE(s.ok() || s.code() == StatusCode::kUnavailable);
    } else {
      for (const auto& c : raw) {
        proto::UploadMessage u;
        *u.mutable_chunk() = c;
        writer->Write(u);
      }
    }
    writer->WritesDone();
    return writer->Finish();
  }

  fs::path dir_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<FederationServer> server_;
  std::unique_ptr<proto::Federation::Stub> stub_;
  std::thread loop_;
  Status run_status_;
};

inline TensorMap Zeros(const TensorMap& like) {
  TensorMap out;
  for (const auto& kv : like) out[kv.first] = torch::zeros_like(kv.second);
  return out;
}

}  // namespace testing_util
}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_COORDINATOR_SERVICE_FIXTURE_H_
