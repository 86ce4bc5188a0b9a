#include "cli/commands.h"

#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/cli_util.h"
#include "common/file_util.h"
#include "common/heap.h"
#include "common/logging.h"
#include "coordinator/checkpoint.h"
#include "data/dataset.h"
#include "model/generate.h"
#include "model/gguf_export.h"
#include "model/loader.h"
#include "model/tokenizer.h"
#include "peft/gguf_lora.h"
#include "peft/peft_io.h"
#include "peft/peft_model.h"
#include "worker/data_parallel.h"
#include "worker/local_trainer.h"
#include "worker/train_config.h"

namespace fedpeft {
namespace cli {
namespace {

namespace po = boost::program_options;

// The base model an adapter names, when --model is not given.
StatusOr<std::string> BaseModelOf(const std::string& adapter_dir) {
  ASSIGN_OR_RETURN(peft::SavedAdapter saved, peft::LoadAdapter(adapter_dir));
  if (saved.base_model.empty() || !PathExists(saved.base_model)) {
    return Status::InvalidArgument(
        "adapter '" + adapter_dir + "' names base model '" + saved.base_model +
        "', which is not a path here: pass --model PATH");
  }
  return saved.base_model;
}

// The model eval and generate run: the base (with its tokenizer) plus the
// adapter in `adapter_dir` when given, on `device`, in eval mode.
struct ReadyModel {
  LoadedBase base;
  std::unique_ptr<peft::PeftModel> peft;     // set with an adapter
  std::unique_ptr<model::LlamaModel> plain;  // set without one
  model::LlamaModel* model = nullptr;        // whichever is set
  torch::Device device{torch::kCPU};
};

StatusOr<ReadyModel> LoadReadyModel(std::string model_path,
                                    const std::string& adapter_dir,
                                    const std::string& tokenizer_path,
                                    const std::string& device_name,
                                    const std::string& base_dtype) {
  if (model_path.empty() && !adapter_dir.empty()) {
    ASSIGN_OR_RETURN(model_path, BaseModelOf(adapter_dir));
  }
  if (model_path.empty()) {
    return Status::InvalidArgument(
        "--model: missing (a Hugging Face folder or a llama2.c .bin)");
  }
  ReadyModel r;
  ASSIGN_OR_RETURN(r.device, model::ParseDevice(device_name));
  model::LoadOptions load_options;
  load_options.device = device_name;
  if (base_dtype != "auto") {
    auto parsed = model::ParseBaseDtype(base_dtype);
    if (!parsed.ok()) {
      return Status::InvalidArgument("--base-dtype: " +
                                     parsed.status().message());
    }
    load_options.base_dtype = *parsed;
  }
  ASSIGN_OR_RETURN(r.base, LoadBase(model_path, tokenizer_path, load_options));
  if (!adapter_dir.empty()) {
    ASSIGN_OR_RETURN(r.peft, peft::LoadPeftModel(r.base.weights, adapter_dir));
    r.model = &r.peft->model();
  } else {
    r.plain = std::make_unique<model::LlamaModel>(r.base.weights);
    r.model = r.plain.get();
  }
  r.model->to(r.device);
  r.model->eval();
  return r;
}

// --model, --adapter and --tokenizer, as eval and generate take them.
void AddModelOptions(po::options_description* desc, std::string* model_path,
                     std::string* adapter_dir, std::string* tokenizer_path,
                     std::string* base_dtype) {
  desc->add_options()(
      "base-dtype", po::value(base_dtype)->default_value("auto"),
      "how the frozen base is held: auto (float32), bfloat16, float16, int8 "
      "or nf4 (model.base_dtype)")(
      "model", po::value(model_path),
      "base model: Hugging Face folder or llama2.c .bin (default: the "
      "adapter's base model)")("adapter", po::value(adapter_dir),
                               "PEFT adapter folder to apply")(
      "tokenizer", po::value(tokenizer_path),
      "tokenizer.json, tokenizer.model or llama2.c tokenizer .bin "
      "(default: beside the model)");
}

std::string GreedySample(model::LlamaModel& m, const model::Tokenizer& tok,
                         const std::string& prompt, int max_tokens) {
  model::GenerateOptions options;
  options.max_new_tokens = max_tokens;
  std::vector<int64_t> ids =
      model::Generate(m, tok.Encode(prompt, true, false), options);
  return tok.Decode(ids);
}

std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

void ApplyThreads(int threads) {
  if (threads > 0) torch::set_num_threads(threads);
}

// `fedpeft train` over several processes (distributed.world_size > 1):
// joins the others, checks that every rank has the same data, starts every
// rank from rank 0's adapter and makes `train` data-parallel. Null alone.
StatusOr<std::unique_ptr<worker::DistributedGroup>> JoinTrainGroup(
    const worker::TrainJobConfig& cfg, const torch::Device& device,
    const std::vector<data::Example>& examples, peft::PeftModel& pm,
    worker::TrainOptions* train) {
  if (!cfg.distributed.enabled()) return {nullptr};
  ASSIGN_OR_RETURN(auto group,
                   worker::DistributedGroup::Join(cfg.distributed, device));
  RETURN_IF_ERROR(group->ExpectSame(worker::ExamplesFingerprint(examples),
                                    "training data"));
  RETURN_IF_ERROR(group->ExpectSame(
      worker::LayoutFingerprint(pm.AdapterTensors()), "adapter layouts"));
  std::vector<torch::Tensor> adapter;  // aliases: Broadcast writes into pm
  for (auto& kv : pm.AdapterTensors()) adapter.push_back(kv.second);
  RETURN_IF_ERROR(group->Broadcast(adapter, 0));
  worker::MakeDataParallel(*group, train);
  return group;
}

}  // namespace

int RunTrain(const Args& args) {
  const std::string cmd = "train";
  std::string config_path, out_dir;
  std::vector<std::string> overrides;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "config", po::value(&config_path)->required(),
      "YAML job config (e.g. configs/local_train.yaml)")(
      "out", po::value(&out_dir)->required(),
      "directory for the adapter (PEFT format) and train_summary.json")(
      "set", po::value(&overrides)->composing(),
      "override a config key: --set train.max_steps=50 (repeatable)");
  po::variables_map vm;
  int code = kExitOk;
  if (!ParseArgs(cmd, "--config FILE --out DIR [--set key=value ...]", desc,
                 args, &vm, &code)) {
    return code;
  }

