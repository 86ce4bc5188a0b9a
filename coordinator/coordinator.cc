#include "coordinator/coordinator.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>
#include <thread>

#include "aggregation/mean.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "model/loader.h"
#include "model/tokenizer.h"
#include "peft/peft_io.h"
#include "security/secagg_fixed_point.h"
#include "security/secagg_update.h"
#include "worker/local_trainer.h"

namespace fedpeft {
namespace coordinator {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Workers a round selects out of n alive.
int SelectedOf(const FederationOptions& f, int n) {
  int k = static_cast<int>(std::ceil(f.fraction * n));
  k = std::max(k, f.min_workers);
  if (f.max_workers > 0) k = std::min(k, f.max_workers);
  return std::min(k, n);
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

std::string EdgePlan::ToJson() const {
  nlohmann::json j = {{"heterogeneity", heterogeneity.ToJson()},
                      {"ffa", ffa},
                      {"adapter_seed", adapter_seed},
                      {"dp", dp},
                      {"dp_noise_seed", dp_noise_seed},
                      {"compression",
                       {{"bits", compression.bits},
                        {"block_size", compression.block_size},
                        {"error_feedback", compression.error_feedback},
                        {"download_bits", compression.download_bits}}},
                      {"secagg", secagg.ToJson()}};
  return j.dump();
}

StatusOr<EdgePlan> EdgePlan::FromJson(const std::string& text) {
  EdgePlan plan;
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    ASSIGN_OR_RETURN(plan.heterogeneity,
                     HeterogeneityOptions::FromJson(j.at("heterogeneity")));
    plan.ffa = j.at("ffa").get<bool>();
    plan.adapter_seed = j.at("adapter_seed").get<uint64_t>();
    plan.dp = j.at("dp").get<bool>();
    plan.dp_noise_seed = j.at("dp_noise_seed").get<uint64_t>();
    const nlohmann::json& c = j.at("compression");
    plan.compression.bits = c.at("bits").get<int>();
    plan.compression.block_size = c.at("block_size").get<int64_t>();
    plan.compression.error_feedback = c.at("error_feedback").get<bool>();
    plan.compression.download_bits = c.at("download_bits").get<int>();
    ASSIGN_OR_RETURN(plan.secagg, SecAggOptions::FromJson(j.at("secagg")));
  } catch (const std::exception& e) {
    return Status::InvalidArgument(
        std::string("plan_json from the coordinator: ") + e.what() +
        " (is the coordinator a fedpeft of another version?)");
  }
  for (int bits : {plan.compression.bits, plan.compression.download_bits}) {
    RETURN_IF_ERROR(transport::ValidateCodecOptions(
        {bits, plan.compression.block_size}, "plan_json compression"));
  }
  return plan;
}

StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    const CoordinatorConfig& config) {
  std::unique_ptr<Coordinator> c(new Coordinator(config));
  RETURN_IF_ERROR(c->Init());
  return c;
}

StatusOr<std::unique_ptr<Coordinator>> Coordinator::CreateEdge(
    const CoordinatorConfig& config, const EdgePlan& plan) {
  std::unique_ptr<Coordinator> c(new Coordinator(config));
  c->edge_mode_ = true;
  c->config_.heterogeneity = plan.heterogeneity;
  c->config_.freezing.ffa = plan.ffa;
  c->config_.freezing.apf.enabled = false;  // the cloud decides freezing
  c->config_.adapter_seed = plan.adapter_seed;
  c->config_.strategy = aggregation::StrategyOptions{};  // HierFAVG: fedavg
  c->config_.eval.data.path.clear();
  c->config_.dp = DpOptions{};
  c->config_.dp.enabled = plan.dp;
  c->config_.dp.noise_seed = plan.dp_noise_seed;
  c->config_.compression = plan.compression;
  c->config_.secagg = plan.secagg;
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
  schema_ = transport::Schema::OfKeys(*zeros);
  init_ = std::make_shared<const TensorMap>(*global);
  train_ = config_.train;
  if (config_.heterogeneity.enabled) {
    aggregation::HeteroOptions h;
    ASSIGN_OR_RETURN(
        h.method, aggregation::ParseHeteroMethod(config_.heterogeneity.method));
    h.r_max = config_.peft.lora.r;
    h.scaling = peft::LoraScaling(config_.peft.lora, config_.peft.lora.alpha,
                                  config_.peft.lora.r);
    h.stack_max_rank = config_.heterogeneity.stack_max_rank;
    hetero_ = h;
  }
  if (config_.freezing.apf.enabled) {
    apf_ = std::make_unique<peft::ApfController>(config_.freezing.apf);
  }
  if (config_.dp.enabled) {
    uint64_t seed = config_.dp.noise_seed;
    if (seed != 0 && edge_mode_) {
      seed ^= Mix(std::hash<std::string>()(config_.federation.id));
    }
    noise_ = std::make_unique<privacy::GaussianNoise>(seed);
    clip_norm_ = config_.dp.clip_norm;
    if (!edge_mode_) accountant_ = std::make_unique<privacy::RdpAccountant>();
  }
  codec_rng_.seed(std::random_device()());
  adapter_config_ = peft::AdapterConfigToJson(config_.peft, config_.model.path);
  adapter_config_json_ = adapter_config_.dump();
  rng_.seed(config_.federation.seed);

  auto ckpt = edge_mode_ ? StatusOr<Checkpoint>(Status::NotFound("edge"))
                         : LoadLatestCheckpoint(config_.checkpoint.dir);
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
    // The stack merge keeps a variable rank per module: only names count.
    Status compatible =
        hetero_ && hetero_->method == aggregation::HeteroMethod::kStack
            ? aggregation::LoraPairs(ckpt->global).status()
            : aggregation::ValidateUpdate(*template_, probe);
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
    const nlohmann::json& extra = ckpt->extra;
    if (apf_ && extra.contains("apf")) {
      RETURN_IF_ERROR(
          apf_->LoadState(extra["apf"])
              .WithContext("checkpoint in '" + config_.checkpoint.dir + "'"));
    }
    if (extra.contains("ranks") && extra["ranks"].is_object()) {
      for (const auto& [id, r] : extra["ranks"].items()) {
        if (r.is_number_integer()) workers_[id].rank = r.get<int64_t>();
      }
    }
    if (accountant_ && extra.contains("dp")) {
      const nlohmann::json& d = extra["dp"];
      try {
        clip_norm_ = d.at("clip_norm").get<double>();
        dp_z_ = d.at("noise_multiplier").get<double>();
        dp_delta_ = d.at("delta").get<double>();
        dp_population_ = d.at("population").get<int64_t>();
        dp_count_stddev_ = d.at("count_stddev").get<double>();
        std::vector<double> rdp;
        for (const auto& v : d.at("rdp")) {  // JSON has no infinity: null
          rdp.push_back(v.is_null() ? std::numeric_limits<double>::infinity()
                                    : v.get<double>());
        }
        RETURN_IF_ERROR(accountant_->SetRdp(rdp));
        dp_ready_ = true;
      } catch (const std::exception& e) {
        return Status::Corruption("checkpoint in '" + config_.checkpoint.dir +
                                  "': extra.dp: " + e.what());
      }
    } else if (accountant_ && ckpt->round > 0) {
      return Status::FailedPrecondition(
          "checkpoint in '" + config_.checkpoint.dir +
          "' was written without DP, this config enables dp: the privacy "
          "spent so far is unknown (start a new federation)");
    }
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
    const std::string parent =
        std::filesystem::path(config_.logging.metrics_file).parent_path();
    if (!parent.empty()) {
      RETURN_IF_ERROR(
          EnsureDirectory(parent).WithContext("logging.metrics_file"));
    }
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
  if (hetero_ && !profile.edge && w.rank == 0) {
    w.rank = peft::InitialRank(
        config_.heterogeneity.policy, CostFor(profile),
        peft::DeviceProfile{profile.ram_bytes, profile.tokens_per_second,
                            profile.uplink_bytes_per_second},
        config_.federation.round_deadline_s);
  }
  w.last_seen = Clock::now();
  std::ostringstream sid;
  sid << config_.federation.id << "/" << profile.worker_id << "/" << std::hex
      << Mix(next_session_++ ^ UnixMillis());
  w.session_id = sid.str();
  sessions_[w.session_id] = profile.worker_id;
  FP_LOG_INFO("coordinator",
              "{} '{}' {} ({} threads, {:.0f} tok/s, {} samples{}); {} "
              "registered",
              profile.edge ? "edge" : "worker", profile.worker_id,
              rejoin ? "re-registered" : "registered", profile.threads,
              profile.tokens_per_second, profile.num_samples,
              w.rank > 0 ? fmt::format(", rank {}", w.rank) : "",
              workers_.size());
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
    plan.dp_noise_seed = config_.dp.noise_seed;
    plan.compression = config_.compression;
    plan.secagg = config_.secagg;
    r.plan_json = plan.ToJson();
  }
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
      task.train = train_;
      task.seed = Mix(round_seed_ ^ std::hash<std::string>()(id));
      task.deadline_unix_ms = deadline_unix_ms_;
      task.rank = RankOf(*w);
      task.frozen.assign(frozen_.begin(), frozen_.end());
      task.edge_rounds = w->profile.edge ? config_.hierarchy.edge_rounds : 0;
      task.train_b_only = config_.freezing.ffa;
      task.prune_threshold = config_.heterogeneity.prune_threshold;
      task.clip_norm = round_dp_.enabled ? round_dp_.clip_norm : 0;
      task.compression = config_.compression;
      if (w->profile.edge) {
        task.noise_stddev = round_dp_.edge_share;
        task.count_noise_stddev = round_dp_.edge_count_share;
      }
      if (secagg_ && secagg_->index.count(id)) {
        SecAggTaskInfo sa;
        sa.session_id = secagg_->params.session_id;
        sa.num_clients = secagg_->params.num_clients;
        sa.threshold = secagg_->params.Threshold();
        sa.index = secagg_->index.at(id);
        sa.scale = secagg_->scale;
        sa.vector_length = secagg_->params.vector_length;
        sa.tensors = secagg_->names;
        task.secagg = std::move(sa);
      }
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

int64_t Coordinator::RankOf(const WorkerEntry& w) const {
  return hetero_ && !w.profile.edge ? w.rank : 0;
}

StatusOr<std::shared_ptr<const TensorMap>> Coordinator::GlobalAdapter(
    const std::string& session_id, int64_t round, uint64_t cached_round) {
  std::shared_ptr<const TensorMap> global;
  int64_t rank = 0;
  std::map<std::string, int64_t> changed;
  {
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
    if (cached_round > static_cast<uint64_t>(round)) {
      return Status::InvalidArgument(
          "cached_round " + std::to_string(cached_round) +
          " is ahead of round " + std::to_string(round));
    }
    global = global_;
    rank = RankOf(*w);
    if (cached_round > 0) changed = last_changed_;
  }
  if (rank == 0 && cached_round == 0) return global;
  // The worker's view: its leading rank components, without what its
  // cached copy of round `cached_round` already holds.
  auto out = std::make_shared<TensorMap>(
      rank > 0 ? aggregation::TruncateRank(*global, rank) : *global);
  if (cached_round > 0) {
    for (auto it = out->begin(); it != out->end();) {
      auto c = changed.find(it->first);
      int64_t last = c == changed.end() ? 0 : c->second;
      if (last < static_cast<int64_t>(cached_round)) {
        it = out->erase(it);
      } else {
        ++it;
      }
    }
  }
  return std::shared_ptr<const TensorMap>(std::move(out));
}

StatusOr<UploadExpectation> Coordinator::ExpectedUpload(
    const std::string& session_id, const UpdateHeader& header) {
  std::shared_ptr<const TensorMap> global;
  int64_t rank = 0;
  std::set<std::string> frozen;
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    WorkerEntry* w = FindSession(session_id);
    if (!w) {
      return Status::NotFound("unknown session '" + session_id +
                              "': register again");
    }
    id = w->profile.worker_id;
    global = global_;
    auto r = round_ranks_.find(id);
    rank = r != round_ranks_.end() ? r->second : RankOf(*w);
    frozen = frozen_;
  }
  UploadExpectation e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (secagg_ && secagg_->index.count(id)) {
      e.masked = true;
      e.masked_names = secagg_->names;
    }
  }
  if (e.masked) {
    // Masked words come at the global adapter's shapes, whatever rank the
    // worker trained (it zero-pads).
    e.max_tensors = global->size();
    e.specs = transport::SpecsOf(*global);
    e.excluded = frozen;
    return e;
  }
  e.max_tensors = global->size();
  if (header.whole_adapter) {
    if (!hetero_ || hetero_->method != aggregation::HeteroMethod::kStack) {
      return Status::InvalidArgument(
          "upload from '" + id +
          "': a whole adapter is only taken with heterogeneity.method stack");
    }
    e.max_tensors = global->size();
    return e;  // shapes are checked once decoded
  }
  if (header.rank < 0 || (rank == 0 && header.rank != 0) ||
      (rank > 0 && (header.rank < 1 || header.rank > rank))) {
    return Status::InvalidArgument(
        "upload from '" + id + "': rank " + std::to_string(header.rank) +
        ", expected " +
        (rank == 0 ? std::string("0 (the global adapter's shapes)")
                   : "1.." + std::to_string(rank) + " (the assigned rank)"));
  }
  TensorMap shapes = header.rank > 0
                         ? aggregation::TruncateRank(*global, header.rank)
                         : *global;
  e.specs = transport::SpecsOf(shapes);
  for (auto& kv : *e.specs) kv.second.dtype = torch::kFloat32;
  e.excluded = frozen;
  return e;
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

