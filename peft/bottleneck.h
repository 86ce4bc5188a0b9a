// A bottleneck adapter (Houlsby et al. 2019) on the output h [..., dim] of
// an attention or MLP sublayer, before the residual add:
//   h + up(act(down(h))),  down: dim -> b (+bias), up: b -> dim (+bias).
// down is initialised like torch.nn.Linear (weight Kaiming-uniform with
// a = sqrt(5), bias uniform(+-1/sqrt(dim))); up is zero, so a fresh adapter
// is the identity.
//
// Parameters (float32): submodules "down" and "up", each with "weight"
// ([out, in]) and "bias", i.e. "down.weight", "down.bias", "up.weight",
// "up.bias" as Hugging Face names them.
//
// Thread-safety: one thread at a time.
#ifndef FEDPEFT_PEFT_BOTTLENECK_H_
#define FEDPEFT_PEFT_BOTTLENECK_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama.h"

namespace fedpeft {
namespace peft {

// The activations a bottleneck adapter accepts: relu, gelu, silu, tanh.
const std::vector<std::string>& BottleneckActivations();

// weight [out, in] and bias [out]; a torch::nn::Linear without the global
// RNG in its constructor.
class AffineImpl : public torch::nn::Module {
 public:
  AffineImpl(int64_t in, int64_t out, torch::Device device);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  torch::Tensor bias;
};
TORCH_MODULE(Affine);

class BottleneckAdapter : public model::SublayerAdapter {
 public:
  // REQUIRES: dim, bottleneck_dim >= 1; `activation` one of
  // BottleneckActivations(). Initialised from a CPU generator seeded with
  // `init_seed` (no global RNG state used), then moved to `device`.
  BottleneckAdapter(int64_t dim, int64_t bottleneck_dim,
                    const std::string& activation, uint64_t init_seed,
                    torch::Device device = torch::kCPU);

  // h: [..., dim] of any float dtype; returns the same shape and dtype.
  torch::Tensor Forward(const torch::Tensor& h) override;

  Affine& down() { return down_; }
  Affine& up() { return up_; }

 private:
  std::string activation_;
  Affine down_{nullptr};
  Affine up_{nullptr};
};

}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_PEFT_BOTTLENECK_H_
