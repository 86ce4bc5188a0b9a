#include "aggregation/mean.h"

#include <sstream>

#include "common/text.h"

namespace fedpeft {
namespace aggregation {

Status CheckAggregateInputs(const std::string& strategy,
                            const TensorMap& global,
                            const std::vector<ClientUpdate>& updates) {
  const std::string where = strategy + ": ";
  if (updates.empty()) {
    return Status::FailedPrecondition(where + "no client updates to aggregate");
  }
  for (const auto& [key, g] : global) {
    if (!g.defined() || g.scalar_type() != torch::kFloat32) {
      return Status::FailedPrecondition(
          where + "global adapter tensor '" + key +
          "' must be a defined float32 tensor, got " +
          (g.defined() ? std::string(c10::toString(g.scalar_type()))
                       : std::string("undefined")));
    }
  }
  for (const ClientUpdate& u : updates) {
    if (u.delta.size() != global.size()) {
      return Status::FailedPrecondition(
          where + "update from worker '" + u.worker_id + "' has " +
          std::to_string(u.delta.size()) + " tensors, expected " +
          std::to_string(global.size()) + " (REQUIRES: ValidateUpdate)");
    }
    // Both maps are ordered by key, so one joint walk compares the key sets.
    auto it = u.delta.begin();
    for (const auto& [key, g] : global) {
      const torch::Tensor& d = it->second;
      if (it->first != key || !d.defined() ||
          d.scalar_type() != torch::kFloat32 || d.sizes() != g.sizes()) {
        return Status::FailedPrecondition(
            where + "update from worker '" + u.worker_id + "': tensor '" +
            it->first + "' does not match global tensor '" + key + "' " +
            ShapeString(g.sizes()) + " float32 (REQUIRES: ValidateUpdate)");
      }
      ++it;
    }
  }
  return Status::Ok();
}

std::vector<double> ClientWeights(const std::vector<ClientUpdate>& updates,
                                  bool weighted) {
  std::vector<double> weights(updates.size(),
                              1.0 / static_cast<double>(updates.size()));
  if (!weighted) return weights;
  double total = 0.0;
  for (const ClientUpdate& u : updates) {
    total += static_cast<double>(u.num_samples);
  }
  for (size_t k = 0; k < updates.size(); ++k) {
    weights[k] = static_cast<double>(updates[k].num_samples) / total;
  }
  return weights;
}

torch::Tensor WeightedMeanDelta(const std::string& key,
                                const std::vector<ClientUpdate>& updates,
                                const std::vector<double>& weights) {
  // The first client initialises the accumulator (one fused mul instead of a
  // zero fill plus an add); the rest accumulate in place.
  const torch::Tensor& first = updates[0].delta.at(key);
  torch::Tensor acc = torch::mul(first, weights[0]);
  for (size_t k = 1; k < updates.size(); ++k) {
    acc.add_(updates[k].delta.at(key), weights[k]);
  }
  return acc;
}

std::vector<torch::Tensor> DeltasOf(const std::string& key,
                                    const std::vector<ClientUpdate>& updates) {
  std::vector<torch::Tensor> deltas;
  deltas.reserve(updates.size());
  for (const ClientUpdate& u : updates) deltas.push_back(u.delta.at(key));
  return deltas;
}

TensorMap CloneTensorMap(const TensorMap& tensors) {
  TensorMap out;
  for (const auto& [key, t] : tensors) out.emplace(key, t.clone());
  return out;
}

Status SplitState(const std::string& strategy, const TensorMap& state,
                  const std::vector<std::string>& kinds,
                  std::vector<TensorMap>* by_kind) {
  const std::string where = strategy + " state: ";
  std::vector<TensorMap> split(kinds.size());
  for (const auto& [name, t] : state) {
    const size_t slash = name.find('/');
    const std::string kind =
        slash == std::string::npos ? std::string() : name.substr(0, slash);
    size_t i = 0;
    while (i < kinds.size() && kinds[i] != kind) ++i;
    if (i == kinds.size() || slash + 1 == name.size()) {
      std::string expected;
      for (const auto& k : kinds) {
        expected += (expected.empty() ? "'" : ", '") + k + "/<PEFT key>'";
      }
      return Status::InvalidArgument(
          where + "unexpected key '" + name + "', expected " + expected +
          " (hint: was the checkpoint written by another strategy?)");
    }
    if (!t.defined() || t.scalar_type() != torch::kFloat32) {
      return Status::InvalidArgument(
          where + "key '" + name + "': dtype got " +
          (t.defined() ? std::string(c10::toString(t.scalar_type()))
                       : std::string("undefined")) +
          ", expected float32");
    }
    if (!torch::isfinite(t).all().item<bool>()) {
      return Status::InvalidArgument(where + "key '" + name +
                                     "': holds NaN or Inf values");
    }
    split[i].emplace(name.substr(slash + 1), t.clone());
  }
  // Every kind must describe the same tensors: m without v is half a state.
  for (size_t i = 1; i < kinds.size(); ++i) {
    for (size_t which : {size_t{0}, i}) {
      const TensorMap& a = split[which];
      const TensorMap& b = split[which == 0 ? i : 0];
      const std::string& kind_b = kinds[which == 0 ? i : 0];
      for (const auto& [key, t] : a) {
        auto it = b.find(key);
        if (it == b.end()) {
          return Status::InvalidArgument(
              where + "missing key '" + kind_b + "/" + key + "' (its pair '" +
              kinds[which] + "/" + key + "' is present)");
        }
        if (it->second.sizes() != t.sizes()) {
          return Status::InvalidArgument(
              where + "key '" + kind_b + "/" + key + "': shape got " +
              ShapeString(it->second.sizes()) + ", expected " +
              ShapeString(t.sizes()) + " (the shape of '" + kinds[which] + "/" +
              key + "')");
        }
      }
    }
  }
  *by_kind = std::move(split);
  return Status::Ok();
}

Status CheckStateMatchesGlobal(const std::string& strategy,
                               const std::string& kind, const TensorMap& state,
                               const TensorMap& global) {
  const std::string where =
      strategy +
      ": restored optimizer state does not match the global "
      "adapter: ";
  const std::string hint =
      " (hint: the checkpoint was written for another adapter configuration)";
  for (const auto& [key, g] : global) {
    auto it = state.find(key);
    if (it == state.end()) {
      return Status::FailedPrecondition(where + "missing key '" + kind + "/" +
                                        key + "'" + hint);
    }
    if (it->second.sizes() != g.sizes()) {
      return Status::FailedPrecondition(
          where + "key '" + kind + "/" + key + "': shape got " +
          ShapeString(it->second.sizes()) + ", expected " +
          ShapeString(g.sizes()) + hint);
    }
  }
  for (const auto& [key, t] : state) {
    if (!global.count(key)) {
      return Status::FailedPrecondition(where + "unexpected key '" + kind +
                                        "/" + key + "'" + hint);
    }
  }
  return Status::Ok();
}

std::string DtypeName(const at::Tensor& t) {
  return t.defined() ? std::string(c10::toString(t.scalar_type()))
                     : std::string("undefined");
}

}  // namespace aggregation
}  // namespace fedpeft
