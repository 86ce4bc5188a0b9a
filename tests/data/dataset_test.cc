#include "data/dataset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/file_util.h"
#include "model/tokenizer.h"
#include "tests/test_paths.h"

namespace fedpeft {
namespace data {
namespace {

namespace fs = std::filesystem;

const std::string kAlpaca =
    kSource + "/../shared/data/alpaca_small/alpaca_small.json";

class DatasetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok =
        model::LoadTokenizer(kSource + "/assets/stories260K/tokenizer.model");
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }

  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_dataset_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes `content` to a file named `name` in the test's directory.
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out << content;
    return path;
  }

  static std::vector<Record> Load(const DataOptions& options) {
    auto records = LoadRecords(options);
    EXPECT_TRUE(records.ok()) << records.status().ToString();
    return records.ok() ? records.value() : std::vector<Record>();
  }

  static std::vector<Record> LoadShakespeare() {
    DataOptions options;
    options.path = kShakespeare;
    return Load(options);
  }

  // Records whose response names their index, so splits can be compared.
  static std::vector<Record> Numbered(int n) {
    std::vector<Record> records(n);
    for (int i = 0; i < n; ++i) {
      records[i].response = "record " + std::to_string(i);
      records[i].fields["speaker"] = "S" + std::to_string(i % 7);
    }
    return records;
  }

  static model::Tokenizer* tokenizer_;
  fs::path dir_;
};
model::Tokenizer* DatasetTest::tokenizer_ = nullptr;

TEST_F(DatasetTest, TextFormat) {
  DataOptions options;
  options.path = Write("plain.txt",
                       "Once upon a time there was a cat.\n\n"
                       "It liked to sleep.\n");
  std::vector<Record> records = Load(options);  // auto: not a speaker line
  // One record per paragraph, so plain text splits and partitions.
  ASSERT_EQ(records.size(), 2u);
  EXPECT_TRUE(records[0].prompt.empty());
  EXPECT_EQ(records[0].response, "Once upon a time there was a cat.\n");
  EXPECT_EQ(records[1].response, "It liked to sleep.\n");

  // A paragraph longer than ~4 KiB is cut at line ends; nothing is lost.
  std::string line(100, 'a');
  std::string big;
  for (int i = 0; i < 100; ++i) big += line + "\n";
  options.path = Write("big.txt", big);
  records = Load(options);
  ASSERT_GT(records.size(), 1u);
  std::string joined;
  for (const Record& r : records) {
    EXPECT_LE(r.response.size(), 4096u);
    joined += r.response;
  }
  EXPECT_EQ(joined, big);
  options.max_records = 1;
  EXPECT_EQ(Load(options).size(), 1u);
}

TEST_F(DatasetTest, ShakespeareFormat) {
  DataOptions options;
  options.path = Write("play.txt",
                       "First Citizen:\nBefore we proceed any further, hear "
                       "me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n"
                       "Nay, let them follow:\nthe Volsces have much corn.\n");
  std::vector<Record> records = Load(options);  // auto-detected
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].fields.at("speaker"), "First Citizen");
  EXPECT_EQ(records[0].response,
            "Before we proceed any further, hear me speak.");
  EXPECT_EQ(records[1].fields.at("speaker"), "All");
  // A text line ending in ':' inside a speech is text, not a speaker.
  EXPECT_EQ(records[2].response,
            "Nay, let them follow:\nthe Volsces have much corn.");

  // Forced shakespeare on a file that is not: the line is named.
  options.path = Write("prose.txt", "Alice:\nHello.\n\nJust prose here.\n");
  options.format = "shakespeare";
  auto bad = LoadRecords(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 4"), std::string::npos)
      << bad.status().ToString();
}

TEST_F(DatasetTest, ShippedShakespeare) {
  std::vector<Record> records = LoadShakespeare();
  std::set<std::string> speakers;
  for (const Record& r : records) {
    ASSERT_FALSE(r.response.empty());
    speakers.insert(r.fields.at("speaker"));
  }
  EXPECT_GT(records.size(), 5000u);
  EXPECT_GT(speakers.size(), 20u);
  EXPECT_EQ(speakers.count("First Citizen"), 1u);
  EXPECT_EQ(speakers.count("ROMEO"), 1u);

  DataOptions capped;
  capped.path = kShakespeare;
  capped.max_records = 10;
  EXPECT_EQ(Load(capped).size(), 10u);
}

