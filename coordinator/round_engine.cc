// RoundEngine: creation and the handlers the gRPC service calls. The round
// loop itself (select, collect, close, merge) is in round_loop.cc.
#include "coordinator/round_engine.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "common/logging.h"
#include "coordinator/round_log.h"
#include "model/loader.h"
#include "peft/peft_io.h"

namespace fedpeft {
namespace coordinator {

RoundEngine::RoundEngine(const CoordinatorConfig& config, bool cloud)
    : config_(config),
      cloud_(cloud),
      label_(cloud ? "round" : "edge round"),
      start_time_(Clock::now()),
      registry_(config.federation.id, config.federation.worker_timeout_s),
      compression_(config.compression) {}

RoundEngine::~RoundEngine() = default;

StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Create(
    const CoordinatorConfig& config, bool cloud,
    std::shared_ptr<const model::LlamaWeights> base) {
  std::unique_ptr<RoundEngine> e(new RoundEngine(config, cloud));
  e->base_ = std::move(base);
  RETURN_IF_ERROR(e->Init());
  return e;
}

Status RoundEngine::Init() {
  if (base_ == nullptr) {
    ASSIGN_OR_RETURN(model::LoadOptions load, config_.model.ToLoadOptions());
    ASSIGN_OR_RETURN(base_, model::LoadModel(config_.model.path, load));
  }
  // The initial global adapter: PEFT's initialisation from adapter_seed.
  ASSIGN_OR_RETURN(
      std::unique_ptr<peft::PeftModel> init,
      peft::PeftModel::Create(base_, config_.peft, config_.adapter_seed));
  auto global = std::make_shared<TensorMap>();
  auto zeros = std::make_shared<TensorMap>();
  for (const auto& kv : init->AdapterTensors()) {
    (*global)[kv.first] =
        kv.second.detach().to(torch::kCPU, torch::kFloat32).clone();
    (*zeros)[kv.first] = torch::zeros_like((*global)[kv.first]);
  }
  template_ = zeros;
  schema_ = transport::Schema::OfKeys(*zeros);
  init_ = std::make_shared<const TensorMap>(*global);
  global_ = global;
  ASSIGN_OR_RETURN(pipeline_, Pipeline::Build(config_, base_->config, template_,
                                              &registry_, cloud_));
  ASSIGN_OR_RETURN(
      merge_, Merge::Create(config_.strategy, pipeline_.planner->hetero()));
  codec_rng_.seed(std::random_device()());
  adapter_config_ = peft::AdapterConfigToJson(config_.peft, config_.model.path);
  adapter_config_json_ = adapter_config_.dump();
  rng_.seed(config_.federation.seed);
  secret_selection_ = config_.dp.enabled && config_.dp.noise_seed == 0;
  round_.label = label_;
  round_.registry = &registry_;
  round_.changed = &cv_;
  round_.stop = &stop_;
  ASSIGN_OR_RETURN(eval_,
                   ServerEval::Create(config_, base_, *pipeline_.planner));
  return Status::Ok();
}

// ---- handlers ---------------------------------------------------------------

namespace {

// "12 samples, train loss 1.2345", or that DP withheld them.
std::string DescribeMetrics(const UpdateHeader& h) {
  if (h.metrics_withheld) return "metrics withheld under DP";
  return fmt::format("{} samples, train loss {:.4f}", h.num_samples,
                     h.train_loss);
}

Status UnknownSession(const std::string& session_id) {
  return Status::NotFound("unknown session '" + session_id +
                          "': register again");
}

}  // namespace

StatusOr<Registration> RoundEngine::Register(const WorkerProfile& profile) {
  if (profile.worker_id.empty() || profile.worker_id.size() > 128) {
    return Status::InvalidArgument(
        "worker_id: expected 1 to 128 characters, got " +
        std::to_string(profile.worker_id.size()));
  }
  if (profile.num_samples > kMaxNumSamples) {
    return Status::InvalidArgument("profile.num_samples: expected at most " +
                                   std::to_string(kMaxNumSamples) + ", got " +
                                   std::to_string(profile.num_samples));
  }
  if (profile.edge && !cloud_) {
    // One level of edges: the cloud bounds what an edge declares
    // (dp.max_users_per_edge); an edge would not bound another.
    return Status::FailedPrecondition(
        "edge '" + profile.worker_id +
        "': an edge aggregator admits workers only; edges register with the "
        "cloud coordinator");
  }
  if (profile.hosted_users > 0) {
    // An executor's users are participants like any other: these bound
    // what one registration can enter.
    if (profile.edge) {
      return Status::InvalidArgument(
          "profile: an edge cannot host virtual users (hosted_users " +
          std::to_string(profile.hosted_users) + ")");
    }
    if (profile.hosted_users > kMaxHostedUsers ||
        profile.first_user > kMaxHostedUsers) {
      return Status::InvalidArgument(
          "profile.hosted_users: expected at most " +
          std::to_string(kMaxHostedUsers) + " users from index at most " +
          std::to_string(kMaxHostedUsers) + ", got " +
          std::to_string(profile.hosted_users) + " from " +
          std::to_string(profile.first_user));
    }
    if (config_.secagg.enabled) {
      return Status::FailedPrecondition(
          "executor '" + profile.worker_id +
          "': secure aggregation (secagg.enabled) is not supported for "
          "virtual users; run them without it, or as workers");
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  bool rejoin = false;
  Participant& w = registry_.Open(profile, &rejoin);
  for (RoundStage* s : pipeline_.order) s->OnRegister(w);
  for (const std::string& id : registry_.HostedBy(profile.worker_id)) {
    Participant* u = registry_.Find(id);
    for (RoundStage* s : pipeline_.order) s->OnRegister(*u);
  }
  if (profile.hosted_users > 0) {
    FP_LOG_INFO("coordinator",
                "executor '{}' {} hosting {} users ({}..{}; {} threads, {:.0f} "
                "tok/s); {} participants",
                profile.worker_id, rejoin ? "re-registered" : "registered",
                profile.hosted_users,
                HostedUserId(profile.worker_id, profile.first_user),
                HostedUserId(profile.worker_id,
                             profile.first_user + profile.hosted_users - 1),
                profile.threads, profile.tokens_per_second, registry_.size());
  } else {
    FP_LOG_INFO("coordinator",
                "{} '{}' {} ({} threads, {:.0f} tok/s, {} samples{}); {} "
                "registered",
                profile.edge ? "edge" : "worker", profile.worker_id,
                rejoin ? "re-registered" : "registered", profile.threads,
                profile.tokens_per_second, profile.num_samples,
                w.rank > 0 ? fmt::format(", rank {}", w.rank) : "",
                registry_.size());
  }
  cv_.notify_all();
  Registration r;
  r.session_id = w.session_id;
  r.federation_id = config_.federation.id;
  r.heartbeat_interval_ms = config_.federation.heartbeat_interval_ms;
  r.adapter_config_json = adapter_config_json_;
  r.base_model = config_.model.path;
  if (profile.edge) {
    EdgePlan plan;
    plan.heterogeneity = config_.heterogeneity;
    plan.ffa = config_.freezing.ffa;
    plan.adapter_seed = config_.adapter_seed;
    plan.dp = config_.dp.enabled;
    plan.dp_report_worker_metrics = config_.dp.report_worker_metrics;
    plan.compression = config_.compression;
    plan.secagg = config_.secagg;
    r.plan_json = plan.ToJson();
  }
  return r;
}

StatusOr<int64_t> RoundEngine::Heartbeat(const std::string& session_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Participant* w = registry_.FindSession(session_id);
  if (!w) return UnknownSession(session_id);
  w->last_seen = Clock::now();
  return round_.round;
}

bool RoundEngine::Collecting(const std::string& id) const {
  return phase_ == Phase::kCollect && round_.selected.count(id) &&
         !round_.answered.count(id);
}

StatusOr<TaskInfo> RoundEngine::GetTask(const std::string& session_id,
                                        std::chrono::milliseconds wait) {
  wait = std::min(wait,
                  std::chrono::milliseconds(config_.federation.task_wait_ms));
  auto until = Clock::now() + wait;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    Participant* w = registry_.FindSession(session_id);
    if (!w) return UnknownSession(session_id);
    w->last_seen = Clock::now();
    const std::string& id = w->profile.worker_id;
    TaskInfo task;
    if (phase_ == Phase::kDone || stop_) {
      told_shutdown_.insert(id);  // (an executor: for its users too)
      cv_.notify_all();
      task.kind = TaskInfo::Kind::kShutdown;
      task.message = "federation '" + config_.federation.id + "' finished";
      return task;
    }
    if (Collecting(id)) {
      task = TrainTask(*w);
      return task;
    }
    if (w->profile.hosted_users > 0 && phase_ == Phase::kCollect) {
      // An executor: the tasks of its selected users not handed out yet
      // (a walk over the round's selection, not the executor's users: this
      // runs on every wake-up, and an executor may host 10^5 users).
      for (const std::string& user : round_.selected) {
        if (round_.answered.count(user) || dispatched_.count(user)) continue;
        const Participant* u = registry_.Find(user);
        if (!u || u->host != id) continue;
        dispatched_.insert(user);
        task.users.push_back(TrainTask(*u));
        task.users.back().user_id = user;
      }
      if (!task.users.empty()) {
        task.kind = TaskInfo::Kind::kUsers;
        task.round = round_.round;
        task.deadline_unix_ms = deadline_unix_ms_;
        return task;
      }
    }
    if (cv_.wait_until(lock, until) == std::cv_status::timeout) {
      task.kind = TaskInfo::Kind::kWait;
      task.round = round_.round;
      task.message = phase_ == Phase::kWaitWorkers ? "waiting for workers"
                                                   : "not selected this round";
      return task;
    }
  }
}

TaskInfo RoundEngine::TrainTask(const Participant& w) const {
  TaskInfo task;
  task.kind = TaskInfo::Kind::kTrain;
  task.round = round_.round;
  task.seed = Mix(round_seed_ ^ std::hash<std::string>()(w.profile.worker_id));
  task.deadline_unix_ms = deadline_unix_ms_;
  task.compression = compression_;
  for (const RoundStage* s : pipeline_.order) s->FillTask(round_, w, &task);
  return task;
}

StatusOr<std::shared_ptr<const TensorMap>> RoundEngine::GlobalAdapter(
    const std::string& session_id, int64_t round, uint64_t cached_round) {
  std::shared_ptr<const TensorMap> global;
  int64_t rank = 0;
  std::map<std::string, int64_t> changed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Participant* w = registry_.FindSession(session_id);
    if (!w) return UnknownSession(session_id);
    if (phase_ != Phase::kCollect || round != round_.round ||
        !round_.selected.count(w->profile.worker_id)) {
      return Status::FailedPrecondition(
          "round " + std::to_string(round) + " is not open to worker '" +
          w->profile.worker_id + "' (current round " +
          std::to_string(round_.round) + ")");
    }
    if (cached_round > static_cast<uint64_t>(round)) {
      return Status::InvalidArgument(
          "cached_round " + std::to_string(cached_round) +
          " is ahead of round " + std::to_string(round));
    }
    global = global_;
    rank = pipeline_.planner->RankOf(*w);
    if (cached_round > 0) changed = pipeline_.planner->last_changed();
  }
  return AdapterPlanner::View(global, rank, cached_round, changed);
}

StatusOr<UploadExpectation> RoundEngine::ExpectedUpload(
    const std::string& session_id, const UpdateHeader& header) {
  std::shared_ptr<const TensorMap> global;
  int64_t rank = 0;
  std::set<std::string> frozen;
  std::string id;
  std::optional<std::vector<std::string>> masked;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Participant* w = registry_.FindSession(session_id);
    if (!w) return UnknownSession(session_id);
    id = w->profile.worker_id;
    global = global_;
    rank = pipeline_.planner->RoundRank(*w);
    frozen = round_.frozen;
    masked = pipeline_.secure_sum->MaskedNames(id);
    if (round_.ffa) {
      // FFA-LoRA: every lora_A stays at its seeded init; nobody uploads one.
      for (const auto& [key, t] : *global) {
        if (key.find(".lora_A.") != std::string::npos) frozen.insert(key);
      }
    }
  }
  UploadExpectation e;
  if (masked) {
    // Masked words come at the global adapter's shapes, whatever rank the
    // worker trained (it zero-pads).
    e.masked = true;
    e.masked_names = std::move(*masked);
    e.max_tensors = global->size();
    e.specs = transport::SpecsOf(*global);
    e.excluded = frozen;
    return e;
  }
  ASSIGN_OR_RETURN(e, pipeline_.planner->Expect(id, header, *global, rank));
  if (!header.whole_adapter) e.excluded = frozen;
  return e;
}

Status RoundEngine::CheckUploadAllowed(const std::string& session_id,
                                       int64_t round) {
  std::lock_guard<std::mutex> lock(mu_);
  Participant* w = registry_.FindSession(session_id);
  if (!w) return UnknownSession(session_id);
  const std::string& id = w->profile.worker_id;
  if (round != round_.round || phase_ != Phase::kCollect) {
    return Status::FailedPrecondition(
        "stale upload from '" + id + "': round " + std::to_string(round) +
        " is not open (current round " + std::to_string(round_.round) + ", " +
        PhaseName() + ")");
  }
  if (!round_.selected.count(id)) {
    return Status::FailedPrecondition("upload from '" + id +
                                      "', which was not selected for round " +
                                      std::to_string(round));
  }
  if (round_.answered.count(id)) {
    return Status::FailedPrecondition("duplicate upload from '" + id +
                                      "' for round " + std::to_string(round));
  }
  return Status::Ok();
}

StatusOr<std::string> RoundEngine::SessionOwner(const std::string& session_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Participant* w = registry_.FindSession(session_id);
  if (!w) return UnknownSession(session_id);
  return registry_.Owner(*w);
}

void RoundEngine::Revoke(const std::string& worker_id,
                         const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!registry_.Close(worker_id)) return;
  // An executor's users go with it.
  std::vector<std::string> pending;
  if (Collecting(worker_id)) pending.push_back(worker_id);
  for (const std::string& user : registry_.HostedBy(worker_id)) {
    if (Collecting(user)) pending.push_back(user);
  }
  FP_LOG_WARN(
      "coordinator", "'{}' revoked ({}); session closed{}", worker_id, reason,
      pending.empty()
          ? std::string()
          : fmt::format(", round {} goes on without {}", round_.round,
                        pending.size() == 1 ? "it"
                                            : std::to_string(pending.size()) +
                                                  " of its users"));
  for (const std::string& id : pending) round_.Reject(id);
  if (!pending.empty()) cv_.notify_all();
}

