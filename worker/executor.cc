#include "worker/executor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/logging.h"
#include "common/process_stats.h"
#include "data/record_filter.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "peft/peft_io.h"
#include "peft/peft_model.h"
#include "proto/fedpeft.grpc.pb.h"
#include "worker/federation_client.h"
#include "worker/local_trainer.h"
#include "worker/round_update.h"

namespace fedpeft {
namespace worker {
// Named, not anonymous: Executor::Impl holds these (-Wsubobject-linkage).
namespace executor_internal {

using Clock = std::chrono::steady_clock;

// Each user's error-feedback residual between its rounds: in memory, or
// one safetensors file per user under `dir` (written atomically).
class UserStateStore {
 public:
  explicit UserStateStore(std::string dir) : dir_(std::move(dir)) {}

  Status Init() {
    if (dir_.empty()) return Status::Ok();
    return EnsureDirectory(dir_);
  }

  StatusOr<UpdateMemory> Load(const std::string& user) {
    if (dir_.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = memory_.find(user);
      return it == memory_.end() ? UpdateMemory() : it->second;
    }
    const std::string path = PathOf(user);
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return UpdateMemory();
    ASSIGN_OR_RETURN(model::SafetensorsContents c,
                     model::ReadSafetensors(path));
    UpdateMemory m;
    m.residual = std::move(c.tensors);
    auto rank = c.metadata.find("rank");
    char* end = nullptr;
    if (rank != c.metadata.end()) {
      m.rank = std::strtoll(rank->second.c_str(), &end, 10);
    }
    if (rank == c.metadata.end() || rank->second.empty() || *end != '\0' ||
        m.rank < 0) {
      return Status::Corruption(
          path + ": metadata 'rank' must be a rank >= 0, got " +
          (rank == c.metadata.end() ? std::string("none")
                                    : "'" + rank->second + "'"));
    }
    return m;
  }

  Status Save(const std::string& user, const UpdateMemory& m) {
    if (dir_.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (m.rank < 0) {
        memory_.erase(user);
      } else {
        memory_[user] = m;
      }
      return Status::Ok();
    }
    const std::string path = PathOf(user);
    if (m.rank < 0) {
      std::error_code ec;
      std::filesystem::remove(path, ec);
      return Status::Ok();
    }
    return model::WriteSafetensors(path, m.residual,
                                   {{"rank", std::to_string(m.rank)}});
  }

 private:
  std::string PathOf(const std::string& user) const {
    std::string name = user;
    std::replace(name.begin(), name.end(), '/', '_');
    return JoinPath(dir_, name + ".safetensors");
  }

  const std::string dir_;
  std::mutex mu_;
  std::map<std::string, UpdateMemory> memory_;  // GUARDED_BY(mu_)
};

// One compute thread's adapter: rebuilt when the rank or the server's
// adapter config changes.
struct ThreadModel {
  std::unique_ptr<peft::PeftModel> peft;
  int64_t rank = -1;
  uint64_t config_version = 0;
};

}  // namespace executor_internal

using executor_internal::Clock;
using executor_internal::ThreadModel;
using executor_internal::UserStateStore;

class Executor::Impl {
 public:
  Impl(const WorkerConfig& config,
       std::shared_ptr<const model::LlamaWeights> base,
       std::shared_ptr<const model::Tokenizer> tokenizer)
      : config_(config),
        base_(std::move(base)),
        tokenizer_(std::move(tokenizer)),
        store_(config.executor.state_dir) {}

  Status Init();
  Status Run();
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      cv_.notify_all();
    }
    if (client_) client_->Stop();
  }
  ExecutorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  proto::WorkerProfile Profile();
  Status OnRegistered(const proto::RegisterReply& reply);
  void ComputeLoop();
  // One user's round; errors are the task's (logged by the caller).
  Status TrainUser(ThreadModel& slot, const proto::Task& task);
  Status UseRank(ThreadModel& slot, int64_t rank);
  std::vector<data::Example> ExamplesOf(uint32_t index) const;
  uint32_t IndexOf(const std::string& user) const;
  void Count(int64_t ExecutorStats::*field) {
    std::lock_guard<std::mutex> lock(mu_);
    ++(stats_.*field);
  }

