// A federated worker over two processes (worker.distributed), end to end
// with real `fedpeft` processes on 127.0.0.1: only its rank 0 talks to the
// coordinator; its rank 1 trains a share of every batch, is given a server
// it cannot reach and TLS files that do not exist (it must touch neither),
// and exits when rank 0 does. Rank 0 listens on port 0 and writes the port
// it got to worker.distributed.port_file, which the test hands to rank 1.
// Also `fedpeft train` over two processes (a top-level `distributed:`).

#include "peft/peft_io.h"
#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace {

using ::testing::HasSubstr;
using testing_util::FederationTest;
using testing_util::Slurp;

class DistributedWorkerTest : public FederationTest {
 protected:
  // Rank 0 of worker-0 (shard 0 of 2) on the coordinator at `port`.
  pid_t StartRank0(int port) {
    return StartWorker(
        port, 0, 2,
        {"--set", "worker.distributed.world_size=2", "--set",
         "worker.distributed.master_address=127.0.0.1:0", "--set",
         "worker.distributed.port_file=" + Path("rank0.port"), "--set",
         "worker.distributed.timeout_s=60"});
  }
  // Rank 1 of worker-0: the same data, a server address nothing listens on
  // and TLS files that do not exist.
  pid_t StartRank1(int rank0_port) {
    return Spawn(
        Command({"worker", "--config", worker_config_},
                {"worker.id=worker-0", "data.shard=0/2", "data.max_records=600",
                 "data.max_seq_len=64", "server.address=127.0.0.1:1",
                 "tls.insecure=false", "tls.enabled=true",
                 "tls.ca=/nonexistent/ca.crt", "tls.cert=/nonexistent/w.crt",
                 "tls.key=/nonexistent/w.key",
                 "worker.distributed.world_size=2", "worker.distributed.rank=1",
                 "worker.distributed.master_address=127.0.0.1:" +
                     std::to_string(rank0_port),
                 "worker.distributed.timeout_s=60"}),
        Path("worker-0-rank1.log"));
  }
};

TEST_F(DistributedWorkerTest, TwoProcessWorkerTakesPartInAFederation) {
  pid_t coord = Spawn(CoordinatorArgs(0, 2, 2), Path("coordinator.log"));
  int port = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(port, 0) << Logs();
  pid_t rank0 = StartRank0(port);
  int rank0_port = WaitForPort(rank0, Path("rank0.port"));
  ASSERT_GT(rank0_port, 0) << Logs();
  pid_t rank1 = StartRank1(rank0_port);
  pid_t other = StartWorker(port, 1, 2);
  ASSERT_EQ(Wait(coord, std::chrono::seconds(300)), 0) << Logs();
  EXPECT_EQ(Wait(rank0, std::chrono::seconds(30)), 0) << Logs();
  EXPECT_EQ(Wait(rank1, std::chrono::seconds(30)), 0) << Logs();
  EXPECT_EQ(Wait(other, std::chrono::seconds(30)), 0) << Logs();

  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 2u) << Logs();
  for (const auto& row : rows) {
    EXPECT_EQ(row["answered"], 2) << row.dump();
    EXPECT_EQ(row["rejected"], 0) << row.dump();
  }
  const std::string log0 = Slurp(Path("worker-0.log"));
  const std::string log1 = Slurp(Path("worker-0-rank1.log"));
  EXPECT_THAT(log0, HasSubstr("2 processes (worker.distributed)"));
  EXPECT_THAT(log0, HasSubstr("'worker-0' round 2: rank 8, 4 steps"));
  // Rank 1 trained both rounds on its share and never dialed anything.
  EXPECT_THAT(log1, HasSubstr("'worker-0' rank 1 round 1: 4 steps"));
  EXPECT_THAT(log1, HasSubstr("'worker-0' rank 1 round 2: 4 steps"));
  EXPECT_THAT(log1, HasSubstr("rank 0 stopped"));
  EXPECT_THAT(log1, ::testing::Not(HasSubstr("127.0.0.1:1")));
  // The coordinator saw one worker-0.
  const std::string coord_log = Slurp(Path("coordinator.log"));
  EXPECT_THAT(coord_log, HasSubstr("round 2/2 done: selected 2 answered 2"));
}

// Rank 0 killed while rank 1 waits for a round: rank 1 notices at once (the
// store's connection closes) and exits with an error saying so.
TEST_F(DistributedWorkerTest, FollowerFailsWhenRankZeroDies) {
  // No coordinator: rank 0 keeps retrying its registration meanwhile.
  pid_t rank0 = StartRank0(1);
  int rank0_port = WaitForPort(rank0, Path("rank0.port"));
  ASSERT_GT(rank0_port, 0) << Logs();
  pid_t rank1 = StartRank1(rank0_port);
  ASSERT_TRUE(WaitFor(
      [&] {
        return Slurp(Path("worker-0-rank1.log"))
                       .find("rounds come from rank 0") != std::string::npos ||
               Exited(rank1);
      },
      std::chrono::seconds(120)))
      << Logs();
  kill(rank0, SIGKILL);
  EXPECT_EQ(Wait(rank0, std::chrono::seconds(10)), 128 + SIGKILL);
  // timeout_s is 60: well within it.
  EXPECT_EQ(Wait(rank1, std::chrono::seconds(50)), 1) << Logs();
  EXPECT_THAT(Slurp(Path("worker-0-rank1.log")),
              HasSubstr("worker.distributed rank 1 of 2: waiting for rank 0's "
                        "next command failed"));
}

// `fedpeft train` on two processes writes the adapter one process writes.
TEST_F(DistributedWorkerTest, TrainOnTwoProcessesMatchesOneProcess) {
  auto train = [&](const std::string& out, std::vector<std::string> sets) {
    for (const char* kv :
         {"train.max_steps=6", "train.batch_size=5", "data.max_records=200",
          "sample.max_tokens=0", "model.threads=1"}) {
      sets.push_back(kv);
    }
    return Command(
        {"train", "--config", "configs/local_train.yaml", "--out", Path(out)},
        sets);
  };
  pid_t one = Spawn(train("one", {}), Path("one.log"));
  pid_t rank0 =
      Spawn(train("two", {"distributed.world_size=2",
                          "distributed.master_address=127.0.0.1:0",
                          "distributed.port_file=" + Path("train.port")}),
            Path("train-rank0.log"));
  int rank0_port = WaitForPort(rank0, Path("train.port"));
  ASSERT_GT(rank0_port, 0) << Logs();
  pid_t rank1 =
      Spawn(train("unused", {"distributed.world_size=2", "distributed.rank=1",
                             "distributed.master_address=127.0.0.1:" +
                                 std::to_string(rank0_port)}),
            Path("train-rank1.log"));
  for (pid_t p : {one, rank0, rank1}) {
    ASSERT_EQ(Wait(p, std::chrono::seconds(180)), 0) << Logs();
  }
  EXPECT_FALSE(std::filesystem::exists(Path("unused")));  // rank 0 writes
  auto a = peft::LoadAdapter(Path("one"));
  auto b = peft::LoadAdapter(Path("two"));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_EQ(a->tensors.size(), b->tensors.size());
  for (const auto& [key, t] : a->tensors) {
    EXPECT_TRUE(torch::allclose(t, b->tensors.at(key), 1e-4, 1e-6)) << key;
  }
}

}  // namespace
}  // namespace fedpeft
