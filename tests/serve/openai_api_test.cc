// The OpenAI API values of `fedpeft serve`: requests parsed and refused
// with the field named, response bodies in OpenAI's shapes, and the text
// stream that never sends half a character or the start of a stop string.
#include "serve/openai_api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "serve/text_stream.h"

namespace fedpeft {
namespace serve {
namespace {

using Json = nlohmann::json;

CompletionRequest Parse(const std::string& body, bool chat) {
  CompletionRequest r;
  ApiError e;
  EXPECT_TRUE(ParseCompletionRequest(body, chat, 256, &r, &e))
      << body << ": " << e.message;
  return r;
}

TEST(OpenAiApiTest, ACompletionTakesOpenAisDefaults) {
  CompletionRequest r = Parse(R"({"model": "a", "prompt": ["Hi"]})", false);
  EXPECT_FALSE(r.chat);
  EXPECT_EQ(r.model, "a");
  EXPECT_EQ(r.prompt, "Hi");
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_EQ(r.temperature, 1.0);
  EXPECT_EQ(r.top_p, 1.0);
  EXPECT_FALSE(r.has_seed);
  EXPECT_FALSE(r.stream);

  r = Parse(R"({"model": "a", "prompt": "Hi", "max_tokens": 7,
               "temperature": 0, "top_p": 0.5, "seed": 3, "stop": "\n",
               "stream": true, "stream_options": {"include_usage": true},
               "echo": true, "n": 1, "logprobs": null, "user": "x",
               "presence_penalty": 0})",
            false);
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.temperature, 0.0);
  EXPECT_EQ(r.top_p, 0.5);
  EXPECT_TRUE(r.has_seed);
  EXPECT_EQ(r.seed, 3u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.echo);
}

TEST(OpenAiApiTest, AChatTakesTextPartsAndDeveloperMessages) {
  CompletionRequest r = Parse(
      R"({"model": "a", "max_completion_tokens": 9, "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                         {"type": "text", "text": "lo"}]}]})",
      true);
  EXPECT_TRUE(r.chat);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hello");
  EXPECT_EQ(r.max_tokens, 9);
  // Without max_tokens a chat may run to the server's limit.
  r = Parse(R"({"model": "a", "messages": [{"role": "user", "content": "x"}]})",
            true);
  EXPECT_EQ(r.max_tokens, 256);
}

TEST(OpenAiApiTest, BadRequestsNameTheField) {
  struct Case {
    bool chat;
    std::string body;
    std::string param;  // "" = none
    std::string words;
  };
  const std::string user = R"("messages": [{"role": "user", "content": "x"}])";
  const std::vector<Case> cases = {
      {false, "{bad", "", "not valid JSON"},
      {false, "[1, 2]", "", "must be a JSON object"},
      {false, R"({"prompt": "x"})", "model", "missing"},
      {false, R"({"model": "", "prompt": "x"})", "model", "missing"},
      {false, R"({"model": "a"})", "prompt", "missing"},
      {false, R"({"model": "a", "prompt": 5})", "prompt", "expected a string"},
      {false, R"({"model": "a", "prompt": ["x", "y"]})", "prompt", "one"},
      {false, R"({"model": "a", "prompt": ""})", "prompt", "empty"},
      {false, R"({"model": "a", "prompt": "x", "max_tokens": 0})", "max_tokens",
       "[1, 256]"},
      {false, R"({"model": "a", "prompt": "x", "max_tokens": 257})",
       "max_tokens", "serve.max_tokens"},
      {false, R"({"model": "a", "prompt": "x", "max_tokens": "5"})",
       "max_tokens", "expected an integer"},
      {false, R"({"model": "a", "prompt": "x", "temperature": 2.5})",
       "temperature", "[0.0, 2.0]"},
      {false, R"({"model": "a", "prompt": "x", "top_p": 0})", "top_p", "> 0"},
      {false, R"({"model": "a", "prompt": "x", "seed": 1.5})", "seed",
       "integer"},
      {false, R"({"model": "a", "prompt": "x", "n": 2})", "n", "n = 1"},
      {false, R"({"model": "a", "prompt": "x", "logprobs": 3})", "logprobs",
       "not supported"},
      {false, R"({"model": "a", "prompt": "x", "suffix": "y"})", "suffix",
       "not supported"},
      {false, R"({"model": "a", "prompt": "x", "frequency_penalty": 1})",
       "frequency_penalty", "only 0"},
      {false, R"({"model": "a", "prompt": "x", "stop": ["a","b","c","d","e"]})",
       "stop", "up to 4"},
      {false, R"({"model": "a", "prompt": "x", "stop": [""]})", "stop",
       "empty"},
      {false, R"({"model": "a", "prompt": "x", "stream": "yes"})", "stream",
       "true or false"},
      {true, R"({"model": "a", "messages": []})", "messages", "non-empty"},
      {true,
       R"({"model": "a", "messages": [{"role": "tool", "content": "x"}]})",
       "messages[0].role", "got 'tool'"},
      {true, R"({"model": "a", "messages": [{"content": "x"}]})",
       "messages[0].role", "missing"},
      {true, R"({"model": "a", "messages": [{"role": "user"}]})",
       "messages[0].content", "missing"},
      {true,
       R"({"model": "a", "messages": [{"role": "user", "content":
            [{"type": "image_url", "image_url": {"url": "x"}}]}]})",
       "messages[0].content[0]", "text only"},
      {true, R"({"model": "a", "echo": true, )" + user + "}", "echo",
       "not a chat option"},
      {true, R"({"model": "a", "tools": [{"type": "function"}], )" + user + "}",
       "tools", "not supported"},
      {true,
       R"({"model": "a", "response_format": {"type": "json_object"}, )" + user +
           "}",
       "response_format", "text"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    CompletionRequest r;
    ApiError e;
    ASSERT_FALSE(ParseCompletionRequest(c.body, c.chat, 256, &r, &e));
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_EQ(e.param, c.param);
    EXPECT_NE(e.message.find(c.words), std::string::npos) << e.message;
    const Json body = Json::parse(ErrorBody(e));
    EXPECT_EQ(body["error"]["message"], e.message);
    EXPECT_EQ(body["error"]["param"], c.param.empty() ? Json() : Json(c.param));
  }
}

