// tokenizer.json against Hugging Face's own ids: the fixtures in
// tests/reference/tokenizers/ were written by tokenizers.js (see
// tests/reference/tokenizer_fixtures.mjs), not by this code.
#include "model/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "tests/test_paths.h"

namespace fedpeft {
namespace model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kQwen3Dir = kSource + "/../shared/assets/tokenizers/qwen3";
const std::string kFixtures = kSource + "/tests/reference/tokenizers/";

// Where scripts/fetch_tokenizers.sh put the tokenizers we may not ship.
std::string TokenizerCache() {
  const char* env = std::getenv("FEDPEFT_TOKENIZER_CACHE");
  return env != nullptr && *env ? env : FEDPEFT_TOKENIZER_CACHE_DIR;
}

std::string TokenizerPath(const std::string& name) {
  if (name == "qwen3") return kQwen3Dir + "/tokenizer.json";
  return TokenizerCache() + "/" + name + "/tokenizer.json";
}

// Loaded once per process: the Qwen3 file is 11 MB of JSON.
const HfTokenizer* Cached(const std::string& name) {
  static std::map<std::string, std::unique_ptr<HfTokenizer>> loaded;
  auto it = loaded.find(name);
  if (it != loaded.end()) return it->second.get();
  auto tok = LoadHfTokenizer(TokenizerPath(name));
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  if (!tok.ok()) return nullptr;
  return (loaded[name] = std::move(tok).value()).get();
}

std::string Show(const std::vector<int64_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    s += (i ? "," : "") + std::to_string(ids[i]);
  }
  return s + "]";
}

void ExpectMatchesFixture(const std::string& name) {
  if (!fs::exists(TokenizerPath(name))) {
    GTEST_SKIP() << TokenizerPath(name)
                 << " is missing: its license keeps it out of the repository; "
                    "run scripts/fetch_tokenizers.sh (or set "
                    "FEDPEFT_TOKENIZER_CACHE)";
  }
  const HfTokenizer* tok = Cached(name);
  ASSERT_NE(tok, nullptr);
  auto text = ReadFileToString(kFixtures + name + "_ids.json");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const json fixture = json::parse(*text);
  const json& cases = fixture["cases"];
  ASSERT_GT(cases.size(), 100u);
  int failures = 0;
  for (const json& c : cases) {
    const std::string input = c["text"].get<std::string>();
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    const auto ids_special = c["ids_special"].get<std::vector<int64_t>>();
    const std::string decoded = c["decoded"].get<std::string>();
    const std::vector<int64_t> got = tok->Encode(input, false);
    const std::vector<int64_t> got_special = tok->Encode(input, true);
    const std::string got_decoded = tok->Decode(ids, false);
    const bool ok =
        got == ids && got_special == ids_special && got_decoded == decoded;
    if (!ok && ++failures <= 5) {
      ADD_FAILURE() << name << " text " << json(input).dump() << "\n  want "
                    << Show(ids) << "\n  got  " << Show(got)
                    << "\n  want special " << Show(ids_special)
                    << "\n  got special  " << Show(got_special)
                    << "\n  want decoded " << json(decoded).dump()
                    << "\n  got decoded  " << json(got_decoded).dump();
    }
  }
  EXPECT_EQ(failures, 0) << "of " << cases.size() << " cases ("
                         << fixture["generator"].get<std::string>() << ")";

  // All of tiny-shakespeare in one call (SentencePiece-style files encode
  // it as one word, in chunks): the count and hash of the reference's ids.
  auto whole =
      ReadFileToString(kSource + "/assets/data/tinyshakespeare/input.txt");
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  const std::vector<int64_t> ids = tok->Encode(*whole, false);
  std::string joined;
  for (size_t i = 0; i < ids.size(); ++i) {
    joined += (i ? "," : "") + std::to_string(ids[i]);
  }
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a 64, as the fixture script
  for (unsigned char c : joined) hash = (hash ^ c) * 0x100000001b3ull;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(hash));
  EXPECT_EQ(ids.size(), fixture["shakespeare"]["ids_count"].get<size_t>());
  EXPECT_EQ(hex, fixture["shakespeare"]["ids_fnv1a64"].get<std::string>());
}

TEST(HfTokenizerTest, Qwen3MatchesReference) { ExpectMatchesFixture("qwen3"); }
TEST(HfTokenizerTest, Llama3MatchesReference) {
  ExpectMatchesFixture("llama3");
}
TEST(HfTokenizerTest, SentencePieceJsonMatchesReference) {
  ExpectMatchesFixture("llama2");
}

