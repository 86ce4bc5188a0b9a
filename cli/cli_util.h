// Helpers shared by the fedpeft subcommands: argument parsing with
// uniform usage errors, one error format, logging set-up, loading a base
// model with its tokenizer.
#ifndef FEDPEFT_CLI_CLI_UTIL_H_
#define FEDPEFT_CLI_CLI_UTIL_H_

#include <atomic>
#include <boost/program_options.hpp>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "common/status.h"
#include "model/llama.h"
#include "model/loader.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace cli {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// Parses `args` against `desc`. On --help prints `synopsis` and the options
// and sets *exit_code = 0; on a usage error prints it and sets 2. Returns
// true when the command should go on.
bool ParseArgs(const std::string& command, const std::string& synopsis,
               const boost::program_options::options_description& desc,
               const Args& args, boost::program_options::variables_map* vm,
               int* exit_code);

// ParseArgs for the commands that take `--config FILE [--set key=value
// ...]`: `config_help` and `set_help` describe the two options.
bool ParseConfigArgs(const std::string& command, const Args& args,
                     const std::string& config_help,
                     const std::string& set_help, std::string* config_path,
                     std::vector<std::string>* overrides, int* exit_code);

// Prints "fedpeft <command>: error: <message>" and returns 1.
int Fail(const std::string& command, const Status& status);

// Sets the log level and adds a log file when `file` is not empty.
Status SetUpLogging(const std::string& level, const std::string& file);

// Blocks SIGINT/SIGTERM in every thread started after it and calls
// `on_signal` from a dedicated thread when one arrives, so shutdown runs as
// ordinary code.
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void()> on_signal);
  ~SignalWatcher();

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

struct LoadedBase {
  std::shared_ptr<const model::LlamaWeights> weights;
  std::unique_ptr<model::Tokenizer> tokenizer;
};

// Loads the tokenizer of the model at `model_path` with `vocab_size`
// embedding rows (`tokenizer_path` overrides the one found beside it) and
// checks that the vocabularies agree.
StatusOr<std::unique_ptr<model::Tokenizer>> LoadModelTokenizer(
    const std::string& model_path, const std::string& tokenizer_path,
    int64_t vocab_size);

// Loads the base model and its tokenizer (`tokenizer_path` overrides the
// one found beside the model) and checks that their vocabularies agree.
StatusOr<LoadedBase> LoadBase(const std::string& model_path,
                              const std::string& tokenizer_path,
                              const model::LoadOptions& options);

}  // namespace cli
}  // namespace fedpeft

#endif  // FEDPEFT_CLI_CLI_UTIL_H_
