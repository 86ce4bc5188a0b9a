#include "serve/openai_api.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <utility>

namespace fedpeft {
namespace serve {
namespace {

using Json = nlohmann::json;

// Refuses with 400 naming `param`.
bool Refuse(ApiError* error, const std::string& param,
            const std::string& message) {
  error->http_status = 400;
  error->type = "invalid_request_error";
  error->param = param;
  error->message = param.empty() ? message : "'" + param + "': " + message;
  return false;
}

std::string Got(const Json& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return std::string(v.type_name()) + " " + s;
}

// A number field in [lo, hi]; absent or null leaves *out.
bool NumberIn(const Json& body, const char* key, double lo, double hi,
              double* out, ApiError* error) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number()) {
    return Refuse(error, key, "expected a number, got " + Got(*it));
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    return Refuse(error, key,
                  "must be in [" + Json(lo).dump() + ", " + Json(hi).dump() +
                      "], got " + it->dump());
  }
  *out = v;
  return true;
}

// Text of a message's content: a string, or text parts joined.
bool ContentText(const Json& content, const std::string& param,
                 std::string* out, ApiError* error) {
  if (content.is_string()) {
    *out = content.get<std::string>();
    return true;
  }
  if (!content.is_array()) {
    return Refuse(
        error, param,
        "expected a string or a list of text parts, got " + Got(content));
  }
  out->clear();
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string where = param + "[" + std::to_string(i) + "]";
    if (!part.is_object() || part.value("type", "") != "text" ||
        !part.contains("text") || !part["text"].is_string()) {
      return Refuse(error, where,
                    "expected {\"type\": \"text\", \"text\": string} (this "
                    "server takes text only), got " +
                        Got(part));
    }
    *out += part["text"].get<std::string>();
  }
  return true;
}

bool ParseMessages(const Json& body, CompletionRequest* out, ApiError* error) {
  auto it = body.find("messages");
  if (it == body.end()) return Refuse(error, "messages", "missing");
  if (!it->is_array() || it->empty()) {
    return Refuse(error, "messages",
                  "expected a non-empty list of messages, got " + Got(*it));
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) {
      return Refuse(error, where, "expected an object, got " + Got(m));
    }
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return Refuse(error, where + ".role", "missing or not a string");
    }
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";
    if (r != "system" && r != "user" && r != "assistant") {
      return Refuse(error, where + ".role",
                    "expected system, developer, user or assistant, got '" +
                        role->get<std::string>() + "'");
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      return Refuse(error, where + ".content", "missing");
    }
    data::ChatMessage msg;
    msg.role = r;
    if (!ContentText(*content, where + ".content", &msg.content, error)) {
      return false;
    }
    out->messages.push_back(std::move(msg));
  }
  return true;
}

bool ParsePrompt(const Json& body, CompletionRequest* out, ApiError* error) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) {
    return Refuse(error, "prompt", "missing");
  }
  if (it->is_string()) {
    out->prompt = it->get<std::string>();
  } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    out->prompt = (*it)[0].get<std::string>();
  } else {
    return Refuse(
        error, "prompt",
        "expected a string (or a list of one string), got " + Got(*it));
  }
  if (out->prompt.empty()) return Refuse(error, "prompt", "is empty");
  return true;
}

bool ParseStop(const Json& body, CompletionRequest* out, ApiError* error) {
  auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return true;
  if (it->is_string()) {
    out->stop.push_back(it->get<std::string>());
  } else if (it->is_array() && it->size() <= 4) {
    for (const Json& s : *it) {
      if (!s.is_string()) {
        return Refuse(error, "stop", "expected strings, got " + Got(s));
      }
      out->stop.push_back(s.get<std::string>());
    }
  } else {
    return Refuse(error, "stop",
                  "expected a string or a list of up to 4, got " + Got(*it));
  }
  for (const std::string& s : out->stop) {
    if (s.empty()) return Refuse(error, "stop", "an empty stop string");
  }
  return true;
}

