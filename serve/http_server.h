// The HTTP side of `fedpeft serve` (cpp-httplib): the OpenAI-compatible
// routes over a Backend.
//
//   GET  /health               {"status": "ok"}
//   GET  /v1/models            the served model names
//   POST /v1/completions       text completion, streamed with "stream": true
//   POST /v1/chat/completions  chat completion, likewise
//
// Streamed responses are server-sent events ("data: {chunk}\n\n", ending
// with "data: [DONE]\n\n"), as OpenAI's clients read them. Every error is
// a JSON body {"error": {message, type, param, code}} with a 4xx/5xx status:
// bad JSON or fields 400, an unknown model 404, an unknown route 404, a
// body over serve.max_body_bytes 413, a busy server 503, a client
// certificate the allowlist does not admit 403. A client that disconnects
// mid-stream stops its generation.
//
// TLS: with tls.enabled the server presents tls.cert and requires a client
// certificate signed by tls.ca (mutual TLS, as the federation's servers),
// whose common name tls.allowed_names / tls.allowlist_file admit.
//
// Thread-safety: Run blocks on its own; Stop may be called from any thread.
#ifndef FEDPEFT_SERVE_HTTP_SERVER_H_
#define FEDPEFT_SERVE_HTTP_SERVER_H_

#include <memory>
#include <string>

#include "common/status.h"
#include "security/tls_options.h"
#include "serve/openai_api.h"
#include "serve/serve_config.h"

namespace fedpeft {
namespace serve {

class HttpServer {
 public:
  // Binds serve.listen now (port 0: any free port, see port()).
  static StatusOr<std::unique_ptr<HttpServer>> Create(
      const ServeOptions& options, const security::TlsOptions& tls,
      Backend* backend);
  ~HttpServer();

  int port() const;
  // Serves until Stop(); an error when the server could not run.
  Status Run();
  void Stop();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_HTTP_SERVER_H_
