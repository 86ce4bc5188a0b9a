// The models `fedpeft serve` answers with: one frozen base in memory and any
// number of adapters on it, by name (from PEFT exports or coordinator
// checkpoints), plus the base alone under serve.base_name.
//
// Each generation runs on a model instance of its adapter: a LlamaModel
// over the one shared base with that adapter's LoRA/bottleneck modules.
// Instances are made on demand from the adapter's tensors held in memory
// and reused, so serve.parallel generations run at once, of any mix of
// adapters (also several of one adapter), while the base is held once.
// Requests beyond serve.parallel wait in arrival order; beyond
// serve.max_waiting of those the request is refused (Unavailable -> 503).
// Requests are not batched into one forward pass (docs/design.md).
//
// Prompts: /v1/completions encodes the prompt as `fedpeft generate` does
// (with the tokenizer's BOS); /v1/chat/completions renders the messages
// with the model's chat template and a generation prompt
// (data/chat_template.h) and stops at the template's end-of-turn token;
// for a model without a template (alpaca) a chat is one user message laid
// out as the alpaca instruction prompt.
//
// Thread-safety: Models, Check and Complete are thread-safe.
#ifndef FEDPEFT_SERVE_ENGINE_H_
#define FEDPEFT_SERVE_ENGINE_H_

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "peft/peft_io.h"
#include "serve/openai_api.h"
#include "serve/serve_config.h"
#include "serve/text_stream.h"

namespace fedpeft {
namespace serve {

// An adapter folder (adapter_config.json) or a coordinator checkpoint (its
// latest round); `what` describes it for the log. Errors name the folder.
StatusOr<peft::SavedAdapter> LoadServedAdapter(const std::string& dir,
                                               std::string* what);
// "lora r=8 rslora", for the log.
std::string DescribeAdapter(const peft::PeftOptions& options);

// The prompt's ids for `request` (see above) and the ids that end the
// answer; InvalidArgument naming prompt/messages for a prompt that cannot
// be rendered or leaves no room in `context`.
Status BuildPrompt(const CompletionRequest& request,
                   const model::Tokenizer& tokenizer, data::ChatFamily family,
                   int64_t context, std::vector<int64_t>* ids,
                   std::vector<int64_t>* stop_ids);

// serve.parallel generations at once, serve.max_waiting more in line
// (arrival order), the rest refused with Unavailable (503).
class Admission {
 public:
  // Held while a generation runs; leaving frees its place.
  class Ticket {
   public:
    Ticket(Ticket&& other) noexcept : owner_(other.owner_) {
      other.owner_ = nullptr;
    }
    Ticket& operator=(Ticket&&) = delete;
    ~Ticket() {
      if (owner_ != nullptr) owner_->Leave();
    }

   private:
    friend class Admission;
    explicit Ticket(Admission* owner) : owner_(owner) {}
    Admission* owner_;
  };

  void Configure(int parallel, int max_waiting);
  // Waits for a place, or Unavailable at once when the line is full.
  StatusOr<Ticket> Enter();

 private:
  void Leave();
  std::mutex mu_;
  std::condition_variable turn_;
  int parallel_ = 1;     // GUARDED_BY(mu_)
  int max_waiting_ = 0;  // GUARDED_BY(mu_)
  int running_ = 0;      // GUARDED_BY(mu_)
  int waiting_ = 0;      // GUARDED_BY(mu_)
};

// The text of an answer as its tokens arrive: streamed pieces to the
// client (serve/text_stream.h: whole characters, stop strings cut), and
// the result's text, counts and finish reason at the end.
class AnswerStream {
 public:
  AnswerStream(const CompletionRequest& request,
               const model::Tokenizer& tokenizer,
               const Backend::DeltaCallback& on_delta);
  // Takes a new token; false when the answer is complete (a stop string)
  // or the client went away.
  bool Add(int64_t id);
  bool client_gone() const { return gone_; }
  // Flushes what is held back and fills `result`.
  void Finish(int64_t prompt_tokens, int64_t context, CompletionResult* result);

 private:
  const CompletionRequest& request_;
  const model::Tokenizer& tokenizer_;
  const Backend::DeltaCallback& on_delta_;
  TextStream stream_;
  std::vector<int64_t> answer_;
  bool gone_ = false;
};

class Engine : public Backend {
 public:
  // The base as loaded by the caller (weights on the CPU, its tokenizer);
  // `model_path`/`tokenizer_path` locate tokenizer_config.json for the chat
  // template. Loads and checks every adapter of `options.adapters` against
  // the base (errors name the adapter, its folder and the tensor).
  static StatusOr<std::unique_ptr<Engine>> Create(
      const ServeConfig& config,
      std::shared_ptr<const model::LlamaWeights> weights,
      std::unique_ptr<model::Tokenizer> tokenizer);
  ~Engine() override;

  std::vector<std::string> Models() const override;
  Status Check(const CompletionRequest& request) const override;
  Status Complete(const CompletionRequest& request,
                  const DeltaCallback& on_delta,
                  CompletionResult* result) override;

  // One line per model for the start-up log.
  std::vector<std::string> Describe() const;
  data::ChatFamily chat_family() const { return family_; }

 private:
  struct Served;
  struct Instance;
  Engine() = default;
  StatusOr<const Served*> Find(const std::string& name) const;
  StatusOr<std::unique_ptr<Instance>> Take(const Served& served);
  void Give(const Served& served, std::unique_ptr<Instance> instance);

  std::shared_ptr<const model::LlamaWeights> weights_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  torch::Device device_{torch::kCPU};
  data::ChatFamily family_ = data::ChatFamily::kAlpaca;
  std::map<std::string, std::unique_ptr<Served>> served_;
  Admission admission_;
};

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_ENGINE_H_
