#include "coordinator/stages/privacy.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "aggregation/mean.h"
#include "common/logging.h"

namespace fedpeft {
namespace coordinator {
namespace {

bool IsLoraA(const std::string& key) {
  return key.find(".lora_A.") != std::string::npos;
}

}  // namespace

PrivacyStage::PrivacyStage(const CoordinatorConfig& config, bool cloud)
    : options_(config.dp), federation_(config.federation), cloud_(cloud) {
  if (!options_.enabled) return;
  // Edges never hold a seed: their noise is the DRBG's (EdgePlan carries
  // none).
  const uint64_t seed = cloud_ ? options_.noise_seed : 0;
  noise_ = std::make_unique<privacy::GaussianNoise>(seed);
  if (seed != 0) {
    FP_LOG_WARN("coordinator",
                "dp.noise_seed is set: the noise is predictable from it, and "
                "who is selected from federation.seed, so the privacy "
                "guarantee holds only against whoever knows neither; for "
                "experiments only");
  }
  clip_norm_ = options_.clip_norm;
  if (cloud_) {
    accountant_ = std::make_unique<privacy::RdpAccountant>();
    cloud_accountant_ = std::make_unique<privacy::RdpAccountant>();
  }
}

PrivacyStage::RoundDp PrivacyStage::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return round_;
}

bool PrivacyStage::enabled() const { return Current().enabled; }

Status PrivacyStage::Init(const Registry::Counts& alive, double q) {
  if (!accountant_ || ready_) return Status::Ok();  // or resumed
  const DpOptions& d = options_;
  if (d.population > 0) {
    population_ = d.population;
  } else if (alive.edges > 0) {
    return Status::FailedPrecondition(
        "dp.population: the users behind edges cannot be counted by the "
        "cloud; set dp.population (the users who may take part)");
  } else {
    population_ = alive.direct;
  }
  delta_ = d.delta > 0 ? d.delta
                       : 1.0 / std::pow(static_cast<double>(
                                            std::max<int64_t>(2, population_)),
                                        1.1);
  z_ = d.noise_multiplier;
  if (d.target_epsilon > 0 && d.budget == "calibrate") {
    auto z = privacy::NoiseMultiplierFor(d.target_epsilon, q,
                                         federation_.rounds, delta_);
    if (!z.ok()) {
      return z.status().WithContext("dp.target_epsilon " +
                                    ToConfigString(d.target_epsilon));
    }
    z_ = *z;
    FP_LOG_INFO("coordinator",
                "dp: noise multiplier {:.4f} calibrated for epsilon {:.3g} at "
                "delta {:.3g} over {} rounds (q {:.3g})",
                z_, d.target_epsilon, delta_, federation_.rounds, q);
  }
  if (d.adaptive_clipping) {
    const double m = std::max(1.0, q * static_cast<double>(population_));
    count_stddev_ = d.count_stddev > 0 ? d.count_stddev : m / 20.0;
    auto z = privacy::UpdateNoiseMultiplier(z_, count_stddev_);
    if (!z.ok()) {
      return z.status().WithContext(fmt::format(
          "dp.adaptive_clipping with about {:.0f} users a round (the count "
          "noise defaults to users / 20): set dp.count_stddev above {:.3g} "
          "or raise dp.noise_multiplier",
          m, z_ / 2));
    }
  }
  if (z_ == 0) {
    FP_LOG_WARN("coordinator",
                "dp: noise_multiplier 0: updates are clipped but not noised, "
                "so there is no privacy guarantee (epsilon is infinite)");
  }
  FP_LOG_INFO("coordinator",
              "dp: user-level DP-FedAvg, clip norm {:.4g}{}, noise "
              "multiplier {:.4f} ({} placement), delta {:.3g} (population "
              "{}), expected sampling rate {:.3g}{}",
              clip_norm_, d.adaptive_clipping ? " (adaptive)" : "", z_,
              d.placement, delta_, population_, q,
              d.target_epsilon > 0 ? fmt::format(", budget epsilon {:.3g} ({})",
                                                 d.target_epsilon, d.budget)
                                   : std::string());
  ready_ = true;
  return Status::Ok();
}

bool PrivacyStage::WouldOverspend(double q, double* epsilon) const {
  if (!accountant_ || !(options_.target_epsilon > 0)) return false;
  // With calibration, only a sampling rate above the expected one gets
  // here.
  privacy::RdpAccountant next = *accountant_;
  next.Compose(q, z_);
  *epsilon = next.Spent(delta_).epsilon;
  return *epsilon > options_.target_epsilon * (1 + 1e-6);
}

void PrivacyStage::OnOpen(RoundContext& round, RoundMetrics* m) {
  if (noise_ && noise_->seeded()) {
    // A fixed seed still gives fresh noise every round and attempt, and the
    // same after a resume as in an uninterrupted run (never a repeat).
    noise_->Reseed(
        Mix(options_.noise_seed ^ Mix(static_cast<uint64_t>(round.round) * 131 +
                                      static_cast<uint64_t>(round.attempt))));
  }
  if (accountant_) {
    // q is taken from the population when the round selects: participants
    // that join while it runs did not have a chance to be selected.
    selection_ = Selection{};
    auto now = Clock::now();
    for (const auto& [id, w] : round.registry->all()) {
      // An executor is never selected: its users count, not it.
      if (w.profile.hosted_users > 0) continue;
      if (!round.registry->IsAlive(w, now)) continue;
      const bool selected = round.selected.count(id) > 0;
      if (w.profile.edge) {
        selection_.edges_alive++;
        selection_.edges_selected += selected ? 1 : 0;
      } else {
        selection_.direct_alive++;
        selection_.direct_selected += selected ? 1 : 0;
      }
    }
    RoundDp dp;
    dp.enabled = true;
    dp.clip_norm = clip_norm_;
    dp.z_update = z_;
    Status s = Status::Ok();
    if (options_.adaptive_clipping) {
      auto z = privacy::UpdateNoiseMultiplier(z_, count_stddev_);
      if (z.ok()) {
        dp.z_update = *z;
        dp.count_stddev = count_stddev_;
      } else {
        s = z.status();
      }
    }
    if (s.ok()) {
      dp.sum_stddev = dp.z_update * dp.clip_norm;
      const int edges_selected = round.SelectedCounts().edges;
      if (options_.placement == "edges" && edges_selected > 0) {
        const double share =
            1.0 / std::sqrt(static_cast<double>(edges_selected));
        dp.edge_share = dp.sum_stddev * share;
        dp.edge_count_share = dp.count_stddev * share;
      }
      dp.edge_user_cap = options_.max_users_per_edge > 0
                             ? options_.max_users_per_edge
                             : population_;
      std::lock_guard<std::mutex> lock(mu_);
      round_ = dp;
    } else {
      FP_LOG_ERROR("coordinator", "round {}: dp: {}", round.round,
                   s.ToString());
    }
  }
  const RoundDp dp = Current();
  round.clip_norm = dp.enabled ? dp.clip_norm : 0;
  m->clip_norm = dp.enabled ? dp.clip_norm : 0;
  m->noise_multiplier = dp.enabled ? dp.z_update : 0;
}

void PrivacyStage::FillTask(const RoundContext& round, const Participant& p,
                            TaskInfo* task) const {
  const RoundDp dp = Current();
  task->clip_norm = dp.enabled ? dp.clip_norm : 0;
  task->withhold_metrics = dp.enabled && withholds_metrics();
  if (p.profile.edge) {
    task->noise_stddev = dp.edge_share;
    task->count_noise_stddev = dp.edge_count_share;
  }
}

void PrivacyStage::Withhold(bool edge, UpdateHeader* h) {
  h->metrics_withheld = true;
  if (!edge) h->num_samples = 1;  // an edge's is its worker count
  h->train_loss = 0;
  h->eval_loss = std::nan("");
  h->eval_tokens = 0;
  h->train_seconds = 0;
  h->tokens_per_second = 0;
}

Status PrivacyStage::CheckUpdate(const UpdateCheck& u) const {
  const RoundDp dp = Current();
  if (!dp.enabled) return Status::Ok();
  const UpdateHeader& header = u.header;
  if (header.whole_adapter) {
    return Status::InvalidArgument("update from '" + u.worker_id +
                                   "': a whole adapter under DP (expected "
                                   "a clipped delta)");
  }
  if (!u.edge) {
    // The clip bound is what the noise is calibrated to: an update over
    // it (a faulty or hostile worker) is refused, not rescaled.
    const double norm = privacy::GlobalNorm(u.delta);
    if (!(norm <= dp.clip_norm * (1 + 1e-5))) {
      return Status::InvalidArgument(fmt::format(
          "update from '{}': L2 norm {:.6g} exceeds the round's clip norm "
          "{:.6g} (dp.clip_norm)",
          u.worker_id, norm, dp.clip_norm));
    }
    if (header.unclipped != 0 && header.unclipped != 1) {
      return Status::InvalidArgument(
          fmt::format("update from '{}': unclipped {} (expected 0 or 1)",
                      u.worker_id, header.unclipped));
    }
    return Status::Ok();
  }
  if (dp.edge_user_cap > 0 && header.users_alive > dp.edge_user_cap) {
    // Its weight in the noised sum: an edge cannot make one user count
    // more than the cap allows.
    return Status::InvalidArgument(fmt::format(
        "update from edge '{}': {} users alive behind it, more than "
        "dp.max_users_per_edge {} (or dp.population)",
        u.worker_id, header.users_alive, dp.edge_user_cap));
  }
  if (header.workers == 0 || !std::isfinite(header.unclipped) ||
      header.users_selected < header.workers ||
      header.users_alive < header.users_selected) {
    return Status::InvalidArgument(fmt::format(
        "update from edge '{}': workers {}, users selected {} of {} "
        "alive, unclipped {} (expected 1 <= workers <= selected <= "
        "alive and a finite count)",
        u.worker_id, header.workers, header.users_selected, header.users_alive,
        header.unclipped));
  }
  return Status::Ok();
}

void PrivacyStage::OnClose(RoundContext& round,
                           std::unique_lock<std::mutex>& lock,
                           std::vector<Update>* updates, RoundMetrics* m) {
  int answered = 0;
  for (const auto& u : *updates) answered += AnswersIn(u);
  if (!accountant_ || answered == 0) return;
  // Spent whether or not the round aggregates: with noise at the edges,
  // the cloud has seen their releases.
  Account(*updates, round.round, m);
}

double PrivacyStage::NoisedUnclippedCount(const std::vector<Update>& updates,
                                          double* users) {
  const RoundDp dp = Current();
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

double PrivacyStage::SamplingRate(const std::vector<Update>& updates,
                                  double* cloud_q) const {
  // q: the largest chance any one user had of taking part, counted over
  // the population when the round selected. With Poisson sampling it is the
  // rate itself; with fixed-size selection, selected / alive (accounted as
  // Poisson sampling at that rate, as Opacus and TF Privacy do). Behind an
  // edge it is the edge's chance times the share of its users it selected,
  // which the cloud cannot check: 1 unless dp.trust_edge_sampling (and 1
  // for a selected edge that did not answer). Against the cloud only that
  // inner share counts: the cloud selected the edges itself, so it knows
  // whether a user's edge took part, and its own sampling hides nothing
  // from it.
  const Selection& s = selection_;
  *cloud_q = 1.0;
  const bool poisson = federation_.sampling == "poisson";
  double q = 0;
  if (s.direct_alive > 0) {
    q = poisson ? federation_.fraction
                : static_cast<double>(s.direct_selected) / s.direct_alive;
  }
  if (s.edges_selected > 0) {
    double inner = options_.trust_edge_sampling ? 0.0 : 1.0;
    int answered = 0;
    for (const auto& p : updates) {
      if (!p.edge || p.header.users_alive == 0) continue;
      inner = std::max(inner, static_cast<double>(p.header.users_selected) /
                                  p.header.users_alive);
      ++answered;
    }
    if (answered < s.edges_selected) inner = 1.0;
    const double edge_q = poisson ? federation_.fraction
                                  : static_cast<double>(s.edges_selected) /
                                        std::max(1, s.edges_alive);
    q = std::max(q, inner * edge_q);
    *cloud_q = std::min(1.0, std::max(inner, 1e-12));
  }
  return std::min(1.0, std::max(q, 1e-12));
}

void PrivacyStage::Account(const std::vector<Update>& updates, int64_t round,
                           RoundMetrics* m) {
  double cloud_q = 1.0;
  const double q = SamplingRate(updates, &cloud_q);
  accountant_->Compose(q, z_);
  privacy::PrivacySpent spent = accountant_->Spent(delta_);
  m->epsilon = spent.epsilon;
  m->delta = delta_;
  m->sampling_rate = q;
  // Against the cloud: an edge's release carries only its share of the
  // noise, z / sqrt(E) (the count's share too, so the pair's multiplier
  // scales the same way), at the edges' own sampling rate; a direct
  // worker's update, an un-noised edge sum (central placement) or a zero
  // noise share protects nobody from it.
  const Selection& s = selection_;
  if (options_.placement == "edges" && s.edges_selected > 0 &&
      s.direct_selected == 0 && z_ > 0) {
    cloud_accountant_->Compose(
        cloud_q, z_ / std::sqrt(static_cast<double>(s.edges_selected)));
  } else {
    cloud_unbounded_ = true;
  }
  m->epsilon_cloud = cloud_unbounded_
                         ? std::numeric_limits<double>::infinity()
                         : cloud_accountant_->Spent(delta_).epsilon;
  if (options_.adaptive_clipping) {
    double users = 0;
    const double count = NoisedUnclippedCount(updates, &users);
    m->unclipped_count = count;
    m->unclipped_fraction = users > 0 ? count / users : std::nan("");
    if (std::isfinite(m->unclipped_fraction)) {
      const double next = privacy::NextClipNorm(
          clip_norm_, m->unclipped_fraction, options_.target_quantile,
          options_.clip_learning_rate);
      FP_LOG_INFO("coordinator",
                  "round {}: dp: {:.2f} of updates unclipped (noised; target "
                  "{:.2f}): clip norm {:.4g} -> {:.4g}",
                  round, m->unclipped_fraction, options_.target_quantile,
                  clip_norm_, next);
      clip_norm_ = next;
    }
  }
}

Status PrivacyStage::BeginUpstreamTask(const EdgeTask& task) {
  RoundDp dp;
  if (options_.enabled) {
    if (!(task.clip_norm > 0)) {
      std::lock_guard<std::mutex> lock(mu_);
      round_ = RoundDp{};
      return Status::InvalidArgument(
          "cloud round " + std::to_string(task.cloud_round) +
          ": the plan says DP but the task has no clip norm");
    }
    dp.enabled = true;
    dp.clip_norm = task.clip_norm;
    dp.sum_stddev = task.noise_stddev;
    dp.count_stddev = task.count_noise_stddev;
  }
  std::lock_guard<std::mutex> lock(mu_);
  round_ = dp;
  return Status::Ok();
}

StatusOr<TensorMap> PrivacyStage::Mean(const TensorMap& current,
                                       const std::set<std::string>& frozen,
                                       bool ffa, bool hetero,
                                       const std::vector<Update>& updates,
                                       const char* label, RoundMetrics* m) {
  const RoundDp dp = Current();
  // The released coordinates: all but the frozen tensors and FFA-LoRA's
  // fixed A (nobody may change those, so they carry no one's data).
  TensorMap sum;
  for (const auto& [key, t] : current) {
    if (frozen.count(key) || (ffa && IsLoraA(key))) continue;
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
    if (hetero && p.header.rank > 0) {
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
        return Status::InvalidArgument("dp: update from '" + p.worker_id +
                                       "': tensor '" + key + "' has shape " +
                                       ShapeString(t.sizes()) + ", expected " +
                                       ShapeString(it->second.sizes()));
      }
      it->second.add_(t, w);
    }
  }
  if (users <= 0) return Status::FailedPrecondition("dp: no users");
  // The noise of the round: what the edges added plus this level's part.
  double top = std::sqrt(std::max(0.0, dp.sum_stddev * dp.sum_stddev - added));
  if (top < 1e-6 * dp.sum_stddev) top = 0;  // the edges' shares add up
  noise_->AddTo(&sum, top);
  FP_LOG_INFO("coordinator",
              "{} {}: dp: sum of {} users' updates clipped to {:.4g}, noise "
              "stddev {:.4g} added here{}",
              label, m->round, users, dp.clip_norm, top,
              added > 0
                  ? fmt::format(" ({:.4g} at the edges)", std::sqrt(added))
                  : std::string());
  for (auto& kv : sum) kv.second.div_(users);
  if (!cloud_) {
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

void PrivacyStage::SaveState(nlohmann::json* extra) const {
  if (!accountant_ || !ready_) return;
  (*extra)["dp"] = {{"clip_norm", clip_norm_},
                    {"noise_multiplier", z_},
                    {"delta", delta_},
                    {"population", population_},
                    {"count_stddev", count_stddev_},
                    {"rdp", accountant_->rdp()},
                    {"rdp_cloud", cloud_accountant_->rdp()},
                    {"cloud_unbounded", cloud_unbounded_}};
}

Status PrivacyStage::LoadState(const SavedState& saved) {
  if (!accountant_) return Status::Ok();
  if (!saved.extra.contains("dp")) {
    if (saved.rounds_done == 0) return Status::Ok();
    return Status::FailedPrecondition(
        saved.where +
        " was written without DP, this config enables dp: the privacy "
        "spent so far is unknown (start a new federation)");
  }
  const nlohmann::json& d = saved.extra["dp"];
  try {
    clip_norm_ = d.at("clip_norm").get<double>();
    z_ = d.at("noise_multiplier").get<double>();
    delta_ = d.at("delta").get<double>();
    population_ = d.at("population").get<int64_t>();
    count_stddev_ = d.at("count_stddev").get<double>();
    auto read = [&](const char* key) {
      std::vector<double> rdp;
      for (const auto& v : d.at(key)) {  // JSON has no infinity: null
        rdp.push_back(v.is_null() ? std::numeric_limits<double>::infinity()
                                  : v.get<double>());
      }
      return rdp;
    };
    RETURN_IF_ERROR(accountant_->SetRdp(read("rdp")));
    if (d.contains("rdp_cloud")) {
      RETURN_IF_ERROR(cloud_accountant_->SetRdp(read("rdp_cloud")));
      cloud_unbounded_ = d.at("cloud_unbounded").get<bool>();
    } else {
      cloud_unbounded_ = true;  // written before it was tracked
    }
    ready_ = true;
  } catch (const std::exception& e) {
    return Status::Corruption(saved.where + ": extra.dp: " + e.what());
  }
  return Status::Ok();
}

}  // namespace coordinator
}  // namespace fedpeft
