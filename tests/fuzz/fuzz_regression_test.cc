// Replays every seed (fuzz/corpus/<target>/) and every input that once
// crashed a fuzzer (fuzz/regressions/<target>/) through the fuzz targets, so
// each fixed bug stays fixed in the ordinary test run. A target aborts on a
// broken promise (FUZZ_CHECK), which fails this test and names the file last
// printed as "replaying ...".
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/fuzz_targets.h"

namespace fedpeft {
namespace fuzz {
namespace {

namespace fs = std::filesystem;

using Target = int (*)(const uint8_t*, size_t);

// Files of fuzz/<kind>/<name>/, sorted; none when the directory is absent.
std::vector<fs::path> InputsOf(const std::string& kind,
                               const std::string& name) {
  const fs::path dir = fs::path(FEDPEFT_SOURCE_DIR) / "fuzz" / kind / name;
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) return files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Runs `target` on every seed and regression input of `name`; returns how
// many seeds there were.
size_t Replay(const std::string& name, Target target) {
  size_t seeds = 0;
  for (const std::string kind : {"corpus", "regressions"}) {
    for (const fs::path& file : InputsOf(kind, name)) {
      std::ifstream in(file, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
      SCOPED_TRACE(file.string());
      // Printed before running: an abort leaves no gtest message behind.
      std::fprintf(stderr, "replaying %s (%zu bytes)\n", file.c_str(),
                   bytes.size());
      EXPECT_EQ(
          target(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
          0);
      if (kind == "corpus") ++seeds;
    }
  }
  return seeds;
}

TEST(FuzzRegressionTest, TensorStream) {
  EXPECT_GT(Replay("tensor_stream", &FuzzTensorStream), 0u);
}

TEST(FuzzRegressionTest, DecodeTensor) {
  EXPECT_GT(Replay("decode_tensor", &FuzzDecodeTensor), 0u);
}

TEST(FuzzRegressionTest, Safetensors) {
  EXPECT_GT(Replay("safetensors", &FuzzSafetensors), 0u);
}

TEST(FuzzRegressionTest, Config) {
  EXPECT_GT(Replay("config", &FuzzConfig), 0u);
}

TEST(FuzzRegressionTest, Tokenizer) {
  EXPECT_GT(Replay("tokenizer", &FuzzTokenizer), 0u);
}

TEST(FuzzRegressionTest, SecaggMessages) {
  EXPECT_GT(Replay("secagg_messages", &FuzzSecaggMessages), 0u);
}

TEST(FuzzRegressionTest, HfConfig) {
  EXPECT_GT(Replay("hf_config", &FuzzHfConfig), 0u);
}

TEST(FuzzRegressionTest, AdapterConfig) {
  EXPECT_GT(Replay("adapter_config", &FuzzAdapterConfig), 0u);
}

TEST(FuzzRegressionTest, Llama2c) {
  EXPECT_GT(Replay("llama2c", &FuzzLlama2c), 0u);
}

TEST(FuzzRegressionTest, Gguf) { EXPECT_GT(Replay("gguf", &FuzzGguf), 0u); }

TEST(FuzzRegressionTest, AppConfig) {
  EXPECT_GT(Replay("app_config", &FuzzAppConfig), 0u);
}

TEST(FuzzRegressionTest, SimulateConfig) {
  EXPECT_GT(Replay("simulate_config", &FuzzSimulateConfig), 0u);
}

TEST(FuzzRegressionTest, OpenaiRequest) {
  EXPECT_GT(Replay("openai_request", &FuzzOpenaiRequest), 0u);
}

TEST(FuzzRegressionTest, HfTokenizer) {
  EXPECT_GT(Replay("hf_tokenizer", &FuzzHfTokenizer), 0u);
}

// The targets take empty and one-byte inputs (libFuzzer starts with them).
TEST(FuzzRegressionTest, TinyInputs) {
  const uint8_t bytes[2] = {0xff, 0x01};
  for (Target target :
       {&FuzzTensorStream, &FuzzDecodeTensor, &FuzzSafetensors, &FuzzConfig,
        &FuzzTokenizer, &FuzzSecaggMessages, &FuzzHfConfig, &FuzzAdapterConfig,
        &FuzzLlama2c, &FuzzAppConfig, &FuzzHfTokenizer, &FuzzOpenaiRequest,
        &FuzzSimulateConfig}) {
    EXPECT_EQ(target(bytes, 0), 0);
    EXPECT_EQ(target(bytes, 1), 0);
    EXPECT_EQ(target(bytes, 2), 0);
  }
}

}  // namespace
}  // namespace fuzz
}  // namespace fedpeft
