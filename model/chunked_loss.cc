#include "model/chunked_loss.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace fedpeft {
namespace model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Loss sum over the rows of `h` [n, dim] (every target valid) and, when
// `dh` is defined, dh = (softmax - onehot) W * grad_scale written into it.
// Sums in float64: thousands of per-token losses of ~10 each.
double ChunkedSum(const torch::Tensor& h, const torch::Tensor& weight,
                  const torch::Tensor& targets, int64_t chunk_rows,
                  double grad_scale, torch::Tensor dh) {
  const int64_t n = h.size(0);
  torch::Tensor sum = torch::zeros({}, h.options().dtype(torch::kFloat64));
  for (int64_t s = 0; s < n; s += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, n - s);
    const torch::Tensor t = targets.narrow(0, s, rows).unsqueeze(1);
    // Float32 logits as LlamaModel::Logits computes them (a no-op cast for
    // float32 bases, so `logits` is the matmul's own buffer).
    torch::Tensor logits =
        torch::mm(h.narrow(0, s, rows), weight.t()).to(torch::kFloat32);
    const torch::Tensor target_logit = logits.gather(1, t);
    // log-sum-exp the way log_softmax does (max, then exp of the shifted
    // logits), in place: one [rows, vocab] buffer per chunk.
    const torch::Tensor max = std::get<0>(logits.max(1, /*keepdim=*/true));
    torch::Tensor e = logits.sub_(max).exp_();
    const torch::Tensor total = e.sum(1, /*keepdim=*/true);
    const torch::Tensor lse = max + total.log();
    sum += (lse - target_logit).sum(torch::kFloat64);
    if (dh.defined()) {
      // softmax - onehot, scaled, then one matmul back to [rows, dim].
      torch::Tensor p = e.div_(total);
      p.scatter_add_(1, t, torch::full_like(target_logit, -1.0));
      p.mul_(grad_scale);
      torch::Tensor out = dh.narrow(0, s, rows);
      if (weight.scalar_type() == torch::kFloat32 &&
          out.scalar_type() == torch::kFloat32) {
        torch::mm_out(out, p, weight);
      } else {  // as the cast in Logits backpropagates: W's dtype
        out.copy_(torch::mm(p.to(weight.scalar_type()), weight));
      }
    }
  }
  return sum.item<double>();
}

// ChunkedSum for an output layer stored in another dtype than the hidden
// states (a frozen 16-bit base under float32 compute, model.base_dtype):
// converting the whole [vocab, dim] matrix would hold a float32 copy of it,
// so the vocabulary is walked in blocks instead, each converted, multiplied
// and dropped, with an online log-sum-exp (running max and rescaled sum).
// The gradient takes a second walk that recomputes each block's logits.
// One buffer for the converted block and one for its logits serve every
// block of both walks: no large allocation per block.
double BlockedVocabSum(const torch::Tensor& h, const torch::Tensor& weight,
                       const torch::Tensor& targets, int64_t block,
                       double grad_scale, torch::Tensor dh) {
  const int64_t n = h.size(0), vocab = weight.size(0), dim = weight.size(1);
  if (block == 0) {
    block = std::max<int64_t>(1, kVocabBlockElements / std::max(n, dim));
  }
  block = std::min(block, vocab);
  const auto f32 = h.options().dtype(torch::kFloat32);
  torch::Tensor w_buf = torch::empty({block * dim}, h.options());
  torch::Tensor logits_buf = torch::empty({n * block}, f32);
  const torch::Tensor t = targets.unsqueeze(1);
  torch::Tensor max =
      torch::full({n, 1}, -std::numeric_limits<float>::infinity(), f32);
  torch::Tensor sum = torch::zeros({n, 1}, f32);
  torch::Tensor target_logit = torch::zeros({n, 1}, f32);
  // Block [v0, v0 + rows) of the logits (a view of logits_buf), and where
  // each row's target is.
  auto logits_of = [&](int64_t v0, int64_t rows, torch::Tensor* w,
                       torch::Tensor* in_block, torch::Tensor* col) {
    *w = w_buf.narrow(0, 0, rows * dim).view({rows, dim});
    w->copy_(weight.narrow(0, v0, rows));
    *in_block = (t >= v0).logical_and_(t < v0 + rows);
    *col = (t - v0).clamp_(0, rows - 1);
    torch::Tensor logits = logits_buf.narrow(0, 0, n * rows).view({n, rows});
    if (h.scalar_type() == torch::kFloat32) {
      torch::mm_out(logits, h, w->t());
    } else {
      logits.copy_(torch::mm(h, w->t()));
    }
    return logits;
  };
  for (int64_t v0 = 0; v0 < vocab; v0 += block) {
    const int64_t rows = std::min(block, vocab - v0);
    torch::Tensor w, in_block, col;
    torch::Tensor logits = logits_of(v0, rows, &w, &in_block, &col);
    target_logit += torch::where(in_block, logits.gather(1, col),
                                 torch::zeros_like(target_logit));
    const torch::Tensor new_max =
        torch::maximum(max, std::get<0>(logits.max(1, /*keepdim=*/true)));
    sum = sum * (max - new_max).exp() +
          logits.sub_(new_max).exp_().sum(1, /*keepdim=*/true);
    max = new_max;
  }
  const torch::Tensor lse = max + sum.log();
  const double total = (lse - target_logit).sum(torch::kFloat64).item<double>();
  if (dh.defined()) {
    dh.zero_();
    for (int64_t v0 = 0; v0 < vocab; v0 += block) {
      const int64_t rows = std::min(block, vocab - v0);
      torch::Tensor w, in_block, col;
      torch::Tensor p = logits_of(v0, rows, &w, &in_block, &col);
      p.sub_(lse).exp_();  // softmax of this block
      p.scatter_add_(1, col, -in_block.to(torch::kFloat32));
      p.mul_(grad_scale);
      dh.add_(torch::mm(p.to(h.scalar_type()), w));
    }
  }
  return total;
}

