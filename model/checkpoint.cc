#include "model/checkpoint.h"

#include <ATen/Context.h>

#include <mutex>
#include <utility>
#include <vector>

namespace fedpeft {
namespace model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What the backward needs besides the saved tensors. An autograd context
// stores only IValues; a capsule carries this object without registering a
// TorchScript class.
struct Recompute : torch::CustomClassHolder {
  Block block;
  torch::Device device = torch::kCPU;  // whose default generator to replay
  torch::Tensor rng_state;             // before the forward
};

torch::Tensor GeneratorState(const torch::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void SetGeneratorState(const torch::Device& device,
                       const torch::Tensor& state) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Puts the forward's generator state in place for the recompute and gives
// the backward's back on scope exit, exceptions included: code after the
// backward (the next step's dropout) draws what it would without
// checkpointing.
class ReplayRng {
 public:
  ReplayRng(const torch::Device& device, const torch::Tensor& state)
      : device_(device), saved_(GeneratorState(device)) {
    SetGeneratorState(device_, state);
  }
  ~ReplayRng() { SetGeneratorState(device_, saved_); }
  ReplayRng(const ReplayRng&) = delete;
  ReplayRng& operator=(const ReplayRng&) = delete;

 private:
  torch::Device device_;
  torch::Tensor saved_;
};

class CheckpointFunction
    : public torch::autograd::Function<CheckpointFunction> {
 public:
  // Inputs: x (edge 0), params (edges 1..n), the capsule (no edge). Runs
  // without grad mode (Function::apply turns it off).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               torch::TensorList params,
                               const c10::intrusive_ptr<Recompute>& recompute) {
    std::vector<torch::Tensor> saved{x};
    saved.insert(saved.end(), params.begin(), params.end());
    // Saved (not merely referenced) so that an in-place update of x or of
    // a parameter before the backward fails the version check instead of
    // silently recomputing with other values.
    ctx->save_for_backward(saved);
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(recompute);
    return recompute->block(x);
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const size_t n_params = saved.size() - 1;
    auto capsule = ctx->saved_data.at("recompute").toCapsule();
    const auto& recompute = *static_cast<Recompute*>(capsule.get());
    // The outer backward's create_graph is the grad mode it runs under.
    const bool create_graph = torch::GradMode::is_enabled();

    // A fresh leaf for x, so the recorded graph stops there; the
    // parameters are the live leaves themselves.
    torch::Tensor x = saved[0].detach();
    std::vector<torch::Tensor> inputs;
    std::vector<size_t> slots;  // index into the returned gradients
    if (ctx->needs_input_grad(0)) {
      x.requires_grad_(true);
      inputs.push_back(x);
      slots.push_back(0);
    }
    for (size_t i = 0; i < n_params; ++i) {
      if (ctx->needs_input_grad(1 + i)) {
        inputs.push_back(saved[1 + i]);
        slots.push_back(1 + i);
      }
    }
    // One gradient per forward argument: x, each parameter, the capsule.
    variable_list grads(n_params + 2);
    if (inputs.empty()) return grads;

    torch::Tensor out;
    {
      ReplayRng replay(recompute.device, recompute.rng_state);
      torch::AutoGradMode grad_mode(true);
      out = recompute.block(x);
    }
    if (!out.requires_grad()) return grads;  // nothing reached the inputs
    variable_list got = torch::autograd::grad(
        {out}, inputs, {grad_outputs[0]}, /*retain_graph=*/create_graph,
        create_graph, /*allow_unused=*/true);
    for (size_t k = 0; k < got.size(); ++k) grads[slots[k]] = got[k];
    return grads;
  }
};

}  // namespace

torch::Tensor Checkpoint(const Block& block, const torch::Tensor& x,
                         const std::vector<torch::Tensor>& params) {
  if (!torch::GradMode::is_enabled()) return block(x);
  std::vector<torch::Tensor> trainable;
  for (const torch::Tensor& p : params) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  // The parameters are inputs of the node for the sake of the layer whose
  // input needs no gradient (the first trainable one after the embedding or
  // the frozen layers): without them the node would not be in the graph,
  // its backward would never run and the adapters would get no gradient.
  if (!x.requires_grad() && trainable.empty()) return block(x);
  auto recompute = c10::make_intrusive<Recompute>();
  recompute->block = block;
  recompute->device = x.device();
  recompute->rng_state = GeneratorState(x.device());
  return CheckpointFunction::apply(x, torch::TensorList(trainable), recompute);
}

}  // namespace model
}  // namespace fedpeft