TEST_F(DatasetTest, JsonlFormats) {
  DataOptions options;
  options.path = Write(
      "mixed.jsonl",
      "{\"text\": \"Just some text.\", \"category\": \"prose\"}\n"
      "\n"
      "{\"instruction\": \"Add.\", \"input\": \"2 and 3\", \"output\": \"5\", "
      "\"category\": \"math\"}\n"
      "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"hi\"}\n"
      "{\"instruction\": \"Summarize.\", \"context\": \"Cats sleep.\", "
      "\"response\": \"Sleepy cats.\", \"category\": \"summary\", "
      "\"id\": 7}\n"
      "{\"question\": \"What is 1+1?\", \"answer\": \"2\"}\n");
  std::vector<Record> records = Load(options);
  ASSERT_EQ(records.size(), 5u);
  EXPECT_EQ(records[0].prompt, "");
  EXPECT_EQ(records[0].response, "Just some text.");
  EXPECT_EQ(records[0].fields.at("category"), "prose");
  EXPECT_EQ(records[1].prompt,
            "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n"
            "### Response:\n");
  EXPECT_EQ(records[1].response, "5");
  EXPECT_EQ(records[1].fields.at("category"), "math");
  EXPECT_EQ(records[1].fields.count("output"), 0u);
  EXPECT_EQ(records[2].prompt, "### Instruction:\nSay hi.\n\n### Response:\n");
  EXPECT_EQ(records[3].prompt,
            "### Instruction:\nSummarize.\n\n### Input:\nCats sleep.\n\n"
            "### Response:\n");
  EXPECT_EQ(records[3].response, "Sleepy cats.");
  EXPECT_EQ(records[3].fields.at("id"), "7");
  EXPECT_EQ(records[4].prompt,
            "### Instruction:\nWhat is 1+1?\n\n### Response:\n");
  EXPECT_EQ(records[4].response, "2");

  options.max_records = 2;
  EXPECT_EQ(Load(options).size(), 2u);
}

TEST_F(DatasetTest, JsonArrayFormat) {
  DataOptions options;
  options.path = Write("small.json",
                       "[{\"instruction\": \"Name a color.\", \"input\": \"\", "
                       "\"output\": \"Blue.\"},\n {\"text\": \"Hello.\"}]");
  std::vector<Record> records = Load(options);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].response, "Blue.");
  EXPECT_EQ(records[1].response, "Hello.");

  options.path = Write("object.json", "{\"text\": \"not an array\"}");
  auto not_array = LoadRecords(options);
  ASSERT_FALSE(not_array.ok());
  EXPECT_NE(not_array.status().message().find("array"), std::string::npos);

  options.path = Write("broken.json", "[\n{\"text\": \"a\"},\n{\"text\": }\n]");
  auto broken = LoadRecords(options);
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("line 3"), std::string::npos)
      << broken.status().ToString();
}

TEST_F(DatasetTest, ShippedAlpaca) {
  if (!PathExists(kAlpaca)) GTEST_SKIP() << kAlpaca << " not present";
  DataOptions options;
  options.path = kAlpaca;
  std::vector<Record> records = Load(options);
  EXPECT_EQ(records.size(), 2000u);
  for (const Record& r : records) {
    ASSERT_EQ(r.prompt.rfind("### Instruction:\n", 0), 0u) << r.prompt;
  }
}

TEST_F(DatasetTest, BadJsonlLineNamesTheLine) {
  DataOptions options;
  options.path = Write("bad.jsonl",
                       "{\"text\": \"fine\"}\n{\"text\": \"fine\"}\n"
                       "{\"text\": oops}\n");
  auto bad = LoadRecords(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(options.path), std::string::npos);
  EXPECT_NE(bad.status().message().find("line 3"), std::string::npos)
      << bad.status().ToString();

  options.path =
      Write("keys.jsonl", "{\"text\": \"a\"}\n{\"prompt\": \"b\"}\n");
  auto wrong_keys = LoadRecords(options);
  ASSERT_FALSE(wrong_keys.ok());
  EXPECT_NE(wrong_keys.status().message().find("line 2"), std::string::npos);
  EXPECT_NE(wrong_keys.status().message().find("'instruction'/'output'"),
            std::string::npos)
      << wrong_keys.status().ToString();

  options.path = Write("type.jsonl", "{\"text\": 3}\n");
  auto wrong_type = LoadRecords(options);
  ASSERT_FALSE(wrong_type.ok());
  EXPECT_NE(wrong_type.status().message().find("'text' must be a string"),
            std::string::npos)
      << wrong_type.status().ToString();
}