void RoundEngine::RecordRejectedUpload(const std::string& session_id,
                                       int64_t round, const std::string& reason,
                                       uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  round_bytes_up_ += bytes;
  totals_.up += bytes;
  Participant* w = registry_.FindSession(session_id);
  std::string id = w ? w->profile.worker_id : "<unknown session>";
  FP_LOG_WARN("coordinator", "rejected upload from '{}' for round {}: {}", id,
              round, reason);
  if (w && round == round_.round && Collecting(id)) {
    // A worker whose upload was malformed has answered for this round.
    round_.Reject(id);
    cv_.notify_all();
  }
}

Status RoundEngine::SubmitUpdate(const std::string& session_id,
                                 const UpdateHeader& reported, TensorMap delta,
                                 uint64_t bytes_received) {
  std::string worker_id = session_id;
  bool edge = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Participant* w = registry_.FindSession(session_id);
    if (w) {
      worker_id = w->profile.worker_id;
      edge = w->profile.edge;
    }
  }
  // Under DP what a header says about a user's data is neither kept nor
  // logged, whatever the worker sent.
  UpdateHeader header = reported;
  if (pipeline_.privacy->withholds_metrics()) {
    PrivacyStage::Withhold(edge, &header);
  }
  Status valid = CheckUploadAllowed(session_id, header.round);
  StatusOr<UploadExpectation> expected =
      valid.ok() ? ExpectedUpload(session_id, header)
                 : StatusOr<UploadExpectation>(valid);
  if (expected.ok() && expected->masked) {
    return SubmitMasked(session_id, worker_id, header, delta,
                        expected->masked_names, bytes_received);
  }
  if (valid.ok()) valid = expected.status();
  if (valid.ok()) {
    // Every stage may refuse it (validation first, then privacy's bound).
    const UpdateCheck check{worker_id, edge, header, delta, *expected};
    for (const RoundStage* s : pipeline_.order) {
      valid = s->CheckUpdate(check);
      if (!valid.ok()) break;
    }
  }
  if (!valid.ok()) {
    RecordRejectedUpload(session_id, header.round, valid.message(),
                         bytes_received);
    return valid;
  }
  std::lock_guard<std::mutex> lock(mu_);
  round_bytes_up_ += bytes_received;
  totals_.up += bytes_received;
  Participant* w = registry_.FindSession(session_id);
  // Re-check under the lock: the round may have closed meanwhile.
  if (!w || header.round != round_.round || phase_ != Phase::kCollect ||
      round_.answered.count(w->profile.worker_id)) {
    std::string reason = "late upload for round " +
                         std::to_string(header.round) + " (round closed)";
    FP_LOG_WARN("coordinator", "rejected upload from '{}': {}", worker_id,
                reason);
    return Status::FailedPrecondition(reason);
  }
  round_.answered.insert(w->profile.worker_id);
  round_worker_bytes_[w->profile.worker_id] += bytes_received;
  w->rounds_completed++;
  Update p{w->profile.worker_id, header, std::move(delta)};
  p.edge = w->profile.edge;
  pending_.push_back(std::move(p));
  // A virtual user's update is one of hundreds: logged at debug level.
  FP_LOG_(w->host.empty() ? spdlog::level::info : spdlog::level::debug,
          "coordinator", "round {}: update from '{}' ({}, {}{}), {}/{} in",
          header.round, w->profile.worker_id, DescribeMetrics(header),
          FormatBytes(bytes_received),
          header.rank > 0 ? fmt::format(", rank {}", header.rank) : "",
          round_.answered.size(), round_.selected.size());
  cv_.notify_all();
  return Status::Ok();
}