// Options that would change the answer in ways this server does not
// implement: refused rather than silently ignored.
bool RefuseUnsupported(const Json& body, ApiError* error) {
  auto present = [&](const char* key) {
    auto it = body.find(key);
    return it != body.end() && !it->is_null();
  };
  if (present("n") && !(body["n"].is_number_integer() && body["n"] == 1)) {
    return Refuse(error, "n", "only n = 1 is supported");
  }
  if (present("best_of") &&
      !(body["best_of"].is_number_integer() && body["best_of"] == 1)) {
    return Refuse(error, "best_of", "only best_of = 1 is supported");
  }
  if (present("logprobs") && body["logprobs"] != false) {
    return Refuse(error, "logprobs", "not supported");
  }
  if (present("top_logprobs")) {
    return Refuse(error, "top_logprobs", "not supported");
  }
  if (present("suffix")) return Refuse(error, "suffix", "not supported");
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    if (present(key) && !(body[key].is_number() && body[key] == 0)) {
      return Refuse(error, key, "only 0 is supported");
    }
  }
  if (present("logit_bias") &&
      !(body["logit_bias"].is_object() && body["logit_bias"].empty())) {
    return Refuse(error, "logit_bias", "not supported");
  }
  for (const char* key : {"tools", "functions"}) {
    if (present(key) && !(body[key].is_array() && body[key].empty())) {
      return Refuse(error, key, "tool calls are not supported");
    }
  }
  if (present("response_format")) {
    const Json& f = body["response_format"];
    if (!(f.is_object() && f.value("type", "") == "text")) {
      return Refuse(error, "response_format",
                    "only {\"type\": \"text\"} is supported");
    }
  }
  return true;
}

Json Usage(const CompletionResult& result) {
  return {{"prompt_tokens", result.prompt_tokens},
          {"completion_tokens", result.completion_tokens},
          {"total_tokens", result.prompt_tokens + result.completion_tokens}};
}

Json Envelope(const ResponseId& id, const char* object) {
  return {{"id", id.id},
          {"object", object},
          {"created", id.created},
          {"model", id.model}};
}

// Generated text may end inside a UTF-8 sequence, and a client may send
// invalid UTF-8 in a string: U+FFFD replaces bad bytes rather than throwing.
std::string Dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

bool ParseCompletionRequest(const std::string& text, bool chat,
                            int64_t max_tokens_limit, CompletionRequest* out,
                            ApiError* error) {
  *out = CompletionRequest();
  out->chat = chat;
  Json body = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return Refuse(error, "", "the request body is not valid JSON");
  }
  if (!body.is_object()) {
    return Refuse(error, "",
                  "the request body must be a JSON object, got " + Got(body));
  }
  auto model = body.find("model");
  if (model == body.end() || !model->is_string() ||
      model->get<std::string>().empty()) {
    return Refuse(error, "model", "missing or not a non-empty string");
  }
  out->model = model->get<std::string>();
  if (!RefuseUnsupported(body, error)) return false;
  if (chat ? !ParseMessages(body, out, error)
           : !ParsePrompt(body, out, error)) {
    return false;
  }
  out->max_tokens = chat ? max_tokens_limit : 16;  // OpenAI's defaults
  const char* max_key = "max_tokens";
  if (chat && body.contains("max_completion_tokens") &&
      !body["max_completion_tokens"].is_null()) {
    max_key = "max_completion_tokens";
  }
  if (auto it = body.find(max_key); it != body.end() && !it->is_null()) {
    if (!it->is_number_integer()) {
      return Refuse(error, max_key, "expected an integer, got " + Got(*it));
    }
    const int64_t v = it->get<int64_t>();
    if (v < 1 || v > max_tokens_limit) {
      return Refuse(error, max_key,
                    "must be in [1, " + std::to_string(max_tokens_limit) +
                        "] (serve.max_tokens), got " + std::to_string(v));
    }
    out->max_tokens = v;
  }
  if (!NumberIn(body, "temperature", 0.0, 2.0, &out->temperature, error) ||
      !NumberIn(body, "top_p", 0.0, 1.0, &out->top_p, error)) {
    return false;
  }
  if (out->top_p <= 0.0) return Refuse(error, "top_p", "must be > 0");
  if (auto it = body.find("seed"); it != body.end() && !it->is_null()) {
    if (!it->is_number_integer()) {
      return Refuse(error, "seed", "expected an integer, got " + Got(*it));
    }
    out->has_seed = true;
    out->seed = it->is_number_unsigned()
                    ? it->get<uint64_t>()
                    : static_cast<uint64_t>(it->get<int64_t>());
  }
  if (!ParseStop(body, out, error)) return false;
  for (const char* key : {"stream", "echo"}) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_boolean()) {
      return Refuse(error, key, "expected true or false, got " + Got(*it));
    }
    (std::string(key) == "stream" ? out->stream : out->echo) = it->get<bool>();
  }
  if (chat && out->echo) return Refuse(error, "echo", "not a chat option");
  if (auto it = body.find("stream_options");
      it != body.end() && !it->is_null()) {
    if (!it->is_object()) {
      return Refuse(error, "stream_options",
                    "expected an object, got " + Got(*it));
    }
    out->include_usage = it->value("include_usage", false) == true;
  }
  return true;
}

