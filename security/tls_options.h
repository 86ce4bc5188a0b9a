// The `tls` section of coordinator, edge and worker configs: mutual TLS
// (enabled, ca, cert, key), or explicit plaintext (insecure), and the
// server's allowlist. What the keys mean, and how identities are checked,
// is in security/tls.h; this header has no gRPC so configs can hold it.
//
// Thread-safety: a plain value.
#ifndef FEDPEFT_SECURITY_TLS_OPTIONS_H_
#define FEDPEFT_SECURITY_TLS_OPTIONS_H_

#include <string>
#include <vector>

#include "common/config.h"

namespace fedpeft {
namespace security {

// Which ends of a connection a process is, for TlsOptions::Read: only the
// keys of its sides are accepted.
enum TlsSide : int { kTlsServer = 1, kTlsClient = 2 };

struct TlsOptions {
  bool enabled = false;   // mutual TLS on every connection served or dialed
  bool insecure = false;  // explicit plaintext; exactly one of the two
  std::string ca;         // PEM CA certificate(s) that verify the peer
  std::string cert;       // PEM certificate (chain) of this process
  std::string key;        // PEM private key of `cert`
  // Server: names of client certificates admitted; empty = any `ca` signed.
  std::vector<std::string> allowed_names;
  // Server: YAML file `allowed_names: [...]`, re-read when it changes;
  // excludes allowed_names.
  std::string allowlist_file;
  // Client: the name the server's certificate must carry; empty = the host
  // of the address dialed.
  std::string server_name;

  // Binds the keys of `sides` (a TlsSide mask) under the `tls` section.
  // Files are not opened here (security/tls.h does), so a config can be
  // checked before its certificates exist.
  void Read(ConfigReader& in, int sides);
};

}  // namespace security
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_TLS_OPTIONS_H_
