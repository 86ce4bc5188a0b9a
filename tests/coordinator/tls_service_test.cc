// The coordinator behind a real gRPC server on 127.0.0.1 (port 0) with
// mutual TLS, certificates from security/certs.h: the certificate's name is
// the participant id, a session belongs to its certificate, clients without
// a certificate of the CA cannot connect, and a name removed from the
// allowlist file is refused on its next call while the round goes on.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "common/file_util.h"
#include "coordinator/coordinator.h"
#include "coordinator/service.h"
#include "proto/grpc_util.h"
#include "proto/tensor_codec.h"
#include "security/certs.h"
#include "security/tls.h"
#include "tests/coordinator/service_fixture.h"
#include "worker/federation_client.h"

namespace fedpeft {
namespace coordinator {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TlsServiceTest : public testing_util::ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    certs_ = (dir_ / "certs").string();
    ASSERT_TRUE(security::CreateCa(certs_, {}).ok());
    Issue(certs_, "coordinator", security::CertRole::kCoordinator);
    for (const char* w : {"worker-0", "worker-1", "worker-2"}) {
      Issue(certs_, w, security::CertRole::kWorker);
    }
    Issue(certs_, "edge-0", security::CertRole::kEdge);
    Issue(certs_, "operator", security::CertRole::kOperator);
    allowlist_ = (dir_ / "allowlist.yaml").string();
    ASSERT_TRUE(WriteFileAtomic(allowlist_,
                                "allowed_names: [worker-0, worker-1, "
                                "worker-2, edge-0, operator]\n")
                    .ok());
  }

  static void Issue(const std::string& ca, const std::string& name,
                    security::CertRole role) {
    security::IssueOptions o;
    o.name = name;
    o.role = role;
    Status s = security::IssueCertificate(ca, ca, o);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  std::vector<std::string> Transport() override {
    return {"tls.enabled=true", "tls.ca=" + security::CaCertPath(certs_),
            "tls.cert=" + security::CertPath(certs_, server_cert_),
            "tls.key=" + security::KeyPath(certs_, server_cert_),
            "tls.allowlist_file=" + allowlist_};
  }

  void Start(std::vector<std::string> overrides = {}) {
    std::vector<std::string> o = {"federation.min_available=3",
                                  "federation.min_workers=3",
                                  "federation.round_deadline_s=60"};
    o.insert(o.end(), overrides.begin(), overrides.end());
    ServiceTest::Start(Config(o));
  }

  // A stub whose channel presents `name`'s certificate from `ca_dir` (none
  // when `name` is empty) and verifies the server against `ca_dir`'s CA.
  std::unique_ptr<proto::Federation::Stub> Stub(const std::string& name,
                                                std::string ca_dir = "") {
    if (ca_dir.empty()) ca_dir = certs_;
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *ReadFileToString(security::CaCertPath(certs_));
    if (!name.empty()) {
      ssl.pem_cert_chain = *ReadFileToString(security::CertPath(ca_dir, name));
      ssl.pem_private_key = *ReadFileToString(security::KeyPath(ca_dir, name));
    }
    transport::ChannelOptions options;
    options.credentials = grpc::SslCredentials(ssl);
    auto channel = transport::MakeChannel(
        "127.0.0.1:" + std::to_string(server_->port()), options);
    EXPECT_TRUE(channel.ok());
    return proto::Federation::NewStub(*channel);
  }

  static grpc::Status Register(proto::Federation::Stub& stub,
                               const std::string& id, std::string* session,
                               proto::Role role = proto::ROLE_WORKER,
                               uint32_t hosted_users = 0) {
    proto::RegisterRequest req;
    req.mutable_profile()->set_worker_id(id);
    req.mutable_profile()->set_role(role);
    req.mutable_profile()->set_hosted_users(hosted_users);
    req.mutable_profile()->set_num_samples(10);
    proto::RegisterReply reply;
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    grpc::Status s = stub.Register(&ctx, req, &reply);
    if (session) *session = reply.session_id();
    return s;
  }

  static grpc::Status GetTask(proto::Federation::Stub& stub,
                              const std::string& session, proto::Task* task) {
    for (int i = 0; i < 40; ++i) {
      proto::TaskRequest req;
      req.set_session_id(session);
      req.set_wait_ms(500);
      grpc::ClientContext ctx;
      transport::SetTimeout(&ctx, std::chrono::seconds(5));
      grpc::Status s = stub.GetTask(&ctx, req, task);
      if (!s.ok() || task->kind() != proto::Task::WAIT) return s;
    }
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "no task");
  }

