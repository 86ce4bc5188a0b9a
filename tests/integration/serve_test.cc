// `fedpeft serve` end to end: a real server process on a real socket, two
// trained adapters and the base in one process, each answering as
// `fedpeft generate` does with that adapter; streaming; bad requests get
// 4xx JSON errors and the server goes on; mutual TLS with an allowlist.
#include <httplib.h>

#include <set>

#include "peft/peft_io.h"
#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using testing_util::Slurp;
using Json = nlohmann::json;

const std::string kPrompt = "Once upon a time";

class ServeTest : public testing_util::FederationTest {
 protected:
  // Two adapters trained once for the suite: plain LoRA and rsLoRA with
  // another seed, so their answers differ from each other and the base.
  static void SetUpTestSuite() {
    // httplib's TLS client writes with SSL_write; a server that refuses the
    // handshake closes the socket, which must be an error, not SIGPIPE.
    ::signal(SIGPIPE, SIG_IGN);
    adapters_ = new std::string(
        (fs::temp_directory_path() /
         ("fedpeft_serve_adapters_" + std::to_string(::getpid())))
            .string());
    fs::create_directories(*adapters_);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*adapters_);
    delete adapters_;
  }

  // Runs `fedpeft args...` to the end; its stdout and stderr in `log`.
  int RunToEnd(const std::vector<std::string>& args, const std::string& log) {
    return Wait(Spawn(args, log), std::chrono::seconds(180));
  }

  std::string Adapter(const std::string& name) {
    const std::string dir = *adapters_ + "/" + name;
    if (fs::exists(dir + "/adapter_config.json")) return dir;
    std::vector<std::string> args = {"train",
                                     "--config",
                                     "configs/local_train.yaml",
                                     "--out",
                                     dir,
                                     "--set",
                                     "train.max_steps=30",
                                     "--set",
                                     "data.max_records=800",
                                     "--set",
                                     "data.max_seq_len=64",
                                     "--set",
                                     "sample.max_tokens=1",
                                     "--set",
                                     "model.threads=1"};
    if (name == "b") {
      args.insert(args.end(),
                  {"--set", "seed=7", "--set", "peft.lora.use_rslora=true"});
    }
    EXPECT_EQ(RunToEnd(args, Path("train_" + name + ".log")), 0)
        << Slurp(Path("train_" + name + ".log"));
    return dir;
  }

  // What `fedpeft generate` writes for `adapter` ("" = the base), without
  // the newline it ends with.
  std::string Generate(const std::string& adapter, int max_tokens) {
    std::vector<std::string> args = {
        "generate", "--model",      "assets/stories260K",      "--prompt",
        kPrompt,    "--max-tokens", std::to_string(max_tokens)};
    if (!adapter.empty()) args.insert(args.end(), {"--adapter", adapter});
    const std::string out = Path("generate.out");
    fs::remove(out);
    pid_t pid = Spawn(args, out, Path("generate.err"));
    EXPECT_EQ(Wait(pid, std::chrono::seconds(60)), 0);
    std::string text = Slurp(out);
    if (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
  }

  // Starts `fedpeft serve` with `sets`; returns its port (-1 if it died).
  int StartServe(const std::vector<std::string>& sets) {
    std::vector<std::string> all = {"serve.listen=127.0.0.1:0",
                                    "serve.port_file=" + Path("port"),
                                    "model.threads=1"};
    all.insert(all.end(), sets.begin(), sets.end());
    server_ =
        Spawn(Command({"serve", "--config", "configs/serve/serve.yaml"}, all),
              Path("serve.log"));
    return WaitForPort(server_, Path("port"), std::chrono::seconds(60));
  }

  static Json Body(const httplib::Result& res) {
    return Json::parse(res->body, nullptr, false);
  }

  // The text of a streamed completion: the concatenated deltas, checking
  // the event framing and the final chunk on the way.
  static std::string StreamedText(const std::string& events, bool chat,
                                  std::string* finish_reason) {
    std::string text;
    size_t at = 0;
    bool done = false;
    while (at < events.size()) {
      const size_t end = events.find("\n\n", at);
      EXPECT_NE(end, std::string::npos) << "unterminated event";
      if (end == std::string::npos) break;
      const std::string event = events.substr(at, end - at);
      at = end + 2;
      EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
      const std::string data = event.substr(6);
      if (data == "[DONE]") {
        done = true;
        continue;
      }
      EXPECT_FALSE(done) << "an event after [DONE]";
      const Json chunk = Json::parse(data, nullptr, false);
      EXPECT_FALSE(chunk.is_discarded()) << data;
      if (chunk["choices"].empty()) continue;  // the usage chunk
      const Json& choice = chunk["choices"][0];
      text += chat ? choice["delta"].value("content", "")
                   : choice["text"].get<std::string>();
      if (!choice["finish_reason"].is_null()) {
        *finish_reason = choice["finish_reason"];
      }
    }
    EXPECT_TRUE(done) << "no [DONE]";
    return text;
  }

  static std::string* adapters_;
  pid_t server_ = -1;
};

