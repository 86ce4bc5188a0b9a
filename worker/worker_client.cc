#include "worker/worker_client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <thread>

#include "common/logging.h"
#include "model/loader.h"
#include "peft/peft_io.h"
#include "proto/fedpeft.grpc.pb.h"
#include "proto/grpc_util.h"
#include "proto/tensor_codec.h"
#include "worker/local_trainer.h"

namespace fedpeft {
namespace worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

uint64_t AvailableRamBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

uint64_t NowUnixMs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
}

}  // namespace

StatusOr<WorkerBase> LoadWorkerBase(const ModelOptions& options) {
  ASSIGN_OR_RETURN(model::LoadOptions load, options.ToLoadOptions());
  WorkerBase base;
  ASSIGN_OR_RETURN(base.weights, model::LoadModel(options.path, load));
  std::string tok = options.tokenizer;
  if (tok.empty()) {
    ASSIGN_OR_RETURN(tok, model::FindTokenizerForModel(
                              options.path, base.weights->config.vocab_size));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> t,
                   model::LoadTokenizer(tok, base.weights->config.vocab_size));
  base.tokenizer = std::move(t);
  return base;
}

// ---- the client ------------------------------------------------------------

class WorkerClient::Impl {
 public:
  Impl(const WorkerConfig& config,
       std::shared_ptr<const model::LlamaWeights> base,
       std::shared_ptr<const model::Tokenizer> tokenizer)
      : config_(config),
        base_(std::move(base)),
        tokenizer_(std::move(tokenizer)),
        rng_(config.simulation.seed ^
             std::hash<std::string>()(config.worker.id)) {}

  Status Init();
  Status Run();
  void Stop() {
    stop_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  WorkerStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  // Runs `call` (returning grpc::Status) until it succeeds, fails in a way
  // retrying cannot fix, or the worker stops. UNAVAILABLE (and
  // DEADLINE_EXCEEDED for idempotent calls) is retried with backoff;
  // NOT_FOUND (unknown session) re-registers first.
  template <typename Call>
  Status WithRetry(const std::string& what, bool idempotent, Call call);
  Status Register();
  Status RegisterOnce();
  Status TrainRound(const proto::Task& task);
  StatusOr<TensorMap> Download(int64_t round, uint64_t* bytes);
  Status Upload(const proto::UpdateHeader& header, const TensorMap& delta,
                uint64_t* bytes);
  void HeartbeatLoop();
  bool SleepFor(milliseconds d);  // false when stopped meanwhile
  double MeasureTokensPerSecond();
  std::string session() {
    std::lock_guard<std::mutex> lock(mu_);
    return session_;
  }

  const WorkerConfig config_;
  std::shared_ptr<const model::LlamaWeights> base_;
  std::shared_ptr<const model::Tokenizer> tokenizer_;
  std::vector<data::Example> train_;
  std::vector<data::Example> eval_;
  std::unique_ptr<peft::PeftModel> peft_;
  std::string adapter_config_json_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<proto::Federation::Stub> stub_;
  size_t chunk_bytes_ = 1 << 20;
  size_t max_message_bytes_ = 16 << 20;
  torch::Device device_{torch::kCPU};
  double tokens_per_second_ = 0;
  std::mt19937_64 rng_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::string session_;                    // GUARDED_BY(mu_)
  int heartbeat_ms_ = 2000;                // GUARDED_BY(mu_)
  WorkerStats stats_;                      // GUARDED_BY(mu_)
  Clock::time_point unreachable_since_{};  // zero = reachable
};

Status WorkerClient::Impl::Init() {
  ASSIGN_OR_RETURN(device_, model::ParseDevice(config_.model.device));
  data::DataOptions d = config_.data;
  ASSIGN_OR_RETURN(std::vector<data::Record> records, data::LoadRecords(d));
  // The held-out split is taken over the whole file before partitioning, so
  // the union of every worker's eval split is the file's eval split.
  const std::vector<bool> held_out =
      data::HeldOutMask(records.size(), d.eval_fraction, d.seed);
  std::vector<size_t> mine;
  if (!config_.shard.empty()) {
    ASSIGN_OR_RETURN(auto shard, data::ParseShard(config_.shard));
    ASSIGN_OR_RETURN(auto parts, data::Partition(records, shard.second,
                                                 d.partition, d.partition_field,
                                                 d.dirichlet_alpha, d.seed));
    mine = parts[shard.first];
    if (mine.empty()) {
      return Status::InvalidArgument(
          "data.shard " + config_.shard + " of '" + d.path +
          "' is empty (partition '" + d.partition +
          "'): use fewer shards or another partition");
    }
  } else {
    for (size_t i = 0; i < records.size(); ++i) mine.push_back(i);
  }
  std::vector<data::Record> train_records, eval_records;
  for (size_t i : mine) {
    (held_out[i] ? eval_records : train_records).push_back(records[i]);
  }
  // Training order is shuffled per epoch by the trainer.
  train_ = data::Tokenize(train_records, *tokenizer_, d);
  eval_ = data::Tokenize(eval_records, *tokenizer_, d);
  const size_t num_records = mine.size();
  if (train_.empty()) {
    return Status::InvalidArgument(
        "data '" + d.path + "'" +
        (config_.shard.empty() ? "" : " shard " + config_.shard) +
        " gave no training examples");
  }
  transport::ChannelOptions channel;
  max_message_bytes_ = static_cast<size_t>(config_.server.max_message_mb) << 20;
  channel.max_message_bytes = max_message_bytes_;
  channel.max_reconnect_backoff = milliseconds(config_.server.backoff_max_ms);
  ASSIGN_OR_RETURN(channel_,
                   transport::MakeChannel(config_.server.address, channel));
  stub_ = proto::Federation::NewStub(channel_);
  FP_LOG_INFO("worker",
              "'{}': {} records -> {} train / {} eval examples{}; server {}",
              config_.worker.id, num_records, train_.size(), eval_.size(),
              config_.shard.empty() ? "" : " (shard " + config_.shard + ")",
              config_.server.address);
  return Status::Ok();
}

bool WorkerClient::Impl::SleepFor(milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return stop_.load(); });
}

