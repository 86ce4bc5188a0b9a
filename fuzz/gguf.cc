// Fuzz target: model::GgufReader::Parse and ReadTensor on the bytes, then
// model::LoadGgufModel and the GGUF tokenizer through a scratch file (the
// loaders map a path), and the promises of what loads.
//
// Input: the file (a GGUF v2/v3 header, metadata, tensor infos, data).
#include <string>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "model/gguf_reader.h"
#include "model/llama.h"
#include "model/loader.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace fuzz {
namespace {

// The error codes the GGUF code promises for bad files (NotFound: a model
// without tokenizer keys).
bool GgufExpectedCode(StatusCode code) {
  return code == StatusCode::kCorruption ||
         code == StatusCode::kUnimplemented || code == StatusCode::kNotFound;
}

}  // namespace

int FuzzGguf(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto parsed = model::GgufReader::Parse(bytes, "fuzz.gguf");
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == StatusCode::kCorruption,
               parsed.status().ToString());
    FUZZ_CHECK(!parsed.status().message().empty(), "error without a message");
    return 0;
  }
  for (const model::GgufTensorInfo& t : parsed->tensors()) {
    if (t.numel() > (int64_t{1} << 22)) continue;  // bounded work per input
    auto tensor = parsed->ReadTensor(t);
    if (!tensor.ok()) {
      FUZZ_CHECK(tensor.status().code() == StatusCode::kUnimplemented,
                 tensor.status().ToString());
      continue;
    }
    FUZZ_CHECK(
        tensor->numel() == t.numel() && tensor->sizes().vec() == t.Shape(),
        t.name + ": read shape differs from the info");
  }

  static ScratchFile file("-model.gguf");  // removed at exit
  file.Write(bytes);
  auto loaded = model::LoadGgufModel(file.path());
  if (!loaded.ok()) {
    FUZZ_CHECK(GgufExpectedCode(loaded.status().code()) ||
                   loaded.status().code() == StatusCode::kInternal,
               loaded.status().ToString());
  } else {
    const Status valid = (*loaded)->Validate();
    FUZZ_CHECK(valid.ok(), valid.ToString());
    for (const auto& [name, t] : (*loaded)->tensors) {
      FUZZ_CHECK(!t.requires_grad(), name + " requires grad");
    }
  }
  auto tokenizer = model::LoadTokenizer(file.path());
  if (!tokenizer.ok()) {
    FUZZ_CHECK(GgufExpectedCode(tokenizer.status().code()),
               tokenizer.status().ToString());
  } else {
    const std::vector<int64_t> ids = (*tokenizer)->Encode("Once upon", true);
    for (int64_t id : ids) {
      FUZZ_CHECK(id >= 0 && id < (*tokenizer)->vocab_size(), "id out of range");
    }
    (void)(*tokenizer)->Decode(ids);
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