  auto config_or = worker::LoadTrainJobConfig(config_path, overrides);
  if (!config_or.ok()) return Fail(cmd, config_or.status());
  const worker::TrainJobConfig& cfg = *config_or;
  Status logging = SetUpLogging(cfg.logging.level, cfg.logging.file);
  if (!logging.ok()) return Fail(cmd, logging);
  ApplyThreads(cfg.model.threads);

  auto load_opts = cfg.model.ToLoadOptions();
  if (!load_opts.ok()) return Fail(cmd, load_opts.status());
  auto base = LoadBase(cfg.model.path, cfg.model.tokenizer, *load_opts);
  if (!base.ok()) return Fail(cmd, base.status());
  KeepFreedMemory();  // the steps reuse their memory
  auto device = model::ParseDevice(cfg.model.device);
  if (!device.ok()) return Fail(cmd, device.status());

  data::DataOptions data_options = cfg.data;
  Status chat = data::ResolveChatTemplate(cfg.model.path, cfg.model.tokenizer,
                                          *base->tokenizer, &data_options);
  if (!chat.ok()) return Fail(cmd, chat);
  auto records = data::LoadRecords(data_options);
  if (!records.ok()) return Fail(cmd, records.status());
  std::vector<data::Record> train_records, eval_records;
  data::SplitTrainEval(*records, cfg.data.eval_fraction, cfg.data.seed,
                       &train_records, &eval_records);
  std::vector<data::Example> train_examples =
      data::Tokenize(train_records, *base->tokenizer, data_options);
  std::vector<data::Example> eval_examples =
      data::Tokenize(eval_records, *base->tokenizer, data_options);
  if (train_examples.empty()) {
    return Fail(cmd, Status::InvalidArgument(
                         "data '" + cfg.data.path +
                         "' gave no training examples (too few records?)"));
  }

