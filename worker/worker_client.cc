#include "worker/worker_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <thread>

#include "aggregation/hetero_rank.h"
#include "common/heap.h"
#include "common/logging.h"
#include "common/process_stats.h"
#include "model/loader.h"
#include "peft/peft_io.h"
#include "peft/rank_assignment.h"
#include "proto/fedpeft.grpc.pb.h"
#include "proto/grpc_util.h"
#include "proto/tensor_codec.h"
#include "security/dp.h"
#include "security/secagg.h"
#include "security/secagg_update.h"
#include "worker/compute_slots.h"
#include "worker/distributed_worker.h"
#include "worker/federation_client.h"
#include "worker/local_trainer.h"
#include "worker/round_update.h"

namespace fedpeft {
namespace worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

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
       std::shared_ptr<const model::Tokenizer> tokenizer,
       std::shared_ptr<ComputeSlots> slots)
      : config_(config),
        base_(std::move(base)),
        tokenizer_(std::move(tokenizer)),
        slots_(std::move(slots)),
        rng_(config.simulation.seed ^
             std::hash<std::string>()(config.worker.id)) {}

  Status Init();
  Status Run();
  Status RunRounds();
  void Stop() {
    if (client_) client_->Stop();
  }
  WorkerStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    WorkerStats s = stats_;
    s.registrations = client_ ? client_->registrations() : 0;
    return s;
  }

 private:
  proto::WorkerProfile Profile();
  Status OnRegistered(const proto::RegisterReply& reply);
  // Rebuilds the adapter at `rank` (0 = the registered config's rank).
  Status UseRank(int64_t rank);
  Status TrainRound(const proto::Task& task);
  // Secure aggregation (task.secagg): checks the task against the adapter,
  // then agrees on keys with the round's other workers through the server
  // (rounds 0 and 1), before training.
  struct SecAggSession {
    std::unique_ptr<secagg::Client> client;
    secagg::RoutedShares routed;
    std::vector<std::string> names;
    double scale = 0;
    // Heterogeneous ranks: the worker's update is zero-padded to the
    // global rank (what the zero_pad merge does), so every worker masks
    // one layout; 0 = no padding.
    int64_t pad_rank = 0;
    TensorMap shapes;  // of the masked layout
  };
  StatusOr<SecAggSession> SecAggSetup(const proto::Task& task);
  // Masks `update` (the decoded, clipped update) into the upload's tensors
  // and the header's masked word (round 2).
  Status SecAggMask(SecAggSession& session, const TensorMap& update,
                    bool unclipped, transport::WireTensors* wire,
                    proto::UpdateHeader* header);
  // Answers the server's unmask request (round 3) once it comes.
  Status SecAggUnmask(SecAggSession& session, const proto::Task& task);
  // The adapter of `round` at the current rank, from the server and, for
  // tensors it left out as unchanged, the cache of the last round.
  StatusOr<TensorMap> FetchAdapter(int64_t round, uint64_t* bytes);
  double MeasureTokensPerSecond();
  // A compute slot while this worker trains or encodes (no bound, an empty
  // lease, when the worker is alone in its process).
  ComputeSlots::Lease AcquireCompute() {
    return slots_ ? slots_->Acquire() : ComputeSlots::Lease();
  }

  const WorkerConfig config_;
  std::shared_ptr<const model::LlamaWeights> base_;
  std::shared_ptr<const model::Tokenizer> tokenizer_;
  std::shared_ptr<ComputeSlots> slots_;  // shared by in-process workers
  std::vector<data::Example> train_;
  std::vector<data::Example> eval_;
  std::unique_ptr<FederationClient> client_;
  // The other processes of this worker (worker.distributed); null alone.
  std::unique_ptr<DistributedGroup> group_;
  std::unique_ptr<peft::PeftModel> peft_;
  peft::PeftOptions registered_;  // the server's adapter config
  std::string adapter_config_json_;
  int64_t rank_ = 0;  // rank of peft_ (LoRA); 0 before the first build
  // The last adapter downloaded, at rank cache_rank_, for round cache_round_.
  TensorMap cache_;
  int64_t cache_rank_ = -1;
  uint64_t cache_round_ = 0;
  torch::Device device_{torch::kCPU};
  double tokens_per_second_ = 0;
  std::mt19937_64 rng_;  // dropouts and stochastic rounding
  // Error feedback: the quantization error of the last upload.
  UpdateMemory memory_;
  std::mutex mu_;
  WorkerStats stats_;  // GUARDED_BY(mu_)
};

