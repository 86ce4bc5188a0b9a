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
#include "serve/openai_api.h"
#include "serve/serve_config.h"

namespace fedpeft {
namespace serve {

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
  // The prompt's ids and the ids that end the answer.
  Status Prompt(const CompletionRequest& request, std::vector<int64_t>* ids,
                std::vector<int64_t>* stop_ids) const;
  StatusOr<const Served*> Find(const std::string& name) const;
  StatusOr<std::unique_ptr<Instance>> Take(const Served& served);
  void Give(const Served& served, std::unique_ptr<Instance> instance);

  std::shared_ptr<const model::LlamaWeights> weights_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  torch::Device device_{torch::kCPU};
  data::ChatFamily family_ = data::ChatFamily::kAlpaca;
  int parallel_ = 1;
  int max_waiting_ = 0;
  std::map<std::string, std::unique_ptr<Served>> served_;

  std::mutex mu_;
  std::condition_variable turn_;
  int running_ = 0;  // GUARDED_BY(mu_)
  int waiting_ = 0;  // GUARDED_BY(mu_)
};

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_ENGINE_H_
