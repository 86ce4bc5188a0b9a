#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "tests/model/llama_test_util.h"
#include "tests/test_paths.h"

namespace fedpeft {
namespace model {
namespace {

namespace fs = std::filesystem;

const std::string kSpModel = kSource + "/assets/stories260K/tokenizer.model";
const std::string kLlama2cBin =
    kSource + "/assets/stories260K-llama2c/tok512.bin";
const std::string kLlama2cModel =
    kSource + "/assets/stories260K-llama2c/stories260K.bin";

std::unique_ptr<Tokenizer> LoadTokenizerOrDie(const std::string& path,
                                              int64_t vocab = 0) {
  auto tok = LoadTokenizer(path, vocab);
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

using test::TempDir;

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadBytes(const std::string& path) {
  auto data = ReadFileToString(path);
  EXPECT_TRUE(data.ok()) << data.status().ToString();
  return data.ok() ? data.value() : std::string();
}

std::vector<std::string> ShakespeareLines(size_t count) {
  std::ifstream in(kShakespeare);
  std::vector<std::string> lines;
  std::string line;
  while (lines.size() < count && std::getline(in, line)) lines.push_back(line);
  return lines;
}

TEST(TokenizerTest, SentencePieceKnownIds) {
  auto tok = LoadTokenizerOrDie(kSpModel);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->Encode("Once upon a time", true, false),
            (std::vector<int64_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->Encode("Once upon a time", false, true),
            (std::vector<int64_t>{403, 407, 261, 378, 2}));
  EXPECT_EQ(tok->Encode("", true, true), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(tok->Decode({1, 403, 407, 261, 378, 2}), "Once upon a time");
}

TEST(TokenizerTest, Llama2cKnownIds) {
  auto tok = LoadTokenizerOrDie(kLlama2cBin, 512);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->Encode("Once upon a time", true, false),
            (std::vector<int64_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->Encode("", true, true), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(tok->Decode({1, 403, 407, 261, 378, 2}), "Once upon a time");
}

// Both tokenizers hold the same vocabulary and scores, and llama2.c's
// merge-by-score equals SentencePiece's BPE, so ids agree on real text,
// including newlines (byte fallback <0x0A>) and runs of spaces (the model
// was trained with remove_extra_whitespaces=false, so spaces are kept).
TEST(TokenizerTest, BothAgreeOnShakespeare) {
  auto sp = LoadTokenizerOrDie(kSpModel);
  auto l2c = LoadTokenizerOrDie(kLlama2cBin, 512);
  ASSERT_NE(sp, nullptr);
  ASSERT_NE(l2c, nullptr);
  const std::vector<std::string> lines = ShakespeareLines(400);
  ASSERT_EQ(lines.size(), 400u);
  std::string block;
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(sp->Encode(lines[i], true, true),
              l2c->Encode(lines[i], true, true))
        << "line " << i + 1 << ": '" << lines[i] << "'";
    block += lines[i] + "\n";
  }
  // Multi-line text as the data pipeline feeds it (whole speeches).
  EXPECT_EQ(sp->Encode(block, true, false), l2c->Encode(block, true, false));
  for (const std::string& edge :
       {std::string(" leading space"), std::string("two  spaces   three"),
        std::string("trailing space "), std::string("\n\nnewlines\n\n"),
        std::string("tab\there"), std::string(" "), std::string("\n"),
        std::string("caf\xC3\xA9 \xE2\x82\xAC 5 \xF0\x9F\x98\x80!")}) {
    EXPECT_EQ(sp->Encode(edge, true, true), l2c->Encode(edge, true, true))
        << "text '" << edge << "'";
  }
}

uint64_t Fnv1a(const std::vector<int64_t>& ids) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t id : ids) {
    h ^= static_cast<uint64_t>(id);
    h *= 1099511628211ull;
  }
  return h;
}

// Golden values produced with libsentencepiece 0.1.97 itself
// (SentencePieceProcessor::Encode on the same inputs). fedpeft reads
// tokenizer.model on its own because Debian's libsentencepiece bundles
// protobuf 3.14, which cannot share a process with LibTorch's protobuf 3.21;
// these pin our BPE to the library's output.
TEST(TokenizerTest, SentencePieceMatchesLibsentencepiece) {
  auto sp = LoadTokenizerOrDie(kSpModel);
  ASSERT_NE(sp, nullptr);
  const std::string corpus = ReadBytes(kShakespeare);
  const std::vector<int64_t> whole = sp->Encode(corpus, false, false);
  EXPECT_EQ(whole.size(), 693363u);
  EXPECT_EQ(Fnv1a(whole), 13678872240555576755ull);

  // Every line on its own (dummy prefix per line), -1 between lines.
  std::istringstream lines(corpus);
  std::string line;
  std::vector<int64_t> per_line;
  while (std::getline(lines, line)) {
    for (int64_t id : sp->Encode(line, false, false)) per_line.push_back(id);
    per_line.push_back(-1);
  }
  EXPECT_EQ(per_line.size(), 706455u);
  EXPECT_EQ(Fnv1a(per_line), 5931697591022906299ull);

  EXPECT_EQ(
      sp->Encode("Z\xC3\xBCrich, na\xC3\xAFve caf\xC3\xA9 \xF0\x9F\x98\x80 "
                 "\xE6\x97\xA5\xE6\x9C\xAC",
                 false, false),
      (std::vector<int64_t>{410, 469, 198, 191, 325, 402, 432, 297, 412, 198,
                            178, 360, 280, 412, 431, 485, 410, 243, 162, 155,
                            131, 410, 233, 154, 168, 233, 159, 175}));
  EXPECT_EQ(sp->Encode("  two  spaces\n\ttab ", false, false),
            (std::vector<int64_t>{410, 410, 259, 424, 414, 410, 262, 427, 412,
                                  331, 419, 13, 12, 413, 412, 430, 410}));
  // A literal U+2581 is SentencePiece's escaped space.
  EXPECT_EQ(sp->Encode("\xE2\x96\x81", false, false),
            (std::vector<int64_t>{410, 410}));
  EXPECT_EQ(sp->Decode({0, 403}), " \xE2\x81\x87  Once");
}

TEST(TokenizerTest, RoundTripIncludingByteFallback) {
  auto sp = LoadTokenizerOrDie(kSpModel);
  auto l2c = LoadTokenizerOrDie(kLlama2cBin, 512);
  ASSERT_NE(sp, nullptr);
  ASSERT_NE(l2c, nullptr);
  std::vector<std::string> texts = ShakespeareLines(200);
  std::string block;
  for (const std::string& line : texts) block += line + "\n";
  texts.push_back(block);
  // Non-ASCII and emoji are not in the 512-piece vocabulary: byte fallback.
  texts.push_back(
      "Z\xC3\xBCrich, na\xC3\xAFve caf\xC3\xA9 \xF0\x9F\x98\x80 "
      "\xE6\x97\xA5\xE6\x9C\xAC");
  texts.push_back("  two leading spaces and\ttabs\n");
  for (const std::string& text : texts) {
    EXPECT_EQ(sp->Decode(sp->Encode(text, true, true)), text);
    EXPECT_EQ(l2c->Decode(l2c->Encode(text, true, true)), text);
  }
  const std::vector<int64_t> emoji =
      sp->Encode("\xF0\x9F\x98\x80", false, false);
  // Dummy-prefix space, then the emoji's four bytes as byte tokens.
  EXPECT_EQ(emoji.size(), 5u);
  EXPECT_EQ(emoji.back(), 0x80 + 3);
}

TEST(TokenizerTest, FindTokenizerForModel) {
  auto hf = FindTokenizerForModel(kSource + "/assets/stories260K", 512);
  ASSERT_TRUE(hf.ok()) << hf.status().ToString();
  EXPECT_EQ(hf.value(), kSpModel);
  auto hf_file = FindTokenizerForModel(
      kSource + "/assets/stories260K/model.safetensors", 512);
  ASSERT_TRUE(hf_file.ok()) << hf_file.status().ToString();
  EXPECT_EQ(hf_file.value(), kSpModel);

  auto l2c = FindTokenizerForModel(kLlama2cModel, 512);
  ASSERT_TRUE(l2c.ok()) << l2c.status().ToString();
  EXPECT_EQ(l2c.value(), kLlama2cBin);
  auto tok = LoadTokenizerOrDie(l2c.value(), 512);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);

