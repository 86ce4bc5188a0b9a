#include "serve/pipeline_stage.h"

#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "common/blocking_queue.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/process_stats.h"
#include "proto/grpc_util.h"
#include "serve/pipeline_link.h"
#include "serve/pipeline_runtime.h"

namespace fedpeft {
namespace serve {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// What the heartbeat, loader and compute threads share.
struct Shared {
  std::mutex mu;
  uint64_t epoch = 0;  // the head's
  bool last = false;   // relay only last rows, and no releases
  model::LayerSpan assigned{0, 0, false};
  bool has_assignment = false;
  bool loading = false;
  std::shared_ptr<StageRuntime> runtime;  // the span loaded
  model::LayerSpan loaded{0, 0, false};
  uint64_t weight_bytes = 0;
  Status load_error;
  std::atomic<uint32_t> sequences{0};
};

bool SameSpan(const model::LayerSpan& a, const model::LayerSpan& b) {
  return a.begin == b.begin && a.end == b.end && a.io == b.io;
}

// Runs activations through the span; relays results, releases and errors.
void Compute(int stage, Shared& shared, BlockingQueue<proto::Activation>& in,
             RelayLink& link, BusyMeter& busy, const std::atomic<bool>& stop) {
  uint64_t seen_epoch = 0;
  std::shared_ptr<StageRuntime> seen_runtime;
  while (!stop) {
    std::optional<proto::Activation> a = in.Pop(milliseconds(100));
    std::shared_ptr<StageRuntime> rt;
    uint64_t epoch = 0;
    bool last = false;
    {
      std::lock_guard<std::mutex> lock(shared.mu);
      rt = shared.runtime;
      epoch = shared.epoch;
      last = shared.last;
    }
    if (rt != nullptr && (epoch != seen_epoch || rt != seen_runtime)) {
      rt->Clear();  // caches of a broken ring
      seen_epoch = epoch;
      seen_runtime = rt;
      shared.sequences = 0;
    }
    if (!a || rt == nullptr || a->epoch() != epoch) continue;
    if (a->release()) {
      rt->Release(a->sequence());
      shared.sequences = static_cast<uint32_t>(rt->sequences());
      if (!last) link.Send(std::move(*a));
      continue;
    }
    if (a->error().empty()) {
      const Clock::time_point t0 = Clock::now();
      const int64_t dim = rt->part().config.dim;
      std::string error;
      try {
        StatusOr<torch::Tensor> x =
            FromActivationBytes(a->hidden(), a->rows(), dim);
        StatusOr<torch::Tensor> y =
            x.ok() ? rt->Run(a->sequence(), a->model(), a->position(), *x)
                   : x.status();
        if (y.ok()) {
          torch::Tensor out = *y;
          if (last) out = out.narrow(1, out.size(1) - 1, 1);
          a->set_position(a->position() + a->rows() - out.size(1));
          a->set_rows(static_cast<uint32_t>(out.size(1)));
          a->set_hidden(ToActivationBytes(out));
        } else {
          error = std::string(y.status().message());
        }
      } catch (const std::exception& e) {
        error = e.what();  // a LibTorch error fails this sequence only
      }
      if (!error.empty()) {
        FP_LOG_ERROR("pipeline", "stage {}: sequence {}: {}", stage,
                     a->sequence(), error);
        a->set_error("stage " + std::to_string(stage) + ": " + error);
        a->clear_hidden();
        rt->Release(a->sequence());
      }
      shared.sequences = static_cast<uint32_t>(rt->sequences());
      busy.Add(Clock::now() - t0);
    }
    link.Send(std::move(*a));
  }
}

}  // namespace

Status RunPipelineStage(const ServeConfig& config,
                        const std::atomic<bool>& stop) {
  const PipelineOptions& p = config.pipeline;
  const int stage = p.stage;
  ASSIGN_OR_RETURN(ModelIdentity id, IdentifyModel(config.model.path));
  ASSIGN_OR_RETURN(model::LoadOptions load, config.model.ToLoadOptions());
  const size_t max_message = size_t{64} << 20;

  BlockingQueue<proto::Activation> inbound;
  PipelineHandlers handlers;
  handlers.relay = [&inbound](proto::Activation&& a) {
    inbound.Push(std::move(a));
  };
  ASSIGN_OR_RETURN(std::unique_ptr<PipelineServer> server,
                   PipelineServer::Start(p.listen_address(), config.tls,
                                         max_message, std::move(handlers)));
  ASSIGN_OR_RETURN(transport::HostPort hp,
                   transport::SplitHostPort(p.listen_address()));
  const std::string address =
      p.advertise.empty() ? transport::JoinHostPort(hp.host, server->port())
                          : p.advertise;
  if (!p.port_file.empty()) {
    RETURN_IF_ERROR(
        WriteFileAtomic(p.port_file, std::to_string(server->port()) + "\n")
            .WithContext("pipeline.port_file"));
  }
  const double gbps = MeasureBandwidthGbps();
  const uint64_t memory =
      p.memory_mb > 0 ? static_cast<uint64_t>(p.memory_mb) << 20
                      : static_cast<uint64_t>(0.9 * AvailableRamBytes());
  FP_LOG_INFO("pipeline",
              "stage {} of {}: relay on {} ({}), joining the head at {}; "
              "{:.1f} GB/s matrix-vector, {} MiB for weights",
              stage, p.stages, address,
              config.tls.enabled ? "mutual TLS" : "PLAINTEXT", p.head, gbps,
              memory >> 20);

  Shared shared;
  RelayLink link(config.tls, max_message);
  BusyMeter busy;
  std::atomic<bool> stop_threads{false};
  std::thread compute(
      [&] { Compute(stage, shared, inbound, link, busy, stop_threads); });
  std::thread loader;
  auto start_load = [&](model::LayerSpan span) {
    if (loader.joinable()) loader.join();
    shared.loading = true;
    loader = std::thread([&config, &shared, load, span, stage]() mutable {
      load.span = span;
      const auto t0 = Clock::now();
      auto weights = model::LoadModel(config.model.path, load);
      StatusOr<std::unique_ptr<StageRuntime>> rt =
          weights.ok()
              ? StageRuntime::Create(config, *weights)
              : StatusOr<std::unique_ptr<StageRuntime>>(weights.status());
      std::lock_guard<std::mutex> lock(shared.mu);
      shared.loading = false;
      if (!rt.ok()) {
        shared.load_error = rt.status();
        return;
      }
      shared.weight_bytes = static_cast<uint64_t>((*weights)->nbytes());
      shared.runtime = std::move(rt).value();
      shared.loaded = span;
      FP_LOG_INFO("pipeline", "stage {}: loaded {} ({:.0f} MiB) in {:.1f} s",
                  stage, span.Describe((*weights)->config.n_layers),
                  shared.weight_bytes / double(1 << 20),
                  std::chrono::duration<double>(Clock::now() - t0).count());
    });
  };

  transport::ChannelOptions options;
  ASSIGN_OR_RETURN(options.credentials,
                   security::MakeChannelCredentials(config.tls, "pipeline"));
  options.tls_server_name = config.tls.server_name;
  options.max_reconnect_backoff = milliseconds(1000);
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   transport::MakeChannel(p.head, options));
  auto stub = proto::Pipeline::NewStub(channel);
  Status result;
  bool head_reached = false;
  while (!stop) {
    proto::StageReport report;
    report.set_stage(stage);
    report.set_stages(p.stages);
    report.set_address(address);
    proto::StageModel* m = report.mutable_model();
    m->set_fingerprint(id.fingerprint);
    m->set_n_layers(static_cast<uint32_t>(id.config.n_layers));
    m->set_dim(static_cast<uint32_t>(id.config.dim));
    m->set_vocab_size(static_cast<uint32_t>(id.config.vocab_size));
    for (const std::string& name : config.serve.Names()) m->add_served(name);
    report.set_bandwidth_gbps(gbps);
    report.set_memory_bytes(memory);
    {
      std::lock_guard<std::mutex> lock(shared.mu);
      if (!shared.load_error.ok()) {
        result = shared.load_error;
        break;
      }
      const bool ready = shared.runtime != nullptr && !shared.loading &&
                         SameSpan(shared.loaded, shared.assigned);
      report.set_state(ready            ? proto::StageReport::READY
                       : shared.loading ? proto::StageReport::LOADING
                                        : proto::StageReport::JOINING);
      report.set_epoch(shared.epoch);
      const model::LayerSpan& held =
          shared.loading ? shared.assigned : shared.loaded;
      report.set_layer_begin(static_cast<uint32_t>(held.begin));
      report.set_layer_end(static_cast<uint32_t>(held.end));
      report.set_weight_bytes(shared.weight_bytes);
    }
    FillMemory(&report);
    busy.Fill(&report);
    report.set_sequences(shared.sequences);
    std::string link_error;
    report.set_downstream_ok(link.ok(&link_error));
    report.set_downstream_error(link_error);

    grpc::ClientContext ctx;
    // A join waits as long as the head waits for it: over a slow link it
    // queues behind activations.
    transport::SetTimeout(&ctx, milliseconds(p.stage_timeout_ms));
    proto::StageAssignment assignment;
    const grpc::Status s = stub->Join(&ctx, report, &assignment);
    if (!s.ok()) {
      const grpc::StatusCode code = s.error_code();
      if (code == grpc::StatusCode::FAILED_PRECONDITION ||
          code == grpc::StatusCode::PERMISSION_DENIED ||
          code == grpc::StatusCode::INVALID_ARGUMENT ||
          code == grpc::StatusCode::UNIMPLEMENTED) {
        result = transport::FromGrpcStatus(s, "the head at " + p.head +
                                                  " refused stage " +
                                                  std::to_string(stage));
        break;
      }
      if (head_reached) {
        FP_LOG_WARN("pipeline",
                    "stage {}: the head at {} is unreachable "
                    "({}); retrying",
                    stage, p.head, s.error_message());
      }
      head_reached = false;
    } else {
      if (!head_reached)
        FP_LOG_INFO("pipeline", "stage {}: joined the head", stage);
      head_reached = true;
      if (assignment.assigned()) {
        const model::LayerSpan span{assignment.layer_begin(),
                                    assignment.layer_end(), false};
        bool load = false;
        {
          std::lock_guard<std::mutex> lock(shared.mu);
          if (shared.epoch != assignment.epoch()) {
            FP_LOG_INFO("pipeline", "stage {}: ring epoch {}", stage,
                        assignment.epoch());
            shared.epoch = assignment.epoch();
          }
          shared.last = assignment.last();
          load = !shared.loading &&
                 (!shared.has_assignment || !SameSpan(span, shared.assigned));
          shared.assigned = span;
          shared.has_assignment = true;
        }
        link.SetTarget(assignment.next_address());
        if (load) start_load(span);
      }
    }
    for (int waited = 0; waited < p.heartbeat_ms && !stop; waited += 20) {
      std::this_thread::sleep_for(milliseconds(20));
    }
  }
  stop_threads = true;
  compute.join();
  if (loader.joinable()) loader.join();
  server->Shutdown();
  return result;
}

}  // namespace serve
}  // namespace fedpeft
