#include "worker/train_config.h"

#include <algorithm>

#include "delivery/model_manifest.h"

namespace fedpeft {
namespace worker {

void ModelOptions::Read(ConfigReader& in) {
  in.Get("path", &path);
  in.Get("tokenizer", &tokenizer);
  in.Get("dtype", &dtype);
  in.Get("base_dtype", &base_dtype);
  in.Get("device", &device);
  in.Get("threads", &threads);
  in.Get("source", &source);
  in.Get("cache_dir", &cache_dir);
  in.Get("block_size", &block_size);
  in.Check(!path.empty(), "path", "must name a model folder or .bin file");
  in.Check(source == "local" || source == "upstream", "source",
           "expected local or upstream, got '" + source + "'");
  in.Check(!upstream() || !cache_dir.empty(), "cache_dir",
           "is required with model.source upstream (where the fetched "
           "blocks and the assembled model are kept)");
  in.Check(block_size == 0 ||
               (block_size >= static_cast<int64_t>(delivery::kMinBlockSize) &&
                block_size <= static_cast<int64_t>(delivery::kMaxBlockSize)),
           "block_size",
           "must be 0 (automatic) or in [" +
               std::to_string(delivery::kMinBlockSize) + ", " +
               std::to_string(delivery::kMaxBlockSize) + "] bytes, got " +
               ToConfigString(block_size));
  in.Check(dtype == "float32" || dtype == "bfloat16" || dtype == "float16",
           "dtype",
           "expected float32, bfloat16 or float16, got '" + dtype + "'");
  in.Check(base_dtype == "auto" || model::ParseBaseDtype(base_dtype).ok(),
           "base_dtype",
           "expected auto, float32, bfloat16, float16, int8 or nf4, got '" +
               base_dtype + "'");
  in.Check(threads >= 0, "threads",
           "must be >= 0 (0 = default), got " + ToConfigString(threads));
  in.Check(model::ParseDevice(device).ok(), "device",
           "expected cpu, cuda or cuda:N, got '" + device + "'");
}

uint64_t ModelOptions::BlockSizeFor(int max_message_mb) const {
  if (block_size > 0) return static_cast<uint64_t>(block_size);
  return std::min<uint64_t>(delivery::kDefaultBlockSize,
                            static_cast<uint64_t>(max_message_mb) << 19);
}

StatusOr<model::LoadOptions> ModelOptions::ToLoadOptions() const {
  model::LoadOptions options;
  if (dtype == "float32") {
    options.dtype = torch::kFloat32;
  } else if (dtype == "bfloat16") {
    options.dtype = torch::kBFloat16;
  } else if (dtype == "float16") {
    options.dtype = torch::kFloat16;
  } else {
    return Status::InvalidArgument(
        "model.dtype: expected float32, bfloat16 "
        "or float16, got '" +
        dtype + "'");
  }
  if (base_dtype != "auto") {
    auto parsed = model::ParseBaseDtype(base_dtype);
    if (!parsed.ok()) {
      return Status::InvalidArgument("model.base_dtype: " +
                                     parsed.status().message());
    }
    options.base_dtype = *parsed;
  }
  RETURN_IF_ERROR(model::ParseDevice(device).status());
  options.device = device;
  return options;
}

void LoggingOptions::Read(ConfigReader& in) {
  in.Get("level", &level);
  in.Get("file", &file);
  in.Check(level == "debug" || level == "info" || level == "warn" ||
               level == "error",
           "level", "expected debug, info, warn or error, got '" + level + "'");
}

void SampleOptions::Read(ConfigReader& in) {
  in.Get("prompt", &prompt);
  in.Get("max_tokens", &max_tokens);
  in.Check(max_tokens >= 0, "max_tokens",
           "must be >= 0, got " + ToConfigString(max_tokens));
}

void TrainJobConfig::Read(ConfigReader& in) {
  ConfigReader model_in = in.Section("model");
  model.Read(model_in);
  model_in.Check(!model.upstream(), "source",
                 "upstream is for a federated worker, executor or edge "
                 "(fetched from its server); `fedpeft train` reads model.path");
  ConfigReader peft_in = in.Section("peft");
  peft.Read(peft_in);
  ConfigReader data_in = in.Section("data");
  data.Read(data_in);
  ConfigReader train_in = in.Section("train");
  train.Read(train_in);
  ConfigReader logging_in = in.Section("logging");
  logging.Read(logging_in);
  ConfigReader sample_in = in.Section("sample");
  sample.Read(sample_in);
  ConfigReader distributed_in = in.Section("distributed");
  distributed.Read(distributed_in);
  in.Get("seed", &seed);
}

StatusOr<TrainJobConfig> LoadTrainJobConfig(
    const std::string& path, const std::vector<std::string>& overrides) {
  return LoadConfigAs<TrainJobConfig>(path, overrides);
}

}  // namespace worker
}  // namespace fedpeft