Status RoundEngine::SubmitMasked(const std::string& session_id,
                                 const std::string& worker_id,
                                 const UpdateHeader& header,
                                 const TensorMap& words,
                                 const std::vector<std::string>& names,
                                 uint64_t bytes_received) {
  const std::string from = "masked update from '" + worker_id + "'";
  StatusOr<std::vector<uint32_t>> flat =
      SecureSumStage::Flatten(worker_id, header, words, names);
  Status valid = flat.status();
  std::unique_lock<std::mutex> lock(mu_);
  Participant* w = registry_.FindSession(session_id);
  if (valid.ok() &&
      (!w || header.round != round_.round || phase_ != Phase::kCollect ||
       round_.answered.count(worker_id) ||
       !pipeline_.secure_sum->Accepting(worker_id))) {
    valid = Status::FailedPrecondition("late " + from + " for round " +
                                       std::to_string(header.round) +
                                       " (round closed)");
  }
  if (valid.ok()) {
    valid = pipeline_.secure_sum->Receive(worker_id, std::move(flat).value());
    if (!valid.ok()) valid = valid.WithContext(from);
  }
  if (!valid.ok()) {
    lock.unlock();
    RecordRejectedUpload(session_id, header.round, valid.message(),
                         bytes_received);
    return valid;
  }
  round_bytes_up_ += bytes_received;
  totals_.up += bytes_received;
  round_.answered.insert(worker_id);
  round_worker_bytes_[worker_id] += bytes_received;
  w->rounds_completed++;
  pending_.push_back(Update{worker_id, header, TensorMap()});
  FP_LOG_INFO("coordinator",
              "{} {}: masked update from '{}' ({}, {}), {}/{} in", label_,
              header.round, worker_id, DescribeMetrics(header),
              FormatBytes(bytes_received), round_.answered.size(),
              round_.selected.size());
  cv_.notify_all();
  return Status::Ok();
}

