// Tokenizer throughput: MB of text per second that Encode() turns into ids,
// on one core, for a Hugging Face tokenizer.json (default: Qwen3's) or any
// tokenizer LoadTokenizer reads.
//
//   fedpeft_bench_tokenizer                  # Qwen3 on tiny-shakespeare
//   fedpeft_bench_tokenizer --tokenizer
//   build/third_party_tokenizers/llama3/tokenizer.json
//       --text FILE --repeats 9
//
// Prints, for the whole text encoded in one call:
//   cold  the first Encode after loading (the word cache empty);
//   warm  the median of `repeats` further runs (the cache filled).
// Every run must give the same ids; the load time is printed apart.
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "common/file_util.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace bench {
namespace {

int Run(int argc, char** argv) {
  std::string source = FEDPEFT_SOURCE_DIR;
  std::string tokenizer_path =
      source + "/../shared/assets/tokenizers/qwen3/tokenizer.json";
  std::string text_path = source + "/assets/data/tinyshakespeare/input.txt";
  int repeats = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--tokenizer" && has_value) {
      tokenizer_path = argv[++i];
    } else if (arg == "--text" && has_value) {
      text_path = argv[++i];
    } else if (arg == "--repeats" && has_value) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: fedpeft_bench_tokenizer [--tokenizer PATH] "
                   "[--text FILE] [--repeats N]\n");
      return 2;
    }
  }
  auto text = ReadFileToString(text_path, 1ull << 30);
  if (!text.ok()) {
    std::fprintf(stderr, "%s\n", text.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<model::Tokenizer> tok;
  const double load = Seconds([&] {
    auto loaded = model::LoadTokenizer(tokenizer_path);
    if (loaded.ok())
      tok = std::move(loaded).value();
    else
      std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
  });
  if (!tok) return 1;
  const double mb = static_cast<double>(text->size()) / 1e6;
  std::vector<int64_t> first;
  const double cold = Seconds([&] { first = tok->Encode(*text, false); });
  std::vector<double> warm;
  for (int r = 0; r < repeats; ++r) {
    std::vector<int64_t> ids;
    warm.push_back(Seconds([&] { ids = tok->Encode(*text, false); }));
    if (ids != first) {
      std::fprintf(stderr, "run %d gave different ids\n", r);
      return 1;
    }
  }
  std::printf("%s\n", MachineSummary().c_str());
  std::printf("tokenizer %s (loaded in %.2f s)\n", tokenizer_path.c_str(),
              load);
  std::printf("text %s: %.2f MB -> %zu ids (%.2f bytes/id)\n",
              text_path.c_str(), mb, first.size(),
              static_cast<double>(text->size()) / first.size());
  std::printf("cold (empty word cache): %.2f MB/s\n", mb / cold);
  std::printf("warm (median of %d): %.2f MB/s\n", repeats, mb / Median(warm));
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace fedpeft

int main(int argc, char** argv) { return fedpeft::bench::Run(argc, argv); }
