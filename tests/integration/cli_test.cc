// End-to-end tests of the `fedpeft` executable: real processes on the real
// shipped model and data, checking exit codes, stdout and error messages.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "tests/test_paths.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kBinary = FEDPEFT_BINARY;
const std::string kLlama2c =
    kSource + "/assets/stories260K-llama2c/stories260K.bin";

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `fedpeft <args>` in the source tree (configs use relative paths).
  Result Run(const std::vector<std::string>& args) {
    std::string cmd = "cd " + Quote(kSource) + " && " + Quote(kBinary);
    for (const auto& a : args) cmd += " " + Quote(a);
    std::string out_path = (dir_ / "stdout").string();
    std::string err_path = (dir_ / "stderr").string();
    cmd += " >" + Quote(out_path) + " 2>" + Quote(err_path) + " </dev/null";
    int status = std::system(cmd.c_str());
    Result r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = Slurp(out_path);
    r.err = Slurp(err_path);
    return r;
  }

  std::string Path(const std::string& name) { return (dir_ / name).string(); }

  // A short training run into `out`; returns its result.
  Result Train(const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"train",
                                  "--config",
                                  "configs/local_train.yaml",
                                  "--out",
                                  out,
                                  "--set",
                                  "train.max_steps=40",
                                  "--set",
                                  "data.max_records=800",
                                  "--set",
                                  "data.max_seq_len=64",
                                  "--set",
                                  "sample.max_tokens=16",
                                  "--set",
                                  "model.threads=1"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args);
  }

  fs::path dir_;
};

double Field(const std::string& text, const std::string& key) {
  std::smatch m;
  std::regex re(key + "=([-0-9.eE+na]+)");
  if (!std::regex_search(text, m, re)) return std::nan("");
  return std::stod(m[1]);
}

