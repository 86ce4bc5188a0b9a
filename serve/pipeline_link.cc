#include "serve/pipeline_link.h"

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "common/logging.h"
#include "common/process_stats.h"
#include "proto/grpc_util.h"
#include "security/certs.h"

namespace fedpeft {
namespace serve {

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

class PipelineServer::Service final : public proto::Pipeline::Service {
 public:
  Service(PipelineHandlers handlers, std::unique_ptr<security::Allowlist> allow)
      : handlers_(std::move(handlers)), allowlist_(std::move(allow)) {}

  grpc::Status Join(grpc::ServerContext* ctx, const proto::StageReport* report,
                    proto::StageAssignment* reply) override {
    if (grpc::Status s = Admit(*ctx, "Join", false); !s.ok()) return s;
    if (!handlers_.join) return NotHere("Join");
    return handlers_.join(*report, reply);
  }

  grpc::Status Relay(grpc::ServerContext* ctx,
                     grpc::ServerReader<proto::Activation>* reader,
                     proto::RelayReply* /*reply*/) override {
    if (grpc::Status s = Admit(*ctx, "Relay", false); !s.ok()) return s;
    if (!handlers_.relay) return NotHere("Relay");
    proto::Activation message;
    while (reader->Read(&message)) handlers_.relay(std::move(message));
    return grpc::Status::OK;
  }

  grpc::Status GetPipelineStatus(grpc::ServerContext* ctx,
                                 const proto::StatusRequest* /*request*/,
                                 proto::PipelineStatusReply* reply) override {
    if (grpc::Status s = Admit(*ctx, "GetPipelineStatus", true); !s.ok()) {
      return s;
    }
    if (!handlers_.status) return NotHere("GetPipelineStatus");
    handlers_.status(reply);
    return grpc::Status::OK;
  }

 private:
  static grpc::Status NotHere(const char* call) {
    return grpc::Status(
        grpc::StatusCode::UNIMPLEMENTED,
        std::string(call) + ": this is not the pipeline's head (stage 0)");
  }

  // Plaintext admits everyone (tls.insecure); mutual TLS admits allowed
  // edge certificates, and operators for status.
  grpc::Status Admit(const grpc::ServerContext& ctx, const char* call,
                     bool operator_ok) {
    if (allowlist_ == nullptr) return grpc::Status::OK;
    const std::string name = security::PeerCertificateName(ctx);
    std::string why;
    if (name.empty()) {
      why = "no client certificate name";
    } else if (!allowlist_->Allows(name)) {
      why = "certificate name '" + name +
            "' is not allowed (tls.allowed_names / tls.allowlist_file)";
    } else {
      StatusOr<security::CertRole> role =
          security::CertificateRole(security::PeerCertificatePem(ctx));
      if (!role.ok()) {
        why = std::string(role.status().message());
      } else if (*role != security::CertRole::kEdge &&
                 !(operator_ok && *role == security::CertRole::kOperator)) {
        why = "certificate '" + name + "' has role " +
              security::CertRoleName(*role) +
              "; pipeline stages need role edge" +
              (operator_ok ? " (status: edge or operator)" : "");
      }
    }
    if (why.empty()) return grpc::Status::OK;
    FP_LOG_WARN("pipeline", "{} from {} refused: {}", call, ctx.peer(), why);
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        std::string(call) + ": " + why);
  }

  PipelineHandlers handlers_;
  std::unique_ptr<security::Allowlist> allowlist_;
};

StatusOr<std::unique_ptr<PipelineServer>> PipelineServer::Start(
    const std::string& listen, const security::TlsOptions& tls,
    size_t max_message_bytes, PipelineHandlers handlers) {
  ASSIGN_OR_RETURN(transport::HostPort hp, transport::SplitHostPort(listen));
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   security::MakeServerCredentials(tls, "pipeline"));
  std::unique_ptr<security::Allowlist> allowlist;
  if (tls.enabled) {
    ASSIGN_OR_RETURN(allowlist, security::Allowlist::Create(tls));
  }
  std::unique_ptr<PipelineServer> server(new PipelineServer());
  server->service_ =
      std::make_unique<Service>(std::move(handlers), std::move(allowlist));
  grpc::ServerBuilder builder;
  transport::ServerBuilderDefaults(&builder, max_message_bytes);
  builder.AddListeningPort(transport::JoinHostPort(hp.host, hp.port),
                           credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return Status::Unavailable("pipeline.listen: cannot listen on '" + listen +
                               "' (in use, or not an address of this host?)");
  }
  return server;
}

PipelineServer::~PipelineServer() { Shutdown(); }

void PipelineServer::Shutdown() {
  if (server_) {
    // Relay streams end only when their client closes them: cancel them.
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(200));
    server_->Wait();
    server_.reset();
  }
}

BusyMeter::BusyMeter() : start_(Clock::now()), since_(start_) {}

void BusyMeter::Add(Clock::duration busy) {
  std::lock_guard<std::mutex> lock(mu_);
  busy_ += busy;
  total_ += busy;
}

void BusyMeter::Fill(proto::StageReport* report) {
  report->set_busy_fraction(TakeFraction());
  std::lock_guard<std::mutex> lock(mu_);
  report->set_busy_seconds(std::chrono::duration<double>(total_).count());
  report->set_uptime_seconds(
      std::chrono::duration<double>(Clock::now() - start_).count());
}

