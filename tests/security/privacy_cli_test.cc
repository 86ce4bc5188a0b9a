// End-to-end tests of `fedpeft privacy`: the real binary, its exit codes,
// its machine-readable last line (checked against the library) and its
// usage errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "security/rdp_accountant.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kBinary = FEDPEFT_BINARY;

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string LastLine(const std::string& text) {
  std::string s = text;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  const size_t nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

class PrivacyCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_privacy_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result Run(const std::vector<std::string>& args) {
    std::string cmd = Quote(kBinary) + " privacy";
    for (const auto& a : args) cmd += " " + Quote(a);
    const std::string out_path = (dir_ / "stdout").string();
    const std::string err_path = (dir_ / "stderr").string();
    cmd += " >" + Quote(out_path) + " 2>" + Quote(err_path) + " </dev/null";
    const int status = std::system(cmd.c_str());
    Result r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = Slurp(out_path);
    r.err = Slurp(err_path);
    return r;
  }

  fs::path dir_;
};

TEST_F(PrivacyCliTest, EpsilonMatchesTheLibrary) {
  Result r = Run({"--sampling-rate", "0.01", "--noise-multiplier", "1.1",
                  "--steps", "1000", "--delta", "1e-5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("best order"));
  std::smatch m;
  const std::string last = LastLine(r.out);
  ASSERT_TRUE(std::regex_match(
      last, m, std::regex(R"(epsilon=([0-9.eE+-]+) order=([0-9.eE+-]+))")))
      << last;
  const privacy::PrivacySpent expected =
      privacy::ComputeEpsilon(0.01, 1.1, 1000, 1e-5);
  EXPECT_NEAR(std::stod(m[1]), expected.epsilon, 1e-8 * expected.epsilon);
  EXPECT_DOUBLE_EQ(std::stod(m[2]), expected.order);
}

TEST_F(PrivacyCliTest, TargetEpsilonGivesTheNoiseMultiplier) {
  Result r = Run({"--sampling-rate", "0.04", "--target-epsilon", "8", "--steps",
                  "2250", "--delta", "1e-5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  const std::string last = LastLine(r.out);
  ASSERT_TRUE(std::regex_match(
      last, m,
      std::regex(R"(noise_multiplier=([0-9.eE+-]+) epsilon=([0-9.eE+-]+) )"
                 R"(order=([0-9.eE+-]+))")))
      << last;
  const double z = std::stod(m[1]);
  StatusOr<double> lib = privacy::NoiseMultiplierFor(8.0, 0.04, 2250, 1e-5);
  ASSERT_TRUE(lib.ok()) << lib.status().ToString();
  EXPECT_NEAR(z, *lib, 1e-8 * *lib);
  // The printed multiplier meets the target and the printed epsilon is its.
  const privacy::PrivacySpent at_z =
      privacy::ComputeEpsilon(0.04, z, 2250, 1e-5);
  EXPECT_LE(at_z.epsilon, 8.0);
  EXPECT_NEAR(std::stod(m[2]), at_z.epsilon, 1e-8 * at_z.epsilon);
  EXPECT_DOUBLE_EQ(std::stod(m[3]), at_z.order);
}

TEST_F(PrivacyCliTest, UnreachableTargetFails) {
  Result r = Run({"--sampling-rate", "1", "--target-epsilon", "1e-7", "--steps",
                  "1000", "--delta", "1e-9"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("out of reach"));
}

TEST_F(PrivacyCliTest, BadFlagsAreUsageErrorsNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string flag;
  };
  const std::vector<std::string> ok_rest = {"--steps", "10", "--delta", "1e-5"};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), ok_rest.begin(), ok_rest.end());
    return a;
  };
  const Case cases[] = {
      {with({"--sampling-rate", "0", "--noise-multiplier", "1"}),
       "--sampling-rate"},
      {with({"--sampling-rate", "1.5", "--noise-multiplier", "1"}),
       "--sampling-rate"},
      {with({"--sampling-rate", "0.1", "--noise-multiplier", "-1"}),
       "--noise-multiplier"},
      {with({"--sampling-rate", "0.1", "--target-epsilon", "0"}),
       "--target-epsilon"},
      {{"--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "0",
        "--delta", "1e-5"},
       "--steps"},
      {{"--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "10",
        "--delta", "1"},
       "--delta"},
      {{"--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "many",
        "--delta", "1e-5"},
       "--steps"},
      {{"--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "10"},
       "--delta"},
      // Neither or both modes.
      {with({"--sampling-rate", "0.1"}), "--target-epsilon"},
      {with({"--sampling-rate", "0.1", "--noise-multiplier", "1",
             "--target-epsilon", "2"}),
       "--noise-multiplier"},
  };
  for (const Case& c : cases) {
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    SCOPED_TRACE(joined);
    Result r = Run(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.flag));
  }
  // The got/expected parts of a range error.
  Result r = Run(with({"--sampling-rate", "1.5", "--noise-multiplier", "1"}));
  EXPECT_THAT(r.err, HasSubstr("got 1.5"));
  EXPECT_THAT(r.err, HasSubstr("(0, 1]"));
}

TEST_F(PrivacyCliTest, HelpListsTheOptions) {
  Result r = Run({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--target-epsilon"));
  EXPECT_THAT(r.out, HasSubstr("--sampling-rate"));
}

}  // namespace
}  // namespace fedpeft