TEST_F(DatasetTest, EmptyFileIsAnError) {
  for (std::string name : {"empty.jsonl", "empty.json", "empty.txt"}) {
    DataOptions options;
    options.path = Write(name, name == "empty.json" ? "[]" : "\n\n");
    auto records = LoadRecords(options);
    ASSERT_FALSE(records.ok()) << name;
    EXPECT_NE(records.status().message().find(options.path), std::string::npos)
        << records.status().ToString();
  }
  DataOptions missing;
  missing.path = (dir_ / "missing.jsonl").string();
  auto not_found = LoadRecords(missing);
  ASSERT_FALSE(not_found.ok());
  EXPECT_EQ(not_found.status().code(), StatusCode::kNotFound);
}

TEST_F(DatasetTest, OversizeFileIsRefusedUnread) {
  DataOptions options;
  options.path = Write("huge.txt", "First Citizen:\n");
  fs::resize_file(options.path, kMaxDataFileBytes + 1);  // a hole, no disk
  auto records = LoadRecords(options);
  ASSERT_FALSE(records.ok()) << records.value().size() << " records";
  EXPECT_EQ(records.status().code(), StatusCode::kInvalidArgument);
  const std::string& message = records.status().message();
  EXPECT_NE(message.find(options.path), std::string::npos) << message;
  EXPECT_NE(message.find(std::to_string(kMaxDataFileBytes + 1) +
                         " bytes, more than the limit of " +
                         std::to_string(kMaxDataFileBytes)),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("hint:"), std::string::npos) << message;
}

TEST_F(DatasetTest, InstructionLossMasking) {
  Record record;
  record.prompt = "### Instruction:\nName a color.\n\n### Response:\n";
  record.response = "Blue is a color.";
  DataOptions options;
  options.packing = "truncate";
  options.max_seq_len = 512;
  std::vector<Example> examples = Tokenize({record}, *tokenizer_, options);
  ASSERT_EQ(examples.size(), 1u);
  const Example& ex = examples[0];

  const std::vector<int64_t> prompt =
      tokenizer_->Encode(record.prompt, false, false);
  const std::vector<int64_t> full =
      tokenizer_->Encode(record.prompt + record.response, false, false);
  ASSERT_GT(full.size(), prompt.size());
  // tokens: BOS, prompt + response; the EOS is only a target.
  std::vector<int64_t> expected_tokens{tokenizer_->bos_id()};
  expected_tokens.insert(expected_tokens.end(), full.begin(), full.end());
  EXPECT_EQ(ex.tokens, expected_tokens);
  ASSERT_EQ(ex.targets.size(), ex.tokens.size());
  for (size_t j = 0; j < ex.targets.size(); ++j) {
    // Position j predicts token j + 1; prompt tokens are 1..prompt.size().
    if (j + 1 <= prompt.size()) {
      EXPECT_EQ(ex.targets[j], -100) << "position " << j;
    } else if (j + 1 < ex.tokens.size()) {
      EXPECT_EQ(ex.targets[j], ex.tokens[j + 1]) << "position " << j;
    } else {
      EXPECT_EQ(ex.targets[j], tokenizer_->eos_id());
    }
  }
  std::vector<int64_t> response_targets;
  for (int64_t t : ex.targets) {
    if (t != -100 && t != tokenizer_->eos_id()) response_targets.push_back(t);
  }
  EXPECT_EQ(tokenizer_->Decode(response_targets), record.response);

  // A prompt longer than max_seq_len leaves no target: dropped, not empty.
  options.max_seq_len = 4;
  EXPECT_TRUE(Tokenize({record}, *tokenizer_, options).empty());
}