double BusyMeter::TakeFraction() {
  std::lock_guard<std::mutex> lock(mu_);
  const Clock::time_point now = Clock::now();
  const double wall = std::chrono::duration<double>(now - since_).count();
  const double busy = std::chrono::duration<double>(busy_).count();
  busy_ = {};
  since_ = now;
  return wall > 0 ? std::min(1.0, busy / wall) : 0.0;
}

void FillMemory(proto::StageReport* report) {
  const double rss = RssMib(), peak = PeakRssMib();
  report->set_rss_bytes(rss > 0 ? static_cast<uint64_t>(rss * (1 << 20)) : 0);
  report->set_peak_rss_bytes(peak > 0 ? static_cast<uint64_t>(peak * (1 << 20))
                                      : 0);
}

RelayLink::RelayLink(const security::TlsOptions& tls, size_t max_message_bytes)
    : tls_(tls),
      max_message_bytes_(max_message_bytes),
      credentials_(security::MakeChannelCredentials(tls, "pipeline")) {
  thread_ = std::thread([this] { Loop(); });
}

RelayLink::~RelayLink() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void RelayLink::SetTarget(const std::string& address) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (target_ == address) return;
    target_ = address;
  }
  wake_.notify_all();
}

void RelayLink::Send(proto::Activation message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(message));
  }
  wake_.notify_all();
}

bool RelayLink::ok(std::string* error) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (error != nullptr) *error = error_;
  return ok_;
}

void RelayLink::Loop() {
  // One open stream: its channel, call and writer.
  struct Stream {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<proto::Pipeline::Stub> stub;
    grpc::ClientContext context;
    proto::RelayReply reply;
    std::unique_ptr<grpc::ClientWriter<proto::Activation>> writer;
    ~Stream() {
      if (writer) {
        context.TryCancel();
        (void)writer->Finish();
      }
    }
  };
  std::unique_ptr<Stream> stream;
  std::string connected_to;
  Clock::time_point next_try{};
  std::unique_lock<std::mutex> lock(mu_);
  auto broken = [&](const std::string& why) {
    if (ok_) FP_LOG_WARN("pipeline", "relay to {}: {}", connected_to, why);
    ok_ = false;
    error_ = "relay to " + connected_to + ": " + why;
    queue_.clear();  // the ring is broken: the head fails these sequences
    lock.unlock();
    stream.reset();
    lock.lock();
    next_try = Clock::now() + std::chrono::milliseconds(500);
  };
  while (!stop_) {
    if (target_ != connected_to) {
      connected_to = target_;
      lock.unlock();
      stream.reset();
      lock.lock();
      ok_ = false;
      error_ = "not connected";
      next_try = {};
      continue;
    }
    if (connected_to.empty()) {
      queue_.clear();
      wake_.wait_for(lock, std::chrono::milliseconds(200));
      continue;
    }
    if (!stream) {
      if (Clock::now() < next_try) {
        queue_.clear();
        wake_.wait_until(lock, next_try);
        continue;
      }
      const std::string address = connected_to;
      lock.unlock();
      auto s = std::make_unique<Stream>();
      std::string why;
      transport::ChannelOptions options;
      options.max_message_bytes = max_message_bytes_;
      options.keepalive_time = std::chrono::milliseconds(10000);
      options.keepalive_timeout = std::chrono::milliseconds(5000);
      options.max_reconnect_backoff = std::chrono::milliseconds(1000);
      if (!credentials_.ok()) {
        why = std::string(credentials_.status().message());
      } else {
        options.credentials = *credentials_;
        options.tls_server_name = tls_.server_name;
        auto channel = transport::MakeChannel(address, options);
        if (!channel.ok()) {
          why = std::string(channel.status().message());
        } else if (!(*channel)->WaitForConnected(
                       std::chrono::system_clock::now() +
                       std::chrono::seconds(1))) {
          why = "cannot connect";
        } else {
          s->channel = *channel;
          s->stub = proto::Pipeline::NewStub(s->channel);
          s->writer = s->stub->Relay(&s->context, &s->reply);
        }
      }
      lock.lock();
      if (!why.empty()) {
        ok_ = false;
        error_ = "relay to " + address + ": " + why;
        queue_.clear();
        next_try = Clock::now() + std::chrono::milliseconds(500);
        continue;
      }
      stream = std::move(s);
      ok_ = true;
      error_.clear();
      FP_LOG_INFO("pipeline", "relaying to {}", address);
      continue;
    }
    if (queue_.empty()) {
      wake_.wait_for(lock, std::chrono::milliseconds(200));
      // An idle stream whose peer went away: its channel left READY.
      if (queue_.empty() && stream &&
          stream->channel->GetState(false) != GRPC_CHANNEL_READY) {
        broken("the connection was lost");
      }
      continue;
    }
    std::deque<proto::Activation> batch;
    batch.swap(queue_);
    lock.unlock();
    bool written = true;
    for (const proto::Activation& m : batch) {
      if (!stream->writer->Write(m)) {
        written = false;
        break;
      }
    }
    lock.lock();
    if (!written) broken("the stream broke");
  }
  lock.unlock();
  stream.reset();
}

}  // namespace serve
}  // namespace fedpeft
