// Fuzz target: a Hugging Face config.json as the model loader reads it
// (model::ParseHfConfig, which LoadHfModel calls on the file's text), and
// what parses through a ToHfJson round trip.
//
// Input: the file.
#include <string>
#include <string_view>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "model/llama.h"
#include "model/loader.h"

namespace fedpeft {
namespace fuzz {
namespace {

bool SameConfig(const model::LlamaConfig& a, const model::LlamaConfig& b) {
  return a.dim == b.dim && a.hidden_dim == b.hidden_dim &&
         a.n_layers == b.n_layers && a.n_heads == b.n_heads &&
         a.n_kv_heads == b.n_kv_heads && a.vocab_size == b.vocab_size &&
         a.max_seq_len == b.max_seq_len && a.norm_eps == b.norm_eps &&
         a.rope_theta == b.rope_theta && a.tie_embeddings == b.tie_embeddings &&
         a.qkv_bias == b.qkv_bias && a.bos_id == b.bos_id &&
         a.eos_id == b.eos_id && a.model_type == b.model_type &&
         a.explicit_head_dim == b.explicit_head_dim && a.qk_norm == b.qk_norm &&
         a.rope_scaling.ToHfJson() == b.rope_scaling.ToHfJson();
}

}  // namespace

int FuzzHfConfig(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  StatusOr<model::LlamaConfig> config =
      model::ParseHfConfig(text, "config.json");
  if (!config.ok()) {
    FUZZ_CHECK(config.status().code() == StatusCode::kInvalidArgument ||
                   config.status().code() == StatusCode::kUnimplemented,
               config.status().ToString());
    FUZZ_CHECK(!config.status().message().empty(), "error without a message");
    return 0;
  }
  // What LlamaModel and the loader rely on: a valid config, whose sizes
  // (the loader checks them against the shards) are all positive.
  const Status valid = config->Validate();
  FUZZ_CHECK(valid.ok(), valid.ToString());
  FUZZ_CHECK(config->max_seq_len <= model::kMaxModelSeqLen,
             "max_seq_len " + std::to_string(config->max_seq_len));

  // `fedpeft export --merge` writes ToHfJson(); it must read back as the
  // same config.
  const std::string written = config->ToHfJson().dump(2);
  StatusOr<model::LlamaConfig> again =
      model::ParseHfConfig(written, "exported config.json");
  FUZZ_CHECK(again.ok(), "ToHfJson() does not parse: " +
                             again.status().ToString() + "\n" + written);
  FUZZ_CHECK(SameConfig(*config, *again),
             "the round trip changed the config:\n" + written);
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