  auto peft_or = peft::PeftModel::Create(base->weights, cfg.peft, cfg.seed);
  if (!peft_or.ok()) return Fail(cmd, peft_or.status());
  peft::PeftModel& pm = **peft_or;
  pm.model().to(*device);

  const model::LlamaConfig& mc = base->weights->config;
  int64_t trainable = pm.NumTrainableParameters();
  FP_LOG_INFO("train",
              "model {} ({} layers, dim {}, {} params); {} trainable params "
              "({:.2f}%) via {}",
              cfg.model.path, mc.n_layers, mc.dim, mc.NumParameters(),
              trainable, 100.0 * trainable / mc.NumParameters(),
              cfg.peft.method);
  FP_LOG_INFO("train",
              "data {}: {} records -> {} train / {} eval examples of <= {} "
              "tokens",
              cfg.data.path, records->size(), train_examples.size(),
              eval_examples.size(), cfg.data.max_seq_len);

  worker::TrainOptions train_options = cfg.train;
  auto group = JoinTrainGroup(cfg, *device, train_examples, pm, &train_options);
  if (!group.ok()) return Fail(cmd, group.status());
  const int rank = *group ? (*group)->rank() : 0;
  worker::EvalResult before;
  if (rank == 0) {
    before = worker::Evaluate(pm.model(), eval_examples,
                              cfg.train.eval_batch_size, *device);
    FP_LOG_INFO("train", "eval before: loss {:.4f} ppl {:.2f} ({} tokens)",
                before.loss, before.perplexity, before.tokens);
  }
  std::string sample_before;
  if (cfg.sample.max_tokens > 0 && rank == 0) {
    sample_before = GreedySample(pm.model(), *base->tokenizer,
                                 cfg.sample.prompt, cfg.sample.max_tokens);
  }

  worker::LocalTrainer trainer(pm, train_options, *device);
  worker::TrainResult tr;
  try {
    tr = trainer.Train(train_examples, [](int epoch, double loss) {
      FP_LOG_INFO("train", "epoch {} done: mean loss {:.4f}", epoch + 1, loss);
    });
  } catch (const std::exception& e) {
    // Only a data-parallel step throws: the group says what broke.
    return Fail(cmd, *group && !(*group)->status().ok()
                         ? (*group)->status()
                         : Status::Internal(e.what()));
  }
  if (rank > 0) {
    FP_LOG_INFO("train", "rank {}: trained {} steps; rank 0 writes the adapter",
                rank, tr.steps);
    return kExitOk;
  }
  worker::EvalResult after = worker::Evaluate(
      pm.model(), eval_examples, cfg.train.eval_batch_size, *device);
  FP_LOG_INFO("train",
              "trained {} steps ({} tokens) in {:.1f}s; eval after: loss "
              "{:.4f} ppl {:.2f}",
              tr.steps, tr.tokens, tr.seconds, after.loss, after.perplexity);
  std::string sample_after;
  if (cfg.sample.max_tokens > 0) {
    sample_after = GreedySample(pm.model(), *base->tokenizer, cfg.sample.prompt,
                                cfg.sample.max_tokens);
  }

