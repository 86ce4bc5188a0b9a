// The round log on its own: one JSON line per Write() in the metrics file,
// carrying the values it was given (NaN as null), appended across opens;
// and the byte sizes of the readable line; after a crash, a torn line cut
// and a checkpointed line written again.
#include "coordinator/round_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fedpeft {
namespace coordinator {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class RoundLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_round_log_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Every line of `path`, parsed.
  static std::vector<nlohmann::json> Lines(const fs::path& path) {
    std::vector<nlohmann::json> out;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  fs::path dir_;
};

RoundMetrics SomeRound(int64_t round) {
  RoundMetrics m;
  m.round = round;
  m.attempt = 1;
  m.selected = 4;
  m.answered = 3;
  m.dropped = 1;
  m.rejected = 1;
  m.train_loss = 2.25;
  m.eval_loss = std::nan("");  // no eval reported
  m.server_eval_loss = 1.75;
  m.bytes_up = 4096;
  m.bytes_down = 8192;
  m.seconds = 1.5;
  m.aggregated = true;
  m.rank_min = 2;
  m.rank_max = 8;
  m.rank_mean = 4.5;
  m.epsilon = 0.75;
  m.delta = 1e-5;
  m.clip_norm = 0.1;
  m.noise_multiplier = 1.25;
  m.sampling_rate = 0.5;
  m.secagg_workers = 3;
  m.worker_bytes_up = {{"a", 1000}, {"b", 3096}};
  return m;
}

TEST_F(RoundLogTest, WritesOneJsonLinePerRoundWithTheGivenValues) {
  RoundLogOptions options;
  options.strategy = "fedavgm";
  options.metrics_file = (dir_ / "nested" / "metrics.jsonl").string();
  auto log = RoundLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status().ToString();  // creates nested/
  (*log)->Write(SomeRound(1), 4096, 8192);
  RoundMetrics second = SomeRound(2);
  second.aggregated = false;
  second.epsilon = std::nan("");
  (*log)->Write(second, 5000, 9000);

  const std::vector<nlohmann::json> lines = Lines(options.metrics_file);
  ASSERT_EQ(lines.size(), 2u);
  const nlohmann::json& j = lines[0];
  EXPECT_EQ(j.at("round"), 1);
  EXPECT_EQ(j.at("attempt"), 1);
  EXPECT_EQ(j.at("aggregated"), true);
  EXPECT_EQ(j.at("selected"), 4);
  EXPECT_EQ(j.at("answered"), 3);
  EXPECT_EQ(j.at("dropped"), 1);
  EXPECT_EQ(j.at("rejected"), 1);
  EXPECT_DOUBLE_EQ(j.at("train_loss").get<double>(), 2.25);
  EXPECT_TRUE(j.at("eval_loss").is_null());
  EXPECT_DOUBLE_EQ(j.at("server_eval_loss").get<double>(), 1.75);
  EXPECT_EQ(j.at("bytes_up"), 4096);
  EXPECT_EQ(j.at("bytes_down"), 8192);
  EXPECT_EQ(j.at("rank_min"), 2);
  EXPECT_EQ(j.at("rank_max"), 8);
  EXPECT_DOUBLE_EQ(j.at("rank_mean").get<double>(), 4.5);
  EXPECT_DOUBLE_EQ(j.at("epsilon").get<double>(), 0.75);
  EXPECT_DOUBLE_EQ(j.at("delta").get<double>(), 1e-5);
  EXPECT_DOUBLE_EQ(j.at("clip_norm").get<double>(), 0.1);
  EXPECT_DOUBLE_EQ(j.at("noise_multiplier").get<double>(), 1.25);
  EXPECT_TRUE(j.at("unclipped_fraction").is_null());
  EXPECT_DOUBLE_EQ(j.at("sampling_rate").get<double>(), 0.5);
  EXPECT_EQ(j.at("secagg_workers"), 3);
  EXPECT_EQ(j.at("bytes_up_workers"),
            nlohmann::json({{"a", 1000}, {"b", 3096}}));
  EXPECT_EQ(j.at("bytes_up_total"), 4096);
  EXPECT_EQ(j.at("bytes_down_total"), 8192);
  EXPECT_EQ(j.at("strategy"), "fedavgm");
  EXPECT_GT(j.at("unix_ms").get<uint64_t>(), 0u);

  EXPECT_EQ(lines[1].at("round"), 2);
  EXPECT_EQ(lines[1].at("aggregated"), false);
  EXPECT_TRUE(lines[1].at("epsilon").is_null());
  EXPECT_EQ(lines[1].at("bytes_up_total"), 5000);
  EXPECT_EQ(lines[1].at("bytes_down_total"), 9000);
}

TEST_F(RoundLogTest, AppendsToTheFileOfAnEarlierRun) {
  // A resumed coordinator keeps the metrics of the rounds before it.
  RoundLogOptions options;
  options.metrics_file = (dir_ / "metrics.jsonl").string();
  for (int64_t round : {1, 2}) {
    auto log = RoundLog::Open(options);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    (*log)->Write(SomeRound(round), 0, 0);
  }
  const std::vector<nlohmann::json> lines = Lines(options.metrics_file);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].at("round"), 1);
  EXPECT_EQ(lines[1].at("round"), 2);
}

