// `fedpeft serve` with a `pipeline:` section end to end: the model split
// across real stage processes that relay activations over gRPC on real
// sockets. Greedy answers, of the base and of a LoRA adapter whose layers
// live at different stages, equal `fedpeft generate`; several sequences in
// flight at once; a stage that dies fails the requests in flight (no hang)
// and the ring re-forms when it is back; a stage with another model, stage
// count or certificate role is refused.
#include <httplib.h>

#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using testing_util::Slurp;
using Json = nlohmann::json;

const std::string kRingPrompt = "Once upon a time";

class PipelineTest : public testing_util::FederationTest {
 protected:
  static void SetUpTestSuite() {
    ::signal(SIGPIPE, SIG_IGN);
    adapter_ = new std::string(
        (fs::temp_directory_path() /
         ("fedpeft_pipeline_adapter_" + std::to_string(::getpid())))
            .string());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*adapter_);
    delete adapter_;
  }

  // A LoRA adapter on every layer, trained once for the suite.
  std::string Adapter() {
    if (fs::exists(*adapter_ + "/adapter_config.json")) return *adapter_;
    const int code =
        Wait(Spawn(Command({"train", "--config", "configs/local_train.yaml",
                            "--out", *adapter_},
                           {"train.max_steps=30", "data.max_records=800",
                            "data.max_seq_len=64", "sample.max_tokens=1",
                            "model.threads=1"}),
                   Path("train.log")),
             std::chrono::seconds(180));
    EXPECT_EQ(code, 0) << Slurp(Path("train.log"));
    return *adapter_;
  }

  // What `fedpeft generate` writes (without its final newline).
  std::string Generate(const std::string& adapter, int max_tokens) {
    std::vector<std::string> args = {
        "generate",  "--model",      "assets/stories260K",      "--prompt",
        kRingPrompt, "--max-tokens", std::to_string(max_tokens)};
    if (!adapter.empty()) args.insert(args.end(), {"--adapter", adapter});
    const std::string out = Path("generate.out");
    fs::remove(out);
    EXPECT_EQ(
        Wait(Spawn(args, out, Path("generate.err")), std::chrono::seconds(60)),
        0);
    std::string text = Slurp(out);
    if (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
  }

  // The shared --set arguments of every process of a ring of `stages`.
  std::vector<std::string> RingSets(int stages,
                                    const std::vector<std::string>& extra) {
    std::vector<std::string> sets = {
        "pipeline.stages=" + std::to_string(stages),
        "model.threads=1",
        "pipeline.heartbeat_ms=100",
        "pipeline.stage_timeout_ms=1500",
        "serve.parallel=8",
        "serve.base_name=base"};
    if (!adapter_path_.empty())
      sets.push_back("serve.adapters.a=" + adapter_path_);
    sets.insert(sets.end(), extra.begin(), extra.end());
    return sets;
  }

  // Starts the head; fills head_port_ (pipeline) and http_port_; false if
  // it died first.
  bool StartHead(int stages, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> sets = RingSets(stages, extra);
    sets.insert(
        sets.end(),
        {"pipeline.head=127.0.0.1:0", "pipeline.port_file=" + Path("head.port"),
         "serve.listen=127.0.0.1:0", "serve.port_file=" + Path("http.port")});
    head_ = Spawn(
        Command({"serve", "--config", "configs/pipeline/pipeline.yaml"}, sets),
        Path("head.log"));
    http_port_ =
        WaitForPort(head_, Path("http.port"), std::chrono::seconds(60));
    head_port_ = http_port_ > 0 ? WaitForPort(head_, Path("head.port")) : -1;
    return head_port_ > 0;
  }

  pid_t StartStage(int stages, int stage,
                   const std::vector<std::string>& extra = {}) {
    std::vector<std::string> sets = RingSets(stages, extra);
    sets.insert(sets.end(),
                {"pipeline.stage=" + std::to_string(stage),
                 "pipeline.head=127.0.0.1:" + std::to_string(head_port_)});
    return Spawn(
        Command({"serve", "--config", "configs/pipeline/pipeline.yaml"}, sets),
        Path("stage" + std::to_string(stage) + ".log"));
  }

  // Until the head logged the ring up in `epoch`.
  bool WaitForRing(int epoch) {
    const std::string mark = "ring up (epoch " + std::to_string(epoch) + ")";
    return WaitFor(
        [&] { return Slurp(Path("head.log")).find(mark) != std::string::npos; },
        std::chrono::seconds(60));
  }

  httplib::Result Complete(const std::string& model, int max_tokens,
                           bool stream = false) {
    httplib::Client client("127.0.0.1", http_port_);
    client.set_read_timeout(std::chrono::seconds(60));
    const Json body = {{"model", model},
                       {"prompt", kRingPrompt},
                       {"max_tokens", max_tokens},
                       {"temperature", 0},
                       {"stream", stream}};
    return client.Post("/v1/completions", body.dump(), "application/json");
  }

  // The text of an unstreamed answer, or the error body.
  static std::string Text(const httplib::Result& res) {
    if (!res) return "no response: " + httplib::to_string(res.error());
    const Json j = Json::parse(res->body, nullptr, false);
    if (res->status != 200 || j.is_discarded()) return res->body;
    return j["choices"][0]["text"];
  }

  // The concatenated deltas of a streamed answer.
  static std::string StreamedText(const std::string& events) {
    std::string text;
    std::istringstream in(events);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("data: {", 0) != 0) continue;
      const Json chunk = Json::parse(line.substr(6), nullptr, false);
      if (chunk.is_discarded() || chunk["choices"].empty()) continue;
      text += chunk["choices"][0]["text"].get<std::string>();
    }
    return text;
  }

  static std::string* adapter_;
  std::string adapter_path_;
  pid_t head_ = -1;
  int head_port_ = -1;
  int http_port_ = -1;
};

