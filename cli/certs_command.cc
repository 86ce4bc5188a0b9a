// fedpeft certs: a certificate authority for a federation's mutual TLS
// (security/certs.h does the work).
//
//   fedpeft certs init  --out DIR [--name CA_NAME] [--days N] [--force]
//   fedpeft certs issue --role coordinator|edge|worker|operator --name NAME
//                       --ca DIR --out DIR [--san HOST_OR_IP ...] [--days N]
//                       [--force]
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "security/certs.h"

namespace fedpeft {
namespace cli {
namespace {

namespace po = boost::program_options;

constexpr const char* kCertsUsage =
    "usage: fedpeft certs init  --out DIR [--name CA_NAME] [--days N] "
    "[--force]\n"
    "       fedpeft certs issue --role coordinator|edge|worker|operator\n"
    "                           --name NAME --ca CA_DIR --out DIR\n"
    "                           [--san DNS_OR_IP ...]\n"
    "                           [--days N] [--force]\n"
    "\n"
    "init   creates a CA: DIR/ca.crt and DIR/ca.key (EC P-256, key 0600)\n"
    "issue  a key and certificate signed by the CA in CA_DIR:\n"
    "       DIR/NAME.crt, DIR/NAME.key; CN = NAME (the participant id),\n"
    "       SANs = --san (default localhost, 127.0.0.1); EKU by role:\n"
    "       coordinator serverAuth, worker and operator clientAuth, edge\n"
    "       both. The role is signed into the subject (OU): a server admits\n"
    "       a participant only in that role, and `status` only from an\n"
    "       operator (which cannot register)\n";

int Usage(const std::string& message) {
  std::cerr << "fedpeft certs: " << message << "\n" << kCertsUsage;
  return kExitUsage;
}

int RunInit(const Args& args) {
  const std::string cmd = "certs init";
  std::string out;
  security::CaOptions options;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "out", po::value(&out)->required(),
      "CA directory to create (ca.crt, ca.key)")(
      "name", po::value(&options.name)->default_value(options.name),
      "the CA's common name")(
      "days", po::value(&options.days)->default_value(options.days),
      "validity in days")("force", po::bool_switch(&options.overwrite),
                          "replace an existing CA (invalidates every "
                          "certificate it issued)");
  po::variables_map vm;
  int code = 0;
  if (!ParseArgs(cmd, "--out DIR [--name CA_NAME] [--days N] [--force]", desc,
                 args, &vm, &code)) {
    return code;
  }
  if (options.days < 1) {
    return Usage("--days: must be >= 1, got " + std::to_string(options.days));
  }
  Status s = security::CreateCa(out, options);
  if (s.code() == StatusCode::kInvalidArgument)
    return Usage("--name: " + s.message());
  if (!s.ok()) return Fail(cmd, s);
  std::printf("CA '%s' created: %s (private key %s, keep it secret)\n",
              options.name.c_str(), security::CaCertPath(out).c_str(),
              security::CaKeyPath(out).c_str());
  return kExitOk;
}

int RunIssue(const Args& args) {
  const std::string cmd = "certs issue";
  std::string role, ca_dir, out;
  security::IssueOptions options;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "role", po::value(&role)->required(),
      "coordinator (serverAuth) | worker (clientAuth) | edge (both) | "
      "operator (clientAuth; `status` only, cannot register)")(
      "name", po::value(&options.name)->required(),
      "common name = the participant id (worker.id / edge.id)")(
      "ca", po::value(&ca_dir)->required(), "CA directory (from certs init)")(
      "out", po::value(&out)->required(),
      "directory for NAME.crt and NAME.key")(
      "san", po::value(&options.sans)->composing(),
      "a DNS name or IP address the process is reached at (repeatable; "
      "default localhost and 127.0.0.1)")(
      "days", po::value(&options.days)->default_value(options.days),
      "validity in days")("force", po::bool_switch(&options.overwrite),
                          "replace an existing NAME.crt/NAME.key");
  po::variables_map vm;
  int code = 0;
  if (!ParseArgs(cmd,
                 "--role ROLE --name NAME --ca DIR --out DIR [--san S ...] "
                 "[--days N] [--force]",
                 desc, args, &vm, &code)) {
    return code;
  }
  StatusOr<security::CertRole> parsed = security::ParseCertRole(role);
  if (!parsed.ok()) return Usage("--" + parsed.status().message());
  options.role = *parsed;
  if (options.days < 1) {
    return Usage("--days: must be >= 1, got " + std::to_string(options.days));
  }
  Status s = security::IssueCertificate(ca_dir, out, options);
  if (s.code() == StatusCode::kInvalidArgument &&
      (s.message().rfind("name:", 0) == 0 ||
       s.message().rfind("san:", 0) == 0)) {
    return Usage("--" + s.message());
  }
  if (!s.ok()) return Fail(cmd, s);
  std::printf("%s certificate for '%s': %s (private key %s)\n",
              security::CertRoleName(options.role), options.name.c_str(),
              security::CertPath(out, options.name).c_str(),
              security::KeyPath(out, options.name).c_str());
  return kExitOk;
}

}  // namespace

int RunCerts(const Args& args) {
  if (args.empty()) return Usage("expected a subcommand: init or issue");
  const std::string& sub = args[0];
  if (sub == "--help" || sub == "-h" || sub == "help") {
    std::fputs(kCertsUsage, stdout);
    return kExitOk;
  }
  Args rest(args.begin() + 1, args.end());
  if (sub == "init") return RunInit(rest);
  if (sub == "issue") return RunIssue(rest);
  return Usage("unknown subcommand '" + sub + "' (expected init or issue)");
}

}  // namespace cli
}  // namespace fedpeft