StatusOr<SecAggResult> RoundEngine::SecAggExchange(
    const std::string& session_id, int64_t round, SecAggStep step,
    const std::string& message, std::chrono::milliseconds wait) {
  wait = std::min(wait,
                  std::chrono::milliseconds(config_.federation.task_wait_ms));
  const auto until = Clock::now() + wait;
  std::unique_lock<std::mutex> lock(mu_);
  Participant* w = registry_.FindSession(session_id);
  if (!w) return UnknownSession(session_id);
  w->last_seen = Clock::now();
  const std::string id = w->profile.worker_id;
  if (phase_ != Phase::kCollect && phase_ != Phase::kAggregate) {
    return Status::FailedPrecondition("secure aggregation of round " +
                                      std::to_string(round) + ": '" + id +
                                      "' is not part of it (current round " +
                                      std::to_string(round_.round) + ")");
  }
  return pipeline_.secure_sum->Exchange(round_, lock, id, round, step, message,
                                        until);
}

void RoundEngine::AddBytesDown(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  round_bytes_down_ += bytes;
  totals_.down += bytes;
}

transport::CodecOptions RoundEngine::DownloadCodec() {
  std::lock_guard<std::mutex> lock(mu_);  // an edge's task changes it
  return {compression_.download_bits, compression_.block_size};
}

