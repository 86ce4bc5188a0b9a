// The fuzz targets: one function per decoder of untrusted bytes, each taking
// the raw input and returning 0. A target never throws; it aborts (FUZZ_CHECK)
// when the code under test breaks one of its own promises, and crashes are
// the sanitizers' to report. Every target is compiled twice:
//   - into a libFuzzer executable fuzz_<name> (clang, FEDPEFT_FUZZ=ON;
//     fuzz/libfuzzer_main.cc supplies LLVMFuzzerTestOneInput), and
//   - into tests/fuzz/fuzz_regression_test (any compiler), which replays
//     every file of fuzz/corpus/<name>/ and fuzz/regressions/<name>/.
// See fuzz/README.md for the input format of each target.
//
// Thread-safety: a target may be run by one thread at a time (the tokenizer,
// llama2c, gguf, app_config and simulate_config targets each write temp files
// of their own, one set per process).
#ifndef FEDPEFT_FUZZ_FUZZ_TARGETS_H_
#define FEDPEFT_FUZZ_FUZZ_TARGETS_H_

#include <cstddef>
#include <cstdint>

namespace fedpeft {
namespace fuzz {

// Upload stream as coordinator/service.cc's UploadUpdate reads it.
int FuzzTensorStream(const uint8_t* data, size_t size);
// One tensor: transport::DecodeTensor, then an EncodeTensor round trip.
int FuzzDecodeTensor(const uint8_t* data, size_t size);
// model::ParseSafetensorsHeader and model::ParseSafetensors.
int FuzzSafetensors(const uint8_t* data, size_t size);
// LoadConfigText with --set overrides, then a ConfigReader binding.
int FuzzConfig(const uint8_t* data, size_t size);
// model::LoadTokenizer on a SentencePiece .model or a llama2.c .bin.
int FuzzTokenizer(const uint8_t* data, size_t size);
// Every secagg message type's Parse, a byte-exact round trip of what parses.
int FuzzSecaggMessages(const uint8_t* data, size_t size);
// model::ParseHfConfig (config.json text), a ToHfJson round trip.
int FuzzHfConfig(const uint8_t* data, size_t size);
// peft::AdapterConfigFromJson, an AdapterConfigToJson round trip.
int FuzzAdapterConfig(const uint8_t* data, size_t size);
// model::LoadLlama2cModel on a llama2.c checkpoint .bin.
int FuzzLlama2c(const uint8_t* data, size_t size);
// The coordinator, worker and train-job YAML loaders with --set overrides.
int FuzzAppConfig(const uint8_t* data, size_t size);
// cli::LoadSimulationConfig (`fedpeft simulate`), then the configs of the
// processes it would start through their own loaders.
int FuzzSimulateConfig(const uint8_t* data, size_t size);
// model::HfTokenizer::Parse (tokenizer.json text), then Encode / Decode.
int FuzzHfTokenizer(const uint8_t* data, size_t size);
// model::GgufReader, model::LoadGgufModel and the GGUF tokenizer.
int FuzzGguf(const uint8_t* data, size_t size);
// serve::ParseCompletionRequest (an HTTP body to `fedpeft serve`), the
// response bodies of what parses, and the TextStream with its stops.
int FuzzOpenaiRequest(const uint8_t* data, size_t size);

}  // namespace fuzz
}  // namespace fedpeft

#endif  // FEDPEFT_FUZZ_FUZZ_TARGETS_H_
