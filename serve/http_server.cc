#include "serve/http_server.h"

#include <httplib.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <utility>

#include "common/logging.h"
#include "security/tls.h"

namespace fedpeft {
namespace serve {

struct HttpServer::Impl {
  std::unique_ptr<httplib::Server> server;
  std::unique_ptr<security::Allowlist> allowlist;  // set with TLS
  Backend* backend = nullptr;
  int64_t max_tokens = 0;
  std::string host;
  int port = 0;
  std::atomic<uint64_t> next_id{0};
  uint64_t id_salt = 0;

  void Routes();
  void HandleCompletion(const httplib::Request& req, httplib::Response& res,
                        bool chat);
  bool Admitted(const httplib::Request& req, httplib::Response& res);
  ResponseId NewId(bool chat, const std::string& model);
};

namespace {

void SendError(httplib::Response& res, const ApiError& error) {
  res.status = error.http_status;
  res.set_content(ErrorBody(error), "application/json");
}

// The common name of the verified client certificate; empty without one.
std::string ClientName(const httplib::Request& req) {
  if (req.ssl == nullptr) return "";
  X509* cert = SSL_get1_peer_certificate(req.ssl);
  if (cert == nullptr) return "";
  char name[256] = {0};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, name,
                            sizeof(name));
  X509_free(cert);
  return name;
}

}  // namespace

bool HttpServer::Impl::Admitted(const httplib::Request& req,
                                httplib::Response& res) {
  if (!allowlist) return true;
  const std::string name = ClientName(req);
  if (allowlist->Allows(name)) return true;
  FP_LOG_WARN("serve", "refused {} {}: certificate '{}' is not allowed",
              req.method, req.path, name);
  ApiError e;
  e.http_status = 403;
  e.type = "permission_error";
  e.message = "certificate '" + name + "' is not in the allowlist (" +
              allowlist->Describe() + ")";
  SendError(res, e);
  return false;
}

ResponseId HttpServer::Impl::NewId(bool chat, const std::string& model) {
  ResponseId id;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(id_salt ^ (++next_id)));
  id.id = std::string(chat ? "chatcmpl-" : "cmpl-") + hex;
  id.created = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
  id.model = model;
  return id;
}

