#include "coordinator/coordinator.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <thread>

#include "common/file_util.h"
#include "common/logging.h"
#include "model/loader.h"
#include "model/tokenizer.h"
#include "peft/peft_io.h"
#include "worker/local_trainer.h"

namespace fedpeft {
namespace coordinator {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// SplitMix64: derives independent per-round seeds from one seed.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string FormatBytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 20)) {
    std::snprintf(buf, sizeof(buf), "%.2f MiB", b / 1048576.0);
  } else if (b >= 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", b / 1024.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%llu B",
                  static_cast<unsigned long long>(b));
  }
  return buf;
}

nlohmann::json NumberOrNull(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace

uint64_t UnixMillis() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
}

Coordinator::Coordinator(const CoordinatorConfig& config)
    : config_(config), start_time_(Clock::now()) {}

Coordinator::~Coordinator() = default;

StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    const CoordinatorConfig& config) {
  std::unique_ptr<Coordinator> c(new Coordinator(config));
  RETURN_IF_ERROR(c->Init());
  return c;
}

Status Coordinator::Init() {
  ASSIGN_OR_RETURN(model::LoadOptions load, config_.model.ToLoadOptions());
  ASSIGN_OR_RETURN(base_, model::LoadModel(config_.model.path, load));
  ASSIGN_OR_RETURN(strategy_, aggregation::MakeStrategy(config_.strategy));

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
  adapter_config_ = peft::AdapterConfigToJson(config_.peft, config_.model.path);
  adapter_config_json_ = adapter_config_.dump();
  rng_.seed(config_.federation.seed);

  auto ckpt = LoadLatestCheckpoint(config_.checkpoint.dir);
  if (ckpt.ok()) {
    if (ckpt->federation_id != config_.federation.id) {
      return Status::FailedPrecondition(
          "checkpoint in '" + config_.checkpoint.dir +
          "' belongs to federation '" + ckpt->federation_id +
          "', this config runs '" + config_.federation.id +
          "' (use another checkpoint.dir or the same federation.id)");
    }
    if (ckpt->strategy != strategy_->name()) {
      return Status::FailedPrecondition(
          "checkpoint in '" + config_.checkpoint.dir + "' used strategy '" +
          ckpt->strategy + "', the config says '" + strategy_->name() + "'");
    }
    aggregation::ClientUpdate probe;
    probe.worker_id = "checkpoint";
    probe.delta = ckpt->global;
    probe.num_samples = 1;
    Status compatible = aggregation::ValidateUpdate(*template_, probe);
    if (!compatible.ok()) {
      return Status::FailedPrecondition(
          "checkpoint in '" + config_.checkpoint.dir +
          "' does not match the configured adapter: " + compatible.message());
    }
    RETURN_IF_ERROR(strategy_->LoadState(ckpt->strategy_state));
    std::istringstream rng_in(ckpt->rng_state);
    rng_in >> rng_;
    if (rng_in.fail()) {
      return Status::Corruption("checkpoint in '" + config_.checkpoint.dir +
                                "': rng_state is not a generator state");
    }
    global = std::make_shared<TensorMap>(std::move(ckpt->global));
    completed_rounds_ = ckpt->round;
    total_bytes_up_ = ckpt->bytes_up;
    total_bytes_down_ = ckpt->bytes_down;
    FP_LOG_INFO("coordinator",
                "resumed federation '{}' from checkpoint round {} (adapter "
                "digest {}); next round {}",
                config_.federation.id, ckpt->round, TensorDigest(*global),
                ckpt->round + 1);
  } else if (ckpt.status().code() != StatusCode::kNotFound) {
    return ckpt.status();
  }
  global_ = global;

  if (!config_.eval.data.path.empty()) {
    std::string tok_path = config_.model.tokenizer;
    if (tok_path.empty()) {
      ASSIGN_OR_RETURN(tok_path,
                       model::FindTokenizerForModel(config_.model.path,
                                                    base_->config.vocab_size));
    }
    ASSIGN_OR_RETURN(auto tok,
                     model::LoadTokenizer(tok_path, base_->config.vocab_size));
    ASSIGN_OR_RETURN(auto records, data::LoadRecords(config_.eval.data));
    std::vector<data::Record> train_records, eval_records;
    data::SplitTrainEval(records, config_.eval.data.eval_fraction,
                         config_.eval.data.seed, &train_records, &eval_records);
    eval_examples_ = data::Tokenize(eval_records, *tok, config_.eval.data);
    ASSIGN_OR_RETURN(
        eval_model_,
        peft::PeftModel::Create(base_, config_.peft, config_.adapter_seed));
  }

  if (!config_.logging.metrics_file.empty()) {
    metrics_.open(config_.logging.metrics_file, std::ios::app);
    if (!metrics_) {
      return Status::IoError("logging.metrics_file: cannot open '" +
                             config_.logging.metrics_file + "' for appending");
    }
  }
  return Status::Ok();
}

