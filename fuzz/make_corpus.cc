// Writes the seed corpora of fuzz/corpus/ from real artifacts: upload
// streams and tensors encoded by the real encoder, safetensors files written
// by the real writer, the shipped configs and tokenizers, the messages of a
// real secure-aggregation session, model and adapter configs as the loaders
// and writers see them, tiny llama2.c checkpoints.
//
//   build-fuzz/fuzz/fuzz_make_corpus <source dir> <out dir>
//
// writes <out dir>/<target>/<seed>. Deterministic (fixed seeds), so
// regenerating only changes what the code changed.
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/file_util.h"
#include "fuzz/fuzz_util.h"
#include "model/gguf_export.h"
#include "model/llama.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "peft/peft_io.h"
#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"
#include "security/secagg.h"

namespace fedpeft {
namespace fuzz {
namespace {

namespace fs = std::filesystem;

void Check(const Status& s) {
  if (!s.ok()) {
    std::cerr << "fuzz_make_corpus: " << s.ToString() << "\n";
    std::exit(1);
  }
}

void Write(const std::string& dir, const std::string& name,
           const std::string& bytes) {
  Check(EnsureDirectory(dir));
  Check(WriteFileAtomic(JoinPath(dir, name), bytes));
}

std::string ReadOrDie(const std::string& path) {
  StatusOr<std::string> bytes = ReadFileToString(path);
  Check(bytes.status());
  return *bytes;
}

// The adapter of FuzzAdapterSpecs with small random values.
TensorMap FuzzAdapter() {
  torch::manual_seed(7);
  TensorMap adapter;
  for (const auto& [name, spec] : FuzzAdapterSpecs()) {
    adapter[name] = torch::randn(spec.shape) * 0.01;
  }
  return adapter;
}

// mode byte, UpdateHeader frame, then the adapter's chunks as frames.
std::string UploadStream(uint8_t mode, const TensorMap& tensors, int bits,
                         bool schema) {
  std::string out(1, static_cast<char>(mode));
  proto::UploadMessage msg;
  msg.mutable_header()->set_session_id("fuzz-session");
  msg.mutable_header()->set_round(1);
  msg.mutable_header()->set_num_tensors(static_cast<uint32_t>(tensors.size()));
  AppendFrame(msg.SerializeAsString(), &out);
  transport::CodecOptions options;
  options.bits = bits;
  options.block_size = 16;
  std::mt19937_64 rng(1);
  const transport::Schema names = transport::Schema::OfKeys(FuzzAdapterSpecs());
  Check(transport::EncodeTensors(
      tensors, /*chunk_bytes=*/100,
      [&](const proto::TensorChunk& chunk) {
        proto::UploadMessage m;
        *m.mutable_chunk() = chunk;
        AppendFrame(m.SerializeAsString(), &out);
        return true;
      },
      options, &rng, schema ? &names : nullptr));
  return out;
}

void TensorStreamSeeds(const std::string& dir) {
  const TensorMap adapter = FuzzAdapter();
  Write(dir, "f32_by_name", UploadStream(1, adapter, 32, false));
  Write(dir, "f16_by_index", UploadStream(1, adapter, 16, true));
  Write(dir, "q8_unexpected", UploadStream(0, adapter, 8, false));
  Write(dir, "q4_by_index_all", UploadStream(3, adapter, 4, true));
  Write(dir, "q2_by_index", UploadStream(1, adapter, 2, true));
  TensorMap partial;
  partial.insert(*adapter.begin());
  partial["extra.weight"] = torch::ones({2, 2});
  Write(dir, "f32_unexpected_names", UploadStream(0, partial, 32, false));
  // A secure-aggregation upload: every tensor as masked words, by index.
  std::string masked(1, static_cast<char>(1 | 2 | 4));
  proto::UploadMessage msg;
  msg.mutable_header()->set_session_id("fuzz-session");
  msg.mutable_header()->set_round(1);
  msg.mutable_header()->set_num_tensors(static_cast<uint32_t>(adapter.size()));
  msg.mutable_header()->set_masked_unclipped(0x9e3779b9u);
  AppendFrame(msg.SerializeAsString(), &masked);
  transport::WireTensors wire;
  std::mt19937 words(3);
  for (const auto& [name, t] : adapter) {
    std::vector<uint32_t> w(static_cast<size_t>(t.numel()));
    for (auto& x : w) x = words();
    wire[name] =
        transport::EncodeMaskedWords(t.sizes().vec(), w.data(), w.size());
  }
  const transport::Schema names = transport::Schema::OfKeys(FuzzAdapterSpecs());
  Check(transport::WriteTensors(wire, 100, &names,
                                [&](const proto::TensorChunk& chunk) {
                                  proto::UploadMessage m;
                                  *m.mutable_chunk() = chunk;
                                  AppendFrame(m.SerializeAsString(), &masked);
                                  return true;
                                }));
  Write(dir, "masked_by_index_all", masked);
}

// A header frame then the payload.
std::string TensorInput(const transport::WireTensor& wire) {
  std::string out;
  proto::TensorHeader header = wire.header;
  header.set_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A");
  AppendFrame(header.SerializeAsString(), &out);
  return out + wire.payload;
}

void DecodeTensorSeeds(const std::string& dir) {
  torch::manual_seed(11);
  const torch::Tensor t = torch::randn({3, 5});  // 15: padding bits at 2, 4
  std::mt19937_64 rng(1);
  for (int bits : {32, 16, 8, 4, 2}) {
    transport::CodecOptions options;
    options.bits = bits;
    options.block_size = 4;
    StatusOr<transport::WireTensor> wire =
        transport::EncodeTensor(t, options, &rng);
    Check(wire.status());
    Write(dir, "bits" + std::to_string(bits), TensorInput(*wire));
  }
  // BF16 raw (the encoder never makes it; a peer may send it).
  transport::WireTensor bf16;
  const torch::Tensor b = t.to(torch::kBFloat16).contiguous();
  bf16.header.set_dtype(proto::DTYPE_BF16);
  bf16.header.set_codec(proto::CODEC_RAW);
  for (int64_t d : b.sizes()) bf16.header.add_shape(d);
  bf16.header.set_encoded_bytes(static_cast<uint64_t>(b.numel()) * 2);
  bf16.payload.assign(static_cast<const char*>(b.data_ptr()), b.numel() * 2);
  Write(dir, "bf16_raw", TensorInput(bf16));
  // Secure aggregation's masked words.
  const std::vector<uint32_t> words = {0u,  1u,  0xffffffffu, 0x80000000u, 7u,
                                       9u,  10u, 11u,         12u,         13u,
                                       14u, 15u, 16u,         17u,         18u};
  Write(dir, "masked",
        TensorInput(
            transport::EncodeMaskedWords({3, 5}, words.data(), words.size())));
  // A scalar and an empty tensor.
  transport::CodecOptions q4{4, 256};
  Write(dir, "scalar_q4",
        TensorInput(*transport::EncodeTensor(torch::tensor(1.5f), q4, &rng)));
  Write(dir, "empty_f32",
        TensorInput(*transport::EncodeTensor(torch::zeros({0, 3}), {}, &rng)));
}

void SafetensorsSeeds(const std::string& dir) {
  const TensorMap adapter = FuzzAdapter();
  TensorMap two(adapter.begin(), std::next(adapter.begin(), 2));
  StatusOr<std::string> lora =
      model::SerializeSafetensors(two, {{"format", "pt"}});
  Check(lora.status());
  Write(dir, "lora_f32", *lora);
  TensorMap kinds;
  kinds["f64"] = torch::arange(3, torch::kFloat64);
  kinds["f16"] = torch::arange(4, torch::kFloat16).reshape({2, 2});
  kinds["bf16"] = torch::arange(2, torch::kBFloat16);
  kinds["i64"] = torch::arange(2, torch::kInt64);
  kinds["i32"] = torch::arange(2, torch::kInt32);
  kinds["i16"] = torch::arange(2, torch::kInt16);
  kinds["i8"] = torch::arange(2, torch::kInt8);
  kinds["u8"] = torch::arange(2, torch::kUInt8);
  kinds["bool"] = torch::ones({3}, torch::kBool);
  kinds["scalar"] = torch::tensor(2.5f);
  kinds["empty"] = torch::zeros({0, 4});
  StatusOr<std::string> all = model::SerializeSafetensors(kinds);
  Check(all.status());
  Write(dir, "every_dtype", *all);
}

void ConfigSeeds(const std::string& source, const std::string& dir) {
  for (const auto& entry :
       fs::recursive_directory_iterator(JoinPath(source, "configs"))) {
    if (entry.path().extension() != ".yaml") continue;
    std::string name =
        fs::relative(entry.path(), JoinPath(source, "configs")).string();
    for (char& c : name) c = c == '/' ? '_' : c;
    Write(dir, name, ReadOrDie(entry.path().string()));
  }
  Write(dir, "with_overrides",
        "model:\n  path: m\npeft:\n  lora:\n    r: 4\n"
        "    rank_pattern: {q_proj: 2}\ntrain:\n  ranks: [1, 2]\n"
        "  weights: [0.5, 1e-3]\n#--set\ntrain.optim.lr=0.01\n"
        "peft.lora.target_modules=[q_proj, v_proj]\nseed=7\n");
}

void TokenizerSeeds(const std::string& source, const std::string& dir) {
  Write(dir, "stories260K_model",
        std::string(1, '\0') +
            ReadOrDie(JoinPath(source, "assets/stories260K/tokenizer.model")));
  const uint16_t vocab = 512;
  std::string bin(1, '\1');
  bin.push_back(static_cast<char>(vocab & 0xff));
  bin.push_back(static_cast<char>(vocab >> 8));
  Write(dir, "tok512_bin",
        bin + ReadOrDie(
                  JoinPath(source, "assets/stories260K-llama2c/tok512.bin")));
}

// Deterministic randomness for the secure-aggregation session (keys,
// seeds, nonces): the seeds must not change between regenerations.
class SeededRandom : public secagg::RandomSource {
 public:
  explicit SeededRandom(uint64_t seed) : rng_(seed) {}
  Status Fill(uint8_t* out, size_t size) override {
    for (size_t i = 0; i < size; ++i) out[i] = static_cast<uint8_t>(rng_());
    return Status::Ok();
  }

