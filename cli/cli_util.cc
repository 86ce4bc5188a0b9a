#include "cli/cli_util.h"

#include <pthread.h>
#include <signal.h>

#include <iostream>

#include "common/logging.h"

namespace fedpeft {
namespace cli {

namespace po = boost::program_options;

bool ParseArgs(const std::string& command, const std::string& synopsis,
               const po::options_description& desc, const Args& args,
               po::variables_map* vm, int* exit_code) {
  try {
    po::store(po::command_line_parser(args).options(desc).run(), *vm);
    if (vm->count("help")) {
      std::cout << "usage: fedpeft " << command << " " << synopsis << "\n\n"
                << desc << "\n";
      *exit_code = kExitOk;
      return false;
    }
    po::notify(*vm);
  } catch (const po::error& e) {
    std::cerr << "fedpeft " << command << ": " << e.what() << "\n"
              << "usage: fedpeft " << command << " " << synopsis
              << "   (--help for all options)\n";
    *exit_code = kExitUsage;
    return false;
  }
  return true;
}

bool ParseConfigArgs(const std::string& command, const Args& args,
                     const std::string& config_help,
                     const std::string& set_help, std::string* config_path,
                     std::vector<std::string>* overrides, int* exit_code) {
  namespace po = boost::program_options;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "config", po::value(config_path)->required(), config_help.c_str())(
      "set", po::value(overrides)->composing(), set_help.c_str());
  po::variables_map vm;
  return ParseArgs(command, "--config FILE [--set key=value ...]", desc, args,
                   &vm, exit_code);
}

int Fail(const std::string& command, const Status& status) {
  std::cerr << "fedpeft " << command << ": error: " << status.message() << "\n";
  return kExitFailure;
}

Status SetUpLogging(const std::string& level, const std::string& file) {
  ASSIGN_OR_RETURN(LogLevel parsed, ParseLogLevel(level));
  SetLogLevel(parsed);
  if (!file.empty()) RETURN_IF_ERROR(AddLogFile(file));
  return Status::Ok();
}

StatusOr<std::unique_ptr<model::Tokenizer>> LoadModelTokenizer(
    const std::string& model_path, const std::string& tokenizer_path,
    int64_t vocab_size) {
  std::string tok = tokenizer_path;
  if (tok.empty()) {
    ASSIGN_OR_RETURN(tok, model::FindTokenizerForModel(model_path, vocab_size));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer,
                   model::LoadTokenizer(tok, vocab_size));
  // Models trained with a tokenizer.json pad their embedding beyond the
  // tokenizer's ids (Qwen3: 151,669 tokens, 151,936 rows): fewer tokens
  // than rows is fine there; SentencePiece and llama2.c must match.
  const int64_t tokens = tokenizer->vocab_size();
  const bool padded_ok = tok.size() >= 5 &&
                         tok.compare(tok.size() - 5, 5, ".json") == 0 &&
                         tokens < vocab_size;
  if (tokens != vocab_size && !padded_ok) {
    return Status::InvalidArgument(
        "tokenizer '" + tok + "' has " + std::to_string(tokens) +
        " tokens but the model '" + model_path + "' expects " +
        std::to_string(vocab_size) + " (maybe the wrong --tokenizer?)");
  }
  return tokenizer;
}

StatusOr<LoadedBase> LoadBase(const std::string& model_path,
                              const std::string& tokenizer_path,
                              const model::LoadOptions& options) {
  LoadedBase base;
  ASSIGN_OR_RETURN(base.weights, model::LoadModel(model_path, options));
  ASSIGN_OR_RETURN(base.tokenizer,
                   LoadModelTokenizer(model_path, tokenizer_path,
                                      base.weights->config.vocab_size));
  return base;
}

SignalWatcher::SignalWatcher(std::function<void()> on_signal) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);  // used by the destructor to wake the thread
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  thread_ = std::thread([set, on_signal, this] {
    int sig = 0;
    while (sigwait(&set, &sig) == 0) {
      if (sig == SIGUSR1 && done_) return;
      if (sig == SIGINT || sig == SIGTERM) {
        FP_LOG_WARN("cli", "signal {}: shutting down", sig);
        on_signal();
      }
    }
  });
}

SignalWatcher::~SignalWatcher() {
  done_ = true;
  pthread_kill(thread_.native_handle(), SIGUSR1);
  thread_.join();
}

}  // namespace cli
}  // namespace fedpeft