  const WorkerConfig config_;
  std::shared_ptr<const model::LlamaWeights> base_;
  std::shared_ptr<const model::Tokenizer> tokenizer_;
  data::DataOptions data_;             // with the chat template resolved
  std::vector<data::Record> records_;  // training records (no held-out)
  // Per hosted user (index - first_user): its records in records_.
  std::vector<std::vector<size_t>> user_records_;
  torch::Device device_{torch::kCPU};
  int threads_ = 1;
  UserStateStore store_;
  std::unique_ptr<FederationClient> client_;
  double tokens_per_second_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<proto::Task> queue_;    // GUARDED_BY(mu_)
  uint64_t round_ = 0;               // newest round seen; GUARDED_BY
  bool stopping_ = false;            // GUARDED_BY(mu_)
  peft::PeftOptions registered_;     // GUARDED_BY(mu_)
  std::string adapter_config_json_;  // GUARDED_BY(mu_)
  uint64_t config_version_ = 0;      // GUARDED_BY(mu_)
  ExecutorStats stats_;              // GUARDED_BY(mu_)
};

Status Executor::Impl::Init() {
  const ExecutorOptions& e = config_.executor;
  if (e.users <= 0) {
    return Status::InvalidArgument(
        "executor.users: an executor hosts at least one user, got " +
        std::to_string(e.users));
  }
  ASSIGN_OR_RETURN(device_, model::ParseDevice(config_.model.device));
  RETURN_IF_ERROR(store_.Init());
  threads_ =
      e.threads > 0
          ? e.threads
          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  data_ = config_.data;
  RETURN_IF_ERROR(data::ResolveChatTemplate(
      config_.model.path, config_.model.tokenizer, *tokenizer_, &data_));
  ASSIGN_OR_RETURN(std::vector<data::Record> all, data::LoadRecords(data_));
  // The held-out split is the server's: no user trains on it.
  const std::vector<bool> held_out =
      data::HeldOutMask(all.size(), data_.eval_fraction, data_.seed);
  std::vector<data::Record> train;
  for (size_t i = 0; i < all.size(); ++i) {
    if (!held_out[i]) train.push_back(std::move(all[i]));
  }
  // A user whose records make no example (a prompt longer than
  // max_seq_len) could never answer: such records go to nobody.
  size_t unusable = 0;
  records_ = data::RecordsWithExamples(std::move(train), *tokenizer_, data_,
                                       &unusable);
  if (records_.empty()) {
    return Status::InvalidArgument(
        "data '" + data_.path + "': no training record makes an example of " +
        "at least one target token within max_seq_len " +
        std::to_string(data_.max_seq_len));
  }
  if (unusable > 0) {
    FP_LOG_WARN("executor",
                "'{}': {} training records make no example within "
                "max_seq_len {} (prompts too long?): left out",
                config_.worker.id, unusable, data_.max_seq_len);
  }
  const int population =
      e.population > 0 ? e.population : e.first_user + e.users;
  const int parts =
      std::max(1, std::min(population, static_cast<int>(records_.size())));
  ASSIGN_OR_RETURN(
      auto partition,
      data::Partition(records_, parts, data_.partition, data_.partition_field,
                      data_.dirichlet_alpha, data_.seed));
  int empty = 0;
  user_records_.resize(static_cast<size_t>(e.users));
  for (int i = 0; i < e.users; ++i) {
    user_records_[i] = partition[(e.first_user + i) % parts];
    if (user_records_[i].empty()) ++empty;
  }
  if (empty > 0) {
    return Status::InvalidArgument(
        "data '" + data_.path + "': partition '" + data_.partition + "' into " +
        std::to_string(parts) + " parts leaves " + std::to_string(empty) +
        " of this executor's " + std::to_string(e.users) +
        " users without records: use fewer users (executor.population) or "
        "data.partition iid");
  }
  client_ = std::make_unique<FederationClient>(
      config_.worker.id, config_.server, [this] { return Profile(); },
      [this](const proto::RegisterReply& r) { return OnRegistered(r); });
  RETURN_IF_ERROR(client_->Connect());
  FP_LOG_INFO("executor",
              "'{}': users {}..{} of {}; {} training records in {} parts{}; "
              "{} compute threads; server {}",
              config_.worker.id, e.first_user, e.first_user + e.users - 1,
              population, records_.size(), parts,
              population > parts
                  ? fmt::format(" (users past {} repeat parts with their own "
                                "seeds)",
                                parts)
                  : std::string(),
              threads_, config_.server.address);
  return Status::Ok();
}