TEST_F(CliTest, HelpAndUnknownCommand) {
  Result help = Run({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("train"));
  EXPECT_THAT(help.out, HasSubstr("generate"));
  Result sub = Run({"generate", "--help"});
  EXPECT_EQ(sub.exit_code, 0);
  EXPECT_THAT(sub.out, HasSubstr("--temperature"));
  Result bad = Run({"frobnicate"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("unknown command 'frobnicate'"));
  Result missing = Run({"train"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.err, HasSubstr("--config"));
}

// init-model: shrunk random checkpoints from the real config.json files
// keep their family's config (head_dim, rope_scaling); a shape the config
// cannot take is one clear error.
TEST_F(CliTest, InitModelBuildsARunnableShrunkCheckpoint) {
  Result r = Run({"init-model", "--config", "assets/configs/qwen3-0.6b",
                  "--out", Path("qwen3"), "--layers", "2", "--hidden", "64",
                  "--heads", "4", "--kv-heads", "2", "--head-dim", "32",
                  "--intermediate", "96", "--seed", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("qwen3, 2 layers, hidden 64, 4 heads / 2 kv of "
                               "32, intermediate 96, vocab 151936"));
  const std::string config = Slurp(Path("qwen3") + "/config.json");
  EXPECT_THAT(config, HasSubstr("\"head_dim\": 32"));
  EXPECT_THAT(config, HasSubstr("\"Qwen3ForCausalLM\""));

  Result llama =
      Run({"init-model", "--config", "assets/configs/llama-3.2-1b/config.json",
           "--out", Path("llama"), "--layers", "1", "--hidden", "32", "--heads",
           "2", "--kv-heads", "1", "--intermediate", "64", "--vocab", "300"});
  ASSERT_EQ(llama.exit_code, 0) << llama.err;
  EXPECT_THAT(llama.out, HasSubstr("rope_scaling llama3"));
  EXPECT_THAT(Slurp(Path("llama") + "/config.json"),
              HasSubstr("\"original_max_position_embeddings\": 8192"));

  Result bad = Run({"init-model", "--config", "assets/configs/qwen3-0.6b",
                    "--out", Path("bad"), "--heads", "5"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("n_kv_heads: must divide n_heads (5)"));
}

TEST_F(CliTest, GreedyGenerationIsDeterministicAndLayoutIndependent) {
  std::vector<std::string> args{"generate", "--model",          kModel,
                                "--prompt", "Once upon a time", "--max-tokens",
                                "40",       "--temperature",    "0"};
  Result a = Run(args);
  Result b = Run(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_GT(a.out.size(), 40u);
  // Only the generated text goes to stdout: no log lines, no prompt.
  EXPECT_THAT(a.out, ::testing::Not(HasSubstr("[")));
  args[2] = kLlama2c;
  Result c = Run(args);
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(a.out, c.out);
  // The shipped model tells children's stories.
  EXPECT_THAT(a.out, ::testing::AnyOf(HasSubstr("little"), HasSubstr("Lily"),
                                      HasSubstr("day"), HasSubstr("was")));
}

TEST_F(CliTest, TrainEvalGenerateExportRoundTrip) {
  std::string out = Path("adapter");
  Result t = Train(out);
  ASSERT_EQ(t.exit_code, 0) << t.err;
  double before = Field(t.out, "eval_loss_before");
  double after = Field(t.out, "eval_loss_after");
  EXPECT_LT(after, before) << t.out;
  EXPECT_TRUE(fs::exists(out + "/adapter_config.json"));
  EXPECT_TRUE(fs::exists(out + "/adapter_model.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/train_summary.json"));

  // eval with the adapter on the same held-out split reproduces the number.
  Result e = Run({"eval", "--adapter", out, "--config",
                  "configs/local_train.yaml", "--set", "data.max_records=800",
                  "--set", "data.max_seq_len=64", "--split", "eval"});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_NEAR(Field(e.out, "eval_loss"), after, 1e-4) << e.out;
  Result base =
      Run({"eval", "--model", kModel, "--config", "configs/local_train.yaml",
           "--set", "data.max_records=800", "--set", "data.max_seq_len=64",
           "--split", "eval"});
  ASSERT_EQ(base.exit_code, 0) << base.err;
  EXPECT_NEAR(Field(base.out, "eval_loss"), before, 1e-4);
  std::string last_line = e.out.substr(e.out.rfind("eval_loss="));
  EXPECT_THAT(last_line, ::testing::MatchesRegex(
                             "eval_loss=[0-9.]+ ppl=[0-9.]+ tokens=[0-9]+\n"));

  // A merged model folder gives the same greedy text as base + adapter.
  std::string merged = Path("merged");
  Result x = Run({"export", "--adapter", out, "--merge", "--out", merged});
  ASSERT_EQ(x.exit_code, 0) << x.err;
  EXPECT_TRUE(fs::exists(merged + "/config.json"));
  EXPECT_TRUE(fs::exists(merged + "/tokenizer.model"));
  Result g1 = Run({"generate", "--adapter", out, "--prompt",
                   "ROMEO:", "--max-tokens", "30"});
  Result g2 = Run({"generate", "--model", merged, "--prompt",
                   "ROMEO:", "--max-tokens", "30"});
  ASSERT_EQ(g1.exit_code, 0) << g1.err;
  ASSERT_EQ(g2.exit_code, 0) << g2.err;
  EXPECT_EQ(g1.out, g2.out);
  Result g0 = Run({"generate", "--model", kModel, "--prompt",
                   "ROMEO:", "--max-tokens", "30"});
  EXPECT_NE(g0.out, g1.out) << "the adapter changed nothing";

  // Re-export as an adapter folder: loadable, same tensors.
  std::string again = Path("again");
  Result y = Run({"export", "--adapter", out, "--out", again});
  ASSERT_EQ(y.exit_code, 0) << y.err;
  EXPECT_EQ(Slurp(out + "/adapter_model.safetensors"),
            Slurp(again + "/adapter_model.safetensors"));

  // A merged F32 GGUF file (with its tokenizer) also gives the same text,
  // read back by --model; a GGUF LoRA is written beside. (llama.cpp itself
  // reads them in scripts/gguf_check.sh.)
  std::string gguf = Path("merged.gguf");
  Result z = Run({"export", "--adapter", out, "--merge", "--format", "gguf",
                  "--gguf-type", "f32", "--out", gguf});
  ASSERT_EQ(z.exit_code, 0) << z.err;
  Result g3 = Run({"generate", "--model", gguf, "--prompt",
                   "ROMEO:", "--max-tokens", "30"});
  ASSERT_EQ(g3.exit_code, 0) << g3.err;
  EXPECT_EQ(g3.out, g1.out);
  Result l = Run({"export", "--adapter", out, "--format", "gguf", "--out",
                  Path("lora.gguf")});
  ASSERT_EQ(l.exit_code, 0) << l.err;
  EXPECT_EQ(Slurp(Path("lora.gguf")).substr(0, 4), "GGUF");
  Result bad = Run({"export", "--adapter", out, "--merge", "--format", "gguf",
                    "--gguf-type", "q4_k", "--out", Path("x.gguf")});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("--gguf-type: expected f32, f16 or q8_0, "
                                 "got 'q4_k'"));
  Result fmt =
      Run({"export", "--adapter", out, "--format", "onnx", "--out", Path("x")});
  EXPECT_EQ(fmt.exit_code, 1);
  EXPECT_THAT(fmt.err, HasSubstr("--format: expected peft or gguf"));
}

TEST_F(CliTest, BottleneckAdapterTrains) {
  std::string out = Path("bn");
  Result t = Train(out, {"--set", "peft.method=bottleneck"});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_LT(Field(t.out, "eval_loss_after"), Field(t.out, "eval_loss_before"));
  Result m = Run({"export", "--adapter", out, "--merge", "--out", Path("m")});
  EXPECT_EQ(m.exit_code, 1);
  EXPECT_THAT(m.err, HasSubstr("merge"));
  Result g = Run({"export", "--adapter", out, "--format", "gguf", "--out",
                  Path("bn.gguf")});
  EXPECT_EQ(g.exit_code, 1);
  EXPECT_THAT(g.err, HasSubstr("only LoRA adapters have a llama.cpp GGUF"));
}

TEST_F(CliTest, BadConfigNamesTheKey) {
  Result r =
      Run({"train", "--config", "configs/local_train.yaml", "--out", Path("o"),
           "--set", "train.optim.lrr=1", "--set", "peft.lora.r=zero"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("unknown key 'train.optim.lrr'"));
  EXPECT_THAT(r.err, HasSubstr("peft.lora.r"));
  EXPECT_THAT(r.err, HasSubstr("zero"));
  Result missing =
      Run({"train", "--config", Path("nope.yaml"), "--out", Path("o")});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("nope.yaml"));
}

TEST_F(CliTest, BadModelFilesAreNamed) {
  // Missing path.
  Result r = Run({"generate", "--model", Path("nothing"), "--prompt", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("nothing"));

  // Truncated safetensors in an otherwise complete folder.
  std::string folder = Path("trunc");
  fs::create_directories(folder);
  for (const char* f : {"config.json", "tokenizer.model"}) {
    fs::copy_file(kModel + "/" + f, folder + "/" + f);
  }
  std::string st = Slurp(kModel + "/model.safetensors");
  std::ofstream(folder + "/model.safetensors", std::ios::binary)
      << st.substr(0, st.size() / 2);
  r = Run({"generate", "--model", folder, "--prompt", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("model.safetensors"));

  // Truncated llama2.c checkpoint.
  std::string bin = Path("model.bin");
  std::string b = Slurp(kLlama2c);
  std::ofstream(bin, std::ios::binary) << b.substr(0, b.size() - 100);
  r = Run({"generate", "--model", bin, "--tokenizer",
           kModel + "/tokenizer.model", "--prompt", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("model.bin"));

  // Unsupported architecture.
  std::string arch = Path("arch");
  fs::create_directories(arch);
  fs::copy_file(kModel + "/model.safetensors", arch + "/model.safetensors");
  std::string cfg = Slurp(kModel + "/config.json");
  cfg.replace(cfg.find("\"llama\""), 7, "\"gpt2\"");
  std::ofstream(arch + "/config.json") << cfg;
  r = Run({"generate", "--model", arch, "--tokenizer",
           kModel + "/tokenizer.model", "--prompt", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("gpt2"));

  // Bad --max-tokens is a usage error with a message, not a crash.
  r = Run(
      {"generate", "--model", kModel, "--prompt", "x", "--max-tokens", "lots"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(CliTest, MalformedJsonlLineIsNamed) {
  std::string data = Path("data.jsonl");
  std::ofstream(data) << "{\"text\": \"Once upon a time there was a cat.\"}\n"
                      << "{\"text\": \"The cat sat.\"}\n"
                      << "{\"text\": broken\n";
  Result r = Run({"eval", "--model", kModel, "--data", data});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("data.jsonl"));
  EXPECT_THAT(r.err, HasSubstr("line 3"));
}

TEST_F(CliTest, EvalPrintsMachineReadableLastLine) {
  std::string data = Path("stories.jsonl");
  std::ofstream(data)
      << "{\"text\": \"Once upon a time, there was a little girl named "
         "Lily. She loved to play outside.\"}\n"
      << "{\"text\": \"One day, a big dog came to the park. The dog was "
         "happy.\"}\n";
  Result r = Run({"eval", "--model", kModel, "--data", data});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  double loss = Field(r.out, "eval_loss");
  // TinyStories text is in-distribution for the shipped model.
  EXPECT_GT(loss, 0.1);
  EXPECT_LT(loss, 3.0);
  EXPECT_NEAR(Field(r.out, "ppl"), std::exp(loss), 1e-3 * std::exp(loss));
}

// The last non-empty line of `text`.
std::string LastLine(const std::string& text) {
  std::string t = text;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

TEST_F(CliTest, TokenizePrintsIdsAsTheLastLine) {
  const std::string qwen3 = kSource + "/../shared/assets/tokenizers/qwen3";
  // Ids from Hugging Face's tokenizers.js (tests/reference/tokenizers/).
  Result folder =
      Run({"tokenize", "--tokenizer", qwen3, "--text", "Hello World"});
  ASSERT_EQ(folder.exit_code, 0) << folder.err;
  EXPECT_EQ(LastLine(folder.out), "[9707, 4337]");
  const std::string chat = Path("chat.txt");
  std::ofstream(chat)
      << "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
  Result file = Run(
      {"tokenize", "--tokenizer", qwen3 + "/tokenizer.json", "--file", chat});
  ASSERT_EQ(file.exit_code, 0) << file.err;
  EXPECT_EQ(LastLine(file.out),
            "[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]");

  // SentencePiece adds BOS (id 1) unless --no-special; llama2.c agrees.
  Result sp = Run({"tokenize", "--tokenizer", kModel, "--text", "Once"});
  ASSERT_EQ(sp.exit_code, 0) << sp.err;
  Result bare = Run(
      {"tokenize", "--tokenizer", kModel, "--text", "Once", "--no-special"});
  ASSERT_EQ(bare.exit_code, 0) << bare.err;
  EXPECT_EQ(LastLine(sp.out).rfind("[1, ", 0), 0u) << sp.out;
  EXPECT_EQ("[1, " + LastLine(bare.out).substr(1), LastLine(sp.out));
  Result l2c = Run({"tokenize", "--tokenizer",
                    kSource + "/assets/stories260K-llama2c/tok512.bin",
                    "--text", "Once", "--no-special"});
  ASSERT_EQ(l2c.exit_code, 0) << l2c.err;
  EXPECT_EQ(LastLine(l2c.out), LastLine(bare.out));

  Result missing =
      Run({"tokenize", "--tokenizer", "/nonexistent/tok.json", "--text", "x"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("/nonexistent/tok.json"));
  Result usage = Run({"tokenize", "--tokenizer", qwen3});
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_THAT(usage.err, HasSubstr("--text"));
  Result help = Run({"tokenize", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--no-special"));
}

}  // namespace
}  // namespace fedpeft
