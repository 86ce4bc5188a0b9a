#include "common/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace fedpeft {
namespace {

using ::testing::HasSubstr;

struct Inner {
  int r = 8;
  double alpha = 16.0;
  std::vector<std::string> targets{"q_proj"};
  void Read(ConfigReader& in) {
    in.Get("r", &r);
    in.Get("alpha", &alpha);
    in.Get("targets", &targets);
    in.Check(r >= 1, "r", "must be >= 1, got " + ToConfigString(r));
  }
};

struct Outer {
  std::string name = "default";
  bool flag = false;
  Inner inner;
  void Read(ConfigReader& in) {
    in.Get("name", &name);
    in.Get("flag", &flag);
    ConfigReader sub = in.Section("inner");
    inner.Read(sub);
  }
};

Status Bind(const std::string& yaml, const std::vector<std::string>& sets,
            Outer* out) {
  YAML::Node root = YAML::Load(yaml);
  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  for (const auto& s : sets) RETURN_IF_ERROR(ApplyOverride(root, s));
  ConfigReader in(root, "test.yaml");
  out->Read(in);
  return in.Finish();
}

TEST(ConfigTest, DefaultsApplyWhenKeysAbsent) {
  Outer o;
  ASSERT_TRUE(Bind("{}", {}, &o).ok());
  EXPECT_EQ(o.name, "default");
  EXPECT_EQ(o.inner.r, 8);
}

TEST(ConfigTest, ReadsNestedValues) {
  Outer o;
  Status s = Bind(
      "name: x\nflag: true\ninner: {r: 4, alpha: 2.5, targets: "
      "[a, b]}\n",
      {}, &o);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(o.name, "x");
  EXPECT_TRUE(o.flag);
  EXPECT_EQ(o.inner.r, 4);
  EXPECT_DOUBLE_EQ(o.inner.alpha, 2.5);
  EXPECT_EQ(o.inner.targets, (std::vector<std::string>{"a", "b"}));
}

TEST(ConfigTest, OverridesWinOverFile) {
  Outer o;
  Status s = Bind("inner: {r: 4}\n",
                  {"inner.r=16", "name=over", "inner.targets=[x, y, z]"}, &o);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(o.inner.r, 16);
  EXPECT_EQ(o.name, "over");
  EXPECT_EQ(o.inner.targets.size(), 3u);
}

TEST(ConfigTest, OverrideCreatesMissingSections) {
  Outer o;
  ASSERT_TRUE(Bind("{}", {"inner.alpha=3"}, &o).ok());
  EXPECT_DOUBLE_EQ(o.inner.alpha, 3.0);
}

TEST(ConfigTest, UnknownKeyIsNamedWithItsPath) {
  Outer o;
  Status s = Bind("inner: {rnak: 4}\n", {}, &o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("unknown key 'inner.rnak'"));
  EXPECT_THAT(s.message(), HasSubstr("test.yaml"));
}

TEST(ConfigTest, WrongTypeNamesKeyAndValue) {
  Outer o;
  Status s = Bind("inner: {r: fast}\n", {}, &o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(),
              HasSubstr("inner.r: expected an integer, got 'fast'"));
}

TEST(ConfigTest, RangeErrorAndAllErrorsGathered) {
  Outer o;
  Status s = Bind("flag: maybe\ninner: {r: 0}\nbogus: 1\n", {}, &o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("flag: expected a boolean, got 'maybe'"));
  EXPECT_THAT(s.message(), HasSubstr("inner.r: must be >= 1, got 0"));
  EXPECT_THAT(s.message(), HasSubstr("unknown key 'bogus'"));
}

TEST(ConfigTest, SectionThatIsNotAMapIsAnError) {
  Outer o;
  Status s = Bind("inner: 3\n", {}, &o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("inner: expected a section"));
}

TEST(ConfigTest, ComplexKeyIsAnErrorNotAnException) {
  Outer o;
  Status s = Bind("? [a, b]\n: 1\ninner:\n  ? {c: 1}\n  : 2\n", {}, &o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(),
              HasSubstr("key a list under 'the top level' (expected a plain "
                        "name)"));
  EXPECT_THAT(s.message(), HasSubstr("key a mapping under 'inner'"));
}

TEST(ConfigTest, BadOverrideSyntax) {
  YAML::Node root(YAML::NodeType::Map);
  EXPECT_THAT(ApplyOverride(root, "noequals").message(),
              HasSubstr("expected dotted.key=value"));
  EXPECT_THAT(ApplyOverride(root, "a..b=1").message(),
              HasSubstr("empty component"));
}

TEST(ConfigTest, LoadConfigFileReportsParseErrorLine) {
  char path[] = "/tmp/fedpeft_cfg_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string text = "a: 1\nb: [unclosed\n";
  ASSERT_EQ(write(fd, text.data(), text.size()),
            static_cast<ssize_t>(text.size()));
  close(fd);
  auto root = LoadConfigFile(path, {});
  ASSERT_FALSE(root.ok());
  EXPECT_THAT(root.status().message(), HasSubstr(path));
  EXPECT_THAT(root.status().message(), HasSubstr("line"));
  unlink(path);
}

TEST(ConfigTest, LoadConfigTextParsesAppliesOverridesAndNamesSource) {
  auto root =
      LoadConfigText("name: a\ninner: {r: 2}\n", "mem.yaml", {"inner.r=3"});
  ASSERT_TRUE(root.ok()) << root.status().ToString();
  EXPECT_EQ((*root)["inner"]["r"].as<int>(), 3);
  EXPECT_TRUE(LoadConfigText("", "mem.yaml", {}).value().IsMap());

  auto bad = LoadConfigText("a: [unclosed\n", "mem.yaml", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("config 'mem.yaml' line"));
  auto list = LoadConfigText("- 1\n", "mem.yaml", {});
  ASSERT_FALSE(list.ok());
  EXPECT_THAT(list.status().message(), HasSubstr("mapping of keys"));
}

TEST(ConfigTest, LoadConfigFileMissing) {
  auto root = LoadConfigFile("/nonexistent/x.yaml", {});
  ASSERT_FALSE(root.ok());
  EXPECT_EQ(root.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(root.status().message(), HasSubstr("/nonexistent/x.yaml"));
}

TEST(ConfigTest, LoadConfigFileRefusesOversizeFileUnread) {
  namespace fs = std::filesystem;
  const std::string path =
      (fs::temp_directory_path() /
       ("fedpeft_cfg_big_" + std::to_string(::getpid()) + ".yaml"))
          .string();
  { std::ofstream(path) << "a: 1\n"; }
  fs::resize_file(path, kMaxConfigFileBytes + 1);  // a hole, no disk
  auto root = LoadConfigFile(path, {});
  fs::remove(path);
  ASSERT_FALSE(root.ok());
  EXPECT_EQ(root.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(root.status().message(), HasSubstr(path));
  EXPECT_THAT(root.status().message(),
              HasSubstr(std::to_string(kMaxConfigFileBytes + 1) +
                        " bytes, more than the limit of " +
                        std::to_string(kMaxConfigFileBytes)));
}

}  // namespace
}  // namespace fedpeft
