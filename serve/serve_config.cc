#include "serve/serve_config.h"

#include <algorithm>
#include <cctype>

#include "data/chat_template.h"

namespace fedpeft {
namespace serve {

Status ParseListenAddress(const std::string& address, std::string* host,
                          int* port) {
  const size_t colon = address.rfind(':');
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("serve.listen: expected host:port, got '" +
                                   address + "' (" + why + ")");
  };
  if (colon == std::string::npos || colon == 0) return bad("no host");
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
    h = h.substr(1, h.size() - 2);
  }
  const std::string p = address.substr(colon + 1);
  if (p.empty() || p.size() > 5) return bad("the port must be 0 to 65535");
  for (char c : p) {
    if (!std::isdigit(static_cast<unsigned char>(c))) {
      return bad("the port must be 0 to 65535");
    }
  }
  const int value = std::stoi(p);
  if (value > 65535) return bad("the port must be 0 to 65535");
  *host = h;
  *port = value;
  return Status::Ok();
}

std::vector<std::string> ServeOptions::Names() const {
  std::vector<std::string> names;
  if (!base_name.empty()) names.push_back(base_name);
  for (const auto& kv : adapters) names.push_back(kv.first);
  std::sort(names.begin(), names.end());
  return names;
}

void ServeOptions::Read(ConfigReader& in) {
  in.Get("listen", &listen);
  in.Get("port_file", &port_file);
  in.Get("base_name", &base_name);
  in.Get("adapters", &adapters);
  in.Get("chat_template", &chat_template);
  in.Get("max_tokens", &max_tokens);
  in.Get("parallel", &parallel);
  in.Get("max_waiting", &max_waiting);
  in.Get("http_threads", &http_threads);
  in.Get("max_body_bytes", &max_body_bytes);
  std::string host;
  int port = 0;
  Status listen_ok = ParseListenAddress(listen, &host, &port);
  in.Check(listen_ok.ok(), "listen", listen_ok.message());
  in.Check(!adapters.empty() || !base_name.empty(), "adapters",
           "nothing to serve: name an adapter, or keep base_name");
  for (const auto& [name, dir] : adapters) {
    in.Check(!name.empty() && name != base_name, "adapters",
             "the name '" + name + "' is empty or the base's (base_name)");
    in.Check(!dir.empty(), "adapters." + name, "must name a folder");
  }
  in.Check(
      chat_template == "auto" ||
          data::ParseChatTemplateName(chat_template).ok(),
      "chat_template",
      "expected auto or a chat template name, got '" + chat_template + "'");
  in.Check(max_tokens >= 1 && max_tokens <= 1 << 20, "max_tokens",
           "must be in [1, 1048576], got " + ToConfigString(max_tokens));
  in.Check(parallel >= 1 && parallel <= 256, "parallel",
           "must be in [1, 256], got " + ToConfigString(parallel));
  in.Check(max_waiting >= 0, "max_waiting",
           "must be >= 0, got " + ToConfigString(max_waiting));
  in.Check(http_threads >= 1 && http_threads <= 1024, "http_threads",
           "must be in [1, 1024], got " + ToConfigString(http_threads));
  in.Check(max_body_bytes >= 1024, "max_body_bytes",
           "must be >= 1024, got " + ToConfigString(max_body_bytes));
}

void PipelineOptions::Read(ConfigReader& in) {
  in.Get("stages", &stages);
  in.Get("stage", &stage);
  in.Get("listen", &listen);
  in.Get("advertise", &advertise);
  in.Get("port_file", &port_file);
  in.Get("head", &head);
  in.Get("layers", &layers);
  in.Get("memory_mb", &memory_mb);
  in.Get("heartbeat_ms", &heartbeat_ms);
  in.Get("stage_timeout_ms", &stage_timeout_ms);
  in.Check(stages >= 0 && stages <= 64, "stages",
           "must be in [0, 64], got " + ToConfigString(stages));
  if (!enabled()) return;
  in.Check(stage >= 0 && stage < stages, "stage",
           "must be in [0, stages - 1] = [0, " + std::to_string(stages - 1) +
               "], got " + ToConfigString(stage));
  std::string host;
  int port = 0;
  Status ok = ParseListenAddress(listen, &host, &port);
  in.Check(ok.ok(), "listen", ok.message());
  const std::string own = listen_address();
  if (advertise.empty() && ParseListenAddress(own, &host, &port).ok() &&
      (host == "0.0.0.0" || host == "::")) {
    in.Check(false, "advertise",
             "needed when this process listens on all addresses ('" + own +
                 "'): the address the other stages dial");
  }
  if (!advertise.empty()) {
    ok = ParseListenAddress(advertise, &host, &port);
    in.Check(ok.ok() && port > 0, "advertise",
             "expected host:port with a port, got '" + advertise + "'");
  }
  ok = ParseListenAddress(head, &host, &port);
  in.Check(ok.ok() && (is_head() || port > 0), "head",
           "expected the head's host:port" +
               std::string(is_head() ? "" : " with a port") + ", got '" + head +
               "'");
  if (!layers.empty()) {
    in.Check(static_cast<int>(layers.size()) == stages, "layers",
             "lists " + std::to_string(layers.size()) +
                 " stages, pipeline.stages is " + std::to_string(stages));
    for (size_t i = 0; i < layers.size(); ++i) {
      in.Check(layers[i] >= (i == 0 ? 0 : 1), "layers",
               "stage " + std::to_string(i) + " is given " +
                   std::to_string(layers[i]) +
                   " layers; expected >= " + (i == 0 ? "0" : "1"));
    }
  }
  in.Check(memory_mb >= 0, "memory_mb",
           "must be >= 0, got " + ToConfigString(memory_mb));
  in.Check(heartbeat_ms >= 10 && heartbeat_ms <= 60000, "heartbeat_ms",
           "must be in [10, 60000], got " + ToConfigString(heartbeat_ms));
  in.Check(stage_timeout_ms >= 2 * heartbeat_ms, "stage_timeout_ms",
           "must be at least twice heartbeat_ms, got " +
               ToConfigString(stage_timeout_ms));
}

void ServeConfig::Read(ConfigReader& in) {
  ConfigReader m = in.Section("model");
  model.Read(m);
  ConfigReader s = in.Section("serve");
  serve.Read(s);
  ConfigReader p = in.Section("pipeline");
  pipeline.Read(p);
  ConfigReader t = in.Section("tls");
  // A pipeline stage also dials: the next stage, and the head.
  tls.Read(t, pipeline.enabled() ? security::kTlsServer | security::kTlsClient
                                 : security::kTlsServer);
  ConfigReader l = in.Section("logging");
  logging.Read(l);
}

StatusOr<ServeConfig> LoadServeConfig(
    const std::string& path, const std::vector<std::string>& overrides) {
  return LoadConfigAs<ServeConfig>(path, overrides);
}

}  // namespace serve
}  // namespace fedpeft