TEST_F(DatasetTest, PackWindowsHaveExactLengths) {
  std::vector<Record> records = LoadShakespeare();
  records.resize(50);
  DataOptions options;
  options.max_seq_len = 32;
  std::vector<int64_t> stream;
  for (const Record& r : records) {
    stream.push_back(tokenizer_->bos_id());
    for (int64_t id : tokenizer_->Encode(r.response, false, false)) {
      stream.push_back(id);
    }
    stream.push_back(tokenizer_->eos_id());
  }
  std::vector<Example> examples = Tokenize(records, *tokenizer_, options);
  const size_t T = 32;
  const size_t windows = (stream.size() - 1 + T - 1) / T;
  ASSERT_EQ(examples.size(), windows);
  std::vector<int64_t> rebuilt;
  for (size_t i = 0; i < examples.size(); ++i) {
    const Example& ex = examples[i];
    ASSERT_EQ(ex.tokens.size(), ex.targets.size());
    if (i + 1 < examples.size()) {
      EXPECT_EQ(ex.tokens.size(), T) << "window " << i;
    } else {
      EXPECT_EQ(ex.tokens.size(), stream.size() - 1 - T * (windows - 1));
    }
    for (size_t j = 0; j < ex.tokens.size(); ++j) {
      const int64_t next = stream[i * T + j + 1];
      // Text records: every next token is a target except a record's BOS.
      EXPECT_EQ(ex.targets[j], next == tokenizer_->bos_id() ? -100 : next);
    }
    rebuilt.insert(rebuilt.end(), ex.tokens.begin(), ex.tokens.end());
  }
  rebuilt.push_back(stream.back());
  EXPECT_EQ(rebuilt, stream);
  EXPECT_EQ(examples[0].tokens[0], tokenizer_->bos_id());
}

TEST_F(DatasetTest, TruncateKeepsOneExamplePerRecord) {
  std::vector<Record> records = LoadShakespeare();
  records.resize(40);
  DataOptions options;
  options.packing = "truncate";
  options.max_seq_len = 16;
  std::vector<Example> examples = Tokenize(records, *tokenizer_, options);
  ASSERT_EQ(examples.size(), records.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    const std::vector<int64_t> ids =
        tokenizer_->Encode(records[i].response, true, true);
    EXPECT_EQ(examples[i].tokens.size(), std::min<size_t>(16, ids.size() - 1));
    EXPECT_EQ(examples[i].tokens[0], tokenizer_->bos_id());
    EXPECT_EQ(examples[i].targets[0], ids[1]);
  }
}

TEST_F(DatasetTest, SplitIsDeterministicAndDisjoint) {
  const std::vector<Record> records = Numbered(100);
  std::vector<Record> train, eval, train2, eval2, train3, eval3;
  SplitTrainEval(records, 0.1, 42, &train, &eval);
  SplitTrainEval(records, 0.1, 42, &train2, &eval2);
  SplitTrainEval(records, 0.1, 43, &train3, &eval3);
  ASSERT_EQ(train.size(), 90u);
  ASSERT_EQ(eval.size(), 10u);
  auto names = [](const std::vector<Record>& rs) {
    std::vector<std::string> out;
    for (const Record& r : rs) out.push_back(r.response);
    return out;
  };
  EXPECT_EQ(names(train), names(train2));
  EXPECT_EQ(names(eval), names(eval2));
  EXPECT_NE(names(eval), names(eval3));
  std::set<std::string> all;
  for (const std::string& s : names(train)) all.insert(s);
  for (const std::string& s : names(eval)) {
    EXPECT_EQ(all.count(s), 0u) << s << " in both splits";
    all.insert(s);
  }
  EXPECT_EQ(all.size(), 100u);

  // HeldOutMask marks exactly the records SplitTrainEval holds out.
  std::vector<bool> mask = HeldOutMask(records.size(), 0.1, 42);
  std::set<std::string> masked;
  for (size_t i = 0; i < records.size(); ++i) {
    if (mask[i]) masked.insert(records[i].response);
  }
  std::vector<std::string> eval_names = names(eval);
  EXPECT_EQ(masked,
            std::set<std::string>(eval_names.begin(), eval_names.end()));

  // At least one eval record from two records on; none for fraction 0.
  SplitTrainEval(Numbered(2), 0.01, 1, &train, &eval);
  EXPECT_EQ(train.size(), 1u);
  EXPECT_EQ(eval.size(), 1u);
  SplitTrainEval(Numbered(1), 0.5, 1, &train, &eval);
  EXPECT_EQ(train.size(), 1u);
  EXPECT_TRUE(eval.empty());
  SplitTrainEval(Numbered(10), 0.0, 1, &train, &eval);
  EXPECT_EQ(train.size(), 10u);
  EXPECT_TRUE(eval.empty());
}

TEST_F(DatasetTest, ShuffledIndicesIsAPermutation) {
  std::vector<size_t> a = ShuffledIndices(1000, 5);
  EXPECT_EQ(a, ShuffledIndices(1000, 5));
  EXPECT_NE(a, ShuffledIndices(1000, 6));
  std::vector<size_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_TRUE(ShuffledIndices(0, 5).empty());
}

