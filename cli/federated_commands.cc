// fedpeft coordinator | worker | status | simulate.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/file_util.h"
#include "common/heap.h"
#include "common/logging.h"
#include "coordinator/checkpoint.h"
#include "coordinator/coordinator.h"
#include "coordinator/edge.h"
#include "coordinator/service.h"
#include "model/generate.h"
#include "peft/peft_io.h"
#include "proto/fedpeft.grpc.pb.h"
#include "proto/grpc_util.h"
#include "security/tls.h"
#include "worker/distributed_worker.h"
#include "worker/executor.h"
#include "worker/model_download.h"
#include "worker/worker_client.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace cli {
namespace {

namespace po = boost::program_options;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// model.source upstream: fetches the base model from the server (cached
// blocks are not fetched again) and points model.path at it.
Status UseUpstreamModel(worker::WorkerConfig* cfg) {
  if (!cfg->model.upstream()) return Status::Ok();
  ASSIGN_OR_RETURN(
      cfg->model.path,
      worker::FetchUpstreamModel(cfg->model, cfg->server, cfg->worker.id));
  cfg->model.source = "local";
  return Status::Ok();
}

}  // namespace

int RunCoordinator(const Args& args) {
  const std::string cmd = "coordinator";
  std::string config_path;
  std::vector<std::string> overrides;
  int code = 0;
  if (!ParseConfigArgs(
          cmd, args, "coordinator YAML (e.g. configs/flat/coordinator.yaml)",
          "override a key: --set federation.rounds=10 (repeatable)",
          &config_path, &overrides, &code)) {
    return code;
  }
  auto cfg = coordinator::LoadCoordinatorConfig(config_path, overrides);
  if (!cfg.ok()) return Fail(cmd, cfg.status());
  Status s = SetUpLogging(cfg->logging.level, cfg->logging.file);
  if (!s.ok()) return Fail(cmd, s);
  if (cfg->model.threads > 0) torch::set_num_threads(cfg->model.threads);
  auto c = coordinator::Coordinator::Create(*cfg);
  if (!c.ok()) return Fail(cmd, c.status());
  auto server = coordinator::FederationServer::Start(**c, cfg->server);
  if (!server.ok()) return Fail(cmd, server.status());
  SignalWatcher signals([&] { (*c)->Stop(); });
  s = (*c)->Run();
  (*server)->Shutdown();
  if (!s.ok()) return Fail(cmd, s);
  return 0;
}

int RunWorker(const Args& args) {
  const std::string cmd = "worker";
  std::string config_path;
  std::vector<std::string> overrides;
  int code = 0;
  if (!ParseConfigArgs(cmd, args, "worker YAML (e.g. configs/flat/worker.yaml)",
                       "override a key: --set worker.id=w3 --set "
                       "data.shard=3/8 (repeatable)",
                       &config_path, &overrides, &code)) {
    return code;
  }
  auto cfg = worker::LoadWorkerConfig(config_path, overrides);
  if (!cfg.ok()) return Fail(cmd, cfg.status());
  Status s = SetUpLogging(cfg->logging.level, cfg->logging.file);
  if (!s.ok()) return Fail(cmd, s);
  torch::set_num_threads(cfg->worker.threads);
  s = UseUpstreamModel(&*cfg);
  if (!s.ok()) return Fail(cmd, s);
  auto base = worker::LoadWorkerBase(cfg->model);
  if (!base.ok()) return Fail(cmd, base.status());
  KeepFreedMemory();  // one trainer per process: steps reuse their memory
  if (cfg->worker.distributed.rank > 0) {
    // Another process of a worker over several (worker.distributed): it
    // trains what rank 0 hands it and never dials the server.
    auto follower = worker::DistributedFollower::Create(*cfg, base->weights,
                                                        base->tokenizer);
    if (!follower.ok()) return Fail(cmd, follower.status());
    SignalWatcher signals([&] { (*follower)->Stop(); });
    s = (*follower)->Run();
    return s.ok() ? 0 : Fail(cmd, s);
  }
  auto client =
      worker::WorkerClient::Create(*cfg, base->weights, base->tokenizer);
  if (!client.ok()) return Fail(cmd, client.status());
  SignalWatcher signals([&] { (*client)->Stop(); });
  s = (*client)->Run();
  if (!s.ok()) return Fail(cmd, s);
  worker::WorkerStats st = (*client)->stats();
  FP_LOG_INFO("worker",
              "'{}' done: {} rounds trained, {} rejected, {} dropped; "
              "up {} B, down {} B",
              cfg->worker.id, st.rounds_trained, st.rounds_rejected,
              st.rounds_dropped, st.bytes_up, st.bytes_down);
  return 0;
}

