// `fedpeft serve --config FILE [--set key=value ...]`: one base and its
// adapters behind the OpenAI-compatible HTTP API (serve/http_server.h,
// serve/engine.h; keys in serve/serve_config.h and configs/serve/).
#include <torch/torch.h>

#include <cstdio>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/serve_config.h"

namespace fedpeft {
namespace cli {

int RunServe(const Args& args) {
  const std::string cmd = "serve";
  std::string config_path;
  std::vector<std::string> overrides;
  int code = 0;
  if (!ParseConfigArgs(
          cmd, args, "serve YAML (e.g. configs/serve/serve.yaml)",
          "override a key: --set serve.adapters.support=out/support "
          "--set serve.listen=0.0.0.0:8080 (repeatable)",
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

  auto load_options = cfg->model.ToLoadOptions();
  if (!load_options.ok()) return Fail(cmd, load_options.status());
  auto base = LoadBase(cfg->model.path, cfg->model.tokenizer, *load_options);
  if (!base.ok()) return Fail(cmd, base.status());
  auto engine =
      serve::Engine::Create(*cfg, base->weights, std::move(base->tokenizer));
  if (!engine.ok()) return Fail(cmd, engine.status());
  auto created = serve::HttpServer::Create(cfg->serve, cfg->tls, engine->get());
  if (!created.ok()) return Fail(cmd, created.status());
  server = std::move(created).value();
  if (stop) return kExitOk;  // a signal came while loading

  FP_LOG_INFO("serve", "chat template: {}",
              data::ChatTemplateName((*engine)->chat_family()));
  for (const std::string& line : (*engine)->Describe()) {
    FP_LOG_INFO("serve", "model {}", line);
  }
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
  s = server->Run();
  if (!s.ok()) return Fail(cmd, s);
  FP_LOG_INFO("serve", "stopped");
  return kExitOk;
}

}  // namespace cli
}  // namespace fedpeft