// Every record index appears in exactly one shard.
void ExpectCoversOnce(const std::vector<std::vector<size_t>>& shards,
                      size_t num_records) {
  std::vector<int> seen(num_records, 0);
  for (const auto& shard : shards) {
    for (size_t i : shard) {
      ASSERT_LT(i, num_records);
      ++seen[i];
    }
  }
  for (size_t i = 0; i < num_records; ++i) {
    ASSERT_EQ(seen[i], 1) << "record " << i;
  }
}

TEST_F(DatasetTest, IidPartitionCoversAllOnce) {
  const std::vector<Record> records = Numbered(103);
  auto shards = Partition(records, 4, "iid", "", 0, 9);
  ASSERT_TRUE(shards.ok()) << shards.status().ToString();
  ASSERT_EQ(shards->size(), 4u);
  ExpectCoversOnce(*shards, records.size());
  for (const auto& shard : *shards) {
    EXPECT_GE(shard.size(), 25u);
    EXPECT_LE(shard.size(), 26u);
  }
  auto again = Partition(records, 4, "iid", "", 0, 9);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*shards, *again);
}

TEST_F(DatasetTest, FieldPartitionKeepsSpeakersWhole) {
  const std::vector<Record> records = LoadShakespeare();
  const int n = 8;
  auto shards = Partition(records, n, "field", "speaker", 0, 3);
  ASSERT_TRUE(shards.ok()) << shards.status().ToString();
  ASSERT_EQ(shards->size(), static_cast<size_t>(n));
  ExpectCoversOnce(*shards, records.size());
  std::map<std::string, std::set<int>> shards_of_speaker;
  for (int k = 0; k < n; ++k) {
    for (size_t i : (*shards)[k]) {
      shards_of_speaker[records[i].fields.at("speaker")].insert(k);
    }
  }
  for (const auto& [speaker, in] : shards_of_speaker) {
    EXPECT_EQ(in.size(), 1u) << speaker;
  }
  // Greedy largest-first keeps the shards within a few percent of equal.
  for (const auto& shard : *shards) {
    EXPECT_GT(shard.size(), records.size() / n * 8 / 10);
  }
}

// Mean over speakers with >= 20 speeches of the largest share of the
// speaker's speeches that one shard holds.
double MeanMaxShare(const std::vector<Record>& records,
                    const std::vector<std::vector<size_t>>& shards) {
  std::map<std::string, std::map<size_t, int>> counts;
  std::map<std::string, int> totals;
  for (size_t k = 0; k < shards.size(); ++k) {
    for (size_t i : shards[k]) {
      const std::string& s = records[i].fields.at("speaker");
      ++counts[s][k];
      ++totals[s];
    }
  }
  double sum = 0;
  int groups = 0;
  for (const auto& [speaker, per_shard] : counts) {
    if (totals[speaker] < 20) continue;
    int best = 0;
    for (const auto& [k, c] : per_shard) best = std::max(best, c);
    sum += static_cast<double>(best) / totals[speaker];
    ++groups;
  }
  return groups == 0 ? 0 : sum / groups;
}

TEST_F(DatasetTest, DirichletSmallAlphaIsSkewed) {
  const std::vector<Record> records = LoadShakespeare();
  const int n = 4;
  auto skewed = Partition(records, n, "dirichlet", "speaker", 0.05, 11);
  auto even = Partition(records, n, "dirichlet", "speaker", 100.0, 11);
  ASSERT_TRUE(skewed.ok()) << skewed.status().ToString();
  ASSERT_TRUE(even.ok()) << even.status().ToString();
  ExpectCoversOnce(*skewed, records.size());
  ExpectCoversOnce(*even, records.size());
  const double skewed_share = MeanMaxShare(records, *skewed);
  const double even_share = MeanMaxShare(records, *even);
  EXPECT_GT(skewed_share, 0.8);
  EXPECT_LT(even_share, 0.45);  // 1/n = 0.25 plus sampling noise

  auto again = Partition(records, n, "dirichlet", "speaker", 0.05, 11);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*skewed, *again);
}