  static grpc::Status Heartbeat(proto::Federation::Stub& stub,
                                const std::string& session) {
    proto::HeartbeatRequest req;
    req.set_session_id(session);
    proto::HeartbeatReply reply;
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(5));
    return stub.Heartbeat(&ctx, req, &reply);
  }

  static StatusOr<TensorMap> Download(proto::Federation::Stub& stub,
                                      const std::string& session,
                                      uint64_t round) {
    proto::DownloadRequest req;
    req.set_session_id(session);
    req.set_round(round);
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    auto reader = stub.DownloadAdapter(&ctx, req);
    transport::TensorDecoder decoder;
    proto::TensorChunk chunk;
    while (reader->Read(&chunk)) RETURN_IF_ERROR(decoder.Add(chunk));
    grpc::Status s = reader->Finish();
    if (!s.ok()) return transport::FromGrpcStatus(s, "DownloadAdapter");
    return decoder.Finish();
  }

  static grpc::Status Upload(proto::Federation::Stub& stub,
                             const std::string& session, uint64_t round,
                             const TensorMap& tensors) {
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    proto::UploadReply reply;
    auto writer = stub.UploadUpdate(&ctx, &reply);
    proto::UploadMessage m;
    m.mutable_header()->set_session_id(session);
    m.mutable_header()->set_round(round);
    m.mutable_header()->set_num_samples(10);
    m.mutable_header()->set_train_loss(1.0);
    m.mutable_header()->set_num_tensors(static_cast<int>(tensors.size()));
    writer->Write(m);
    Status s = transport::EncodeTensors(tensors, 32 << 10,
                                        [&](const proto::TensorChunk& c) {
                                          proto::UploadMessage u;
                                          *u.mutable_chunk() = c;
                                          return writer->Write(u);
                                        });
    (void)s;  // a refused upload ends the stream early
    writer->WritesDone();
    return writer->Finish();
  }

  // A worker::FederationClient as `name` (its certificate), registering
  // in `role` with the server.
  Status ClientRegister(const std::string& name, proto::Role role) {
    worker::ConnectionOptions o;
    o.address = "127.0.0.1:" + std::to_string(server_->port());
    o.rpc_timeout_s = 10;
    o.tls.enabled = true;
    o.tls.ca = security::CaCertPath(certs_);
    o.tls.cert = security::CertPath(certs_, name);
    o.tls.key = security::KeyPath(certs_, name);
    o.tls.server_name = "localhost";
    worker::FederationClient client(
        name, o,
        [&] {
          proto::WorkerProfile p;
          p.set_worker_id(name);
          p.set_role(role);
          p.set_num_samples(10);
          return p;
        },
        [](const proto::RegisterReply&) { return Status::Ok(); });
    RETURN_IF_ERROR(client.Connect());
    return client.Register();
  }

  std::string certs_;
  std::string allowlist_;
  std::string server_cert_ = "coordinator";  // the server's certificate
};

