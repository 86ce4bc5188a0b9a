// Local training of a PeftModel: the loop `fedpeft train` runs on one
// machine and a federated worker runs every round.
//
// AdamW over the adapter parameters only, gradient clipping by global L2
// norm, constant or cosine learning rate with linear warmup, gradient
// accumulation, optional FedProx proximal term (mu/2 * ||w - w_global||^2).
// The loss is next-token cross entropy averaged over target tokens
// (targets of -100 are ignored), computed with the output layer in chunks of
// tokens (model/chunked_loss.h) so that no [tokens, vocab] logits tensor is
// held. Gradient checkpointing (model/checkpoint.h) trades one more forward
// for the layers' activations.
//
// Ownership: the trainer references the PeftModel (which must outlive it)
// and owns the optimizer state.
// Thread-safety: one thread at a time.
#ifndef FEDPEFT_WORKER_LOCAL_TRAINER_H_
#define FEDPEFT_WORKER_LOCAL_TRAINER_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "data/dataset.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace worker {

struct OptimOptions {
  double lr = 2e-3;           // peak learning rate
  double weight_decay = 0.0;  // AdamW decoupled weight decay
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double max_grad_norm = 1.0;       // clip the global grad norm; 0 = off
  std::string schedule = "cosine";  // cosine | constant
  int warmup_steps = 0;             // linear warmup from 0 to lr
  double min_lr_ratio = 0.1;        // cosine floor as a share of lr

  void Read(ConfigReader& in);  // keys of a "train.optim"-like section
};

// This process's part of one optimizer step of a worker that spans several
// processes (worker/distributed.h), handed to TrainOptions::reduce_step.
struct StepShare {
  // The trained tensors' gradients, aliases of their .grad() (written in
  // place): this process's token-weighted mean.
  std::vector<torch::Tensor> grads;
  int64_t tokens = 0;  // this process's target tokens in the step
  double loss = 0.0;   // its token-weighted mean loss
};

struct TrainOptions {
  int epochs = 1;         // passes over the data (when max_steps == 0)
  int64_t max_steps = 0;  // optimizer steps; 0 = run `epochs`
  int batch_size = 8;     // examples per micro-batch
  int grad_accum = 1;     // micro-batches per optimizer step
  int eval_batch_size = 16;
  double fedprox_mu = 0.0;   // FedProx proximal weight; 0 = off
  int log_every = 10;        // steps between log lines (0 = never)
  bool progress_bar = true;  // redraw a bar on stderr when it is a terminal
  uint64_t seed = 1234;      // data order and dropout
  // Layer freezing for weak devices: only the top `trainable_layers`
  // layers train (0 = all). The layers below run their forward without
  // autograd, so they keep no activations and run no backward.
  int trainable_layers = 0;
  // Recompute each trainable layer's forward in backward instead of keeping
  // its activations (LlamaModel::set_gradient_checkpointing): less memory
  // for about one more forward pass per step; same loss and gradients.
  bool gradient_checkpointing = false;
  // Loss through the fused, chunked output layer (model/chunked_loss.h);
  // false materialises the [tokens, vocab] logits and calls cross_entropy,
  // as before it existed (kept to measure against).
  bool chunked_loss = true;
  // Adapter tensors (PEFT keys) left untouched this run: adaptive freezing,
  // FFA-LoRA's fixed A. Set per round by the federated worker, not in YAML.
  std::set<std::string> frozen;
  OptimOptions optim;
  // Data parallelism over processes (worker/distributed.h); set by the
  // worker, not in YAML. This process trains on rows [n*shard_rank /
  // shard_count, n*(shard_rank+1) / shard_count) of every micro-batch of n
  // examples: together the processes take the batches one process would.
  int shard_rank = 0;
  int shard_count = 1;
  // Called in every step on every process after backward, before clipping:
  // replaces share.grads and share.loss by the token-weighted means over all
  // processes and share.tokens by their sum, so that clipping and AdamW see
  // the global step and every process stays identical. Empty: one process.
  // It may throw (a lost peer); Step() and Train() let that through.
  std::function<void(StepShare&)> reduce_step;

  void Read(ConfigReader& in);  // keys of a "train" section
};

struct TrainResult {
  int64_t steps = 0;
  int64_t tokens = 0;      // target tokens trained on
  double mean_loss = 0.0;  // mean over steps
  double last_loss = 0.0;
  double seconds = 0.0;
};

struct EvalResult {
  double loss = 0.0;  // mean cross entropy per target token
  double perplexity = 0.0;
  int64_t tokens = 0;
};

// Mean next-token cross entropy of `batch` (targets -100 ignored), float32
// scalar; NaN when every target is ignored (callers skip such batches).
// `chunked`: through model::LinearCrossEntropy over Hidden() (no
// [tokens, vocab] logits tensor), else cross_entropy of Forward(); equal
// values and gradients.
torch::Tensor LanguageModelLoss(model::LlamaModel& model,
                                const data::Batch& batch, bool chunked = true);

// Target tokens per second of one timed training step of a throwaway
// adapter over `base` on the first of `examples`: the throughput a
// participant reports so the server can size its work. 0 when there is
// nothing to time.
double MeasureTokensPerSecond(std::shared_ptr<const model::LlamaWeights> base,
                              const std::vector<data::Example>& examples,
                              torch::Device device);

// Loss of `examples` under no_grad, weighted by target tokens; batches
// without targets are skipped.
EvalResult Evaluate(model::LlamaModel& model,
                    const std::vector<data::Example>& examples, int batch_size,
                    const torch::Device& device);

// The layer index of a PEFT key ("...model.layers.3.self_attn..." -> 3);
// -1 when the key names no layer.
int64_t LayerOfKey(const std::string& key);

class LocalTrainer {
 public:
  // REQUIRES: `peft` outlives the trainer.
  LocalTrainer(peft::PeftModel& peft, const TrainOptions& options,
               torch::Device device);

  // One optimizer step over `micro_batches` (gradient accumulation),
  // returns the token-weighted mean loss. `total_steps` sets the schedule.
  double Step(const std::vector<data::Batch>& micro_batches,
              int64_t total_steps);

  // Runs the whole schedule over `train`: shuffled each epoch by seed.
  // `on_epoch(epoch, mean_loss)` is called after each epoch when set.
  TrainResult Train(const std::vector<data::Example>& train,
                    const std::function<void(int, double)>& on_epoch = {});

  // Sets the FedProx anchor (the global adapter at round start); clones.
  void SetProximalAnchor(const TensorMap& global);

  int64_t step() const { return step_; }
  // PEFT keys this trainer updates (the adapter minus `frozen` and the
  // layers below the trainable ones).
  const std::set<std::string>& trained_keys() const { return trained_keys_; }
  double LearningRate(int64_t step, int64_t total_steps) const;

 private:
  peft::PeftModel& peft_;
  TrainOptions options_;
  torch::Device device_;
  std::vector<torch::Tensor> params_;
  std::set<std::string> trained_keys_;
  std::vector<torch::Tensor> anchor_;  // FedProx, aligned with params_
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t step_ = 0;
  int64_t step_tokens_ = 0;  // target tokens of the last step, all processes
};

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_LOCAL_TRAINER_H_
