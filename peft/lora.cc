#include "peft/lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace fedpeft {
namespace peft {

double LoraLinear::InitBound(int64_t in) {
  // torch.nn.init.kaiming_uniform_(A, a=sqrt(5)) with the default
  // leaky_relu nonlinearity: gain = sqrt(2 / (1 + a^2)),
  // bound = gain * sqrt(3 / fan_in).
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  return gain * std::sqrt(3.0 / static_cast<double>(in));
}

LoraLinear::LoraLinear(const LoraShape& shape, double alpha, double dropout,
                       bool use_rslora, uint64_t init_seed,
                       torch::Device device)
    : shape_(shape),
      alpha_(alpha),
      dropout_(dropout),
      scale_(use_rslora ? alpha / std::sqrt(static_cast<double>(shape.r))
                        : alpha / static_cast<double>(shape.r)) {
  at::Generator gen = at::detail::createCPUGenerator(init_seed);
  const double bound = InitBound(shape.in);
  torch::Tensor a = torch::empty({shape.r, shape.in}, torch::kFloat32);
  a.uniform_(-bound, bound, gen);
  lora_A_ = register_parameter("lora_A", a.to(device));
  lora_B_ = register_parameter(
      "lora_B",
      torch::zeros({shape.out, shape.r},
                   torch::TensorOptions(torch::kFloat32).device(device)));
}

torch::Tensor LoraLinear::Forward(const torch::Tensor& x) {
  torch::Tensor h = x.scalar_type() == lora_A_.scalar_type()
                        ? x
                        : x.to(lora_A_.scalar_type());
  if (dropout_ > 0.0 && is_training()) {
    h = torch::dropout(h, dropout_, /*train=*/true);
  }
  // Scale the rank-r intermediate: the cheapest place to multiply.
  torch::Tensor y =
      torch::matmul(torch::matmul(h, lora_A_.t()) * scale_, lora_B_.t());
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

torch::Tensor LoraLinear::DeltaWeight() {
  return torch::matmul(lora_B_, lora_A_) * scale_;
}

}  // namespace peft
}  // namespace fedpeft