int RunExecutor(const Args& args) {
  const std::string cmd = "executor";
  std::string config_path;
  std::vector<std::string> overrides;
  int code = 0;
  if (!ParseConfigArgs(
          cmd, args,
          "worker YAML with an `executor` section (users, first_user, "
          "population, threads, state_dir)",
          "override a key: --set executor.users=5000 (repeatable)",
          &config_path, &overrides, &code)) {
    return code;
  }
  auto cfg = worker::LoadWorkerConfig(config_path, overrides);
  if (!cfg.ok()) return Fail(cmd, cfg.status());
  Status s = SetUpLogging(cfg->logging.level, cfg->logging.file);
  if (!s.ok()) return Fail(cmd, s);
  // Several users train at once, each on one core.
  torch::set_num_threads(cfg->executor.threads == 1 ? cfg->worker.threads : 1);
  s = UseUpstreamModel(&*cfg);
  if (!s.ok()) return Fail(cmd, s);
  auto base = worker::LoadWorkerBase(cfg->model);
  if (!base.ok()) return Fail(cmd, base.status());
  KeepFreedMemory();  // executor.threads trainers, one user after another
  auto executor =
      worker::Executor::Create(*cfg, base->weights, base->tokenizer);
  if (!executor.ok()) return Fail(cmd, executor.status());
  SignalWatcher signals([&] { (*executor)->Stop(); });
  s = (*executor)->Run();
  if (!s.ok()) return Fail(cmd, s);
  return 0;
}

int RunEdge(const Args& args) {
  const std::string cmd = "edge";
  std::string config_path;
  std::vector<std::string> overrides;
  int code = 0;
  if (!ParseConfigArgs(cmd, args, "edge YAML (e.g. configs/hier/edge.yaml)",
                       "override a key: --set edge.id=edge-1 (repeatable)",
                       &config_path, &overrides, &code)) {
    return code;
  }
  auto cfg = coordinator::LoadEdgeConfig(config_path, overrides);
  if (!cfg.ok()) return Fail(cmd, cfg.status());
  Status s = SetUpLogging(cfg->logging.level, cfg->logging.file);
  if (!s.ok()) return Fail(cmd, s);
  if (cfg->model.threads > 0) torch::set_num_threads(cfg->model.threads);
  coordinator::Edge edge(*cfg);
  SignalWatcher signals([&] { edge.Stop(); });
  s = edge.Run();
  if (!s.ok()) return Fail(cmd, s);
  return 0;
}

