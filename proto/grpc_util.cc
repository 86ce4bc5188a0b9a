#include "proto/grpc_util.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <string_view>

namespace fedpeft {
namespace transport {
namespace {

int ClampToInt(size_t n) {
  return static_cast<int>(std::min<size_t>(n, INT_MAX));
}

int ClampToInt(std::chrono::milliseconds ms) {
  return static_cast<int>(
      std::clamp<int64_t>(ms.count(), 0, static_cast<int64_t>(INT_MAX)));
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

// ---- Status <-> grpc::Status ----------------------------------------------

grpc::Status ToGrpcStatus(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk:
      return grpc::Status::OK;
    case StatusCode::kInvalidArgument:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, status.message());
    case StatusCode::kNotFound:
      return grpc::Status(grpc::StatusCode::NOT_FOUND, status.message());
    case StatusCode::kIoError:
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "I/O error: " + status.message());
    case StatusCode::kCorruption:
      return grpc::Status(grpc::StatusCode::DATA_LOSS, status.message());
    case StatusCode::kUnimplemented:
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, status.message());
    case StatusCode::kFailedPrecondition:
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          status.message());
    case StatusCode::kUnavailable:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, status.message());
    case StatusCode::kDeadlineExceeded:
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          status.message());
    case StatusCode::kInternal:
      return grpc::Status(grpc::StatusCode::INTERNAL, status.message());
  }
  return grpc::Status(grpc::StatusCode::INTERNAL,
                      "unknown status code " +
                          std::to_string(static_cast<int>(status.code())) +
                          ": " + status.message());
}

Status FromGrpcStatus(const grpc::Status& status, const std::string& context) {
  if (status.ok()) return Status::Ok();
  const std::string prefix = context.empty() ? "" : context + ": ";
  const std::string& msg = status.error_message();
  // Codes fedpeft has keep the message as sent; the rest name the gRPC code.
  const std::string lossy =
      prefix + GrpcCodeName(status.error_code()) + ": " + msg;
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return Status::Ok();
    case grpc::StatusCode::INVALID_ARGUMENT:
      return Status::InvalidArgument(prefix + msg);
    case grpc::StatusCode::NOT_FOUND:
      return Status::NotFound(prefix + msg);
    case grpc::StatusCode::DATA_LOSS:
      return Status::Corruption(prefix + msg);
    case grpc::StatusCode::UNIMPLEMENTED:
      return Status::Unimplemented(prefix + msg);
    case grpc::StatusCode::FAILED_PRECONDITION:
      return Status::FailedPrecondition(prefix + msg);
    case grpc::StatusCode::UNAVAILABLE:
      return Status::Unavailable(prefix + msg);
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return Status::DeadlineExceeded(prefix + msg);
    case grpc::StatusCode::INTERNAL:
      return Status::Internal(prefix + msg);
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::OUT_OF_RANGE:
      return Status::InvalidArgument(lossy);
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      return Status::FailedPrecondition(lossy);
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::UNKNOWN:
    default:
      return Status::Internal(lossy);
  }
}

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN_CODE";
  }
}

// ---- retries --------------------------------------------------------------

bool IsRetryable(const grpc::Status& status, bool idempotent) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return true;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return idempotent;
    default:
      return false;
  }
}

Status BackoffOptions::Validate() const {
  std::string errors;
  auto add = [&errors](const std::string& e) {
    errors += (errors.empty() ? "" : "; ") + e;
  };
  if (initial.count() < 1) {
    add("backoff.initial: must be >= 1 ms, got " +
        std::to_string(initial.count()) + " ms");
  }
  if (max < initial) {
    add("backoff.max: must be >= initial (" + std::to_string(initial.count()) +
        " ms), got " + std::to_string(max.count()) + " ms");
  }
  if (!(multiplier >= 1.0) || !std::isfinite(multiplier)) {
    add("backoff.multiplier: must be a finite number >= 1, got " +
        std::to_string(multiplier));
  }
  if (!(jitter >= 0.0 && jitter < 1.0)) {
    add("backoff.jitter: must be in [0, 1), got " + std::to_string(jitter));
  }
  if (!errors.empty()) return Status::InvalidArgument(errors);
  return Status::Ok();
}

Backoff::Backoff(BackoffOptions options) : options_(std::move(options)) {
  using std::chrono::milliseconds;
  options_.initial = std::max(options_.initial, milliseconds(1));
  options_.max = std::max(options_.max, options_.initial);
  if (!(options_.multiplier >= 1.0) || !std::isfinite(options_.multiplier)) {
    options_.multiplier = 1.0;
  }
  if (!(options_.jitter >= 0.0)) options_.jitter = 0.0;
  options_.jitter = std::min(options_.jitter, 0.999);
  rng_.seed(options_.seed ? *options_.seed : std::random_device{}());
}

