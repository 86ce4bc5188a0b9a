// Fuzz target: model::LoadLlama2cModel on a llama2.c checkpoint (.bin),
// through a scratch file (the loader maps a path), then the promises of
// what loads.
//
// Input: the file (a 28-byte header of seven int32, then float32 weights).
#include <cstring>
#include <string>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "model/llama.h"
#include "model/loader.h"

namespace fedpeft {
namespace fuzz {

int FuzzLlama2c(const uint8_t* data, size_t size) {
  // Removed at exit.
  static ScratchFile file("-llama2c.bin");
  file.Write(std::string_view(reinterpret_cast<const char*>(data), size));

  StatusOr<std::shared_ptr<const model::LlamaWeights>> loaded =
      model::LoadLlama2cModel(file.path());
  if (!loaded.ok()) {
    // Corruption for a header or size that does not fit; Internal when
    // LibTorch refuses a tensor.
    FUZZ_CHECK(loaded.status().code() == StatusCode::kCorruption ||
                   loaded.status().code() == StatusCode::kInternal,
               loaded.status().ToString());
    FUZZ_CHECK(!loaded.status().message().empty(), "error without a message");
    return 0;
  }
  const model::LlamaWeights& w = **loaded;
  const Status valid = w.Validate();
  FUZZ_CHECK(valid.ok(), valid.ToString());
  const model::LlamaConfig& c = w.config;
  int32_t h[7];
  FUZZ_CHECK(size >= sizeof(h), "loaded a file shorter than the header");
  std::memcpy(h, data, sizeof(h));
  FUZZ_CHECK(c.dim == h[0] && c.hidden_dim == h[1] && c.n_layers == h[2] &&
                 c.n_heads == h[3] && c.n_kv_heads == h[4] &&
                 c.max_seq_len == h[6],
             "the config differs from the header");
  FUZZ_CHECK(c.tie_embeddings == (h[5] > 0) &&
                 c.vocab_size == (h[5] > 0 ? h[5] : -int64_t{h[5]}),
             "vocab_size differs from the header's");
  for (const auto& [name, t] : w.tensors) {
    FUZZ_CHECK(t.scalar_type() == torch::kFloat32, name + " not F32");
    FUZZ_CHECK(!t.requires_grad(), name + " requires grad");
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
