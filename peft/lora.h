// A LoRA adapter on one frozen projection W [out, in] (Hu et al. 2021), as
// Hugging Face PEFT's lora.Linear defines it:
//   delta(x) = scale * (dropout(x) A^T) B^T,  scale = alpha / r
//   (alpha / sqrt(r) with rslora),
// A [r, in] Kaiming-uniform with a = sqrt(5) (bound 1/sqrt(in)), B [out, r]
// zero. Forward computes two skinny matmuls and never forms the dense B A;
// DeltaWeight() does, for merging.
//
// Parameters are registered as "lora_A" and "lora_B" (float32, on the device
// given at construction). Dropout is active only in training mode
// (torch::nn::Module::train()).
//
// Thread-safety: one thread at a time.
#ifndef FEDPEFT_PEFT_LORA_H_
#define FEDPEFT_PEFT_LORA_H_

#include <torch/torch.h>

#include <cstdint>

#include "model/llama.h"

namespace fedpeft {
namespace peft {

struct LoraShape {
  int64_t in = 0;   // input features of the adapted projection
  int64_t out = 0;  // output features
  int64_t r = 8;    // rank
};

class LoraLinear : public model::LinearDelta {
 public:
  // REQUIRES: shape.in, shape.out, shape.r >= 1; alpha > 0;
  // 0 <= dropout < 1. A is drawn from a CPU generator seeded with
  // `init_seed` (no global RNG state is read or advanced), then moved to
  // `device`.
  LoraLinear(const LoraShape& shape, double alpha, double dropout,
             bool use_rslora, uint64_t init_seed,
             torch::Device device = torch::kCPU);

  // x: [..., in] of any float dtype; returns [..., out] of x's dtype.
  torch::Tensor Forward(const torch::Tensor& x) override;
  // scale * B A, [out, in] float32.
  torch::Tensor DeltaWeight() override;

  // Live parameters (aliases).
  torch::Tensor& lora_A() { return lora_A_; }  // [r, in]
  torch::Tensor& lora_B() { return lora_B_; }  // [out, r]

  const LoraShape& shape() const { return shape_; }
  double alpha() const { return alpha_; }
  double scale() const { return scale_; }

  // PEFT's init bound of A: kaiming_uniform_(a = sqrt(5)) on fan_in = in,
  // i.e. sqrt(6 / ((1 + a^2) * fan_in)) = 1 / sqrt(in).
  static double InitBound(int64_t in);

 private:
  LoraShape shape_;
  double alpha_;
  double dropout_;
  double scale_;
  torch::Tensor lora_A_;
  torch::Tensor lora_B_;
};

}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_PEFT_LORA_H_
