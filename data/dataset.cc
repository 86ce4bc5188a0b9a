#include "data/dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <utility>

#include "common/file_util.h"
#include "common/logging.h"
#include "data/record_filter.h"

namespace fedpeft {
namespace data {
namespace {

using Json = nlohmann::json;

constexpr int64_t kIgnore = -100;
constexpr int kMaxSeqLenLimit = 1 << 20;
constexpr size_t kMaxSpeakerNameLength = 64;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool IsOneOf(const std::string& value,
             std::initializer_list<const char*> allowed) {
  for (const char* a : allowed) {
    if (value == a) return true;
  }
  return false;
}

std::string TrimRight(const std::string& s) {
  size_t end = s.size();
  while (end > 0 && std::isspace(static_cast<unsigned char>(s[end - 1]))) {
    --end;
  }
  return s.substr(0, end);
}

bool IsBlank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isspace(static_cast<unsigned char>(c));
  });
}

// Shortens a line for an error message.
std::string Excerpt(const std::string& s) {
  constexpr size_t kMax = 60;
  return s.size() <= kMax ? s : s.substr(0, kMax) + "...";
}

// Splits on '\n', dropping a '\r' before it (files written on Windows).
std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

// A tiny-shakespeare speaker line: "First Citizen:", "KING RICHARD III:",
// "Senators, &C:" -- a capitalized name of name-like characters, then ':'.
// Text lines may look the same ("Nay, let them follow:"), so the parser
// only looks for a speaker line where a paragraph opens, after a blank line.
bool ParseSpeakerLine(const std::string& raw, std::string* name) {
  const std::string line = TrimRight(raw);
  if (line.size() < 2 || line.back() != ':') return false;
  const std::string candidate = line.substr(0, line.size() - 1);
  if (candidate.size() > kMaxSpeakerNameLength) return false;
  if (!std::isupper(static_cast<unsigned char>(candidate[0]))) return false;
  for (char c : candidate) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (!(std::isalnum(u) || c == ' ' || c == '\'' || c == '.' || c == ',' ||
          c == '&' || c == '-')) {
      return false;
    }
  }
  *name = candidate;
  return true;
}

const char* JsonTypeName(const Json& v) { return v.type_name(); }

std::string ChatNameList() {
  std::string out;
  for (const std::string& n : ChatTemplateNames()) {
    out += (out.empty() ? "" : ", ") + n;
  }
  return out;
}

// Reads an optional string member; `where` prefixes errors.
Status GetString(const Json& obj, const char* key, const std::string& where,
                 std::string* out, bool* present) {
  *present = false;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) {
    return Status::InvalidArgument(where + ": field '" + key +
                                   "' must be a string, got " +
                                   JsonTypeName(*it));
  }
  *out = it->get<std::string>();
  *present = true;
  return Status::Ok();
}

// A "messages" list -> ChatMessages; errors name the element and field.
Status MessagesFromJson(const Json& list, const std::string& where,
                        std::vector<ChatMessage>* out) {
  if (!list.is_array()) {
    return Status::InvalidArgument(
        where + ": field 'messages' must be a list of {role, content}, got " +
        JsonTypeName(list));
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& m = list[i];
    const std::string field = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) {
      return Status::InvalidArgument(where + ": field '" + field +
                                     "' must be an object {role, content}, "
                                     "got " +
                                     JsonTypeName(m));
    }
    ChatMessage message;
    for (const char* key : {"role", "content"}) {
      auto it = m.find(key);
      if (it == m.end() || !it->is_string()) {
        return Status::InvalidArgument(
            where + ": field '" + field + "." + key +
            "' must be a string, got " +
            (it == m.end() ? std::string("nothing") : JsonTypeName(*it)));
      }
      (std::string(key) == "role" ? message.role : message.content) =
          it->get<std::string>();
    }
    out->push_back(std::move(message));
  }
  return Status::Ok();
}