// ---- handlers ---------------------------------------------------------------

StatusOr<Registration> Coordinator::Register(const WorkerProfile& profile) {
  if (profile.worker_id.empty() || profile.worker_id.size() > 128) {
    return Status::InvalidArgument(
        "worker_id: expected 1 to 128 characters, got " +
        std::to_string(profile.worker_id.size()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  WorkerEntry& w = workers_[profile.worker_id];
  bool rejoin = !w.session_id.empty();
  if (rejoin) sessions_.erase(w.session_id);
  w.profile = profile;
  w.last_seen = Clock::now();
  std::ostringstream sid;
  sid << config_.federation.id << "/" << profile.worker_id << "/" << std::hex
      << Mix(next_session_++ ^ UnixMillis());
  w.session_id = sid.str();
  sessions_[w.session_id] = profile.worker_id;
  FP_LOG_INFO("coordinator",
              "worker '{}' {} ({} threads, {:.0f} tok/s, {} samples); {} "
              "registered",
              profile.worker_id, rejoin ? "re-registered" : "registered",
              profile.threads, profile.tokens_per_second, profile.num_samples,
              workers_.size());
  cv_.notify_all();
  Registration r;
  r.session_id = w.session_id;
  r.federation_id = config_.federation.id;
  r.heartbeat_interval_ms = config_.federation.heartbeat_interval_ms;
  r.adapter_config_json = adapter_config_json_;
  r.base_model = config_.model.path;
  return r;
}

Coordinator::WorkerEntry* Coordinator::FindSession(
    const std::string& session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return nullptr;
  auto w = workers_.find(it->second);
  return w == workers_.end() ? nullptr : &w->second;
}

bool Coordinator::IsAlive(const WorkerEntry& w, Clock::time_point now) const {
  return Seconds(now - w.last_seen) <= config_.federation.worker_timeout_s;
}

std::vector<std::string> Coordinator::AliveWorkers() const {
  std::vector<std::string> alive;
  auto now = Clock::now();
  for (const auto& kv : workers_) {
    if (IsAlive(kv.second, now)) alive.push_back(kv.first);
  }
  return alive;
}

StatusOr<int64_t> Coordinator::Heartbeat(const std::string& session_id) {
  std::lock_guard<std::mutex> lock(mu_);
  WorkerEntry* w = FindSession(session_id);
  if (!w) {
    return Status::NotFound("unknown session '" + session_id +
                            "': register again");
  }
  w->last_seen = Clock::now();
  return round_;
}

StatusOr<TaskInfo> Coordinator::GetTask(const std::string& session_id,
                                        std::chrono::milliseconds wait) {
  wait = std::min(wait,
                  std::chrono::milliseconds(config_.federation.task_wait_ms));
  auto until = Clock::now() + wait;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    WorkerEntry* w = FindSession(session_id);
    if (!w) {
      return Status::NotFound("unknown session '" + session_id +
                              "': register again");
    }
    w->last_seen = Clock::now();
    const std::string& id = w->profile.worker_id;
    TaskInfo task;
    if (phase_ == Phase::kDone || stop_) {
      told_shutdown_.insert(id);
      cv_.notify_all();
      task.kind = TaskInfo::Kind::kShutdown;
      task.message = "federation '" + config_.federation.id + "' finished";
      return task;
    }
    if (phase_ == Phase::kCollect && selected_.count(id) &&
        !answered_.count(id)) {
      task.kind = TaskInfo::Kind::kTrain;
      task.round = round_;
      task.train = config_.train;
      task.seed = Mix(round_seed_ ^ std::hash<std::string>()(id));
      task.deadline_unix_ms = deadline_unix_ms_;
      return task;
    }
    if (cv_.wait_until(lock, until) == std::cv_status::timeout) {
      task.kind = TaskInfo::Kind::kWait;
      task.round = round_;
      task.message = phase_ == Phase::kWaitWorkers ? "waiting for workers"
                                                   : "not selected this round";
      return task;
    }
  }
}

StatusOr<std::shared_ptr<const TensorMap>> Coordinator::GlobalAdapter(
    const std::string& session_id, int64_t round) {
  std::lock_guard<std::mutex> lock(mu_);
  WorkerEntry* w = FindSession(session_id);
  if (!w) {
    return Status::NotFound("unknown session '" + session_id +
                            "': register again");
  }
  if (phase_ != Phase::kCollect || round != round_ ||
      !selected_.count(w->profile.worker_id)) {
    return Status::FailedPrecondition(
        "round " + std::to_string(round) + " is not open to worker '" +
        w->profile.worker_id + "' (current round " + std::to_string(round_) +
        ")");
  }
  return global_;
}

Status Coordinator::CheckUploadAllowed(const std::string& session_id,
                                       int64_t round) {
  std::lock_guard<std::mutex> lock(mu_);
  WorkerEntry* w = FindSession(session_id);
  if (!w) {
    return Status::NotFound("unknown session '" + session_id +
                            "': register again");
  }
  const std::string& id = w->profile.worker_id;
  if (round != round_ || phase_ != Phase::kCollect) {
    return Status::FailedPrecondition(
        "stale upload from '" + id + "': round " + std::to_string(round) +
        " is not open (current round " + std::to_string(round_) + ", " +
        PhaseName() + ")");
  }
  if (!selected_.count(id)) {
    return Status::FailedPrecondition("upload from '" + id +
                                      "', which was not selected for round " +
                                      std::to_string(round));
  }
  if (answered_.count(id)) {
    return Status::FailedPrecondition("duplicate upload from '" + id +
                                      "' for round " + std::to_string(round));
  }
  return Status::Ok();
}

void Coordinator::RecordRejectedUpload(const std::string& session_id,
                                       int64_t round, const std::string& reason,
                                       uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  round_bytes_up_ += bytes;
  total_bytes_up_ += bytes;
  WorkerEntry* w = FindSession(session_id);
  std::string id = w ? w->profile.worker_id : "<unknown session>";
  FP_LOG_WARN("coordinator", "rejected upload from '{}' for round {}: {}", id,
              round, reason);
  if (w && round == round_ && phase_ == Phase::kCollect &&
      selected_.count(id) && !answered_.count(id)) {
    // A worker whose upload was malformed has answered for this round.
    answered_.insert(id);
    ++rejected_;
    cv_.notify_all();
  }
}

Status Coordinator::SubmitUpdate(const std::string& session_id,
                                 const UpdateHeader& header, TensorMap delta,
                                 uint64_t bytes_received) {
  aggregation::ClientUpdate probe;
  {
    std::lock_guard<std::mutex> lock(mu_);
    WorkerEntry* w = FindSession(session_id);
    probe.worker_id = w ? w->profile.worker_id : session_id;
  }
  probe.delta = delta;  // aliases; ValidateUpdate only reads
  probe.num_samples = static_cast<int64_t>(header.num_samples);
  Status valid = CheckUploadAllowed(session_id, header.round);
  if (valid.ok()) valid = aggregation::ValidateUpdate(*template_, probe);
  if (valid.ok() && !std::isfinite(header.train_loss)) {
    valid = Status::InvalidArgument("train_loss: expected a finite number");
  }
  if (!valid.ok()) {
    RecordRejectedUpload(session_id, header.round, valid.message(),
                         bytes_received);
    return valid;
  }
  std::lock_guard<std::mutex> lock(mu_);
  round_bytes_up_ += bytes_received;
  total_bytes_up_ += bytes_received;
  WorkerEntry* w = FindSession(session_id);
  // Re-check under the lock: the round may have closed meanwhile.
  if (!w || header.round != round_ || phase_ != Phase::kCollect ||
      answered_.count(w->profile.worker_id)) {
    std::string reason = "late upload for round " +
                         std::to_string(header.round) + " (round closed)";
    FP_LOG_WARN("coordinator", "rejected upload from '{}': {}", probe.worker_id,
                reason);
    return Status::FailedPrecondition(reason);
  }
  answered_.insert(w->profile.worker_id);
  w->rounds_completed++;
  pending_.push_back(Pending{w->profile.worker_id, header, std::move(delta)});
  FP_LOG_INFO("coordinator",
              "round {}: update from '{}' ({} samples, train loss {:.4f}, "
              "{}), {}/{} in",
              header.round, w->profile.worker_id, header.num_samples,
              header.train_loss, FormatBytes(bytes_received), answered_.size(),
              selected_.size());
  cv_.notify_all();
  return Status::Ok();
}

void Coordinator::AddBytesDown(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  round_bytes_down_ += bytes;
  total_bytes_down_ += bytes;
}

uint64_t Coordinator::max_update_bytes() const {
  return static_cast<uint64_t>(config_.max_update_mb) << 20;
}

const char* Coordinator::PhaseName() const {
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

CoordinatorStatus Coordinator::GetStatus() {
  std::lock_guard<std::mutex> lock(mu_);
  CoordinatorStatus s;
  s.federation_id = config_.federation.id;
  s.state = PhaseName();
  s.round = round_;
  s.total_rounds = config_.federation.rounds;
  s.selected = static_cast<int>(selected_.size());
  s.answered = static_cast<int>(pending_.size());
  if (!history_.empty()) {
    s.last_train_loss = history_.back().train_loss;
    s.last_eval_loss = history_.back().eval_loss;
  }
  s.bytes_up = total_bytes_up_;
  s.bytes_down = total_bytes_down_;
  s.strategy = strategy_->name();
  s.uptime_seconds = Seconds(Clock::now() - start_time_);
  auto now = Clock::now();
  for (const auto& kv : workers_) {
    CoordinatorStatus::Worker w;
    w.worker_id = kv.first;
    w.alive = IsAlive(kv.second, now);
    w.rounds_completed = kv.second.rounds_completed;
    w.last_seen_ms_ago = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(
            now - kv.second.last_seen)
            .count());
    s.workers.push_back(w);
  }
  return s;
}

std::vector<RoundMetrics> Coordinator::History() {
  std::lock_guard<std::mutex> lock(mu_);
  return history_;
}

void Coordinator::Stop() {
  stop_ = true;
  cv_.notify_all();
}

// ---- the round loop -----------------------------------------------------

bool Coordinator::WaitForWorkers() {
  auto last_log = Clock::now() - std::chrono::hours(1);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    size_t alive = AliveWorkers().size();
    // min_available gates only the start (of this process: a restarted
    // coordinator waits for its workers to rejoin); later rounds go on with
    // at least min_workers.
    size_t needed = static_cast<size_t>(
        started_ ? config_.federation.min_workers
                 : std::max(config_.federation.min_available,
                            config_.federation.min_workers));
    if (alive >= needed) {
      started_ = true;
      return true;
    }
    if (Seconds(Clock::now() - last_log) >= 10) {
      FP_LOG_INFO("coordinator", "waiting for workers: {} alive, {} needed",
                  alive, needed);
      last_log = Clock::now();
    }
    cv_.wait_for(lock, std::chrono::milliseconds(200));
  }
  return false;
}

bool Coordinator::RunRoundAttempt(int64_t round, int attempt, RoundMetrics* m) {
  const FederationOptions& f = config_.federation;
  auto t0 = Clock::now();
  m->round = round;
  m->attempt = attempt;
  m->server_eval_loss = std::nan("");
  std::vector<Pending> updates;
  {
    std::unique_lock<std::mutex> lock(mu_);
    // select
    std::vector<std::string> alive = AliveWorkers();
    int n = static_cast<int>(alive.size());
    int k = static_cast<int>(std::ceil(f.fraction * n));
    k = std::max(k, f.min_workers);
    if (f.max_workers > 0) k = std::min(k, f.max_workers);
    k = std::min(k, n);
    for (int i = n - 1; i > 0; --i) {  // Fisher-Yates with the checkpointed rng
      std::swap(alive[i], alive[rng_() % static_cast<uint64_t>(i + 1)]);
    }
    selected_ = std::set<std::string>(alive.begin(), alive.begin() + k);
    answered_.clear();
    pending_.clear();
    rejected_ = 0;
    round_bytes_up_ = round_bytes_down_ = 0;
    round_ = round;
    attempt_ = attempt;
    round_seed_ = Mix(f.seed ^ Mix(static_cast<uint64_t>(round) * 131 +
                                   static_cast<uint64_t>(attempt)));
    auto deadline =
        Clock::now() + std::chrono::milliseconds(
                           static_cast<int64_t>(f.round_deadline_s * 1000));
    deadline_unix_ms_ =
        UnixMillis() + static_cast<uint64_t>(f.round_deadline_s * 1000);
    // broadcast: waiting GetTask calls wake up and take the task
    phase_ = Phase::kCollect;
    m->selected = k;
    std::string names;
    for (const auto& s : selected_) names += (names.empty() ? "" : ", ") + s;
    FP_LOG_INFO("coordinator", "round {}/{}{}: selected {} of {} alive: {}",
                round, f.rounds,
                attempt > 0 ? " (retry " + std::to_string(attempt) + ")" : "",
                k, n, names);
    cv_.notify_all();

    // collect
    while (!stop_) {
      auto now = Clock::now();
      bool all_in = true;
      for (const auto& id : selected_) {
        if (answered_.count(id)) continue;
        auto it = workers_.find(id);
        if (it != workers_.end() && IsAlive(it->second, now)) {
          all_in = false;
          break;
        }
      }
      if (all_in || now >= deadline) {
        if (!all_in) {
          FP_LOG_WARN("coordinator",
                      "round {}: deadline ({:.0f}s) reached with {}/{} "
                      "answers",
                      round, f.round_deadline_s, pending_.size(),
                      selected_.size());
        }
        break;
      }
      cv_.wait_until(lock,
                     std::min(deadline, now + std::chrono::milliseconds(250)));
    }
    phase_ = Phase::kAggregate;
    updates = std::move(pending_);
    pending_.clear();
    m->answered = static_cast<int>(updates.size());
    m->rejected = rejected_;
    m->dropped = m->selected - m->answered;
    for (const auto& id : selected_) {
      if (!answered_.count(id)) {
        FP_LOG_WARN("coordinator", "round {}: no answer from '{}' (dropped)",
                    round, id);
      }
    }
  }
  int quorum = std::max(1, static_cast<int>(std::ceil(f.quorum * m->selected)));
  bool ok = !stop_ && m->answered >= quorum;
  if (ok) {
    Status s = Aggregate(round, std::move(updates), m);
    if (!s.ok()) {
      FP_LOG_ERROR("coordinator", "round {}: aggregation failed: {}", round,
                   s.ToString());
      ok = false;
    }
  } else if (!stop_) {
    FP_LOG_WARN("coordinator", "round {}: quorum missed ({} of {} needed)",
                round, m->answered, quorum);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    m->bytes_up = round_bytes_up_;
    m->bytes_down = round_bytes_down_;
  }
  m->seconds = Seconds(Clock::now() - t0);
  m->aggregated = ok;
  return ok;
}

Status Coordinator::Aggregate(int64_t round, std::vector<Pending> updates,
                              RoundMetrics* m) {
  std::vector<aggregation::ClientUpdate> client;
  double loss_sum = 0, sample_sum = 0, eval_sum = 0, eval_tokens = 0;
  for (auto& p : updates) {
    m->max_train_seconds =
        std::max(m->max_train_seconds, p.header.train_seconds);
    loss_sum += p.header.train_loss * p.header.num_samples;
    sample_sum += p.header.num_samples;
    if (std::isfinite(p.header.eval_loss) && p.header.eval_tokens > 0) {
      eval_sum += p.header.eval_loss * p.header.eval_tokens;
      eval_tokens += p.header.eval_tokens;
    }
    aggregation::ClientUpdate u;
    u.worker_id = p.worker_id;
    u.delta = std::move(p.delta);
    u.num_samples = static_cast<int64_t>(p.header.num_samples);
    u.train_loss = p.header.train_loss;
    client.push_back(std::move(u));
  }
  m->train_loss = sample_sum > 0 ? loss_sum / sample_sum : std::nan("");
  m->eval_loss = eval_tokens > 0 ? eval_sum / eval_tokens : std::nan("");
  std::shared_ptr<const TensorMap> current;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current = global_;
  }
  aggregation::RoundContext ctx;
  ctx.round = round;
  ASSIGN_OR_RETURN(TensorMap next, strategy_->Aggregate(ctx, *current, client));
  for (const auto& kv : next) {
    if (!torch::isfinite(kv.second).all().item<bool>()) {
      return Status::Internal("aggregated tensor '" + kv.first +
                              "' is not finite; keeping the previous global");
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    global_ = std::make_shared<const TensorMap>(std::move(next));
  }
  m->server_eval_loss = ServerEval();
  return Status::Ok();
}

double Coordinator::ServerEval() {
  if (!eval_model_ || eval_examples_.empty()) return std::nan("");
  std::shared_ptr<const TensorMap> g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    g = global_;
  }
  Status s = eval_model_->LoadAdapterTensors(*g);
  if (!s.ok()) return std::nan("");
  worker::EvalResult r =
      worker::Evaluate(eval_model_->model(), eval_examples_,
                       config_.eval.batch_size, torch::Device(torch::kCPU));
  return r.loss;
}

