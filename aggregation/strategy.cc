#include "aggregation/strategy.h"

#include <cmath>
#include <functional>
#include <utility>

#include "aggregation/fedavg.h"
#include "aggregation/fedopt.h"
#include "aggregation/mean.h"
#include "aggregation/robust.h"

namespace fedpeft {
namespace aggregation {
namespace {

using Factory =
    std::function<std::unique_ptr<Strategy>(const StrategyOptions&)>;

// The registry, in the order names are listed in messages.
const std::vector<std::pair<std::string, Factory>>& Registry() {
  static const auto* registry =
      new std::vector<std::pair<std::string, Factory>>{
          {"fedavg",
           [](const StrategyOptions& o) {
             return std::make_unique<FedAvg>(o.weighted);
           }},
          {"fedavgm",
           [](const StrategyOptions& o) {
             return std::make_unique<FedAvgM>(o.server_lr, o.momentum,
                                              o.weighted);
           }},
          {"fedadam",
           [](const StrategyOptions& o) {
             return std::make_unique<FedAdaptive>(FedAdaptive::Variant::kAdam,
                                                  o.server_lr, o.beta1, o.beta2,
                                                  o.tau, o.weighted);
           }},
          {"fedyogi",
           [](const StrategyOptions& o) {
             return std::make_unique<FedAdaptive>(FedAdaptive::Variant::kYogi,
                                                  o.server_lr, o.beta1, o.beta2,
                                                  o.tau, o.weighted);
           }},
          {"median",
           [](const StrategyOptions&) {
             return std::make_unique<CoordinateMedian>();
           }},
          {"trimmed_mean",
           [](const StrategyOptions& o) {
             return std::make_unique<TrimmedMean>(o.trim_ratio);
           }},
      };
  return *registry;
}

std::string NameList() {
  std::string list;
  for (const std::string& name : StrategyNames()) {
    list += (list.empty() ? "" : ", ") + name;
  }
  return list;
}

bool IsRegistered(const std::string& name) {
  for (const std::string& n : StrategyNames()) {
    if (n == name) return true;
  }
  return false;
}

// Every out-of-range option, one entry per key. Comparisons are written so
// that NaN fails them.
std::vector<OptionProblem> OptionProblems(const StrategyOptions& o) {
  std::vector<OptionProblem> problems;
  auto check = [&](bool ok, const char* key, std::string message) {
    if (!ok) problems.push_back({key, std::move(message)});
  };
  check(IsRegistered(o.name), "name",
        "expected one of " + NameList() + ", got '" + o.name + "'");
  check(o.server_lr > 0 && std::isfinite(o.server_lr), "server_lr",
        "must be > 0, got " + ToConfigString(o.server_lr));
  const auto unit = [](double x) { return x >= 0 && x < 1; };
  check(unit(o.momentum), "momentum",
        "must be in [0, 1), got " + ToConfigString(o.momentum));
  check(unit(o.beta1), "beta1",
        "must be in [0, 1), got " + ToConfigString(o.beta1));
  check(unit(o.beta2), "beta2",
        "must be in [0, 1), got " + ToConfigString(o.beta2));
  check(o.tau > 0 && std::isfinite(o.tau), "tau",
        "must be > 0, got " + ToConfigString(o.tau));
  check(o.trim_ratio >= 0 && o.trim_ratio < 0.5, "trim_ratio",
        "must be in [0, 0.5), got " + ToConfigString(o.trim_ratio) +
            " (floor(trim_ratio * N) updates are cut at each end)");
  return problems;
}

}  // namespace

void StrategyOptions::Read(ConfigReader& in) {
  in.Get("name", &name);
  in.Get("server_lr", &server_lr);
  in.Get("momentum", &momentum);
  in.Get("beta1", &beta1);
  in.Get("beta2", &beta2);
  in.Get("tau", &tau);
  in.Get("trim_ratio", &trim_ratio);
  in.Get("weighted", &weighted);
  for (const OptionProblem& p : OptionProblems(*this)) {
    in.Check(false, p.key, p.message);
  }
}

const std::vector<std::string>& StrategyNames() {
  static const auto* names = [] {
    auto* v = new std::vector<std::string>;
    for (const auto& entry : Registry()) v->push_back(entry.first);
    return v;
  }();
  return *names;
}

StatusOr<std::unique_ptr<Strategy>> MakeStrategy(
    const StrategyOptions& options) {
  const std::vector<OptionProblem> problems = OptionProblems(options);
  if (!problems.empty()) {
    std::string message;
    for (const OptionProblem& p : problems) {
      message += (message.empty() ? "" : "; ") + ("strategy." + p.key) + ": " +
                 p.message;
    }
    return Status::InvalidArgument(message);
  }
  for (const auto& [name, factory] : Registry()) {
    if (name == options.name) return factory(options);
  }
  return Status::Internal("strategy '" + options.name + "' not registered");
}

Status ValidateUpdate(const TensorMap& global, const ClientUpdate& update,
                      const UpdateLimits& limits) {
  const std::string where = "update from worker '" + update.worker_id + "': ";
  if (update.num_samples <= 0) {
    return Status::InvalidArgument(
        where + "num_samples must be > 0, got " +
        std::to_string(update.num_samples) +
        " (it weights the update; a worker that trained on nothing should "
        "not report)");
  }
  for (const auto& [key, g] : global) {
    if (!update.delta.count(key)) {
      return Status::InvalidArgument(
          where + "missing key '" + key + "' (expected the " +
          std::to_string(global.size()) + " keys of the global adapter, got " +
          std::to_string(update.delta.size()) + ")");
    }
  }
  for (const auto& [key, d] : update.delta) {
    if (!global.count(key)) {
      return Status::InvalidArgument(
          where + "unexpected key '" + key +
          "', not in the global adapter (hint: was the worker configured "
          "with other target modules or adapter type?)");
    }
  }
  try {
    for (const auto& [key, d] : update.delta) {
      const torch::Tensor& g = global.at(key);
      const std::string at_key = where + "key '" + key + "': ";
      if (!d.defined() || d.scalar_type() != torch::kFloat32) {
        return Status::InvalidArgument(at_key + "dtype got " + DtypeName(d) +
                                       ", expected float32");
      }
      if (static_cast<uint64_t>(d.numel()) > limits.max_tensor_elements) {
        return Status::InvalidArgument(
            at_key + "tensor has " + std::to_string(d.numel()) +
            " elements, more than the limit of " +
            std::to_string(limits.max_tensor_elements));
      }
      if (d.sizes() != g.sizes()) {
        return Status::InvalidArgument(
            at_key + "shape got " + ShapeString(d.sizes()) + ", expected " +
            ShapeString(g.sizes()) +
            " (hint: does the worker use the same LoRA rank?)");
      }
      if (!torch::isfinite(d).all().item<bool>()) {
        const int64_t nan = torch::isnan(d).sum().item<int64_t>();
        const int64_t inf = torch::isinf(d).sum().item<int64_t>();
        return Status::InvalidArgument(at_key + "values got " +
                                       std::to_string(nan) + " NaN and " +
                                       std::to_string(inf) +
                                       " Inf, expected all finite (diverged "
                                       "local training?)");
      }
    }
  } catch (const std::exception& e) {
    return Status::InvalidArgument(where +
                                   "cannot inspect tensors: " + e.what());
  }
  return Status::Ok();
}

}  // namespace aggregation
}  // namespace fedpeft