template <typename Call>
Status WorkerClient::Impl::WithRetry(const std::string& what, bool idempotent,
                                     Call call) {
  transport::BackoffOptions bo;
  bo.initial = milliseconds(config_.server.backoff_initial_ms);
  bo.max = milliseconds(config_.server.backoff_max_ms);
  transport::Backoff backoff(bo);
  while (!stop_) {
    grpc::Status s = call();
    if (s.ok()) {
      unreachable_since_ = Clock::time_point{};
      return Status::Ok();
    }
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      FP_LOG_WARN("worker",
                  "'{}': {} — the server lost our session ({}); "
                  "registering again",
                  config_.worker.id, what, s.error_message());
      RETURN_IF_ERROR(Register());
      continue;
    }
    if (!transport::IsRetryable(s, idempotent)) {
      return transport::FromGrpcStatus(s,
                                       what + " to " + config_.server.address);
    }
    if (unreachable_since_ == Clock::time_point{}) {
      unreachable_since_ = Clock::now();
    }
    double down =
        std::chrono::duration<double>(Clock::now() - unreachable_since_)
            .count();
    if (config_.server.give_up_after_s > 0 &&
        down > config_.server.give_up_after_s) {
      return Status::Unavailable(
          "server " + config_.server.address + " unreachable for " +
          std::to_string(static_cast<int>(down)) + "s: giving up");
    }
    milliseconds delay = backoff.Next();
    FP_LOG_WARN("worker", "'{}': {} failed ({}: {}); retrying in {} ms",
                config_.worker.id, what,
                transport::GrpcCodeName(s.error_code()), s.error_message(),
                delay.count());
    if (!SleepFor(delay)) break;
  }
  return Status::Unavailable("stopped");
}

double WorkerClient::Impl::MeasureTokensPerSecond() {
  // One timed training step of a throwaway adapter on a local batch: the
  // throughput this worker reports so the server can size its work.
  auto pm = peft::PeftModel::Create(base_, peft::PeftOptions{}, 1);
  if (!pm.ok()) return 0;
  std::vector<size_t> order{0};
  auto batches = data::MakeBatches(train_, order, 1);
  if (batches.empty()) return 0;
  TrainOptions t;
  t.progress_bar = false;
  LocalTrainer trainer(**pm, t, device_);
  auto t0 = Clock::now();
  trainer.Step(batches, 1);
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  return secs > 0 ? batches[0].num_target_tokens / secs : 0;
}

