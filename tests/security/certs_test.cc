// The federation's certificate authority (security/certs.h): issued
// certificates verify against their CA and not against another, carry the
// SANs and extended key usage of their role, keys are private; and the
// `fedpeft certs` command's outputs and exit codes.
#include "security/certs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fedpeft {
namespace security {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kBinary = FEDPEFT_BINARY;

class CertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_certs_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) { return (dir_ / name).string(); }

  // Runs `fedpeft <args>`; returns the exit code, stderr into *err.
  int Run(const std::string& args, std::string* err) {
    const std::string err_path = Path("stderr.txt");
    fs::create_directories(dir_);
    int rc = std::system(
        (kBinary + " " + args + " >/dev/null 2>" + err_path).c_str());
    std::ifstream in(err_path);
    std::stringstream ss;
    ss << in.rdbuf();
    *err = ss.str();
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }

  fs::path dir_;
};

IssueOptions Options(const std::string& name, CertRole role) {
  IssueOptions o;
  o.name = name;
  o.role = role;
  return o;
}

TEST_F(CertsTest, IssuedCertificatesVerifyAndCarryTheirRole) {
  const std::string ca = Path("ca");
  ASSERT_TRUE(CreateCa(ca, {}).ok());
  auto ca_info = ReadCertificateInfo(CaCertPath(ca));
  ASSERT_TRUE(ca_info.ok()) << ca_info.status().ToString();
  EXPECT_TRUE(ca_info->is_ca);
  EXPECT_EQ(ca_info->common_name, "fedpeft-ca");

  const std::string out = Path("issued");
  ASSERT_TRUE(
      IssueCertificate(ca, out, Options("worker-7", CertRole::kWorker)).ok());
  ASSERT_TRUE(
      IssueCertificate(ca, out, Options("coordinator", CertRole::kCoordinator))
          .ok());
  IssueOptions edge = Options("edge-0", CertRole::kEdge);
  edge.sans = {"edge0.example.org", "10.1.2.3", "::1"};
  ASSERT_TRUE(IssueCertificate(ca, out, edge).ok());

  for (const char* name : {"worker-7", "coordinator", "edge-0"}) {
    SCOPED_TRACE(name);
    Status v = VerifyCertificate(CaCertPath(ca), CertPath(out, name));
    EXPECT_TRUE(v.ok()) << v.ToString();
    EXPECT_TRUE(
        CheckKeyMatchesCertificate(CertPath(out, name), KeyPath(out, name))
            .ok());
    // Private keys: owner read/write only.
    struct stat st;
    ASSERT_EQ(::stat(KeyPath(out, name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  auto w = ReadCertificateInfo(CertPath(out, "worker-7"));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->common_name, "worker-7");
  EXPECT_EQ(w->issuer_common_name, "fedpeft-ca");
  EXPECT_THAT(w->dns_names, ElementsAre("localhost"));
  EXPECT_THAT(w->ip_addresses, ElementsAre("127.0.0.1"));
  EXPECT_TRUE(w->client_auth);
  EXPECT_FALSE(w->server_auth);
  EXPECT_FALSE(w->is_ca);
  auto c = ReadCertificateInfo(CertPath(out, "coordinator"));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->server_auth);
  EXPECT_FALSE(c->client_auth);
  auto e = ReadCertificateInfo(CertPath(out, "edge-0"));
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->server_auth && e->client_auth);
  // The role is signed into the subject (what a server admits it as).
  EXPECT_EQ(w->role, "worker");
  EXPECT_EQ(c->role, "coordinator");
  EXPECT_EQ(e->role, "edge");
  EXPECT_TRUE(ca_info->role.empty());
  EXPECT_THAT(e->dns_names, ElementsAre("edge0.example.org"));
  EXPECT_THAT(e->ip_addresses, ElementsAre("10.1.2.3", "::1"));
  // About a year from now (the default --days 365).
  EXPECT_GT(e->not_after_unix, std::time(nullptr) + 364 * 86400);
  EXPECT_LT(e->not_after_unix, std::time(nullptr) + 366 * 86400);
}

TEST_F(CertsTest, AnotherCaDoesNotVerifyAndKeysDoNotMix) {
  ASSERT_TRUE(CreateCa(Path("ca1"), {}).ok());
  ASSERT_TRUE(CreateCa(Path("ca2"), {}).ok());
  ASSERT_TRUE(IssueCertificate(Path("ca1"), Path("out"),
                               Options("w", CertRole::kWorker))
                  .ok());
  ASSERT_TRUE(IssueCertificate(Path("ca2"), Path("out2"),
                               Options("w", CertRole::kWorker))
                  .ok());
  Status v =
      VerifyCertificate(CaCertPath(Path("ca2")), CertPath(Path("out"), "w"));
  EXPECT_EQ(v.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(v.message(), HasSubstr("does not verify"));
  Status k = CheckKeyMatchesCertificate(CertPath(Path("out"), "w"),
                                        KeyPath(Path("out2"), "w"));
  EXPECT_THAT(k.message(), HasSubstr("does not belong"));
}

TEST_F(CertsTest, ErrorsNameTheFileOrOption) {
  Status s = IssueCertificate(Path("nope"), Path("out"),
                              Options("w", CertRole::kWorker));
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(CaCertPath(Path("nope"))));
  ASSERT_TRUE(CreateCa(Path("ca"), {}).ok());
  s = CreateCa(Path("ca"), {});  // would orphan every certificate
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("--force"));
  s = IssueCertificate(Path("ca"), Path("out"),
                       Options("../evil", CertRole::kWorker));
  EXPECT_THAT(s.message(), HasSubstr("name: expected"));
  IssueOptions bad_san = Options("w", CertRole::kWorker);
  bad_san.sans = {"a b"};
  s = IssueCertificate(Path("ca"), Path("out"), bad_san);
  EXPECT_THAT(s.message(), HasSubstr("san: expected"));
  EXPECT_THAT(ParseCertRole("king").status().message(),
              HasSubstr("coordinator, edge, worker or operator"));
}

