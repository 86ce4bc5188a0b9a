// The configuration of a training job on one machine (`fedpeft train`,
// and the local part of a federated worker): which base model, which PEFT
// method, which data, how to train.
//
//   model:   {path, tokenizer, dtype, base_dtype, device, threads}
//   peft:    {method, lora: {...}, bottleneck: {...}}   (peft/peft_model.h)
//   data:    {path, format, max_seq_len, ...}           (data/dataset.h)
//   train:   {epochs, max_steps, batch_size, optim: {...}, ...}
//   logging: {level, file}
//   sample:  {prompt, max_tokens}   the greedy sample printed before/after
//   distributed: {world_size, rank, master_address, timeout_s, port_file}
//            one job over several processes (worker/distributed.h)
//   seed:    adapter initialisation
//
// Relative paths are taken as given (relative to the working directory).
//
// Thread-safety: plain values.
#ifndef FEDPEFT_WORKER_TRAIN_CONFIG_H_
#define FEDPEFT_WORKER_TRAIN_CONFIG_H_

#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "data/dataset.h"
#include "model/loader.h"
#include "peft/peft_model.h"
#include "worker/distributed.h"
#include "worker/local_trainer.h"

namespace fedpeft {
namespace worker {

struct ModelOptions {
  std::string path = "assets/stories260K";  // HF folder or llama2.c .bin
  std::string tokenizer;                    // empty = the one beside the model
  std::string dtype = "float32";            // float32 | bfloat16 | float16
  // How the frozen base's matrices are held: "auto" (= dtype: plain
  // tensors) | float32 | bfloat16 | float16 | int8 | nf4 (model/loader.h,
  // LoadOptions::base_dtype). Adapters and activations stay in `dtype`.
  std::string base_dtype = "auto";
  std::string device = "cpu";  // cpu | cuda | cuda:N
  int threads = 0;             // intra-op threads; 0 = LibTorch default
  // Where the base model comes from (delivery/model_fetch.h): "local" =
  // `path` on this machine; "upstream" = fetched from the server (a
  // worker's server.address, an edge's upstream) as content-addressed
  // blocks into `cache_dir`, then loaded from there (`path` is ignored).
  // Only workers, executors and edges may fetch.
  std::string source = "local";
  std::string cache_dir;  // required with source upstream
  // A server's (cloud or edge with a local model): the bytes of one block
  // of the model it delivers, in [4 KiB, 8 MiB]; 0 = 4 MiB, or half of the
  // server's max_message_mb when that is less (BlockSizeFor).
  int64_t block_size = 0;

  void Read(ConfigReader& in);
  bool upstream() const { return source == "upstream"; }
  // The block size a server whose messages carry at most max_message_mb
  // MiB delivers its model in.
  uint64_t BlockSizeFor(int max_message_mb) const;
  // The LoadOptions these options describe (dtype and device parsed).
  StatusOr<model::LoadOptions> ToLoadOptions() const;
};

struct LoggingOptions {
  std::string level = "info";  // debug | info | warn | error
  std::string file;            // also log here when set

  void Read(ConfigReader& in);
};

struct SampleOptions {
  std::string prompt = "ROMEO:";  // prompt of the before/after sample
  int max_tokens = 48;            // 0 = no sample

  void Read(ConfigReader& in);
};

struct TrainJobConfig {
  ModelOptions model;
  peft::PeftOptions peft;
  data::DataOptions data;
  TrainOptions train;
  LoggingOptions logging;
  SampleOptions sample;
  // Data-parallel over several processes; rank 0 evaluates and writes the
  // adapter (world_size 1, the default: this process alone).
  DistributedOptions distributed;
  uint64_t seed = 42;  // adapter initialisation

  void Read(ConfigReader& in);
};

// Loads `path` with `--set` overrides applied, binds and validates it; one
// error listing every problem with its key path and the file.
StatusOr<TrainJobConfig> LoadTrainJobConfig(
    const std::string& path, const std::vector<std::string>& overrides);

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_TRAIN_CONFIG_H_