  TensorMap tensors;
  for (const auto& kv : pm.AdapterTensors()) {
    tensors[kv.first] = kv.second.detach().to(torch::kCPU, torch::kFloat32);
  }
  Status saved = peft::SaveAdapter(out_dir, cfg.peft, tensors, cfg.model.path);
  if (!saved.ok()) return Fail(cmd, saved);
  nlohmann::json summary = {
      {"model", cfg.model.path},
      {"method", cfg.peft.method},
      {"trainable_params", trainable},
      {"train_examples", train_examples.size()},
      {"eval_examples", eval_examples.size()},
      {"steps", tr.steps},
      {"train_tokens", tr.tokens},
      {"seconds", tr.seconds},
      {"train_loss_mean", tr.mean_loss},
      {"train_loss_last", tr.last_loss},
      {"eval_loss_before", before.loss},
      {"eval_loss_after", after.loss},
      {"ppl_before", before.perplexity},
      {"ppl_after", after.perplexity},
      {"eval_tokens", after.tokens},
      {"sample_prompt", cfg.sample.prompt},
      {"sample_before", sample_before},
      {"sample_after", sample_after},
  };
  Status s = WriteFileAtomic(JoinPath(out_dir, "train_summary.json"),
                             summary.dump(2) + "\n");
  if (!s.ok()) return Fail(cmd, s);

  std::printf("fedpeft train: %s on %s\n", cfg.peft.method.c_str(),
              cfg.data.path.c_str());
  std::printf("  trainable params  %lld of %lld (%.2f%%)\n",
              static_cast<long long>(trainable),
              static_cast<long long>(mc.NumParameters()),
              100.0 * trainable / mc.NumParameters());
  std::printf("  steps             %lld (%lld tokens, %.1f s, %.0f tok/s)\n",
              static_cast<long long>(tr.steps),
              static_cast<long long>(tr.tokens), tr.seconds,
              tr.seconds > 0 ? tr.tokens / tr.seconds : 0.0);
  std::printf(
      "  eval loss         %.4f -> %.4f  (ppl %.2f -> %.2f, %lld "
      "held-out tokens)\n",
      before.loss, after.loss, before.perplexity, after.perplexity,
      static_cast<long long>(after.tokens));
  if (cfg.sample.max_tokens > 0) {
    std::printf("  sample before     %s%s\n", cfg.sample.prompt.c_str(),
                OneLine(sample_before).c_str());
    std::printf("  sample after      %s%s\n", cfg.sample.prompt.c_str(),
                OneLine(sample_after).c_str());
  }
  std::printf(
      "  adapter           %s (adapter_config.json, "
      "adapter_model.safetensors)\n",
      out_dir.c_str());
  std::printf("eval_loss_before=%.6f eval_loss_after=%.6f steps=%lld\n",
              before.loss, after.loss, static_cast<long long>(tr.steps));
  return kExitOk;
}

int RunEval(const Args& args) {
  const std::string cmd = "eval";
  std::string model_path, adapter_dir, data_path, tokenizer_path, config_path,
      split = "all", device_name = "cpu", base_dtype = "auto";
  std::vector<std::string> overrides;
  int threads = 0;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "data", po::value(&data_path),
      "data file (text, tiny-shakespeare, JSONL, JSON)")(
      "config", po::value(&config_path),
      "optional job YAML (as for train): its data: section sets format, "
      "max_seq_len, eval_fraction, seed")(
      "set", po::value(&overrides)->composing(),
      "override a data key: --set data.max_seq_len=256 (repeatable)")(
      "split", po::value(&split)->default_value("all"),
      "all records, or the held-out 'eval' / the 'train' split as `train` "
      "makes it")("device", po::value(&device_name)->default_value("cpu"),
                  "cpu, cuda or cuda:N")("threads",
                                         po::value(&threads)->default_value(0),
                                         "intra-op threads (0 = default)");
  AddModelOptions(&desc, &model_path, &adapter_dir, &tokenizer_path,
                  &base_dtype);
  po::variables_map vm;
  int code = kExitOk;
  if (!ParseArgs(cmd,
                 "(--data FILE | --config FILE) [--model PATH] [--adapter "
                 "DIR] [--set k=v ...] [--split all|eval|train]",
                 desc, args, &vm, &code)) {
    return code;
  }
  if (split != "all" && split != "eval" && split != "train") {
    return Fail(cmd, Status::InvalidArgument("--split: expected all, eval or "
                                             "train, got '" +
                                             split + "'"));
  }
  ApplyThreads(threads);

