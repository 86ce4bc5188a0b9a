// Chat templates against the renderings of the models' real Jinja templates
// (tests/reference/chat_templates/*.json, written by
// tests/reference/chat_template_fixtures.mjs with @huggingface/jinja), the
// loss mask, token ids against whole-string encoding, detection and errors.
#include "data/chat_template.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/file_util.h"
#include "data/dataset.h"
#include "model/tokenizer.h"
#include "tests/test_paths.h"

namespace fedpeft {
namespace data {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const std::string kFixtures = kSource + "/tests/reference/chat_templates";
const std::string kQwen3Config =
    kSource + "/../shared/assets/tokenizers/qwen3/tokenizer_config.json";
const std::string kStoriesDir = kSource + "/assets/stories260K";

// Every special token any family writes, in a fixed order.
std::vector<std::string> AllSpecials() {
  std::vector<std::string> all;
  for (const std::string& name : ChatTemplateNames()) {
    if (name == "none" || name == "alpaca") continue;
    for (const SpecialToken& s : SpecialTokens(*ParseChatTemplateName(name))) {
      if (std::find(all.begin(), all.end(), s.text) == all.end()) {
        all.push_back(s.text);
      }
    }
  }
  return all;
}

// The stories260K SentencePiece tokenizer plus added tokens, behaving as a
// Hugging Face tokenizer does: Encode splits the text at added tokens first
// and encodes each run between them on its own. Added token k has id
// 512 + k. This is the reference EncodeSegments must agree with.
class AddedTokensTokenizer : public model::Tokenizer {
 public:
  explicit AddedTokensTokenizer(const model::Tokenizer& inner)
      : inner_(inner), specials_(AllSpecials()) {}

  std::vector<int64_t> Encode(const std::string& text, bool add_bos,
                              bool add_eos) const override {
    std::vector<int64_t> ids;
    if (add_bos) ids.push_back(bos_id());
    size_t run = 0;
    size_t pos = 0;
    auto flush = [&](size_t end) {
      if (end > run) {
        auto part = inner_.Encode(text.substr(run, end - run), false, false);
        ids.insert(ids.end(), part.begin(), part.end());
      }
    };
    while (pos < text.size()) {
      int hit = -1;
      for (size_t k = 0; k < specials_.size(); ++k) {
        if (text.compare(pos, specials_[k].size(), specials_[k]) == 0 &&
            (hit < 0 || specials_[k].size() > specials_[hit].size())) {
          hit = static_cast<int>(k);
        }
      }
      if (hit < 0) {
        ++pos;
        continue;
      }
      flush(pos);
      ids.push_back(512 + hit);
      pos += specials_[hit].size();
      run = pos;
    }
    flush(text.size());
    if (add_eos) ids.push_back(eos_id());
    return ids;
  }
  // Specials as their text; the rest through the inner tokenizer.
  std::string Decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    std::vector<int64_t> run;
    for (int64_t id : ids) {
      if (id >= 512) {
        out += inner_.Decode(run) + specials_[id - 512];
        run.clear();
      } else {
        run.push_back(id);
      }
    }
    return out + inner_.Decode(run);
  }
  int64_t vocab_size() const override {
    return 512 + static_cast<int64_t>(specials_.size());
  }
  int64_t bos_id() const override { return inner_.bos_id(); }
  int64_t eos_id() const override { return inner_.eos_id(); }
  int64_t TokenToId(const std::string& text) const override {
    for (size_t k = 0; k < specials_.size(); ++k) {
      if (specials_[k] == text) return 512 + static_cast<int64_t>(k);
    }
    return inner_.TokenToId(text);
  }

 private:
  const model::Tokenizer& inner_;
  std::vector<std::string> specials_;
};

std::string NoSpace(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c != ' ' && c != '\n') out += c;
  }
  return out;
}

class ChatTemplateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = model::LoadTokenizer(kStoriesDir + "/tokenizer.model");
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    sentencepiece_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete sentencepiece_;
    sentencepiece_ = nullptr;
  }
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_chat_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  // Records of a JSONL file read with data.chat_template = `name`.
  StatusOr<std::vector<Record>> Load(const std::string& name,
                                     const std::string& jsonl) {
    DataOptions options;
    options.path = Write("data.jsonl", jsonl);
    options.chat_template = name;
    return LoadRecords(options);
  }
  static std::vector<Json> Fixtures() {
    std::vector<Json> all;
    for (const auto& e : fs::directory_iterator(kFixtures)) {
      if (e.path().extension() != ".json") continue;
      StatusOr<std::string> text = ReadFileToString(e.path().string());
      EXPECT_TRUE(text.ok()) << text.status().ToString();
      if (text.ok()) all.push_back(Json::parse(*text));
    }
    return all;
  }

  static model::Tokenizer* sentencepiece_;
  fs::path dir_;
};