// One JSON object -> Record. `where` is "data file 'x' line 17" or
// "data file 'x' element 17". Instruction, question and messages records are
// laid out in `family`'s template (prompt/response for kAlpaca).
Status RecordFromJson(const Json& obj, const std::string& where,
                      ChatFamily family, Record* record) {
  if (!obj.is_object()) {
    return Status::InvalidArgument(where +
                                   ": expected a JSON object with 'text' or "
                                   "'instruction'/'output', got " +
                                   JsonTypeName(obj));
  }
  std::string text, instruction, input, context, output, response, question,
      answer;
  bool has_text, has_instruction, has_input, has_context, has_output,
      has_response, has_question, has_answer;
  RETURN_IF_ERROR(GetString(obj, "text", where, &text, &has_text));
  RETURN_IF_ERROR(
      GetString(obj, "instruction", where, &instruction, &has_instruction));
  RETURN_IF_ERROR(GetString(obj, "input", where, &input, &has_input));
  RETURN_IF_ERROR(GetString(obj, "context", where, &context, &has_context));
  RETURN_IF_ERROR(GetString(obj, "output", where, &output, &has_output));
  RETURN_IF_ERROR(GetString(obj, "response", where, &response, &has_response));
  RETURN_IF_ERROR(GetString(obj, "question", where, &question, &has_question));
  RETURN_IF_ERROR(GetString(obj, "answer", where, &answer, &has_answer));

  std::vector<ChatMessage> messages;
  if (obj.contains("messages")) {
    RETURN_IF_ERROR(MessagesFromJson(obj["messages"], where, &messages));
  } else if (has_instruction && (has_output || has_response)) {
    const std::string& in = has_input ? input : context;
    if (family == ChatFamily::kAlpaca) {
      record->prompt = InstructionPrompt(instruction, in);
      record->response = has_output ? output : response;
    } else {
      messages = {
          {"user", in.empty() ? instruction : instruction + "\n\n" + in},
          {"assistant", has_output ? output : response}};
    }
  } else if (has_question && has_answer) {
    if (family == ChatFamily::kAlpaca) {
      record->prompt = InstructionPrompt(question, "");
      record->response = answer;
    } else {
      messages = {{"user", question}, {"assistant", answer}};
    }
  } else if (has_text) {
    record->response = text;
  } else {
    std::string keys;
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      keys += (keys.empty() ? "" : ", ") + it.key();
    }
    return Status::InvalidArgument(
        where +
        ": expected a JSON object with 'text' or 'instruction'/'output' "
        "(or 'instruction'/'response', 'question'/'answer', 'messages'), "
        "got keys [" +
        keys + "]");
  }
  if (!messages.empty() || obj.contains("messages")) {
    StatusOr<std::vector<Segment>> segments = RenderChat(family, messages);
    if (!segments.ok()) {
      return segments.status().WithContext(where + " (chat template " +
                                           ChatTemplateName(family) + ")");
    }
    record->segments = std::move(segments).value();
    record->chat = family;
  }
  static const char* const kUsed[] = {"text",     "instruction", "input",
                                      "context",  "output",      "response",
                                      "question", "answer",      "messages"};
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (std::find(std::begin(kUsed), std::end(kUsed), it.key()) !=
        std::end(kUsed)) {
      continue;
    }
    if (it->is_string()) {
      record->fields[it.key()] = it->get<std::string>();
    } else if (it->is_number() || it->is_boolean()) {
      record->fields[it.key()] = it->dump();  // e.g. a numeric label
    }
  }
  return Status::Ok();
}

bool CapReached(const std::vector<Record>& records, int64_t max_records) {
  return max_records > 0 && static_cast<int64_t>(records.size()) >= max_records;
}

Status ParseJsonl(const std::string& path, const std::string& content,
                  int64_t max_records, ChatFamily family,
                  std::vector<Record>* records) {
  const std::vector<std::string> lines = SplitLines(content);
  for (size_t i = 0; i < lines.size() && !CapReached(*records, max_records);
       ++i) {
    if (IsBlank(lines[i])) continue;
    const std::string where =
        "data file '" + path + "' line " + std::to_string(i + 1);
    Json obj;
    try {
      obj = Json::parse(lines[i]);
    } catch (const Json::exception& e) {
      return Status::InvalidArgument(
          where +
          ": not valid JSON, expected one JSON object per line with 'text' "
          "or 'instruction'/'output' (" +
          e.what() + ")");
    }
    Record record;
    RETURN_IF_ERROR(RecordFromJson(obj, where, family, &record));
    records->push_back(std::move(record));
  }
  return Status::Ok();
}