  // Data options: defaults < --config (a train job config) < --set < --data.
  auto root = LoadConfigFile(config_path, overrides);
  if (!root.ok()) return Fail(cmd, root.status());
  if (!data_path.empty()) (*root)["data"]["path"] = data_path;
  ConfigReader in(*root, config_path);
  worker::TrainJobConfig job;
  job.Read(in);
  Status st = in.Finish();
  if (!st.ok()) return Fail(cmd, st);
  data::DataOptions data_options = job.data;
  if (model_path.empty() && adapter_dir.empty() && !config_path.empty()) {
    model_path = job.model.path;
  }
  if (tokenizer_path.empty()) tokenizer_path = job.model.tokenizer;
  auto ready = LoadReadyModel(model_path, adapter_dir, tokenizer_path,
                              device_name, base_dtype);
  if (!ready.ok()) return Fail(cmd, ready.status());
  const LoadedBase* base = &ready->base;
  Status chat = data::ResolveChatTemplate(model_path, tokenizer_path,
                                          *base->tokenizer, &data_options);
  if (!chat.ok()) return Fail(cmd, chat);
  auto records = data::LoadRecords(data_options);
  if (!records.ok()) return Fail(cmd, records.status());
  std::vector<data::Record> chosen = *records;
  if (split != "all") {
    std::vector<data::Record> train_records, eval_records;
    data::SplitTrainEval(*records, data_options.eval_fraction,
                         data_options.seed, &train_records, &eval_records);
    chosen = split == "eval" ? eval_records : train_records;
  }
  std::vector<data::Example> examples =
      data::Tokenize(chosen, *base->tokenizer, data_options);

  worker::EvalResult r =
      worker::Evaluate(*ready->model, examples, 16, ready->device);
  if (r.tokens == 0) {
    return Fail(cmd, Status::InvalidArgument("data '" + data_options.path +
                                             "' gave no tokens to evaluate"));
  }
  std::printf("model      %s%s\n", base->weights->source.c_str(),
              adapter_dir.empty() ? "" : (" + " + adapter_dir).c_str());
  std::printf("data       %s (%s split, %zu records, %zu examples)\n",
              data_options.path.c_str(), split.c_str(), chosen.size(),
              examples.size());
  std::printf("eval loss  %.4f   perplexity %.3f\n", r.loss, r.perplexity);
  std::printf("eval_loss=%.6f ppl=%.6f tokens=%lld\n", r.loss, r.perplexity,
              static_cast<long long>(r.tokens));
  return kExitOk;
}