proto::WorkerProfile Executor::Impl::Profile() {
  proto::WorkerProfile p;
  p.set_worker_id(config_.worker.id);
  p.set_role(proto::ROLE_WORKER);
  p.set_threads(threads_);
  p.set_ram_bytes(static_cast<uint64_t>(config_.worker.ram_mb) << 20);
  p.set_tokens_per_second(tokens_per_second_);
  p.set_uplink_bytes_per_second(config_.worker.uplink_mbps * 1e6 / 8);
  p.set_seq_len(static_cast<uint32_t>(config_.data.max_seq_len));
  p.set_version("0.1.0");
  p.set_hosted_users(static_cast<uint32_t>(config_.executor.users));
  p.set_first_user(static_cast<uint32_t>(config_.executor.first_user));
  return p;
}

Status Executor::Impl::OnRegistered(const proto::RegisterReply& reply) {
  ASSIGN_OR_RETURN(peft::PeftOptions options,
                   peft::AdapterConfigFromJson(reply.adapter_config_json(),
                                               "the server's adapter config"));
  std::lock_guard<std::mutex> lock(mu_);
  // A new session: tasks of the old one would be refused.
  queue_.clear();
  if (reply.adapter_config_json() != adapter_config_json_) {
    registered_ = options;
    adapter_config_json_ = reply.adapter_config_json();
    ++config_version_;
  }
  return Status::Ok();
}

uint32_t Executor::Impl::IndexOf(const std::string& user) const {
  // "<executor>/u<index>" (coordinator/round_types.h, HostedUserId).
  const size_t u = user.rfind("/u");
  return u == std::string::npos ? UINT32_MAX
                                : static_cast<uint32_t>(std::strtoul(
                                      user.c_str() + u + 2, nullptr, 10));
}

std::vector<data::Example> Executor::Impl::ExamplesOf(uint32_t index) const {
  std::vector<data::Record> mine;
  for (size_t i : user_records_[index - config_.executor.first_user]) {
    mine.push_back(records_[i]);
  }
  return data::Tokenize(mine, *tokenizer_, data_);
}

Status Executor::Impl::UseRank(ThreadModel& slot, int64_t rank) {
  peft::PeftOptions options;
  uint64_t version = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    options = registered_;
    version = config_version_;
  }
  int64_t r = 0;
  ASSIGN_OR_RETURN(options, OptionsAtRank(options, rank, &r));
  if (slot.peft && slot.rank == r && slot.config_version == version) {
    return Status::Ok();
  }
  ASSIGN_OR_RETURN(slot.peft, peft::PeftModel::Create(base_, options, 1));
  slot.peft->model().to(device_);
  slot.rank = r;
  slot.config_version = version;
  return Status::Ok();
}

