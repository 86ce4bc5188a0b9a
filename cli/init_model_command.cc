// fedpeft init-model: a random-weight Hugging Face checkpoint from a real
// config.json (model/random_model.h), full size for benchmarks or shrunk
// with --layers/--hidden/... for tests.
#include <iostream>
#include <string>

#include "cli/cli_util.h"
#include "common/config.h"
#include "common/file_util.h"
#include "model/random_model.h"

namespace fedpeft {
namespace cli {

namespace po = boost::program_options;

int RunInitModel(const Args& args) {
  const std::string cmd = "init-model";
  std::string config_path, out_dir, dtype_name = "float32";
  uint64_t seed = 0;
  model::ModelShape shape;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "config", po::value(&config_path)->required(),
      "a Hugging Face config.json, or a folder holding one (e.g. "
      "assets/configs/qwen3-0.6b)")("out", po::value(&out_dir)->required(),
                                    "output folder")(
      "seed", po::value(&seed)->default_value(0), "weights seed")(
      "dtype", po::value(&dtype_name)->default_value("float32"),
      "stored dtype: float32, bfloat16 (as published checkpoints) or "
      "float16")("layers", po::value(&shape.layers), "num_hidden_layers")(
      "hidden", po::value(&shape.hidden), "hidden_size")(
      "heads", po::value(&shape.heads), "num_attention_heads")(
      "kv-heads", po::value(&shape.kv_heads), "num_key_value_heads")(
      "head-dim", po::value(&shape.head_dim), "head_dim")(
      "intermediate", po::value(&shape.intermediate), "intermediate_size")(
      "vocab", po::value(&shape.vocab),
      "vocab_size (bos/eos ids beyond it become null)")(
      "max-positions", po::value(&shape.max_positions),
      "max_position_embeddings");
  po::variables_map vm;
  int code = kExitOk;
  if (!ParseArgs(cmd,
                 "--config CONFIG.json --out DIR [--seed N] [--dtype D] "
                 "[--layers N] "
                 "[--hidden N] [--heads N] [--kv-heads N] [--head-dim N] "
                 "[--intermediate N] [--vocab N] [--max-positions N]",
                 desc, args, &vm, &code)) {
    return code;
  }
  if (IsDirectory(config_path)) {
    config_path = JoinPath(config_path, "config.json");
  }
  auto text = ReadFileToString(config_path, kMaxConfigFileBytes);
  if (!text.ok()) return Fail(cmd, text.status());
  auto config = model::ParseHfConfig(*text, config_path);
  if (!config.ok()) return Fail(cmd, config.status());
  auto reshaped = model::ReshapeConfig(*config, shape);
  if (!reshaped.ok()) return Fail(cmd, reshaped.status());
  torch::Dtype dtype = torch::kFloat32;
  if (dtype_name == "bfloat16") {
    dtype = torch::kBFloat16;
  } else if (dtype_name == "float16") {
    dtype = torch::kFloat16;
  } else if (dtype_name != "float32") {
    return Fail(cmd, Status::InvalidArgument(
                         "--dtype: expected float32, bfloat16 or float16, "
                         "got '" +
                         dtype_name + "'"));
  }
  Status s = model::WriteRandomHfModel(*reshaped, seed, out_dir, dtype);
  if (!s.ok()) return Fail(cmd, s);
  const model::LlamaConfig& c = *reshaped;
  std::cout << "wrote " << out_dir << ": " << c.model_type << ", " << c.n_layers
            << " layers, hidden " << c.dim << ", " << c.n_heads << " heads / "
            << c.n_kv_heads << " kv of " << c.head_dim() << ", intermediate "
            << c.hidden_dim << ", vocab " << c.vocab_size << ", rope_scaling "
            << (c.rope_scaling.enabled() ? c.rope_scaling.type : "none") << ", "
            << c.NumParameters() << " parameters (seed " << seed << ")\n";
  return kExitOk;
}

}  // namespace cli
}  // namespace fedpeft