Status Coordinator::WriteCheckpoint(int64_t round) {
  Checkpoint ckpt;
  ckpt.round = round;
  ckpt.federation_id = config_.federation.id;
  std::ostringstream rng_out;
  rng_out << rng_;
  ckpt.rng_state = rng_out.str();
  ckpt.strategy = strategy_->name();
  ckpt.base_model = config_.model.path;
  ckpt.adapter_config = adapter_config_;
  ckpt.strategy_state = strategy_->State();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ckpt.global = *global_;
    ckpt.bytes_up = total_bytes_up_;
    ckpt.bytes_down = total_bytes_down_;
  }
  return SaveCheckpoint(config_.checkpoint.dir, ckpt, config_.checkpoint.keep);
}

void Coordinator::LogRound(const RoundMetrics& m) {
  std::string eval = std::isfinite(m.eval_loss)
                         ? fmt::format("{:.4f}", m.eval_loss)
                         : std::string("n/a");
  if (std::isfinite(m.server_eval_loss)) {
    eval += fmt::format(" (server {:.4f})", m.server_eval_loss);
  }
  FP_LOG_INFO("coordinator",
              "round {}/{} {}: selected {} answered {} dropped {} | train "
              "loss {:.4f} eval loss {} | up {} down {} | {:.1f}s",
              m.round, config_.federation.rounds,
              m.aggregated ? "done" : "skipped", m.selected, m.answered,
              m.dropped, m.train_loss, eval, FormatBytes(m.bytes_up),
              FormatBytes(m.bytes_down), m.seconds);
  if (!metrics_.is_open()) return;
  nlohmann::json j = {
      {"round", m.round},
      {"attempt", m.attempt},
      {"aggregated", m.aggregated},
      {"selected", m.selected},
      {"answered", m.answered},
      {"dropped", m.dropped},
      {"rejected", m.rejected},
      {"train_loss", NumberOrNull(m.train_loss)},
      {"eval_loss", NumberOrNull(m.eval_loss)},
      {"server_eval_loss", NumberOrNull(m.server_eval_loss)},
      {"bytes_up", m.bytes_up},
      {"bytes_down", m.bytes_down},
      {"seconds", m.seconds},
      {"worker_seconds_max", m.max_train_seconds},
      {"strategy", strategy_->name()},
      {"unix_ms", UnixMillis()},
  };
  metrics_ << j.dump() << "\n";
  metrics_.flush();
}

