#include "worker/local_trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "common/logging.h"
#include "model/chunked_loss.h"

namespace fedpeft {
namespace worker {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Deterministic Fisher-Yates (std::shuffle's result is library-defined).
std::vector<size_t> ShuffledOrder(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (size_t i = n; i > 1; --i) {
    size_t j = static_cast<size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

class ProgressBar {
 public:
  ProgressBar(bool enabled, int64_t total)
      : enabled_(enabled && ::isatty(STDERR_FILENO)), total_(total) {}
  ~ProgressBar() {
    if (drawn_) std::fputc('\n', stderr);
  }
  void Update(int64_t step, double loss, double lr, double tokens_per_s) {
    if (!enabled_) return;
    constexpr int kWidth = 30;
    int filled = total_ > 0 ? static_cast<int>(kWidth * step / total_) : 0;
    std::string bar(filled, '#');
    bar.resize(kWidth, ' ');
    std::fprintf(stderr,
                 "\r[%s] step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s ",
                 bar.c_str(), static_cast<long long>(step),
                 static_cast<long long>(total_), loss, lr, tokens_per_s);
    std::fflush(stderr);
    drawn_ = true;
  }
  bool enabled() const { return enabled_; }

 private:
  bool enabled_;
  int64_t total_;
  bool drawn_ = false;
};

// Rows [n*rank/count, n*(rank+1)/count) of `batch`: a process's share of a
// micro-batch (TrainOptions::shard_rank). Aliases the batch's tensors.
data::Batch ShareOfBatch(const data::Batch& batch, int rank, int count) {
  const int64_t rows = batch.tokens.size(0);
  const int64_t begin = rows * rank / count;
  const int64_t end = rows * (rank + 1) / count;
  data::Batch share{batch.tokens.slice(0, begin, end),
                    batch.targets.slice(0, begin, end), 0};
  share.num_target_tokens = share.targets.ne(-100).sum().item<int64_t>();
  return share;
}

}  // namespace

void OptimOptions::Read(ConfigReader& in) {
  in.Get("lr", &lr);
  in.Get("weight_decay", &weight_decay);
  in.Get("beta1", &beta1);
  in.Get("beta2", &beta2);
  in.Get("eps", &eps);
  in.Get("max_grad_norm", &max_grad_norm);
  in.Get("schedule", &schedule);
  in.Get("warmup_steps", &warmup_steps);
  in.Get("min_lr_ratio", &min_lr_ratio);
  in.Check(lr > 0, "lr", "must be > 0, got " + ToConfigString(lr));
  in.Check(weight_decay >= 0, "weight_decay",
           "must be >= 0, got " + ToConfigString(weight_decay));
  in.Check(beta1 >= 0 && beta1 < 1, "beta1",
           "must be in [0, 1), got " + ToConfigString(beta1));
  in.Check(beta2 >= 0 && beta2 < 1, "beta2",
           "must be in [0, 1), got " + ToConfigString(beta2));
  in.Check(eps > 0, "eps", "must be > 0, got " + ToConfigString(eps));
  in.Check(max_grad_norm >= 0, "max_grad_norm",
           "must be >= 0 (0 = off), got " + ToConfigString(max_grad_norm));
  in.Check(schedule == "cosine" || schedule == "constant", "schedule",
           "expected cosine or constant, got '" + schedule + "'");
  in.Check(warmup_steps >= 0, "warmup_steps",
           "must be >= 0, got " + ToConfigString(warmup_steps));
  in.Check(min_lr_ratio >= 0 && min_lr_ratio <= 1, "min_lr_ratio",
           "must be in [0, 1], got " + ToConfigString(min_lr_ratio));
}

void TrainOptions::Read(ConfigReader& in) {
  in.Get("epochs", &epochs);
  in.Get("max_steps", &max_steps);
  in.Get("batch_size", &batch_size);
  in.Get("grad_accum", &grad_accum);
  in.Get("eval_batch_size", &eval_batch_size);
  in.Get("fedprox_mu", &fedprox_mu);
  in.Get("trainable_layers", &trainable_layers);
  in.Get("gradient_checkpointing", &gradient_checkpointing);
  in.Get("chunked_loss", &chunked_loss);
  in.Get("log_every", &log_every);
  in.Get("progress_bar", &progress_bar);
  in.Get("seed", &seed);
  ConfigReader optim_in = in.Section("optim");
  optim.Read(optim_in);
  in.Check(epochs >= 1, "epochs",
           "must be >= 1, got " + ToConfigString(epochs));
  in.Check(max_steps >= 0, "max_steps",
           "must be >= 0 (0 = run epochs), got " + ToConfigString(max_steps));
  in.Check(batch_size >= 1, "batch_size",
           "must be >= 1, got " + ToConfigString(batch_size));
  in.Check(grad_accum >= 1, "grad_accum",
           "must be >= 1, got " + ToConfigString(grad_accum));
  in.Check(eval_batch_size >= 1, "eval_batch_size",
           "must be >= 1, got " + ToConfigString(eval_batch_size));
  in.Check(
      trainable_layers >= 0, "trainable_layers",
      "must be >= 0 (0 = all layers), got " + ToConfigString(trainable_layers));
  in.Check(fedprox_mu >= 0, "fedprox_mu",
           "must be >= 0, got " + ToConfigString(fedprox_mu));
  in.Check(log_every >= 0, "log_every",
           "must be >= 0, got " + ToConfigString(log_every));
}

torch::Tensor LanguageModelLoss(model::LlamaModel& model,
                                const data::Batch& batch, bool chunked) {
  if (chunked) {
    return model::LinearCrossEntropy(model.Hidden(batch.tokens),
                                     model.lm_head(), batch.targets);
  }
  torch::Tensor logits = model.Forward(batch.tokens);
  const int64_t vocab = logits.size(-1);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, vocab}), batch.targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

EvalResult Evaluate(model::LlamaModel& model,
                    const std::vector<data::Example>& examples, int batch_size,
                    const torch::Device& device) {
  torch::NoGradGuard no_grad;
  EvalResult result;
  if (examples.empty()) return result;
  std::vector<size_t> order(examples.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  double total = 0.0;
  for (const data::Batch& b : data::MakeBatches(examples, order, batch_size)) {
    if (b.num_target_tokens == 0) continue;
    data::Batch on_device{b.tokens.to(device), b.targets.to(device),
                          b.num_target_tokens};
    double loss = LanguageModelLoss(model, on_device).item<double>();
    total += loss * static_cast<double>(b.num_target_tokens);
    result.tokens += b.num_target_tokens;
  }
  if (result.tokens > 0) {
    result.loss = total / static_cast<double>(result.tokens);
    result.perplexity = std::exp(result.loss);
  }
  return result;
}

int64_t LayerOfKey(const std::string& key) {
  static const std::string kLayers = "layers.";
  size_t pos = key.find(kLayers);
  if (pos == std::string::npos) return -1;
  pos += kLayers.size();
  int64_t layer = 0;
  size_t digits = 0;
  while (pos < key.size() &&
         std::isdigit(static_cast<unsigned char>(key[pos]))) {
    layer = layer * 10 + (key[pos++] - '0');
    ++digits;
  }
  return digits > 0 ? layer : -1;
}

LocalTrainer::LocalTrainer(peft::PeftModel& peft, const TrainOptions& options,
                           torch::Device device)
    : peft_(peft), options_(options), device_(device) {
  // Freeze by flipping requires_grad on the live parameters; the PeftModel
  // is reused across rounds, so every tensor is reset here.
  const int64_t n_layers = peft_.model().config().n_layers;
  const int64_t first_trainable =
      options_.trainable_layers > 0
          ? std::max<int64_t>(0, n_layers - options_.trainable_layers)
          : 0;
  peft_.model().set_first_trainable_layer(first_trainable);
  peft_.model().set_gradient_checkpointing(options_.gradient_checkpointing);
  for (const auto& [key, t] : peft_.AdapterTensors()) {
    bool train = !options_.frozen.count(key) &&
                 (first_trainable == 0 || LayerOfKey(key) >= first_trainable);
    t.requires_grad_(train);
    if (train) {
      params_.push_back(t);
      trained_keys_.insert(key);
    }
  }
  auto adamw = torch::optim::AdamWOptions(options_.optim.lr)
                   .betas({options_.optim.beta1, options_.optim.beta2})
                   .eps(options_.optim.eps)
                   .weight_decay(options_.optim.weight_decay);
  // Everything frozen (possible with APF): Step then only measures the loss.
  if (!params_.empty()) {
    optimizer_ = std::make_unique<torch::optim::AdamW>(params_, adamw);
  }
}

void LocalTrainer::SetProximalAnchor(const TensorMap& global) {
  anchor_.clear();
  if (options_.fedprox_mu <= 0) return;
  // Align the anchor with params_ through the PEFT keys: AdapterTensors()
  // aliases the same storage as TrainableParameters().
  TensorMap live = peft_.AdapterTensors();
  std::map<const void*, torch::Tensor> by_storage;
  for (const auto& kv : live) {
    auto it = global.find(kv.first);
    if (it != global.end()) {
      by_storage[kv.second.data_ptr()] =
          it->second.detach().to(device_).clone();
    }
  }
  for (const torch::Tensor& p : params_) {
    auto it = by_storage.find(p.data_ptr());
    anchor_.push_back(it != by_storage.end() ? it->second : torch::Tensor());
  }
}

double LocalTrainer::LearningRate(int64_t step, int64_t total_steps) const {
  const OptimOptions& o = options_.optim;
  if (o.warmup_steps > 0 && step < o.warmup_steps) {
    return o.lr * static_cast<double>(step + 1) / o.warmup_steps;
  }
  if (o.schedule == "constant" || total_steps <= o.warmup_steps) return o.lr;
  double progress =
      static_cast<double>(step - o.warmup_steps) /
      static_cast<double>(std::max<int64_t>(1, total_steps - o.warmup_steps));
  progress = std::min(1.0, std::max(0.0, progress));
  double cosine = 0.5 * (1.0 + std::cos(kPi * progress));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

double LocalTrainer::Step(const std::vector<data::Batch>& micro_batches,
                          int64_t total_steps) {
  peft_.Train(true);
  if (!optimizer_) {
    torch::NoGradGuard no_grad;
    double loss_sum = 0.0;
    int64_t total_tokens = 0;
    for (const data::Batch& b : micro_batches) {
      if (b.num_target_tokens == 0) continue;
      data::Batch on_device{b.tokens.to(device_), b.targets.to(device_),
                            b.num_target_tokens};
      loss_sum +=
          LanguageModelLoss(peft_.model(), on_device, options_.chunked_loss)
              .item<double>() *
          static_cast<double>(b.num_target_tokens);
      total_tokens += b.num_target_tokens;
    }
    double loss =
        loss_sum / static_cast<double>(std::max<int64_t>(1, total_tokens));
    step_tokens_ = total_tokens;
    if (options_.reduce_step) {
      StepShare share{{}, total_tokens, loss};
      options_.reduce_step(share);
      loss = share.loss;
      step_tokens_ = share.tokens;
    }
    ++step_;
    return loss;
  }
  double lr = LearningRate(step_, total_steps);
  for (auto& group : optimizer_->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
  optimizer_->zero_grad();
  int64_t total_tokens = 0;
  for (const data::Batch& b : micro_batches)
    total_tokens += b.num_target_tokens;
  double loss_sum = 0.0;
  for (const data::Batch& b : micro_batches) {
    if (b.num_target_tokens == 0) continue;
    data::Batch on_device{b.tokens.to(device_), b.targets.to(device_),
                          b.num_target_tokens};
    torch::Tensor loss =
        LanguageModelLoss(peft_.model(), on_device, options_.chunked_loss);
    double weight = static_cast<double>(b.num_target_tokens) /
                    static_cast<double>(std::max<int64_t>(1, total_tokens));
    torch::Tensor objective = loss * weight;
    if (options_.fedprox_mu > 0 && !anchor_.empty()) {
      torch::Tensor prox = torch::zeros({}, loss.options());
      for (size_t i = 0; i < params_.size(); ++i) {
        if (anchor_[i].defined()) {
          prox = prox + (params_[i] - anchor_[i]).pow(2).sum();
        }
      }
      objective = objective + (0.5 * options_.fedprox_mu * weight) * prox;
    }
    objective.backward();
    loss_sum += loss.item<double>() * weight;
  }
  step_tokens_ = total_tokens;
  if (options_.reduce_step) {
    // Data parallelism: every process's share of the step becomes the
    // global step (a share without targets ran no backward: zeros).
    StepShare share{{}, total_tokens, loss_sum};
    for (torch::Tensor& p : params_) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      share.grads.push_back(p.grad());
    }
    options_.reduce_step(share);
    loss_sum = share.loss;
    step_tokens_ = share.tokens;
  }
  if (options_.optim.max_grad_norm > 0) {
    torch::nn::utils::clip_grad_norm_(params_, options_.optim.max_grad_norm);
  }
  optimizer_->step();
  ++step_;
  return loss_sum;
}

TrainResult LocalTrainer::Train(
    const std::vector<data::Example>& train,
    const std::function<void(int, double)>& on_epoch) {
  TrainResult result;
  if (train.empty()) return result;
  const int64_t batches_per_epoch =
      (static_cast<int64_t>(train.size()) + options_.batch_size - 1) /
      options_.batch_size;
  const int64_t steps_per_epoch = std::max<int64_t>(
      1, (batches_per_epoch + options_.grad_accum - 1) / options_.grad_accum);
  const int64_t total_steps = options_.max_steps > 0
                                  ? options_.max_steps
                                  : steps_per_epoch * options_.epochs;
  ProgressBar bar(options_.progress_bar, total_steps);
  auto start = std::chrono::steady_clock::now();
  double loss_total = 0.0;
  int64_t done = 0;
  for (int epoch = 0; done < total_steps; ++epoch) {
    std::vector<data::Batch> batches = data::MakeBatches(
        train, ShuffledOrder(train.size(), options_.seed + epoch),
        options_.batch_size);
    if (options_.shard_count > 1) {
      for (data::Batch& b : batches) {
        b = ShareOfBatch(b, options_.shard_rank, options_.shard_count);
      }
    }
    double epoch_loss = 0.0;
    int64_t epoch_steps = 0;
    for (size_t i = 0; i < batches.size() && done < total_steps;
         i += options_.grad_accum) {
      size_t end = std::min(batches.size(), i + options_.grad_accum);
      std::vector<data::Batch> micro(batches.begin() + i,
                                     batches.begin() + end);
      double lr = LearningRate(step_, total_steps);
      double loss = Step(micro, total_steps);
      const int64_t tokens = step_tokens_;  // over every process
      ++done;
      ++epoch_steps;
      epoch_loss += loss;
      loss_total += loss;
      result.last_loss = loss;
      result.tokens += tokens;
      double secs = std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - start)
                        .count();
      double tps = secs > 0 ? static_cast<double>(result.tokens) / secs : 0;
      bar.Update(done, loss, lr, tps);
      if (!bar.enabled() && options_.log_every > 0 &&
          (done % options_.log_every == 0 || done == total_steps)) {
        FP_LOG_INFO("train", "step {}/{} loss {:.4f} lr {:.2e} {:.0f} tok/s",
                    done, total_steps, loss, lr, tps);
      }
    }
    if (on_epoch && epoch_steps > 0) {
      on_epoch(epoch, epoch_loss / static_cast<double>(epoch_steps));
    }
  }
  result.steps = done;
  result.mean_loss = done > 0 ? loss_total / static_cast<double>(done) : 0.0;
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  peft_.Train(false);
  return result;
}

double MeasureTokensPerSecond(std::shared_ptr<const model::LlamaWeights> base,
                              const std::vector<data::Example>& examples,
                              torch::Device device) {
  auto pm = peft::PeftModel::Create(std::move(base), peft::PeftOptions{}, 1);
  if (!pm.ok()) return 0;
  std::vector<size_t> order{0};
  auto batches = data::MakeBatches(examples, order, 1);
  if (batches.empty()) return 0;
  TrainOptions t;
  t.progress_bar = false;
  LocalTrainer trainer(**pm, t, device);
  const auto t0 = std::chrono::steady_clock::now();
  trainer.Step(batches, 1);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  return secs > 0 ? batches[0].num_target_tokens / secs : 0;
}

}  // namespace worker
}  // namespace fedpeft
