// The config of `fedpeft serve` (configs/serve/serve.yaml):
//
//   model:        # the base, as every command takes it (worker/train_config.h)
//     path: assets/stories260K
//     base_dtype: auto
//     threads: 0
//   serve:
//     listen: 127.0.0.1:8080   # port 0 picks a free port (logged)
//     port_file: ""            # the port and a newline, once listening
//     base_name: base          # the model name of the base alone ("" = none)
//     adapters:                # model name -> PEFT adapter folder or a
//       support: out/support   #   coordinator checkpoint (directory or
//       legal: out/ckpt        #   round folder)
//     chat_template: auto      # auto | a data.chat_template name
//     max_tokens: 512          # most new tokens a request may ask for
//     parallel: 2              # generations at once
//     max_waiting: 64          # requests queued beyond those; more get 503
//     http_threads: 8          # connections served at once
//     max_body_bytes: 1048576  # larger request bodies get 413
//   pipeline:                  # a model split across processes
//     stages: 0                # K; 0 = the whole model here (default)
//     stage: 0                 # this process: 0 = the head (HTTP front)
//     head: 127.0.0.1:7100     # the head listens here (port 0: any,
//                              #   logged); the other stages dial it
//     listen: 127.0.0.1:0      # stages 1..K-1: their activations in
//     advertise: ""            # the address others dial ("" = the
//                              #   listening host and the port bound)
//     port_file: ""            # the port bound and a newline
//     layers: []               # head: layers per stage by hand, e.g.
//                              #   [8, 16]; [] = by memory and speed
//     memory_mb: 0             # this stage's weight budget (0 = 90% of
//                              #   MemAvailable)
//     heartbeat_ms: 500        # a stage's join/heartbeat period
//     stage_timeout_ms: 3000   # a stage silent this long is down
//   tls:                       # as the coordinator's (security/tls.h);
//     insecure: true           #   with `enabled`, clients need a
//                              #   certificate the CA signed (mutual TLS)
//   logging:
//     level: info
//
// Thread-safety: plain values.
#ifndef FEDPEFT_SERVE_SERVE_CONFIG_H_
#define FEDPEFT_SERVE_SERVE_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "security/tls_options.h"
#include "worker/train_config.h"

namespace fedpeft {
namespace serve {

struct ServeOptions {
  std::string listen = "127.0.0.1:8080";
  std::string port_file;
  std::string base_name = "base";
  std::map<std::string, std::string> adapters;
  std::string chat_template = "auto";
  int max_tokens = 512;
  int parallel = 2;
  int max_waiting = 64;
  int http_threads = 8;
  int64_t max_body_bytes = 1 << 20;

  // The model names served: base_name (unless empty) and the adapters',
  // sorted.
  std::vector<std::string> Names() const;
  void Read(ConfigReader& in);
};

// The `pipeline` section (serve/pipeline_head.h). serve.parallel is the
// number of sequences in flight around the ring.
struct PipelineOptions {
  int stages = 0;
  int stage = 0;
  std::string head = "127.0.0.1:7100";
  std::string listen = "127.0.0.1:0";
  std::string advertise;
  std::string port_file;
  std::vector<int> layers;
  int64_t memory_mb = 0;
  int heartbeat_ms = 500;
  int stage_timeout_ms = 3000;

  bool enabled() const { return stages > 0; }
  bool is_head() const { return stage == 0; }
  // Where this process's pipeline server listens: `head` for the head.
  const std::string& listen_address() const {
    return is_head() ? head : listen;
  }
  void Read(ConfigReader& in);
};

struct ServeConfig {
  worker::ModelOptions model;
  ServeOptions serve;
  PipelineOptions pipeline;
  security::TlsOptions tls;
  worker::LoggingOptions logging;

  void Read(ConfigReader& in);
};

StatusOr<ServeConfig> LoadServeConfig(
    const std::string& path, const std::vector<std::string>& overrides);

// "host:port" (port 0 to 65535; "[::1]:80" for IPv6) -> host and port.
// The error names serve.listen and the value.
Status ParseListenAddress(const std::string& address, std::string* host,
                          int* port);

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_SERVE_CONFIG_H_
