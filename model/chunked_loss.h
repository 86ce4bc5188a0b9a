// The output layer and the cross entropy in one, over chunks of tokens, so
// that no [tokens, vocab] logits tensor exists: with a 128k-152k vocabulary
// the logits of one 4 x 512 batch alone are over a gigabyte in float32, more
// than the rest of a LoRA step on a small model.
//
// Forward, per chunk of rows: logits = h W^T (float32, as
// LlamaModel::Logits computes them), their log-sum-exp and the target's
// logit; the chunk's logits are then dropped. The output projection W is
// frozen, so the only gradient is the one of h, and it needs nothing but
// the chunk's logits: when h requires grad the forward also turns them into
// softmax - onehot in place and keeps dh = (softmax - onehot) W / n_targets,
// a [tokens, dim] tensor as small as h. The backward only scales it by the
// incoming gradient. Recomputing the logits in the backward instead keeps
// the same memory bound for one more [tokens, vocab, dim] matmul. Loss +
// backward on 1024 tokens, dim 512, vocab 32000, 1 thread, against
// cross_entropy over the full logits: 1.38x the time that way, 0.94x this
// way (0.93x at vocab 512; bench/README.md). The price here is a
// gradient computed for a loss nobody differentiates, which happens only
// when h requires grad under grad mode and the caller then skips backward.
//
// An output layer in another dtype than `hidden` (a 16-bit frozen base
// under float32 compute) is read in blocks of vocabulary rows instead,
// converted one block at a time into one reused buffer, with an online
// log-sum-exp; its gradient recomputes each block's logits once more. There
// `chunk_rows` counts vocabulary rows per block (0: as many as keep a block
// of logits and of the converted matrix within kVocabBlockElements).
//
// Rows whose target is `ignore_index` cost nothing: they are dropped before
// the matmul and get a zero gradient.
//
// Thread-safety: a free function; LibTorch's rules for the tensors.
#ifndef FEDPEFT_MODEL_CHUNKED_LOSS_H_
#define FEDPEFT_MODEL_CHUNKED_LOSS_H_

#include <torch/torch.h>

#include <cstdint>

namespace fedpeft {
namespace model {

// Rows per chunk when the caller passes 0: as many as keep one chunk's
// float32 logits within kLossChunkElements (32000-word vocabulary: 512
// rows, 64 MiB; 152k: 110 rows), at least 1.
inline constexpr int64_t kLossChunkElements = int64_t{1} << 24;
// Elements of the converted output layer, and of its logits, per block of
// the vocabulary walk (4 Mi: 16 MiB each in float32; Qwen2.5's 151,936 x
// 896 output layer in 33 blocks for 512 tokens). A quarter of
// kLossChunkElements: on a Qwen2.5-0.5B bfloat16 base (1 x 512) this cut
// the step's peak RSS by about 50 MiB; step times of alternated runs on a
// busy machine showed no difference beyond their noise (~5%).
inline constexpr int64_t kVocabBlockElements = int64_t{1} << 22;

// Mean cross entropy of softmax(hidden W^T) against `targets` over the
// targets that are not ignore_index, as
// torch::nn::functional::cross_entropy(Logits(hidden), targets) with
// ignore_index and mean reduction gives it (float32 scalar). With no target
// left that is 0/0 = NaN, as in torch, and the gradient is zero.
//
// hidden: [..., dim] float (requires grad or not); weight: [vocab, dim],
// not requiring grad (W receives no gradient); targets: hidden's leading
// shape, integer, each in [0, vocab) or ignore_index. chunk_rows: rows of
// logits at a time, 0 = from kLossChunkElements. Throws c10::Error on
// shapes or targets out of range.
torch::Tensor LinearCrossEntropy(const torch::Tensor& hidden,
                                 const torch::Tensor& weight,
                                 const torch::Tensor& targets,
                                 int64_t chunk_rows = 0,
                                 int64_t ignore_index = -100);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_CHUNKED_LOSS_H_