const transport::Schema* RoundEngine::AdapterSchema() const {
  // Names cost ~60 bytes a tensor, which only matters next to quantized
  // payloads; the stack merge's ranks vary by module: tensors go by name.
  // (download_bits is the engine's own setting: a cloud task never changes
  // it, so it is read without the lock.)
  if (config_.compression.download_bits >= 16 || pipeline_.planner->stack()) {
    return nullptr;
  }
  return &schema_;
}

uint64_t RoundEngine::NextCodecSeed() {
  std::lock_guard<std::mutex> lock(codec_mu_);
  return codec_rng_();
}

uint64_t RoundEngine::max_update_bytes() const {
  return static_cast<uint64_t>(config_.max_update_mb) << 20;
}

const char* RoundEngine::PhaseName() const {
  switch (phase_) {
    case Phase::kWaitWorkers:
      return "wait_workers";
    case Phase::kCollect:
      return "collect";
    case Phase::kAggregate:
      return "aggregate";
    case Phase::kDone:
      return "done";
  }
  return "?";
}

CoordinatorStatus RoundEngine::GetStatus() {
  std::lock_guard<std::mutex> lock(mu_);
  CoordinatorStatus s;
  s.federation_id = config_.federation.id;
  s.state = PhaseName();
  s.round = round_.round;
  s.total_rounds = config_.federation.rounds;
  s.selected = static_cast<int>(round_.selected.size());
  s.answered = static_cast<int>(pending_.size());
  if (!history_.empty()) {
    s.last_train_loss = history_.back().train_loss;
    s.last_eval_loss = history_.back().eval_loss;
  }
  s.bytes_up = totals_.up;
  s.bytes_down = totals_.down;
  s.strategy = merge_->strategy_name();
  s.uptime_seconds = Seconds(Clock::now() - start_time_);
  auto now = Clock::now();
  for (const auto& [id, p] : registry_.all()) {
    // Virtual users are counted in their executor's entry, not listed.
    if (!p.host.empty()) continue;
    CoordinatorStatus::Worker w;
    w.worker_id = id;
    w.alive = registry_.IsAlive(p, now);
    w.rounds_completed = p.rounds_completed;
    w.last_seen_ms_ago = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(now - p.last_seen)
            .count());
    s.workers.push_back(w);
  }
  return s;
}

}  // namespace coordinator
}  // namespace fedpeft
