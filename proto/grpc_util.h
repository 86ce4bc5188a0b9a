// gRPC plumbing shared by every fedpeft client and server: the one mapping
// between fedpeft::Status and grpc::Status, which failures a caller may retry,
// capped exponential backoff with jitter, client channels and server builder
// defaults (message size limits, keepalive), and host:port parsing.
//
// Nothing here knows about fedpeft's messages; see tensor_codec.h for those.
//
// Thread-safety: free functions are reentrant. A Backoff is used by one
// thread at a time.
#ifndef FEDPEFT_PROTO_GRPC_UTIL_H_
#define FEDPEFT_PROTO_GRPC_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "common/status.h"

namespace fedpeft {
namespace transport {

// ---- Status <-> grpc::Status ----------------------------------------------
//
// The one code table, both ways:
//
//   fedpeft StatusCode   -> gRPC               -> fedpeft StatusCode
//   kOk                     OK                    kOk
//   kInvalidArgument        INVALID_ARGUMENT      kInvalidArgument
//   kNotFound               NOT_FOUND             kNotFound
//   kIoError                INTERNAL (*)          kInternal
//   kCorruption             DATA_LOSS             kCorruption
//   kUnimplemented          UNIMPLEMENTED         kUnimplemented
//   kFailedPrecondition     FAILED_PRECONDITION   kFailedPrecondition
//   kUnavailable            UNAVAILABLE           kUnavailable
//   kDeadlineExceeded       DEADLINE_EXCEEDED     kDeadlineExceeded
//   kInternal               INTERNAL              kInternal
//
// (*) a server's I/O failure is internal to the server from the caller's
// view; the message keeps "I/O error" so nothing is lost for the reader.
//
// gRPC codes with no fedpeft counterpart (the message keeps the gRPC name):
//   RESOURCE_EXHAUSTED, OUT_OF_RANGE           -> kInvalidArgument
//     (gRPC raises RESOURCE_EXHAUSTED mostly for a message over the size
//     limit: the request is too big, retrying it cannot help)
//   ALREADY_EXISTS, ABORTED, PERMISSION_DENIED,
//   UNAUTHENTICATED                            -> kFailedPrecondition
//   CANCELLED, UNKNOWN                         -> kInternal

// The grpc::Status a handler returns for `status`; OK for OK.
grpc::Status ToGrpcStatus(const Status& status);

// The fedpeft Status of a finished call; OK for OK. The message is
// "<context>: <message>" (context names the call and peer, e.g.
// "UploadUpdate to 10.0.0.2:7070"), with the gRPC code name inserted when the
// mapping above loses it. An empty context adds no prefix.
Status FromGrpcStatus(const grpc::Status& status, const std::string& context);

// Upper-case gRPC name of `code`, e.g. "UNAVAILABLE".
const char* GrpcCodeName(grpc::StatusCode code);

// ---- retries --------------------------------------------------------------

// Whether a failed call may be sent again unchanged. UNAVAILABLE (the server
// was not reached or went away; the call had no effect or is safe to repeat)
// always; DEADLINE_EXCEEDED only when `idempotent`, because the server may
// have acted on a call whose reply came too late.
//
// Idempotent in fedpeft's protocol: Heartbeat, GetTask, DownloadAdapter,
// GetStatus. Not: Register (opens a new session), UploadUpdate (unless the
// server deduplicates by session and round).
bool IsRetryable(const grpc::Status& status, bool idempotent = false);

// Delays between retries: the k-th Next() (k from 0) is
//   min(max, base_k * u),  base_k = min(max, initial * multiplier^k),
//   u uniform in [1 - jitter, 1 + jitter],
// so delays grow geometrically, never exceed `max` (once capped they fall in
// [max * (1 - jitter), max]), and peers that failed together spread out
// instead of returning together. Never shorter than 1 ms.
struct BackoffOptions {
  // First delay before jitter. Default 100 ms.
  std::chrono::milliseconds initial{100};
  // Ceiling on every delay, jitter included. Default 30 s.
  std::chrono::milliseconds max{30000};
  // Growth per attempt, >= 1. Default 2.
  double multiplier = 2.0;
  // Fraction of spread around each delay, in [0, 1). Default 0.2 (+-20%).
  double jitter = 0.2;
  // Seed of the jitter RNG. Unset (default): from std::random_device, so
  // workers do not all pick the same delays; set it in tests.
  std::optional<uint64_t> seed;