std::string ErrorBody(const ApiError& error) {
  Json e = {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? Json() : Json(error.param)},
            {"code", Json()}};
  return Dump(Json{{"error", e}});
}

std::string CompletionBody(const CompletionRequest& request,
                           const ResponseId& id,
                           const CompletionResult& result) {
  Json choice = {{"index", 0}, {"finish_reason", result.finish_reason}};
  Json body;
  if (request.chat) {
    body = Envelope(id, "chat.completion");
    choice["message"] = {{"role", "assistant"}, {"content", result.text}};
  } else {
    body = Envelope(id, "text_completion");
    choice["text"] = request.echo ? request.prompt + result.text : result.text;
    choice["logprobs"] = nullptr;
  }
  body["choices"] = Json::array({choice});
  body["usage"] = Usage(result);
  return Dump(body);
}

std::string ChunkBody(const CompletionRequest& request, const ResponseId& id,
                      const std::string& delta,
                      const std::string& finish_reason, bool first) {
  Json choice = {
      {"index", 0},
      {"finish_reason", finish_reason.empty() ? Json() : Json(finish_reason)}};
  Json body;
  if (request.chat) {
    body = Envelope(id, "chat.completion.chunk");
    Json d = {{"content", delta}};
    if (first) d["role"] = "assistant";
    choice["delta"] = d;
  } else {
    body = Envelope(id, "text_completion");
    choice["text"] = first && request.echo ? request.prompt + delta : delta;
    choice["logprobs"] = nullptr;
  }
  body["choices"] = Json::array({choice});
  return Dump(body);
}

std::string UsageChunkBody(const CompletionRequest& request,
                           const ResponseId& id,
                           const CompletionResult& result) {
  Json body =
      Envelope(id, request.chat ? "chat.completion.chunk" : "text_completion");
  body["choices"] = Json::array();
  body["usage"] = Usage(result);
  return Dump(body);
}

std::string ModelsBody(const std::vector<std::string>& names, int64_t created) {
  Json data = Json::array();
  for (const std::string& name : names) {
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "fedpeft"}});
  }
  return Dump(Json{{"object", "list"}, {"data", data}});
}

ApiError ToApiError(const Status& status) {
  ApiError e;
  e.message = status.message();
  switch (status.code()) {
    case StatusCode::kNotFound:
      e.http_status = 404;
      e.type = "not_found_error";
      e.param = "model";
      break;
    case StatusCode::kInvalidArgument:
    case StatusCode::kUnimplemented:
      e.http_status = 400;
      break;
    case StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "server_error";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

}  // namespace serve
}  // namespace fedpeft