std::string* PipelineTest::adapter_ = nullptr;

// Three stages (layers split by hand 1 + 2 + 2 of stories260K's 5) answer
// as one process does: the base and a LoRA adapter on every layer, each
// stage applying its layers' part; streamed or not; and six requests at
// once, more sequences in flight than stages.
TEST_F(PipelineTest, ThreeStagesAnswerAsGenerateDoes) {
  adapter_path_ = Adapter();
  const std::string want_base = Generate("", 40);
  const std::string want_a = Generate(adapter_path_, 40);
  ASSERT_FALSE(want_base.empty());
  ASSERT_NE(want_base, want_a) << "the adapter changes nothing";

  ASSERT_TRUE(StartHead(3, {"pipeline.layers=[1, 2, 2]"}))
      << Slurp(Path("head.log"));
  StartStage(3, 2);
  StartStage(3, 1);
  ASSERT_TRUE(WaitForRing(1))
      << Slurp(Path("head.log")) << Slurp(Path("stage1.log"))
      << Slurp(Path("stage2.log"));
  const std::string log = Slurp(Path("head.log"));
  EXPECT_THAT(log, testing::HasSubstr("split of 5 layers over 3 stage(s): "
                                      "[0, 1) [1, 3) [3, 5)"));
  EXPECT_THAT(Slurp(Path("stage2.log")),
              testing::HasSubstr("loaded layers 3-4"));

  EXPECT_EQ(Text(Complete("base", 40)), want_base);
  EXPECT_EQ(Text(Complete("a", 40)), want_a);
  auto streamed = Complete("a", 40, /*stream=*/true);
  ASSERT_TRUE(streamed);
  EXPECT_EQ(streamed->status, 200);
  EXPECT_EQ(StreamedText(streamed->body), want_a);

  std::vector<std::string> got(6);
  std::vector<std::thread> clients;
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back(
        [&, i] { got[i] = Text(Complete(i % 2 == 0 ? "base" : "a", 40)); });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(got[i], i % 2 == 0 ? want_base : want_a) << "request " << i;
  }

  // `fedpeft status --pipeline` shows every stage's span and memory.
  const std::string status = Path("status.out");
  ASSERT_EQ(Wait(Spawn({"status", "--address",
                        "127.0.0.1:" + std::to_string(head_port_), "--pipeline",
                        "--json"},
                       status),
                 std::chrono::seconds(30)),
            0)
      << Slurp(status);
  const Json j = Json::parse(Slurp(status), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << Slurp(status);
  EXPECT_TRUE(j["ring_up"].get<bool>());
  ASSERT_EQ(j["stages"].size(), 3u);
  const int ends[] = {1, 3, 5};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["stages"][i]["layer_end"], ends[i]) << j.dump();
    EXPECT_GT(j["stages"][i]["peak_rss_bytes"].get<uint64_t>(), 0u);
    EXPECT_GT(j["stages"][i]["busy_seconds"].get<double>(), 0.0) << j.dump();
  }
}