model::Tokenizer* ChatTemplateTest::sentencepiece_ = nullptr;

// Each fixture record, read from a data file with its family's template,
// renders to the reference string byte for byte, in the expected segments.
TEST_F(ChatTemplateTest, FixturesRenderLikeTheRealTemplates) {
  const std::vector<Json> fixtures = Fixtures();
  ASSERT_GE(fixtures.size(), 9u) << "fixtures missing under " << kFixtures;
  int cases = 0;
  for (const Json& fixture : fixtures) {
    const std::string family = fixture["family"];
    ASSERT_TRUE(ParseChatTemplateName(family).ok()) << family;
    for (const Json& c : fixture["cases"]) {
      SCOPED_TRACE(family + "/" + c["name"].get<std::string>());
      auto records = Load(family, c["record"].dump() + "\n");
      ASSERT_TRUE(records.ok()) << records.status().ToString();
      ASSERT_EQ(records->size(), 1u);
      const Record& r = records->front();
      std::string rendered;
      for (const Segment& s : r.segments) rendered += s.text;
      EXPECT_EQ(rendered, c["rendered"].get<std::string>());
      ASSERT_EQ(r.segments.size(), c["segments"].size());
      for (size_t i = 0; i < r.segments.size(); ++i) {
        EXPECT_EQ(r.segments[i].text, c["segments"][i]["text"]) << i;
        EXPECT_EQ(r.segments[i].trains, c["segments"][i]["trains"]) << i;
      }
      ++cases;
    }
  }
  EXPECT_GE(cases, 60);
}

// Serving prompts (add_generation_prompt true) equal the real templates'
// renderings; generation stops at the family's end-of-turn token.
TEST_F(ChatTemplateTest, PromptsForAnAnswerRenderLikeTheRealTemplates) {
  int prompts = 0;
  for (const Json& fixture : Fixtures()) {
    const std::string family_name = fixture["family"];
    auto family = ParseChatTemplateName(family_name);
    ASSERT_TRUE(family.ok()) << family_name;
    ASSERT_TRUE(fixture.contains("prompts")) << family_name;
    for (const Json& p : fixture["prompts"]) {
      SCOPED_TRACE(family_name + "/" + p["name"].get<std::string>());
      std::vector<ChatMessage> msgs;
      for (const Json& m : p["messages"])
        msgs.push_back({m["role"], m["content"]});
      auto rendered = RenderChatPrompt(*family, msgs);
      ASSERT_TRUE(rendered.ok()) << rendered.status().ToString();
      EXPECT_EQ(*rendered, p["rendered"].get<std::string>());
      ++prompts;
    }
    EXPECT_FALSE(EndOfTurnToken(*family).empty()) << family_name;
  }
  EXPECT_GE(prompts, 60);
  // An answer is asked of the user's turn only.
  auto after_assistant = RenderChatPrompt(
      ChatFamily::kChatml, {{"user", "Hi"}, {"assistant", "Hello"}});
  ASSERT_FALSE(after_assistant.ok());
  EXPECT_NE(after_assistant.status().message().find(
                "the last message must be the user's"),
            std::string::npos)
      << after_assistant.status().ToString();
}

// Ids equal encoding the whole rendered string with added tokens matched
// first; the trained tokens are exactly the assistant spans (content and
// end-of-turn token), the rest exactly the prompt text.
TEST_F(ChatTemplateTest, SegmentIdsEqualWholeStringAndMaskCoversAssistant) {
  AddedTokensTokenizer tok(*sentencepiece_);
  for (const Json& fixture : Fixtures()) {
    const ChatFamily family = *ParseChatTemplateName(fixture["family"]);
    for (const Json& c : fixture["cases"]) {
      SCOPED_TRACE(fixture["family"].get<std::string>() + "/" +
                   c["name"].get<std::string>());
      std::vector<Segment> segments;
      std::string trained_text, prompt_text;
      for (const Json& s : c["segments"]) {
        segments.push_back({s["text"], s["trains"]});
        (s["trains"] ? trained_text : prompt_text) += s["text"];
      }
      std::vector<int64_t> ids;
      std::vector<bool> trains;
      EncodeSegments(family, segments, tok, &ids, &trains);
      ASSERT_EQ(ids.size(), trains.size());
      EXPECT_EQ(ids, tok.Encode(c["rendered"], false, false));
      std::vector<int64_t> trained, prompt;
      for (size_t j = 0; j < ids.size(); ++j) {
        (trains[j] ? trained : prompt).push_back(ids[j]);
      }
      // SentencePiece decoding drops dummy-prefix spaces: compare without
      // blanks.
      EXPECT_EQ(NoSpace(tok.Decode(trained)), NoSpace(trained_text));
      EXPECT_EQ(NoSpace(tok.Decode(prompt)), NoSpace(prompt_text));
    }
  }
}