  TempDir dir;
  WriteBytes(dir.File("model.bin"), "x");
  auto missing = FindTokenizerForModel(dir.File("model.bin"), 512);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("--tokenizer"), std::string::npos)
      << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("tok512.bin"), std::string::npos)
      << missing.status().ToString();
}

TEST(TokenizerTest, RejectsCorruptSentencePiece) {
  TempDir dir;
  const std::string missing = dir.File("missing.model");
  auto not_found = LoadTokenizer(missing);
  ASSERT_FALSE(not_found.ok());
  EXPECT_EQ(not_found.status().code(), StatusCode::kNotFound);
  EXPECT_NE(not_found.status().message().find(missing), std::string::npos);

  const std::string good = ReadBytes(kSpModel);
  const std::string truncated = dir.File("truncated.model");
  WriteBytes(truncated, good.substr(0, good.size() / 3));
  auto bad = LoadTokenizer(truncated);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(truncated), std::string::npos)
      << bad.status().ToString();

  const std::string garbage = dir.File("garbage.model");
  WriteBytes(garbage, "this is not a protobuf \xFF\xFF\xFF\xFF");
  auto bad2 = LoadTokenizer(garbage);
  ASSERT_FALSE(bad2.ok());
  EXPECT_NE(bad2.status().message().find(garbage), std::string::npos)
      << bad2.status().ToString();
}