StatusOr<WorkerData> LoadWorkerData(const WorkerConfig& config,
                                    const model::Tokenizer& tokenizer) {
  data::DataOptions d = config.data;
  RETURN_IF_ERROR(data::ResolveChatTemplate(
      config.model.path, config.model.tokenizer, tokenizer, &d));
  ASSIGN_OR_RETURN(std::vector<data::Record> records, data::LoadRecords(d));
  // The held-out split is taken over the whole file before partitioning, so
  // the union of every worker's eval split is the file's eval split.
  const std::vector<bool> held_out =
      data::HeldOutMask(records.size(), d.eval_fraction, d.seed);
  std::vector<size_t> mine;
  if (!config.shard.empty()) {
    ASSIGN_OR_RETURN(auto shard, data::ParseShard(config.shard));
    ASSIGN_OR_RETURN(auto parts, data::Partition(records, shard.second,
                                                 d.partition, d.partition_field,
                                                 d.dirichlet_alpha, d.seed));
    mine = parts[shard.first];
    if (mine.empty()) {
      return Status::InvalidArgument(
          "data.shard " + config.shard + " of '" + d.path +
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
  WorkerData out;
  out.train = data::Tokenize(train_records, tokenizer, d);
  out.eval = data::Tokenize(eval_records, tokenizer, d);
  out.num_records = mine.size();
  if (out.train.empty()) {
    return Status::InvalidArgument(
        "data '" + d.path + "'" +
        (config.shard.empty() ? "" : " shard " + config.shard) +
        " gave no training examples");
  }
  return out;
}

Status WorkerClient::Impl::Init() {
  ASSIGN_OR_RETURN(device_, model::ParseDevice(config_.model.device));
  ASSIGN_OR_RETURN(WorkerData local, LoadWorkerData(config_, *tokenizer_));
  train_ = std::move(local.train);
  eval_ = std::move(local.eval);
  if (config_.worker.distributed.enabled()) {
    // Every rank has loaded its data: join them (blocks until all have).
    ASSIGN_OR_RETURN(
        group_, DistributedGroup::Join(config_.worker.distributed, device_));
    RETURN_IF_ERROR(
        group_->ExpectSame(ExamplesFingerprint(train_), "training data"));
  }
  client_ = std::make_unique<FederationClient>(
      config_.worker.id, config_.server, [this] { return Profile(); },
      [this](const proto::RegisterReply& r) { return OnRegistered(r); });
  RETURN_IF_ERROR(client_->Connect());
  FP_LOG_INFO("worker",
              "'{}': {} records -> {} train / {} eval examples{}; server {}{}",
              config_.worker.id, local.num_records, train_.size(), eval_.size(),
              config_.shard.empty() ? "" : " (shard " + config_.shard + ")",
              config_.server.address,
              group_ ? fmt::format("; {} processes (worker.distributed)",
                                   group_->world_size())
                     : std::string());
  return Status::Ok();
}

double WorkerClient::Impl::MeasureTokensPerSecond() {
  ComputeSlots::Lease lease = AcquireCompute();
  // A simulated slow device reports the speed it emulates.
  return worker::MeasureTokensPerSecond(base_, train_, device_) /
         std::max(1.0, config_.simulation.slowdown);
}

proto::WorkerProfile WorkerClient::Impl::Profile() {
  proto::WorkerProfile p;
  p.set_worker_id(config_.worker.id);
  p.set_role(proto::ROLE_WORKER);
  p.set_threads(config_.worker.threads);
  p.set_ram_bytes(config_.worker.ram_mb > 0
                      ? static_cast<uint64_t>(config_.worker.ram_mb) << 20
                      : AvailableRamBytes());
  p.set_tokens_per_second(tokens_per_second_);
  p.set_uplink_bytes_per_second(config_.worker.uplink_mbps * 1e6 / 8);
  p.set_num_samples(train_.size());
  p.set_seq_len(static_cast<uint32_t>(config_.data.max_seq_len));
  p.set_version("0.1.0");
  return p;
}

Status WorkerClient::Impl::OnRegistered(const proto::RegisterReply& reply) {
  // A registration is a new session, maybe with a restarted server that
  // numbers its rounds afresh: nothing cached from before is trusted.
  cache_.clear();
  cache_rank_ = -1;
  cache_round_ = 0;
  memory_ = UpdateMemory();
  if (reply.adapter_config_json() == adapter_config_json_ && peft_) {
    return Status::Ok();
  }
  ASSIGN_OR_RETURN(registered_,
                   peft::AdapterConfigFromJson(reply.adapter_config_json(),
                                               "the server's adapter config"));
  adapter_config_json_ = reply.adapter_config_json();
  peft_.reset();
  cache_.clear();
  cache_rank_ = -1;
  return UseRank(0);
}

Status WorkerClient::Impl::UseRank(int64_t rank) {
  int64_t r = 0;
  ASSIGN_OR_RETURN(peft::PeftOptions options,
                   OptionsAtRank(registered_, rank, &r));
  if (peft_ && r == rank_) return Status::Ok();
  ASSIGN_OR_RETURN(peft_, peft::PeftModel::Create(base_, options, 1));
  peft_->model().to(device_);
  rank_ = r;
  return Status::Ok();
}

StatusOr<TensorMap> WorkerClient::Impl::FetchAdapter(int64_t round,
                                                     uint64_t* bytes) {
  const auto expected = transport::SpecsOf(peft_->AdapterTensors());
  const bool use_cache = cache_rank_ == rank_ && !cache_.empty();
  ASSIGN_OR_RETURN(
      TensorMap got,
      client_->Download(round, use_cache ? cache_round_ : 0, expected, bytes));
  if (use_cache) {
    TensorMap merged = cache_;
    for (auto& kv : got) merged[kv.first] = std::move(kv.second);
    got = std::move(merged);
  }
  for (const auto& kv : expected) {
    if (!got.count(kv.first)) {
      return Status::FailedPrecondition("the server left out '" + kv.first +
                                        "' as unchanged, but it is not in "
                                        "our cache");
    }
  }
  cache_ = got;
  cache_rank_ = rank_;
  cache_round_ = static_cast<uint64_t>(round);
  return got;
}

Status WorkerClient::Impl::TrainRound(const proto::Task& task) {
  const int64_t round = static_cast<int64_t>(task.round());
  RETURN_IF_ERROR(UseRank(task.rank()));
  std::optional<SecAggSession> secure;
  if (task.has_secagg()) {
    ASSIGN_OR_RETURN(secure, SecAggSetup(task));
  }
  uint64_t down_bytes = 0;
  auto fetched = FetchAdapter(round, &down_bytes);
  if (!fetched.ok() && !cache_.empty() &&
      (fetched.status().code() == StatusCode::kFailedPrecondition ||
       fetched.status().code() == StatusCode::kInvalidArgument)) {
    cache_.clear();  // out of step with the server: take everything
    fetched = FetchAdapter(round, &down_bytes);
  }
  RETURN_IF_ERROR(fetched.status());
  TensorMap global = std::move(fetched).value();
  RETURN_IF_ERROR(peft_->LoadAdapterTensors(global));

  TrainOptions t = TaskTrainOptions(config_.train, task, global);
  if (group_) {
    // The other ranks train the same round on their shares of each batch.
    RETURN_IF_ERROR(LeadRound(*group_, round, t, *peft_));
    MakeDataParallel(*group_, &t);
  }
  // The time waited for a compute slot is not compute: t0 starts after.
  ComputeSlots::Lease lease = AcquireCompute();
  LocalTrainer trainer(*peft_, t, device_);
  if (t.fedprox_mu > 0) trainer.SetProximalAnchor(global);
  auto t0 = Clock::now();
  TrainResult r;
  try {
    r = trainer.Train(train_, [&](int epoch, double loss) {
      FP_LOG_INFO("worker", "'{}' round {}: local epoch {} mean loss {:.4f}",
                  config_.worker.id, round, epoch + 1, loss);
    });
  } catch (const std::exception& e) {
    // Only a data-parallel step throws: the group says what broke.
    return group_ && !group_->status().ok() ? group_->status()
                                            : Status::Internal(e.what());
  }
  EvalResult ev = Evaluate(peft_->model(), eval_, t.eval_batch_size, device_);
  double compute = std::chrono::duration<double>(Clock::now() - t0).count();
  lease.Release();  // a simulated slow device waits without a slot
  if (config_.simulation.slowdown > 1.0) {
    // A slower device: stretch the compute time.
    client_->SleepFor(milliseconds(static_cast<int64_t>(
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

  // Only what this round trained travels: frozen tensors, FFA-LoRA's A and
  // the layers below the trainable ones are left out (a zero delta).
  // The update's arithmetic (pruning's SVD, clipping, quantization) takes a
  // compute slot again.
  lease = AcquireCompute();
  TensorMap local;
  for (const auto& kv : peft_->AdapterTensors()) {
    local[kv.first] = kv.second.detach().to(torch::kCPU, torch::kFloat32);
  }
  ASSIGN_OR_RETURN(
      RoundUpdate update,
      BuildRoundUpdate(local, global, trainer.trained_keys(), rank_, task,
                       config_.worker.id, &memory_, &rng_));
  lease.Release();
  EncodedUpdate& encoded = update.encoded;
  proto::UpdateHeader header;
  if (secure) {
    RETURN_IF_ERROR(SecAggMask(*secure, encoded.decoded, update.unclipped,
                               &encoded.wire, &header));
  }
  if (config_.simulation.emulate_uplink && config_.worker.uplink_mbps > 0) {
    uint64_t payload = 0;
    for (const auto& kv : encoded.wire) payload += kv.second.payload.size();
    const double bytes =
        static_cast<double>(down_bytes) + static_cast<double>(payload);
    client_->SleepFor(milliseconds(static_cast<int64_t>(
        1000.0 * bytes / (config_.worker.uplink_mbps * 1e6 / 8))));
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  header.MergeFrom(RoundUpdateHeader(task, update, r, ev, train_.size(),
                                     seconds, secure.has_value()));
  if (r.tokens > 0 && seconds > 0) tokens_per_second_ = r.tokens / seconds;
  if (task.deadline_unix_ms() > 0 && NowUnixMs() > task.deadline_unix_ms()) {
    FP_LOG_WARN("worker",
                "'{}' round {}: past the round deadline; uploading "
                "anyway (the server decides)",
                config_.worker.id, round);
  }
  uint64_t up_bytes = 0;
  const transport::Schema schema =
      transport::Schema::OfKeys(peft_->AdapterTensors());
  // Quantized and masked tensors travel by index (a name costs more than a
  // small tensor's 4-bit payload).
  Status up = client_->Upload(header, encoded.wire,
                              update.bits < 16 || secure ? &schema : nullptr,
                              &up_bytes);
  std::unique_lock<std::mutex> lock(mu_);
  stats_.bytes_down += down_bytes;
  stats_.bytes_up += up_bytes;
  stats_.tensors_uploaded += static_cast<int64_t>(encoded.wire.size());
  if (!up.ok()) {
    stats_.rounds_rejected++;
    FP_LOG_WARN("worker", "'{}' round {}: upload rejected: {}",
                config_.worker.id, round, up.message());
    return Status::Ok();  // the server decided; go on with the next task
  }
  stats_.rounds_trained++;
  FP_LOG_INFO(
      "worker",
      "'{}' round {}: rank {}, {} steps, {} of {} tensors trained, "
      "train loss {:.4f}, local eval loss {:.4f}, {:.1f}s, up {} B{}, "
      "down {} B{}",
      config_.worker.id, round, rank_, r.steps, update.tensors_trained,
      local.size(), r.mean_loss, ev.loss, seconds, up_bytes,
      secure             ? std::string(" (masked)")
      : update.bits < 32 ? fmt::format(" ({}-bit)", update.bits)
                         : std::string(),
      down_bytes,
      update.clip > 0
          ? fmt::format(", update norm {:.4g}{} (clip {:.4g})", update.norm,
                        update.unclipped ? "" : " clipped", update.clip)
          : std::string());
  if (secure) {
    lock.unlock();  // the unmask request may be a round's deadline away
    Status unmasked = SecAggUnmask(*secure, task);
    if (!unmasked.ok()) {
      FP_LOG_WARN("worker", "'{}' round {}: secure aggregation: {}",
                  config_.worker.id, round, unmasked.message());
    }
  }
  return Status::Ok();
}

namespace {

// The steady-clock time of a task's deadline plus `slack`; a task without
// a deadline gets five minutes.
Clock::time_point TaskDeadline(const proto::Task& task,
                               std::chrono::seconds slack) {
  if (task.deadline_unix_ms() == 0) {
    return Clock::now() + std::chrono::minutes(5) + slack;
  }
  const int64_t left = static_cast<int64_t>(task.deadline_unix_ms()) -
                       static_cast<int64_t>(NowUnixMs());
  return Clock::now() + milliseconds(std::max<int64_t>(0, left)) + slack;
}

}  // namespace

StatusOr<WorkerClient::Impl::SecAggSession> WorkerClient::Impl::SecAggSetup(
    const proto::Task& task) {
  const proto::SecAggTask& t = task.secagg();
  const int64_t round = static_cast<int64_t>(task.round());
  SecAggSession session;
  session.names.assign(t.tensors().begin(), t.tensors().end());
  session.scale = t.scale();
  // The layout must be the one the server will decode: the global
  // adapter's shapes.
  for (const auto& kv : peft_->AdapterTensors()) {
    session.shapes[kv.first] = kv.second.detach();
  }
  if (task.rank() > 0) {
    session.pad_rank = registered_.lora.r;
    session.shapes = aggregation::ZeroPadRank(session.shapes, session.pad_rank);
  }
  if (!std::is_sorted(session.names.begin(), session.names.end())) {
    return Status::InvalidArgument("secagg task: tensors are not sorted");
  }
  ASSIGN_OR_RETURN(uint64_t length,
                   secagg::MaskedVectorLength(session.shapes, session.names));
  if (length != t.vector_length()) {
    return Status::InvalidArgument(
        "secagg task: " + std::to_string(t.vector_length()) +
        " words announced, this adapter makes " + std::to_string(length));
  }
  if (!(std::isfinite(t.scale()) && t.scale() > 0)) {
    return Status::InvalidArgument("secagg task: scale " +
                                   std::to_string(t.scale()) +
                                   " (expected a number > 0)");
  }
  secagg::Params params;
  params.num_clients = t.num_clients();
  params.threshold = t.threshold();
  params.vector_length = t.vector_length();
  params.session_id = t.session_id();
  ASSIGN_OR_RETURN(session.client, secagg::Client::Create(t.index(), params));
  const Clock::time_point until = TaskDeadline(task, std::chrono::seconds(0));

  ASSIGN_OR_RETURN(secagg::AdvertiseMsg adv, session.client->Advertise());
  ASSIGN_OR_RETURN(std::string reply,
                   client_->SecAgg(round, proto::SecAggRequest::ADVERTISE,
                                   secagg::ToBytes(adv), until));
  ASSIGN_OR_RETURN(auto u1,
                   secagg::FromBytes<secagg::AdvertiseBroadcast>(reply));
  ASSIGN_OR_RETURN(secagg::ShareKeysMsg shares, session.client->ShareKeys(u1));
  ASSIGN_OR_RETURN(reply,
                   client_->SecAgg(round, proto::SecAggRequest::SHARE_KEYS,
                                   secagg::ToBytes(shares), until));
  ASSIGN_OR_RETURN(session.routed,
                   secagg::FromBytes<secagg::RoutedShares>(reply));
  FP_LOG_INFO("worker",
              "'{}' round {}: secure aggregation keys agreed with {} of {} "
              "workers",
              config_.worker.id, round, session.routed.shares.size(),
              t.num_clients() - 1);
  return session;
}

Status WorkerClient::Impl::SecAggMask(SecAggSession& session,
                                      const TensorMap& update, bool unclipped,
                                      transport::WireTensors* wire,
                                      proto::UpdateHeader* header) {
  const TensorMap& shapes = session.shapes;
  const TensorMap padded =
      session.pad_rank > 0 ? aggregation::ZeroPadRank(update, session.pad_rank)
                           : update;
  ASSIGN_OR_RETURN(std::vector<uint32_t> words,
                   secagg::EncodeUpdateWords(padded, shapes, session.names,
                                             session.scale, unclipped, rng_));
  ASSIGN_OR_RETURN(secagg::MaskedInputMsg masked,
                   session.client->MaskedInput(words, session.routed));
  wire->clear();
  size_t offset = 0;
  for (const std::string& name : session.names) {
    const torch::Tensor& like = shapes.at(name);
    const size_t n = static_cast<size_t>(like.numel());
    (*wire)[name] = transport::EncodeMaskedWords(
        like.sizes().vec(), masked.masked.data() + offset, n);
    offset += n;
  }
  header->set_masked_unclipped(masked.masked.back());
  header->set_rank(0);  // the global adapter's shapes
  return Status::Ok();
}

Status WorkerClient::Impl::SecAggUnmask(SecAggSession& session,
                                        const proto::Task& task) {
  const int64_t round = static_cast<int64_t>(task.round());
  // The request comes once the round's uploads are in (at its deadline at
  // the latest); the server waits a while for the answers.
  const Clock::time_point until = TaskDeadline(task, std::chrono::seconds(60));
  ASSIGN_OR_RETURN(
      std::string reply,
      client_->SecAgg(round, proto::SecAggRequest::UNMASK, "", until));
  ASSIGN_OR_RETURN(auto request,
                   secagg::FromBytes<secagg::UnmaskRequest>(reply));
  ASSIGN_OR_RETURN(secagg::UnmaskMsg answer, session.client->Unmask(request));
  RETURN_IF_ERROR(client_
                      ->SecAgg(round, proto::SecAggRequest::UNMASK,
                               secagg::ToBytes(answer), until)
                      .status());
  FP_LOG_INFO("worker",
              "'{}' round {}: secure aggregation: unmasked ({} survivors, {} "
              "dropped)",
              config_.worker.id, round, request.survivors.size(),
              request.dropped.size());
  return Status::Ok();
}

Status WorkerClient::Impl::Run() {
  Status s = RunRounds();
  if (group_) {
    // Whatever ended the run ends the other ranks too, with its status.
    Status told = LeadShutdown(*group_, s);
    if (!told.ok() && s.ok()) s = told;
  }
  return s;
}

Status WorkerClient::Impl::RunRounds() {
  tokens_per_second_ = MeasureTokensPerSecond();
  RETURN_IF_ERROR(client_->Register());
  client_->StartHeartbeat();
  while (!client_->stopped()) {
    auto task = client_->GetTask();
    if (client_->stopped()) break;
    RETURN_IF_ERROR(task.status());
    switch (task->kind()) {
      case proto::Task::WAIT:
        break;
      case proto::Task::SHUTDOWN:
        FP_LOG_INFO("worker", "'{}': server says shut down ({})",
                    config_.worker.id, task->message());
        client_->Stop();
        return Status::Ok();
      case proto::Task::TRAIN: {
        Status t = TrainRound(*task);
        // Idle until the next round without the step's peak resident
        // (a no-op unless this process keeps freed memory).
        ReturnFreedMemory();
        if (!t.ok()) {
          // The ranks of a broken group may disagree: stop, do not go on.
          if (group_ && !group_->status().ok()) return group_->status();
          if (client_->stopped()) break;
          // A round can fail on our side (e.g. the round closed while we
          // downloaded); log it and ask for the next task.
          FP_LOG_WARN("worker", "'{}' round {}: {}", config_.worker.id,
                      task->round(), t.message());
        }
        break;
      }
      default:
        FP_LOG_WARN("worker", "'{}': unknown task kind {}", config_.worker.id,
                    static_cast<int>(task->kind()));
        client_->SleepFor(milliseconds(500));
    }
  }
  return Status::Ok();
}

// ---- WorkerClient ----------------------------------------------------------

WorkerClient::WorkerClient(const WorkerConfig& config,
                           std::shared_ptr<const model::LlamaWeights> base,
                           std::shared_ptr<const model::Tokenizer> tokenizer,
                           std::shared_ptr<ComputeSlots> slots)
    : config_(config),
      impl_(std::make_unique<Impl>(config, std::move(base),
                                   std::move(tokenizer), std::move(slots))) {}

WorkerClient::~WorkerClient() = default;

StatusOr<std::unique_ptr<WorkerClient>> WorkerClient::Create(
    const WorkerConfig& config, std::shared_ptr<const model::LlamaWeights> base,
    std::shared_ptr<const model::Tokenizer> tokenizer,
    std::shared_ptr<ComputeSlots> slots) {
  std::unique_ptr<WorkerClient> c(new WorkerClient(
      config, std::move(base), std::move(tokenizer), std::move(slots)));
  RETURN_IF_ERROR(
      c->impl_->Init().WithContext("worker '" + config.worker.id + "'"));
  return c;
}

Status WorkerClient::Run() { return impl_->Run(); }
void WorkerClient::Stop() { impl_->Stop(); }
WorkerStats WorkerClient::stats() const { return impl_->stats(); }

}  // namespace worker
}  // namespace fedpeft