std::string* ServeTest::adapters_ = nullptr;

std::string CompletionJson(const std::string& model, int max_tokens,
                           bool stream = false) {
  return Json{{"model", model},
              {"prompt", kPrompt},
              {"max_tokens", max_tokens},
              {"temperature", 0},
              {"stream", stream}}
      .dump();
}

// Two adapters and the base, one process: each answers exactly as `fedpeft
// generate` does with that adapter, streamed or not, also when requests
// for both adapters arrive at once.
TEST_F(ServeTest, TwoAdaptersInOneProcessAnswerAsGenerateDoes) {
  const std::string a = Adapter("a"), b = Adapter("b");
  // Adapter a's tensors as a coordinator checkpoint's global adapter: served
  // from the checkpoint directory (its LATEST round), it answers as a.
  auto saved = peft::LoadAdapter(a);
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  coordinator::Checkpoint ckpt;
  ckpt.round = 3;
  ckpt.federation_id = "serve-test";
  ckpt.strategy = "fedavg";
  ckpt.base_model = "assets/stories260K";
  ckpt.adapter_config =
      peft::AdapterConfigToJson(saved->options, ckpt.base_model);
  ckpt.global = saved->tensors;
  ASSERT_TRUE(coordinator::SaveCheckpoint(Path("ckpt"), ckpt, 1).ok());
  const int port = StartServe({"serve.adapters.a=" + a, "serve.adapters.b=" + b,
                               "serve.adapters.ckpt=" + Path("ckpt")});
  ASSERT_GT(port, 0) << Slurp(Path("serve.log"));
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(std::chrono::seconds(60));

  auto models = client.Get("/v1/models");
  ASSERT_TRUE(models);
  std::set<std::string> names;
  const Json listed = Body(models);
  for (const Json& m : listed["data"]) names.insert(m["id"]);
  EXPECT_EQ(names, (std::set<std::string>{"a", "b", "base", "ckpt"}));
  EXPECT_THAT(Slurp(Path("serve.log")),
              testing::HasSubstr("model ckpt: lora r=8, checkpoint of "
                                 "federation 'serve-test', round 3"));

  const int n = 32;
  std::map<std::string, std::string> want = {
      {"a", Generate(a, n)}, {"b", Generate(b, n)}, {"base", Generate("", n)}};
  want["ckpt"] = want["a"];
  EXPECT_NE(want["a"], want["b"]);
  EXPECT_NE(want["a"], want["base"]);
  EXPECT_NE(want["b"], want["base"]);
  for (const auto& [model, text] : want) {
    SCOPED_TRACE(model);
    auto res = client.Post("/v1/completions", CompletionJson(model, n),
                           "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    const Json body = Body(res);
    EXPECT_EQ(body["model"], model);
    EXPECT_EQ(body["choices"][0]["text"], text);
    EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(body["usage"]["completion_tokens"], n);

    auto streamed = client.Post(
        "/v1/completions", CompletionJson(model, n, true), "application/json");
    ASSERT_TRUE(streamed);
    ASSERT_EQ(streamed->status, 200) << streamed->body;
    EXPECT_EQ(streamed->get_header_value("Content-Type"), "text/event-stream");
    std::string finish;
    EXPECT_EQ(StreamedText(streamed->body, false, &finish), text);
    EXPECT_EQ(finish, "length");
  }

  // Six requests at once over both adapters: the same answers.
  std::vector<std::thread> threads;
  std::vector<std::string> got(6);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(std::chrono::seconds(60));
      auto res = c.Post("/v1/completions", CompletionJson(i % 2 ? "b" : "a", n),
                        "application/json");
      if (res && res->status == 200) {
        got[i] = Body(res)["choices"][0]["text"];
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(got[i], want[i % 2 ? "b" : "a"]) << "request " << i;
  }

  // A chat on a model without a chat template: the alpaca prompt, stopped
  // by a stop string.
  auto chat = client.Post(
      "/v1/chat/completions",
      Json{{"model", "a"},
           {"messages", {{{"role", "user"}, {"content", "Tell a story."}}}},
           {"max_tokens", 24},
           {"temperature", 0},
           {"stop", {"\n"}}}
          .dump(),
      "application/json");
  ASSERT_TRUE(chat);
  ASSERT_EQ(chat->status, 200) << chat->body;
  const Json c = Body(chat);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  const std::string answer = c["choices"][0]["message"]["content"];
  EXPECT_EQ(answer.find('\n'), std::string::npos) << answer;
}

// Bad requests get one JSON error with a 4xx status naming the field; a
// streamed request for an unknown model gets its 404 before any event; a
// client that leaves mid-stream stops its generation; the server answers
// the next request.
TEST_F(ServeTest, BadRequestsGetJsonErrorsAndTheServerGoesOn) {
  const std::string a = Adapter("a");
  const int port =
      StartServe({"serve.adapters.a=" + a, "serve.max_body_bytes=4096",
                  "serve.max_tokens=64"});
  ASSERT_GT(port, 0) << Slurp(Path("serve.log"));
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(std::chrono::seconds(60));

  std::string long_prompt;
  for (int i = 0; i < 600; ++i) long_prompt += "tree ";  // > 512 tokens
  struct Case {
    std::string path, body;
    int status;
    std::string words;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{not json", 400, "not valid JSON"},
      {"/v1/completions", R"({"model": "a"})", 400, "'prompt': missing"},
      {"/v1/completions", R"({"model": "nope", "prompt": "x"})", 404,
       "model 'nope' is not served here; models: a, base"},
      {"/v1/completions", R"({"model": "nope", "prompt": "x", "stream": true})",
       404, "not served here"},
      {"/v1/completions", R"({"model": "a", "prompt": "x", "max_tokens": 65})",
       400, "serve.max_tokens"},
      {"/v1/completions", Json{{"model", "a"}, {"prompt", long_prompt}}.dump(),
       400, "fill the model's context of 512"},
      {"/v1/completions", std::string(5000, ' '), 413, "serve.max_body_bytes"},
      {"/v1/chat/completions",
       R"({"model": "a", "messages": [{"role": "user", "content": "x"},
           {"role": "assistant", "content": "y"},
           {"role": "user", "content": "z"}]})",
       400, "exactly one user message"},
      {"/v1/embeddings", R"({"model": "a", "input": "x"})", 404, "no route"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path + " " + c.body.substr(0, 80));
    auto res = client.Post(c.path, c.body, "application/json");
    ASSERT_TRUE(res) << "no response";
    EXPECT_EQ(res->status, c.status) << res->body;
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    const Json body = Body(res);
    ASSERT_TRUE(body.contains("error")) << res->body;
    EXPECT_THAT(body["error"]["message"].get<std::string>(),
                testing::HasSubstr(c.words));
  }
  auto get = client.Get("/v1/completions");
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 404);

  // A client that reads one event and hangs up.
  {
    httplib::Client leaver("127.0.0.1", port);
    int events = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = CompletionJson("a", 64, true);
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      return ++events < 1;
    };
    leaver.send(req);
    EXPECT_GE(events, 1);
  }
  EXPECT_TRUE(WaitFor(
      [&] {
        return Slurp(Path("serve.log")).find("the client went away") !=
               std::string::npos;
      },
      std::chrono::seconds(30)))
      << Slurp(Path("serve.log"));

  auto ok = client.Post("/v1/completions", CompletionJson("a", 8),
                        "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

// A server that cannot serve what its config names does not start: the
// error names the key and what was expected, and the exit code is 1.
TEST_F(ServeTest, ABadAdapterOrKeyStopsTheStartNamingIt) {
  pid_t pid = Spawn(Command({"serve", "--config", "configs/serve/serve.yaml"},
                            {"serve.listen=127.0.0.1:0",
                             "serve.adapters.x=" + Path("nothing")}),
                    Path("bad_adapter.log"));
  EXPECT_EQ(Wait(pid, std::chrono::seconds(60)), 1);
  EXPECT_THAT(Slurp(Path("bad_adapter.log")),
              testing::HasSubstr("serve.adapters.x: '" + Path("nothing") +
                                 "' is neither a PEFT adapter folder"));
  pid = Spawn(Command({"serve", "--config", "configs/serve/serve.yaml"},
                      {"serve.parallel=0", "serve.listen=localhost"}),
              Path("bad_key.log"));
  EXPECT_EQ(Wait(pid, std::chrono::seconds(60)), 1);
  const std::string log = Slurp(Path("bad_key.log"));
  EXPECT_THAT(log, testing::HasSubstr("serve.parallel: must be in [1, 256]"));
  EXPECT_THAT(log, testing::HasSubstr("serve.listen: expected host:port"));
}

// With tls.enabled the server speaks HTTPS, requires a client certificate
// the CA signed, and answers 403 to one the allowlist does not name.
TEST_F(ServeTest, MutualTlsAdmitsOnlyAllowedCertificates) {
  const std::string certs = Path("certs");
  ASSERT_EQ(RunToEnd({"certs", "init", "--out", certs}, Path("certs.log")), 0)
      << Slurp(Path("certs.log"));
  for (const auto& [role, name] :
       std::vector<std::pair<std::string, std::string>>{
           {"coordinator", "serve"},
           {"operator", "alice"},
           {"worker", "mallory"}}) {
    ASSERT_EQ(RunToEnd({"certs", "issue", "--role", role, "--name", name,
                        "--ca", certs, "--out", certs},
                       Path("certs.log")),
              0)
        << Slurp(Path("certs.log"));
  }
  const int port = StartServe(
      {"tls.insecure=false", "tls.enabled=true", "tls.ca=" + certs + "/ca.crt",
       "tls.cert=" + certs + "/serve.crt", "tls.key=" + certs + "/serve.key",
       "tls.allowed_names=[alice]"});
  ASSERT_GT(port, 0) << Slurp(Path("serve.log"));
  EXPECT_THAT(Slurp(Path("serve.log")),
              testing::HasSubstr("listening on https://127.0.0.1:"));

  auto client = [&](const std::string& name) {
    auto c = name.empty()
                 ? std::make_unique<httplib::SSLClient>("127.0.0.1", port)
                 : std::make_unique<httplib::SSLClient>(
                       "127.0.0.1", port, certs + "/" + name + ".crt",
                       certs + "/" + name + ".key");
    c->set_ca_cert_path((certs + "/ca.crt").c_str());
    c->enable_server_certificate_verification(true);
    c->set_read_timeout(std::chrono::seconds(60));
    return c;
  };
  auto alice = client("alice")->Post(
      "/v1/completions", CompletionJson("base", 8), "application/json");
  ASSERT_TRUE(alice) << httplib::to_string(alice.error());
  EXPECT_EQ(alice->status, 200) << alice->body;

  auto mallory = client("mallory")->Get("/v1/models");
  ASSERT_TRUE(mallory) << httplib::to_string(mallory.error());
  EXPECT_EQ(mallory->status, 403);
  EXPECT_THAT(mallory->body, testing::HasSubstr("'mallory' is not in the"));

  // Refused in the handshake: no response at all.
  auto anonymous_client = client("");
  anonymous_client->set_read_timeout(std::chrono::seconds(5));
  auto anonymous = anonymous_client->Get("/v1/models");
  EXPECT_FALSE(anonymous) << "served a client without a certificate";
  httplib::Client plain("127.0.0.1", port);
  plain.set_read_timeout(std::chrono::seconds(5));
  auto plaintext = plain.Get("/v1/models");
  EXPECT_FALSE(plaintext && plaintext->status == 200) << "served plaintext";
}

}  // namespace
}  // namespace fedpeft
