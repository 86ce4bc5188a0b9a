// `fedpeft tokenize`: the ids a tokenizer gives a text, as fine-tuning data
// would get them -- the tool to reach for when a fine-tune's data looks
// wrong. The ids go to stdout as one JSON array on the last line; a line
// naming the tokenizer and counting the ids goes to stderr.
#include <boost/program_options.hpp>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/file_util.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace cli {
namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;

constexpr const char* kSynopsis =
    "--tokenizer PATH (--text T | --file F) [--no-special]";

// Largest --file read; tokenizing more at once is not what this tool is for.
constexpr uint64_t kMaxTextFileBytes = 64ull << 20;

// The vocabulary size in a llama2.c tokenizer's name, "tok512.bin" -> 512.
int64_t VocabFromLlama2cName(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  if (name.size() <= 7 || name.compare(0, 3, "tok") != 0 ||
      name.compare(name.size() - 4, 4, ".bin") != 0) {
    return 0;
  }
  const std::string digits = name.substr(3, name.size() - 7);
  if (digits.find_first_not_of("0123456789") != std::string::npos ||
      digits.size() > 9) {
    return 0;
  }
  return std::stoll(digits);
}

// The tokenizer file `path` names: itself, or the one a model folder holds
// (tokenizer.json, tokenizer.model, then a llama2.c tok<N>.bin).
StatusOr<std::string> ResolveTokenizer(const std::string& path) {
  if (!IsDirectory(path)) {
    if (!PathExists(path)) {
      return Status::NotFound("tokenizer '" + path + "' does not exist");
    }
    return path;
  }
  auto found = model::FindTokenizerForModel(path, 0);
  if (found.ok()) return found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    const std::string file = entry.path().string();
    if (VocabFromLlama2cName(file) > 0) return file;
  }
  return Status::NotFound("no tokenizer in folder '" + path +
                          "' (looked for tokenizer.json, tokenizer.model, "
                          "tok<N>.bin); hint: pass the file itself");
}

}  // namespace

int RunTokenize(const Args& args) {
  const std::string cmd = "tokenize";
  std::string tokenizer_path, text, file;
  int64_t vocab_size = 0;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "tokenizer", po::value(&tokenizer_path)->required(),
      "a Hugging Face tokenizer.json, a SentencePiece tokenizer.model, a "
      "llama2.c tok<N>.bin, or a model folder holding one (tokenizer.json "
      "first)")("text", po::value(&text), "the text to tokenize")(
      "file", po::value(&file), "tokenize this file's bytes instead")(
      "no-special",
      "no special tokens from the tokenizer's post-processor (by default "
      "they are added where it adds them: BOS for Llama-2 and Llama-3.1, "
      "none for Qwen3)")(
      "vocab-size", po::value(&vocab_size),
      "vocabulary size of a llama2.c tokenizer whose name is not "
      "tok<N>.bin");
  po::variables_map vm;
  int code = kExitOk;
  if (!ParseArgs(cmd, kSynopsis, desc, args, &vm, &code)) return code;
  if ((vm.count("text") > 0) == (vm.count("file") > 0)) {
    std::cerr << "fedpeft tokenize: give exactly one of --text and --file\n"
              << "usage: fedpeft tokenize " << kSynopsis
              << "   (--help for all options)\n";
    return kExitUsage;
  }
  if (vm.count("file")) {
    auto data = ReadFileToString(file, kMaxTextFileBytes);
    if (!data.ok()) return Fail(cmd, data.status());
    text = std::move(data).value();
  }
  auto path = ResolveTokenizer(tokenizer_path);
  if (!path.ok()) return Fail(cmd, path.status());
  if (vocab_size == 0) vocab_size = VocabFromLlama2cName(*path);
  auto tokenizer = model::LoadTokenizer(*path, vocab_size);
  if (!tokenizer.ok()) return Fail(cmd, tokenizer.status());
  const std::vector<int64_t> ids =
      (*tokenizer)->Encode(text, vm.count("no-special") == 0);
  std::cerr << "tokenizer " << *path << ": " << text.size() << " bytes -> "
            << ids.size() << " ids\n";
  std::string line = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line += ", ";
    line += std::to_string(ids[i]);
  }
  std::cout << line << "]\n";
  return kExitOk;
}

}  // namespace cli
}  // namespace fedpeft