class LinearCrossEntropyFunction
    : public torch::autograd::Function<LinearCrossEntropyFunction> {
 public:
  // hidden [N, dim], targets [N] int64. Runs without grad mode.
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& hidden,
                               const torch::Tensor& weight,
                               const torch::Tensor& targets, int64_t chunk_rows,
                               int64_t ignore_index, bool need_grad) {
    const int64_t rows = hidden.size(0);
    // 0 = automatic. The blocked path takes the number as vocabulary rows.
    const int64_t vocab_block = chunk_rows;
    if (chunk_rows == 0) {
      chunk_rows = std::max<int64_t>(1, kLossChunkElements / weight.size(0));
    }
    const torch::Tensor valid = targets != ignore_index;
    const int64_t n = valid.sum().item<int64_t>();
    if (n > 0) {
      const torch::Tensor kept = targets.masked_select(valid);
      const int64_t lo = kept.min().item<int64_t>();
      const int64_t hi = kept.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < weight.size(0), "target ", lo < 0 ? lo : hi,
                  " out of range [0, ", weight.size(0), ") (ignore_index is ",
                  ignore_index, ")");
    }
    // Only the rows with a target go through the output layer.
    torch::Tensor h = hidden, t = targets, index;
    if (n < rows) {
      index = valid.nonzero().squeeze(1);
      h = hidden.index_select(0, index);
      t = targets.index_select(0, index);
    }
    torch::Tensor dh;
    if (need_grad) dh = torch::empty_like(h, torch::MemoryFormat::Contiguous);
    double sum = 0.0;
    if (n > 0 && weight.scalar_type() != h.scalar_type()) {
      sum = BlockedVocabSum(h.contiguous(), weight, t, vocab_block,
                            1.0 / static_cast<double>(n), dh);
    } else if (n > 0) {
      sum = ChunkedSum(h.contiguous(), weight, t, chunk_rows,
                       1.0 / static_cast<double>(n), dh);
    }
    if (need_grad) {
      if (n < rows) {
        dh = torch::zeros_like(hidden, torch::MemoryFormat::Contiguous)
                 .index_copy_(0, index, dh);
      }
      ctx->saved_data["dh"] = dh;
    }
    const double loss = n > 0 ? sum / static_cast<double>(n)
                              : std::numeric_limits<double>::quiet_NaN();
    return torch::tensor(loss, hidden.options().dtype(torch::kFloat32));
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    // One gradient per forward argument; only hidden gets one.
    variable_list grads(6);
    const c10::IValue& dh = ctx->saved_data.at("dh");
    grads[0] = dh.toTensor() * grad_outputs[0];
    return grads;
  }
};

}  // namespace

torch::Tensor LinearCrossEntropy(const torch::Tensor& hidden,
                                 const torch::Tensor& weight,
                                 const torch::Tensor& targets,
                                 int64_t chunk_rows, int64_t ignore_index) {
  TORCH_CHECK(hidden.dim() >= 1 && weight.dim() == 2 &&
                  hidden.size(-1) == weight.size(1),
              "LinearCrossEntropy: hidden ", hidden.sizes(), " and weight ",
              weight.sizes(),
              " do not chain (expected [..., dim] and "
              "[vocab, dim])");
  TORCH_CHECK(targets.sizes() == hidden.sizes().slice(0, hidden.dim() - 1),
              "LinearCrossEntropy: targets ", targets.sizes(),
              " do not match hidden ", hidden.sizes(),
              " without its last axis");
  TORCH_CHECK(!weight.requires_grad(),
              "LinearCrossEntropy: the output weight must be frozen "
              "(it receives no gradient)");
  TORCH_CHECK(chunk_rows >= 0,
              "LinearCrossEntropy: chunk_rows must be >= 0, "
              "got ",
              chunk_rows);
  const bool need_grad =
      torch::GradMode::is_enabled() && hidden.requires_grad();
  torch::Tensor loss = LinearCrossEntropyFunction::apply(
      hidden.reshape({-1, hidden.size(-1)}), weight,
      targets.reshape({-1}).to(hidden.device(), torch::kInt64), chunk_rows,
      ignore_index, need_grad);
  return loss;
}

}  // namespace model
}  // namespace fedpeft