// The same with the real Qwen3 tokenizer.json (whose ids equal Hugging
// Face's, tests/model/hf_tokenizer_test.cc, special tokens in text
// included): per-segment encoding of every ChatML-family fixture gives the
// ids of the whole rendered string, and the trained ids decode to the
// assistant spans.
TEST_F(ChatTemplateTest, Qwen3TokenizerJsonSegmentsEqualTheWholeString) {
  StatusOr<std::unique_ptr<model::Tokenizer>> tok = model::LoadTokenizer(
      kSource + "/../shared/assets/tokenizers/qwen3/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  int cases = 0;
  for (const Json& fixture : Fixtures()) {
    const std::string name = fixture["family"];
    if (name != "qwen3" && name != "qwen2.5" && name != "chatml" &&
        name != "smollm2") {
      continue;
    }
    const ChatFamily family = *ParseChatTemplateName(name);
    for (const Json& c : fixture["cases"]) {
      SCOPED_TRACE(name + "/" + c["name"].get<std::string>());
      std::vector<Segment> segments;
      std::string trained_text;
      for (const Json& s : c["segments"]) {
        segments.push_back({s["text"], s["trains"]});
        if (s["trains"]) trained_text += s["text"];
      }
      std::vector<int64_t> ids;
      std::vector<bool> trains;
      EncodeSegments(family, segments, **tok, &ids, &trains);
      EXPECT_EQ(ids, (*tok)->Encode(c["rendered"], false, false));
      std::vector<int64_t> trained;
      for (size_t j = 0; j < ids.size(); ++j) {
        if (trains[j]) trained.push_back(ids[j]);
      }
      // Decode drops special tokens: the end of turn <|im_end|>.
      std::string expected;
      for (size_t at = 0;;) {
        size_t next = trained_text.find("<|im_end|>", at);
        expected += trained_text.substr(at, next - at);
        if (next == std::string::npos) break;
        at = next + std::string("<|im_end|>").size();
      }
      // Blanks aside: a token that straddles the end of the prompt (e.g.
      // "\n\n\n" over "assistant\n" and the content's "\n\n") is trained.
      EXPECT_EQ(NoSpace((*tok)->Decode(trained)), NoSpace(expected));
      ++cases;
    }
  }
  EXPECT_GE(cases, 20);
}

// Through Tokenize: no BOS or EOS beyond the template's own, targets -100
// off the assistant spans, the end-of-turn token trained once.
TEST_F(ChatTemplateTest, TokenizeUsesTemplateTokensOnly) {
  AddedTokensTokenizer tok(*sentencepiece_);
  auto records = Load("chatml", R"({"instruction": "Say hi.", "output": "Hi."})"
                                "\n");
  ASSERT_TRUE(records.ok()) << records.status().ToString();
  DataOptions options;  // chat_template "auto": the record knows its own
  options.packing = "truncate";
  options.max_seq_len = 512;
  const std::vector<Example> examples = Tokenize(*records, tok, options);
  ASSERT_EQ(examples.size(), 1u);
  const int64_t im_start = tok.TokenToId("<|im_start|>");
  const int64_t im_end = tok.TokenToId("<|im_end|>");
  const Example& e = examples[0];
  EXPECT_EQ(e.tokens.front(), im_start);  // no BOS
  const std::vector<int64_t> want = tok.Encode(
      "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
      "Hi.<|im_end|>\n",
      false, false);
  // The window's inputs are the record's ids but the last.
  ASSERT_EQ(e.tokens.size() + 1, want.size());
  EXPECT_TRUE(std::equal(e.tokens.begin(), e.tokens.end(), want.begin()));
  std::vector<int64_t> trained;
  for (int64_t t : e.targets) {
    if (t != -100) trained.push_back(t);
  }
  ASSERT_FALSE(trained.empty());
  EXPECT_EQ(trained.back(), im_end);
  EXPECT_EQ(std::count(trained.begin(), trained.end(), im_end), 1);
  EXPECT_EQ(NoSpace(tok.Decode(trained)), "Hi.<|im_end|>");
  EXPECT_EQ(std::count(e.tokens.begin(), e.tokens.end(), tok.eos_id()), 0);
}

TEST_F(ChatTemplateTest, DetectsQwen3FromItsRealTokenizerConfig) {
  ASSERT_TRUE(fs::exists(kQwen3Config)) << kQwen3Config;
  auto family = DetectChatTemplateFile(kQwen3Config);
  ASSERT_TRUE(family.ok()) << family.status().ToString();
  EXPECT_EQ(*family, ChatFamily::kQwen3);
}

// Short excerpts of each family's real template (what the detector keys
// on), so no license-restricted template is committed.
TEST_F(ChatTemplateTest, DetectsEachFamilyFromAFingerprint) {
  const std::vector<std::pair<std::string, ChatFamily>> cases = {
      {"{{'<|im_start|>' + message['role'] + '\\n' + message['content']",
       ChatFamily::kChatml},
      {"{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You "
       "are a helpful assistant.<|im_end|>\\n' }}",
       ChatFamily::kQwen25},
      {"'<|im_start|>' + message.role + '\\n<think>\\n'", ChatFamily::kQwen3},
      {"{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
       "trained by Hugging Face<|im_end|>\n' }}",
       ChatFamily::kSmollm2},
      {"'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'",
       ChatFamily::kLlama3},
      {"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting "
       "Knowledge Date: December 2023\\n\" }}",
       ChatFamily::kLlama31},
      {"{% set content = '<<SYS>>\\n' + system_message %}{{ bos_token + "
       "'[INST] ' + content.strip() + ' [/INST]' }}",
       ChatFamily::kLlama2},
      {"{{- ' [INST] ' + message['content'] + ' [/INST]' }}",
       ChatFamily::kMistral},
      {"{{ '<start_of_turn>' + role + '\\n' }}", ChatFamily::kGemma},
      {"{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}",
       ChatFamily::kPhi3},
  };
  for (const auto& [jinja, want] : cases) {
    auto got = DetectChatTemplate(jinja);
    ASSERT_TRUE(got.ok()) << jinja << ": " << got.status().ToString();
    EXPECT_EQ(ChatTemplateName(*got), ChatTemplateName(want)) << jinja;
  }
}

TEST_F(ChatTemplateTest, UndetectableTemplateNamesItAndTheChoices) {
  const std::string path = Write(
      "tokenizer_config.json",
      R"({"chat_template": "{% for m in messages %}<|turn|>{{ m.content }}{% endfor %}"})");
  auto got = DetectChatTemplateFile(path);
  ASSERT_FALSE(got.ok());
  const std::string msg = got.status().ToString();
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("<|turn|>"), std::string::npos) << msg;  // the excerpt
  for (const char* name : {"chatml", "qwen3", "llama3", "mistral", "phi3"}) {
    EXPECT_NE(msg.find(name), std::string::npos) << name << " in " << msg;
  }
}

