// Transport security of fedpeft's gRPC connections: the `tls` config
// section, the gRPC credentials built from it, the identity of a caller and
// the allowlist of names a server admits.
//
// Every process that serves or dials chooses explicitly:
//   tls:
//     enabled: true          # mutual TLS (below)
//     ca: out/certs/ca.crt   # verifies the peer's certificate
//     cert: out/certs/worker-0.crt
//     key: out/certs/worker-0.key
// or
//   tls:
//     insecure: true         # plaintext; a warning at start
// A config with neither is an error naming tls.enabled.
//
// With TLS on, a server requires and verifies a client certificate (mutual
// TLS), and the certificate's common name is the caller's identity: the
// coordinator takes it as the participant id (a profile worker_id that
// differs is refused) and checks it again on every call of the session (see
// coordinator/service.h). Clients verify the server's certificate against
// `ca` and the host they dial (or `server_name`) against its SANs.
//
// Allowlist (servers): `allowed_names` (empty = any certificate `ca`
// signed), or `allowlist_file`, a YAML file `allowed_names: [a, b]` that the
// server re-reads when it changes (its mtime, size or inode; looked at most
// once a second), so an operator revokes a name at run time by rewriting the
// file. An empty list in the file admits no one; a file that cannot be read
// or parsed later keeps the last good list and logs an error.
//
// No LibTorch here. Thread-safety: TlsOptions is a plain value; Allowlist is
// thread-safe; the free functions are reentrant.
#ifndef FEDPEFT_SECURITY_TLS_H_
#define FEDPEFT_SECURITY_TLS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "security/tls_options.h"

namespace fedpeft {
namespace security {

// Server credentials: InsecureServerCredentials for `insecure`; otherwise
// TLS that requires a client certificate signed by `ca`. Reads the files;
// errors name the tls.* key and the file, and a key that does not belong
// to the certificate is refused here rather than at the first handshake.
// `component` tags the start-up log line (which certificate, until when).
StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& options, const std::string& component);

// Channel credentials: InsecureChannelCredentials for `insecure`, otherwise
// TLS verifying the server against `ca` and presenting `cert`.
StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& options, const std::string& component);

// The common name of the verified client certificate of the call (gRPC's
// auth context property "x509_common_name"); empty when the call came
// without one (plaintext).
std::string PeerCertificateName(const grpc::ServerContext& context);
// The verified client certificate of the call as PEM (property
// "x509_pem_cert"), to read its role (certs.h, CertificateRole); empty on
// plaintext.
std::string PeerCertificatePem(const grpc::ServerContext& context);
// The verified server certificate of a finished client call as PEM; empty on
// plaintext or before the call has connected.
std::string PeerCertificatePem(const grpc::ClientContext& context);

// Reads an allowlist file: `allowed_names: [names]`, nothing else. Errors
// name the file.
StatusOr<std::set<std::string>> ReadAllowlistFile(const std::string& path);

class Allowlist {
 public:
  // From `options` (allowed_names or allowlist_file). Reads the file now:
  // a missing or malformed file at start is an error naming it.
  static StatusOr<std::unique_ptr<Allowlist>> Create(
      const TlsOptions& options,
      std::chrono::milliseconds recheck = std::chrono::seconds(1));

  // Whether certificate name `name` may call now. Re-reads the file first
  // when it changed and `recheck` has passed since the last look.
  bool Allows(const std::string& name);

  // For the start-up log: "any certificate the CA signed", "3 names", or
  // "the names in FILE".
  std::string Describe() const;

 private:
  struct FileStamp {
    bool present = false;
    ino_t inode = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const FileStamp& o) const {
      return present == o.present && inode == o.inode && size == o.size &&
             mtime_ns == o.mtime_ns;
    }
  };
  Allowlist() = default;
  static FileStamp Stamp(const std::string& path);
  // REQUIRES: mu_ held.
  void MaybeReload();

  std::string file_;  // empty: the static list only
  std::chrono::milliseconds recheck_{1000};
  mutable std::mutex mu_;
  std::set<std::string> names_;  // GUARDED_BY(mu_)
  bool any_ = false;             // no list at all: every name
  FileStamp stamp_;              // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point last_check_;  // GUARDED_BY(mu_)
};

}  // namespace security
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_TLS_H_
