// Virtual users end to end (worker/executor.h): `fedpeft executor`
// processes hosting many users each, over real sockets, with the real model
// and data. A population behind two edges with 4-bit uploads through
// `simulate`, and two executors on one coordinator, one of them killed in
// the middle of a round.
#include <regex>

#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace testing_util {
namespace {

using ::testing::HasSubstr;

// The bytes each user uploaded, from an executor's closing line ("N users
// trained, ... up B B"); -1 when the line is missing.
double UploadBytesPerUser(const std::string& log) {
  std::smatch m;
  if (!std::regex_search(
          log, m,
          std::regex(R"((\d+) users trained, (\d+) rejected.*up (\d+) B)"))) {
    return -1;
  }
  const double users = std::stod(m[1]) + std::stod(m[2]);
  return users > 0 ? std::stod(m[3]) / users : -1;
}

TEST_F(FederationTest, VirtualUsersBehindTwoEdgesWithFourBitUploads) {
  const std::string out = Path("population");
  const std::string log = Path("simulate.txt");
  pid_t sim = Spawn(
      Command({"simulate", "--config", "configs/population/simulate.yaml",
               "--out", out},
              {"simulation.users=64", "simulation.executors=2",
               "simulation.executor_threads=1", "topology.edges=2",
               "coordinator.federation.rounds=2",
               // Poisson at 0.6, by the edges: about 19 users an edge.
               "coordinator.federation.fraction=0.6",
               "coordinator.federation.round_deadline_s=200",
               "coordinator.train.local_steps=1",
               "coordinator.eval.data.max_records=300",
               "coordinator.eval.data.max_seq_len=64",
               "worker.data.max_records=700", "worker.data.max_seq_len=64"}),
      log);
  ASSERT_EQ(Wait(sim, std::chrono::seconds(400)), 0)
      << Slurp(log) << Slurp(out + "/logs/coordinator.log")
      << Slurp(out + "/logs/edge-0.log") << Slurp(out + "/logs/executor-0.log");
  const std::string text = Slurp(log);
  EXPECT_THAT(text, HasSubstr("starting 2 executors hosting 64 users"));
  EXPECT_THAT(text, HasSubstr("users sampled at the edges (poisson, fraction "
                              "0.6); the cloud takes every edge"));
  EXPECT_THAT(text, HasSubstr("2 rounds aggregated"));
  EXPECT_THAT(text, HasSubstr("with 64 users (virtual)"));
  // Executor i talks to edge i mod 2, which waited for its 32 users.
  for (int e = 0; e < 2; ++e) {
    const std::string edge =
        Slurp(out + "/logs/edge-" + std::to_string(e) + ".log");
    EXPECT_THAT(edge, HasSubstr("executor 'executor-" + std::to_string(e) +
                                "' registered hosting 32 users"))
        << edge;
    // Users are participants of their own at the edge.
    EXPECT_THAT(edge, HasSubstr("executor-" + std::to_string(e) + "/u"));
    const std::string executor =
        Slurp(out + "/logs/executor-" + std::to_string(e) + ".log");
    // A rank-4 adapter of stories260K is ~95 KB a user in F32; 4-bit
    // blocks (with their scales and the header) are under a fifth of it.
    const double per_user = UploadBytesPerUser(executor);
    EXPECT_GT(per_user, 0) << executor;
    EXPECT_LT(per_user, 20000) << executor;
  }
  // Every round merged; population is the users alive behind both edges.
  std::ifstream metrics(out + "/metrics.jsonl");
  std::string line;
  int rounds = 0;
  while (std::getline(metrics, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_TRUE(j["aggregated"].get<bool>()) << line;
    EXPECT_EQ(j["population"].get<int>(), 64) << line;
    EXPECT_EQ(j["edges_answered"].get<int>(), 2) << line;
    ++rounds;
  }
  EXPECT_EQ(rounds, 2);
  EXPECT_TRUE(fs::exists(out + "/adapter/adapter_model.safetensors"));
}

TEST_F(FederationTest, AKilledExecutorLosesOnlyItsUsersOfTheRound) {
  pid_t coord = Spawn(
      CoordinatorArgs(
          0, 4, 80,
          Command({}, {"federation.sampling=poisson", "federation.fraction=0.5",
                       "federation.quorum=0.2",
                       "federation.on_quorum_miss=skip", "train.local_steps=1",
                       "peft.lora.r=4", "logging.level=debug"})),
      Path("coordinator.log"));
  const int port = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(port, 0) << Slurp(Path("coordinator.log"));
  std::vector<pid_t> executors;
  for (int e = 0; e < 2; ++e) {
    executors.push_back(Spawn(
        Command({"executor", "--config", worker_config_},
                {"worker.id=executor-" + std::to_string(e), "executor.users=40",
                 "executor.first_user=" + std::to_string(40 * e),
                 "executor.population=80", "executor.threads=1",
                 "data.partition=iid", "data.max_records=600",
                 "data.max_seq_len=64",
                 "server.address=127.0.0.1:" + std::to_string(port),
                 "server.task_wait_ms=1000", "server.backoff_max_ms=1000"}),
        Path("executor-" + std::to_string(e) + ".log")));
  }
  // Killed once round 2 handed it its users' tasks.
  ASSERT_TRUE(WaitFor(
      [&] {
        return Slurp(Path("executor-1.log")).find("' round 2: ") !=
               std::string::npos;
      },
      std::chrono::seconds(300)))
      << Slurp(Path("coordinator.log"));
  kill(executors[1], SIGKILL);
  ASSERT_EQ(Wait(coord, std::chrono::seconds(300)), 0)
      << Slurp(Path("coordinator.log"));
  EXPECT_EQ(Wait(executors[0], std::chrono::seconds(30)), 0);
  const std::vector<nlohmann::json> rows = Metrics();
  ASSERT_EQ(rows.size(), 4u) << Slurp(Path("coordinator.log"));
  for (const auto& j : rows) EXPECT_TRUE(j["aggregated"].get<bool>()) << j;
  EXPECT_EQ(rows[0]["population"].get<int>(), 80);
  // Up to 32 uploads a round line lists them; more, it summarizes them.
  for (const auto& j : rows) {
    const int answered = j["answered"].get<int>();
    if (answered > 32) {
      EXPECT_FALSE(j.contains("bytes_up_workers")) << j;
      EXPECT_EQ(j["bytes_up_workers_summary"]["count"].get<int>(), answered);
      EXPECT_EQ(j["bytes_up_workers_summary"]["total"].get<uint64_t>(),
                j["bytes_up"].get<uint64_t>());
    } else {
      EXPECT_EQ(j["bytes_up_workers"].size(), static_cast<size_t>(answered));
    }
  }
  // Round 2 went on without the killed executor's users once they were no
  // longer alive, and merged the others'; later rounds select among the
  // 40 users left.
  EXPECT_GT(rows[1]["dropped"].get<int>(), 0) << rows[1];
  EXPECT_GT(rows[1]["answered"].get<int>(), 0) << rows[1];
  EXPECT_EQ(rows[3]["population"].get<int>(), 40) << rows[3];
  EXPECT_EQ(rows[3]["dropped"].get<int>(), 0) << rows[3];
  const std::string coordinator = Slurp(Path("coordinator.log"));
  EXPECT_THAT(coordinator, HasSubstr("no answer from 'executor-1/u"));
  EXPECT_THAT(coordinator,
              HasSubstr("executor 'executor-0' registered hosting 40 users"));
}

// Instruction records whose prompt fills max_seq_len make no training
// example; a user holding only such records could never answer, and every
// round that selected it would wait for its deadline. They go to nobody.
TEST_F(FederationTest, VirtualUsersGetOnlyRecordsThatTrain) {
  const std::string out = Path("qa");
  const std::string log = Path("simulate.txt");
  // 400 question/answer records; every third question is far longer than
  // max_seq_len 64.
  const std::string data = Path("qa.jsonl");
  {
    std::ofstream f(data);
    for (int i = 0; i < 400; ++i) {
      std::string question = "How many apples are " + std::to_string(i) +
                             " apples and " + std::to_string(i + 1) + "?";
      if (i % 3 == 0) {
        for (int k = 0; k < 30; ++k) question += " Think about it carefully.";
      }
      f << nlohmann::json{{"question", question},
                          {"answer", std::to_string(2 * i + 1) + " apples."}}
               .dump()
        << "\n";
    }
  }
  pid_t sim = Spawn(
      Command({"simulate", "--config", "configs/population/simulate.yaml",
               "--out", out},
              {"simulation.users=300", "simulation.executor_threads=1",
               "simulation.timeout_s=300", "worker.data.path=" + data,
               "worker.data.packing=truncate", "worker.data.max_seq_len=64",
               "coordinator.eval.data.path=", "coordinator.federation.rounds=1",
               "coordinator.federation.fraction=0.2",
               "coordinator.federation.round_deadline_s=200",
               "coordinator.train.local_steps=1"}),
      log);
  ASSERT_EQ(Wait(sim, std::chrono::seconds(300)), 0)
      << Slurp(log) << Slurp(out + "/logs/executor-0.log");
  const std::string executor = Slurp(out + "/logs/executor-0.log");
  EXPECT_THAT(executor, HasSubstr("make no example within max_seq_len 64"));
  EXPECT_THAT(executor, ::testing::Not(HasSubstr("has no training example")));
  std::ifstream metrics(out + "/metrics.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(metrics, line));
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_GT(j["selected"].get<int>(), 0);
  EXPECT_EQ(j["answered"], j["selected"]) << line;
  // Every user answered, so the round did not wait for its deadline.
  EXPECT_LT(j["seconds"].get<double>(), 150) << line;
}

}  // namespace
}  // namespace testing_util
}  // namespace fedpeft
