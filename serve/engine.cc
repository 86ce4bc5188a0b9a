#include "serve/engine.h"

#include <chrono>
#include <random>
#include <utility>

#include "common/file_util.h"
#include "common/logging.h"
#include "coordinator/checkpoint.h"
#include "data/dataset.h"
#include "model/generate.h"
#include "model/loader.h"
#include "peft/peft_io.h"
#include "peft/peft_model.h"
#include "serve/text_stream.h"

namespace fedpeft {
namespace serve {

// One model name: the base alone, or an adapter's saved tensors, with the
// instances not in use.
struct Engine::Served {
  std::string name;
  std::string source;  // the folder, for messages
  bool base = false;
  peft::SavedAdapter saved;
  std::string describe;
  mutable std::mutex mu;
  mutable std::vector<std::unique_ptr<Instance>> idle;  // GUARDED_BY(mu)
};

struct Engine::Instance {
  std::unique_ptr<peft::PeftModel> peft;
  std::unique_ptr<model::LlamaModel> plain;
  model::LlamaModel* model = nullptr;
};

StatusOr<peft::SavedAdapter> LoadServedAdapter(const std::string& dir,
                                               std::string* what) {
  if (PathExists(JoinPath(dir, "adapter_config.json"))) {
    *what = "PEFT adapter";
    return peft::LoadAdapter(dir);
  }
  if (!PathExists(JoinPath(dir, "state.json")) &&
      !PathExists(JoinPath(dir, "LATEST"))) {
    return Status::InvalidArgument(
        "'" + dir +
        "' is neither a PEFT adapter folder (adapter_config.json) nor a "
        "coordinator checkpoint (a round folder with state.json, or a "
        "directory with LATEST)");
  }
  ASSIGN_OR_RETURN(coordinator::CheckpointAdapter ckpt,
                   coordinator::LoadCheckpointAdapter(dir));
  *what = "checkpoint of federation '" + ckpt.federation_id + "', round " +
          std::to_string(ckpt.round);
  return std::move(ckpt.adapter);
}

std::string DescribeAdapter(const peft::PeftOptions& o) {
  if (o.method != "lora") return o.method;
  std::string s = "lora r=" + std::to_string(o.lora.r);
  if (!o.lora.rank_pattern.empty()) s += " (rank_pattern)";
  if (o.lora.use_rslora) s += " rslora";
  return s;
}

Status BuildPrompt(const CompletionRequest& request,
                   const model::Tokenizer& tokenizer, data::ChatFamily family,
                   int64_t context, std::vector<int64_t>* ids,
                   std::vector<int64_t>* stop_ids) {
  if (!request.chat) {
    *ids = tokenizer.Encode(request.prompt, true, false);
  } else if (family == data::ChatFamily::kAlpaca) {
    if (request.messages.size() != 1 || request.messages[0].role != "user") {
      return Status::InvalidArgument(
          "messages: this model has no chat template (alpaca layout), which "
          "takes exactly one user message; got " +
          std::to_string(request.messages.size()) + " messages");
    }
    *ids = tokenizer.Encode(
        data::InstructionPrompt(request.messages[0].content, ""), true, false);
  } else {
    ASSIGN_OR_RETURN(std::string text,
                     data::RenderChatPrompt(family, request.messages));
    std::vector<bool> unused;
    data::EncodeSegments(family, {{text, false}}, tokenizer, ids, &unused);
    const int64_t eot =
        data::SpecialTokenId(family, data::EndOfTurnToken(family), tokenizer);
    if (eot >= 0) stop_ids->push_back(eot);
  }
  if (ids->empty()) return Status::InvalidArgument("prompt: no tokens");
  if (static_cast<int64_t>(ids->size()) >= context) {
    return Status::InvalidArgument(
        std::string(request.chat ? "messages" : "prompt") + ": " +
        std::to_string(ids->size()) + " tokens fill the model's context of " +
        std::to_string(context) + ", leaving no room for an answer");
  }
  return Status::Ok();
}

void Admission::Configure(int parallel, int max_waiting) {
  std::lock_guard<std::mutex> lock(mu_);
  parallel_ = parallel;
  max_waiting_ = max_waiting;
}

StatusOr<Admission::Ticket> Admission::Enter() {
  std::unique_lock<std::mutex> lock(mu_);
  if (running_ >= parallel_ && waiting_ >= max_waiting_) {
    return Status::Unavailable(
        "busy: " + std::to_string(running_) + " generations running and " +
        std::to_string(waiting_) +
        " waiting (serve.parallel, serve.max_waiting); retry later");
  }
  ++waiting_;
  turn_.wait(lock, [this] { return running_ < parallel_; });
  --waiting_;
  ++running_;
  return Ticket(this);
}

void Admission::Leave() {
  std::lock_guard<std::mutex> lock(mu_);
  --running_;
  turn_.notify_one();
}

AnswerStream::AnswerStream(const CompletionRequest& request,
                           const model::Tokenizer& tokenizer,
                           const Backend::DeltaCallback& on_delta)
    : request_(request),
      tokenizer_(tokenizer),
      on_delta_(on_delta),
      stream_(request.stop) {}

bool AnswerStream::Add(int64_t id) {
  answer_.push_back(id);
  const std::string piece = stream_.Update(tokenizer_.Decode(answer_));
  if (!piece.empty() && !on_delta_(piece)) {
    gone_ = true;
    return false;
  }
  return !stream_.stopped();
}

void AnswerStream::Finish(int64_t prompt_tokens, int64_t context,
                          CompletionResult* result) {
  if (!gone_) {
    const std::string rest = stream_.Finish();
    if (!rest.empty()) on_delta_(rest);
  }
  const int64_t n = static_cast<int64_t>(answer_.size());
  const bool full = n >= request_.max_tokens || prompt_tokens + n >= context;
  result->text = stream_.sent();
  result->finish_reason = !stream_.stopped() && full ? "length" : "stop";
  result->prompt_tokens = prompt_tokens;
  result->completion_tokens = n;
}

Engine::~Engine() = default;

StatusOr<std::unique_ptr<Engine>> Engine::Create(
    const ServeConfig& config,
    std::shared_ptr<const model::LlamaWeights> weights,
    std::unique_ptr<model::Tokenizer> tokenizer) {
  std::unique_ptr<Engine> e(new Engine());
  e->weights_ = std::move(weights);
  e->tokenizer_ = std::move(tokenizer);
  ASSIGN_OR_RETURN(e->device_, model::ParseDevice(config.model.device));
  e->admission_.Configure(config.serve.parallel, config.serve.max_waiting);
  data::DataOptions chat;
  chat.chat_template = config.serve.chat_template;
  RETURN_IF_ERROR(data::ResolveChatTemplate(
      config.model.path, config.model.tokenizer, *e->tokenizer_, &chat));
  ASSIGN_OR_RETURN(e->family_, data::ParseChatTemplateName(chat.chat_template));

  if (!config.serve.base_name.empty()) {
    auto served = std::make_unique<Served>();
    served->name = config.serve.base_name;
    served->source = config.model.path;
    served->base = true;
    served->describe = "the base alone (" + config.model.path + ")";
    e->served_[served->name] = std::move(served);
  }
  for (const auto& [name, dir] : config.serve.adapters) {
    auto served = std::make_unique<Served>();
    served->name = name;
    served->source = dir;
    std::string what;
    auto saved = LoadServedAdapter(dir, &what);
    if (!saved.ok()) {
      return saved.status().WithContext("serve.adapters." + name);
    }
    served->saved = std::move(saved).value();
    served->describe =
        DescribeAdapter(served->saved.options) + ", " + what + " (" + dir + ")";
    // Build one instance now: it checks every tensor against the base.
    auto instance = e->Take(*served);
    if (!instance.ok()) {
      return instance.status().WithContext("serve.adapters." + name + " ('" +
                                           dir + "')");
    }
    e->Give(*served, std::move(instance).value());
    e->served_[name] = std::move(served);
  }
  return e;
}

std::vector<std::string> Engine::Models() const {
  std::vector<std::string> names;
  for (const auto& kv : served_) names.push_back(kv.first);
  return names;
}

std::vector<std::string> Engine::Describe() const {
  std::vector<std::string> lines;
  for (const auto& [name, served] : served_) {
    lines.push_back(name + ": " + served->describe);
  }
  return lines;
}

StatusOr<const Engine::Served*> Engine::Find(const std::string& name) const {
  auto it = served_.find(name);
  if (it == served_.end()) {
    std::string names;
    for (const auto& kv : served_) {
      names += (names.empty() ? "" : ", ") + kv.first;
    }
    return Status::NotFound("model '" + name +
                            "' is not served here; models: " + names);
  }
  return it->second.get();
}

StatusOr<std::unique_ptr<Engine::Instance>> Engine::Take(const Served& served) {
  {
    std::lock_guard<std::mutex> lock(served.mu);
    if (!served.idle.empty()) {
      std::unique_ptr<Instance> instance = std::move(served.idle.back());
      served.idle.pop_back();
      return instance;
    }
  }
  auto instance = std::make_unique<Instance>();
  if (served.base) {
    instance->plain = std::make_unique<model::LlamaModel>(weights_);
    instance->model = instance->plain.get();
  } else {
    ASSIGN_OR_RETURN(instance->peft, peft::PeftModel::Create(
                                         weights_, served.saved.options, 0));
    RETURN_IF_ERROR(instance->peft->LoadAdapterTensors(served.saved.tensors));
    instance->model = &instance->peft->model();
  }
  instance->model->to(device_);
  instance->model->eval();
  return instance;
}

void Engine::Give(const Served& served, std::unique_ptr<Instance> instance) {
  std::lock_guard<std::mutex> lock(served.mu);
  served.idle.push_back(std::move(instance));
}

Status Engine::Check(const CompletionRequest& request) const {
  RETURN_IF_ERROR(Find(request.model).status());
  std::vector<int64_t> ids, stop_ids;
  return BuildPrompt(request, *tokenizer_, family_,
                     weights_->config.context_length(), &ids, &stop_ids);
}

Status Engine::Complete(const CompletionRequest& request,
                        const DeltaCallback& on_delta,
                        CompletionResult* result) {
  ASSIGN_OR_RETURN(const Served* served, Find(request.model));
  model::GenerateOptions options;
  std::vector<int64_t> prompt;
  const int64_t context = weights_->config.context_length();
  RETURN_IF_ERROR(BuildPrompt(request, *tokenizer_, family_, context, &prompt,
                              &options.stop_ids));
  options.max_new_tokens = request.max_tokens;
  options.temperature = request.temperature;
  options.top_p = request.top_p;
  options.seed = request.has_seed ? request.seed : std::random_device{}();

  ASSIGN_OR_RETURN(Admission::Ticket ticket, admission_.Enter());
  ASSIGN_OR_RETURN(std::unique_ptr<Instance> instance, Take(*served));
  const auto start = std::chrono::steady_clock::now();
  AnswerStream answer(request, *tokenizer_, on_delta);
  try {
    model::Generate(*instance->model, prompt, options,
                    [&answer](int64_t id) { return answer.Add(id); });
  } catch (const std::exception& e) {
    // A LibTorch error (e.g. out of memory): this request fails, the
    // instance is dropped rather than reused, the server goes on.
    FP_LOG_ERROR("serve", "{}: generation failed: {}", request.model, e.what());
    return Status::Internal("generation failed: " + std::string(e.what()));
  }
  Give(*served, std::move(instance));
  answer.Finish(static_cast<int64_t>(prompt.size()), context, result);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  FP_LOG_INFO(
      "serve", "{}: {} prompt + {} new tokens in {:.0f} ms ({:.1f} tokens/s){}",
      request.model, result->prompt_tokens, result->completion_tokens,
      seconds * 1e3, seconds > 0 ? result->completion_tokens / seconds : 0.0,
      answer.client_gone() ? "; the client went away" : "");
  return Status::Ok();
}

}  // namespace serve
}  // namespace fedpeft
