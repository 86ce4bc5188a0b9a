// Training benchmark: LoRA fine-tuning steps per second and peak memory of
// fedpeft's C++ path (LlamaModel + PeftModel + LocalTrainer::Step: forward,
// loss, backward, grad clip, AdamW), for the shipped stories260K model and
// a larger randomly initialised Llama. bench/torch_eager_lora.py is the
// same model, LoRA and batch in PyTorch eager; scripts/bench.sh runs both
// interleaved and prints the comparison table.
//
//   fedpeft_bench_train --preset stories260K --threads 2 --steps 10
//   fedpeft_bench_train --preset stories260K --trainable-layers 2
//   fedpeft_bench_train --preset llama-512x8 --gradient-checkpointing
//   fedpeft_bench_train --preset llama-512x8 --full-logits
//   fedpeft_bench_train --model DIR --base-dtype nf4 --batch 1 --seq 512
//     (any Hugging Face folder, e.g. from `fedpeft init-model`; the frozen
//     base held as model.base_dtype; scripts/bench_base_dtype.sh runs each
//     dtype in its own process for the peak-RSS table)
//
// Prints one machine-readable line on stdout (progress goes to stderr):
//   impl=cpp preset=stories260K threads=2 batch=8 seq=256 rank=8 steps=10
//   step_ms_median=... step_ms_min=... tokens_per_s=... peak_rss_mb=...
//   first_loss=... trainable_layers=... trainable_params=...
//   gradient_checkpointing=0|1 loss=chunked|full
//   base_dtype=... load_s=... weights_mb=... mapped_mb=... heap=kept|default
//   rss_start_mb=... rss_loaded_mb=... peak_loaded_mb=...
// rss_start_mb: before the model (the libraries); rss_loaded_mb and
// peak_loaded_mb: once it is loaded, before the first step.
// mapped_mb: of weights_mb, the pages of the model file itself
// (LoadOptions::map_weights), shared by every process that maps it.
// heap=kept: freed memory stays in the heap as in `fedpeft` itself
// (common/heap.h); FEDPEFT_HEAP=default measures glibc's defaults.
// The token batch is deterministic (tokens[i] = i*7919 mod vocab, targets
// the next element of that sequence) and identical to the Python side, so
// on stories260K both print the same first_loss (fresh LoRA B is zero).
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/heap.h"
#include "common/process_stats.h"
#include "common/status.h"
#include "data/dataset.h"
#include "model/llama.h"
#include "model/loader.h"
#include "peft/peft_model.h"
#include "worker/local_trainer.h"

#ifndef FEDPEFT_SOURCE_DIR
#define FEDPEFT_SOURCE_DIR "."
#endif

