// Gradient checkpointing (activation recomputation) for LibTorch C++, which
// has no torch.utils.checkpoint: a block's forward runs without autograd and
// keeps only its input; backward runs the block again on that input, this
// time recording a graph, and backpropagates through it. Memory for the
// block's intermediate activations is traded for one more forward.
//
// LlamaModel uses it per decoder layer (set_gradient_checkpointing); the
// function is generic over the block.
//
// Random numbers: the block may draw them (LoRA dropout). The state of the
// default generator of the input's device is saved before the forward and
// restored around the recompute, so the recompute draws the same masks,
// and the generator is left where the backward found it (PyTorch's
// preserve_rng_state). Draws from any other generator are not replayed.
//
// Ownership: the returned tensor's autograd node owns a copy of `block` and
// a reference to `x`; whatever `block` captures by reference must outlive
// the backward (or the graph, when no backward runs).
// Thread-safety: as the block; the generator is locked while its state is
// read or swapped.
#ifndef FEDPEFT_MODEL_CHECKPOINT_H_
#define FEDPEFT_MODEL_CHECKPOINT_H_

#include <torch/torch.h>

#include <functional>

namespace fedpeft {
namespace model {

using Block = std::function<torch::Tensor(const torch::Tensor&)>;

// Returns block(x), whose gradient flows to `x` (when it requires grad) and
// to `params` (those that require grad): every tensor the block reads that
// is to receive a gradient must be in `params`, since a graph recorded in
// backward reaches them only through this list. Their gradients are
// returned through the outer backward (so .grad accumulation,
// torch::autograd::grad and retain_graph behave as without checkpointing),
// not written into .grad from inside it as PyTorch's reentrant checkpoint
// does.
//
// Without grad mode, or when neither x nor any of `params` requires grad,
// this is just block(x).
// REQUIRES: `block` is deterministic given x and the generator state, and
// returns one tensor that does not alias x.
torch::Tensor Checkpoint(const Block& block, const torch::Tensor& x,
                         const std::vector<torch::Tensor>& params);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_CHECKPOINT_H_