Status ParseJsonArray(const std::string& path, const std::string& content,
                      int64_t max_records, ChatFamily family,
                      std::vector<Record>* records) {
  Json array;
  try {
    array = Json::parse(content);
  } catch (const Json::parse_error& e) {
    const size_t byte = std::min<size_t>(e.byte, content.size());
    const size_t line =
        1 + std::count(content.begin(), content.begin() + byte, '\n');
    return Status::InvalidArgument(
        "data file '" + path + "' line " + std::to_string(line) +
        ": not valid JSON, expected an array of objects (" + e.what() + ")");
  } catch (const Json::exception& e) {
    return Status::InvalidArgument("data file '" + path +
                                   "': not valid JSON (" + e.what() + ")");
  }
  if (!array.is_array()) {
    return Status::InvalidArgument(
        "data file '" + path + "': expected a JSON array of objects, got " +
        JsonTypeName(array) + "; hint: one object per line is format jsonl");
  }
  for (size_t i = 0; i < array.size() && !CapReached(*records, max_records);
       ++i) {
    Record record;
    RETURN_IF_ERROR(RecordFromJson(
        array[i], "data file '" + path + "' element " + std::to_string(i),
        family, &record));
    records->push_back(std::move(record));
  }
  return Status::Ok();
}

// Speeches: a speaker line opens a paragraph, its lines up to the next blank
// line are the speech.
Status ParseShakespeare(const std::string& path, const std::string& content,
                        int64_t max_records, std::vector<Record>* records) {
  const std::vector<std::string> lines = SplitLines(content);
  bool in_speech = false;
  std::string speaker;
  std::string speech;
  auto flush = [&]() {
    // A speaker line followed directly by a blank line has nothing to learn.
    if (in_speech && !speech.empty() && !CapReached(*records, max_records)) {
      Record record;
      record.response = speech;
      record.fields["speaker"] = speaker;
      records->push_back(std::move(record));
    }
    in_speech = false;
    speech.clear();
  };
  for (size_t i = 0; i < lines.size() && !CapReached(*records, max_records);
       ++i) {
    const std::string& line = lines[i];
    if (IsBlank(line)) {
      flush();
      continue;
    }
    if (!in_speech) {
      if (!ParseSpeakerLine(line, &speaker)) {
        return Status::InvalidArgument(
            "data file '" + path + "' line " + std::to_string(i + 1) +
            ": expected a speaker line 'NAME:' to open a speech, got '" +
            Excerpt(line) +
            "'; hint: set data.format to 'text' for plain text");
      }
      in_speech = true;
      continue;
    }
    if (!speech.empty()) speech += '\n';
    speech += line;
  }
  flush();
  return Status::Ok();
}

// "auto" -> a concrete format, by extension and, for text, by content.
std::string ResolveFormat(const DataOptions& options,
                          const std::string& content) {
  if (options.format != "auto") return options.format;
  if (EndsWith(options.path, ".jsonl")) return "jsonl";
  if (EndsWith(options.path, ".json")) return "json";
  for (const std::string& line : SplitLines(content)) {
    if (IsBlank(line)) continue;
    std::string name;
    return ParseSpeakerLine(line, &name) ? "shakespeare" : "text";
  }
  return "text";
}