StatusOr<std::string> Coordinator::SessionOwner(const std::string& session_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    return Status::NotFound("unknown session '" + session_id +
                            "': register again");
  }
  return it->second;
}

void Coordinator::Revoke(const std::string& worker_id,
                         const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.session_id.empty()) return;
  WorkerEntry& w = it->second;
  sessions_.erase(w.session_id);
  w.session_id.clear();
  // Not alive from now on: never selected again unless it registers anew.
  w.last_seen =
      Clock::now() -
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
          config_.federation.worker_timeout_s + 1));
  bool pending = phase_ == Phase::kCollect && selected_.count(worker_id) &&
                 !answered_.count(worker_id);
  FP_LOG_WARN(
      "coordinator", "'{}' revoked ({}); session closed{}", worker_id, reason,
      pending ? fmt::format(", round {} goes on without it", round_) : "");
  if (pending) {
    answered_.insert(worker_id);
    ++rejected_;
    cv_.notify_all();
  }
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
  std::string worker_id = session_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    WorkerEntry* w = FindSession(session_id);
    if (w) worker_id = w->profile.worker_id;
  }
  Status valid = CheckUploadAllowed(session_id, header.round);
  StatusOr<UploadExpectation> expected =
      valid.ok() ? ExpectedUpload(session_id, header)
                 : StatusOr<UploadExpectation>(valid);
  if (expected.ok() && expected->masked) {
    return SubmitMasked(session_id, worker_id, header, delta,
                        expected->masked_names, bytes_received);
  }
  if (valid.ok()) {
    // Names and shapes (the service's decoder checked them already; direct
    // callers did not), then values.
    valid = expected.status();
    if (valid.ok() && expected->specs) {
      for (const auto& [key, t] : delta) {
        auto it = expected->specs->find(key);
        if (it == expected->specs->end() || expected->excluded.count(key)) {
          valid = Status::InvalidArgument("update from '" + worker_id +
                                          "': unexpected tensor '" + key +
                                          "' (unknown, or frozen this round)");
          break;
        }
        if (t.sizes().vec() != it->second.shape) {
          valid = Status::InvalidArgument(
              "update from '" + worker_id + "': tensor '" + key +
              "' has shape " + aggregation::ShapeString(t.sizes()) +
              ", expected " + aggregation::ShapeString(it->second.shape));
          break;
        }
      }
    }
  }
  if (valid.ok() && header.whole_adapter) {
    valid = aggregation::LoraPairs(delta).status();
  }
  if (valid.ok() && header.num_samples == 0) {
    valid = Status::InvalidArgument("update from '" + worker_id +
                                    "': num_samples must be > 0");
  }
  if (valid.ok()) {
    for (const auto& [key, t] : delta) {
      if (t.scalar_type() != torch::kFloat32) {
        valid =
            Status::InvalidArgument("update from '" + worker_id +
                                    "': tensor '" + key + "' is not float32");
        break;
      }
      if (!torch::isfinite(t).all().item<bool>()) {
        valid =
            Status::InvalidArgument("update from '" + worker_id +
                                    "': tensor '" + key + "' holds NaN or Inf");
        break;
      }
    }
  }
  if (valid.ok() && !std::isfinite(header.train_loss)) {
    valid = Status::InvalidArgument("train_loss: expected a finite number");
  }
  if (valid.ok()) {
    RoundDp dp;
    bool edge = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      dp = round_dp_;
      WorkerEntry* w = FindSession(session_id);
      edge = w && w->profile.edge;
    }
    if (dp.enabled && header.whole_adapter) {
      valid = Status::InvalidArgument("update from '" + worker_id +
                                      "': a whole adapter under DP (expected "
                                      "a clipped delta)");
    } else if (dp.enabled && !edge) {
      // The clip bound is what the noise is calibrated to: an update over
      // it (a faulty or hostile worker) is refused, not rescaled.
      const double norm = privacy::GlobalNorm(delta);
      if (!(norm <= dp.clip_norm * (1 + 1e-5))) {
        valid = Status::InvalidArgument(fmt::format(
            "update from '{}': L2 norm {:.6g} exceeds the round's clip norm "
            "{:.6g} (dp.clip_norm)",
            worker_id, norm, dp.clip_norm));
      } else if (header.unclipped != 0 && header.unclipped != 1) {
        valid = Status::InvalidArgument(
            fmt::format("update from '{}': unclipped {} (expected 0 or 1)",
                        worker_id, header.unclipped));
      }
    } else if (dp.enabled && edge) {
      if (header.workers == 0 || !std::isfinite(header.unclipped) ||
          header.users_selected < header.workers ||
          header.users_alive < header.users_selected) {
        valid = Status::InvalidArgument(fmt::format(
            "update from edge '{}': workers {}, users selected {} of {} "
            "alive, unclipped {} (expected 1 <= workers <= selected <= "
            "alive and a finite count)",
            worker_id, header.workers, header.users_selected,
            header.users_alive, header.unclipped));
      }
    }
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
    FP_LOG_WARN("coordinator", "rejected upload from '{}': {}", worker_id,
                reason);
    return Status::FailedPrecondition(reason);
  }
  answered_.insert(w->profile.worker_id);
  round_worker_bytes_[w->profile.worker_id] += bytes_received;
  w->rounds_completed++;
  Pending p{w->profile.worker_id, header, std::move(delta)};
  p.edge = w->profile.edge;
  pending_.push_back(std::move(p));
  FP_LOG_INFO("coordinator",
              "round {}: update from '{}' ({} samples, train loss {:.4f}, "
              "{}{}), {}/{} in",
              header.round, w->profile.worker_id, header.num_samples,
              header.train_loss, FormatBytes(bytes_received),
              header.rank > 0 ? fmt::format(", rank {}", header.rank) : "",
              answered_.size(), selected_.size());
  cv_.notify_all();
  return Status::Ok();
}

