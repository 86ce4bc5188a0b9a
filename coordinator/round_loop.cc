// RoundEngine: the round loop — select, broadcast, collect, close, merge —
// and what drivers call between rounds. The handlers are in
// round_engine.cc.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "common/logging.h"
#include "coordinator/round_engine.h"
#include "security/secagg_crypto.h"

namespace fedpeft {
namespace coordinator {
namespace {

// A round of a large population names the first few participants only.
constexpr size_t kNamed = 8;

// Participants a round selects out of n alive.
int SelectedOf(const FederationOptions& f, int n) {
  int k = static_cast<int>(std::ceil(f.fraction * n));
  k = std::max(k, f.min_workers);
  if (f.max_workers > 0) k = std::min(k, f.max_workers);
  return std::min(k, n);
}

}  // namespace

bool RoundEngine::WaitForWorkers() {
  auto last_log = Clock::now() - std::chrono::hours(1);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    size_t alive = registry_.Alive().size();
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

bool RoundEngine::WaitForWorkersUntil(Clock::time_point until, size_t* alive,
                                      size_t* needed) {
  const FederationOptions& f = config_.federation;
  std::unique_lock<std::mutex> lock(mu_);
  *needed = static_cast<size_t>(
      started_ ? f.min_workers : std::max(f.min_available, f.min_workers));
  while (!stop_ && registry_.Alive().size() < *needed && Clock::now() < until) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
  *alive = registry_.Alive().size();
  if (*alive >= *needed) started_ = true;
  return started_;
}

Registry::Counts RoundEngine::AliveCounts() {
  std::lock_guard<std::mutex> lock(mu_);
  return registry_.AliveCounts();
}

double RoundEngine::ExpectedSamplingRate() {
  if (config_.federation.sampling == "poisson") {
    return config_.federation.fraction;
  }
  std::lock_guard<std::mutex> lock(mu_);
  const int n = static_cast<int>(registry_.Alive().size());
  if (n == 0) return 1.0;
  // Behind edges the share of its workers an edge selects is its own
  // setting: counted as 1 (all of them), which overstates q (safe).
  return static_cast<double>(SelectedOf(config_.federation, n)) / n;
}

bool RoundEngine::RunRound(int64_t round, int attempt, double deadline_s,
                           RoundMetrics* m) {
  const FederationOptions& f = config_.federation;
  auto t0 = Clock::now();
  m->round = round;
  m->attempt = attempt;
  m->server_eval_loss = std::nan("");
  std::vector<Update> updates;
  {
    std::unique_lock<std::mutex> lock(mu_);
    // select
    std::vector<std::string> alive = registry_.Alive();
    int n = static_cast<int>(alive.size());
    if (f.sampling == "poisson") {
      // Each independently with probability `fraction` (what the DP
      // accountant assumes).
      const std::vector<uint64_t> draws = SelectionDraws(alive.size());
      round_.selected.clear();
      for (size_t i = 0; i < alive.size(); ++i) {
        const double u = static_cast<double>(draws[i] >> 11) * 0x1.0p-53;
        if (u < f.fraction) round_.selected.insert(alive[i]);
      }
    } else {
      const int k = SelectedOf(f, n);
      const std::vector<uint64_t> draws =
          SelectionDraws(n > 1 ? static_cast<size_t>(n - 1) : 0);
      for (int i = n - 1; i > 0; --i) {  // Fisher-Yates
        const uint64_t d = draws[static_cast<size_t>(n - 1 - i)];
        std::swap(alive[i], alive[d % static_cast<uint64_t>(i + 1)]);
      }
      round_.selected = std::set<std::string>(alive.begin(), alive.begin() + k);
    }
    const int k = static_cast<int>(round_.selected.size());
    round_.answered.clear();
    round_.rejected = 0;
    round_.round = round;
    round_.attempt = attempt;
    round_.deadline_s = deadline_s;
    pending_.clear();
    dispatched_.clear();
    round_bytes_up_ = round_bytes_down_ = 0;
    round_worker_bytes_.clear();
    round_seed_ = Mix(f.seed ^ Mix(static_cast<uint64_t>(round) * 131 +
                                   static_cast<uint64_t>(attempt)));
    auto deadline = Clock::now() + std::chrono::milliseconds(
                                       static_cast<int64_t>(deadline_s * 1000));
    deadline_unix_ms_ = UnixMillis() + static_cast<uint64_t>(deadline_s * 1000);
    for (RoundStage* s : pipeline_.order) s->OnOpen(round_, m);
    m->users_alive = n;
    // Edges count by their users, added when their updates are in.
    m->population = registry_.AliveCounts().direct;
    // broadcast: waiting GetTask calls wake up and take the task
    phase_ = Phase::kCollect;
    m->selected = k;
    std::string names;
    size_t named = 0;
    for (const auto& s : round_.selected) {
      if (named++ == kNamed) {
        names += fmt::format(" and {} more", k - static_cast<int>(kNamed));
        break;
      }
      names += (names.empty() ? "" : ", ") + s;
    }
    FP_LOG_INFO("coordinator", "{} {}{}: selected {} of {} alive: {}{}", label_,
                cloud_ ? std::to_string(round) + "/" + std::to_string(f.rounds)
                       : std::to_string(round),
                attempt > 0 ? " (retry " + std::to_string(attempt) + ")" : "",
                k, n, names,
                round_.frozen.empty()
                    ? std::string()
                    : fmt::format("; {} tensors frozen", round_.frozen.size()));
    cv_.notify_all();

    // collect
    while (!stop_) {
      auto now = Clock::now();
      for (RoundStage* s : pipeline_.order) s->OnTick(round_, now);
      bool all_in = true;
      for (const auto& id : round_.selected) {
        if (round_.answered.count(id)) continue;
        const Participant* p = registry_.Find(id);
        if (p && registry_.IsAlive(*p, now)) {
          all_in = false;
          break;
        }
      }
      if (all_in || now >= deadline) {
        if (!all_in) {
          FP_LOG_WARN("coordinator",
                      "round {}: deadline ({:.0f}s) reached with {}/{} "
                      "answers",
                      round, deadline_s, pending_.size(),
                      round_.selected.size());
        }
        break;
      }
      cv_.wait_until(lock,
                     std::min(deadline, now + std::chrono::milliseconds(250)));
    }

    // close: the stages, innermost first, may replace the updates (the
    // secure sum unmasks), account for them and re-plan.
    phase_ = Phase::kAggregate;
    m->worker_bytes_up = round_worker_bytes_;
    updates = std::move(pending_);
    pending_.clear();
    for (auto it = pipeline_.order.rbegin(); it != pipeline_.order.rend();
         ++it) {
      (*it)->OnClose(round_, lock, &updates, m);
    }
    m->answered = 0;
    for (const auto& u : updates) m->answered += AnswersIn(u);
    m->rejected = round_.rejected;
    m->dropped = m->selected - m->answered;
    std::vector<std::string> silent;
    for (const auto& id : round_.selected) {
      if (!round_.answered.count(id)) silent.push_back(id);
    }
    for (size_t i = 0; i < silent.size() && i < kNamed; ++i) {
      FP_LOG_WARN("coordinator", "round {}: no answer from '{}' (dropped)",
                  round, silent[i]);
    }
    if (silent.size() > kNamed) {
      FP_LOG_WARN("coordinator", "round {}: no answer from {} more (dropped)",
                  round, silent.size() - kNamed);
    }
    m->edges_answered = 0;
    for (const auto& u : updates) {
      m->edges_answered += u.edge ? 1 : 0;
      if (u.edge) m->population += static_cast<int>(u.header.users_alive);
    }
  }
  int quorum = std::max(1, static_cast<int>(std::ceil(f.quorum * m->selected)));
  bool ok = !stop_ && m->answered >= quorum;
  if (ok) {
    Status s = Merged(round, std::move(updates), m);
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

Status RoundEngine::Merged(int64_t round, std::vector<Update> updates,
                           RoundMetrics* m) {
  double loss_sum = 0, sample_sum = 0, eval_sum = 0, eval_tokens = 0;
  last_round_headers_.clear();
  for (auto& p : updates) {
    if (p.summed) {
      for (const auto& [id, h] : p.members) last_round_headers_[id] = h;
    } else {
      last_round_headers_[p.worker_id] = p.header;
    }
    if (p.header.metrics_withheld) continue;  // DP: nothing to average
    m->max_train_seconds =
        std::max(m->max_train_seconds, p.header.train_seconds);
    loss_sum += p.header.train_loss * p.header.num_samples;
    sample_sum += p.header.num_samples;
    if (std::isfinite(p.header.eval_loss) && p.header.eval_tokens > 0) {
      eval_sum += p.header.eval_loss * p.header.eval_tokens;
      eval_tokens += p.header.eval_tokens;
    }
  }
  m->train_loss = sample_sum > 0 ? loss_sum / sample_sum : std::nan("");
  m->eval_loss = eval_tokens > 0 ? eval_sum / eval_tokens : std::nan("");
  std::shared_ptr<const TensorMap> current;
  std::set<std::string> frozen;
  bool ffa = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current = global_;
    frozen = round_.frozen;
    ffa = round_.ffa;
  }
  AdapterPlanner& planner = *pipeline_.planner;
  std::optional<TensorMap> dp_mean;
  if (pipeline_.privacy->enabled()) {
    ASSIGN_OR_RETURN(
        dp_mean, pipeline_.privacy->Mean(*current, frozen, ffa,
                                         planner.hetero().has_value(), updates,
                                         label_, m));
  }
  ASSIGN_OR_RETURN(TensorMap next,
                   merge_->Next(round, *current, *init_, updates,
                                std::move(dp_mean), m->train_loss));
  planner.KeepFrozen(*current, &next);
  for (const auto& kv : next) {
    if (!torch::isfinite(kv.second).all().item<bool>()) {
      return Status::Internal("aggregated tensor '" + kv.first +
                              "' is not finite; keeping the previous global");
    }
  }
  const std::vector<std::string> changed =
      planner.Settle(round, *current, next);
  auto merged = std::make_shared<const TensorMap>(std::move(next));
  {
    std::lock_guard<std::mutex> lock(mu_);
    planner.MarkChanged(changed, round);
    global_ = merged;
  }
  const int every = config_.eval.every;
  const bool evaluate =
      round % every == 0 || round == config_.federation.rounds;
  m->server_eval_loss =
      eval_ && evaluate ? eval_->Evaluate(*merged) : std::nan("");
  return Status::Ok();
}

void RoundEngine::Commit(const RoundMetrics& m) {
  std::lock_guard<std::mutex> lock(mu_);
  history_.push_back(m);
  phase_ = stop_ ? Phase::kDone : Phase::kWaitWorkers;
  round_.selected.clear();
}

void RoundEngine::Finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    phase_ = Phase::kDone;
    round_.selected.clear();
    cv_.notify_all();
  }
  if (!stop_) ShutdownGrace();
}

void RoundEngine::ShutdownGrace() {
  const FederationOptions& f = config_.federation;
  auto until = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(
                                  f.shutdown_grace_s * 1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_ && Clock::now() < until) {
    // Leave early once every live worker has been told.
    bool all_told = true;
    for (const std::string& id : registry_.AliveCallers()) {
      if (!told_shutdown_.count(id)) all_told = false;
    }
    if (all_told) break;
    cv_.wait_until(
        lock, std::min(until, Clock::now() + std::chrono::milliseconds(200)));
  }
}

void RoundEngine::Stop() {
  stop_ = true;
  cv_.notify_all();
}

Status RoundEngine::BeginUpstreamTask(const TensorMap& cloud_global,
                                      const EdgeTask& task,
                                      int64_t last_round) {
  std::lock_guard<std::mutex> lock(mu_);
  pipeline_.planner->BeginUpstreamTask(*global_, cloud_global, last_round,
                                       task);
  global_ = std::make_shared<const TensorMap>(cloud_global);
  const int download_bits = compression_.download_bits;
  compression_ = task.compression;
  compression_.download_bits = download_bits;
  return pipeline_.privacy->BeginUpstreamTask(task);
}

std::shared_ptr<const TensorMap> RoundEngine::global() {
  std::lock_guard<std::mutex> lock(mu_);
  return global_;
}

void RoundEngine::set_global(std::shared_ptr<const TensorMap> global) {
  std::lock_guard<std::mutex> lock(mu_);
  global_ = std::move(global);
}

RoundEngine::Totals RoundEngine::totals() {
  std::lock_guard<std::mutex> lock(mu_);
  return totals_;
}

void RoundEngine::set_totals(const Totals& t) {
  std::lock_guard<std::mutex> lock(mu_);
  totals_ = t;
}

std::vector<uint64_t> RoundEngine::SelectionDraws(size_t n) {
  std::vector<uint64_t> draws(n);
  if (!secret_selection_) {
    for (uint64_t& d : draws) d = rng_();  // checkpointed: reproducible
    return draws;
  }
  Status s = secagg::SystemRandom().Fill(
      reinterpret_cast<uint8_t*>(draws.data()), n * sizeof(uint64_t));
  if (!s.ok()) {
    // As for DP noise (security/dp.cc): a predictable selection would void
    // the accounted amplification, so there is no fallback.
    std::fprintf(stderr, "fedpeft: cannot draw the round's selection: %s\n",
                 s.ToString().c_str());
    std::abort();
  }
  return draws;
}

std::string RoundEngine::RngState() const {
  std::ostringstream out;
  out << rng_;
  return out.str();
}

Status RoundEngine::SetRngState(const std::string& state) {
  std::istringstream in(state);
  in >> rng_;
  if (in.fail())
    return Status::Corruption("rng_state is not a generator state");
  return Status::Ok();
}

std::vector<RoundMetrics> RoundEngine::History() {
  std::lock_guard<std::mutex> lock(mu_);
  return history_;
}

}  // namespace coordinator
}  // namespace fedpeft
