// Writes the seed corpora of fuzz/corpus/ from real artifacts: upload
// streams and tensors encoded by the real encoder, safetensors files written
// by the real writer, the shipped configs and tokenizers.
//
//   build-fuzz/fuzz/fuzz_make_corpus <source dir> <out dir>
//
// writes <out dir>/<target>/<seed>. Deterministic (fixed seeds), so
// regenerating only changes what the code changed.
#include <filesystem>
#include <iostream>
#include <random>

#include "common/file_util.h"
#include "fuzz/fuzz_util.h"
#include "model/safetensors.h"
#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"

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
  return 0;
}
