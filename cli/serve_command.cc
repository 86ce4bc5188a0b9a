// `fedpeft serve --config FILE [--set key=value ...]`: one base and its
// adapters behind the OpenAI-compatible HTTP API (serve/http_server.h,
// serve/engine.h; keys in serve/serve_config.h and configs/serve/).
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/pipeline_head.h"
#include "serve/pipeline_runtime.h"
#include "serve/pipeline_stage.h"
#include "serve/serve_config.h"

namespace fedpeft {
namespace cli {

namespace {

std::string JoinNames(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

int RunServe(const Args& args) {
  const std::string cmd = "serve";
  std::string config_path;
  std::vector<std::string> overrides;
  int code = 0;
  if (!ParseConfigArgs(
          cmd, args,
          "serve YAML (e.g. configs/serve/serve.yaml). With a `pipeline:` "
          "section (configs/pipeline/) the model is split across "
          "pipeline.stages processes in a ring: run one per stage with "
          "--set pipeline.stage=i; stage 0, the head, holds the embeddings "
          "and output layer and serves HTTP, the others join it at "
          "pipeline.head and are assigned their layers",
          "override a key: --set serve.adapters.support=out/support "
          "--set serve.listen=0.0.0.0:8080 --set pipeline.stage=1 "
          "(repeatable)",
          &config_path, &overrides, &code)) {
    return code;
  }
  auto cfg = serve::LoadServeConfig(config_path, overrides);
  if (!cfg.ok()) return Fail(cmd, cfg.status());
  Status s = SetUpLogging(cfg->logging.level, cfg->logging.file);
  if (!s.ok()) return Fail(cmd, s);
  if (cfg->model.threads > 0) torch::set_num_threads(cfg->model.threads);
  std::unique_ptr<serve::HttpServer> server;
  std::atomic<bool> stop{false};
  SignalWatcher signals([&] {
    stop = true;
    if (server) server->Stop();
  });

  if (cfg->pipeline.enabled() && !cfg->pipeline.is_head()) {
    s = serve::RunPipelineStage(*cfg, stop);
    if (!s.ok()) return Fail(cmd, s);
    FP_LOG_INFO("serve", "stopped");
    return kExitOk;
  }
  std::unique_ptr<serve::Backend> backend;
  serve::PipelineHead* head = nullptr;
  if (cfg->pipeline.enabled()) {
    auto identity = serve::IdentifyModel(cfg->model.path);
    if (!identity.ok()) return Fail(cmd, identity.status());
    auto tokenizer = LoadModelTokenizer(cfg->model.path, cfg->model.tokenizer,
                                        identity->config.vocab_size);
    if (!tokenizer.ok()) return Fail(cmd, tokenizer.status());
    auto created =
        serve::PipelineHead::Create(*cfg, std::move(tokenizer).value());
    if (!created.ok()) return Fail(cmd, created.status());
    head = created->get();
    backend = std::move(created).value();
    FP_LOG_INFO("serve", "models: {}", JoinNames(cfg->serve.Names()));
  } else {
    auto load_options = cfg->model.ToLoadOptions();
    if (!load_options.ok()) return Fail(cmd, load_options.status());
    auto base = LoadBase(cfg->model.path, cfg->model.tokenizer, *load_options);
    if (!base.ok()) return Fail(cmd, base.status());
    auto engine =
        serve::Engine::Create(*cfg, base->weights, std::move(base->tokenizer));
    if (!engine.ok()) return Fail(cmd, engine.status());
    FP_LOG_INFO("serve", "chat template: {}",
                data::ChatTemplateName((*engine)->chat_family()));
    for (const std::string& line : (*engine)->Describe()) {
      FP_LOG_INFO("serve", "model {}", line);
    }
    backend = std::move(engine).value();
  }
  auto created = serve::HttpServer::Create(cfg->serve, cfg->tls, backend.get());
  if (!created.ok()) return Fail(cmd, created.status());
  server = std::move(created).value();
  if (stop) return kExitOk;  // a signal came while loading

  std::string host;
  int port = 0;
  (void)serve::ParseListenAddress(cfg->serve.listen, &host, &port);
  FP_LOG_INFO("serve", "listening on {}://{}:{} ({} at once, {} may wait)",
              cfg->tls.enabled ? "https" : "http", host, server->port(),
              cfg->serve.parallel, cfg->serve.max_waiting);
  if (!cfg->serve.port_file.empty()) {
    s = WriteFileAtomic(cfg->serve.port_file,
                        std::to_string(server->port()) + "\n");
    if (!s.ok()) return Fail(cmd, s.WithContext("serve.port_file"));
  }
  // A head that cannot load its span ends the process.
  std::atomic<bool> done{false};
  std::thread health;
  if (head != nullptr) {
    health = std::thread([&] {
      while (!done && head->Health().ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      if (!done) server->Stop();
    });
  }
  s = server->Run();
  done = true;
  if (health.joinable()) health.join();
  if (!s.ok()) return Fail(cmd, s);
  if (head != nullptr && !head->Health().ok()) {
    return Fail(cmd, head->Health());
  }
  FP_LOG_INFO("serve", "stopped");
  return kExitOk;
}

}  // namespace cli
}  // namespace fedpeft