  // Every field in range; names the field and the value otherwise.
  Status Validate() const;
};

class Backoff {
 public:
  // Out-of-range options are clamped into range (see Validate()).
  explicit Backoff(BackoffOptions options = {});

  // The delay to wait before the next attempt; advances the attempt count.
  std::chrono::milliseconds Next();

  // Back to the first delay, e.g. after a call succeeded.
  void Reset() { attempt_ = 0; }

  // Next() calls since construction or Reset().
  int attempts() const { return attempt_; }

 private:
  BackoffOptions options_;
  std::mt19937_64 rng_;
  int attempt_ = 0;
};

// ---- channels and servers -------------------------------------------------

// The default per-message limit, send and receive (gRPC's own default
// receive limit). Tensor streams stay under it with
// ChunkBytesForMessageLimit() (tensor_codec.h).
inline constexpr size_t kDefaultMaxMessageBytes = size_t{4} << 20;

struct ChannelOptions {
  // Largest message sent or received. Default 4 MiB.
  size_t max_message_bytes = kDefaultMaxMessageBytes;
  // Ping the server after this long without activity, so a dead peer or a
  // NAT that dropped the connection is noticed. Default 30 s. The server
  // must permit it: ServerBuilderDefaults() does.
  std::chrono::milliseconds keepalive_time{30000};
  // Declare the connection dead when a ping is not answered within this.
  // Default 10 s.
  std::chrono::milliseconds keepalive_timeout{10000};
  // Ceiling on the channel's own reconnect backoff (gRPC's default is 120 s),
  // so a restarted coordinator is found again quickly. Default 10 s.
  std::chrono::milliseconds max_reconnect_backoff{10000};
  // Transport security. Null (default): insecure (plaintext). TLS clients
  // set security::MakeChannelCredentials(...) here (security/tls.h).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // With TLS: the name the server's certificate must carry, when it is not
  // the host dialed (e.g. dialing an IP the certificate does not list).
  // Empty (default): the host of the address.
  std::string tls_server_name;
};

// A channel to `address`: "host:port" (IPv6 as "[::1]:7070"), or any target
// with a gRPC scheme ("dns:///host:port", "unix:/path") passed through as is.
// The channel connects lazily, on the first call.
// Returns InvalidArgument for a malformed host:port or a port of 0.
StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const std::string& address, const ChannelOptions& options = {});

// Applies fedpeft's server settings to `builder`: send and receive message
// limits of `max_message_bytes`, and keepalive pings from clients accepted as
// often as every 10 s, also between calls (ChannelOptions' pings would
// otherwise be answered with GOAWAY "too_many_pings"). Listening ports and
// their credentials stay with the caller:
//   int port = 0;
//   builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
//                            &port);  // port 0: the OS picks; read it back
void ServerBuilderDefaults(grpc::ServerBuilder* builder,
                           size_t max_message_bytes = kDefaultMaxMessageBytes);

// Sets `context`'s deadline to now + `timeout`. Every call gets one.
void SetTimeout(grpc::ClientContext* context,
                std::chrono::milliseconds timeout);

// ---- addresses ------------------------------------------------------------

struct HostPort {
  std::string host;  // without IPv6 brackets
  int port = 0;
};

// A decimal port in [0, 65535]; 0 means "any" for a listening address.
StatusOr<int> ParsePort(const std::string& text);

// "host:port", "[v6addr]:port" -> {host, port}. Errors name the address.
StatusOr<HostPort> SplitHostPort(const std::string& address);

// {host, port} -> "host:port", bracketing IPv6 hosts.
std::string JoinHostPort(const std::string& host, int port);

}  // namespace transport
}  // namespace fedpeft

#endif  // FEDPEFT_PROTO_GRPC_UTIL_H_
