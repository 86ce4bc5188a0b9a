// The OpenAI-compatible HTTP API of `fedpeft serve`, as values: requests of
// POST /v1/completions and POST /v1/chat/completions parsed and checked,
// and the JSON bodies of responses, stream chunks, model lists and errors.
// The shapes follow OpenAI's API reference (text_completion,
// chat.completion, chat.completion.chunk, {"error": {...}}), which the
// `openai` client libraries and llama.cpp's server also speak.
//
// Fields the server implements: model, prompt (a string or a list of one
// string) / messages (roles system, developer (= system), user,
// assistant; content a string or a list of {"type": "text"} parts),
// max_tokens (max_completion_tokens for chat), temperature, top_p, seed,
// stop (a string or up to 4), stream, stream_options.include_usage, echo
// (completions), n = 1. A field the server cannot honour with a value that
// changes the answer (n > 1, logprobs, best_of > 1, suffix, non-zero
// presence/frequency penalties, logit_bias, tools, a response_format other
// than text) is refused with 400 naming it; other unknown fields are
// ignored, as OpenAI's own server ignores what it does not use.
//
// No LibTorch, no HTTP library here. Thread-safety: free functions over
// values; Backend implementations say their own.
#ifndef FEDPEFT_SERVE_OPENAI_API_H_
#define FEDPEFT_SERVE_OPENAI_API_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "data/chat_template.h"

namespace fedpeft {
namespace serve {

// An error as the API reports it: HTTP status, OpenAI's error type
// (invalid_request_error, not_found_error, server_error, ...), a message
// and the request field at fault (empty when none).
struct ApiError {
  int http_status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;
};

struct CompletionRequest {
  bool chat = false;  // /v1/chat/completions
  std::string model;
  std::string prompt;                       // completions
  std::vector<data::ChatMessage> messages;  // chat
  int64_t max_tokens = 16;  // set from the limit when a chat omits it
  double temperature = 1.0;
  double top_p = 1.0;
  bool has_seed = false;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: the prompt precedes the text
};

// Parses the body of a completions (`chat` false) or chat completions
// request. `max_tokens_limit` bounds max_tokens and is a chat's default.
// False with *error naming the field on bad JSON, a missing or mistyped
// field, a value out of range or an unsupported option.
bool ParseCompletionRequest(const std::string& body, bool chat,
                            int64_t max_tokens_limit, CompletionRequest* out,
                            ApiError* error);

// The result of one request, for the response body.
struct CompletionResult {
  std::string text;           // the answer (after the prompt, when echo)
  std::string finish_reason;  // "stop" or "length"
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// Identifies one response: "cmpl-…" or "chatcmpl-…", the creation time in
// seconds since the epoch, the model name as requested.
struct ResponseId {
  std::string id;
  int64_t created = 0;
  std::string model;
};

std::string ErrorBody(const ApiError& error);
// The whole response of a non-streamed request.
std::string CompletionBody(const CompletionRequest& request,
                           const ResponseId& id,
                           const CompletionResult& result);
// One server-sent event's data of a streamed request: `delta` text, and on
// the last chunk the finish reason (empty before). A chat's first chunk
// carries the assistant role (`first`).
std::string ChunkBody(const CompletionRequest& request, const ResponseId& id,
                      const std::string& delta,
                      const std::string& finish_reason, bool first);
// The final usage chunk (stream_options.include_usage): no choices.
std::string UsageChunkBody(const CompletionRequest& request,
                           const ResponseId& id,
                           const CompletionResult& result);
// GET /v1/models.
std::string ModelsBody(const std::vector<std::string>& names, int64_t created);

// What answers requests: the models by name and the generation itself.
// `on_delta` gets each piece of text as it may be sent; returning false
// (the client went away) stops generation. A returned error maps to an
// HTTP status by its code (ToApiError).
class Backend {
 public:
  using DeltaCallback = std::function<bool(const std::string&)>;
  virtual ~Backend() = default;
  virtual std::vector<std::string> Models() const = 0;
  // What Complete would refuse before generating (an unknown model, a
  // prompt the template cannot render or that fills the context), so a
  // streamed request can still get its HTTP error status.
  virtual Status Check(const CompletionRequest& request) const = 0;
  virtual Status Complete(const CompletionRequest& request,
                          const DeltaCallback& on_delta,
                          CompletionResult* result) = 0;
};

// NotFound -> 404 not_found_error (param "model"), InvalidArgument -> 400,
// Unavailable (busy) -> 503, Unimplemented -> 400, anything else -> 500
// server_error.
ApiError ToApiError(const Status& status);

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_OPENAI_API_H_