namespace fedpeft {
namespace bench {
namespace {

// Keep in sync with PRESETS in bench/torch_eager_lora.py.
struct Preset {
  std::string model_dir;      // relative to the source tree; empty = random
  model::LlamaConfig config;  // used when model_dir is empty
  int64_t batch = 8;
  int64_t seq = 256;
};

model::LlamaConfig Llama512x8() {
  model::LlamaConfig c;
  c.dim = 512;
  c.hidden_dim = 1376;
  c.n_layers = 8;
  c.n_heads = 8;
  c.n_kv_heads = 8;
  c.vocab_size = 32000;
  c.max_seq_len = 2048;
  c.tie_embeddings = false;
  return c;
}

const std::map<std::string, Preset>& Presets() {
  static const auto* presets = new std::map<std::string, Preset>{
      {"stories260K", {"assets/stories260K", {}, 8, 256}},
      {"llama-512x8", {"", Llama512x8(), 4, 256}},
  };
  return *presets;
}

struct Args {
  std::string preset = "stories260K";
  std::string model_dir;            // a HF folder instead of the preset's
  std::string base_dtype = "auto";  // LoadOptions::base_dtype
  std::string source_dir = FEDPEFT_SOURCE_DIR;  // where assets/ lives
  int threads = 2;
  int64_t batch = 0;  // 0 = the preset's
  int64_t seq = 0;    // 0 = the preset's
  int steps = 10;     // timed steps
  int warmup = 3;     // untimed steps first
  int rank = 8;
  double alpha = 16.0;
  std::string targets = "q_proj,k_proj,v_proj,o_proj";
  double lr = 2e-3;
  // Layer freezing (TrainOptions::trainable_layers): only the top K layers
  // train, the ones below run forward without autograd; 0 = all layers.
  int trainable_layers = 0;
  // TrainOptions::gradient_checkpointing: recompute layers in backward.
  bool gradient_checkpointing = false;
  // TrainOptions::chunked_loss = false: cross_entropy over the whole
  // [tokens, vocab] logits, as before the fused loss.
  bool full_logits = false;
  bool no_map = false;       // copy the base even where it could stay mapped
  bool breakdown = false;    // also time forward+loss and backward alone
  bool show_config = false;  // at::show_config() to stderr
  std::string profile;       // chrome trace of the timed steps to this file
};

const char kUsage[] =
    "usage: fedpeft_bench_train [--preset stories260K|llama-512x8]\n"
    "  [--threads N=2] [--batch B] [--seq T] [--steps K=10] [--warmup W=3]\n"
    "  [--rank R=8] [--alpha A=16] [--targets q_proj,k_proj,v_proj,o_proj]\n"
    "  [--lr 2e-3] [--trainable-layers K=0 (all)] [--source-dir DIR]\n"
    "  [--gradient-checkpointing] [--full-logits] [--no-map]\n"
    "  [--breakdown] [--show-config] [--profile trace.json]\n"
    "  [--model HF_DIR] [--base-dtype "
    "auto|float32|bfloat16|float16|int8|nf4]\n";

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--breakdown") {
      a.breakdown = true;
      continue;
    }
    if (flag == "--show-config") {
      a.show_config = true;
      continue;
    }
    if (flag == "--gradient-checkpointing") {
      a.gradient_checkpointing = true;
      continue;
    }
    if (flag == "--full-logits") {
      a.full_logits = true;
      continue;
    }
    if (flag == "--no-map") {
      a.no_map = true;
      continue;
    }
    if (flag == "-h" || flag == "--help") {
      return Status::InvalidArgument("help requested");
    }
    if (i + 1 >= argc) {
      return Status::InvalidArgument(flag + ": missing value");
    }
    const std::string value = argv[++i];
    try {
      if (flag == "--preset") {
        a.preset = value;
      } else if (flag == "--model") {
        a.model_dir = value;
      } else if (flag == "--base-dtype") {
        a.base_dtype = value;
      } else if (flag == "--source-dir") {
        a.source_dir = value;
      } else if (flag == "--threads") {
        a.threads = std::stoi(value);
      } else if (flag == "--batch") {
        a.batch = std::stoll(value);
      } else if (flag == "--seq") {
        a.seq = std::stoll(value);
      } else if (flag == "--steps") {
        a.steps = std::stoi(value);
      } else if (flag == "--warmup") {
        a.warmup = std::stoi(value);
      } else if (flag == "--rank") {
        a.rank = std::stoi(value);
      } else if (flag == "--alpha") {
        a.alpha = std::stod(value);
      } else if (flag == "--targets") {
        a.targets = value;
      } else if (flag == "--lr") {
        a.lr = std::stod(value);
      } else if (flag == "--trainable-layers") {
        a.trainable_layers = std::stoi(value);
      } else if (flag == "--profile") {
        a.profile = value;
      } else {
        return Status::InvalidArgument("unknown flag " + flag);
      }
    } catch (const std::exception&) {
      return Status::InvalidArgument(flag + ": not a number: '" + value + "'");
    }
  }
  if (Presets().count(a.preset) == 0) {
    return Status::InvalidArgument("--preset: unknown preset '" + a.preset +
                                   "', expected stories260K or llama-512x8");
  }
  if (a.threads < 1 || a.steps < 1 || a.warmup < 0 || a.batch < 0 ||
      a.seq < 0 || a.rank < 1 || a.trainable_layers < 0) {
    return Status::InvalidArgument(
        "--threads, --steps, --rank must be >= 1; --warmup, --batch, --seq, "
        "--trainable-layers >= 0");
  }
  return a;
}

