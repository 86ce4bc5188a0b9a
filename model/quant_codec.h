// The per-element halves of the int8 and NF4 formats of frozen_weight.h:
// values to codes at load, codes back to float32 in every FrozenLinear
// block of every forward and backward.
//
// Two implementations that give the same bits. On the CPU, plain loops
// (at::parallel_for over rows or 64-value blocks) read the input once and
// write the output once. Elsewhere (model.device: cuda), LibTorch tensor
// ops, which build full-size intermediates: NF4 decoding that way makes
// int64 indices, stacked nibbles and the gathered levels, about 15 bytes a
// value against the loop's 4: on a Qwen2.5-0.5B nf4 step (1 x 512,
// gradient checkpointing) they were 123 MiB of the peak RSS (docs/
// design.md, "Frozen bases in low precision").
//
// Thread-safety: free functions over immutable inputs.
#ifndef FEDPEFT_MODEL_QUANT_CODEC_H_
#define FEDPEFT_MODEL_QUANT_CODEC_H_

#include <torch/torch.h>

#include <utility>

namespace fedpeft {
namespace model {
namespace quant {

// NF4 of `values` (1-D float32, any length): blocks of kNf4BlockSize (the
// last zero-padded), each scaled by its absmax to [-1, 1] and rounded to
// the nearest of Nf4Levels() (ties to the lower level). Returns the packed
// codes (uint8 [blocks * 32], element 2i in the low nibble) and each
// block's absmax (float32 [blocks]).
std::pair<torch::Tensor, torch::Tensor> Nf4Encode(const torch::Tensor& values);

// float32 [blocks * 64]: packed codes (uint8 [blocks * 32]) times their
// block's absmax (float32 [blocks]).
torch::Tensor Nf4Decode(const torch::Tensor& packed,
                        const torch::Tensor& absmax);

// Symmetric int8 codes of each row of `rows` (float32 [n, k]) and the
// row's scale absmax / 127 (1 for an all-zero row): q = round-half-even(
// x / scale) clamped to [-127, 127]. The int8 format, and NF4's double
// quantization of its block absmax values.
std::pair<torch::Tensor, torch::Tensor> Int8EncodeRows(
    const torch::Tensor& rows);

// float32 [n, k]: q (int8 [n, k]) times its row's scale (float32 [n]).
torch::Tensor Int8DecodeRows(const torch::Tensor& q,
                             const torch::Tensor& scale);

// `flat` (1-D) zero-padded to a multiple of `multiple` (itself if it is
// one): NF4's last block, its double quantization's last group.
torch::Tensor ZeroPadTo(const torch::Tensor& flat, int64_t multiple);

// The tensor-op implementations, used off the CPU and by tests that hold
// the CPU loops to them.
namespace ops {
std::pair<torch::Tensor, torch::Tensor> Nf4Encode(const torch::Tensor& values);
torch::Tensor Nf4Decode(const torch::Tensor& packed,
                        const torch::Tensor& absmax);
std::pair<torch::Tensor, torch::Tensor> Int8EncodeRows(
    const torch::Tensor& rows);
torch::Tensor Int8DecodeRows(const torch::Tensor& q,
                             const torch::Tensor& scale);
}  // namespace ops

}  // namespace quant
}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_QUANT_CODEC_H_