// A stage killed while a long answer is generated: the request ends with
// an error naming the broken ring within seconds (no hang), new requests
// get 503 while the ring is down, and once the stage is back (on another
// port) the ring re-forms in a new epoch and answers as before.
TEST_F(PipelineTest, AStageThatDiesFailsItsRequestsAndTheRingReforms) {
  const std::string want = Generate("", 24);
  ASSERT_TRUE(StartHead(2)) << Slurp(Path("head.log"));
  pid_t stage = StartStage(2, 1);
  ASSERT_TRUE(WaitForRing(1)) << Slurp(Path("head.log"));
  EXPECT_EQ(Text(Complete("base", 24)), want);

  // A streamed answer of 250 tokens; the stage dies after its first bytes.
  std::atomic<bool> first_bytes{false};
  std::string events;
  std::thread reader([&] {
    httplib::Client client("127.0.0.1", http_port_);
    client.set_read_timeout(std::chrono::seconds(60));
    const Json body = {{"model", "base"},
                       {"prompt", kRingPrompt},
                       {"max_tokens", 250},
                       {"temperature", 0},
                       {"stream", true}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      events.append(data, n);
      first_bytes = true;
      return true;
    };
    (void)client.send(req);
  });
  ASSERT_TRUE(
      WaitFor([&] { return first_bytes.load(); }, std::chrono::seconds(30)));
  const auto killed = testing_util::Clock::now();
  kill(stage, SIGKILL);
  EXPECT_EQ(Wait(stage, std::chrono::seconds(10)), 128 + SIGKILL);
  reader.join();
  EXPECT_LT(testing_util::Clock::now() - killed, std::chrono::seconds(10));
  EXPECT_THAT(events, testing::HasSubstr("the pipeline broke while "
                                         "generating"));
  EXPECT_THAT(events, testing::HasSubstr("stage 1"));

  auto refused = Complete("base", 8);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503) << refused->body;
  EXPECT_THAT(refused->body, testing::HasSubstr("the pipeline is not ready"));

  StartStage(2, 1);
  ASSERT_TRUE(WaitForRing(2)) << Slurp(Path("head.log"));
  EXPECT_EQ(Text(Complete("base", 24)), want);
  EXPECT_FALSE(Exited(head_)) << Slurp(Path("head.log"));
}

// A stage whose model files differ (one config value changed: equal
// shapes), or whose config has another stage count, is refused: it ends
// with an error naming both sides, and the head goes on.
TEST_F(PipelineTest, AStageThatDoesNotFitIsRefused) {
  ASSERT_TRUE(StartHead(2)) << Slurp(Path("head.log"));
  const std::string other = Path("other_model");
  fs::copy(kModel, other);
  fs::path config = fs::path(other) / "config.json";
  Json c = Json::parse(Slurp(config.string()));
  c["rms_norm_eps"] = 1e-6;
  std::ofstream(config) << c.dump(2);

  pid_t wrong_model = StartStage(2, 1, {"model.path=" + other});
  EXPECT_EQ(Wait(wrong_model, std::chrono::seconds(60)), 1);
  EXPECT_THAT(Slurp(Path("stage1.log")),
              testing::HasSubstr("is not the head's (5 layers, dim 64"));
  EXPECT_THAT(Slurp(Path("head.log")), testing::HasSubstr("refused"));

  fs::remove(Path("stage1.log"));
  pid_t wrong_count = StartStage(3, 1);
  EXPECT_EQ(Wait(wrong_count, std::chrono::seconds(60)), 1);
  EXPECT_THAT(Slurp(Path("stage1.log")),
              testing::HasSubstr("pipeline.stages is 3, the head's is 2"));

  StartStage(2, 1);
  EXPECT_TRUE(WaitForRing(1)) << Slurp(Path("head.log"));
  EXPECT_FALSE(Exited(head_));
}

// Under mutual TLS a stage needs a certificate of role edge: a worker's
// certificate is refused at its join; with edge certificates the ring
// forms and answers over HTTPS.
TEST_F(PipelineTest, MutualTlsAdmitsOnlyEdgeCertificates) {
  const std::string certs = Path("certs");
  ASSERT_TRUE(MakeCerts(certs, {{"edge", "head"},
                                {"edge", "stage"},
                                {"worker", "mallory"},
                                {"operator", "alice"}}))
      << Slurp(Path("certs.txt"));
  auto tls = [&](const std::string& name) {
    return std::vector<std::string>{"tls.insecure=false", "tls.enabled=true",
                                    "tls.ca=" + certs + "/ca.crt",
                                    "tls.cert=" + certs + "/" + name + ".crt",
                                    "tls.key=" + certs + "/" + name + ".key"};
  };
  ASSERT_TRUE(StartHead(2, tls("head"))) << Slurp(Path("head.log"));
  pid_t mallory = StartStage(2, 1, tls("mallory"));
  EXPECT_EQ(Wait(mallory, std::chrono::seconds(60)), 1);
  EXPECT_THAT(Slurp(Path("stage1.log")),
              testing::HasSubstr("has role worker; pipeline stages need role "
                                 "edge"));

  StartStage(2, 1, tls("stage"));
  ASSERT_TRUE(WaitForRing(1))
      << Slurp(Path("head.log")) << Slurp(Path("stage1.log"));
  httplib::SSLClient client("127.0.0.1", http_port_, certs + "/alice.crt",
                            certs + "/alice.key");
  client.set_ca_cert_path((certs + "/ca.crt").c_str());
  client.enable_server_certificate_verification(true);
  client.set_read_timeout(std::chrono::seconds(60));
  const Json body = {{"model", "base"},
                     {"prompt", kRingPrompt},
                     {"max_tokens", 16},
                     {"temperature", 0}};
  auto res = client.Post("/v1/completions", body.dump(), "application/json");
  EXPECT_EQ(Text(res), Generate("", 16));
}

}  // namespace
}  // namespace fedpeft