 private:
  std::mt19937_64 rng_;
};

template <typename T>
T ValueOrDie(StatusOr<T> v) {
  Check(v.status());
  return std::move(v).value();
}

// One message of every type from a real session of 3 clients, threshold
// 2, vectors of 4 words, in which client 2 drops out after sharing keys (so
// the unmask request and answers name a dropped client).
void SecaggMessagesSeeds(const std::string& dir) {
  namespace sa = secagg;
  sa::Params params;
  params.num_clients = 3;
  params.threshold = 2;
  params.vector_length = 4;
  params.session_id = 0x5eca99a7e0000001ull;
  std::unique_ptr<sa::Server> server = ValueOrDie(sa::Server::Create(params));
  std::vector<std::unique_ptr<SeededRandom>> rngs;
  std::vector<std::unique_ptr<sa::Client>> clients;
  for (uint32_t id = 0; id < params.num_clients; ++id) {
    rngs.push_back(std::make_unique<SeededRandom>(100 + id));
    clients.push_back(
        ValueOrDie(sa::Client::Create(id, params, rngs.back().get())));
  }
  auto write = [&dir](const std::string& name, const auto& message) {
    Write(dir, name, sa::ToBytes(message));
  };
  for (auto& c : clients) {
    const sa::AdvertiseMsg a = ValueOrDie(c->Advertise());
    if (c->id() == 0) write("advertise", a);
    Check(server->ReceiveAdvertise(a));
  }
  const sa::AdvertiseBroadcast u1 = ValueOrDie(server->CloseAdvertise());
  write("advertise_broadcast", u1);
  for (auto& c : clients) {
    const sa::ShareKeysMsg k = ValueOrDie(c->ShareKeys(u1));
    if (c->id() == 0) write("share_keys", k);
    Check(server->ReceiveShareKeys(k));
  }
  const std::vector<sa::RoutedShares> routed =
      ValueOrDie(server->CloseShareKeys());
  write("routed_shares", routed[0]);
  for (uint32_t id = 0; id < 2; ++id) {  // client 2 drops out
    const std::vector<uint32_t> input = {id, 1u, 0x7fffffffu, 0xfffffff0u};
    const sa::MaskedInputMsg m =
        ValueOrDie(clients[id]->MaskedInput(input, routed[id]));
    if (id == 0) write("masked_input", m);
    Check(server->ReceiveMaskedInput(m));
  }
  const sa::UnmaskRequest request = ValueOrDie(server->CloseMaskedInput());
  write("unmask_request", request);
  for (uint32_t id = 0; id < 2; ++id) {
    const sa::UnmaskMsg u = ValueOrDie(clients[id]->Unmask(request));
    if (id == 0) write("unmask", u);
    Check(server->ReceiveUnmask(u));
  }
  (void)ValueOrDie(server->Finish());  // the session was a real one
}

// The stories260K config.json, what `fedpeft export` writes, and the other
// architectures and spellings the loader takes (GQA, sliding windows, token
// id lists and nulls, an explicit head_dim).
void HfConfigSeeds(const std::string& source, const std::string& dir) {
  const std::string text =
      ReadOrDie(JoinPath(source, "assets/stories260K/config.json"));
  Write(dir, "stories260K", text);
  const model::LlamaConfig config =
      ValueOrDie(model::ParseHfConfig(text, "stories260K"));
  Write(dir, "exported", config.ToHfJson().dump(2) + "\n");

  nlohmann::json mistral = nlohmann::json::parse(text);
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["model_type"] = "mistral";
  mistral["num_key_value_heads"] = 2;
  mistral["sliding_window"] = 256;
  mistral["head_dim"] = 8;
  mistral["rope_scaling"] = nullptr;
  mistral["attention_bias"] = false;
  mistral["eos_token_id"] = {2, 3};
  Write(dir, "mistral_window", mistral.dump(2) + "\n");

  nlohmann::json qwen = nlohmann::json::parse(text);
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen["model_type"] = "qwen2";
  qwen["use_sliding_window"] = true;
  qwen["sliding_window"] = 128;
  qwen["max_window_layers"] = 4;
  qwen["bos_token_id"] = nullptr;
  qwen["rms_norm_eps"] = 1e-6;
  qwen["rope_theta"] = 1000000.0;
  qwen["tie_word_embeddings"] = false;
  Write(dir, "qwen2_sliding", qwen.dump() + "\n");
}

// adapter_config.json as SaveAdapter and the coordinator write it (LoRA
// with every option, bottleneck), and as Python PEFT writes it (its extra
// keys, "all-linear", an integer layers_to_transform).
void AdapterConfigSeeds(const std::string& dir) {
  peft::PeftOptions lora;
  Write(dir, "lora_default",
        peft::AdapterConfigToJson(lora, "stories260K").dump(2) + "\n");
  lora.lora.r = 8;
  lora.lora.alpha = 16.5;
  lora.lora.dropout = 0.05;
  lora.lora.target_modules = model::ProjectionNames();
  lora.lora.layers_to_transform = {0, 2};
  lora.lora.rank_pattern = {{"q_proj", 4},
                            {"model.layers.2.self_attn.v_proj", 2}};
  lora.lora.alpha_pattern = {{"v_proj", 3.5}};
  lora.lora.use_rslora = true;
  Write(dir, "lora_patterns",
        peft::AdapterConfigToJson(lora, "assets/stories260K").dump(2) + "\n");
  peft::PeftOptions bottleneck;
  bottleneck.method = "bottleneck";
  bottleneck.bottleneck.bottleneck_dim = 8;
  bottleneck.bottleneck.places = {"mlp"};
  bottleneck.bottleneck.activation = "gelu";
  bottleneck.bottleneck.layers_to_transform = {1, 3};
  Write(dir, "bottleneck",
        peft::AdapterConfigToJson(bottleneck, "base").dump(2) + "\n");
  Write(dir, "python_peft", R"({
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "HuggingFaceTB/SmolLM-135M",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": 3,
  "loftq_config": {},
  "lora_alpha": 32,
  "lora_dropout": 0.1,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 16,
  "rank_pattern": {},
  "revision": null,
  "target_modules": "all-linear",
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
}
)");
}

// A llama2.c checkpoint of `config` (tied when config.tie_embeddings):
// the 7-field header, then the weights in llama2.c's order and rotary
// layout, random as RandomLlamaWeights makes them.
std::string Llama2cCheckpoint(const model::LlamaConfig& config) {
  const std::shared_ptr<model::LlamaWeights> w =
      model::RandomLlamaWeights(config, /*seed=*/3);
  const int32_t vocab = static_cast<int32_t>(config.vocab_size);
  const int32_t header[7] = {static_cast<int32_t>(config.dim),
                             static_cast<int32_t>(config.hidden_dim),
                             static_cast<int32_t>(config.n_layers),
                             static_cast<int32_t>(config.n_heads),
                             static_cast<int32_t>(config.n_kv_heads),
                             config.tie_embeddings ? vocab : -vocab,
                             static_cast<int32_t>(config.max_seq_len)};
  std::string out(reinterpret_cast<const char*>(header), sizeof(header));
  auto append = [&out](const torch::Tensor& t) {
    const torch::Tensor c = t.to(torch::kFloat32).contiguous();
    out.append(static_cast<const char*>(c.data_ptr()), c.nbytes());
  };
  auto layers = [&](const std::string& rest, int64_t permute_heads = 0) {
    for (int64_t l = 0; l < config.n_layers; ++l) {
      const torch::Tensor& t =
          w->Get("model.layers." + std::to_string(l) + "." + rest);
      append(permute_heads > 0
                 ? model::PermuteHalvesToInterleaved(t, permute_heads)
                 : t);
    }
  };
  append(w->Get("model.embed_tokens.weight"));
  layers("input_layernorm.weight");
  layers("self_attn.q_proj.weight", config.n_heads);
  layers("self_attn.k_proj.weight", config.n_kv_heads);
  layers("self_attn.v_proj.weight");
  layers("self_attn.o_proj.weight");
  layers("post_attention_layernorm.weight");
  layers("mlp.gate_proj.weight");
  layers("mlp.down_proj.weight");
  layers("mlp.up_proj.weight");
  append(w->Get("model.norm.weight"));
  append(torch::zeros({config.max_seq_len, config.head_dim()}));  // freq_cis
  if (!config.tie_embeddings) append(w->Get("lm_head.weight"));
  return out;
}

void Llama2cSeeds(const std::string& source, const std::string& dir) {
  model::LlamaConfig c;
  c.dim = 8;
  c.hidden_dim = 12;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 16;
  c.max_seq_len = 4;
  c.tie_embeddings = true;
  Write(dir, "tiny_tied_gqa", Llama2cCheckpoint(c));
  c.n_layers = 1;
  c.n_kv_heads = 2;
  c.tie_embeddings = false;
  Write(dir, "tiny_untied", Llama2cCheckpoint(c));
  // The real stories260K header alone: a size the file does not have.
  Write(
      dir, "stories260K_header",
      ReadOrDie(JoinPath(source, "assets/stories260K-llama2c/stories260K.bin"))
          .substr(0, 7 * sizeof(int32_t)));
}

// Tiny GGUF models as `export --format gguf` writes them: llama with GQA
// in Q8_0 (dims of 32) and F32, qwen3 with q/k norms in F16, and one with
// the shipped tokenizer (its 512 pieces make that seed ~16 KB).
void GgufSeeds(const std::string& source, const std::string& dir) {
  model::LlamaConfig c;
  c.dim = 32;
  c.hidden_dim = 32;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 16;
  c.max_seq_len = 8;
  c.tie_embeddings = true;
  const std::string tmp =
      (fs::temp_directory_path() / "fedpeft_gguf_seed.gguf").string();
  auto write = [&](const std::string& name, const model::LlamaConfig& config,
                   model::GgufTensorType type, const std::string& tokenizer) {
    model::GgufModelOptions options;
    options.type = type;
    options.tokenizer_path = tokenizer;
    Check(model::WriteGgufModel(*model::RandomLlamaWeights(config, 1), tmp,
                                options));
    Write(dir, name, ReadOrDie(tmp));
    fs::remove(tmp);
  };
  write("llama_q8_0", c, model::GgufTensorType::kQ8_0, "");
  c.dim = 16;  // smaller where no Q8_0 row needs 32 values
  c.hidden_dim = 16;
  write("llama_f32", c, model::GgufTensorType::kF32, "");
  model::LlamaConfig q = c;
  q.model_type = "qwen3";
  q.qk_norm = true;
  q.explicit_head_dim = 8;
  q.tie_embeddings = false;
  write("qwen3_f16", q, model::GgufTensorType::kF16, "");
  model::LlamaConfig t = c;
  t.vocab_size = 512;  // the tokenizer's
  t.dim = 4;
  t.hidden_dim = 4;
  write("llama_with_tokenizer", t, model::GgufTensorType::kF16,
        JoinPath(source, "assets/stories260K/tokenizer.model"));
}

// The shipped configs, each behind the byte that picks its loader, and one
// with --set overrides per loader.
void AppConfigSeeds(const std::string& source, const std::string& dir) {
  const std::string configs = JoinPath(source, "configs");
  for (const auto& entry : fs::recursive_directory_iterator(configs)) {
    if (entry.path().extension() != ".yaml") continue;
    const std::string file = entry.path().filename().string();
    const std::string parent = entry.path().parent_path().filename().string();
    char loader = 0;
    if (file == "coordinator.yaml") {
      loader = '0';
    } else if (file == "worker.yaml") {
      loader = '1';
    } else if (file.size() > 11 &&
               file.compare(file.size() - 11, 11, "_train.yaml") == 0) {
      loader = '2';
    } else if (file == "allowlist.yaml") {
      loader = '3';
    } else if (file == "edge.yaml") {
      loader = '4';
    } else if (parent == "serve" || parent == "pipeline") {
      loader = '5';
    } else {
      continue;  // simulate configs: their loader is in cli/
    }
    std::string name = fs::relative(entry.path(), configs).string();
    for (char& ch : name) ch = ch == '/' ? '_' : ch;
    Write(dir, name,
          std::string(1, loader) + "\n" + ReadOrDie(entry.path().string()));
  }
  Write(dir, "coordinator_overrides",
        "0\n" + ReadOrDie(JoinPath(configs, "flat/coordinator.yaml")) +
            "#--set\nfederation.rounds=3\ndp.enabled=true\n"
            "dp.noise_multiplier=0\nsecagg.enabled=true\n"
            "compression.bits=4\npeft.lora.rank_pattern={q_proj: 2}\n");
  Write(dir, "worker_overrides",
        "1\n" + ReadOrDie(JoinPath(configs, "flat/worker.yaml")) +
            "#--set\nworker.id=worker-7\ndata.shard=2/4\n"
            "simulation.slowdown=2.5\n");
  Write(dir, "instruct_train_overrides",
        "2\n" + ReadOrDie(JoinPath(configs, "instruct_train.yaml")) +
            "#--set\ndata.path=assets/data/tinyshakespeare/input.txt\n"
            "train.max_steps=5\n");
}

// The shipped configs of `fedpeft simulate` (those with a `simulation`
// section), and one with --set overrides per mode.
void SimulateConfigSeeds(const std::string& source, const std::string& dir) {
  const std::string configs = JoinPath(source, "configs");
  for (const auto& entry : fs::recursive_directory_iterator(configs)) {
    if (entry.path().extension() != ".yaml") continue;
    const std::string text = ReadOrDie(entry.path().string());
    if (text.find("\nsimulation:") == std::string::npos &&
        text.rfind("simulation:", 0) != 0) {
      continue;
    }
    std::string name = fs::relative(entry.path(), configs).string();
    for (char& ch : name) ch = ch == '/' ? '_' : ch;
    Write(dir, name, text);
  }
  const std::string quickstart =
      ReadOrDie(JoinPath(configs, "quickstart.yaml"));
  Write(dir, "threads_overrides",
        quickstart +
            "#--set\nsimulation.mode=threads\nsimulation.workers=3\n"
            "simulation.ram_mb=[512, 0]\nsimulation.tls=false\n");
  Write(dir, "edges_overrides",
        quickstart +
            "#--set\ntopology.edges=2\nsimulation.workers=4\n"
            "simulation.uplink_mbps=[10, 0.5]\n");
  Write(dir, "virtual_overrides",
        quickstart +
            "#--set\nsimulation.mode=virtual\nsimulation.users=100\n"
            "topology.edges=2\ncoordinator.federation.sampling=poisson\n"
            "coordinator.federation.fraction=0.1\n");
}

}  // namespace
}  // namespace fuzz
}  // namespace fedpeft