TEST(TokenizerTest, RejectsCorruptLlama2c) {
  TempDir dir;
  const std::string good = ReadBytes(kLlama2cBin);
  ASSERT_GT(good.size(), 100u);

  auto expect_corrupt = [](const std::string& path, int64_t vocab,
                           const std::string& needle) {
    auto tok = LoadTokenizer(path, vocab);
    ASSERT_FALSE(tok.ok()) << path;
    EXPECT_EQ(tok.status().code(), StatusCode::kCorruption)
        << tok.status().ToString();
    EXPECT_NE(tok.status().message().find(path), std::string::npos)
        << tok.status().ToString();
    EXPECT_NE(tok.status().message().find(needle), std::string::npos)
        << tok.status().ToString();
  };

  const std::string truncated = dir.File("truncated.bin");
  WriteBytes(truncated, good.substr(0, good.size() - 10));
  expect_corrupt(truncated, 512, "truncated");

  const std::string tiny = dir.File("tiny.bin");
  WriteBytes(tiny, good.substr(0, 2));
  expect_corrupt(tiny, 512, "too short");

  // Token 0 is the first record after the header: score at 4, length at 8.
  std::string negative = good;
  const int32_t minus_one = -1;
  std::memcpy(&negative[8], &minus_one, 4);
  WriteBytes(dir.File("negative.bin"), negative);
  expect_corrupt(dir.File("negative.bin"), 512, "length -1");

  std::string too_long = good;
  const int32_t max_len = 2;  // shipped pieces are up to 7 bytes
  std::memcpy(&too_long[0], &max_len, 4);
  WriteBytes(dir.File("too_long.bin"), too_long);
  expect_corrupt(dir.File("too_long.bin"), 512, "max_token_length");

  // The shipped file with the wrong vocabulary size, either way.
  expect_corrupt(kLlama2cBin, 600, "fewer tokens");
  expect_corrupt(kLlama2cBin, 500, "more tokens");
  // A vocabulary size the file cannot hold (it comes from the model's
  // config) is refused before anything is sized from it.
  expect_corrupt(kLlama2cBin, int64_t{1} << 40,
                 "too short for the model's vocabulary of 1099511627776");

  auto no_hint = LoadTokenizer(kLlama2cBin, 0);
  ASSERT_FALSE(no_hint.ok());
  EXPECT_EQ(no_hint.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_hint.status().message().find(kLlama2cBin), std::string::npos);

  auto unknown = LoadTokenizer(dir.File("vocab.txt"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("vocab.txt"), std::string::npos);
}

// A file of `size` bytes starting with `head`, the rest a hole (zeros that
// take no disk).
void WriteSparse(const std::string& path, const std::string& head,
                 uint64_t size) {
  WriteBytes(path, head);
  fs::resize_file(path, size);
}

TEST(TokenizerTest, RefusesOversizeFileUnread) {
  TempDir dir;
  for (const char* name : {"huge.model", "huge.bin"}) {
    const std::string path = dir.File(name);
    WriteSparse(path, std::string("\x01\0\0\0", 4), kMaxTokenizerFileBytes + 1);
    auto tok = LoadTokenizer(path, 512);
    ASSERT_FALSE(tok.ok()) << path;
    EXPECT_EQ(tok.status().code(), StatusCode::kInvalidArgument)
        << tok.status().ToString();
    const std::string& message = tok.status().message();
    EXPECT_NE(message.find("tokenizer: file '" + path + "' is " +
                           std::to_string(kMaxTokenizerFileBytes + 1) +
                           " bytes, more than the limit of " +
                           std::to_string(kMaxTokenizerFileBytes)),
              std::string::npos)
        << message;
  }
}

TEST(TokenizerTest, RefusesMorePiecesThanTheLimit) {
  TempDir dir;
  // SentencePiece: kMaxTokenizerPieces + 1 empty pieces, 2 bytes each
  // (field 1, length 0), ~100 bytes each in memory.
  std::string sp;
  for (int64_t i = 0; i <= kMaxTokenizerPieces; ++i) {
    sp.push_back('\x0A');
    sp.push_back('\0');
  }
  const std::string model = dir.File("many.model");
  WriteBytes(model, sp);
  auto tok = LoadTokenizer(model);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kCorruption)
      << tok.status().ToString();
  EXPECT_NE(tok.status().message().find(model), std::string::npos);
  EXPECT_NE(tok.status().message().find("more than the limit of " +
                                        std::to_string(kMaxTokenizerPieces) +
                                        " pieces"),
            std::string::npos)
      << tok.status().ToString();

  // llama2.c: max_token_length 1, then kMaxTokenizerPieces + 1 tokens of
  // score 0 and length 0 (a well-formed file) for a model that claims that
  // vocabulary.
  const std::string bin = dir.File("many.bin");
  WriteSparse(bin, std::string("\x01\0\0\0", 4),
              4 + 8 * static_cast<uint64_t>(kMaxTokenizerPieces + 1));
  auto tok2 = LoadTokenizer(bin, kMaxTokenizerPieces + 1);
  ASSERT_FALSE(tok2.ok());
  EXPECT_EQ(tok2.status().code(), StatusCode::kCorruption)
      << tok2.status().ToString();
  EXPECT_NE(tok2.status().message().find(
                "vocabulary of " + std::to_string(kMaxTokenizerPieces + 1) +
                " tokens is more than the limit of " +
                std::to_string(kMaxTokenizerPieces) + " pieces"),
            std::string::npos)
      << tok2.status().ToString();
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
