// Aggregation strategies: how the server turns the round's client updates
// into the next global adapter. The round loop lives outside (coordinator/),
// so strategies are tested without a network.
//
// Update convention: a client update is a *delta*, the client's adapter
// after local training minus the global adapter it downloaded, keyed by PEFT
// names. Every tensor is aggregated on its own: LoRA's A and B are averaged
// separately (as FedAvg over parameters does; note this is not the average
// of the products B·A — heterogeneous-rank methods that average products
// live with the hierarchy milestone).
//
//   fedavg       global += Σ n_k Δ_k / Σ n_k                (McMahan 2017)
//   fedavgm      v = β v + Δ̄;  global += server_lr · v      (Hsu 2019)
//   fedadam      Adam on the pseudo-gradient -Δ̄             (Reddi 2021)
//   fedyogi      Yogi on the pseudo-gradient -Δ̄             (Reddi 2021)
//   median       global += coordinate-wise median of Δ_k     (Yin 2018)
//   trimmed_mean global += coordinate-wise mean after dropping the
//                trim_ratio largest and smallest values       (Yin 2018)
//   FedProx (Li 2020) is a worker-side term (train.fedprox_mu) with fedavg.
//
// Thread-safety: a Strategy is used by the one thread that owns round
// state.
#ifndef FEDPEFT_AGGREGATION_STRATEGY_H_
#define FEDPEFT_AGGREGATION_STRATEGY_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "model/llama.h"  // TensorMap

namespace fedpeft {
namespace aggregation {

struct ClientUpdate {
  std::string worker_id;
  TensorMap delta;          // PEFT key -> float32 delta, same keys as global
  int64_t num_samples = 0;  // FedAvg weight (> 0)
  double train_loss = 0.0;
};

struct RoundContext {
  int64_t round = 0;  // 1-based
};

struct StrategyOptions {
  std::string name = "fedavg";  // fedavg | fedavgm | fedadam | fedyogi |
                                // median | trimmed_mean
  double server_lr = 1.0;       // fedavgm, fedadam, fedyogi step size
  double momentum = 0.9;        // fedavgm β
  double beta1 = 0.9;           // fedadam / fedyogi
  double beta2 = 0.99;
  double tau = 1e-3;        // adaptivity (ε in Reddi et al.)
  double trim_ratio = 0.1;  // trimmed_mean: share cut at each end
  bool weighted = true;     // fedavg/fedavgm/fedadam/fedyogi: weight
                            // by num_samples (else uniform)

  void Read(ConfigReader& in);  // keys of a "strategy" section
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;

  // Returns the new global adapter. REQUIRES: ValidateUpdates passed.
  virtual StatusOr<TensorMap> Aggregate(
      const RoundContext& ctx, const TensorMap& global,
      const std::vector<ClientUpdate>& updates) = 0;

  // Optimizer state (momentum, moments) for checkpoints, keyed by
  // "<kind>/<PEFT key>"; empty for stateless strategies.
  virtual TensorMap State() const { return {}; }
  virtual Status LoadState(const TensorMap& state) { return Status::Ok(); }
};

// Builds the strategy `options.name` names; lists the valid names otherwise.
StatusOr<std::unique_ptr<Strategy>> MakeStrategy(
    const StrategyOptions& options);
const std::vector<std::string>& StrategyNames();

struct UpdateLimits {
  uint64_t max_tensor_elements = 1ull << 28;
};

// The checks every update passes before any math: the same keys as
// `global` (none missing, none extra), same shapes, float32, every value
// finite, num_samples > 0. Returns the first problem, naming the worker, the
// key, got and expected.
Status ValidateUpdate(const TensorMap& global, const ClientUpdate& update,
                      const UpdateLimits& limits = {});

}  // namespace aggregation
}  // namespace fedpeft

#endif  // FEDPEFT_AGGREGATION_STRATEGY_H_