namespace {

// `fedpeft status --pipeline`: GetPipelineStatus of a pipeline's head.
int PrintPipelineStatus(const std::shared_ptr<grpc::Channel>& channel,
                        const std::string& address, bool json) {
  auto stub = proto::Pipeline::NewStub(channel);
  grpc::ClientContext ctx;
  transport::SetTimeout(&ctx, std::chrono::seconds(5));
  proto::StatusRequest req;
  proto::PipelineStatusReply s;
  grpc::Status st = stub->GetPipelineStatus(&ctx, req, &s);
  if (!st.ok()) {
    return Fail("status", transport::FromGrpcStatus(
                              st, "GetPipelineStatus to " + address));
  }
  if (json) {
    nlohmann::json j = {{"epoch", s.epoch()},
                        {"ring_up", s.ring_up()},
                        {"down_reason", s.down_reason()},
                        {"in_flight", s.in_flight()},
                        {"stages", nlohmann::json::array()}};
    for (const auto& r : s.stages()) {
      j["stages"].push_back({{"stage", r.stage()},
                             {"address", r.address()},
                             {"state", r.state()},
                             {"epoch", r.epoch()},
                             {"layer_begin", r.layer_begin()},
                             {"layer_end", r.layer_end()},
                             {"weight_bytes", r.weight_bytes()},
                             {"rss_bytes", r.rss_bytes()},
                             {"peak_rss_bytes", r.peak_rss_bytes()},
                             {"busy_fraction", r.busy_fraction()},
                             {"busy_seconds", r.busy_seconds()},
                             {"uptime_seconds", r.uptime_seconds()},
                             {"bandwidth_gbps", r.bandwidth_gbps()},
                             {"memory_bytes", r.memory_bytes()},
                             {"sequences", r.sequences()},
                             {"downstream_ok", r.downstream_ok()},
                             {"downstream_error", r.downstream_error()}});
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("ring        %s (epoch %llu), %u sequence(s) in flight%s%s\n",
              s.ring_up() ? "up" : "down",
              static_cast<unsigned long long>(s.epoch()), s.in_flight(),
              s.ring_up() ? "" : ": ", s.down_reason().c_str());
  for (const auto& r : s.stages()) {
    std::printf(
        "  stage %u  %-21s layers [%u, %u)%s  weights %llu MiB  RSS %llu MiB "
        "(peak %llu)  busy %.0f%% (%.0f%% since start)%s%s\n",
        r.stage(), r.address().c_str(), r.layer_begin(), r.layer_end(),
        r.stage() == 0 ? " + io" : "",
        static_cast<unsigned long long>(r.weight_bytes() >> 20),
        static_cast<unsigned long long>(r.rss_bytes() >> 20),
        static_cast<unsigned long long>(r.peak_rss_bytes() >> 20),
        100 * r.busy_fraction(),
        r.uptime_seconds() > 0 ? 100 * r.busy_seconds() / r.uptime_seconds()
                               : 0.0,
        r.downstream_ok() ? "" : "  relay: ",
        r.downstream_ok() ? "" : r.downstream_error().c_str());
  }
  return 0;
}

}  // namespace

int RunStatus(const Args& args) {
  const std::string cmd = "status";
  std::string address;
  bool json = false;
  bool pipeline = false;
  security::TlsOptions tls;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "address", po::value(&address)->required(), "coordinator HOST:PORT")(
      "json", po::bool_switch(&json), "print the raw status as JSON")(
      "pipeline", po::bool_switch(&pipeline),
      "--address is a pipeline head (`fedpeft serve` with a pipeline: "
      "section): each stage's layers, memory and busy fraction")(
      "ca", po::value(&tls.ca),
      "mutual TLS: CA certificate that verifies the server (with --cert, "
      "--key; without them: plaintext)")(
      "cert", po::value(&tls.cert),
      "mutual TLS: this client's certificate (its name must be allowed)")(
      "key", po::value(&tls.key), "mutual TLS: the key of --cert")(
      "server-name", po::value(&tls.server_name),
      "mutual TLS: the name in the server's certificate, when it is not the "
      "host of --address");
  po::variables_map vm;
  int code = 0;
  if (!ParseArgs(cmd,
                 "--address HOST:PORT [--pipeline] [--ca FILE --cert FILE "
                 "--key FILE] [--json]",
                 desc, args, &vm, &code)) {
    return code;
  }
  const int tls_flags = !tls.ca.empty() + !tls.cert.empty() + !tls.key.empty();
  if (tls_flags != 0 && tls_flags != 3) {
    std::cerr << "fedpeft status: --ca, --cert and --key go together (the "
                 "server requires a client certificate)\n";
    return kExitUsage;
  }
  tls.enabled = tls_flags == 3;
  tls.insecure = !tls.enabled;
  SetLogLevel(LogLevel::kError);  // no plaintext warning on a status query
  transport::ChannelOptions channel_options;
  auto credentials = security::MakeChannelCredentials(tls, "status");
  if (!credentials.ok()) {
    return Fail(cmd, Status::InvalidArgument(
                         "--" + credentials.status().message().substr(4)));
  }
  channel_options.credentials = *credentials;
  channel_options.tls_server_name = tls.server_name;
  auto channel = transport::MakeChannel(address, channel_options);
  if (!channel.ok()) return Fail(cmd, channel.status());
  if (pipeline) return PrintPipelineStatus(*channel, address, json);
  auto stub = proto::Federation::NewStub(*channel);
  grpc::ClientContext ctx;
  transport::SetTimeout(&ctx, std::chrono::seconds(5));
  proto::StatusRequest req;
  proto::StatusReply s;
  grpc::Status st = stub->GetStatus(&ctx, req, &s);
  if (!st.ok()) {
    Status failed = transport::FromGrpcStatus(st, "GetStatus to " + address);
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      failed = Status::Unavailable(
          failed.message() +
          (tls.enabled ? " (is the server's certificate signed by --ca, and "
                         "does it name the host of --address?)"
                       : " (if the server runs TLS, pass --ca, --cert and "
                         "--key)"));
    }
    return Fail(cmd, failed);
  }
  if (json) {
    nlohmann::json j = {{"federation_id", s.federation_id()},
                        {"state", s.state()},
                        {"round", s.round()},
                        {"total_rounds", s.total_rounds()},
                        {"selected", s.selected()},
                        {"answered", s.answered()},
                        {"last_train_loss", s.last_train_loss()},
                        {"last_eval_loss", s.last_eval_loss()},
                        {"bytes_up", s.bytes_up()},
                        {"bytes_down", s.bytes_down()},
                        {"strategy", s.strategy()},
                        {"uptime_seconds", s.uptime_seconds()}};
    for (const auto& w : s.workers()) {
      j["workers"].push_back({{"worker_id", w.worker_id()},
                              {"alive", w.alive()},
                              {"rounds_completed", w.rounds_completed()},
                              {"last_seen_ms_ago", w.last_seen_ms_ago()}});
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("federation  %s (%s, strategy %s, up %.0fs)\n",
              s.federation_id().c_str(), s.state().c_str(),
              s.strategy().c_str(), s.uptime_seconds());
  std::printf("round       %llu of %llu: %u selected, %u answered\n",
              static_cast<unsigned long long>(s.round()),
              static_cast<unsigned long long>(s.total_rounds()), s.selected(),
              s.answered());
  std::printf("last loss   train %.4f  eval %.4f\n", s.last_train_loss(),
              s.last_eval_loss());
  std::printf("bytes       up %llu  down %llu\n",
              static_cast<unsigned long long>(s.bytes_up()),
              static_cast<unsigned long long>(s.bytes_down()));
  std::printf("workers     %d\n", s.workers_size());
  for (const auto& w : s.workers()) {
    std::printf("  %-20s %-5s rounds %llu  seen %llu ms ago\n",
                w.worker_id().c_str(), w.alive() ? "alive" : "gone",
                static_cast<unsigned long long>(w.rounds_completed()),
                static_cast<unsigned long long>(w.last_seen_ms_ago()));
  }
  return 0;
}

}  // namespace cli
}  // namespace fedpeft