Status Executor::Impl::TrainUser(ThreadModel& slot, const proto::Task& task) {
  const std::string& user = task.user_id();
  const uint32_t index = IndexOf(user);
  const ExecutorOptions& e = config_.executor;
  if (index < static_cast<uint32_t>(e.first_user) ||
      index - e.first_user >= static_cast<uint32_t>(e.users)) {
    return Status::InvalidArgument("a task for '" + user +
                                   "', which this executor does not host");
  }
  const int64_t round = static_cast<int64_t>(task.round());
  const proto::TrainSpec& spec = task.train();
  RETURN_IF_ERROR(UseRank(slot, task.rank()));
  const auto t0 = Clock::now();
  uint64_t down = 0;
  ASSIGN_OR_RETURN(
      TensorMap global,
      client_->Download(round, 0,
                        transport::SpecsOf(slot.peft->AdapterTensors()), &down,
                        user));
  RETURN_IF_ERROR(slot.peft->LoadAdapterTensors(global));
  const std::vector<data::Example> examples = ExamplesOf(index);
  if (examples.empty()) {
    return Status::FailedPrecondition("'" + user +
                                      "' has no training example of at "
                                      "least one target token");
  }
  TrainOptions t = TaskTrainOptions(config_.train, task, global);
  LocalTrainer trainer(*slot.peft, t, device_);
  if (t.fedprox_mu > 0) trainer.SetProximalAnchor(global);
  const auto t_train = Clock::now();
  const TrainResult r = trainer.Train(examples);
  const double train_seconds =
      std::chrono::duration<double>(Clock::now() - t_train).count();
  std::mt19937_64 rng(spec.seed() ^ std::hash<std::string>()(user));
  if (config_.simulation.dropout_prob > 0 &&
      std::uniform_real_distribution<double>(0, 1)(rng) <
          config_.simulation.dropout_prob) {
    Count(&ExecutorStats::users_dropped);
    return Status::Ok();
  }
  TensorMap local;
  for (const auto& kv : slot.peft->AdapterTensors()) {
    local[kv.first] = kv.second.detach().to(torch::kCPU, torch::kFloat32);
  }
  // The store is touched only when uploads carry error feedback.
  const bool feedback = UsesErrorFeedback(task);
  UpdateMemory memory;
  if (feedback) {
    ASSIGN_OR_RETURN(memory, store_.Load(user));
  }
  ASSIGN_OR_RETURN(RoundUpdate update,
                   BuildRoundUpdate(local, global, trainer.trained_keys(),
                                    slot.rank, task, user, &memory, &rng));
  if (feedback) RETURN_IF_ERROR(store_.Save(user, memory));
  const double seconds =
      std::chrono::duration<double>(Clock::now() - t0).count();
  const proto::UpdateHeader header = RoundUpdateHeader(
      task, update, r, EvalResult{}, examples.size(), seconds, false);
  const transport::Schema schema =
      transport::Schema::OfKeys(slot.peft->AdapterTensors());
  uint64_t up = 0;
  Status sent =
      client_->Upload(header, update.encoded.wire,
                      update.bits < 16 ? &schema : nullptr, &up, user);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_down += down;
    stats_.bytes_up += up;
    stats_.train_seconds += train_seconds;
    stats_.user_seconds +=
        std::chrono::duration<double>(Clock::now() - t0).count();
    ++(sent.ok() ? stats_.users_trained : stats_.users_rejected);
  }
  if (!sent.ok()) {
    FP_LOG_WARN("executor", "'{}' round {}: upload rejected: {}", user, round,
                sent.message());
  } else {
    FP_LOG_DEBUG(
        "executor",
        "'{}' round {}: {} examples, {} steps, train loss {:.4f}, "
        "{:.2f}s, up {} B{}",
        user, round, examples.size(), r.steps, r.mean_loss, seconds, up,
        update.clip > 0
            ? fmt::format(", update norm {:.4g}{} (clip {:.4g})", update.norm,
                          update.unclipped ? "" : " clipped", update.clip)
            : std::string());
  }
  return Status::Ok();
}