Status Coordinator::SubmitMasked(const std::string& session_id,
                                 const std::string& worker_id,
                                 const UpdateHeader& header,
                                 const TensorMap& words,
                                 const std::vector<std::string>& names,
                                 uint64_t bytes_received) {
  const std::string from = "masked update from '" + worker_id + "'";
  Status valid;
  if (words.size() != names.size()) {
    valid = Status::InvalidArgument(
        from + ": " + std::to_string(words.size()) + " tensors, expected " +
        std::to_string(names.size()) +
        " (every tensor of the round's secure aggregation)");
  }
  std::vector<uint32_t> flat;
  for (const std::string& name : names) {
    if (!valid.ok()) break;
    auto it = words.find(name);
    if (it == words.end() || it->second.scalar_type() != torch::kInt32) {
      valid = Status::InvalidArgument(
          from + ": tensor '" + name +
          (it == words.end() ? "' missing" : "' is not CODEC_MASKED"));
      break;
    }
    torch::Tensor t = it->second.contiguous();
    const auto* p = reinterpret_cast<const uint32_t*>(t.data_ptr<int32_t>());
    flat.insert(flat.end(), p, p + t.numel());
  }
  if (valid.ok() && header.num_samples == 0) {
    valid = Status::InvalidArgument(from + ": num_samples must be > 0");
  }
  if (valid.ok() && !std::isfinite(header.train_loss)) {
    valid = Status::InvalidArgument(from +
                                    ": train_loss: expected a finite number");
  }
  flat.push_back(header.masked_unclipped);
  std::unique_lock<std::mutex> lock(mu_);
  WorkerEntry* w = FindSession(session_id);
  if (valid.ok() &&
      (!w || header.round != round_ || phase_ != Phase::kCollect ||
       answered_.count(worker_id) || !secagg_ || !secagg_->server ||
       !secagg_->index.count(worker_id))) {
    valid = Status::FailedPrecondition("late " + from + " for round " +
                                       std::to_string(header.round) +
                                       " (round closed)");
  }
  if (valid.ok()) {
    secagg::MaskedInputMsg msg;
    msg.session_id = secagg_->params.session_id;
    msg.sender = secagg_->index.at(worker_id);
    msg.masked = std::move(flat);
    valid = secagg_->server->ReceiveMaskedInput(msg);
    if (!valid.ok()) valid = valid.WithContext(from);
  }
  if (!valid.ok()) {
    lock.unlock();
    RecordRejectedUpload(session_id, header.round, valid.message(),
                         bytes_received);
    return valid;
  }
  round_bytes_up_ += bytes_received;
  total_bytes_up_ += bytes_received;
  answered_.insert(worker_id);
  round_worker_bytes_[worker_id] += bytes_received;
  w->rounds_completed++;
  Pending p{worker_id, header, TensorMap()};
  pending_.push_back(std::move(p));
  FP_LOG_INFO("coordinator",
              "{} {}: masked update from '{}' ({} samples, train loss {:.4f}, "
              "{}), {}/{} in",
              edge_mode_ ? "edge round" : "round", header.round, worker_id,
              header.num_samples, header.train_loss,
              FormatBytes(bytes_received), answered_.size(), selected_.size());
  cv_.notify_all();
  return Status::Ok();
}

void Coordinator::AddBytesDown(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  round_bytes_down_ += bytes;
  total_bytes_down_ += bytes;
}

transport::CodecOptions Coordinator::DownloadCodec() {
  std::lock_guard<std::mutex> lock(mu_);  // an edge's task changes it
  return {config_.compression.download_bits, config_.compression.block_size};
}

const transport::Schema* Coordinator::AdapterSchema() const {
  // Names cost ~60 bytes a tensor, which only matters next to quantized
  // payloads; the stack merge's ranks vary by module: tensors go by name.
  if (config_.compression.download_bits >= 16 ||
      (hetero_ && hetero_->method == aggregation::HeteroMethod::kStack)) {
    return nullptr;
  }
  return &schema_;
}

