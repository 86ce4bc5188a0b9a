#include "peft/bottleneck.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "peft/lora.h"

namespace fedpeft {
namespace peft {

const std::vector<std::string>& BottleneckActivations() {
  static const std::vector<std::string> kNames{"relu", "gelu", "silu", "tanh"};
  return kNames;
}

AffineImpl::AffineImpl(int64_t in, int64_t out, torch::Device device) {
  auto options = torch::TensorOptions(torch::kFloat32).device(device);
  weight = register_parameter("weight", torch::zeros({out, in}, options));
  bias = register_parameter("bias", torch::zeros({out}, options));
}

torch::Tensor AffineImpl::forward(const torch::Tensor& x) {
  return torch::nn::functional::linear(x, weight, bias);
}

BottleneckAdapter::BottleneckAdapter(int64_t dim, int64_t bottleneck_dim,
                                     const std::string& activation,
                                     uint64_t init_seed, torch::Device device)
    : activation_(activation) {
  TORCH_CHECK(dim >= 1 && bottleneck_dim >= 1,
              "bottleneck adapter: dim and bottleneck_dim must be >= 1");
  bool known = false;
  for (const std::string& name : BottleneckActivations()) {
    known = known || name == activation;
  }
  TORCH_CHECK(known, "bottleneck adapter: unknown activation '", activation,
              "'");
  down_ = register_module("down", Affine(dim, bottleneck_dim, device));
  up_ = register_module("up", Affine(bottleneck_dim, dim, device));
  // torch.nn.Linear's reset_parameters: weight kaiming_uniform_(a=sqrt(5)),
  // bias uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); both bounds 1/sqrt(dim).
  at::Generator gen = at::detail::createCPUGenerator(init_seed);
  const double bound = LoraLinear::InitBound(dim);
  torch::Tensor w = torch::empty({bottleneck_dim, dim}, torch::kFloat32);
  w.uniform_(-bound, bound, gen);
  torch::Tensor b = torch::empty({bottleneck_dim}, torch::kFloat32);
  b.uniform_(-1.0 / std::sqrt(static_cast<double>(dim)),
             1.0 / std::sqrt(static_cast<double>(dim)), gen);
  torch::NoGradGuard no_grad;
  down_->weight.copy_(w);
  down_->bias.copy_(b);
}

torch::Tensor BottleneckAdapter::Forward(const torch::Tensor& h) {
  torch::Tensor x =
      h.scalar_type() == torch::kFloat32 ? h : h.to(torch::kFloat32);
  torch::Tensor z = down_->forward(x);
  if (activation_ == "relu") {
    z = torch::relu(z);
  } else if (activation_ == "gelu") {
    z = torch::gelu(z);
  } else if (activation_ == "silu") {
    z = torch::silu(z);
  } else {  // "tanh", checked in the constructor
    z = torch::tanh(z);
  }
  torch::Tensor delta = up_->forward(z);
  return h + (delta.scalar_type() == h.scalar_type()
                  ? delta
                  : delta.to(h.scalar_type()));
}

}  // namespace peft
}  // namespace fedpeft
