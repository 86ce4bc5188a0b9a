#include "security/tls.h"

#include <sys/stat.h>

#include <ctime>

#include "common/file_util.h"
#include "common/logging.h"
#include "security/certs.h"

namespace fedpeft {
namespace security {
namespace {

// A PEM file named by tls.<key>; errors name both.
StatusOr<std::string> ReadTlsFile(const std::string& key,
                                  const std::string& path) {
  StatusOr<std::string> text = ReadFileToString(path, kMaxPemFileBytes);
  if (!text.ok()) {
    return Status::InvalidArgument(
        "tls." + key + ": cannot read '" + path + "' (" +
        text.status().message() +
        "); create certificates with `fedpeft certs init` and `fedpeft certs "
        "issue`");
  }
  return text;
}

struct Pem {
  std::string ca, cert, key;
};

StatusOr<Pem> LoadPem(const TlsOptions& o, const std::string& component) {
  Pem pem;
  ASSIGN_OR_RETURN(pem.ca, ReadTlsFile("ca", o.ca));
  ASSIGN_OR_RETURN(pem.cert, ReadTlsFile("cert", o.cert));
  ASSIGN_OR_RETURN(pem.key, ReadTlsFile("key", o.key));
  Status match = CheckKeyMatchesCertificate(o.cert, o.key);
  if (!match.ok()) return match.WithContext("tls.key");
  StatusOr<CertificateInfo> info = ReadCertificateInfo(o.cert);
  if (!info.ok()) return info.status().WithContext("tls.cert");
  StatusOr<CertificateInfo> ca = ReadCertificateInfo(o.ca);
  if (!ca.ok()) return ca.status().WithContext("tls.ca");
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  if (info->not_after_unix > 0 && info->not_after_unix < now) {
    return Status::FailedPrecondition("tls.cert: '" + o.cert +
                                      "' has expired; issue a new one");
  }
  FP_LOG_INFO(component,
              "mutual TLS: certificate '{}' (issued by '{}', valid for "
              "{:.1f} more days), peers verified against '{}'",
              info->common_name, info->issuer_common_name,
              static_cast<double>(info->not_after_unix - now) / 86400,
              ca->common_name);
  return pem;
}

}  // namespace

StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& options, const std::string& component) {
  if (!options.enabled) {
    FP_LOG_WARN(component,
                "tls.insecure: serving PLAINTEXT: anyone who reaches this "
                "port can call it as any participant and read what it "
                "sends");
    return grpc::InsecureServerCredentials();
  }
  ASSIGN_OR_RETURN(Pem pem, LoadPem(options, component));
  grpc::SslServerCredentialsOptions ssl(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = pem.ca;
  ssl.pem_key_cert_pairs.push_back({pem.key, pem.cert});
  return grpc::SslServerCredentials(ssl);
}

StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& options, const std::string& component) {
  if (!options.enabled) {
    FP_LOG_WARN(component,
                "tls.insecure: connecting in PLAINTEXT: the server is not "
                "verified and the traffic can be read");
    return grpc::InsecureChannelCredentials();
  }
  ASSIGN_OR_RETURN(Pem pem, LoadPem(options, component));
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = pem.ca;
  ssl.pem_private_key = pem.key;
  ssl.pem_cert_chain = pem.cert;
  return grpc::SslCredentials(ssl);
}

std::string PeerCertificateName(const grpc::ServerContext& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) return "";
  std::vector<grpc::string_ref> cn =
      auth->FindPropertyValues("x509_common_name");
  if (cn.empty()) return "";
  return std::string(cn.front().data(), cn.front().size());
}

namespace {
std::string PemOf(const std::shared_ptr<const grpc::AuthContext>& auth) {
  if (!auth || !auth->IsPeerAuthenticated()) return "";
  std::vector<grpc::string_ref> pem = auth->FindPropertyValues("x509_pem_cert");
  if (pem.empty()) return "";
  return std::string(pem.front().data(), pem.front().size());
}
}  // namespace

std::string PeerCertificatePem(const grpc::ServerContext& context) {
  return PemOf(context.auth_context());
}

std::string PeerCertificatePem(const grpc::ClientContext& context) {
  return PemOf(context.auth_context());
}

StatusOr<std::set<std::string>> ReadAllowlistFile(const std::string& path) {
  StatusOr<YAML::Node> root = LoadConfigFile(path, {});
  if (!root.ok()) return root.status().WithContext("tls.allowlist_file");
  ConfigReader in(*root, path);
  std::vector<std::string> names;
  in.Require("allowed_names", &names);
  RETURN_IF_ERROR(in.Finish());
  return std::set<std::string>(names.begin(), names.end());
}

StatusOr<std::unique_ptr<Allowlist>> Allowlist::Create(
    const TlsOptions& options, std::chrono::milliseconds recheck) {
  std::unique_ptr<Allowlist> list(new Allowlist());
  list->recheck_ = recheck;
  list->file_ = options.allowlist_file;
  if (list->file_.empty()) {
    list->names_.insert(options.allowed_names.begin(),
                        options.allowed_names.end());
    list->any_ = list->names_.empty();
    return list;
  }
  list->stamp_ = Stamp(list->file_);
  ASSIGN_OR_RETURN(list->names_, ReadAllowlistFile(list->file_));
  list->last_check_ = std::chrono::steady_clock::now();
  return list;
}

Allowlist::FileStamp Allowlist::Stamp(const std::string& path) {
  FileStamp s;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return s;
  s.present = true;
  s.inode = st.st_ino;
  s.size = st.st_size;
  s.mtime_ns =
      static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return s;
}

void Allowlist::MaybeReload() {
  auto now = std::chrono::steady_clock::now();
  if (now - last_check_ < recheck_) return;
  last_check_ = now;
  FileStamp stamp = Stamp(file_);
  if (stamp == stamp_) return;
  stamp_ = stamp;
  StatusOr<std::set<std::string>> names = ReadAllowlistFile(file_);
  if (!names.ok()) {
    FP_LOG_ERROR("tls", "allowlist not reloaded, keeping the last {} names: {}",
                 names_.size(), names.status().message());
    return;
  }
  std::string removed;
  for (const std::string& n : names_) {
    if (!names->count(n)) removed += (removed.empty() ? "" : ", ") + n;
  }
  names_ = std::move(names).value();
  FP_LOG_INFO("tls", "allowlist '{}' reloaded: {} names{}", file_,
              names_.size(), removed.empty() ? "" : "; revoked: " + removed);
}

bool Allowlist::Allows(const std::string& name) {
  if (any_) return true;
  std::lock_guard<std::mutex> lock(mu_);
  if (!file_.empty()) MaybeReload();
  return names_.count(name) > 0;
}

std::string Allowlist::Describe() const {
  if (any_) return "any certificate the CA signed";
  std::lock_guard<std::mutex> lock(mu_);
  if (!file_.empty()) {
    return std::to_string(names_.size()) + " names from '" + file_ +
           "' (re-read when it changes)";
  }
  return std::to_string(names_.size()) + " names (tls.allowed_names)";
}

}  // namespace security
}  // namespace fedpeft