Status Coordinator::Run() {
  const FederationOptions& f = config_.federation;
  FP_LOG_INFO("coordinator",
              "federation '{}': {} rounds, strategy {}, fraction {:.2f} "
              "(min {}, max {}), quorum {:.2f}, deadline {:.0f}s, model {}, "
              "adapter {} ({} tensors), checkpoints in {}",
              f.id, f.rounds, strategy_->name(), f.fraction, f.min_workers,
              f.max_workers, f.quorum, f.round_deadline_s, config_.model.path,
              config_.peft.method, template_->size(), config_.checkpoint.dir);
  for (int64_t round = completed_rounds_ + 1; round <= f.rounds && !stop_;
       ++round) {
    int attempt = 0;
    while (!stop_) {
      if (!WaitForWorkers()) break;
      RoundMetrics m;
      bool ok = RunRoundAttempt(round, attempt, &m);
      if (stop_) break;
      if (!ok && f.on_quorum_miss == "retry" && attempt < f.max_retries) {
        LogRound(m);
        ++attempt;
        continue;
      }
      // checkpoint (a skipped round keeps the previous adapter)
      Status s = WriteCheckpoint(round);
      if (!s.ok())
        return s.WithContext("checkpoint after round " + std::to_string(round));
      completed_rounds_ = round;
      {
        std::lock_guard<std::mutex> lock(mu_);
        history_.push_back(m);
        phase_ = Phase::kWaitWorkers;
        selected_.clear();
      }
      LogRound(m);
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    phase_ = Phase::kDone;
    selected_.clear();
    cv_.notify_all();
  }
  if (stop_) {
    FP_LOG_WARN("coordinator", "stopped after round {}", completed_rounds_);
    return Status::Ok();
  }
  FP_LOG_INFO("coordinator",
              "federation '{}' finished {} rounds; telling workers to shut "
              "down for {:.0f}s",
              f.id, completed_rounds_, f.shutdown_grace_s);
  auto until = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(
                                  f.shutdown_grace_s * 1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_ && Clock::now() < until) {
    // Leave early once every live worker has been told.
    bool all_told = true;
    for (const std::string& id : AliveWorkers()) {
      if (!told_shutdown_.count(id)) all_told = false;
    }
    if (all_told) break;
    cv_.wait_until(
        lock, std::min(until, Clock::now() + std::chrono::milliseconds(200)));
  }
  return Status::Ok();
}

}  // namespace coordinator
}  // namespace fedpeft
