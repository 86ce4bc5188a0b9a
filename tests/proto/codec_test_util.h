// Helpers shared by the tensor codec tests (codec_*_test.cc,
// tensor_stream_test.cc, tensor_decoder_test.cc): encode a TensorMap into a
// vector of chunks and decode it back, build headers and data chunks by hand,
// and encode or decode one tensor expecting success. Test-only.
#ifndef FEDPEFT_TESTS_PROTO_CODEC_TEST_UTIL_H_
#define FEDPEFT_TESTS_PROTO_CODEC_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "model/llama.h"
#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {

inline constexpr size_t kMiB = size_t{1} << 20;

// Encodes `tensors` into a vector of chunks (tests only: production code
// streams them).
inline std::vector<proto::TensorChunk> EncodeAll(const TensorMap& tensors,
                                                 size_t chunk_bytes) {
  std::vector<proto::TensorChunk> chunks;
  Status s = EncodeTensors(tensors, chunk_bytes,
                           [&chunks](const proto::TensorChunk& c) {
                             chunks.push_back(c);
                             return true;
                           });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return chunks;
}

// Decodes `chunks` with a TensorDecoder of `limits`: the first error of Add
// or Finish, else the tensors.
inline StatusOr<TensorMap> DecodeAll(
    const std::vector<proto::TensorChunk>& chunks, DecoderLimits limits = {}) {
  TensorDecoder decoder(std::move(limits));
  for (const proto::TensorChunk& c : chunks) RETURN_IF_ERROR(decoder.Add(c));
  return decoder.Finish();
}

// A small adapter with every wire dtype, odd sizes so chunks split unevenly.
inline TensorMap SmallAdapter() {
  torch::manual_seed(7);
  TensorMap m;
  m["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] =
      torch::randn({4, 33});
  m["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] =
      torch::randn({33, 4}).to(torch::kHalf);
  m["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"] =
      torch::randn({5, 7}).to(torch::kBFloat16);
  m["scalar"] = torch::tensor(3.5f).reshape({});
  return m;
}

// A CODEC_RAW header chunk, by name.
inline proto::TensorChunk Header(const std::string& name, proto::DType dtype,
                                 std::vector<int64_t> shape,
                                 uint64_t encoded_bytes) {
  proto::TensorChunk c;
  proto::TensorHeader* h = c.mutable_header();
  h->set_name(name);
  h->set_dtype(dtype);
  for (int64_t d : shape) h->add_shape(d);
  h->set_codec(proto::CODEC_RAW);
  h->set_encoded_bytes(encoded_bytes);
  return c;
}

// A data chunk of `n` zero bytes.
inline proto::TensorChunk Data(size_t n) {
  proto::TensorChunk c;
  c.mutable_data()->set_data(std::string(n, '\0'));
  return c;
}

// Feeds `chunks` and returns the first error of Add or Finish (OK if none).
inline Status Feed(const std::vector<proto::TensorChunk>& chunks,
                   DecoderLimits limits = {}) {
  return DecodeAll(chunks, std::move(limits)).status();
}

// EncodeTensor, failing the test (and returning an empty WireTensor) on error.
inline WireTensor MustEncode(const torch::Tensor& t, CodecOptions options,
                             std::mt19937_64* rng) {
  StatusOr<WireTensor> w = EncodeTensor(t, options, rng);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return w.ok() ? std::move(w).value() : WireTensor{};
}

// DecodeTensor (as tensor 't'), failing the test on error.
inline torch::Tensor MustDecode(const WireTensor& w) {
  StatusOr<torch::Tensor> t = DecodeTensor(w, "t");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : torch::Tensor();
}

// EncodeTensors with `options`, a generator seeded with `seed` and
// `schema`, collected into a vector of chunks.
inline std::vector<proto::TensorChunk> EncodeWith(const TensorMap& tensors,
                                                  size_t chunk_bytes,
                                                  CodecOptions options,
                                                  uint64_t seed,
                                                  const Schema* schema) {
  std::vector<proto::TensorChunk> chunks;
  std::mt19937_64 rng(seed);
  Status s = EncodeTensors(
      tensors, chunk_bytes,
      [&chunks](const proto::TensorChunk& c) {
        chunks.push_back(c);
        return true;
      },
      options, &rng, schema);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return chunks;
}

}  // namespace transport
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_PROTO_CODEC_TEST_UTIL_H_
