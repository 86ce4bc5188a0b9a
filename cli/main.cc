// fedpeft: federated parameter-efficient fine-tuning of LLMs.
// A thin dispatcher over the subcommands in cli/commands.h; no exception
// leaves main().
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "cli/commands.h"

namespace {

constexpr const char* kUsage =
    "usage: fedpeft <command> [options]   (fedpeft <command> --help)\n"
    "\n"
    "commands:\n"
    "  train     centralized LoRA / adapter fine-tuning from a YAML config\n"
    "  eval      eval loss and perplexity of a model (+ adapter) on data\n"
    "  generate  text from a model (+ adapter), greedy at temperature 0\n"
    "  export    write an adapter (or a checkpoint's global adapter) in PEFT\n"
    "            or GGUF format, or a merged model\n"
    "  tokenize  the token ids of a text (tokenizer.json, tokenizer.model,\n"
    "            llama2.c .bin) as a JSON array\n"
    "  init-model  a random-weight checkpoint from a config.json, full size\n"
    "            or shrunk (--layers, --hidden, ...) for tests\n"
    "  serve     a base and its adapters by name behind an OpenAI-compatible\n"
    "            HTTP API (--config YAML)\n"
    "\n"
    "federated:\n"
    "  coordinator  schedule rounds, aggregate, checkpoint (--config YAML)\n"
    "  edge         aggregate a group of workers for the coordinator\n"
    "               (--config YAML)\n"
    "  worker       train on local data for a coordinator or edge\n"
    "               (--config YAML)\n"
    "  executor     host many virtual users of a federation: 10^4 users\n"
    "               on one machine, or spread over several (--config YAML)\n"
    "  simulate     a whole federation on this machine (the quickstart)\n"
    "  status       the live state of a running coordinator\n"
    "\n"
    "security:\n"
    "  certs     a CA and certificates for mutual TLS (certs init | issue)\n"
    "\n"
    "privacy:\n"
    "  privacy   epsilon of DP-FedAvg (RDP accountant) for a noise\n"
    "            multiplier, or the noise multiplier for a target epsilon\n";

struct Command {
  const char* name;
  int (*run)(const fedpeft::cli::Args&);
};

constexpr Command kCommands[] = {
    {"train", fedpeft::cli::RunTrain},
    {"eval", fedpeft::cli::RunEval},
    {"generate", fedpeft::cli::RunGenerate},
    {"export", fedpeft::cli::RunExport},
    {"tokenize", fedpeft::cli::RunTokenize},
    {"serve", fedpeft::cli::RunServe},
    {"init-model", fedpeft::cli::RunInitModel},
    {"coordinator", fedpeft::cli::RunCoordinator},
    {"worker", fedpeft::cli::RunWorker},
    {"executor", fedpeft::cli::RunExecutor},
    {"edge", fedpeft::cli::RunEdge},
    {"simulate", fedpeft::cli::RunSimulate},
    {"status", fedpeft::cli::RunStatus},
    {"privacy", fedpeft::cli::RunPrivacy},
    {"certs", fedpeft::cli::RunCerts},
};

}  // namespace

// LibTorch runs elementwise ops on an OpenMP pool and matmuls on OpenBLAS's
// own pool; with OpenMP's default active waiting, the idle pool spins on the
// cores the busy one needs (measured: a 2-thread LoRA step 3x slower, see
// bench/README.md). libgomp reads OMP_WAIT_POLICY before main(), so when it
// is unset, set it and re-execute once. An explicit value is respected.
void EnsurePassiveOpenMpWait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  // execv failed: go on with the default policy.
}

int main(int argc, char** argv) {
  EnsurePassiveOpenMpWait(argv);
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 ||
      std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  fedpeft::cli::Args args(argv + 2, argv + argc);
  for (const Command& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.run(args);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fedpeft %s: error: %s\n", name.c_str(), e.what());
      return 1;
    } catch (...) {
      std::fprintf(stderr, "fedpeft %s: error: unknown exception\n",
                   name.c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "fedpeft: unknown command '%s'\n\n%s", name.c_str(),
               kUsage);
  return 2;
}