// One record as BOS, prompt, response, EOS (or its chat segments, which
// hold their own BOS and end-of-turn tokens); `loss[j]` says whether
// `ids[j]` is a target (response tokens and EOS).
void EncodeRecord(const Record& record, const model::Tokenizer& tokenizer,
                  std::vector<int64_t>* ids, std::vector<bool>* loss) {
  if (!record.segments.empty()) {
    EncodeSegments(record.chat, record.segments, tokenizer, ids, loss);
    return;
  }
  std::vector<int64_t> body;
  size_t prompt_len = 0;
  if (record.prompt.empty()) {
    body = tokenizer.Encode(record.response, false, false);
  } else {
    // Encode prompt and response together so the response is tokenized as
    // it follows the prompt (no second dummy-prefix space); the prompt's
    // ids are a prefix since it ends in "\n", a byte token that never
    // merges. Fall back to separate encodings if a tokenizer differs.
    const std::vector<int64_t> prompt =
        tokenizer.Encode(record.prompt, false, false);
    body = tokenizer.Encode(record.prompt + record.response, false, false);
    if (body.size() >= prompt.size() &&
        std::equal(prompt.begin(), prompt.end(), body.begin())) {
      prompt_len = prompt.size();
    } else {
      std::vector<int64_t> response =
          tokenizer.Encode(record.response, false, false);
      body = prompt;
      body.insert(body.end(), response.begin(), response.end());
      prompt_len = prompt.size();
    }
  }
  // A tokenizer without BOS (Qwen's) starts with the text.
  if (tokenizer.bos_id() >= 0) {
    ids->push_back(tokenizer.bos_id());
    loss->push_back(false);
  }
  for (size_t j = 0; j < body.size(); ++j) {
    ids->push_back(body[j]);
    loss->push_back(j >= prompt_len);
  }
  if (tokenizer.eos_id() >= 0) {
    ids->push_back(tokenizer.eos_id());
    loss->push_back(true);
  }
}

// An example from ids[begin, end): inputs ids[begin, end - 1), targets
// ids[begin + 1, end). False when no target is kept.
bool MakeExample(const std::vector<int64_t>& ids, const std::vector<bool>& loss,
                 size_t begin, size_t end, Example* example) {
  if (end < begin + 2) return false;
  example->tokens.assign(ids.begin() + begin, ids.begin() + end - 1);
  example->targets.resize(end - begin - 1);
  bool any = false;
  for (size_t j = begin + 1; j < end; ++j) {
    example->targets[j - begin - 1] = loss[j] ? ids[j] : kIgnore;
    any = any || loss[j];
  }
  return any;
}

}  // namespace

std::string InstructionPrompt(const std::string& instruction,
                              const std::string& input) {
  std::string prompt = "### Instruction:\n" + instruction + "\n\n";
  if (!input.empty()) prompt += "### Input:\n" + input + "\n\n";
  prompt += "### Response:\n";
  return prompt;
}

void DataOptions::Read(ConfigReader& in) {
  in.Get("path", &path);
  in.Get("format", &format);
  in.Get("max_seq_len", &max_seq_len);
  in.Get("packing", &packing);
  in.Get("eval_fraction", &eval_fraction);
  in.Get("seed", &seed);
  in.Get("max_records", &max_records);
  in.Get("partition", &partition);
  in.Get("partition_field", &partition_field);
  in.Get("dirichlet_alpha", &dirichlet_alpha);
  in.Get("chat_template", &chat_template);
  in.Check(
      IsOneOf(format, {"auto", "text", "shakespeare", "jsonl", "json"}),
      "format",
      "expected auto, text, shakespeare, jsonl or json, got '" + format + "'");
  in.Check(max_seq_len >= 1 && max_seq_len <= kMaxSeqLenLimit, "max_seq_len",
           "must be in [1, " + std::to_string(kMaxSeqLenLimit) + "], got " +
               ToConfigString(max_seq_len));
  in.Check(IsOneOf(packing, {"pack", "truncate"}), "packing",
           "expected pack or truncate, got '" + packing + "'");
  in.Check(eval_fraction >= 0 && eval_fraction < 1, "eval_fraction",
           "must be in [0, 1), got " + ToConfigString(eval_fraction));
  in.Check(max_records >= 0, "max_records",
           "must be >= 0 (0 = all), got " + ToConfigString(max_records));
  in.Check(IsOneOf(partition, {"iid", "field", "dirichlet"}), "partition",
           "expected iid, field or dirichlet, got '" + partition + "'");
  in.Check(partition == "iid" || !partition_field.empty(), "partition_field",
           "must name a record field (e.g. speaker) for partition '" +
               partition + "', got ''");
  in.Check(chat_template == "auto" || ParseChatTemplateName(chat_template).ok(),
           "chat_template",
           "expected auto or one of " + ChatNameList() + ", got '" +
               chat_template + "'");
  in.Check(std::isfinite(dirichlet_alpha) && dirichlet_alpha > 0,
           "dirichlet_alpha",
           "must be > 0 (small = skewed shards), got " +
               ToConfigString(dirichlet_alpha));
}