// Clients check the server's role too. A worker's or operator's certificate
// cannot serve at all (extended key usage clientAuth only), but an edge's
// can: without the check, one edge could pose as the coordinator to the
// other edges.
TEST_F(TlsServiceTest, AnEdgeServesWorkersButNotEdges) {
  Issue(certs_, "edge-9", security::CertRole::kEdge);
  server_cert_ = "edge-9";
  Start();
  Status s = ClientRegister("worker-0", proto::ROLE_WORKER);
  EXPECT_TRUE(s.ok()) << s.ToString();
  s = ClientRegister("edge-0", proto::ROLE_EDGE);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("role 'edge', expected 'coordinator'"));
}

TEST_F(TlsServiceTest, ClientsAcceptTheCoordinator) {
  Start();
  Status s = ClientRegister("worker-0", proto::ROLE_WORKER);
  EXPECT_TRUE(s.ok()) << s.ToString();
  s = ClientRegister("edge-0", proto::ROLE_EDGE);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(TlsServiceTest, TheCertificateNameIsTheWorkerId) {
  Start();
  auto w0 = Stub("worker-0");
  std::string session;
  grpc::Status s = Register(*w0, "worker-0", &session);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_THAT(session, HasSubstr("/worker-0/"));

  // worker-1's certificate claiming to be worker-0: refused, naming both.
  auto w1 = Stub("worker-1");
  s = Register(*w1, "worker-0", nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("'worker-0'"));
  EXPECT_THAT(s.error_message(), HasSubstr("'worker-1'"));

  // A session id is useless with another certificate.
  s = Heartbeat(*w1, session);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("session belongs to 'worker-0'"));
  proto::Task task;
  s = GetTask(*w1, session, &task);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // ... and fine with its own.
  s = Heartbeat(*w0, session);
  EXPECT_TRUE(s.ok()) << s.error_message();

  // The status lists the certificate names; only an operator may ask.
  proto::StatusRequest req;
  proto::StatusReply reply;
  {
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(5));
    s = w0->GetStatus(&ctx, req, &reply);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(s.error_message(), HasSubstr("needs an operator certificate"));
  }
  auto op = Stub("operator");
  grpc::ClientContext ctx;
  transport::SetTimeout(&ctx, std::chrono::seconds(5));
  ASSERT_TRUE(op->GetStatus(&ctx, req, &reply).ok());
  ASSERT_EQ(reply.workers_size(), 1);
  EXPECT_EQ(reply.workers(0).worker_id(), "worker-0");
}

// An executor's users call with the executor's certificate: a user session
// is refused with any other, and resolves only under its own executor.
TEST_F(TlsServiceTest, AVirtualUserCallsWithItsExecutorsCertificateOnly) {
  Start();
  auto w0 = Stub("worker-0");
  auto w1 = Stub("worker-1");
  std::string executor, worker;
  ASSERT_TRUE(Register(*w0, "worker-0", &executor, proto::ROLE_WORKER, 2).ok());
  ASSERT_TRUE(Register(*w1, "worker-1", &worker).ok());
  RunLoop();
  // The round selects among worker-1 and the two users, never worker-0:
  // its task lists its selected users.
  proto::Task task;
  ASSERT_TRUE(GetTask(*w0, executor, &task).ok());
  ASSERT_EQ(task.kind(), proto::Task::USERS);
  ASSERT_GE(task.user_tasks_size(), 1);
  const proto::Task& user_task = task.user_tasks(0);
  EXPECT_EQ(user_task.kind(), proto::Task::TRAIN);
  EXPECT_THAT(user_task.user_id(), ::testing::StartsWith("worker-0/u"));
  const std::string user = executor + "#" + user_task.user_id();

  // With the executor's certificate the user downloads its round...
  EXPECT_TRUE(Download(*w0, user, task.round()).ok());
  // ... with another, the session is not its to use.
  grpc::Status s = Heartbeat(*w1, user);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("session belongs to 'worker-0'"));
  auto stolen = Download(*w1, user, task.round());
  EXPECT_FALSE(stolen.ok());
  EXPECT_THAT(stolen.status().message(), HasSubstr("belongs to 'worker-0'"));
  // A user of worker-0 named under worker-1's session does not exist.
  s = Heartbeat(*w1, worker + "#" + user_task.user_id());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
}

