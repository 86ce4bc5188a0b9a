#include "model/random_model.h"

#include "common/logging.h"
#include "model/loader.h"

namespace fedpeft {
namespace model {

StatusOr<LlamaConfig> ReshapeConfig(const LlamaConfig& config,
                                    const ModelShape& shape) {
  LlamaConfig c = config;
  auto set = [](int64_t value, int64_t* field) {
    if (value != 0) *field = value;
  };
  set(shape.layers, &c.n_layers);
  set(shape.hidden, &c.dim);
  set(shape.heads, &c.n_heads);
  set(shape.kv_heads, &c.n_kv_heads);
  set(shape.head_dim, &c.explicit_head_dim);
  set(shape.intermediate, &c.hidden_dim);
  set(shape.vocab, &c.vocab_size);
  set(shape.max_positions, &c.max_seq_len);
  for (int64_t* id : {&c.bos_id, &c.eos_id}) {
    if (*id >= c.vocab_size) *id = -1;
  }
  Status s = c.Validate();
  if (!s.ok()) return s.WithContext("reshaped config");
  return c;
}

Status WriteRandomHfModel(const LlamaConfig& config, uint64_t seed,
                          const std::string& dir, torch::Dtype dtype) {
  RETURN_IF_ERROR(config.Validate());
  std::shared_ptr<LlamaWeights> weights;
  try {
    weights = RandomLlamaWeights(config, seed);
  } catch (const std::exception& e) {
    return Status::Internal("random weights of " +
                            std::to_string(config.NumParameters()) +
                            " parameters: " + e.what());
  }
  return SaveHfModel(*weights, dir, dtype);
}

}  // namespace model
}  // namespace fedpeft
