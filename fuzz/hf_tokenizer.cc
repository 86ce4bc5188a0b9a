// Fuzz target: model::HfTokenizer::Parse on tokenizer.json text (every
// component parser: BPE vocab and merges, normalizers, pre-tokenizers with
// PCRE2 regexes, decoders, post-processors, added tokens), then Encode and
// Decode on what loads.
//
// Input: the tokenizer.json text, then a NUL byte, then the text to encode
// (a built-in text when there is no NUL).
#include "model/hf_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"

namespace fedpeft {
namespace fuzz {

int FuzzHfTokenizer(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string json = input.substr(0, nul);
  // Spaces, newlines, digits, a space mark, multi-byte and invalid UTF-8,
  // would-be added and byte tokens.
  const std::string text =
      nul == std::string::npos
          ? std::string(
                "Hello  world\n\n123456 it's \xE2\x96\x81x caf\xC3\xA9 "
                "\xF0\x9F\x98\x80 <s><|endoftext|> <0x41> \xFF\x80")
          : input.substr(nul + 1);

  auto loaded = model::HfTokenizer::Parse(json, "fuzz.json");
  if (!loaded.ok()) {
    FUZZ_CHECK(!loaded.status().message().empty(), "error without a message");
    return 0;
  }
  const model::HfTokenizer& tok = **loaded;
  const int64_t n = tok.vocab_size();
  FUZZ_CHECK(n >= 0, "negative vocabulary size");
  for (int64_t id : {tok.bos_id(), tok.eos_id(), tok.pad_id()}) {
    FUZZ_CHECK(id >= -1 && id < std::max<int64_t>(n, 1),
               "special id " + std::to_string(id) + " out of range");
  }
  for (bool special : {false, true}) {
    const std::vector<int64_t> ids = tok.Encode(text, special);
    for (int64_t id : ids) {
      FUZZ_CHECK(id >= 0 && id < n, "Encode gave id " + std::to_string(id) +
                                        " of a vocabulary of " +
                                        std::to_string(n));
    }
    std::vector<int64_t> odd = ids;
    odd.insert(odd.end(), {-1, n, n - 1, 0, INT64_MAX, INT64_MIN});
    (void)tok.Decode(odd, false);
    (void)tok.Decode(odd);
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