uint64_t Coordinator::NextCodecSeed() {
  std::lock_guard<std::mutex> lock(codec_mu_);
  return codec_rng_();
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

peft::AdapterCost Coordinator::CostFor(const WorkerProfile& p) const {
  const model::LlamaConfig& c = base_->config;
  peft::AdapterCost cost;
  int64_t modules = 0;
  for (const auto& [key, t] : *template_) {
    if (key.find(".lora_A.") != std::string::npos) {
      cost.params_per_rank += t.size(1);
      ++modules;
    } else if (key.find(".lora_B.") != std::string::npos) {
      cost.params_per_rank += t.size(0);
    }
  }
  const int64_t seq = p.seq_len > 0 ? p.seq_len : c.max_seq_len;
  const int64_t batch = train_.batch_size;
  const int64_t steps =
      train_.local_steps > 0
          ? train_.local_steps
          : static_cast<int64_t>((p.num_samples + batch - 1) / batch) *
                train_.local_epochs;
  cost.tokens_per_round = steps * batch * seq;
  // Activations kept for backward: per token and layer roughly the residual
  // stream, attention and MLP inputs and outputs; plus the logits and their
  // gradient. An estimate, good to a small factor, which is what sizing a
  // rank needs.
  const int64_t per_token =
      c.n_layers * (8 * c.dim + 3 * c.hidden_dim) * 4 + 2 * c.vocab_size * 4;
  cost.act_bytes_fixed = batch * seq * per_token;
  cost.act_bytes_per_rank = batch * seq * modules * 4;
  cost.upload_bytes_per_param = 4;
  int64_t base_params = 0;
  base_params += c.n_layers * (4 * c.dim * c.dim + 3 * c.dim * c.hidden_dim);
  base_params += c.vocab_size * c.dim;
  cost.compute_per_rank =
      base_params > 0 ? static_cast<double>(cost.params_per_rank) / base_params
                      : 0;
  return cost;
}

void Coordinator::UpdateRanks(const std::vector<Pending>& answered) {
  if (!hetero_) return;
  const double deadline = round_deadline_s_ > 0
                              ? round_deadline_s_
                              : config_.federation.round_deadline_s;
  std::map<std::string, const UpdateHeader*> by_id;
  for (const auto& p : answered) {
    by_id[p.worker_id] = &p.header;
    for (const auto& [id, h] : p.members) by_id[id] = &h;
  }
  for (const auto& [id, assigned] : round_ranks_) {
    auto it = workers_.find(id);
    if (it == workers_.end() || it->second.profile.edge || assigned == 0) {
      continue;
    }
    WorkerEntry& w = it->second;
    peft::RoundObservation obs;
    auto p = by_id.find(id);
    obs.answered = p != by_id.end();
    obs.missed_deadline = !obs.answered;
    if (obs.answered) {
      obs.seconds = p->second->train_seconds;
      obs.tokens_per_second = p->second->tokens_per_second;
      if (obs.tokens_per_second > 0) {
        w.profile.tokens_per_second = obs.tokens_per_second;
      }
    }
    int64_t next = peft::NextRank(
        config_.heterogeneity.policy, CostFor(w.profile),
        peft::DeviceProfile{w.profile.ram_bytes, w.profile.tokens_per_second,
                            w.profile.uplink_bytes_per_second},
        deadline, assigned, obs);
    if (obs.answered && p->second->rank > 0 && p->second->rank < next) {
      next = p->second->rank;  // it pruned itself
    }
    if (next != assigned) {
      FP_LOG_INFO("coordinator", "'{}': rank {} -> {} ({})", id, assigned, next,
                  !obs.answered ? "missed the round"
                                : fmt::format("{:.1f}s of {:.0f}s", obs.seconds,
                                              deadline));
    }
    w.rank = next;
  }
}

void Coordinator::FillRoundShape(RoundMetrics* m) {
  m->frozen_fraction =
      global_->empty() ? 0.0
                       : static_cast<double>(frozen_.size()) / global_->size();
  int64_t lo = 0, hi = 0;
  double sum = 0;
  int n = 0;
  for (const auto& [id, r] : round_ranks_) {
    if (workers_.at(id).profile.edge) continue;
    int64_t rank = r > 0 ? r : config_.peft.lora.r;
    if (config_.peft.method != "lora") rank = 0;
    lo = n == 0 ? rank : std::min(lo, rank);
    hi = std::max(hi, rank);
    sum += rank;
    ++n;
  }
  m->rank_min = lo;
  m->rank_max = hi;
  m->rank_mean = n > 0 ? sum / n : 0;
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
    const int k = SelectedOf(f, n);
    for (int i = n - 1; i > 0; --i) {  // Fisher-Yates with the checkpointed rng
      std::swap(alive[i], alive[rng_() % static_cast<uint64_t>(i + 1)]);
    }
    selected_ = std::set<std::string>(alive.begin(), alive.begin() + k);
    if (apf_) {
      frozen_ = apf_->FrozenAt(round);
    } else if (!edge_mode_) {
      frozen_.clear();
    }
    round_ranks_.clear();
    for (const auto& id : selected_) {
      round_ranks_[id] = RankOf(workers_.at(id));
    }
    FillRoundShape(m);
    answered_.clear();
    pending_.clear();
    rejected_ = 0;
    round_bytes_up_ = round_bytes_down_ = 0;
    round_worker_bytes_.clear();
    int edges_selected = 0;
    for (const auto& id : selected_) {
      edges_selected += workers_.at(id).profile.edge ? 1 : 0;
    }
    if (!edge_mode_ && accountant_) {
      Status planned = PlanRoundDp(edges_selected);
      if (!planned.ok()) {
        FP_LOG_ERROR("coordinator", "round {}: dp: {}", round,
                     planned.ToString());
      }
    }
    m->users_alive = n;
    m->clip_norm = round_dp_.enabled ? round_dp_.clip_norm : 0;
    m->noise_multiplier = round_dp_.enabled ? round_dp_.z_update : 0;
    round_ = round;
    attempt_ = attempt;
    round_seed_ = Mix(f.seed ^ Mix(static_cast<uint64_t>(round) * 131 +
                                   static_cast<uint64_t>(attempt)));
    const double deadline_s =
        round_deadline_s_ > 0 ? round_deadline_s_ : f.round_deadline_s;
    auto deadline = Clock::now() + std::chrono::milliseconds(
                                       static_cast<int64_t>(deadline_s * 1000));
    deadline_unix_ms_ = UnixMillis() + static_cast<uint64_t>(deadline_s * 1000);
    StartSecAgg(round, deadline_s);
    // broadcast: waiting GetTask calls wake up and take the task
    phase_ = Phase::kCollect;
    m->selected = k;
    std::string names;
    for (const auto& s : selected_) names += (names.empty() ? "" : ", ") + s;
    FP_LOG_INFO(
        "coordinator", "{} {}{}: selected {} of {} alive: {}{}",
        edge_mode_ ? "edge round" : "round",
        edge_mode_ ? std::to_string(round)
                   : std::to_string(round) + "/" + std::to_string(f.rounds),
        attempt > 0 ? " (retry " + std::to_string(attempt) + ")" : "", k, n,
        names,
        frozen_.empty() ? std::string()
                        : fmt::format("; {} tensors frozen", frozen_.size()));
    cv_.notify_all();

    // collect
    while (!stop_) {
      auto now = Clock::now();
      AdvanceSecAgg(now);
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
                      round, deadline_s, pending_.size(), selected_.size());
        }
        break;
      }
      cv_.wait_until(lock,
                     std::min(deadline, now + std::chrono::milliseconds(250)));
    }
    phase_ = Phase::kAggregate;
    m->worker_bytes_up = round_worker_bytes_;
    updates = std::move(pending_);
    pending_.clear();
    m->answered = static_cast<int>(updates.size());
    if (secagg_) {
      // Masked updates count once their sum is recovered.
      FinishSecAgg(lock, round, &updates);
      m->answered = 0;
      m->secagg_workers = 0;
      for (const auto& u : updates) {
        m->answered += u.summed ? static_cast<int>(u.members.size()) : 1;
        if (u.summed) m->secagg_workers = static_cast<int>(u.members.size());
      }
    }
    m->rejected = rejected_;
    m->dropped = m->selected - m->answered;
    for (const auto& id : selected_) {
      if (!answered_.count(id)) {
        FP_LOG_WARN("coordinator", "round {}: no answer from '{}' (dropped)",
                    round, id);
      }
    }
    if (!stop_) UpdateRanks(updates);
    m->edges_answered = 0;
    for (const auto& u : updates) m->edges_answered += u.edge ? 1 : 0;
    if (m->edges_answered > 0) {
      // Behind edges, the ranks are the ones the edges assigned.
      int64_t lo = 0, hi = 0;
      double sum = 0, count = 0;
      for (const auto& u : updates) {
        const UpdateHeader& h = u.header;
        if (!u.edge || h.rank_max == 0) continue;
        lo = lo == 0 ? h.rank_min : std::min<int64_t>(lo, h.rank_min);
        hi = std::max<int64_t>(hi, h.rank_max);
        double n = std::max<uint32_t>(1, h.workers);
        sum += h.rank_mean * n;
        count += n;
      }
      if (count > 0) {
        m->rank_min = lo;
        m->rank_max = hi;
        m->rank_mean = sum / count;
      }
    }
  }
  int quorum = std::max(1, static_cast<int>(std::ceil(f.quorum * m->selected)));
  bool ok = !stop_ && m->answered >= quorum;
  if (accountant_ && m->answered > 0) {
    // Spent whether or not the round aggregates: with noise at the edges,
    // the cloud has seen their releases.
    int edges_alive = 0, edges_selected = 0, direct_alive = 0,
        direct_selected = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto now = Clock::now();
      for (const auto& [id, w] : workers_) {
        if (!IsAlive(w, now) && !selected_.count(id)) continue;
        (w.profile.edge ? edges_alive : direct_alive) += 1;
        if (selected_.count(id)) {
          (w.profile.edge ? edges_selected : direct_selected) += 1;
        }
      }
    }
    FinishRoundDp(updates, round, direct_selected, direct_alive, edges_selected,
                  edges_alive, m);
  }
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
  last_round_headers_.clear();
  for (auto& p : updates) {
    if (p.summed) {
      for (const auto& [id, h] : p.members) last_round_headers_[id] = h;
    } else {
      last_round_headers_[p.worker_id] = p.header;
    }
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
    u.delta = p.delta;  // shares the tensors
    u.num_samples = static_cast<int64_t>(p.header.num_samples);
    u.train_loss = p.header.train_loss;
    client.push_back(std::move(u));
  }
  m->train_loss = sample_sum > 0 ? loss_sum / sample_sum : std::nan("");
  m->eval_loss = eval_tokens > 0 ? eval_sum / eval_tokens : std::nan("");
  std::shared_ptr<const TensorMap> current;
  std::set<std::string> frozen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current = global_;
    frozen = frozen_;
  }
  TensorMap next;
  bool dp = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dp = round_dp_.enabled;
  }
  if (dp) {
    // DP-FedAvg: every user weighs the same (the noise is calibrated to
    // one user's clipped update); the strategy applies the noised mean.
    aggregation::ClientUpdate u;
    u.worker_id = "dp-mean";
    ASSIGN_OR_RETURN(u.delta, DpMean(*current, frozen, updates, m));
    u.num_samples = 1;
    u.train_loss = m->train_loss;
    aggregation::RoundContext ctx;
    ctx.round = round;
    ASSIGN_OR_RETURN(next, strategy_->Aggregate(ctx, *current, {u}));
  } else if (hetero_) {
    std::vector<aggregation::HeteroUpdate> hu;
    for (auto& u : client) {
      aggregation::HeteroUpdate h;
      h.worker_id = u.worker_id;
      h.delta = std::move(u.delta);
      h.num_samples = u.num_samples;
      h.rank = 0;
      for (const auto& p : updates) {
        if (p.worker_id != u.worker_id) continue;
        h.rank = p.header.rank;
        h.whole_adapter = p.header.whole_adapter;
      }
      // Rank 0 (an edge): the global's own shapes.
      if (h.rank == 0) {
        for (const auto& [module, r] : aggregation::ModuleRanks(*current)) {
          h.rank = std::max(h.rank, r);
        }
      }
      hu.push_back(std::move(h));
    }
    aggregation::HeteroStats stats;
    ASSIGN_OR_RETURN(next, aggregation::HeteroAggregate(*hetero_, *current,
                                                        *init_, hu, &stats));
    if (stats.truncated_energy > 1e-6) {
      FP_LOG_INFO("coordinator",
                  "round {}: {} merge dropped {:.2g} of the update's energy "
                  "(rank cap)",
                  round, aggregation::HeteroMethodName(hetero_->method),
                  stats.truncated_energy);
    }
  } else {
    // Tensors an update left out (frozen, FFA-LoRA's A, layers a weak
    // worker froze) are unchanged for that worker: the mean of a tensor is
    // taken over the workers that trained it, which is what filling the
    // gaps with that mean gives every weighted-mean strategy.
    std::vector<double> weights =
        aggregation::ClientWeights(client, config_.strategy.weighted);
    for (const auto& [key, t] : *current) {
      double w_sum = 0;
      torch::Tensor acc;
      for (size_t k = 0; k < client.size(); ++k) {
        auto it = client[k].delta.find(key);
        if (it == client[k].delta.end()) continue;
        acc = acc.defined() ? acc + weights[k] * it->second
                            : weights[k] * it->second;
        w_sum += weights[k];
      }
      torch::Tensor fill = acc.defined() ? acc / w_sum : torch::zeros_like(t);
      for (auto& u : client) {
        if (!u.delta.count(key)) u.delta[key] = fill;
      }
    }
    aggregation::RoundContext ctx;
    ctx.round = round;
    ASSIGN_OR_RETURN(next, strategy_->Aggregate(ctx, *current, client));
  }
  // Frozen tensors stay exactly as they were (a server optimizer's momentum
  // would otherwise still move them).
  for (const std::string& key : frozen) {
    auto it = current->find(key);
    if (it != current->end()) next[key] = it->second;
  }
  for (const auto& kv : next) {
    if (!torch::isfinite(kv.second).all().item<bool>()) {
      return Status::Internal("aggregated tensor '" + kv.first +
                              "' is not finite; keeping the previous global");
    }
  }
  TensorMap applied;
  std::vector<std::string> changed;
  for (const auto& [key, t] : next) {
    auto it = current->find(key);
    if (it == current->end() || !it->second.sizes().equals(t.sizes())) {
      changed.push_back(key);
    } else if (!torch::equal(it->second, t)) {
      changed.push_back(key);
      applied[key] = t - it->second;
    }
  }
  if (apf_) apf_->Observe(round, applied);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& key : changed) last_changed_[key] = round;
    global_ = std::make_shared<const TensorMap>(std::move(next));
  }
  m->server_eval_loss = ServerEval();
  return Status::Ok();
}