// Plain text: one record per paragraph (blank-line separated), paragraphs
// longer than kMaxTextRecordChars cut at line ends, so a text file can be
// split into train/eval and partitioned like any other data set. Packing
// re-joins records into windows, so the cuts cost nothing in training.
constexpr size_t kMaxTextRecordChars = 4096;

void ParseText(const std::string& content, int64_t max_records,
               std::vector<Record>* records) {
  std::string current;
  auto flush = [&] {
    if (!IsBlank(current)) {
      Record r;
      r.response = current;
      records->push_back(std::move(r));
    }
    current.clear();
  };
  size_t start = 0;
  while (start < content.size()) {
    if (max_records > 0 &&
        static_cast<int64_t>(records->size()) >= max_records) {
      return;
    }
    size_t end = content.find('\n', start);
    if (end == std::string::npos) end = content.size();
    std::string line = content.substr(start, end - start);
    start = end + 1;
    if (IsBlank(line)) {
      flush();
      continue;
    }
    if (!current.empty() &&
        current.size() + line.size() > kMaxTextRecordChars) {
      flush();
    }
    current += line;
    current += '\n';
  }
  if (max_records <= 0 || static_cast<int64_t>(records->size()) < max_records) {
    flush();
  }
}

Status ResolveChatTemplate(const std::string& model_path,
                           const std::string& tokenizer_path,
                           const model::Tokenizer& tokenizer,
                           DataOptions* options) {
  namespace fs = std::filesystem;
  if (options->chat_template == "auto") {
    std::error_code ec;
    fs::path dir;
    if (!tokenizer_path.empty()) {
      dir = fs::is_directory(tokenizer_path, ec)
                ? fs::path(tokenizer_path)
                : fs::path(tokenizer_path).parent_path();
    } else if (!model_path.empty()) {
      dir = fs::is_directory(model_path, ec)
                ? fs::path(model_path)
                : fs::path(model_path).parent_path();
    }
    const fs::path config = dir / "tokenizer_config.json";
    ChatFamily family = ChatFamily::kAlpaca;
    if (!dir.empty() && fs::is_regular_file(config, ec)) {
      StatusOr<ChatFamily> found = DetectChatTemplateFile(config.string());
      if (!found.ok()) return found.status().WithContext("data.chat_template");
      family = *found;
    }
    options->chat_template = ChatTemplateName(family);
    FP_LOG_INFO("data", "chat template: {} ({})", options->chat_template,
                dir.empty() || !fs::is_regular_file(config, ec)
                    ? "no tokenizer_config.json beside the tokenizer"
                    : "detected in " + config.string());
  }
  ASSIGN_OR_RETURN(ChatFamily family,
                   ParseChatTemplateName(options->chat_template));
  return CheckChatTokenizer(family, tokenizer);
}