// The deterministic batch torch_eager_lora.py also builds.
data::Batch TokenBatch(int64_t batch, int64_t seq, int64_t vocab) {
  torch::Tensor i = torch::arange(batch * seq, torch::kInt64);
  data::Batch b;
  b.tokens = (i * 7919).remainder(vocab).view({batch, seq});
  b.targets = ((i + 1) * 7919).remainder(vocab).view({batch, seq});
  b.num_target_tokens = batch * seq;
  return b;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - t0)
      .count();
}

Status Run(const Args& args) {
  torch::set_num_threads(args.threads);
  const double rss_start = RssMib();  // the libraries, before any model
  if (args.show_config) std::cerr << at::show_config() << "\n";
  const Preset& preset = Presets().at(args.preset);
  const int64_t batch = args.batch ? args.batch : preset.batch;
  const int64_t seq = args.seq ? args.seq : preset.seq;

  model::LoadOptions load;
  load.map_weights = !args.no_map;
  if (args.base_dtype != "auto") {
    ASSIGN_OR_RETURN(load.base_dtype, model::ParseBaseDtype(args.base_dtype));
  }
  std::shared_ptr<const model::LlamaWeights> weights;
  const auto load_start = std::chrono::steady_clock::now();
  if (!args.model_dir.empty()) {
    ASSIGN_OR_RETURN(weights, model::LoadModel(args.model_dir, load));
  } else if (!preset.model_dir.empty()) {
    ASSIGN_OR_RETURN(
        weights,
        model::LoadModel(args.source_dir + "/" + preset.model_dir, load));
  } else {
    RETURN_IF_ERROR(preset.config.Validate());
    auto random = model::RandomLlamaWeights(preset.config, /*seed=*/1234);
    if (load.base_dtype) model::FreezeWeights(random.get(), *load.base_dtype);
    weights = random;
  }
  const double load_s = MsSince(load_start) / 1e3;
  const bool heap_kept = KeepFreedMemory();  // as `train` and `worker` do
  const double rss_loaded = RssMib(), peak_loaded = PeakRssMib();

  peft::PeftOptions peft_options;
  peft_options.method = "lora";
  peft_options.lora.r = args.rank;
  peft_options.lora.alpha = args.alpha;
  peft_options.lora.target_modules = Split(args.targets, ',');
  ASSIGN_OR_RETURN(auto peft,
                   peft::PeftModel::Create(weights, peft_options, 1234));
  peft->Train(true);

  worker::TrainOptions train;
  train.batch_size = static_cast<int>(batch);
  train.log_every = 0;
  train.progress_bar = false;
  train.optim.lr = args.lr;
  train.optim.weight_decay = 0.0;
  train.optim.max_grad_norm = 1.0;
  train.optim.schedule = "constant";
  train.trainable_layers = args.trainable_layers;
  train.gradient_checkpointing = args.gradient_checkpointing;
  train.chunked_loss = !args.full_logits;
  worker::LocalTrainer trainer(*peft, train, torch::kCPU);
  // With layer freezing the trainer updates only part of the adapter.
  int64_t trained_params = 0;
  for (const auto& [key, t] : peft->AdapterTensors()) {
    if (trainer.trained_keys().count(key)) trained_params += t.numel();
  }

  const std::vector<data::Batch> micro = {
      TokenBatch(batch, seq, weights->config.vocab_size)};
  const int64_t total_steps = args.warmup + args.steps;
  std::cerr << "cpp: preset "
            << (args.model_dir.empty() ? args.preset : args.model_dir) << ", "
            << peft->NumTrainableParameters() << " trainable in "
            << peft->TrainableParameters().size() << " tensors ("
            << trained_params << " in " << trainer.trained_keys().size()
            << " trained, trainable_layers " << args.trainable_layers
            << "), threads " << torch::get_num_threads() << "\n";

  std::vector<double> times;
  double first_loss = 0.0;
  // Per-operator chrome trace (the legacy autograd profiler) of the timed
  // steps; its overhead inflates their times.
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  for (int64_t step = 0; step < total_steps; ++step) {
    if (step == args.warmup && !args.profile.empty()) {
      profile = std::make_unique<torch::autograd::profiler::RecordProfile>(
          args.profile);
    }
    const auto t0 = std::chrono::steady_clock::now();
    const double loss = trainer.Step(micro, total_steps);
    const double ms = MsSince(t0);
    if (step == 0) first_loss = loss;
    if (step >= args.warmup) times.push_back(ms);
  }
  profile.reset();  // writes the trace
  const double med = Median(times);

  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(3);
  out << "impl=cpp preset="
      << (args.model_dir.empty() ? args.preset : args.model_dir)
      << " threads=" << torch::get_num_threads() << " batch=" << batch
      << " seq=" << seq << " rank=" << args.rank << " steps=" << args.steps
      << " step_ms_median=" << med
      << " step_ms_min=" << *std::min_element(times.begin(), times.end());
  out.precision(1);
  out << " tokens_per_s=" << batch * seq / (med / 1e3)
      << " peak_rss_mb=" << PeakRssMib();
  out.precision(6);
  out << " first_loss=" << first_loss
      << " trainable_layers=" << args.trainable_layers
      << " trainable_params=" << trained_params
      << " gradient_checkpointing=" << args.gradient_checkpointing
      << " loss=" << (args.full_logits ? "full" : "chunked");
  out.precision(2);
  out << " base_dtype=" << model::BaseDtypeName(weights->base_dtype)
      << " load_s=" << load_s
      << " weights_mb=" << static_cast<double>(weights->nbytes()) / (1 << 20)
      << " mapped_mb=" << static_cast<double>(weights->mapped_bytes) / (1 << 20)
      << " heap=" << (heap_kept ? "kept" : "default");
  out.precision(1);
  out << " rss_start_mb=" << rss_start << " rss_loaded_mb=" << rss_loaded
      << " peak_loaded_mb=" << peak_loaded;

  if (args.breakdown) {
    // The same forward+loss and backward outside Step(). rest_ms, the step
    // minus these, holds clip + AdamW + zeroing but also the noise between
    // separately timed runs; --profile measures the optimizer exactly.
    std::vector<double> fwd, bwd;
    auto params = peft->TrainableParameters();
    for (int i = 0; i < args.steps; ++i) {
      for (auto& p : params) p.mutable_grad() = torch::Tensor();
      const auto t0 = std::chrono::steady_clock::now();
      torch::Tensor loss =
          worker::LanguageModelLoss(peft->model(), micro[0], !args.full_logits);
      fwd.push_back(MsSince(t0));
      const auto t1 = std::chrono::steady_clock::now();
      loss.backward();
      bwd.push_back(MsSince(t1));
    }
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    out.precision(3);
    const double f = Median(fwd), b = Median(bwd);
    out << " fwd_ms=" << f << " bwd_ms=" << b << " rest_ms=" << med - f - b;
  }
  std::cout << out.str() << std::endl;
  return Status::Ok();
}

}  // namespace
}  // namespace bench
}  // namespace fedpeft

int main(int argc, char** argv) {
  using fedpeft::bench::kUsage;
  auto args = fedpeft::bench::ParseArgs(argc, argv);
  if (!args.ok()) {
    std::cerr << args.status().message() << "\n" << kUsage;
    return 2;
  }
  try {
    fedpeft::Status status = fedpeft::bench::Run(*args);
    if (!status.ok()) {
      std::cerr << "fedpeft_bench_train: " << status.ToString() << "\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "fedpeft_bench_train: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