TEST_F(RoundLogTest, OpenCutsATornLastLine) {
  // A process killed mid-write left half a line; the next one must not be
  // glued to it.
  RoundLogOptions options;
  options.metrics_file = (dir_ / "metrics.jsonl").string();
  {
    auto log = RoundLog::Open(options);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    (*log)->Write(SomeRound(1), 0, 0);
  }
  std::ofstream(options.metrics_file, std::ios::app) << R"({"round":2,"at)";
  auto log = RoundLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  (*log)->Write(SomeRound(2), 0, 0);
  const std::vector<nlohmann::json> lines = Lines(options.metrics_file);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].at("round"), 1);
  EXPECT_EQ(lines[1].at("round"), 2);
}

TEST_F(RoundLogTest, RestoreAppendsACheckpointedLineOnlyIfMissing) {
  RoundLogOptions options;
  options.metrics_file = (dir_ / "metrics.jsonl").string();
  auto log = RoundLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  const std::string line1 = (*log)->MetricsLine(SomeRound(1), 10, 20);
  auto restored = (*log)->Restore(line1);  // lost: the file is empty
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_TRUE(*restored);
  restored = (*log)->Restore(line1);  // now there
  ASSERT_TRUE(restored.ok());
  EXPECT_FALSE(*restored);
  RoundMetrics skipped = SomeRound(2);  // a skipped attempt after it
  skipped.aggregated = false;
  (*log)->Write(skipped, 10, 20);
  restored = (*log)->Restore(line1);
  ASSERT_TRUE(restored.ok());
  EXPECT_FALSE(*restored);
  EXPECT_FALSE(*(*log)->Restore(""));  // a checkpoint without a line
  const std::vector<nlohmann::json> lines = Lines(options.metrics_file);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], nlohmann::json::parse(line1));
  EXPECT_EQ(lines[0].at("bytes_up_total"), 10);
  EXPECT_EQ(lines[1].at("aggregated"), false);
}

TEST_F(RoundLogTest, NoMetricsFileWritesNothing) {
  auto log = RoundLog::Open(RoundLogOptions{});
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  (*log)->Write(SomeRound(1), 1, 2);  // the log line only
  EXPECT_FALSE(fs::exists(dir_));
}

TEST_F(RoundLogTest, AMetricsFileThatCannotBeCreatedIsAnError) {
  fs::create_directories(dir_);
  std::ofstream(dir_ / "file") << "not a folder";
  RoundLogOptions options;
  options.metrics_file = (dir_ / "file" / "metrics.jsonl").string();
  auto log = RoundLog::Open(options);
  ASSERT_FALSE(log.ok());
  EXPECT_THAT(log.status().ToString(), HasSubstr("logging.metrics_file"));
}

TEST(FormatBytesTest, PicksTheUnitAndPrecision) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(12 * 1024 + 512), "12.5 KiB");
  EXPECT_EQ(FormatBytes(3 * 1048576 + 209715), "3.20 MiB");
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