TEST(HfTokenizerTest, Qwen3RoundTripsShakespeare) {
  const HfTokenizer* tok = Cached("qwen3");
  ASSERT_NE(tok, nullptr);
  auto text =
      ReadFileToString(kSource + "/assets/data/tinyshakespeare/input.txt");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const std::vector<int64_t> ids = tok->Encode(*text, false);
  EXPECT_GT(ids.size(), text->size() / 6);
  EXPECT_EQ(tok->Decode(ids, false), *text);
}

TEST(HfTokenizerTest, Qwen3SpecialTokens) {
  const HfTokenizer* tok = Cached("qwen3");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->TokenToId("<|im_start|>"), 151644);
  EXPECT_EQ(tok->TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(tok->TokenToId("<|endoftext|>"), 151643);
  EXPECT_EQ(tok->TokenToId("no such token"), -1);
  // From tokenizer_config.json: no BOS, EOS <|im_end|>, pad <|endoftext|>.
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->eos_id(), 151645);
  EXPECT_EQ(tok->pad_id(), 151643);
  EXPECT_EQ(tok->vocab_size(), 151669);
  // Qwen3's post-processor adds nothing; the old interface adds EOS.
  EXPECT_EQ(tok->Encode("hi", true), tok->Encode("hi", false));
  const std::vector<int64_t> with_eos = tok->Encode("hi", true, true);
  EXPECT_EQ(with_eos.back(), 151645);
  // Decode() of the Tokenizer interface drops special tokens.
  EXPECT_EQ(tok->Decode(tok->Encode("<|im_start|>user\nhi<|im_end|>", false)),
            "user\nhi");
}

TEST(HfTokenizerTest, InvalidUtf8IsReplacedByU_FFFD) {
  const HfTokenizer* tok = Cached("qwen3");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode(std::string("a\xFF"
                                    "b\xE2\x82",
                                    5),
                        false),
            tok->Encode("a\xEF\xBF\xBD"
                        "b\xEF\xBF\xBD",
                        false));
  // One U+FFFD per maximal invalid subsequence (E0 80: two).
  EXPECT_EQ(tok->Encode(std::string("\xE0\x80x"), false),
            tok->Encode("\xEF\xBF\xBD\xEF\xBF\xBDx", false));
}

TEST(HfTokenizerTest, LoadTokenizerAndFindDispatchToJson) {
  auto tok = LoadTokenizer(kQwen3Dir + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->TokenToId("<|im_start|>"), 151644);
  auto found = FindTokenizerForModel(kQwen3Dir, 151936);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(*found, kQwen3Dir + "/tokenizer.json");
}

// A tiny byte-level-free BPE over "a", "b", "c", to test the parts alone.
json TinyTokenizer() {
  return json::parse(R"({
    "version": "1.0",
    "added_tokens": [
      {"id": 5, "content": "<x>", "special": true, "lstrip": false,
       "rstrip": false, "single_word": false, "normalized": false},
      {"id": 6, "content": "<y>", "special": false, "lstrip": true,
       "rstrip": true, "single_word": false, "normalized": false}
    ],
    "normalizer": null,
    "pre_tokenizer": {"type": "WhitespaceSplit"},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<x>": {"id": "<x>", "ids": [5],
                                               "tokens": ["<x>"]}}},
    "decoder": {"type": "Fuse"},
    "model": {"type": "BPE", "unk_token": "?", "fuse_unk": true,
              "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "?": 7},
              "merges": ["a b", "ab c"]}
  })");
}

StatusOr<std::unique_ptr<HfTokenizer>> ParseJson(const json& j) {
  return HfTokenizer::Parse(j.dump(), "tiny.json");
}

TEST(HfTokenizerTest, MergesInBothEncodingsAndAddedTokens) {
  json strings = TinyTokenizer();
  json pairs = strings;
  pairs["model"]["merges"] = json::parse(R"([["a", "b"], ["ab", "c"]])");
  for (const json& spec : {strings, pairs}) {
    auto tok = ParseJson(spec);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    EXPECT_EQ((*tok)->Encode("abc ab ca", false),
              (std::vector<int64_t>{4, 3, 2, 0}));
    EXPECT_EQ((*tok)->Encode("abc", true), (std::vector<int64_t>{5, 4}));
    EXPECT_EQ((*tok)->bos_id(), 5);  // from the template
    // Unknown characters fuse into one unk; <y> swallows the spaces
    // around it (lstrip/rstrip); <x> is found inside a word.
    EXPECT_EQ((*tok)->Encode("zzab  <y>  c<x>a", false),
              (std::vector<int64_t>{7, 3, 6, 2, 5, 0}));
    EXPECT_EQ((*tok)->Decode({5, 4, 6, 0}, false), "<x>abc<y>a");
    EXPECT_EQ((*tok)->Decode({5, 4, 6, 0}), "abc<y>a");
  }
}