void HttpServer::Impl::HandleCompletion(const httplib::Request& req,
                                        httplib::Response& res, bool chat) {
  if (!Admitted(req, res)) return;
  CompletionRequest request;
  ApiError error;
  if (!ParseCompletionRequest(req.body, chat, max_tokens, &request, &error)) {
    FP_LOG_INFO("serve", "400 {}: {}", req.path, error.message);
    return SendError(res, error);
  }
  // A streamed request is checked before its 200 and first event; a plain
  // one gets the same errors from Complete.
  if (Status s = request.stream ? backend->Check(request) : Status::Ok();
      !s.ok()) {
    const ApiError e = ToApiError(s);
    FP_LOG_INFO("serve", "{} {}: {}", e.http_status, req.path, e.message);
    return SendError(res, e);
  }
  const ResponseId id = NewId(chat, request.model);
  if (!request.stream) {
    CompletionResult result;
    Status s = backend->Complete(
        request, [](const std::string&) { return true; }, &result);
    if (!s.ok()) {
      const ApiError e = ToApiError(s);
      FP_LOG_INFO("serve", "{} {}: {}", e.http_status, req.path, e.message);
      return SendError(res, e);
    }
    res.set_content(CompletionBody(request, id, result), "application/json");
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  Backend* b = backend;
  res.set_chunked_content_provider(
      "text/event-stream",
      [b, request, id](size_t /*offset*/, httplib::DataSink& sink) {
        auto send = [&sink](const std::string& data) {
          const std::string event = "data: " + data + "\n\n";
          return sink.write(event.data(), event.size());
        };
        bool first = true;
        CompletionResult result;
        Status s = b->Complete(
            request,
            [&](const std::string& delta) {
              const bool ok = send(ChunkBody(request, id, delta, "", first));
              first = false;
              return ok;
            },
            &result);
        if (!s.ok()) {
          send(ErrorBody(ToApiError(s)));
        } else {
          send(ChunkBody(request, id, "", result.finish_reason, first));
          if (request.include_usage) {
            send(UsageChunkBody(request, id, result));
          }
        }
        send("[DONE]");
        sink.done();
        return true;
      });
}

void HttpServer::Impl::Routes() {
  server->Get("/health",
              [this](const httplib::Request& req, httplib::Response& res) {
                if (!Admitted(req, res)) return;
                res.set_content("{\"status\":\"ok\"}", "application/json");
              });
  server->Get("/v1/models", [this](const httplib::Request& req,
                                   httplib::Response& res) {
    if (!Admitted(req, res)) return;
    res.set_content(ModelsBody(backend->Models(), NewId(false, "").created),
                    "application/json");
  });
  server->Post("/v1/completions",
               [this](const httplib::Request& req, httplib::Response& res) {
                 HandleCompletion(req, res, false);
               });
  server->Post("/v1/chat/completions",
               [this](const httplib::Request& req, httplib::Response& res) {
                 HandleCompletion(req, res, true);
               });
  // Every status httplib sets on its own (no route, body too large, bad
  // request line) gets a JSON body too.
  server->set_error_handler(
      [](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return;
        ApiError e;
        e.http_status = res.status;
        if (res.status == 404) {
          e.type = "not_found_error";
          e.message = "no route " + req.method + " " + req.path +
                      " (routes: GET /health, GET /v1/models, POST "
                      "/v1/completions, POST /v1/chat/completions)";
        } else if (res.status == 413) {
          e.message = "the request body is larger than serve.max_body_bytes";
        } else {
          e.message = "HTTP " + std::to_string(res.status);
        }
        SendError(res, e);
      });
  server->set_exception_handler([](const httplib::Request& req,
                                   httplib::Response& res,
                                   std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
    }
    FP_LOG_ERROR("serve", "{} {}: {}", req.method, req.path, what);
    ApiError e;
    e.http_status = 500;
    e.type = "server_error";
    e.message = "internal error: " + what;
    SendError(res, e);
  });
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Stop(); }

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(
    const ServeOptions& options, const security::TlsOptions& tls,
    Backend* backend) {
  // A client that hangs up while a TLS response is written would otherwise
  // kill the process: OpenSSL writes with write(2), which raises SIGPIPE
  // (plain sockets use MSG_NOSIGNAL). The error is handled where it occurs.
  ::signal(SIGPIPE, SIG_IGN);
  auto impl = std::make_unique<Impl>();
  impl->backend = backend;
  impl->max_tokens = options.max_tokens;
  impl->id_salt = std::random_device{}() * 0x9E3779B97F4A7C15ull;
  int port = 0;
  RETURN_IF_ERROR(ParseListenAddress(options.listen, &impl->host, &port));
  if (tls.enabled) {
    // Check the files as the federation's servers do (names the key).
    RETURN_IF_ERROR(security::MakeServerCredentials(tls, "serve").status());
    auto server = std::make_unique<httplib::SSLServer>(
        tls.cert.c_str(), tls.key.c_str(), tls.ca.c_str());
    if (!server->is_valid()) {
      return Status::InvalidArgument("tls: cannot serve HTTPS with tls.cert '" +
                                     tls.cert + "', tls.key and tls.ca '" +
                                     tls.ca + "'");
    }
    impl->server = std::move(server);
    ASSIGN_OR_RETURN(impl->allowlist, security::Allowlist::Create(tls));
  } else {
    impl->server = std::make_unique<httplib::Server>();
  }
  const int threads = options.http_threads;
  impl->server->new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  impl->server->set_payload_max_length(
      static_cast<size_t>(options.max_body_bytes));
  impl->server->set_read_timeout(std::chrono::seconds(30));
  impl->Routes();
  if (port == 0) {
    impl->port = impl->server->bind_to_any_port(impl->host);
  } else if (impl->server->bind_to_port(impl->host, port)) {
    impl->port = port;
  } else {
    impl->port = -1;
  }
  if (impl->port <= 0) {
    return Status::Unavailable("serve.listen: cannot bind '" + options.listen +
                               "' (in use, or no such host)");
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port; }

Status HttpServer::Run() {
  if (!impl_->server->listen_after_bind()) {
    return Status::Unavailable("serve: the HTTP server stopped with an error");
  }
  return Status::Ok();
}

void HttpServer::Stop() {
  if (impl_ && impl_->server) impl_->server->stop();
}

}  // namespace serve
}  // namespace fedpeft
