#include "worker/round_update.h"

#include <algorithm>
#include <cmath>

#include "aggregation/hetero_rank.h"
#include "common/logging.h"
#include "peft/rank_assignment.h"
#include "security/dp.h"

namespace fedpeft {
namespace worker {

StatusOr<peft::PeftOptions> OptionsAtRank(const peft::PeftOptions& registered,
                                          int64_t task_rank, int64_t* rank) {
  peft::PeftOptions options = registered;
  int64_t r = task_rank;
  if (options.method == "lora") {
    if (r <= 0) r = options.lora.r;
    if (r != options.lora.r) options = peft::WithUniformRank(options, r);
  } else if (r > 0) {
    return Status::InvalidArgument("task rank " + std::to_string(r) +
                                   " for a " + options.method +
                                   " adapter (ranks are LoRA's)");
  }
  *rank = r;
  return options;
}

TrainOptions TaskTrainOptions(const TrainOptions& local,
                              const proto::Task& task,
                              const TensorMap& global) {
  const proto::TrainSpec& spec = task.train();
  TrainOptions t = local;
  t.epochs = std::max(1, spec.local_epochs());
  t.max_steps = spec.local_steps();
  t.batch_size = std::max(1, spec.batch_size());
  t.optim.lr = spec.lr();
  t.fedprox_mu = spec.fedprox_mu();
  t.seed = spec.seed();
  t.progress_bar = false;
  t.log_every = 0;
  t.frozen.insert(task.frozen().begin(), task.frozen().end());
  if (spec.train_b_only()) {
    for (const auto& kv : global) {
      if (kv.first.find(".lora_A.") != std::string::npos) {
        t.frozen.insert(kv.first);
      }
    }
  }
  return t;
}

bool UsesErrorFeedback(const proto::Task& task) {
  const uint32_t bits = task.train().upload_bits();
  return task.train().error_feedback() && bits > 0 && bits < 32;
}

StatusOr<RoundUpdate> BuildRoundUpdate(
    const TensorMap& local, const TensorMap& global,
    const std::set<std::string>& trained, int64_t rank, const proto::Task& task,
    const std::string& who, UpdateMemory* memory, std::mt19937_64* rng) {
  const proto::TrainSpec& spec = task.train();
  RoundUpdate out;
  // Rank 0 on the wire: the global adapter's shapes (homogeneous ranks).
  out.upload_rank = task.rank() > 0 ? rank : 0;
  if (spec.prune_threshold() > 0 && out.upload_rank > 0) {
    const int64_t pruned = peft::PrunedRank(local, spec.prune_threshold());
    if (pruned < out.upload_rank) {
      FP_LOG_INFO("worker",
                  "'{}' round {}: self-pruned rank {} -> {} (components "
                  "below {:.3g} of the largest)",
                  who, task.round(), out.upload_rank, pruned,
                  spec.prune_threshold());
      out.upload_rank = pruned;
    }
  }
  TensorMap delta;
  for (const std::string& key : trained) {
    delta[key] = (local.at(key) - global.at(key)).contiguous();
  }
  if (out.upload_rank > 0 && out.upload_rank < rank) {
    delta = aggregation::TruncateRank(delta, out.upload_rank);
  }
  out.tensors_trained = delta.size();
  // Error feedback, clipping, quantization, in that order: the carried
  // quantization error joins this round's update before it is clipped (so
  // the clip bound holds for what is sent), and the error of this round's
  // encoding is carried to the next.
  const transport::CodecOptions codec{
      spec.upload_bits() > 0 ? static_cast<int>(spec.upload_bits()) : 32,
      spec.block_size() > 0 ? static_cast<int64_t>(spec.block_size()) : 256};
  out.bits = codec.bits;
  const bool feedback = UsesErrorFeedback(task);
  if (feedback && memory->rank == out.upload_rank) {
    for (auto& [key, t] : delta) {
      auto it = memory->residual.find(key);
      if (it != memory->residual.end() &&
          it->second.sizes().equals(t.sizes())) {
        t = t + it->second.to(torch::kFloat32);
      }
    }
  }
  out.clip = spec.clip_norm();
  if (out.clip > 0) {
    out.norm = privacy::ClipToNorm(&delta, out.clip);
    out.unclipped = out.norm <= out.clip;
  }
  ASSIGN_OR_RETURN(out.encoded, EncodeUpdate(delta, codec, out.clip, rng));
  memory->residual.clear();
  memory->rank = -1;
  if (feedback) {
    for (const auto& [key, t] : delta) {
      memory->residual[key] = t - out.encoded.decoded.at(key);
    }
    memory->rank = out.upload_rank;
  }
  return out;
}

proto::UpdateHeader RoundUpdateHeader(const proto::Task& task,
                                      const RoundUpdate& update,
                                      const TrainResult& trained,
                                      const EvalResult& evaluated,
                                      uint64_t num_samples, double seconds,
                                      bool masked) {
  proto::UpdateHeader header;
  header.set_round(task.round());
  if (task.train().withhold_metrics()) {
    // Under DP nothing about this user's data travels beside the clipped
    // (and noised, or masked) update; the losses stay in this log.
    header.set_metrics_withheld(true);
    header.set_num_samples(1);
    header.set_train_loss(0);
    header.set_eval_loss(std::nan(""));
  } else {
    header.set_num_samples(num_samples);
    header.set_train_loss(trained.mean_loss);
    header.set_eval_loss(evaluated.tokens > 0 ? evaluated.loss : std::nan(""));
    header.set_eval_tokens(static_cast<uint64_t>(evaluated.tokens));
    header.set_train_seconds(seconds);
    header.set_tokens_per_second(seconds > 0 ? trained.tokens / seconds : 0);
  }
  header.set_num_tensors(static_cast<uint32_t>(update.encoded.wire.size()));
  if (!masked) header.set_rank(static_cast<uint32_t>(update.upload_rank));
  header.set_kind(proto::UpdateHeader::DELTA);
  if (!masked) header.set_unclipped(update.unclipped ? 1.0 : 0.0);
  return header;
}

}  // namespace worker
}  // namespace fedpeft