// The role is the CA's to give: a worker certificate cannot register as an
// edge (edges are trusted with more), an operator's cannot register at all,
// and the refusals leave the federation serving the others.
TEST_F(TlsServiceTest, ARegistrationTakesTheRoleOfItsCertificate) {
  Start();
  auto w0 = Stub("worker-0");
  grpc::Status s = Register(*w0, "worker-0", nullptr, proto::ROLE_EDGE);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(),
              HasSubstr("asks to register as edge, but its certificate's "
                        "role is worker"));
  auto op = Stub("operator");
  s = Register(*op, "operator", nullptr, proto::ROLE_WORKER);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("certificate's role is operator"));
  auto edge = Stub("edge-0");
  s = Register(*edge, "edge-0", nullptr, proto::ROLE_WORKER);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("certificate's role is edge"));
  // Each in its own role is admitted.
  std::string session;
  s = Register(*edge, "edge-0", &session, proto::ROLE_EDGE);
  EXPECT_TRUE(s.ok()) << s.error_message();
  s = Register(*w0, "worker-0", &session, proto::ROLE_WORKER);
  EXPECT_TRUE(s.ok()) << s.error_message();
  const CoordinatorStatus st = coordinator_->engine().GetStatus();
  std::vector<std::string> ids;
  for (const auto& w : st.workers) ids.push_back(w.worker_id);
  EXPECT_THAT(ids, ::testing::UnorderedElementsAre("edge-0", "worker-0"));
}

// Base-model delivery: workers and edges fetch, an operator does not.
TEST_F(TlsServiceTest, OnlyWorkersAndEdgesFetchTheModel) {
  Start();
  for (const char* name : {"worker-0", "edge-0", "operator"}) {
    auto stub = Stub(name);
    proto::ModelManifest manifest;
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    grpc::Status s =
        stub->GetModelManifest(&ctx, proto::ModelManifestRequest(), &manifest);
    if (std::string(name) == "operator") {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
      EXPECT_THAT(s.error_message(),
                  HasSubstr("needs a worker or edge certificate; 'operator' "
                            "has role operator"));
    } else {
      EXPECT_TRUE(s.ok()) << name << ": " << s.error_message();
      EXPECT_GT(manifest.files_size(), 0);
    }
  }
}

// The role is read from the signed subject; a certificate without one (the
// CA's own here, or one issued before roles existed) is refused with a hint.
TEST_F(TlsServiceTest, TheRoleIsReadFromTheCertificate) {
  StatusOr<security::CertRole> r = security::CertificateRole(
      *ReadFileToString(security::CaCertPath(certs_)));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("carries no role"));
  r = security::CertificateRole(
      *ReadFileToString(security::CertPath(certs_, "edge-0")));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, security::CertRole::kEdge);
}