Status WorkerClient::Impl::RegisterOnce() {
  proto::RegisterRequest req;
  proto::WorkerProfile* p = req.mutable_profile();
  p->set_worker_id(config_.worker.id);
  p->set_threads(config_.worker.threads);
  p->set_ram_bytes(config_.worker.ram_mb > 0
                       ? static_cast<uint64_t>(config_.worker.ram_mb) << 20
                       : AvailableRamBytes());
  p->set_tokens_per_second(tokens_per_second_);
  p->set_uplink_bytes_per_second(config_.worker.uplink_mbps * 1e6 / 8);
  p->set_num_samples(train_.size());
  p->set_version("0.1.0");
  proto::RegisterReply reply;
  grpc::ClientContext ctx;
  transport::SetTimeout(
      &ctx,
      milliseconds(static_cast<int64_t>(config_.server.rpc_timeout_s * 1000)));
  grpc::Status s = stub_->Register(&ctx, req, &reply);
  if (!s.ok()) return transport::FromGrpcStatus(s, "Register");
  if (reply.adapter_config_json() != adapter_config_json_ || !peft_) {
    ASSIGN_OR_RETURN(
        peft::PeftOptions options,
        peft::AdapterConfigFromJson(reply.adapter_config_json(),
                                    "the server's adapter config"));
    ASSIGN_OR_RETURN(peft_, peft::PeftModel::Create(base_, options, 1));
    peft_->model().to(device_);
    adapter_config_json_ = reply.adapter_config_json();
  }
  std::lock_guard<std::mutex> lock(mu_);
  session_ = reply.session_id();
  heartbeat_ms_ = std::max<int>(50, reply.heartbeat_interval_ms());
  if (reply.chunk_bytes() > 0) {
    chunk_bytes_ = std::min<size_t>(
        reply.chunk_bytes(),
        transport::ChunkBytesForMessageLimit(max_message_bytes_));
  }
  stats_.registrations++;
  FP_LOG_INFO("worker",
              "'{}' registered with federation '{}' at {} ({:.0f} "
              "tok/s)",
              config_.worker.id, reply.federation_id(), config_.server.address,
              tokens_per_second_);
  return Status::Ok();
}

Status WorkerClient::Impl::Register() {
  transport::BackoffOptions bo;
  bo.initial = milliseconds(config_.server.backoff_initial_ms);
  bo.max = milliseconds(config_.server.backoff_max_ms);
  transport::Backoff backoff(bo);
  auto start = Clock::now();
  while (!stop_) {
    Status s = RegisterOnce();
    if (s.ok()) return s;
    if (s.code() != StatusCode::kUnavailable &&
        s.code() != StatusCode::kDeadlineExceeded) {
      return s;  // e.g. a config mismatch: retrying cannot help
    }
    double down = std::chrono::duration<double>(Clock::now() - start).count();
    if (config_.server.give_up_after_s > 0 &&
        down > config_.server.give_up_after_s) {
      return Status::Unavailable(
          "server " + config_.server.address + " unreachable for " +
          std::to_string(static_cast<int>(down)) + "s: giving up");
    }
    milliseconds delay = backoff.Next();
    FP_LOG_INFO("worker",
                "'{}': server {} not reachable ({}); retrying in {} "
                "ms",
                config_.worker.id, config_.server.address, s.message(),
                delay.count());
    if (!SleepFor(delay)) break;
  }
  return Status::Unavailable("stopped");
}

void WorkerClient::Impl::HeartbeatLoop() {
  while (!stop_) {
    int interval;
    std::string sid;
    {
      std::lock_guard<std::mutex> lock(mu_);
      interval = heartbeat_ms_;
      sid = session_;
    }
    if (!SleepFor(milliseconds(interval))) return;
    if (sid.empty()) continue;
    proto::HeartbeatRequest req;
    req.set_session_id(sid);
    proto::HeartbeatReply reply;
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, milliseconds(std::max(1000, interval)));
    grpc::Status s = stub_->Heartbeat(&ctx, req, &reply);
    if (!s.ok()) {
      FP_LOG_DEBUG("worker", "'{}': heartbeat failed: {}", config_.worker.id,
                   s.error_message());
    }
  }
}