TEST_F(DatasetTest, PartitionErrors) {
  std::vector<Record> records = Numbered(10);
  records[6].fields.erase("speaker");
  for (std::string method : {"field", "dirichlet"}) {
    auto missing = Partition(records, 2, method, "speaker", 0.5, 1);
    ASSERT_FALSE(missing.ok()) << method;
    EXPECT_NE(missing.status().message().find("'speaker'"), std::string::npos)
        << missing.status().ToString();
    EXPECT_NE(missing.status().message().find("record 6"), std::string::npos)
        << missing.status().ToString();
  }
  auto zero = Partition(records, 0, "iid", "", 0, 1);
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("got 0"), std::string::npos);
  auto unknown = Partition(records, 2, "random", "", 0, 1);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("'random'"), std::string::npos);
}

TEST_F(DatasetTest, ParseShard) {
  auto ok = ParseShard("2/8");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok.value(), std::make_pair(2, 8));
  auto first = ParseShard("0/1");
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first.value(), std::make_pair(0, 1));
  for (std::string bad :
       {"8/8", "a/b", "1", "", "/8", "2/", "-1/8", "2/0", "2/8/1", " 2/8"}) {
    auto parsed = ParseShard(bad);
    ASSERT_FALSE(parsed.ok()) << "'" << bad << "'";
    EXPECT_NE(parsed.status().message().find("'" + bad + "'"),
              std::string::npos)
        << parsed.status().ToString();
  }
}

TEST_F(DatasetTest, BatchesArePadded) {
  std::vector<Example> examples(3);
  examples[0] = {{1, 5, 6}, {5, 6, 2}};
  examples[1] = {{1, 7}, {-100, 8}};
  examples[2] = {{1, 9, 10, 11}, {9, 10, 11, -100}};
  std::vector<Batch> batches = MakeBatches(examples, {1, 0, 2}, 2);
  ASSERT_EQ(batches.size(), 2u);
  const Batch& b = batches[0];
  ASSERT_EQ(b.tokens.sizes(), (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(b.targets.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(b.tokens.dtype(), torch::kInt64);
  EXPECT_EQ(b.targets.dtype(), torch::kInt64);
  EXPECT_TRUE(b.tokens.equal(
      torch::tensor({1, 7, 0, 1, 5, 6}, torch::kInt64).view({2, 3})));
  EXPECT_TRUE(b.targets.equal(
      torch::tensor({-100, 8, -100, 5, 6, 2}, torch::kInt64).view({2, 3})));
  EXPECT_EQ(b.num_target_tokens, 4);
  EXPECT_EQ(batches[1].tokens.sizes(), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(batches[1].num_target_tokens, 3);
  EXPECT_TRUE(MakeBatches(examples, {}, 2).empty());
}

TEST_F(DatasetTest, OptionsValidation) {
  YAML::Node root = YAML::Load(
      "data:\n  path: x.jsonl\n  max_seq_len: 0\n  packing: zip\n"
      "  eval_fraction: 1.5\n  partition: random\n  dirichlet_alpha: 0\n"
      "  format: csv\n  max_records: -1\n");
  ConfigReader in(root, "test.yaml");
  ConfigReader section = in.Section("data");
  DataOptions options;
  options.Read(section);
  Status status = in.Finish();
  ASSERT_FALSE(status.ok());
  const std::string& message = status.message();
  for (std::string needle :
       {"data.max_seq_len: must be in [1, 1048576], got 0",
        "data.packing: expected pack or truncate, got 'zip'",
        "data.eval_fraction: must be in [0, 1), got 1.5",
        "data.partition: expected iid, field or dirichlet, got 'random'",
        "data.dirichlet_alpha: must be > 0", "data.format:", "got 'csv'",
        "data.max_records: must be >= 0"}) {
    EXPECT_NE(message.find(needle), std::string::npos)
        << "missing '" << needle << "' in " << message;
  }

  YAML::Node good = YAML::Load(
      "data:\n  path: a.json\n  max_seq_len: 64\n  packing: truncate\n"
      "  partition: dirichlet\n  dirichlet_alpha: 0.1\n  seed: 5\n");
  ConfigReader in2(good, "good.yaml");
  ConfigReader section2 = in2.Section("data");
  DataOptions parsed;
  parsed.Read(section2);
  ASSERT_TRUE(in2.Finish().ok());
  EXPECT_EQ(parsed.path, "a.json");
  EXPECT_EQ(parsed.max_seq_len, 64);
  EXPECT_EQ(parsed.packing, "truncate");
  EXPECT_EQ(parsed.seed, 5u);
  EXPECT_DOUBLE_EQ(parsed.dirichlet_alpha, 0.1);
}

}  // namespace
}  // namespace data
}  // namespace fedpeft
