#include "peft/rank_assignment.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace fedpeft {
namespace peft {
namespace {

// Every out-of-range field. Comparisons are written so that NaN fails them.
std::vector<OptionProblem> PolicyProblems(const RankPolicy& p) {
  std::vector<OptionProblem> problems;
  auto check = [&](bool ok, const char* key, std::string message) {
    if (!ok) problems.push_back({key, std::move(message)});
  };
  check(p.r_min >= 1, "r_min", "must be >= 1, got " + std::to_string(p.r_min));
  check(p.r_max >= p.r_min, "r_max",
        "must be >= r_min (" + std::to_string(p.r_min) + "), got " +
            std::to_string(p.r_max));
  check(p.safety > 0 && p.safety <= 1, "safety",
        "must be in (0, 1], got " + ToConfigString(p.safety));
  check(p.grow_below > 0 && p.grow_below <= 1, "grow_below",
        "must be in (0, 1], got " + ToConfigString(p.grow_below));
  return problems;
}

double MemoryBytes(const AdapterCost& cost, int64_t r) {
  // fp32 weights, gradients and AdamW's two moments: 4 · 4 bytes per param.
  return 16.0 * static_cast<double>(cost.params_per_rank) * r +
         static_cast<double>(cost.act_bytes_fixed) +
         static_cast<double>(cost.act_bytes_per_rank) * r;
}

bool FitsMemory(const AdapterCost& cost, const DeviceProfile& device,
                int64_t r) {
  return device.ram_bytes == 0 ||
         MemoryBytes(cost, r) <= static_cast<double>(device.ram_bytes);
}

// The modelled round time at rank r with base throughput `tokens_per_second`;
// terms with an unknown (0) figure are left out.
double ModelSeconds(const AdapterCost& cost, double tokens_per_second,
                    double uplink_bytes_per_second, int64_t r) {
  double seconds = 0;
  if (tokens_per_second > 0 && cost.tokens_per_round > 0) {
    seconds += static_cast<double>(cost.tokens_per_round) / tokens_per_second *
               (1 + cost.compute_per_rank * r);
  }
  if (uplink_bytes_per_second > 0) {
    seconds += 2.0 * static_cast<double>(cost.params_per_rank) * r *
               cost.upload_bytes_per_param / uplink_bytes_per_second;
  }
  return seconds;
}

bool FitsDeadline(const RankPolicy& policy, double seconds, double deadline_s) {
  return deadline_s <= 0 || seconds <= policy.safety * deadline_s;
}

}  // namespace

void RankPolicy::Read(ConfigReader& in) {
  in.Get("r_min", &r_min);
  in.Get("r_max", &r_max);
  in.Get("safety", &safety);
  in.Get("grow_below", &grow_below);
  for (const OptionProblem& p : PolicyProblems(*this)) {
    in.Check(false, p.key, p.message);
  }
}

Status RankPolicy::Validate() const {
  std::string message;
  for (const OptionProblem& p : PolicyProblems(*this)) {
    message += (message.empty() ? "" : "; ") + p.key + ": " + p.message;
  }
  return message.empty() ? Status::Ok()
                         : Status::InvalidArgument("rank policy: " + message);
}

int64_t InitialRank(const RankPolicy& policy, const AdapterCost& cost,
                    const DeviceProfile& device, double deadline_s) {
  for (int64_t r = policy.r_max; r > policy.r_min; --r) {
    const double seconds = ModelSeconds(cost, device.tokens_per_second,
                                        device.uplink_bytes_per_second, r);
    if (FitsMemory(cost, device, r) &&
        FitsDeadline(policy, seconds, deadline_s)) {
      return r;
    }
  }
  return policy.r_min;
}

int64_t NextRank(const RankPolicy& policy, const AdapterCost& cost,
                 const DeviceProfile& device, double deadline_s,
                 int64_t current, const RoundObservation& observation) {
  const int64_t cur = std::clamp(current, policy.r_min, policy.r_max);
  if (observation.missed_deadline) {
    return std::max(policy.r_min, cur / 2);
  }
  // Grow only on evidence: an answer well within a known deadline.
  if (!observation.answered || deadline_s <= 0 ||
      !(observation.seconds <= policy.grow_below * deadline_s)) {
    return cur;
  }
  // The measured throughput ran at rank `cur`; the model wants the base rate.
  double base_tps = device.tokens_per_second;
  if (observation.tokens_per_second > 0) {
    base_tps = observation.tokens_per_second *
               (1 + cost.compute_per_rank * static_cast<double>(cur));
  }
  const double uplink = device.uplink_bytes_per_second;
  const double model_cur = ModelSeconds(cost, base_tps, uplink, cur);
  auto predicted = [&](int64_t r) {
    // Scaling the measurement keeps what the model misses (latency,
    // evaluation) in proportion instead of dropping it.
    return model_cur > 0
               ? observation.seconds * ModelSeconds(cost, base_tps, uplink, r) /
                     model_cur
               : observation.seconds;
  };
  const int64_t target =
      std::min(policy.r_max, cur + std::max<int64_t>(1, cur / 2));
  for (int64_t r = target; r > cur; --r) {
    if (FitsMemory(cost, device, r) &&
        FitsDeadline(policy, predicted(r), deadline_s)) {
      return r;
    }
  }
  return cur;
}

int64_t PrunedRank(const TensorMap& adapter, double threshold) {
  static const std::string kA = ".lora_A.weight";
  static const std::string kB = ".lora_B.weight";
  torch::NoGradGuard no_grad;
  int64_t current = 1;
  int64_t needed = 1;
  for (const auto& [key, a] : adapter) {
    if (key.size() <= kA.size() ||
        key.compare(key.size() - kA.size(), kA.size(), kA) != 0) {
      continue;
    }
    auto it = adapter.find(key.substr(0, key.size() - kA.size()) + kB);
    if (it == adapter.end()) continue;
    const torch::Tensor& b = it->second;
    // Only well-formed pairs (A [r, in], B [out, r]) have components.
    if (a.dim() != 2 || b.dim() != 2 || a.size(0) != b.size(1) ||
        a.size(0) == 0) {
      continue;
    }
    const int64_t r = a.size(0);
    current = std::max(current, r);
    if (!(threshold > 0)) continue;
    const torch::Tensor c =
        b.to(torch::kFloat64).norm(2, {0}) * a.to(torch::kFloat64).norm(2, {1});
    const double floor = threshold * c.max().item<double>();
    // The last component that still matters decides the module's rank.
    const torch::Tensor idx = torch::nonzero(c >= floor);
    if (idx.numel() > 0) {
      needed = std::max(needed, idx.max().item<int64_t>() + 1);
    }
  }
  return threshold > 0 ? needed : current;
}

}  // namespace peft
}  // namespace fedpeft