// ---- secure aggregation -------------------------------------------------

namespace {

// Parses `bytes` as a message of type M from client `sender` (refused when
// it claims another sender) and hands it to `receive`.
template <typename M, typename Receive>
Status ReceiveFrom(uint32_t sender, const std::string& bytes, Receive receive) {
  ASSIGN_OR_RETURN(M msg, secagg::FromBytes<M>(bytes));
  if (msg.sender != sender) {
    return Status::InvalidArgument("sender " + std::to_string(msg.sender) +
                                   " is not the caller's id " +
                                   std::to_string(sender));
  }
  return receive(msg);
}

}  // namespace

void Coordinator::StartSecAgg(int64_t round, double deadline_s) {
  secagg_.reset();
  if (!config_.secagg.enabled) return;
  std::vector<std::string> members;  // sorted: selected_ is a set
  for (const auto& id : selected_) {
    if (!workers_.at(id).profile.edge) members.push_back(id);
  }
  if (members.empty()) return;
  const char* what = edge_mode_ ? "edge round" : "round";
  auto sa = std::make_unique<SecAggRound>();
  Status s;
  if (members.size() < 2) {
    s = Status::FailedPrecondition(
        "needs at least 2 workers in a round, 1 selected (its update alone "
        "would be the sum)");
  } else if (!round_dp_.enabled || !(round_dp_.clip_norm > 0)) {
    s = Status::FailedPrecondition("the round has no DP clip norm");
  }
  if (s.ok()) {
    sa->names =
        secagg::MaskedTensorNames(*template_, frozen_, config_.freezing.ffa);
    auto length = secagg::MaskedVectorLength(*template_, sa->names);
    auto scale = secagg::ChooseFixedPointScale(
        round_dp_.clip_norm, static_cast<uint32_t>(members.size()));
    uint64_t nonce = 0;
    s = secagg::SystemRandom().Fill(reinterpret_cast<uint8_t*>(&nonce),
                                    sizeof(nonce));
    if (!length.ok()) s = length.status();
    if (!scale.ok()) s = scale.status();
    if (s.ok()) {
      sa->params.num_clients = static_cast<uint32_t>(members.size());
      sa->params.vector_length = *length;
      sa->params.session_id = nonce ^ static_cast<uint64_t>(round);
      sa->scale = *scale;
      auto server = secagg::Server::Create(sa->params);
      s = server.status();
      if (s.ok()) sa->server = std::move(server).value();
    }
  }
  for (size_t i = 0; i < members.size(); ++i) {
    sa->index[members[i]] = static_cast<uint32_t>(i);
  }
  if (!s.ok()) {
    FP_LOG_ERROR("coordinator",
                 "{} {}: secure aggregation cannot run: {}; its workers sit "
                 "this round out",
                 what, round, s.message());
    sa->failed = true;
    sa->stage = SecAggRound::Stage::kDone;
    for (const auto& id : members) {
      answered_.insert(id);
      ++rejected_;
    }
    secagg_ = std::move(sa);
    return;
  }
  // Key agreement (two steps) takes at most half of the round.
  const double setup_s =
      std::min(config_.secagg.setup_timeout_s, deadline_s / 4);
  sa->setup_time = std::chrono::milliseconds(
      static_cast<int64_t>(std::max(0.05, setup_s) * 1000));
  sa->setup_deadline = Clock::now() + sa->setup_time;
  FP_LOG_INFO("coordinator",
              "{} {}: secure aggregation over {} workers (threshold {}, {} "
              "words, fixed-point unit {:.3g})",
              what, round, members.size(), sa->params.Threshold(),
              sa->params.vector_length, sa->scale);
  secagg_ = std::move(sa);
}

void Coordinator::AdvanceSecAgg(Clock::time_point now) {
  if (!secagg_ || secagg_->failed) return;
  SecAggRound& sa = *secagg_;
  using Stage = SecAggRound::Stage;
  const char* what = edge_mode_ ? "edge round" : "round";
  // Workers that missed a step cannot take part any more: they have
  // answered this round, for nothing.
  auto drop_missing = [&](const std::set<uint32_t>& in, const char* why) {
    for (const auto& [id, index] : sa.index) {
      if (in.count(index) || answered_.count(id)) continue;
      answered_.insert(id);
      ++rejected_;
      FP_LOG_WARN("coordinator",
                  "{} {}: '{}' left out of secure aggregation: {}", what,
                  round_, id, why);
    }
  };
  auto fail = [&](const Status& s) {
    FP_LOG_ERROR("coordinator", "{} {}: secure aggregation failed: {}", what,
                 round_, s.message());
    sa.failed = true;
    sa.stage = Stage::kDone;
    drop_missing({}, "the aggregation failed");
    cv_.notify_all();
  };
  if (sa.stage == Stage::kAdvertise &&
      (sa.advertised.size() == sa.index.size() || now >= sa.setup_deadline)) {
    auto broadcast = sa.server->CloseAdvertise();
    if (!broadcast.ok()) return fail(broadcast.status());
    sa.broadcast = secagg::ToBytes(*broadcast);
    sa.stage = Stage::kShareKeys;
    sa.setup_deadline = now + sa.setup_time;
    drop_missing(sa.advertised, "no keys advertised in time");
    cv_.notify_all();
  }
  if (sa.stage == Stage::kShareKeys &&
      (sa.shared.size() == sa.advertised.size() || now >= sa.setup_deadline)) {
    auto routed = sa.server->CloseShareKeys();
    if (!routed.ok()) return fail(routed.status());
    std::set<uint32_t> u2;
    for (const auto& r : *routed) {
      sa.routed[r.recipient] = secagg::ToBytes(r);
      u2.insert(r.recipient);
    }
    sa.stage = Stage::kMaskedInput;
    drop_missing(u2, "no key shares sent in time");
    FP_LOG_INFO("coordinator",
                "{} {}: secure aggregation keys agreed by {} of {}", what,
                round_, u2.size(), sa.index.size());
    cv_.notify_all();
  }
}

void Coordinator::FinishSecAgg(std::unique_lock<std::mutex>& lock,
                               int64_t round, std::vector<Pending>* updates) {
  if (!secagg_) return;
  SecAggRound& sa = *secagg_;
  using Stage = SecAggRound::Stage;
  const char* what = edge_mode_ ? "edge round" : "round";
  std::vector<Pending> masked, rest;
  for (auto& p : *updates) {
    (sa.index.count(p.worker_id) ? masked : rest).push_back(std::move(p));
  }
  *updates = std::move(rest);
  auto done = [&]() {
    sa.stage = Stage::kDone;
    sa.server.reset();
    cv_.notify_all();
  };
  auto fail = [&](const Status& s) {
    FP_LOG_ERROR("coordinator",
                 "{} {}: secure aggregation failed: {}; the {} masked updates "
                 "are lost",
                 what, round, s.message(), masked.size());
    sa.failed = true;
    done();
  };
  if (sa.failed || stop_) return done();
  if (sa.stage != Stage::kMaskedInput) {
    return fail(Status::FailedPrecondition(
        "the round closed before the workers agreed on keys"));
  }
  auto request = sa.server->CloseMaskedInput();
  if (!request.ok()) return fail(request.status());
  sa.unmask_request = secagg::ToBytes(*request);
  sa.survivors =
      std::set<uint32_t>(request->survivors.begin(), request->survivors.end());
  sa.stage = Stage::kUnmask;
  cv_.notify_all();
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(
                         config_.secagg.unmask_timeout_s * 1000));
  while (!stop_ && sa.unmasked.size() < sa.survivors.size() &&
         Clock::now() < deadline) {
    cv_.wait_until(lock, deadline);
  }
  std::unique_ptr<secagg::Server> server = std::move(sa.server);
  const std::vector<std::string> names = sa.names;
  const double scale = sa.scale;
  const size_t answers = sa.unmasked.size();
  const size_t dropped = request->dropped.size();
  done();
  if (masked.size() != sa.survivors.size()) {
    return fail(Status::Internal(
        std::to_string(masked.size()) + " masked uploads but " +
        std::to_string(sa.survivors.size()) + " survivors"));
  }
  // Unmasking runs the survivors' and the dropped workers' PRGs over the
  // whole vector: not under the lock.
  lock.unlock();
  StatusOr<std::vector<uint32_t>> words = server->Finish();
  server.reset();
  uint32_t unclipped = 0;
  StatusOr<TensorMap> sum = words.status();
  if (words.ok()) {
    sum = secagg::DecodeSumWords(*words, *template_, names, scale, &unclipped);
  }
  lock.lock();
  if (!sum.ok()) return fail(sum.status());
  const size_t k = masked.size();
  if (unclipped > k) {
    return fail(
        Status::Corruption("the sum counts " + std::to_string(unclipped) +
                           " unclipped updates of " + std::to_string(k)));
  }
  Pending total;
  total.worker_id = fmt::format("secure sum of {} workers", k);
  total.summed = true;
  UpdateHeader& h = total.header;
  h.round = round;
  h.workers = static_cast<uint32_t>(k);
  h.unclipped = unclipped;
  double loss = 0, eval = 0;
  for (const auto& p : masked) {
    const UpdateHeader& m = p.header;
    total.members.emplace_back(p.worker_id, m);
    h.num_samples += m.num_samples;
    loss += m.train_loss * static_cast<double>(m.num_samples);
    if (std::isfinite(m.eval_loss) && m.eval_tokens > 0) {
      eval += m.eval_loss * static_cast<double>(m.eval_tokens);
      h.eval_tokens += m.eval_tokens;
    }
    h.train_seconds = std::max(h.train_seconds, m.train_seconds);
    h.tokens_per_second += m.tokens_per_second;
  }
  h.train_loss =
      loss / static_cast<double>(std::max<uint64_t>(1, h.num_samples));
  h.eval_loss = h.eval_tokens > 0 ? eval / static_cast<double>(h.eval_tokens)
                                  : std::nan("");
  for (auto& [key, t] : *sum) t.div_(static_cast<double>(k));
  total.delta = std::move(sum).value();
  FP_LOG_INFO("coordinator",
              "{} {}: secure aggregation: sum of {} masked updates recovered "
              "({} dropped after agreeing keys, {} unmask answers)",
              what, round, k, dropped, answers);
  updates->push_back(std::move(total));
}

