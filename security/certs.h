// A small certificate authority for a federation (`fedpeft certs`): one CA,
// and per process an EC P-256 key with a certificate whose common name is
// the participant's name, whose subjectAltNames are the addresses it may be
// reached at, and whose extended key usage says what it may do in TLS:
//
//   role          EKU                      why
//   coordinator   serverAuth               it only serves
//   worker        clientAuth               it only dials out
//   edge          serverAuth, clientAuth   it serves workers and dials the
//                                          cloud, with one certificate
//   operator      clientAuth               it asks a server for `status`;
//                                          it can never register
//
// The role itself is part of the signed subject (organizationalUnitName =
// the role's name), so a server admits a participant only in the role the
// CA gave it: a worker certificate cannot register as an edge.
//
// Files: a CA directory holds ca.crt and ca.key; an issued certificate is
// <out>/<name>.crt with its key <out>/<name>.key. Keys are PEM (PKCS#8),
// written atomically with mode 0600; certificates are PEM, 0644. Nothing
// here logs or returns key material.
//
// OpenSSL 3 EVP and X509 APIs only; no LibTorch, no gRPC.
//
// Thread-safety: free functions, no shared state.
#ifndef FEDPEFT_SECURITY_CERTS_H_
#define FEDPEFT_SECURITY_CERTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace security {

// Largest PEM file read (certificate, key, CA bundle); larger ones are
// refused unread, naming the size and this limit. A certificate or key is
// 1-3 KB, a whole public CA bundle ~220 KB.
inline constexpr uint64_t kMaxPemFileBytes = 1ull << 20;

enum class CertRole { kCoordinator, kEdge, kWorker, kOperator };

// "coordinator" | "edge" | "worker" | "operator"; InvalidArgument naming
// the value otherwise.
StatusOr<CertRole> ParseCertRole(const std::string& text);
const char* CertRoleName(CertRole role);

// The file names inside a CA directory and beside an issued certificate.
std::string CaCertPath(const std::string& ca_dir);  // <dir>/ca.crt
std::string CaKeyPath(const std::string& ca_dir);   // <dir>/ca.key
std::string CertPath(const std::string& dir, const std::string& name);
std::string KeyPath(const std::string& dir, const std::string& name);

struct CaOptions {
  std::string name = "fedpeft-ca";  // the CA's common name
  int days = 3650;                  // validity from now
  bool overwrite = false;           // replace an existing ca.crt/ca.key
};

// Creates `dir` (and parents) and writes a self-signed CA certificate
// (basicConstraints CA:TRUE, pathlen 0, keyUsage keyCertSign + cRLSign) and
// its key. Refuses (FailedPrecondition) to replace an existing CA unless
// `overwrite`: every certificate it issued would stop verifying.
Status CreateCa(const std::string& dir, const CaOptions& options);

struct IssueOptions {
  std::string name;  // CN, and the participant id (worker.id / edge.id)
  CertRole role = CertRole::kWorker;
  // subjectAltNames: an IP address literal becomes an IP SAN, anything else
  // a DNS name. Empty: localhost and 127.0.0.1.
  std::vector<std::string> sans;
  int days = 365;
  bool overwrite = false;  // replace an existing <name>.crt/<name>.key
};

// Issues a certificate for `options.name` signed by the CA in `ca_dir` and
// writes <out_dir>/<name>.{crt,key} (creating out_dir). Errors name the
// file or option that was wrong: a missing CA, a CA key that does not match
// its certificate, a name that is not a plain identifier.
Status IssueCertificate(const std::string& ca_dir, const std::string& out_dir,
                        const IssueOptions& options);

// What a certificate says, for logs and tests.
struct CertificateInfo {
  std::string common_name;
  std::string issuer_common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  bool server_auth = false;  // EKU
  bool client_auth = false;  // EKU
  bool is_ca = false;
  int64_t not_after_unix = 0;
  std::string role;  // organizationalUnitName; empty when there is none
};

// Parses the first certificate of the PEM file at `path`.
StatusOr<CertificateInfo> ReadCertificateInfo(const std::string& path);

// The role the CA gave the first certificate of `pem` (PEM text, e.g. a
// TLS peer's certificate). FailedPrecondition for a certificate without one
// (issued before roles were bound: issue it again) or with an unknown one.
StatusOr<CertRole> CertificateRole(const std::string& pem);

// Verifies the certificate at `cert_path` against the CA certificate(s) at
// `ca_path` (chain, signature, validity period). FailedPrecondition with
// OpenSSL's reason when it does not verify.
Status VerifyCertificate(const std::string& ca_path,
                         const std::string& cert_path);

// Checks that the PEM private key at `key_path` belongs to the certificate
// at `cert_path`; errors name both files.
Status CheckKeyMatchesCertificate(const std::string& cert_path,
                                  const std::string& key_path);

}  // namespace security
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_CERTS_H_