StatusOr<TensorMap> WorkerClient::Impl::Download(int64_t round,
                                                 uint64_t* bytes) {
  TensorMap result;
  Status decode_error;
  Status s = WithRetry("DownloadAdapter", /*idempotent=*/true, [&]() {
    proto::DownloadRequest req;
    req.set_session_id(session());
    req.set_round(static_cast<uint64_t>(round));
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, milliseconds(static_cast<int64_t>(
                                    config_.server.rpc_timeout_s * 1000)));
    transport::DecoderLimits limits;
    limits.expected = transport::SpecsOf(peft_->AdapterTensors());
    transport::TensorDecoder decoder(limits);
    auto reader = stub_->DownloadAdapter(&ctx, req);
    proto::TensorChunk chunk;
    uint64_t n = 0;
    decode_error = Status::Ok();
    while (reader->Read(&chunk)) {
      n += chunk.ByteSizeLong();
      if (decode_error.ok()) decode_error = decoder.Add(chunk);
      if (!decode_error.ok()) ctx.TryCancel();
    }
    grpc::Status st = reader->Finish();
    if (!decode_error.ok()) return grpc::Status::OK;  // reported below
    if (st.ok()) {
      auto done = decoder.Finish();
      if (!done.ok()) {
        decode_error = done.status();
      } else {
        result = std::move(done).value();
        *bytes = n;
      }
    }
    return st;
  });
  RETURN_IF_ERROR(s);
  RETURN_IF_ERROR(decode_error.WithContext("global adapter from the server"));
  return result;
}

Status WorkerClient::Impl::Upload(const proto::UpdateHeader& header,
                                  const TensorMap& delta, uint64_t* bytes) {
  return WithRetry("UploadUpdate", /*idempotent=*/false, [&]() {
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, milliseconds(static_cast<int64_t>(
                                    config_.server.rpc_timeout_s * 1000)));
    proto::UploadReply reply;
    auto writer = stub_->UploadUpdate(&ctx, &reply);
    proto::UploadMessage msg;
    *msg.mutable_header() = header;
    msg.mutable_header()->set_session_id(session());
    uint64_t n = msg.ByteSizeLong();
    bool ok = writer->Write(msg);
    if (ok) {
      Status enc = transport::EncodeTensors(delta, chunk_bytes_,
                                            [&](const proto::TensorChunk& c) {
                                              proto::UploadMessage m;
                                              *m.mutable_chunk() = c;
                                              n += m.ByteSizeLong();
                                              return writer->Write(m);
                                            });
      (void)enc;  // a broken stream shows in Finish()
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    *bytes = n;
    return st;
  });
}

Status WorkerClient::Impl::TrainRound(const proto::Task& task) {
  const int64_t round = static_cast<int64_t>(task.round());
  const proto::TrainSpec& spec = task.train();
  uint64_t down_bytes = 0;
  ASSIGN_OR_RETURN(TensorMap global, Download(round, &down_bytes));
  RETURN_IF_ERROR(peft_->LoadAdapterTensors(global));

  TrainOptions t = config_.train;
  t.epochs = std::max(1, spec.local_epochs());
  t.max_steps = spec.local_steps();
  t.batch_size = std::max(1, spec.batch_size());
  t.optim.lr = spec.lr();
  t.fedprox_mu = spec.fedprox_mu();
  t.seed = spec.seed();
  t.progress_bar = false;
  t.log_every = 0;
  LocalTrainer trainer(*peft_, t, device_);
  if (t.fedprox_mu > 0) trainer.SetProximalAnchor(global);
  auto t0 = Clock::now();
  TrainResult r = trainer.Train(train_, [&](int epoch, double loss) {
    FP_LOG_INFO("worker", "'{}' round {}: local epoch {} mean loss {:.4f}",
                config_.worker.id, round, epoch + 1, loss);
  });
  EvalResult ev = Evaluate(peft_->model(), eval_, t.eval_batch_size, device_);
  double compute = std::chrono::duration<double>(Clock::now() - t0).count();
  if (config_.simulation.slowdown > 1.0) {
    // A slower device: stretch the compute time.
    SleepFor(milliseconds(static_cast<int64_t>(
        (config_.simulation.slowdown - 1.0) * compute * 1000)));
  }
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (config_.simulation.dropout_prob > 0 &&
      std::uniform_real_distribution<double>(0, 1)(rng_) <
          config_.simulation.dropout_prob) {
    FP_LOG_WARN("worker", "'{}' round {}: simulated dropout, not uploading",
                config_.worker.id, round);
    std::lock_guard<std::mutex> lock(mu_);
    stats_.rounds_dropped++;
    stats_.bytes_down += down_bytes;
    return Status::Ok();
  }

  TensorMap delta;
  for (const auto& kv : peft_->AdapterTensors()) {
    delta[kv.first] = (kv.second.detach().to(torch::kCPU, torch::kFloat32) -
                       global.at(kv.first))
                          .contiguous();
  }
  proto::UpdateHeader header;
  header.set_round(static_cast<uint64_t>(round));
  header.set_num_samples(train_.size());
  header.set_train_loss(r.mean_loss);
  header.set_eval_loss(ev.tokens > 0 ? ev.loss : std::nan(""));
  header.set_eval_tokens(static_cast<uint64_t>(ev.tokens));
  header.set_train_seconds(seconds);
  header.set_tokens_per_second(seconds > 0 ? r.tokens / seconds : 0);
  header.set_num_tensors(static_cast<uint32_t>(delta.size()));
  if (r.tokens > 0 && seconds > 0) tokens_per_second_ = r.tokens / seconds;
  if (task.deadline_unix_ms() > 0 && NowUnixMs() > task.deadline_unix_ms()) {
    FP_LOG_WARN("worker",
                "'{}' round {}: past the round deadline; uploading "
                "anyway (the server decides)",
                config_.worker.id, round);
  }
  uint64_t up_bytes = 0;
  Status up = Upload(header, delta, &up_bytes);
  std::lock_guard<std::mutex> lock(mu_);
  stats_.bytes_down += down_bytes;
  stats_.bytes_up += up_bytes;
  if (!up.ok()) {
    stats_.rounds_rejected++;
    FP_LOG_WARN("worker", "'{}' round {}: upload rejected: {}",
                config_.worker.id, round, up.message());
    return Status::Ok();  // the server decided; go on with the next task
  }
  stats_.rounds_trained++;
  FP_LOG_INFO("worker",
              "'{}' round {}: {} steps, train loss {:.4f}, local eval loss "
              "{:.4f}, {:.1f}s, up {} B, down {} B",
              config_.worker.id, round, r.steps, r.mean_loss, ev.loss, seconds,
              up_bytes, down_bytes);
  return Status::Ok();
}