int RunGenerate(const Args& args) {
  const std::string cmd = "generate";
  std::string model_path, adapter_dir, tokenizer_path, prompt,
      device_name = "cpu", base_dtype = "auto";
  int max_tokens = 64;
  double temperature = 0.0, top_p = 1.0;
  uint64_t seed = 0;
  int threads = 0;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "prompt", po::value(&prompt)->required(), "prompt text")(
      "max-tokens", po::value(&max_tokens)->default_value(64),
      "new tokens at most")("temperature",
                            po::value(&temperature)->default_value(0.0),
                            "0 = greedy (deterministic)")(
      "top-p", po::value(&top_p)->default_value(1.0),
      "nucleus sampling threshold (with temperature > 0)")(
      "seed", po::value(&seed)->default_value(0), "sampling seed")(
      "device", po::value(&device_name)->default_value("cpu"),
      "cpu, cuda or cuda:N")("threads", po::value(&threads)->default_value(0),
                             "intra-op threads (0 = default)");
  AddModelOptions(&desc, &model_path, &adapter_dir, &tokenizer_path,
                  &base_dtype);
  po::variables_map vm;
  int code = kExitOk;
  if (!ParseArgs(cmd,
                 "--model PATH --prompt TEXT [--max-tokens N] [--temperature "
                 "T] [--adapter DIR]",
                 desc, args, &vm, &code)) {
    return code;
  }
  if (max_tokens < 0) {
    return Fail(cmd,
                Status::InvalidArgument("--max-tokens: must be >= 0, got " +
                                        std::to_string(max_tokens)));
  }
  if (!(temperature >= 0) || !std::isfinite(temperature)) {
    return Fail(cmd, Status::InvalidArgument(
                         "--temperature: must be a finite number >= 0"));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    return Fail(cmd, Status::InvalidArgument("--top-p: must be in (0, 1]"));
  }
  ApplyThreads(threads);
  auto ready = LoadReadyModel(model_path, adapter_dir, tokenizer_path,
                              device_name, base_dtype);
  if (!ready.ok()) return Fail(cmd, ready.status());
  model::GenerateOptions options;
  options.max_new_tokens = max_tokens;
  options.temperature = temperature;
  options.top_p = top_p;
  options.seed = seed;
  const model::Tokenizer& tok = *ready->base.tokenizer;
  std::vector<int64_t> ids =
      model::Generate(*ready->model, tok.Encode(prompt, true, false), options);
  std::string text = tok.Decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  return kExitOk;
}

namespace {

// `fedpeft export --format gguf --merge`: `weights` and the tokenizer of
// `model_path` (or `tokenizer_path`) as one GGUF file at `out`.
int ExportGgufModel(const model::LlamaWeights& weights,
                    const std::string& model_path,
                    const std::string& tokenizer_path, const std::string& out,
                    model::GgufModelOptions options) {
  const std::string cmd = "export";
  options.tokenizer_path = tokenizer_path;
  if (options.tokenizer_path.empty()) {
    auto found =
        model::FindTokenizerForModel(model_path, weights.config.vocab_size);
    if (!found.ok()) return Fail(cmd, found.status());
    options.tokenizer_path = *found;
  }
  const std::string ext =
      std::filesystem::path(options.tokenizer_path).extension().string();
  if (ext != ".model" && ext != ".gguf" && ext != ".json") {
    return Fail(cmd, Status::Unimplemented(
                         "GGUF export: tokenizer '" + options.tokenizer_path +
                         "' is not a SentencePiece tokenizer.model, a "
                         "tokenizer.json or a GGUF file holding one "
                         "(pass --tokenizer PATH)"));
  }
  Status s = model::WriteGgufModel(weights, out, options);
  if (!s.ok()) return Fail(cmd, s);
  std::printf("model written to %s (GGUF, %s matrices, tokenizer)\n",
              out.c_str(), model::GgufTensorTypeName(options.type));
  return kExitOk;
}

// `fedpeft export --format gguf`: the adapter of `pm`, or with `merge` the
// merged model, as one GGUF file at `out`.
int ExportGguf(peft::PeftModel& pm, const std::string& model_path,
               const std::string& tokenizer_path, const std::string& out,
               bool merge, model::GgufModelOptions options) {
  const std::string cmd = "export";
  const model::LlamaConfig& config = pm.model().weights()->config;
  if (!merge) {
    TensorMap tensors;
    for (const auto& kv : pm.AdapterTensors()) {
      tensors[kv.first] = kv.second.detach().to(torch::kCPU, torch::kFloat32);
    }
    Status s = peft::WriteGgufLora(pm.options(), tensors, config, out);
    if (!s.ok()) return Fail(cmd, s);
    std::printf("adapter written to %s (GGUF LoRA for llama.cpp)\n",
                out.c_str());
    return kExitOk;
  }
  Status s = pm.Merge();
  if (!s.ok()) return Fail(cmd, s);
  std::shared_ptr<model::LlamaWeights> merged = pm.model().ExportWeights();
  return ExportGgufModel(*merged, model_path, tokenizer_path, out, options);
}

}  // namespace