StatusOr<SecAggResult> Coordinator::SecAggExchange(
    const std::string& session_id, int64_t round, SecAggStep step,
    const std::string& message, std::chrono::milliseconds wait) {
  using Stage = SecAggRound::Stage;
  wait = std::min(wait,
                  std::chrono::milliseconds(config_.federation.task_wait_ms));
  const auto until = Clock::now() + wait;
  std::unique_lock<std::mutex> lock(mu_);
  WorkerEntry* w = FindSession(session_id);
  if (!w) {
    return Status::NotFound("unknown session '" + session_id +
                            "': register again");
  }
  w->last_seen = Clock::now();
  const std::string id = w->profile.worker_id;
  SecAggRound* const sa = secagg_.get();
  auto closed = [&](const std::string& why) {
    return Status::FailedPrecondition("secure aggregation of round " +
                                      std::to_string(round) + ": '" + id +
                                      "' " + why);
  };
  if (!sa || round != round_ || !sa->index.count(id) ||
      (phase_ != Phase::kCollect && phase_ != Phase::kAggregate)) {
    return closed("is not part of it (current round " + std::to_string(round_) +
                  ")");
  }
  const uint32_t me = sa->index.at(id);
  if (!message.empty()) {
    if (sa->failed || !sa->server) return closed("came too late");
    secagg::Server& server = *sa->server;
    Status s;
    std::set<uint32_t>* done = nullptr;  // who completed the step
    switch (step) {
      case SecAggStep::kAdvertise:
        s = ReceiveFrom<secagg::AdvertiseMsg>(me, message, [&](const auto& m) {
          return server.ReceiveAdvertise(m);
        });
        done = &sa->advertised;
        break;
      case SecAggStep::kShareKeys:
        s = ReceiveFrom<secagg::ShareKeysMsg>(me, message, [&](const auto& m) {
          return server.ReceiveShareKeys(m);
        });
        done = &sa->shared;
        break;
      case SecAggStep::kUnmask:
        s = ReceiveFrom<secagg::UnmaskMsg>(me, message, [&](const auto& m) {
          return server.ReceiveUnmask(m);
        });
        done = &sa->unmasked;
        break;
    }
    if (s.ok()) done->insert(me);
    if (!s.ok()) {
      FP_LOG_WARN("coordinator",
                  "round {}: secure aggregation message from "
                  "'{}' refused: {}",
                  round, id, s.message());
      return Status::InvalidArgument("secure aggregation message from '" + id +
                                     "': " + s.message());
    }
    cv_.notify_all();
    if (step == SecAggStep::kUnmask) return SecAggResult{true, ""};
  }
  while (true) {
    if (secagg_.get() != sa || round_ != round) {
      return closed("is not part of it any more (the round moved on)");
    }
    if (sa->failed) return closed("ended: the aggregation failed");
    switch (step) {
      case SecAggStep::kAdvertise:
        if (sa->stage > Stage::kAdvertise) {
          if (!sa->advertised.count(me)) {
            return closed("advertised no keys in time");
          }
          return SecAggResult{true, sa->broadcast};
        }
        break;
      case SecAggStep::kShareKeys:
        if (sa->stage > Stage::kShareKeys) {
          auto it = sa->routed.find(me);
          if (it == sa->routed.end()) return closed("shared no keys in time");
          return SecAggResult{true, it->second};
        }
        break;
      case SecAggStep::kUnmask:
        if (sa->stage == Stage::kUnmask) {
          if (!sa->survivors.count(me)) {
            return closed("sent no masked update the sum holds");
          }
          return SecAggResult{true, sa->unmask_request};
        }
        if (sa->stage == Stage::kDone) return closed("is over");
        break;
    }
    if (cv_.wait_until(lock, until) == std::cv_status::timeout) {
      return SecAggResult{};
    }
  }
}

// ---- differential privacy -----------------------------------------------

namespace {

bool IsLoraA(const std::string& key) {
  return key.find(".lora_A.") != std::string::npos;
}

}  // namespace

double Coordinator::ExpectedSamplingRate() {
  std::lock_guard<std::mutex> lock(mu_);
  const int n = static_cast<int>(AliveWorkers().size());
  if (n == 0) return 1.0;
  // Behind edges the share of its workers an edge selects is its own
  // setting: counted as 1 (all of them), which overstates q (safe).
  return static_cast<double>(SelectedOf(config_.federation, n)) / n;
}

Status Coordinator::InitDp() {
  const DpOptions& d = config_.dp;
  bool edges = false;
  int direct = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& id : AliveWorkers()) {
      bool e = workers_.at(id).profile.edge;
      edges |= e;
      direct += e ? 0 : 1;
    }
  }
  if (dp_ready_) return Status::Ok();  // resumed from a checkpoint
  if (d.population > 0) {
    dp_population_ = d.population;
  } else if (edges) {
    return Status::FailedPrecondition(
        "dp.population: the users behind edges cannot be counted by the "
        "cloud; set dp.population (the users who may take part)");
  } else {
    dp_population_ = direct;
  }
  dp_delta_ =
      d.delta > 0
          ? d.delta
          : 1.0 / std::pow(
                      static_cast<double>(std::max<int64_t>(2, dp_population_)),
                      1.1);
  const double q = ExpectedSamplingRate();
  dp_z_ = d.noise_multiplier;
  if (d.target_epsilon > 0 && d.budget == "calibrate") {
    auto z = privacy::NoiseMultiplierFor(d.target_epsilon, q,
                                         config_.federation.rounds, dp_delta_);
    if (!z.ok()) {
      return z.status().WithContext("dp.target_epsilon " +
                                    ToConfigString(d.target_epsilon));
    }
    dp_z_ = *z;
    FP_LOG_INFO("coordinator",
                "dp: noise multiplier {:.4f} calibrated for epsilon {:.3g} at "
                "delta {:.3g} over {} rounds (q {:.3g})",
                dp_z_, d.target_epsilon, dp_delta_, config_.federation.rounds,
                q);
  }
  if (d.adaptive_clipping) {
    const double m = std::max(1.0, q * static_cast<double>(dp_population_));
    dp_count_stddev_ = d.count_stddev > 0 ? d.count_stddev : m / 20.0;
    auto z = privacy::UpdateNoiseMultiplier(dp_z_, dp_count_stddev_);
    if (!z.ok()) {
      return z.status().WithContext(fmt::format(
          "dp.adaptive_clipping with about {:.0f} users a round (the count "
          "noise defaults to users / 20): set dp.count_stddev above {:.3g} "
          "or raise dp.noise_multiplier",
          m, dp_z_ / 2));
    }
  }
  if (dp_z_ == 0) {
    FP_LOG_WARN("coordinator",
                "dp: noise_multiplier 0: updates are clipped but not noised, "
                "so there is no privacy guarantee (epsilon is infinite)");
  }
  FP_LOG_INFO("coordinator",
              "dp: user-level DP-FedAvg, clip norm {:.4g}{}, noise "
              "multiplier {:.4f} ({} placement), delta {:.3g} (population "
              "{}), expected sampling rate {:.3g}{}",
              clip_norm_, d.adaptive_clipping ? " (adaptive)" : "", dp_z_,
              d.placement, dp_delta_, dp_population_, q,
              d.target_epsilon > 0 ? fmt::format(", budget epsilon {:.3g} ({})",
                                                 d.target_epsilon, d.budget)
                                   : std::string());
  dp_ready_ = true;
  return Status::Ok();
}

