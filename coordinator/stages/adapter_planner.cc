#include "coordinator/stages/adapter_planner.h"

#include <algorithm>
#include <cmath>

#include "common/logging.h"

namespace fedpeft {
namespace coordinator {

StatusOr<std::unique_ptr<AdapterPlanner>> AdapterPlanner::Create(
    const CoordinatorConfig& config, const model::LlamaConfig& model,
    std::shared_ptr<const TensorMap> template_adapter, Registry* registry,
    bool upstream_frozen) {
  std::unique_ptr<AdapterPlanner> p(new AdapterPlanner(
      config, model, std::move(template_adapter), registry, upstream_frozen));
  if (config.heterogeneity.enabled) {
    aggregation::HeteroOptions h;
    ASSIGN_OR_RETURN(
        h.method, aggregation::ParseHeteroMethod(config.heterogeneity.method));
    h.r_max = config.peft.lora.r;
    h.scaling = peft::LoraScaling(config.peft.lora, config.peft.lora.alpha,
                                  config.peft.lora.r);
    h.stack_max_rank = config.heterogeneity.stack_max_rank;
    p->hetero_ = h;
  }
  if (config.freezing.apf.enabled) {
    p->apf_ = std::make_unique<peft::ApfController>(config.freezing.apf);
  }
  return p;
}

AdapterPlanner::AdapterPlanner(
    const CoordinatorConfig& config, const model::LlamaConfig& model,
    std::shared_ptr<const TensorMap> template_adapter, Registry* registry,
    bool upstream_frozen)
    : heterogeneity_(config.heterogeneity),
      peft_(config.peft),
      model_(model),
      template_(std::move(template_adapter)),
      default_deadline_s_(config.federation.round_deadline_s),
      edge_rounds_(config.hierarchy.edge_rounds),
      upstream_frozen_(upstream_frozen),
      registry_(registry),
      ffa_(config.freezing.ffa),
      prune_threshold_(config.heterogeneity.prune_threshold),
      train_(config.train) {}

void AdapterPlanner::OnRegister(Participant& p) {
  if (hetero_ && !p.profile.edge && p.rank == 0) {
    p.rank = peft::InitialRank(
        heterogeneity_.policy, CostFor(p.profile),
        peft::DeviceProfile{p.profile.ram_bytes, p.profile.tokens_per_second,
                            p.profile.uplink_bytes_per_second},
        default_deadline_s_);
  }
}

int64_t AdapterPlanner::RankOf(const Participant& p) const {
  return hetero_ && !p.profile.edge ? p.rank : 0;
}

int64_t AdapterPlanner::RoundRank(const Participant& p) const {
  auto r = round_ranks_.find(p.profile.worker_id);
  return r != round_ranks_.end() ? r->second : RankOf(p);
}

void AdapterPlanner::OnOpen(RoundContext& round, RoundMetrics* m) {
  if (apf_) {
    frozen_ = apf_->FrozenAt(round.round);
  } else if (!upstream_frozen_) {
    frozen_.clear();
  }
  round_ranks_.clear();
  for (const auto& id : round.selected) {
    round_ranks_[id] = RankOf(*registry_->Find(id));
  }
  round.frozen = frozen_;
  round.ffa = ffa_;
  // The round's shape: the share of frozen tensors, the ranks assigned.
  m->frozen_fraction =
      template_->empty()
          ? 0.0
          : static_cast<double>(frozen_.size()) / template_->size();
  int64_t lo = 0, hi = 0;
  double sum = 0;
  int n = 0;
  for (const auto& [id, r] : round_ranks_) {
    if (registry_->Find(id)->profile.edge) continue;
    int64_t rank = r > 0 ? r : peft_.lora.r;
    if (peft_.method != "lora") rank = 0;
    lo = n == 0 ? rank : std::min(lo, rank);
    hi = std::max(hi, rank);
    sum += rank;
    ++n;
  }
  m->rank_min = lo;
  m->rank_max = hi;
  m->rank_mean = n > 0 ? sum / n : 0;
}

void AdapterPlanner::FillTask(const RoundContext& round, const Participant& p,
                              TaskInfo* task) const {
  task->train = train_;
  task->rank = RankOf(p);
  task->frozen.assign(frozen_.begin(), frozen_.end());
  task->edge_rounds = p.profile.edge ? edge_rounds_ : 0;
  task->train_b_only = ffa_;
  task->prune_threshold = prune_threshold_;
}

void AdapterPlanner::OnClose(RoundContext& round,
                             std::unique_lock<std::mutex>& lock,
                             std::vector<Update>* updates, RoundMetrics* m) {
  if (!round.stopping()) UpdateRanks(*updates, round.deadline_s);
  int edges = 0;
  for (const auto& u : *updates) edges += u.edge ? 1 : 0;
  if (edges == 0) return;
  // Behind edges, the ranks are the ones the edges assigned.
  int64_t lo = 0, hi = 0;
  double sum = 0, count = 0;
  for (const auto& u : *updates) {
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

peft::AdapterCost AdapterPlanner::CostFor(const WorkerProfile& p) const {
  const model::LlamaConfig& c = model_;
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

void AdapterPlanner::UpdateRanks(const std::vector<Update>& answered,
                                 double deadline) {
  if (!hetero_) return;
  std::map<std::string, const UpdateHeader*> by_id;
  for (const auto& p : answered) {
    by_id[p.worker_id] = &p.header;
    for (const auto& [id, h] : p.members) by_id[id] = &h;
  }
  for (const auto& [id, assigned] : round_ranks_) {
    Participant* w = registry_->Find(id);
    if (!w || w->profile.edge || assigned == 0) continue;
    peft::RoundObservation obs;
    auto p = by_id.find(id);
    obs.answered = p != by_id.end();
    // Timings withheld under DP: nothing to move an answered worker's rank
    // by.
    if (obs.answered && p->second->metrics_withheld) continue;
    obs.missed_deadline = !obs.answered;
    if (obs.answered) {
      obs.seconds = p->second->train_seconds;
      obs.tokens_per_second = p->second->tokens_per_second;
      if (obs.tokens_per_second > 0) {
        w->profile.tokens_per_second = obs.tokens_per_second;
      }
    }
    int64_t next = peft::NextRank(
        heterogeneity_.policy, CostFor(w->profile),
        peft::DeviceProfile{w->profile.ram_bytes, w->profile.tokens_per_second,
                            w->profile.uplink_bytes_per_second},
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
    w->rank = next;
  }
}

StatusOr<UploadExpectation> AdapterPlanner::Expect(const std::string& id,
                                                   const UpdateHeader& header,
                                                   const TensorMap& global,
                                                   int64_t rank) const {
  UploadExpectation e;
  e.max_tensors = global.size();
  if (header.whole_adapter) {
    if (!stack()) {
      return Status::InvalidArgument(
          "upload from '" + id +
          "': a whole adapter is only taken with heterogeneity.method stack");
    }
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
  TensorMap shapes =
      header.rank > 0 ? aggregation::TruncateRank(global, header.rank) : global;
  e.specs = transport::SpecsOf(shapes);
  for (auto& kv : *e.specs) kv.second.dtype = torch::kFloat32;
  return e;
}

std::shared_ptr<const TensorMap> AdapterPlanner::View(
    std::shared_ptr<const TensorMap> global, int64_t rank,
    uint64_t cached_round, const std::map<std::string, int64_t>& changed) {
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
  return out;
}

void AdapterPlanner::KeepFrozen(const TensorMap& current,
                                TensorMap* next) const {
  for (const std::string& key : frozen_) {
    auto it = current.find(key);
    if (it != current.end()) (*next)[key] = it->second;
  }
}

std::vector<std::string> AdapterPlanner::Settle(int64_t round,
                                                const TensorMap& current,
                                                const TensorMap& next) {
  TensorMap applied;
  std::vector<std::string> changed;
  for (const auto& [key, t] : next) {
    auto it = current.find(key);
    if (it == current.end() || !it->second.sizes().equals(t.sizes())) {
      changed.push_back(key);
    } else if (!torch::equal(it->second, t)) {
      changed.push_back(key);
      applied[key] = t - it->second;
    }
  }
  if (apf_) apf_->Observe(round, applied);
  return changed;
}

void AdapterPlanner::MarkChanged(const std::vector<std::string>& keys,
                                 int64_t round) {
  for (const auto& key : keys) last_changed_[key] = round;
}

void AdapterPlanner::BeginUpstreamTask(const TensorMap& previous,
                                       const TensorMap& cloud, int64_t round,
                                       const EdgeTask& task) {
  // Tensors the cloud changed count as changed in the round just before
  // the next edge round, so workers' caches drop them.
  for (const auto& [key, t] : cloud) {
    auto it = previous.find(key);
    if (it == previous.end() || !it->second.sizes().equals(t.sizes()) ||
        !torch::equal(it->second, t)) {
      last_changed_[key] = round;
    }
  }
  frozen_ = std::set<std::string>(task.frozen.begin(), task.frozen.end());
  train_ = task.train;
  ffa_ = task.train_b_only;
  prune_threshold_ = task.prune_threshold;
}

peft::PeftOptions AdapterPlanner::OptionsFor(const TensorMap& adapter) const {
  // The stack merge's global has a rank per module: its options say so,
  // each module's alpha keeping the one scaling every rank shares.
  peft::PeftOptions o = peft_;
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

void AdapterPlanner::SaveState(nlohmann::json* extra) const {
  if (apf_) (*extra)["apf"] = apf_->State();
  if (hetero_) {
    nlohmann::json ranks = nlohmann::json::object();
    for (const auto& [id, w] : registry_->all()) {
      if (w.rank > 0) ranks[id] = w.rank;
    }
    (*extra)["ranks"] = ranks;
  }
}

Status AdapterPlanner::LoadState(const SavedState& saved) {
  const nlohmann::json& extra = saved.extra;
  if (apf_ && extra.contains("apf")) {
    RETURN_IF_ERROR(apf_->LoadState(extra["apf"]).WithContext(saved.where));
  }
  if (extra.contains("ranks") && extra["ranks"].is_object()) {
    for (const auto& [id, r] : extra["ranks"].items()) {
      if (r.is_number_integer()) registry_->Entry(id).rank = r.get<int64_t>();
    }
  }
  return Status::Ok();
}

}  // namespace coordinator
}  // namespace fedpeft