int RunExport(const Args& args) {
  const std::string cmd = "export";
  std::string adapter_dir, checkpoint_dir, out_dir, model_path, tokenizer_path,
      format = "peft", gguf_type = "f16";
  bool merge = false;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "adapter", po::value(&adapter_dir),
      "PEFT adapter folder (adapter_config.json + "
      "adapter_model.safetensors)")(
      "checkpoint", po::value(&checkpoint_dir),
      "coordinator checkpoint dir (its latest round) or one round folder")(
      "out", po::value(&out_dir)->required(),
      "output folder (--format peft) or file (--format gguf)")(
      "merge", po::bool_switch(&merge),
      "write the merged model (base + adapter) instead of the adapter")(
      "format", po::value(&format)->default_value("peft"),
      "peft: a Hugging Face PEFT adapter folder, or with --merge a Hugging "
      "Face model folder (config.json, model.safetensors, tokenizer); gguf: "
      "one llama.cpp GGUF file, the LoRA adapter (llama.cpp --lora) or with "
      "--merge the model with its tokenizer")(
      "gguf-type", po::value(&gguf_type)->default_value("f16"),
      "--format gguf --merge: f32, f16 or q8_0 for the weight matrices "
      "(norms stay f32)")(
      "model", po::value(&model_path),
      "base model (default: the one the adapter or checkpoint names)")(
      "tokenizer", po::value(&tokenizer_path),
      "tokenizer to copy into a merged folder or GGUF file (default: beside "
      "the model)");
  po::variables_map vm;
  int code = kExitOk;
  const char* synopsis =
      "(--adapter DIR | --checkpoint DIR) --out PATH [--merge] "
      "[--format peft|gguf] [--gguf-type f32|f16|q8_0] [--model PATH]";
  if (!ParseArgs(cmd, synopsis, desc, args, &vm, &code)) return code;
  // Without an adapter, `--merge --format gguf --model PATH` converts the
  // base model alone.
  const bool base_only = adapter_dir.empty() && checkpoint_dir.empty() &&
                         merge && format == "gguf" && !model_path.empty();
  if (adapter_dir.empty() == checkpoint_dir.empty() && !base_only) {
    std::cerr << "fedpeft export: give exactly one of --adapter and "
                 "--checkpoint (or, to convert a base model to GGUF, "
                 "--model PATH --merge --format gguf)\nusage: fedpeft export "
              << synopsis << "\n";
    return kExitUsage;
  }
  if (format != "peft" && format != "gguf") {
    return Fail(cmd, Status::InvalidArgument("--format: expected peft or "
                                             "gguf, got '" +
                                             format + "'"));
  }
  model::GgufModelOptions gguf_options;
  if (gguf_type == "f32") {
    gguf_options.type = model::GgufTensorType::kF32;
  } else if (gguf_type == "f16") {
    gguf_options.type = model::GgufTensorType::kF16;
  } else if (gguf_type == "q8_0") {
    gguf_options.type = model::GgufTensorType::kQ8_0;
  } else {
    return Fail(cmd, Status::InvalidArgument(
                         "--gguf-type: expected f32, f16 or q8_0, got '" +
                         gguf_type + "'"));
  }

  std::unique_ptr<peft::PeftModel> pm;
  if (base_only) {
    auto weights = model::LoadModel(model_path);
    if (!weights.ok()) return Fail(cmd, weights.status());
    return ExportGgufModel(**weights, model_path, tokenizer_path, out_dir,
                           gguf_options);
  }
  if (!checkpoint_dir.empty()) {
    auto ckpt = coordinator::LoadCheckpointAdapter(checkpoint_dir);
    if (!ckpt.ok()) return Fail(cmd, ckpt.status());
    if (model_path.empty()) model_path = ckpt->adapter.base_model;
    auto weights = model::LoadModel(model_path);
    if (!weights.ok()) return Fail(cmd, weights.status());
    auto created = peft::PeftModel::Create(*weights, ckpt->adapter.options, 0);
    if (!created.ok()) return Fail(cmd, created.status());
    Status s = (*created)->LoadAdapterTensors(ckpt->adapter.tensors);
    if (!s.ok()) return Fail(cmd, s);
    pm = std::move(created).value();
    FP_LOG_INFO("export", "checkpoint {}: round {} of federation '{}'",
                checkpoint_dir, ckpt->round, ckpt->federation_id);
  } else {
    if (model_path.empty()) {
      auto base = BaseModelOf(adapter_dir);
      if (!base.ok()) return Fail(cmd, base.status());
      model_path = *base;
    }
    auto weights = model::LoadModel(model_path);
    if (!weights.ok()) return Fail(cmd, weights.status());
    // Loading through LoadPeftModel validates the adapter against the base.
    auto loaded = peft::LoadPeftModel(*weights, adapter_dir);
    if (!loaded.ok()) return Fail(cmd, loaded.status());
    pm = std::move(loaded).value();
  }

  if (format == "gguf")
    return ExportGguf(*pm, model_path, tokenizer_path, out_dir, merge,
                      gguf_options);
  if (!merge) {
    TensorMap tensors;
    for (const auto& kv : pm->AdapterTensors()) {
      tensors[kv.first] = kv.second.detach().to(torch::kCPU, torch::kFloat32);
    }
    Status s = peft::SaveAdapter(out_dir, pm->options(), tensors, model_path);
    if (!s.ok()) return Fail(cmd, s);
    std::printf("adapter written to %s (Hugging Face PEFT format)\n",
                out_dir.c_str());
    return kExitOk;
  }

  Status s = pm->Merge();
  if (!s.ok()) return Fail(cmd, s);
  std::shared_ptr<model::LlamaWeights> merged = pm->model().ExportWeights();
  // In the dtype the base was published in: exact base + ΔW, rounded once.
  s = model::SaveHfModel(*merged, out_dir, pm->model().weights()->stored_dtype);
  if (!s.ok()) return Fail(cmd, s);
  std::string tok = tokenizer_path;
  if (tok.empty()) {
    auto found =
        model::FindTokenizerForModel(model_path, merged->config.vocab_size);
    if (found.ok()) tok = *found;
  }
  if (!tok.empty()) {
    namespace fs = std::filesystem;
    const std::string ext = fs::path(tok).extension().string();
    std::string name = ext == ".model"  ? "tokenizer.model"
                       : ext == ".json" ? "tokenizer.json"
                                        : fs::path(tok).filename().string();
    std::vector<std::pair<std::string, std::string>> copies{{tok, name}};
    // A tokenizer.json's BOS/EOS/pad live in tokenizer_config.json beside.
    const std::string config =
        (fs::path(tok).parent_path() / "tokenizer_config.json").string();
    if (ext == ".json" && fs::exists(config)) {
      copies.emplace_back(config, "tokenizer_config.json");
    }
    for (const auto& [from, to] : copies) {
      auto bytes = ReadFileToString(from, model::kMaxTokenizerFileBytes);
      if (!bytes.ok()) return Fail(cmd, bytes.status());
      s = WriteFileAtomic(JoinPath(out_dir, to), *bytes);
      if (!s.ok()) return Fail(cmd, s);
    }
  } else {
    FP_LOG_WARN("export",
                "no tokenizer found beside '{}': the merged folder has "
                "none; pass --tokenizer to include one",
                model_path);
  }
  std::printf(
      "merged model written to %s (config.json, "
      "model.safetensors%s)\n",
      out_dir.c_str(), tok.empty() ? "" : ", tokenizer");
  return kExitOk;
}

}  // namespace cli
}  // namespace fedpeft