TEST(OpenAiApiTest, BodiesHaveOpenAisShapes) {
  CompletionResult result{"world", "length", 3, 2};
  ResponseId id{"cmpl-1", 1700000000, "a"};
  CompletionRequest completion =
      Parse(R"({"model": "a", "prompt": "hello ", "echo": true})", false);
  Json body = Json::parse(CompletionBody(completion, id, result));
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["id"], "cmpl-1");
  EXPECT_EQ(body["model"], "a");
  EXPECT_EQ(body["choices"][0]["text"], "hello world");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["total_tokens"], 5);

  CompletionRequest chat =
      Parse(R"({"model": "a", "messages": [{"role": "user", "content": "x"}]})",
            true);
  body = Json::parse(CompletionBody(chat, id, result));
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "world");

  Json first = Json::parse(ChunkBody(chat, id, "wo", "", true));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "wo");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  Json last = Json::parse(ChunkBody(chat, id, "", "stop", false));
  EXPECT_FALSE(last["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  Json usage = Json::parse(UsageChunkBody(chat, id, result));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 2);

  Json models = Json::parse(ModelsBody({"a", "base"}, 5));
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 2u);
  EXPECT_EQ(models["data"][1]["id"], "base");
}

TEST(OpenAiApiTest, InvalidUtf8InTextIsReplacedNotThrown) {
  CompletionRequest r = Parse(R"({"model": "a", "prompt": "x"})", false);
  CompletionResult result{"ok \xC3", "stop", 1, 1};
  Json body =
      Json::parse(CompletionBody(r, ResponseId{"cmpl-2", 1, "a"}, result));
  EXPECT_EQ(body["choices"][0]["text"], "ok \xEF\xBF\xBD");
}

TEST(OpenAiApiTest, StatusCodesMapToHttp) {
  EXPECT_EQ(ToApiError(Status::NotFound("m")).http_status, 404);
  EXPECT_EQ(ToApiError(Status::NotFound("m")).param, "model");
  EXPECT_EQ(ToApiError(Status::InvalidArgument("m")).http_status, 400);
  EXPECT_EQ(ToApiError(Status::Unavailable("m")).http_status, 503);
  EXPECT_EQ(ToApiError(Status::Internal("m")).http_status, 500);
}

TEST(TextStreamTest, NeverSendsTheStartOfAStopStringOrWhatFollowsIt) {
  TextStream s({"END"});
  EXPECT_EQ(s.Update("ab"), "ab");
  EXPECT_EQ(s.Update("abcE"), "c");  // "E" may start "END"
  EXPECT_EQ(s.Update("abcEN"), "");
  EXPECT_EQ(s.Update("abcENx"), "ENx");  // it did not
  EXPECT_EQ(s.Update("abcENxyEND and more"), "y");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.Update("abcENxyEND and more!"), "");
  EXPECT_EQ(s.Finish(), "");
  EXPECT_EQ(s.sent(), "abcENxy");
}

TEST(TextStreamTest, APartialStopStringThatNeverCompletesIsSentAtTheEnd) {
  TextStream s({"\n\n", "###"});
  EXPECT_EQ(s.Update("one\n"), "one");
  EXPECT_EQ(s.Update("one\n#"), "\n");
  EXPECT_EQ(s.Update("one\n##"), "");
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(s.Finish(), "##");
  EXPECT_EQ(s.sent(), "one\n##");
}

TEST(TextStreamTest, NeverSendsHalfACharacter) {
  TextStream s({});
  EXPECT_EQ(s.Update("caf\xC3"), "caf");
  EXPECT_EQ(s.Update("caf\xC3\xA9"), "\xC3\xA9");
  EXPECT_EQ(s.Update("caf\xC3\xA9 \xF0\x9F"), " ");
  EXPECT_EQ(s.Update("caf\xC3\xA9 \xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
  // A decoder's U+FFFD for bytes still to come waits too.
  EXPECT_EQ(s.Update("caf\xC3\xA9 \xF0\x9F\x98\x80!\xEF\xBF\xBD"), "!");
  EXPECT_EQ(s.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(IncompleteUtf8Tail("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("\xE2\x82"), 2u);
  EXPECT_EQ(IncompleteUtf8Tail("\xE2\x82\xAC"), 0u);
}

}  // namespace
}  // namespace serve
}  // namespace fedpeft