// auto: stories260K's tokenizer_config.json has no chat_template -> alpaca,
// so existing configs keep today's layout.
TEST_F(ChatTemplateTest, AutoIsAlpacaWithoutATemplate) {
  DataOptions options;
  ASSERT_EQ(options.chat_template, "auto");
  Status s = ResolveChatTemplate(kStoriesDir, "", *sentencepiece_, &options);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(options.chat_template, "alpaca");
}

// auto beside a Qwen3 config, with a tokenizer lacking <|im_start|>: the
// template is found, and the mismatch is an error naming the token.
TEST_F(ChatTemplateTest, AutoFindsTheTemplateAndChecksTheTokenizer) {
  const std::string tokenizer = Write("tokenizer.json", "{}");
  fs::copy_file(kQwen3Config, dir_ / "tokenizer_config.json");
  DataOptions options;
  Status s = ResolveChatTemplate("", tokenizer, *sentencepiece_, &options);
  EXPECT_EQ(options.chat_template, "qwen3");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("<|im_start|>"), std::string::npos)
      << s.ToString();
  AddedTokensTokenizer with_specials(*sentencepiece_);
  options.chat_template = "auto";
  s = ResolveChatTemplate("", tokenizer, with_specials, &options);
  EXPECT_TRUE(s.ok()) << s.ToString();
  // SentencePiece Llama-2: <s> and </s> are BOS/EOS by id.
  options.chat_template = "llama2";
  s = ResolveChatTemplate("", tokenizer, *sentencepiece_, &options);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(ChatTemplateTest, UnknownNameListsTheChoices) {
  YAML::Node root = YAML::Load("data: {path: x.jsonl, chat_template: vicuna}");
  ConfigReader in(root, "test.yaml");
  ConfigReader section = in.Section("data");
  DataOptions options;
  options.Read(section);
  Status s = in.Finish();
  ASSERT_FALSE(s.ok());
  const std::string msg = s.ToString();
  EXPECT_NE(msg.find("data.chat_template"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vicuna"), std::string::npos) << msg;
  EXPECT_NE(msg.find("chatml"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gemma"), std::string::npos) << msg;

  auto parsed = ParseChatTemplateName("vicuna");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().ToString().find("llama3"), std::string::npos);
}

TEST_F(ChatTemplateTest, BadMessagesNameTheLineAndField) {
  const std::string good =
      R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})";
  auto bad_role = Load(
      "chatml",
      good + "\n" +
          R"({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]})" +
          "\n");
  ASSERT_FALSE(bad_role.ok());
  std::string msg = bad_role.status().ToString();
  EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("messages[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'bot'"), std::string::npos) << msg;

  auto no_content = Load("llama3", R"({"messages": [{"role": "user"}]})"
                                   "\n");
  ASSERT_FALSE(no_content.ok());
  msg = no_content.status().ToString();
  EXPECT_NE(msg.find("line 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("messages[0].content"), std::string::npos) << msg;

  auto not_alternating = Load(
      "llama2",
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]})"
      "\n");
  ASSERT_FALSE(not_alternating.ok());
  msg = not_alternating.status().ToString();
  EXPECT_NE(msg.find("messages[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("alternate"), std::string::npos) << msg;

  auto alpaca = Load("alpaca", good + "\n");
  ASSERT_FALSE(alpaca.ok());
  EXPECT_NE(alpaca.status().ToString().find("data.chat_template"),
            std::string::npos)
      << alpaca.status().ToString();
}

// A tokenizer whose tokens are two bytes each (byte values as ids, pairs
// as 256 * first + second), so a token can straddle a segment boundary.
class PairTokenizer : public model::Tokenizer {
 public:
  std::vector<int64_t> Encode(const std::string& text, bool,
                              bool) const override {
    std::vector<int64_t> ids;
    for (size_t i = 0; i < text.size(); i += 2) {
      ids.push_back(i + 1 < text.size() ? 256 * text[i] + text[i + 1]
                                        : text[i]);
    }
    return ids;
  }
  std::string Decode(const std::vector<int64_t>&) const override { return ""; }
  int64_t vocab_size() const override { return 65536; }
  int64_t bos_id() const override { return 1; }
  int64_t eos_id() const override { return 2; }
  int64_t TokenToId(const std::string&) const override { return -1; }
};

// The run "abcdef" is one encoding ("ab" "cd" "ef"); the boundary after
// "abc" only decides the mask, and "cd", which straddles it, is trained.
TEST_F(ChatTemplateTest, StraddlingTokenGoesToTheLaterSegment) {
  PairTokenizer tok;
  std::vector<int64_t> ids;
  std::vector<bool> trains;
  EncodeSegments(ChatFamily::kPhi3, {{"abc", false}, {"def", true}}, tok, &ids,
                 &trains);
  EXPECT_EQ(ids, tok.Encode("abcdef", false, false));
  EXPECT_EQ(trains, (std::vector<bool>{false, true, true}));
  ids.clear();
  trains.clear();
  EncodeSegments(ChatFamily::kPhi3, {{"ab", false}, {"cdef", true}}, tok, &ids,
                 &trains);
  EXPECT_EQ(trains, (std::vector<bool>{false, true, true}));
}

// Llama-3.1's template always writes its dated system header (no fixture:
// no npm package ships that template).
TEST_F(ChatTemplateTest, Llama31WritesItsSystemHeader) {
  auto segments = RenderChat(ChatFamily::kLlama31,
                             {{"user", "Hi"}, {"assistant", " Hello "}});
  ASSERT_TRUE(segments.ok()) << segments.status().ToString();
  std::string rendered;
  for (const Segment& s : *segments) rendered += s.text;
  EXPECT_EQ(rendered,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>");
  ASSERT_EQ(segments->size(), 2u);
  EXPECT_EQ(segments->back().text, "Hello<|eot_id|>");
  EXPECT_TRUE(segments->back().trains);
}

// Alpaca stays the layout of instruction records unless a template is set.
TEST_F(ChatTemplateTest, AlpacaKeepsPromptAndResponse) {
  auto records = Load("alpaca", R"({"instruction": "Say hi.", "output": "Hi."})"
                                "\n");
  ASSERT_TRUE(records.ok()) << records.status().ToString();
  EXPECT_TRUE(records->front().segments.empty());
  EXPECT_EQ(records->front().prompt,
            "### Instruction:\nSay hi.\n\n### Response:\n");
  EXPECT_EQ(records->front().response, "Hi.");
}

}  // namespace
}  // namespace data
}  // namespace fedpeft
