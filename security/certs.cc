#include "security/certs.h"

#include <arpa/inet.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <cstring>
#include <ctime>
#include <memory>

#include "common/file_util.h"

namespace fedpeft {
namespace security {
namespace {

// RAII for OpenSSL objects.
struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free_all(p); }
};
struct StoreFree {
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct GeneralNamesFree {
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};
struct EkuFree {
  void operator()(EXTENDED_KEY_USAGE* p) const {
    sk_ASN1_OBJECT_pop_free(p, ASN1_OBJECT_free);
  }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Bio = std::unique_ptr<BIO, BioFree>;

// OpenSSL's queued errors as one line (and the queue cleared).
std::string OpensslError() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

Status Ssl(const std::string& what) {
  return Status::Internal(what + ": " + OpensslError());
}

StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  StatusOr<std::string> text = ReadFileToString(path, kMaxPemFileBytes);
  if (!text.ok()) {
    return text.status().WithContext(std::string(what) + " '" + path + "'");
  }
  return text;
}

StatusOr<Cert> LoadCert(const std::string& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadPem(path, "certificate"));
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    return Status::InvalidArgument("certificate '" + path +
                                   "': not a PEM certificate");
  }
  return cert;
}

StatusOr<Pkey> LoadKey(const std::string& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadPem(path, "private key"));
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Pkey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    // The path only: never the content of a key file.
    return Status::InvalidArgument("private key '" + path +
                                   "': not an unencrypted PEM private key");
  }
  return key;
}

StatusOr<Pkey> NewP256Key() {
  Pkey key(EVP_EC_gen("P-256"));
  if (!key) return Ssl("generating an EC P-256 key");
  return key;
}

StatusOr<std::string> KeyPem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr,
                                nullptr)) {
    return Ssl("encoding a private key");
  }
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  std::string pem(data, static_cast<size_t>(n));
  return pem;
}

StatusOr<std::string> CertPem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509(bio.get(), cert)) return Ssl("encoding a cert");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

// Adds extension `nid` = `value` (openssl x509v3_config syntax), with the
// issuer/subject set in `ctx` for the key identifiers.
Status AddExt(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  std::unique_ptr<X509_EXTENSION, ExtFree> ext(
      X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || !X509_add_ext(cert, ext.get(), -1)) {
    return Ssl(std::string("certificate extension ") + OBJ_nid2sn(nid) + "=" +
               value);
  }
  return Status::Ok();
}

// A fresh certificate: version 3, random 159-bit serial, validity now..days,
// subject CN = `cn`, public key of `key`.
StatusOr<Cert> NewCert(const std::string& cn, EVP_PKEY* key, int days) {
  Cert cert(X509_new());
  if (!cert || !X509_set_version(cert.get(), 2)) return Ssl("X509_new");
  std::unique_ptr<BIGNUM, BnFree> serial(BN_new());
  if (!serial ||
      !BN_rand(serial.get(), 159, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get()))) {
    return Ssl("certificate serial number");
  }
  if (!X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), days, 0, nullptr)) {
    return Ssl("certificate validity");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (!X509_NAME_add_entry_by_txt(
          name, "CN", MBSTRING_UTF8,
          reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) ||
      !X509_set_pubkey(cert.get(), key)) {
    return Ssl("certificate subject");
  }
  return cert;
}

bool IsIpLiteral(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 ||
         inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// A participant name: what worker.id / edge.id and a file name may be.
Status CheckName(const std::string& name, const std::string& what) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                c == '_' || c == '.');
  }
  if (!ok || name[0] == '.') {
    return Status::InvalidArgument(
        what +
        ": expected 1 to 64 characters of [A-Za-z0-9._-] not "
        "starting with '.', got '" +
        name + "'");
  }
  return Status::Ok();
}

Status RefuseOverwrite(const std::vector<std::string>& paths, bool overwrite,
                       const std::string& hint) {
  if (overwrite) return Status::Ok();
  for (const std::string& p : paths) {
    if (PathExists(p)) {
      return Status::FailedPrecondition("'" + p + "' exists; " + hint);
    }
  }
  return Status::Ok();
}

// Writes the key first (0600), then the certificate; both atomically.
Status WritePair(const std::string& cert_path, X509* cert,
                 const std::string& key_path, EVP_PKEY* key) {
  ASSIGN_OR_RETURN(std::string key_pem, KeyPem(key));
  ASSIGN_OR_RETURN(std::string cert_pem, CertPem(cert));
  RETURN_IF_ERROR(WriteFileAtomic(key_path, key_pem, 0600));
  return WriteFileAtomic(cert_path, cert_pem, 0644);
}