void Executor::Impl::ComputeLoop() {
  ThreadModel slot;
  while (true) {
    proto::Task next;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      next = std::move(queue_.front());
      queue_.pop_front();
      if (next.round() < round_) {
        // A newer round has opened: this one closed without it.
        ++stats_.users_expired;
        continue;
      }
    }
    Status s = TrainUser(slot, next);
    if (!s.ok() && !client_->stopped()) {
      Count(&ExecutorStats::users_failed);
      FP_LOG_WARN("executor", "'{}' round {}: {}", next.user_id(), next.round(),
                  s.message());
    }
  }
}

Status Executor::Impl::Run() {
  // Timed on the first user's data: every user reports this machine's
  // throughput (they share it).
  tokens_per_second_ = MeasureTokensPerSecond(
      base_, ExamplesOf(static_cast<uint32_t>(config_.executor.first_user)),
      device_);
  RETURN_IF_ERROR(client_->Register());
  client_->StartHeartbeat();
  std::vector<std::thread> threads;
  for (int i = 0; i < threads_; ++i) {
    threads.emplace_back([this] { ComputeLoop(); });
  }
  Status result = Status::Ok();
  uint64_t rounds_seen = 0;
  while (!client_->stopped()) {
    auto task = client_->GetTask();
    if (client_->stopped()) break;
    if (!task.ok()) {
      result = task.status();
      break;
    }
    if (task->kind() == proto::Task::SHUTDOWN) {
      FP_LOG_INFO("executor", "'{}': server says shut down ({})",
                  config_.worker.id, task->message());
      break;
    }
    if (task->kind() != proto::Task::USERS) continue;  // WAIT
    std::lock_guard<std::mutex> lock(mu_);
    if (task->round() > round_) {
      round_ = task->round();
      ++rounds_seen;
    }
    for (proto::Task& user : *task->mutable_user_tasks()) {
      queue_.push_back(std::move(user));
    }
    FP_LOG_INFO("executor", "'{}' round {}: {} users to train ({} queued)",
                config_.worker.id, task->round(), task->user_tasks_size(),
                queue_.size());
    cv_.notify_all();
  }
  Stop();
  for (auto& t : threads) t.join();
  const ExecutorStats s = stats();
  const int64_t uploads = s.users_trained + s.users_rejected;
  FP_LOG_INFO("executor",
              "'{}': {} rounds; {} users trained, {} rejected, {} failed, {} "
              "expired, {} dropped; up {} B, down {} B; per user {:.1f} ms, "
              "of which {:.1f} ms local training; peak RSS {:.0f} MiB",
              config_.worker.id, rounds_seen, s.users_trained, s.users_rejected,
              s.users_failed, s.users_expired, s.users_dropped, s.bytes_up,
              s.bytes_down, uploads > 0 ? 1000 * s.user_seconds / uploads : 0.0,
              uploads > 0 ? 1000 * s.train_seconds / uploads : 0.0,
              PeakRssMib());
  return result;
}

// ---- Executor
// -----------------------------------------------------------------

Executor::Executor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Executor::~Executor() = default;

StatusOr<std::unique_ptr<Executor>> Executor::Create(
    const WorkerConfig& config, std::shared_ptr<const model::LlamaWeights> base,
    std::shared_ptr<const model::Tokenizer> tokenizer) {
  auto impl =
      std::make_unique<Impl>(config, std::move(base), std::move(tokenizer));
  RETURN_IF_ERROR(
      impl->Init().WithContext("executor '" + config.worker.id + "'"));
  return std::unique_ptr<Executor>(new Executor(std::move(impl)));
}

Status Executor::Run() { return impl_->Run(); }
void Executor::Stop() { impl_->Stop(); }
ExecutorStats Executor::stats() const { return impl_->stats(); }

}  // namespace worker
}  // namespace fedpeft