int main(int argc, char** argv) {
  using namespace fedpeft::fuzz;  // NOLINT: a tool's main
  if (argc != 3) {
    std::cerr << "usage: fuzz_make_corpus <source dir> <out dir>\n";
    return 2;
  }
  const std::string source = argv[1];
  const std::string out = argv[2];
  TensorStreamSeeds(fedpeft::JoinPath(out, "tensor_stream"));
  DecodeTensorSeeds(fedpeft::JoinPath(out, "decode_tensor"));
  SafetensorsSeeds(fedpeft::JoinPath(out, "safetensors"));
  ConfigSeeds(source, fedpeft::JoinPath(out, "config"));
  TokenizerSeeds(source, fedpeft::JoinPath(out, "tokenizer"));
  SecaggMessagesSeeds(fedpeft::JoinPath(out, "secagg_messages"));
  HfConfigSeeds(source, fedpeft::JoinPath(out, "hf_config"));
  AdapterConfigSeeds(fedpeft::JoinPath(out, "adapter_config"));
  Llama2cSeeds(source, fedpeft::JoinPath(out, "llama2c"));
  AppConfigSeeds(source, fedpeft::JoinPath(out, "app_config"));
  SimulateConfigSeeds(source, fedpeft::JoinPath(out, "simulate_config"));
  GgufSeeds(source, fedpeft::JoinPath(out, "gguf"));
  return 0;
}