Status Coordinator::PlanRoundDp(int edges_selected) {
  RoundDp dp;
  dp.enabled = true;
  dp.clip_norm = clip_norm_;
  dp.z_update = dp_z_;
  if (config_.dp.adaptive_clipping) {
    ASSIGN_OR_RETURN(dp.z_update,
                     privacy::UpdateNoiseMultiplier(dp_z_, dp_count_stddev_));
    dp.count_stddev = dp_count_stddev_;
  }
  dp.sum_stddev = dp.z_update * dp.clip_norm;
  if (config_.dp.placement == "edges" && edges_selected > 0) {
    const double share = 1.0 / std::sqrt(static_cast<double>(edges_selected));
    dp.edge_share = dp.sum_stddev * share;
    dp.edge_count_share = dp.count_stddev * share;
  }
  round_dp_ = dp;
  return Status::Ok();
}

double Coordinator::NoisedUnclippedCount(const std::vector<Pending>& updates,
                                         double* users) {
  RoundDp dp;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dp = round_dp_;
  }
  double count = 0, added = 0;
  *users = 0;
  for (const auto& p : updates) {
    count += p.header.unclipped;
    *users += p.edge || p.summed ? p.header.workers : 1;
    if (p.edge) added += dp.edge_count_share * dp.edge_count_share;
  }
  double top =
      std::sqrt(std::max(0.0, dp.count_stddev * dp.count_stddev - added));
  if (top < 1e-6 * dp.count_stddev) top = 0;
  if (noise_ && top > 0) count += noise_->Sample(top);
  return count;
}

void Coordinator::FinishRoundDp(const std::vector<Pending>& updates,
                                int64_t round, int direct_selected,
                                int direct_alive, int edges_selected,
                                int edges_alive, RoundMetrics* m) {
  // q: the largest chance any one user had of taking part. Behind an edge
  // it is the edge's chance times the share of its users it selected (1
  // when unknown: a selected edge that did not answer).
  double q = 0;
  if (direct_alive > 0) {
    q = static_cast<double>(direct_selected) / direct_alive;
  }
  if (edges_selected > 0) {
    double inner = 0;
    int answered = 0;
    for (const auto& p : updates) {
      if (!p.edge || p.header.users_alive == 0) continue;
      inner = std::max(inner, static_cast<double>(p.header.users_selected) /
                                  p.header.users_alive);
      ++answered;
    }
    if (answered < edges_selected) inner = 1.0;
    q = std::max(q, inner * edges_selected / std::max(1, edges_alive));
  }
  q = std::min(1.0, std::max(q, 1e-12));
  accountant_->Compose(q, dp_z_);
  privacy::PrivacySpent spent = accountant_->Spent(dp_delta_);
  m->epsilon = spent.epsilon;
  m->delta = dp_delta_;
  m->sampling_rate = q;
  if (config_.dp.adaptive_clipping) {
    double users = 0;
    const double count = NoisedUnclippedCount(updates, &users);
    m->unclipped_count = count;
    m->unclipped_fraction = users > 0 ? count / users : std::nan("");
    if (std::isfinite(m->unclipped_fraction)) {
      const double next = privacy::NextClipNorm(
          clip_norm_, m->unclipped_fraction, config_.dp.target_quantile,
          config_.dp.clip_learning_rate);
      FP_LOG_INFO("coordinator",
                  "round {}: dp: {:.2f} of updates unclipped (noised; target "
                  "{:.2f}): clip norm {:.4g} -> {:.4g}",
                  round, m->unclipped_fraction, config_.dp.target_quantile,
                  clip_norm_, next);
      clip_norm_ = next;
    }
  }
}

StatusOr<TensorMap> Coordinator::DpMean(const TensorMap& current,
                                        const std::set<std::string>& frozen,
                                        const std::vector<Pending>& updates,
                                        RoundMetrics* m) {
  RoundDp dp;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dp = round_dp_;
  }
  // The released coordinates: all but the frozen tensors and FFA-LoRA's
  // fixed A (nobody may change those, so they carry no one's data).
  TensorMap sum;
  for (const auto& [key, t] : current) {
    if (frozen.count(key) || (config_.freezing.ffa && IsLoraA(key))) continue;
    sum[key] = torch::zeros_like(t);
  }
  double users = 0;
  double added = 0;
  for (const auto& p : updates) {
    // An edge sends the mean over its workers of their clipped updates
    // (plus its noise share): times its workers, their sum.
    // So is a secure sum of workers.
    const double w =
        p.edge || p.summed ? static_cast<double>(p.header.workers) : 1.0;
    users += w;
    if (p.edge) added += dp.edge_share * dp.edge_share;
    TensorMap d = p.delta;
    if (hetero_ && p.header.rank > 0) {
      int64_t r_global = 0;
      for (const auto& [module, r] : aggregation::ModuleRanks(current)) {
        r_global = std::max(r_global, r);
      }
      d = aggregation::ZeroPadRank(d, r_global);
    }
    for (const auto& [key, t] : d) {
      auto it = sum.find(key);
      if (it == sum.end()) continue;
      if (!it->second.sizes().equals(t.sizes())) {
        return Status::InvalidArgument(
            "dp: update from '" + p.worker_id + "': tensor '" + key +
            "' has shape " + aggregation::ShapeString(t.sizes()) +
            ", expected " + aggregation::ShapeString(it->second.sizes()));
      }
      it->second.add_(t, w);
    }
  }
  if (users <= 0) return Status::FailedPrecondition("dp: no users");
  // The noise of the round: what the edges added plus this level's part.
  double top = std::sqrt(std::max(0.0, dp.sum_stddev * dp.sum_stddev - added));
  if (top < 1e-6 * dp.sum_stddev) top = 0;  // the edges' shares add up
  noise_->AddTo(&sum, top);
  FP_LOG_INFO(
      "coordinator",
      "{} {}: dp: sum of {} users' updates clipped to {:.4g}, noise "
      "stddev {:.4g} added here{}",
      edge_mode_ ? "edge round" : "round", m->round, users, dp.clip_norm, top,
      added > 0 ? fmt::format(" ({:.4g} at the edges)", std::sqrt(added))
                : std::string());
  for (auto& kv : sum) kv.second.div_(users);
  if (edge_mode_) {
    double n = 0;
    m->unclipped_count = NoisedUnclippedCount(updates, &n);
    m->unclipped_fraction = n > 0 ? m->unclipped_count / n : std::nan("");
  }
  TensorMap mean;
  for (const auto& [key, t] : current) {
    auto it = sum.find(key);
    mean[key] = it != sum.end() ? it->second : torch::zeros_like(t);
  }
  return mean;
}

peft::PeftOptions Coordinator::OptionsFor(const TensorMap& adapter) const {
  // The stack merge's global has a rank per module: its options say so,
  // each module's alpha keeping the one scaling every rank shares.
  peft::PeftOptions o = config_.peft;
  if (!hetero_) return o;
  static const std::string kPrefix = "base_model.model.";
  for (const auto& [module, r] : aggregation::ModuleRanks(adapter)) {
    if (r == o.lora.r) continue;
    std::string path = module.compare(0, kPrefix.size(), kPrefix) == 0
                           ? module.substr(kPrefix.size())
                           : module;
    o.lora.rank_pattern[path] = static_cast<int>(r);
    o.lora.alpha_pattern[path] =
        hetero_->scaling * (o.lora.use_rslora
                                ? std::sqrt(static_cast<double>(r))
                                : static_cast<double>(r));
  }
  return o;
}

