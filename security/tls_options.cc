#include "security/tls_options.h"

namespace fedpeft {
namespace security {

void TlsOptions::Read(ConfigReader& in, int sides) {
  in.Get("enabled", &enabled);
  in.Get("insecure", &insecure);
  in.Get("ca", &ca);
  in.Get("cert", &cert);
  in.Get("key", &key);
  if (sides & kTlsServer) {
    in.Get("allowed_names", &allowed_names);
    in.Get("allowlist_file", &allowlist_file);
  }
  if (sides & kTlsClient) in.Get("server_name", &server_name);
  if (!enabled && !insecure) {
    in.Check(false, "enabled",
             "connection security must be chosen explicitly: set "
             "tls.enabled: true with tls.ca, tls.cert and tls.key (see "
             "`fedpeft certs`), or tls.insecure: true for plaintext");
    return;
  }
  in.Check(!(enabled && insecure), "insecure",
           "cannot be true together with tls.enabled: true; choose one");
  if (!enabled) return;
  for (const auto& [name, value] :
       {std::pair<const char*, const std::string*>{"ca", &ca},
        {"cert", &cert},
        {"key", &key}}) {
    in.Check(!value->empty(), name,
             "required with tls.enabled: true (a PEM file path)");
  }
  in.Check(allowed_names.empty() || allowlist_file.empty(), "allowlist_file",
           "set either tls.allowed_names or tls.allowlist_file, not both");
  for (const std::string& n : allowed_names) {
    in.Check(!n.empty(), "allowed_names", "names must not be empty");
  }
}

}  // namespace security
}  // namespace fedpeft
