// Fuzz target: the body of an HTTP request to `fedpeft serve`, as
// serve::ParseCompletionRequest reads it (any client that reaches the port
// sends these bytes), the response bodies built from what parses (a prompt
// is echoed back, so invalid UTF-8 must not throw), and the TextStream over
// the body's text with the request's stop strings.
//
// Input: a mode byte (bit 0: chat completions, else completions), then the
// request body.
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "serve/openai_api.h"
#include "serve/text_stream.h"

namespace fedpeft {
namespace fuzz {
namespace {

constexpr int64_t kLimit = 256;

bool ParsesAsJson(const std::string& text) {
  return !nlohmann::json::parse(text, nullptr, false).is_discarded();
}

// The stream's promises over successive prefixes of `text`.
void CheckStream(const std::string& text,
                 const std::vector<std::string>& stops) {
  serve::TextStream stream(stops);
  const size_t step = text.size() / 16 + 1;
  for (size_t n = 0; n <= text.size(); n += step) {
    stream.Update(text.substr(0, n));
    FUZZ_CHECK(text.compare(0, stream.sent().size(), stream.sent()) == 0,
               "sent text that is not a prefix of the answer");
    if (stream.stopped()) break;
  }
  if (!stream.stopped()) stream.Update(text);
  stream.Finish();
  size_t first = std::string::npos;
  for (const std::string& s : stops) first = std::min(first, text.find(s));
  if (first == std::string::npos) {
    FUZZ_CHECK(stream.sent() == text, "the whole answer was not sent");
  } else {
    FUZZ_CHECK(stream.sent().size() <= first,
               "sent text at or after a stop string");
  }
}

}  // namespace

int FuzzOpenaiRequest(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool chat = (data[0] & 1) != 0;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  serve::CompletionRequest r;
  serve::ApiError error;
  if (!serve::ParseCompletionRequest(body, chat, kLimit, &r, &error)) {
    FUZZ_CHECK(error.http_status == 400, "a parse error that is not 400");
    FUZZ_CHECK(!error.message.empty(), "an error without a message");
    FUZZ_CHECK(ParsesAsJson(serve::ErrorBody(error)),
               "the error body is not JSON");
    return 0;
  }
  FUZZ_CHECK(r.chat == chat, "the wrong kind of request");
  FUZZ_CHECK(!r.model.empty(), "an empty model name");
  FUZZ_CHECK(r.max_tokens >= 1 && r.max_tokens <= kLimit,
             "max_tokens out of range: " + std::to_string(r.max_tokens));
  FUZZ_CHECK(r.temperature >= 0 && r.temperature <= 2, "temperature range");
  FUZZ_CHECK(r.top_p > 0 && r.top_p <= 1, "top_p range");
  FUZZ_CHECK(r.stop.size() <= 4, "more than 4 stop strings");
  for (const std::string& s : r.stop) FUZZ_CHECK(!s.empty(), "an empty stop");
  if (chat) {
    FUZZ_CHECK(!r.messages.empty(), "a chat without messages");
    for (const data::ChatMessage& m : r.messages) {
      FUZZ_CHECK(
          m.role == "system" || m.role == "user" || m.role == "assistant",
          "a role the templates do not know: " + m.role);
    }
  } else {
    FUZZ_CHECK(!r.prompt.empty(), "an empty prompt");
  }
  // What the server sends back, with the prompt as the answer's text.
  const std::string text = chat ? r.messages.back().content : r.prompt;
  serve::CompletionResult result{text, "stop", 1, 1};
  serve::ResponseId id{"cmpl-0", 0, r.model};
  FUZZ_CHECK(ParsesAsJson(serve::CompletionBody(r, id, result)),
             "the completion body is not JSON");
  FUZZ_CHECK(ParsesAsJson(serve::ChunkBody(r, id, text, "", true)),
             "a chunk is not JSON");
  FUZZ_CHECK(ParsesAsJson(serve::UsageChunkBody(r, id, result)),
             "the usage chunk is not JSON");
  CheckStream(text, r.stop);
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