std::chrono::milliseconds Backoff::Next() {
  const double max_ms = static_cast<double>(options_.max.count());
  // base = min(max, initial * multiplier^attempt), stepwise so it cannot
  // overflow however many attempts pile up.
  double base = static_cast<double>(options_.initial.count());
  for (int i = 0; i < attempt_ && base < max_ms; ++i) {
    base *= options_.multiplier;
  }
  base = std::min(base, max_ms);
  std::uniform_real_distribution<double> spread(1.0 - options_.jitter,
                                                1.0 + options_.jitter);
  const double delay = std::clamp(base * spread(rng_), 1.0, max_ms);
  if (attempt_ < INT_MAX) ++attempt_;
  return std::chrono::milliseconds(static_cast<int64_t>(delay));
}

// ---- channels and servers -------------------------------------------------

StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const std::string& address, const ChannelOptions& options) {
  // Targets with a resolver scheme go to gRPC unchanged.
  static constexpr std::string_view kSchemes[] = {
      "dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:"};
  bool has_scheme = false;
  for (std::string_view scheme : kSchemes) {
    has_scheme = has_scheme || StartsWith(address, scheme);
  }
  if (!has_scheme) {
    ASSIGN_OR_RETURN(HostPort hp, SplitHostPort(address));
    if (hp.port == 0) {
      return Status::InvalidArgument("address '" + address +
                                     "': port 0 cannot be dialed (expected "
                                     "the server's port, 1..65535)");
    }
  }

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(ClampToInt(options.max_message_bytes));
  args.SetMaxSendMessageSize(ClampToInt(options.max_message_bytes));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ClampToInt(options.keepalive_time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              ClampToInt(options.keepalive_timeout));
  // Keep pinging between calls and without data, so an idle worker learns
  // that its connection died before its next call does.
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              ClampToInt(options.max_reconnect_backoff));
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials ? options.credentials
                          : grpc::InsecureChannelCredentials();
  return grpc::CreateCustomChannel(address, credentials, args);
}

void ServerBuilderDefaults(grpc::ServerBuilder* builder,
                           size_t max_message_bytes) {
  builder->SetMaxReceiveMessageSize(ClampToInt(max_message_bytes));
  builder->SetMaxSendMessageSize(ClampToInt(max_message_bytes));
  // Accept the clients' keepalive pings (ChannelOptions::keepalive_time,
  // default 30 s), also between calls; below gRPC's 5-minute default the
  // server would answer them with GOAWAY "too_many_pings".
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
}

void SetTimeout(grpc::ClientContext* context,
                std::chrono::milliseconds timeout) {
  context->set_deadline(std::chrono::system_clock::now() + timeout);
}

// ---- addresses ------------------------------------------------------------

StatusOr<int> ParsePort(const std::string& text) {
  const std::string bad = "port '" + text + "': expected a number 0..65535";
  if (text.empty() || text.size() > 5) return Status::InvalidArgument(bad);
  int port = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return Status::InvalidArgument(bad);
    port = port * 10 + (c - '0');
  }
  if (port > 65535) return Status::InvalidArgument(bad);
  return port;
}

StatusOr<HostPort> SplitHostPort(const std::string& address) {
  const std::string subject = "address '" + address + "'";
  HostPort hp;
  std::string port;
  if (StartsWith(address, "[")) {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return Status::InvalidArgument(subject +
                                     ": expected [ipv6]:port, e.g. [::1]:7070");
    }
    hp.host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) {
      return Status::InvalidArgument(subject +
                                     ": expected host:port, e.g. "
                                     "127.0.0.1:7070");
    }
    if (address.find(':') != colon) {
      return Status::InvalidArgument(
          subject + ": IPv6 hosts need brackets, e.g. [::1]:7070");
    }
    hp.host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  if (hp.host.empty()) {
    return Status::InvalidArgument(subject +
                                   ": empty host (expected host:port, e.g. "
                                   "0.0.0.0:7070 to listen everywhere)");
  }
  StatusOr<int> parsed = ParsePort(port);
  if (!parsed.ok()) return parsed.status().WithContext(subject);
  hp.port = *parsed;
  return hp;
}

std::string JoinHostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) {
    return "[" + host + "]:" + std::to_string(port);
  }
  return host + ":" + std::to_string(port);
}

}  // namespace transport
}  // namespace fedpeft