StatusOr<std::vector<Record>> LoadRecords(const DataOptions& options) {
  if (options.path.empty()) {
    return Status::InvalidArgument(
        "data.path: empty, expected a data file (text, tiny-shakespeare, "
        ".jsonl or .json)");
  }
  if (!IsOneOf(options.format,
               {"auto", "text", "shakespeare", "jsonl", "json"})) {
    return Status::InvalidArgument(
        "data.format: expected auto, text, shakespeare, jsonl or json, got '" +
        options.format + "'");
  }
  if (options.max_records < 0) {
    return Status::InvalidArgument("data.max_records: must be >= 0, got " +
                                   std::to_string(options.max_records));
  }
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(options.path, ec);
  if (!ec && size > kMaxDataFileBytes) {
    return Status::InvalidArgument(
        "data file '" + options.path + "' is " + std::to_string(size) +
        " bytes, more than the limit of " + std::to_string(kMaxDataFileBytes) +
        " (records and tokens are held in memory); hint: split the corpus "
        "into one file per worker");
  }
  StatusOr<std::string> read =
      ReadFileToString(options.path, kMaxDataFileBytes);
  if (!read.ok()) return read.status().WithContext("data.path");
  const std::string& content = *read;
  const std::string format = ResolveFormat(options, content);
  // "auto" unresolved (no tokenizer known here): the tokenizer has no
  // template as far as this call can tell.
  ChatFamily family = ChatFamily::kAlpaca;
  if (options.chat_template != "auto") {
    ASSIGN_OR_RETURN(family, ParseChatTemplateName(options.chat_template));
  }
  std::vector<Record> records;
  try {
    if (format == "jsonl") {
      RETURN_IF_ERROR(ParseJsonl(options.path, content, options.max_records,
                                 family, &records));
    } else if (format == "json") {
      RETURN_IF_ERROR(ParseJsonArray(options.path, content, options.max_records,
                                     family, &records));
    } else if (format == "shakespeare") {
      RETURN_IF_ERROR(ParseShakespeare(options.path, content,
                                       options.max_records, &records));
    } else {
      ParseText(content, options.max_records, &records);
    }
  } catch (const std::exception& e) {  // bad_alloc on a huge parse tree
    return Status::Internal("data file '" + options.path + "' (format " +
                            format + "): " + e.what());
  }
  if (records.empty()) {
    return Status::InvalidArgument("data file '" + options.path + "' (format " +
                                   format +
                                   "): no records; is the file empty?");
  }
  FP_LOG_DEBUG("data", "{}: {} records (format {})", options.path,
               records.size(), format);
  return records;
}

std::vector<Example> Tokenize(const std::vector<Record>& records,
                              const model::Tokenizer& tokenizer,
                              const DataOptions& options) {
  const size_t window = static_cast<size_t>(std::max(1, options.max_seq_len));
  std::vector<Example> examples;
  size_t dropped = 0;
  if (options.packing == "truncate") {
    for (const Record& record : records) {
      std::vector<int64_t> ids;
      std::vector<bool> loss;
      EncodeRecord(record, tokenizer, &ids, &loss);
      Example example;
      if (MakeExample(ids, loss, 0, std::min(ids.size(), window + 1),
                      &example)) {
        examples.push_back(std::move(example));
      } else {
        ++dropped;
      }
    }
  } else {
    std::vector<int64_t> ids;
    std::vector<bool> loss;
    for (const Record& record : records) {
      EncodeRecord(record, tokenizer, &ids, &loss);
    }
    // Windows overlap by one token: the last target of one window is the
    // first input of the next, so every transition is trained once.
    for (size_t begin = 0; begin + 1 < ids.size(); begin += window) {
      Example example;
      if (MakeExample(ids, loss, begin,
                      std::min(ids.size(), begin + window + 1), &example)) {
        examples.push_back(std::move(example));
      } else {
        ++dropped;
      }
    }
  }
  if (dropped > 0) {
    FP_LOG_WARN("data",
                "dropped {} {} with no response token within max_seq_len {} "
                "(prompts too long?)",
                dropped, options.packing == "truncate" ? "records" : "windows",
                options.max_seq_len);
  }
  return examples;
}

std::vector<Record> RecordsWithExamples(std::vector<Record> records,
                                        const model::Tokenizer& tokenizer,
                                        const DataOptions& options,
                                        size_t* dropped) {
  const size_t window = static_cast<size_t>(std::max(1, options.max_seq_len));
  std::vector<Record> kept;
  *dropped = 0;
  for (Record& record : records) {
    std::vector<int64_t> ids;
    std::vector<bool> loss;
    EncodeRecord(record, tokenizer, &ids, &loss);
    Example example;
    if (MakeExample(ids, loss, 0, std::min(ids.size(), window + 1), &example)) {
      kept.push_back(std::move(record));
    } else {
      ++*dropped;
    }
  }
  return kept;
}