Status ParseError(const json& j) {
  auto tok = ParseJson(j);
  return tok.ok() ? Status::Ok() : tok.status();
}

void ExpectErrorHas(const Status& s, const std::vector<std::string>& parts) {
  ASSERT_FALSE(s.ok());
  for (const std::string& part : parts) {
    EXPECT_NE(s.message().find(part), std::string::npos)
        << "missing \"" << part << "\" in: " << s.ToString();
  }
}

TEST(HfTokenizerTest, RejectsUnknownComponentsByName) {
  json j = TinyTokenizer();
  j["pre_tokenizer"] = {{"type", "Whatever"}};
  ExpectErrorHas(ParseError(j),
                 {"tiny.json: pre_tokenizer.type \"Whatever\" is not "
                  "supported (supported: ByteLevel, Split"});
  j = TinyTokenizer();
  j["pre_tokenizer"] = json::parse(
      R"({"type": "Sequence", "pretokenizers": [{"type": "Punctuation"}]})");
  ExpectErrorHas(ParseError(j), {"pre_tokenizer.pretokenizers[0].type "
                                 "\"Punctuation\" is not supported"});
  j = TinyTokenizer();
  j["normalizer"] = {{"type", "BertNormalizer"}};
  ExpectErrorHas(ParseError(j), {"normalizer.type \"BertNormalizer\"", "NFC"});
  j = TinyTokenizer();
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectErrorHas(ParseError(j), {"decoder.type \"WordPiece\"", "ByteLevel"});
  j = TinyTokenizer();
  j["post_processor"] = {{"type", "Nope"}};
  ExpectErrorHas(ParseError(j), {"post_processor.type \"Nope\""});
  j = TinyTokenizer();
  j["model"]["type"] = "Unigram";
  ExpectErrorHas(ParseError(j), {"model.type \"Unigram\"", "BPE"});
}

TEST(HfTokenizerTest, RejectsBadRegexWithPcre2Message) {
  json j = TinyTokenizer();
  j["pre_tokenizer"] = json::parse(
      R"({"type": "Split", "pattern": {"Regex": "(?<x"}, "behavior": "Isolated",
          "invert": false})");
  ExpectErrorHas(ParseError(j), {"tiny.json: pre_tokenizer.pattern",
                                 "regex \"(?<x\"", "at offset"});
}

TEST(HfTokenizerTest, RejectsBadMergesAndVocab) {
  json j = TinyTokenizer();
  j["model"]["merges"] = json::parse(R"(["a b", "c q"])");
  ExpectErrorHas(ParseError(j),
                 {"model.merges[1]", "token \"q\" is not in the vocabulary"});
  j = TinyTokenizer();
  j["model"]["merges"] = json::parse(R"(["b c"])");  // "bc" is no token
  ExpectErrorHas(ParseError(j), {"model.merges[0]", "\"bc\""});
  j = TinyTokenizer();
  j["model"]["merges"] = json::parse(R"(["abc"])");
  ExpectErrorHas(ParseError(j), {"model.merges[0] \"abc\""});
  j = TinyTokenizer();
  j["model"]["vocab"]["d"] = -4;
  ExpectErrorHas(ParseError(j), {"model.vocab[\"d\"]"});
  j = TinyTokenizer();
  j["model"]["unk_token"] = "<nope>";
  ExpectErrorHas(ParseError(j), {"model.unk_token \"<nope>\""});
  j = TinyTokenizer();
  j["model"]["dropout"] = 0.1;
  ExpectErrorHas(ParseError(j), {"model.dropout"});
  ExpectErrorHas(HfTokenizer::Parse("{not json", "tiny.json").status(),
                 {"tiny.json: not valid JSON"});
}

TEST(HfTokenizerTest, MissingFileNamesIt) {
  auto tok = LoadTokenizer("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("/nonexistent/dir/tokenizer.json"),
            std::string::npos)
      << tok.status().ToString();
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