std::string Utf8(const ASN1_STRING* s) {
  unsigned char* out = nullptr;
  int n = ASN1_STRING_to_UTF8(&out, s);
  if (n < 0) return "";
  std::string r(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  OPENSSL_free(out);
  return r;
}

std::string NameEntry(const X509_NAME* name, int nid) {
  int i = X509_NAME_get_index_by_NID(name, nid, -1);
  if (i < 0) return "";
  return Utf8(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
}

std::string CommonName(const X509_NAME* name) {
  return NameEntry(name, NID_commonName);
}

}  // namespace

StatusOr<CertRole> ParseCertRole(const std::string& text) {
  if (text == "coordinator") return CertRole::kCoordinator;
  if (text == "edge") return CertRole::kEdge;
  if (text == "worker") return CertRole::kWorker;
  if (text == "operator") return CertRole::kOperator;
  return Status::InvalidArgument(
      "role: expected coordinator, edge, worker or operator, got '" + text +
      "'");
}

const char* CertRoleName(CertRole role) {
  switch (role) {
    case CertRole::kCoordinator:
      return "coordinator";
    case CertRole::kEdge:
      return "edge";
    case CertRole::kWorker:
      return "worker";
    case CertRole::kOperator:
      return "operator";
  }
  return "?";
}

std::string CaCertPath(const std::string& ca_dir) {
  return JoinPath(ca_dir, "ca.crt");
}
std::string CaKeyPath(const std::string& ca_dir) {
  return JoinPath(ca_dir, "ca.key");
}
std::string CertPath(const std::string& dir, const std::string& name) {
  return JoinPath(dir, name + ".crt");
}
std::string KeyPath(const std::string& dir, const std::string& name) {
  return JoinPath(dir, name + ".key");
}

Status CreateCa(const std::string& dir, const CaOptions& options) {
  RETURN_IF_ERROR(CheckName(options.name, "CA name"));
  if (options.days < 1) {
    return Status::InvalidArgument("days: must be >= 1, got " +
                                   std::to_string(options.days));
  }
  const std::string crt = CaCertPath(dir), key_path = CaKeyPath(dir);
  RETURN_IF_ERROR(RefuseOverwrite(
      {crt, key_path}, options.overwrite,
      "a new CA would invalidate every certificate the old one issued "
      "(use --force to replace it)"));
  RETURN_IF_ERROR(EnsureDirectory(dir));
  ASSIGN_OR_RETURN(Pkey key, NewP256Key());
  ASSIGN_OR_RETURN(Cert cert, NewCert(options.name, key.get(), options.days));
  if (!X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()))) {
    return Ssl("CA issuer name");
  }
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_basic_constraints,
                         "critical,CA:TRUE,"
                         "pathlen:0"));
  RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign"));
  RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  if (!X509_sign(cert.get(), key.get(), EVP_sha256())) {
    return Ssl("signing the CA certificate");
  }
  return WritePair(crt, cert.get(), key_path, key.get());
}

Status IssueCertificate(const std::string& ca_dir, const std::string& out_dir,
                        const IssueOptions& options) {
  RETURN_IF_ERROR(CheckName(options.name, "name"));
  if (options.days < 1) {
    return Status::InvalidArgument("days: must be >= 1, got " +
                                   std::to_string(options.days));
  }
  std::vector<std::string> sans = options.sans;
  if (sans.empty()) sans = {"localhost", "127.0.0.1"};
  std::string san_value;
  for (const std::string& san : sans) {
    bool ok = !san.empty();
    for (char c : san) {
      ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                  c == '.' || c == ':' || c == '*');
    }
    if (!ok) {
      return Status::InvalidArgument(
          "san: expected a DNS name or an IP address, got '" + san + "'");
    }
    if (!san_value.empty()) san_value += ",";
    san_value += (IsIpLiteral(san) ? "IP:" : "DNS:") + san;
  }

  const std::string ca_crt = CaCertPath(ca_dir), ca_key = CaKeyPath(ca_dir);
  if (!PathExists(ca_crt)) {
    return Status::NotFound("CA certificate '" + ca_crt +
                            "' not found (create the CA with `fedpeft certs "
                            "init --out " +
                            ca_dir + "`)");
  }
  ASSIGN_OR_RETURN(Cert ca, LoadCert(ca_crt));
  ASSIGN_OR_RETURN(Pkey ca_pkey, LoadKey(ca_key));
  if (X509_check_private_key(ca.get(), ca_pkey.get()) != 1) {
    ERR_clear_error();
    return Status::InvalidArgument("CA key '" + ca_key +
                                   "' does not belong to CA certificate '" +
                                   ca_crt + "'");
  }
  const std::string crt = CertPath(out_dir, options.name);
  const std::string key_path = KeyPath(out_dir, options.name);
  RETURN_IF_ERROR(RefuseOverwrite({crt, key_path}, options.overwrite,
                                  "use --force to issue it again"));
  RETURN_IF_ERROR(EnsureDirectory(out_dir));

  ASSIGN_OR_RETURN(Pkey key, NewP256Key());
  ASSIGN_OR_RETURN(Cert cert, NewCert(options.name, key.get(), options.days));
  if (!X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.get()))) {
    return Ssl("certificate issuer name");
  }
  // The role is signed into the subject: servers admit the participant in
  // that role only (see certs.h).
  const std::string role = CertRoleName(options.role);
  if (!X509_NAME_add_entry_by_txt(
          X509_get_subject_name(cert.get()), "OU", MBSTRING_UTF8,
          reinterpret_cast<const unsigned char*>(role.c_str()), -1, -1, 0)) {
    return Ssl("certificate role");
  }
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.get(), cert.get(), nullptr, nullptr, 0);
  std::string eku;
  switch (options.role) {
    case CertRole::kCoordinator:
      eku = "serverAuth";
      break;
    case CertRole::kWorker:
    case CertRole::kOperator:
      eku = "clientAuth";
      break;
    case CertRole::kEdge:
      eku = "serverAuth,clientAuth";
      break;
  }
  RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE"));
  RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature"));
  RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_ext_key_usage, eku));
  RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_subject_alt_name, san_value));
  RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!X509_sign(cert.get(), ca_pkey.get(), EVP_sha256())) {
    return Ssl("signing the certificate of '" + options.name + "'");
  }
  return WritePair(crt, cert.get(), key_path, key.get());
}