namespace {
size_t NumHeldOut(size_t n, double eval_fraction) {
  if (eval_fraction <= 0 || n < 2) return 0;
  const double wanted = std::round(eval_fraction * static_cast<double>(n));
  return std::clamp<size_t>(static_cast<size_t>(std::max(wanted, 1.0)), 1,
                            n - 1);
}
}  // namespace

std::vector<bool> HeldOutMask(size_t n, double eval_fraction, uint64_t seed) {
  const size_t n_eval = NumHeldOut(n, eval_fraction);
  const std::vector<size_t> order = ShuffledIndices(n, seed);
  std::vector<bool> mask(n, false);
  for (size_t i = n - n_eval; i < n; ++i) mask[order[i]] = true;
  return mask;
}

void SplitTrainEval(const std::vector<Record>& records, double eval_fraction,
                    uint64_t seed, std::vector<Record>* train,
                    std::vector<Record>* eval) {
  train->clear();
  eval->clear();
  const size_t n = records.size();
  const size_t n_eval = NumHeldOut(n, eval_fraction);
  // The same order HeldOutMask uses: the two always agree.
  const std::vector<size_t> order = ShuffledIndices(n, seed);
  train->reserve(n - n_eval);
  eval->reserve(n_eval);
  for (size_t i = 0; i < n; ++i) {
    (i < n - n_eval ? train : eval)->push_back(records[order[i]]);
  }
}

StatusOr<std::pair<int, int>> ParseShard(const std::string& spec) {
  auto bad = [&spec](const std::string& why) {
    return Status::InvalidArgument("data.shard '" + spec + "': " + why +
                                   "; expected 'i/n' with 0 <= i < n, e.g. "
                                   "'2/8'");
  };
  auto parse = [](const std::string& s, int* out) {
    if (s.empty() || s.size() > 9) return false;
    int value = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      value = value * 10 + (c - '0');
    }
    *out = value;
    return true;
  };
  const size_t slash = spec.find('/');
  if (slash == std::string::npos) return bad("no '/'");
  int index = 0;
  int count = 0;
  if (!parse(spec.substr(0, slash), &index) ||
      !parse(spec.substr(slash + 1), &count)) {
    return bad("i and n must be non-negative integers");
  }
  if (count < 1) return bad("n must be >= 1, got " + std::to_string(count));
  if (index >= count) {
    return bad("i must be < n, got i=" + std::to_string(index) +
               ", n=" + std::to_string(count));
  }
  return std::make_pair(index, count);
}

std::vector<Batch> MakeBatches(const std::vector<Example>& examples,
                               const std::vector<size_t>& order,
                               int batch_size) {
  std::vector<Batch> batches;
  if (batch_size < 1) return batches;
  for (size_t start = 0; start < order.size(); start += batch_size) {
    const size_t end = std::min(order.size(), start + batch_size);
    size_t longest = 0;
    for (size_t i = start; i < end; ++i) {
      longest = std::max(longest, examples[order[i]].tokens.size());
    }
    const int64_t rows = static_cast<int64_t>(end - start);
    const int64_t cols = static_cast<int64_t>(longest);
    Batch batch;
    batch.tokens = torch::zeros({rows, cols}, torch::kInt64);
    batch.targets = torch::full({rows, cols}, kIgnore, torch::kInt64);
    int64_t* tokens = batch.tokens.data_ptr<int64_t>();
    int64_t* targets = batch.targets.data_ptr<int64_t>();
    for (size_t i = start; i < end; ++i) {
      const Example& example = examples[order[i]];
      const size_t row = (i - start) * longest;
      std::copy(example.tokens.begin(), example.tokens.end(), tokens + row);
      std::copy(example.targets.begin(), example.targets.end(), targets + row);
      batch.num_target_tokens +=
          std::count_if(example.targets.begin(), example.targets.end(),
                        [](int64_t t) { return t != kIgnore; });
    }
    batches.push_back(std::move(batch));
  }
  return batches;
}

}  // namespace data
}  // namespace fedpeft