TEST_F(TlsServiceTest, ClientsWithoutACertificateOfTheCaCannotConnect) {
  Start();
  // No client certificate: the handshake fails.
  auto anonymous = Stub("");
  grpc::Status s = Register(*anonymous, "worker-0", nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  // A certificate named worker-0, from another CA.
  const std::string other = (dir_ / "other").string();
  ASSERT_TRUE(security::CreateCa(other, {}).ok());
  Issue(other, "worker-0", security::CertRole::kWorker);
  auto impostor = Stub("worker-0", other);
  s = Register(*impostor, "worker-0", nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  // Plaintext to a TLS server.
  auto channel = transport::MakeChannel(
      "127.0.0.1:" + std::to_string(server_->port()), {});
  ASSERT_TRUE(channel.ok());
  auto plain = proto::Federation::NewStub(*channel);
  s = Register(*plain, "worker-0", nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  // A client that trusts another CA does not accept this server either.
  // (The same CA signs both ends in fedpeft; this is the client's check.)
  EXPECT_EQ(coordinator_->engine().GetStatus().workers.size(), 0u);
}

TEST_F(TlsServiceTest, ARevokedWorkerIsRefusedAndTheRoundGoesOn) {
  Start();
  std::vector<std::unique_ptr<proto::Federation::Stub>> stubs;
  std::vector<std::string> sessions(3);
  for (int i = 0; i < 3; ++i) {
    stubs.push_back(Stub("worker-" + std::to_string(i)));
    grpc::Status s =
        Register(*stubs[i], "worker-" + std::to_string(i), &sessions[i]);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  RunLoop();
  std::vector<proto::Task> tasks(3);
  for (int i = 0; i < 3; ++i) {
    grpc::Status s = GetTask(*stubs[i], sessions[i], &tasks[i]);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(tasks[i].kind(), proto::Task::TRAIN);
  }
  const uint64_t round = tasks[0].round();
  auto global = Download(*stubs[0], sessions[0], round);
  ASSERT_TRUE(global.ok()) << global.status().ToString();

  // The operator revokes worker-2 by rewriting the allowlist file; the
  // server looks at it at most once a second. worker-2's heartbeats go
  // through until it has looked, and are refused from then on.
  ASSERT_TRUE(
      WriteFileAtomic(allowlist_, "allowed_names: [worker-0, worker-1]\n")
          .ok());
  grpc::Status beat;
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    beat = Heartbeat(*stubs[2], sessions[2]);
    if (beat.error_code() == grpc::StatusCode::PERMISSION_DENIED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < until);
  ASSERT_EQ(beat.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << "the revocation was not seen within 10 s: " << beat.error_message();
  TensorMap zeros;
  for (const auto& [key, t] : *global) zeros[key] = torch::zeros_like(t);
  grpc::Status s = Upload(*stubs[2], sessions[2], round, zeros);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("'worker-2' is not allowed"));
  // It cannot come back under its name either.
  s = Register(*stubs[2], "worker-2", nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);

  for (int i = 0; i < 2; ++i) {
    s = Upload(*stubs[i], sessions[i], round, zeros);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  loop_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_.ToString();
  auto history = coordinator_->History();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_TRUE(history[0].aggregated);
  EXPECT_EQ(history[0].selected, 3);
  EXPECT_EQ(history[0].answered, 2);
  EXPECT_EQ(history[0].rejected, 1);
}

TEST(AllowlistTest, TheFileIsReReadWhenItChanges) {
  const std::string path = (fs::temp_directory_path() /
                            ("fedpeft_allow_" + std::to_string(::getpid())))
                               .string();
  ASSERT_TRUE(WriteFileAtomic(path, "allowed_names: [a, b]\n").ok());
  security::TlsOptions o;
  o.allowlist_file = path;
  auto list = security::Allowlist::Create(o, std::chrono::milliseconds(0));
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_TRUE((*list)->Allows("a"));
  EXPECT_FALSE((*list)->Allows("c"));
  ASSERT_TRUE(WriteFileAtomic(path, "allowed_names: [b, c]\n").ok());
  EXPECT_FALSE((*list)->Allows("a"));
  EXPECT_TRUE((*list)->Allows("c"));
  // A broken file keeps the last good list.
  ASSERT_TRUE(WriteFileAtomic(path, "allowed_names: [b, c\n").ok());
  EXPECT_TRUE((*list)->Allows("c"));
  // An empty list admits no one.
  ASSERT_TRUE(WriteFileAtomic(path, "allowed_names: []\n").ok());
  EXPECT_FALSE((*list)->Allows("b"));
  fs::remove(path);
  // Neither list nor file: any name.
  auto any = security::Allowlist::Create(security::TlsOptions{});
  ASSERT_TRUE(any.ok());
  EXPECT_TRUE((*any)->Allows("whoever"));
  // A missing file at start is an error naming the key.
  auto missing = security::Allowlist::Create(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("tls.allowlist_file"));
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
