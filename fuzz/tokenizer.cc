// Fuzz target: model::LoadTokenizer on a SentencePiece tokenizer.model or a
// llama2.c tokenizer .bin (through a scratch file: the loader reads paths),
// then Encode and Decode on what loads.
//
// Input: a mode byte (bit 0 clear: .model, the rest of the input is the
// file; set: .bin, then a little-endian uint16 vocabulary-size hint, then
// the file).
#include "model/tokenizer.h"

#include <string>
#include <vector>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"

namespace fedpeft {
namespace fuzz {

int FuzzTokenizer(const uint8_t* data, size_t size) {
  // Removed at exit; the loader picks the format by the file's suffix.
  static ScratchFile model_file(".model");
  static ScratchFile bin_file(".bin");
  InputReader in(data, size);
  const bool llama2c = (in.Byte() & 1) != 0;
  const int64_t vocab_hint = llama2c ? in.U16() : 0;
  ScratchFile* file = llama2c ? &bin_file : &model_file;
  file->Write(in.Rest());

  StatusOr<std::unique_ptr<model::Tokenizer>> loaded =
      model::LoadTokenizer(file->path(), vocab_hint);
  if (!loaded.ok()) {
    FUZZ_CHECK(!loaded.status().message().empty(), "error without a message");
    return 0;
  }
  const model::Tokenizer& tok = **loaded;
  const int64_t n = tok.vocab_size();
  FUZZ_CHECK(n > 0, "empty vocabulary");
  FUZZ_CHECK(tok.bos_id() >= 0 && tok.bos_id() < n, "bos out of range");
  FUZZ_CHECK(tok.eos_id() >= 0 && tok.eos_id() < n, "eos out of range");

  // Spaces, a SentencePiece space mark, multi-byte and invalid UTF-8, a
  // would-be byte token.
  const std::string text =
      "Once upon a time,  \xE2\x96\x81there was <0x41> caf\xC3\xA9 \xF0\x9F\x98"
      "\x80 \xFF\x80\n";
  const std::vector<int64_t> ids = tok.Encode(text, true, true);
  for (int64_t id : ids) {
    FUZZ_CHECK(id >= 0 && id < n, "Encode gave id " + std::to_string(id) +
                                      " of a vocabulary of " +
                                      std::to_string(n));
  }
  std::vector<int64_t> odd = ids;
  odd.insert(odd.end(), {-1, n, n - 1, 0, INT64_MAX, INT64_MIN});
  (void)tok.Decode(odd);
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