TEST_F(CertsTest, OversizePemIsRefusedUnread) {
  fs::create_directories(dir_);
  const std::string pem = Path("huge.crt");
  { std::ofstream(pem) << "-----BEGIN CERTIFICATE-----\n"; }
  fs::resize_file(pem, kMaxPemFileBytes + 1);  // a hole, no disk
  auto info = ReadCertificateInfo(pem);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(info.status().message(),
              HasSubstr("certificate '" + pem + "': file '" + pem + "' is " +
                        std::to_string(kMaxPemFileBytes + 1) +
                        " bytes, more than the limit of " +
                        std::to_string(kMaxPemFileBytes)));
}

TEST_F(CertsTest, CommandWritesTheFilesAndExitCodesSayWhatWentWrong) {
  std::string err;
  const std::string ca = Path("ca"), out = Path("out");
  ASSERT_EQ(Run("certs init --out " + ca, &err), 0) << err;
  ASSERT_EQ(
      Run("certs issue --role edge --name edge-1 --ca " + ca + " --out " + out +
              " --san 192.168.1.5 --san edge1.lan"
              " --days 30",
          &err),
      0)
      << err;
  EXPECT_TRUE(VerifyCertificate(CaCertPath(ca), CertPath(out, "edge-1")).ok());
  auto info = ReadCertificateInfo(CertPath(out, "edge-1"));
  ASSERT_TRUE(info.ok());
  EXPECT_THAT(info->ip_addresses, ElementsAre("192.168.1.5"));
  EXPECT_THAT(info->dns_names, ElementsAre("edge1.lan"));
  EXPECT_LT(info->not_after_unix, std::time(nullptr) + 31 * 86400);

  // Usage errors: 2, naming the flag.
  EXPECT_EQ(Run("certs", &err), 2);
  EXPECT_EQ(Run("certs issue --role king --name w --ca " + ca + " --out " + out,
                &err),
            2);
  EXPECT_THAT(err, HasSubstr("--role"));
  EXPECT_EQ(Run("certs issue --name w --ca " + ca + " --out " + out, &err), 2);
  EXPECT_THAT(err, HasSubstr("role"));
  EXPECT_EQ(
      Run("certs issue --role worker --name 'a/b' --ca " + ca + " --out " + out,
          &err),
      2);
  EXPECT_THAT(err, HasSubstr("--name"));
  // Failures: 1, naming the file.
  EXPECT_EQ(Run("certs init --out " + ca, &err), 1);
  EXPECT_THAT(err, HasSubstr(CaCertPath(ca)));
  EXPECT_EQ(Run("certs issue --role worker --name w --ca " + Path("none") +
                    " --out " + out,
                &err),
            1);
  EXPECT_THAT(err, HasSubstr(CaCertPath(Path("none"))));
}

}  // namespace
}  // namespace security
}  // namespace fedpeft