StatusOr<CertificateInfo> ReadCertificateInfo(const std::string& path) {
  ASSIGN_OR_RETURN(Cert cert, LoadCert(path));
  CertificateInfo info;
  info.common_name = CommonName(X509_get_subject_name(cert.get()));
  info.issuer_common_name = CommonName(X509_get_issuer_name(cert.get()));
  info.role =
      NameEntry(X509_get_subject_name(cert.get()), NID_organizationalUnitName);
  std::unique_ptr<GENERAL_NAMES, GeneralNamesFree> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(
          cert.get(), NID_subject_alt_name, nullptr, nullptr)));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names.get(), i);
    if (n->type == GEN_DNS) {
      info.dns_names.push_back(Utf8(n->d.dNSName));
    } else if (n->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* ip = n->d.iPAddress;
      char buf[INET6_ADDRSTRLEN] = {0};
      int family = ip->length == 4 ? AF_INET : AF_INET6;
      if (inet_ntop(family, ip->data, buf, sizeof(buf))) {
        info.ip_addresses.push_back(buf);
      }
    }
  }
  std::unique_ptr<EXTENDED_KEY_USAGE, EkuFree> eku(
      static_cast<EXTENDED_KEY_USAGE*>(
          X509_get_ext_d2i(cert.get(), NID_ext_key_usage, nullptr, nullptr)));
  for (int i = 0; eku && i < sk_ASN1_OBJECT_num(eku.get()); ++i) {
    int nid = OBJ_obj2nid(sk_ASN1_OBJECT_value(eku.get(), i));
    info.server_auth = info.server_auth || nid == NID_server_auth;
    info.client_auth = info.client_auth || nid == NID_client_auth;
  }
  info.is_ca = X509_check_ca(cert.get()) != 0;
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &tm)) {
    info.not_after_unix = static_cast<int64_t>(timegm(&tm));
  }
  ERR_clear_error();
  return info;
}

StatusOr<CertRole> CertificateRole(const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)
                : nullptr);
  if (!cert) {
    ERR_clear_error();
    return Status::InvalidArgument("peer certificate: not a PEM certificate");
  }
  const X509_NAME* subject = X509_get_subject_name(cert.get());
  const std::string name = CommonName(subject);
  const std::string role = NameEntry(subject, NID_organizationalUnitName);
  if (role.empty()) {
    return Status::FailedPrecondition(
        "the certificate of '" + name +
        "' carries no role (issued before roles were bound to "
        "certificates): issue it again with `fedpeft certs issue --role`");
  }
  StatusOr<CertRole> parsed = ParseCertRole(role);
  if (!parsed.ok()) {
    return Status::FailedPrecondition("the certificate of '" + name +
                                      "' has role '" + role +
                                      "', which fedpeft does not know");
  }
  return parsed;
}

Status VerifyCertificate(const std::string& ca_path,
                         const std::string& cert_path) {
  ASSIGN_OR_RETURN(Cert ca, LoadCert(ca_path));
  ASSIGN_OR_RETURN(Cert cert, LoadCert(cert_path));
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (!store || !ctx || !X509_STORE_add_cert(store.get(), ca.get()) ||
      !X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr)) {
    return Ssl("setting up certificate verification");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Status::FailedPrecondition(
        "certificate '" + cert_path + "' does not verify against CA '" +
        ca_path + "': " + X509_verify_cert_error_string(err));
  }
  return Status::Ok();
}

Status CheckKeyMatchesCertificate(const std::string& cert_path,
                                  const std::string& key_path) {
  ASSIGN_OR_RETURN(Cert cert, LoadCert(cert_path));
  ASSIGN_OR_RETURN(Pkey key, LoadKey(key_path));
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return Status::InvalidArgument("private key '" + key_path +
                                   "' does not belong to certificate '" +
                                   cert_path + "'");
  }
  return Status::Ok();
}

}  // namespace security
}  // namespace fedpeft