double Coordinator::ServerEval() {
  if (!eval_model_ || eval_examples_.empty()) return std::nan("");
  std::shared_ptr<const TensorMap> g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    g = global_;
  }
  Status s = eval_model_->LoadAdapterTensors(*g);
  if (!s.ok() && hetero_) {
    // Ranks changed by module (stack merge): an eval model of those ranks.
    auto m =
        peft::PeftModel::Create(base_, OptionsFor(*g), config_.adapter_seed);
    if (m.ok()) {
      eval_model_ = std::move(m).value();
      s = eval_model_->LoadAdapterTensors(*g);
    }
  }
  if (!s.ok()) {
    FP_LOG_WARN("coordinator", "server-side eval skipped: {}", s.message());
    return std::nan("");
  }
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
  if (hetero_ && hetero_->method == aggregation::HeteroMethod::kStack) {
    std::shared_ptr<const TensorMap> g;
    {
      std::lock_guard<std::mutex> lock(mu_);
      g = global_;
    }
    ckpt.adapter_config =
        peft::AdapterConfigToJson(OptionsFor(*g), config_.model.path);
  }
  ckpt.strategy_state = strategy_->State();
  if (apf_) ckpt.extra["apf"] = apf_->State();
  if (accountant_ && dp_ready_) {
    ckpt.extra["dp"] = {{"clip_norm", clip_norm_},
                        {"noise_multiplier", dp_z_},
                        {"delta", dp_delta_},
                        {"population", dp_population_},
                        {"count_stddev", dp_count_stddev_},
                        {"rdp", accountant_->rdp()}};
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (hetero_) {
      nlohmann::json ranks = nlohmann::json::object();
      for (const auto& [id, w] : workers_) {
        if (w.rank > 0) ranks[id] = w.rank;
      }
      ckpt.extra["ranks"] = ranks;
    }
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
  std::string shape;
  if (m.edges_answered > 0) shape += fmt::format(" edges {}", m.edges_answered);
  if (hetero_ && m.rank_max > 0) {
    shape += fmt::format(" | rank {}..{} (mean {:.1f})", m.rank_min, m.rank_max,
                         m.rank_mean);
  }
  if (apf_) shape += fmt::format(" | frozen {:.0f}%", 100 * m.frozen_fraction);
  if (m.secagg_workers >= 0) {
    shape += fmt::format(" | secure sum of {}", m.secagg_workers);
  }
  if (std::isfinite(m.epsilon)) {
    shape += fmt::format(
        " | epsilon {:.3f} (delta {:.2g}, q {:.3g}, z {:.3f}, "
        "C {:.4g})",
        m.epsilon, m.delta, m.sampling_rate, m.noise_multiplier, m.clip_norm);
  } else if (m.clip_norm > 0) {
    shape +=
        fmt::format(" | dp C {:.4g} z {:.3f}", m.clip_norm, m.noise_multiplier);
  }
  FP_LOG_INFO("coordinator",
              "{} {} {}: selected {} answered {} dropped {}{} | train "
              "loss {:.4f} eval loss {} | up {} down {} | {:.1f}s",
              edge_mode_ ? "edge round" : "round",
              edge_mode_ ? std::to_string(m.round)
                         : std::to_string(m.round) + "/" +
                               std::to_string(config_.federation.rounds),
              m.aggregated ? "done" : "skipped", m.selected, m.answered,
              m.dropped, shape, m.train_loss, eval, FormatBytes(m.bytes_up),
              FormatBytes(m.bytes_down), m.seconds);
  if (!metrics_.is_open()) return;
  uint64_t total_up = 0, total_down = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    total_up = total_bytes_up_;
    total_down = total_bytes_down_;
  }
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
      {"edges_answered", m.edges_answered},
      {"rank_min", m.rank_min},
      {"rank_mean", m.rank_mean},
      {"rank_max", m.rank_max},
      {"frozen_fraction", m.frozen_fraction},
      {"epsilon", NumberOrNull(m.epsilon)},
      {"delta", NumberOrNull(m.delta)},
      {"clip_norm", m.clip_norm},
      {"noise_multiplier", m.noise_multiplier},
      {"unclipped_fraction", NumberOrNull(m.unclipped_fraction)},
      {"sampling_rate", m.sampling_rate},
      {"secagg_workers", m.secagg_workers},
      {"bytes_up_workers", m.worker_bytes_up},
      {"bytes_up_total", total_up},
      {"bytes_down_total", total_down},
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
    bool budget_spent = false;
    while (!stop_) {
      if (!WaitForWorkers()) break;
      if (accountant_) {
        RETURN_IF_ERROR(InitDp());
        const DpOptions& d = config_.dp;
        if (d.target_epsilon > 0) {
          // Stop before a round that would overspend (with calibration,
          // only a sampling rate above the expected one gets here).
          privacy::RdpAccountant next = *accountant_;
          next.Compose(ExpectedSamplingRate(), dp_z_);
          const double eps = next.Spent(dp_delta_).epsilon;
          if (eps > d.target_epsilon * (1 + 1e-6)) {
            FP_LOG_WARN("coordinator",
                        "dp: privacy budget spent: round {} would bring "
                        "epsilon to {:.4g} > dp.target_epsilon {:.4g}; "
                        "stopping after round {}",
                        round, eps, d.target_epsilon, completed_rounds_);
            budget_spent = true;
            break;
          }
        }
      }
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
    if (budget_spent) break;
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
  ShutdownGrace();
  return Status::Ok();
}

void Coordinator::ShutdownGrace() {
  const FederationOptions& f = config_.federation;
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
}

// ---- edge mode ----------------------------------------------------------

StatusOr<EdgeResult> Coordinator::RunEdgeRounds(const TensorMap& cloud_global,
                                                const EdgeTask& task) {
  const FederationOptions& f = config_.federation;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Tensors the cloud changed count as changed in the round just before
    // the next edge round, so workers' caches drop them.
    for (const auto& [key, t] : cloud_global) {
      auto it = global_->find(key);
      if (it == global_->end() || !it->second.sizes().equals(t.sizes()) ||
          !torch::equal(it->second, t)) {
        last_changed_[key] = edge_round_;
      }
    }
    global_ = std::make_shared<const TensorMap>(cloud_global);
    frozen_ = std::set<std::string>(task.frozen.begin(), task.frozen.end());
    train_ = task.train;
    config_.freezing.ffa = task.train_b_only;
    config_.heterogeneity.prune_threshold = task.prune_threshold;
    const int download_bits = config_.compression.download_bits;
    config_.compression = task.compression;
    config_.compression.download_bits = download_bits;
    edge_task_ = task;
    round_dp_ = RoundDp{};
    if (config_.dp.enabled) {
      if (!(task.clip_norm > 0)) {
        return Status::InvalidArgument(
            "cloud round " + std::to_string(task.cloud_round) +
            ": the plan says DP but the task has no clip norm");
      }
      round_dp_.enabled = true;
      round_dp_.clip_norm = task.clip_norm;
      round_dp_.sum_stddev = task.noise_stddev;
      round_dp_.count_stddev = task.count_noise_stddev;
    }
  }
  EdgeResult result;
  std::map<std::string, uint64_t> samples;  // worker -> latest num_samples
  double loss_sum = 0, loss_weight = 0, eval_sum = 0;
  auto t0 = Clock::now();
  auto seconds_left = [&task]() {
    return (static_cast<double>(task.deadline_unix_ms) -
            static_cast<double>(UnixMillis())) /
           1000.0;
  };
  // Kept back from the edge rounds for aggregating and the upload to the
  // cloud, which must arrive before the cloud round's deadline.
  const double reserve_s =
      task.deadline_unix_ms > 0
          ? std::clamp(0.1 * seconds_left(), 0.5, 10.0) +
                (config_.secagg.enabled ? config_.secagg.unmask_timeout_s : 0)
          : 0;
  for (int i = 0; i < task.edge_rounds && !stop_; ++i) {
    // Each edge round gets its share of what is left of the cloud round.
    double deadline_s = f.round_deadline_s;
    if (task.deadline_unix_ms > 0) {
      const double left = seconds_left() - reserve_s;
      deadline_s = std::min(deadline_s, left / (task.edge_rounds - i));
    }
    if (deadline_s <= 0.05) {
      FP_LOG_WARN("coordinator",
                  "cloud round {}: no time left for edge round {} of {}",
                  task.cloud_round, i + 1, task.edge_rounds);
      break;
    }
    // Wait (within the round's time) for enough workers.
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto until = Clock::now() + std::chrono::milliseconds(
                                      static_cast<int64_t>(deadline_s * 1000));
      size_t needed = static_cast<size_t>(
          started_ ? f.min_workers : std::max(f.min_available, f.min_workers));
      while (!stop_ && AliveWorkers().size() < needed && Clock::now() < until) {
        cv_.wait_for(lock, std::chrono::milliseconds(100));
      }
      if (AliveWorkers().size() >= needed) started_ = true;
      if (!started_) {
        FP_LOG_WARN("coordinator",
                    "cloud round {}: only {} of {} workers alive at this "
                    "edge",
                    task.cloud_round, AliveWorkers().size(), needed);
        break;
      }
      deadline_s = std::max(
          0.05, std::chrono::duration<double>(until - Clock::now()).count());
    }
    round_deadline_s_ = deadline_s;
    // Edge rounds are numbered from the cloud round, so a restarted edge
    // never reuses a number its workers may still hold a task for.
    edge_round_ =
        std::max(edge_round_, (task.cloud_round - 1) * task.edge_rounds + i);
    const int64_t round = ++edge_round_;
    RoundMetrics m;
    bool ok = RunRoundAttempt(round, 0, &m);
    {
      std::lock_guard<std::mutex> lock(mu_);
      history_.push_back(m);
      phase_ = stop_ ? Phase::kDone : Phase::kWaitWorkers;
      selected_.clear();
    }
    LogRound(m);
    if (!ok) continue;
    result.rounds_aggregated++;
    result.rank_min = m.rank_min;
    result.rank_max = m.rank_max;
    result.rank_mean = m.rank_mean;
    result.unclipped = std::isfinite(m.unclipped_count) ? m.unclipped_count : 0;
    result.users_selected = m.selected;
    result.users_alive = m.users_alive;
    for (const auto& h : last_round_headers_) {
      samples[h.first] = h.second.num_samples;
      loss_sum += h.second.train_loss * h.second.num_samples;
      loss_weight += h.second.num_samples;
      if (std::isfinite(h.second.eval_loss) && h.second.eval_tokens > 0 &&
          i + 1 == task.edge_rounds) {
        eval_sum += h.second.eval_loss * h.second.eval_tokens;
        result.eval_tokens += h.second.eval_tokens;
      }
    }
  }
  round_deadline_s_ = 0;
  for (const auto& kv : samples) result.num_samples += kv.second;
  result.workers = static_cast<int>(samples.size());
  result.train_loss = loss_weight > 0 ? loss_sum / loss_weight : std::nan("");
  result.eval_loss =
      result.eval_tokens > 0 ? eval_sum / result.eval_tokens : std::nan("");
  result.train_seconds = Seconds(Clock::now() - t0);
  {
    std::lock_guard<std::mutex> lock(mu_);
    result.adapter = *global_;
  }
  if (stop_) return Status::Unavailable("edge stopped");
  if (result.rounds_aggregated == 0) {
    return Status::Unavailable("cloud round " +
                               std::to_string(task.cloud_round) +
                               ": no edge round reached its quorum");
  }
  return result;
}

void Coordinator::Finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    phase_ = Phase::kDone;
    selected_.clear();
    cv_.notify_all();
  }
  ShutdownGrace();
}

}  // namespace coordinator
}  // namespace fedpeft