Status WorkerClient::Impl::Run() {
  tokens_per_second_ = MeasureTokensPerSecond();
  RETURN_IF_ERROR(Register());
  std::thread heartbeat([this] { HeartbeatLoop(); });
  struct Joiner {
    Impl* self;
    std::thread* t;
    ~Joiner() {
      self->Stop();
      t->join();
    }
  } joiner{this, &heartbeat};
  while (!stop_) {
    proto::Task task;
    Status s = WithRetry("GetTask", /*idempotent=*/true, [&]() {
      proto::TaskRequest req;
      req.set_session_id(session());
      req.set_wait_ms(static_cast<uint32_t>(config_.server.task_wait_ms));
      grpc::ClientContext ctx;
      transport::SetTimeout(&ctx,
                            milliseconds(config_.server.task_wait_ms + 5000));
      return stub_->GetTask(&ctx, req, &task);
    });
    if (stop_) break;
    RETURN_IF_ERROR(s);
    switch (task.kind()) {
      case proto::Task::WAIT:
        break;
      case proto::Task::SHUTDOWN:
        FP_LOG_INFO("worker", "'{}': server says shut down ({})",
                    config_.worker.id, task.message());
        return Status::Ok();
      case proto::Task::TRAIN: {
        Status t = TrainRound(task);
        if (!t.ok()) {
          if (stop_) break;
          // A round can fail on our side (e.g. the round closed while we
          // downloaded); log it and ask for the next task.
          FP_LOG_WARN("worker", "'{}' round {}: {}", config_.worker.id,
                      task.round(), t.message());
        }
        break;
      }
      default:
        FP_LOG_WARN("worker", "'{}': unknown task kind {}", config_.worker.id,
                    static_cast<int>(task.kind()));
        SleepFor(milliseconds(500));
    }
  }
  return Status::Ok();
}

// ---- WorkerClient
// ------------------------------------------------------------

WorkerClient::WorkerClient(const WorkerConfig& config,
                           std::shared_ptr<const model::LlamaWeights> base,
                           std::shared_ptr<const model::Tokenizer> tokenizer)
    : config_(config),
      impl_(std::make_unique<Impl>(config, std::move(base),
                                   std::move(tokenizer))) {}

WorkerClient::~WorkerClient() = default;

StatusOr<std::unique_ptr<WorkerClient>> WorkerClient::Create(
    const WorkerConfig& config, std::shared_ptr<const model::LlamaWeights> base,
    std::shared_ptr<const model::Tokenizer> tokenizer) {
  std::unique_ptr<WorkerClient> c(
      new WorkerClient(config, std::move(base), std::move(tokenizer)));
  RETURN_IF_ERROR(
      c->impl_->Init().WithContext("worker '" + config.worker.id + "'"));
  return c;
}

Status WorkerClient::Run() { return impl_->Run(); }
void WorkerClient::Stop() { impl_->Stop(); }
WorkerStats WorkerClient::stats() const { return impl_->stats(); }

}  // namespace worker
}  // namespace fedpeft
