// End-to-end federations with the hierarchy and privacy: two edges of three
// workers (κ = 2, an edge killed and restarted), user-level DP with 4-bit
// uploads, and distributed DP noise at the edges after secure aggregation;
// real `fedpeft` processes over real sockets on 127.0.0.1 (see
// federation_fixture.h).

#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_util::FederationTest;
using testing_util::kBinary;
using testing_util::Slurp;

// ---- hierarchy ----------------------------------------------------------

class HierarchyTest : public FederationTest {
 protected:
  // `port` 0: a free port, written to coordinator.port (WaitForPort).
  std::vector<std::string> CloudArgs(int port, int rounds, int edge_rounds,
                                     std::vector<std::string> extra = {}) {
    return Command(
        {"coordinator", "--config", "configs/hier/coordinator.yaml"},
        FastFederation(
            {"server.address=127.0.0.1:" + std::to_string(port),
             "server.port_file=" + Path("coordinator.port"),
             "federation.rounds=" + std::to_string(rounds),
             "federation.min_available=2", "federation.shutdown_grace_s=4",
             "federation.round_deadline_s=200",
             "hierarchy.edge_rounds=" + std::to_string(edge_rounds),
             "train.local_steps=3", "eval.data.max_records=600",
             "eval.data.max_seq_len=64", "checkpoint.dir=" + Path("ckpt"),
             "logging.metrics_file=" + Path("metrics.jsonl"),
             "model.threads=1"}),
        extra);
  }
  // `port` 0: a free port, written to edge-<e>.port once the edge has
  // registered with the cloud and listens (EdgePorts).
  pid_t StartEdge(int cloud_port, int e, int port,
                  std::vector<std::string> extra = {}) {
    return Spawn(
        Command(
            {"edge", "--config", "configs/hier/edge.yaml"},
            FastFederation(
                {"edge.id=edge-" + std::to_string(e),
                 "upstream.address=127.0.0.1:" + std::to_string(cloud_port),
                 "upstream.task_wait_ms=1000", "upstream.backoff_max_ms=1000",
                 "server.address=127.0.0.1:" + std::to_string(port),
                 "server.port_file=" + EdgePortFile(e),
                 "federation.min_available=3", "federation.shutdown_grace_s=3",
                 "model.threads=1"}),
            extra),
        Path("edge-" + std::to_string(e) + ".log"));
  }
  std::string EdgePortFile(int e) {
    return Path("edge-" + std::to_string(e) + ".port");
  }
  // The ports edges[e] (started with port 0) listen on; -1 for one that
  // exited or did not listen in time.
  std::vector<int> EdgePorts(const std::vector<pid_t>& edges) {
    std::vector<int> ports;
    for (size_t e = 0; e < edges.size(); ++e) {
      ports.push_back(WaitForPort(edges[e], EdgePortFile(static_cast<int>(e))));
    }
    return ports;
  }
  // Six workers, three per edge; worker 0 has a slow uplink.
  std::vector<pid_t> StartWorkers(const std::vector<int>& edge_ports) {
    std::vector<pid_t> workers;
    for (int i = 0; i < 6; ++i) {
      std::vector<std::string> extra;
      if (i == 0) extra = {"--set", "worker.uplink_mbps=0.02"};
      workers.push_back(StartWorker(edge_ports[i / 3], i, 6, extra));
    }
    return workers;
  }
};

TEST_F(HierarchyTest, TwoEdgesOfThreeWorkersWithKappaTwo) {
  pid_t coord = Spawn(CloudArgs(0, 2, 2), Path("coordinator.log"));
  int cloud = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(cloud, 0) << Logs();
  std::vector<pid_t> edges = {StartEdge(cloud, 0, 0), StartEdge(cloud, 1, 0)};
  std::vector<int> edge_ports = EdgePorts(edges);
  ASSERT_THAT(edge_ports, ::testing::Each(::testing::Gt(0))) << Logs();
  std::vector<pid_t> workers = StartWorkers(edge_ports);
  ASSERT_EQ(Wait(coord, std::chrono::seconds(400)), 0) << Logs();
  for (pid_t e : edges) EXPECT_EQ(Wait(e, std::chrono::seconds(30)), 0);
  for (pid_t w : workers) {
    EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 0) << Logs();
  }
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 2u) << Logs();
  for (const auto& row : rows) {
    EXPECT_EQ(row["selected"], 2) << row.dump();
    EXPECT_EQ(row["answered"], 2) << row.dump();
    EXPECT_EQ(row["edges_answered"], 2) << row.dump();
    EXPECT_GE(row["rank_min"].get<int>(), 2) << row.dump();
    EXPECT_LE(row["rank_max"].get<int>(), 8) << row.dump();
    EXPECT_TRUE(row["frozen_fraction"].is_number()) << row.dump();
    EXPECT_TRUE(row["server_eval_loss"].is_number()) << row.dump();
  }
  // κ = 2: each edge ran 4 edge rounds for 2 cloud rounds, every worker
  // trained in each, and each cloud round got one update per edge.
  for (int e = 0; e < 2; ++e) {
    std::string log = Slurp(Path("edge-" + std::to_string(e) + ".log"));
    EXPECT_THAT(log, HasSubstr("edge round 4 done: selected 3 answered 3"));
    EXPECT_THAT(log, ::testing::Not(HasSubstr("edge round 5")));
    EXPECT_THAT(log, HasSubstr("cloud round 2: uploaded the merge of 3 "
                               "workers over 2 edge rounds"));
  }
  // Ranks come from the profiles: worker-0's slow uplink gets it a lower
  // rank than its peers, within [r_min, r_max] = [2, 8].
  std::smatch m;
  std::string edge0 = Slurp(Path("edge-0.log"));
  auto rank_of = [&](const std::string& id) {
    std::regex re("worker '" + id + "' registered \\(.*, rank ([0-9]+)\\)");
    return std::regex_search(edge0, m, re) ? std::stoi(m[1]) : -1;
  };
  int slow = rank_of("worker-0"), fast = rank_of("worker-1");
  EXPECT_GE(slow, 2) << edge0;
  EXPECT_LT(slow, fast) << edge0;
  EXPECT_EQ(fast, 8) << edge0;
  // The cloud's checkpoint is an ordinary one: it exports.
  pid_t ex =
      Spawn({"export", "--checkpoint", Path("ckpt"), "--out", Path("adapter")},
            Path("export.log"));
  EXPECT_EQ(Wait(ex, std::chrono::seconds(60)), 0) << Slurp(Path("export.log"));
}

TEST_F(HierarchyTest, EdgeKilledAndRestartedRejoins) {
  pid_t coord = Spawn(CloudArgs(0, 6, 1, {"--set", "federation.quorum=0.5"}),
                      Path("coordinator.log"));
  int cloud = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(cloud, 0) << Logs();
  pid_t edge0 = StartEdge(cloud, 0, 0);
  pid_t edge1 = StartEdge(cloud, 1, 0);
  std::vector<int> edge_ports = EdgePorts({edge0, edge1});
  ASSERT_THAT(edge_ports, ::testing::Each(::testing::Gt(0))) << Logs();
  std::vector<pid_t> workers = StartWorkers(edge_ports);
  ASSERT_TRUE(WaitFor(
      [&] {
        return Slurp(Path("coordinator.log")).find("round 1/6 done") !=
               std::string::npos;
      },
      std::chrono::seconds(300)))
      << Logs();
  kill(edge1, SIGKILL);
  Wait(edge1, std::chrono::seconds(10));
  // The cloud goes on with the edge it has (quorum of edges) ...
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string log = Slurp(Path("coordinator.log"));
        return log.find("round 2/6 done") != std::string::npos ||
               log.find("round 3/6 done") != std::string::npos;
      },
      std::chrono::seconds(300)))
      << Logs();
  // ... and the restarted edge registers again, on the port it had (free
  // again since it died); its workers rejoin it.
  pid_t again = StartEdge(cloud, 1, edge_ports[1]);
  ASSERT_EQ(Wait(coord, std::chrono::seconds(400)), 0) << Logs();
  EXPECT_EQ(Wait(edge0, std::chrono::seconds(30)), 0) << Logs();
  EXPECT_EQ(Wait(again, std::chrono::seconds(30)), 0) << Logs();
  for (pid_t w : workers) {
    EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 0) << Logs();
  }
  EXPECT_THAT(Slurp(Path("coordinator.log")),
              HasSubstr("edge 'edge-1' re-registered"));
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 6u) << Logs();
  bool with_one = false, both_again = false;
  for (const auto& row : rows) {
    EXPECT_TRUE(row["aggregated"].get<bool>()) << row.dump();
    if (row["edges_answered"] == 1) with_one = true;
    if (with_one && row["edges_answered"] == 2) both_again = true;
  }
  EXPECT_TRUE(with_one) << "no round went on with one edge\n" << Logs();
  EXPECT_TRUE(both_again) << "edge-1 never answered again\n" << Logs();
}

// ---- privacy and compression ------------------------------------------------

// Payload bytes of the B matrices of the shipped configs' adapter (LoRA r=8
// on every linear of stories260K: 5 layers, out dims q 64, k 32, v 32, o 64,
// gate 172, up 172, down 64) in F32: what an FFA-LoRA update carries.
constexpr uint64_t kLoraBF32Bytes =
    5 * 8 * (64 + 32 + 32 + 64 + 172 + 172 + 64) * 4;

// User-level DP-FedAvg and 4-bit uploads over real processes: every worker's
// update respects the clip norm (the coordinator would refuse it), the
// uploads are the size 4 bits allow, and epsilon is what the accountant
// says for q = 1, the configured z and delta = 1/3^1.1 after each round.
TEST_F(FederationTest, DpWithFourBitUploads) {
  pid_t coord = Spawn(
      CoordinatorArgs(
          0, 2, 3,
          {"--set", "dp.enabled=true", "--set", "dp.clip_norm=0.05", "--set",
           "dp.noise_multiplier=0.8", "--set", "dp.noise_seed=7", "--set",
           "compression.bits=4", "--set", "compression.error_feedback=true"}),
      Path("coordinator.log"));
  int port = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(port, 0) << Logs();
  std::vector<pid_t> workers;
  for (int i = 0; i < 3; ++i) workers.push_back(StartWorker(port, i, 3));
  ASSERT_EQ(Wait(coord, std::chrono::seconds(300)), 0) << Logs();
  for (pid_t w : workers) {
    EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 0) << Logs();
  }
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 2u) << Logs();
  const double delta = std::pow(3.0, -1.1);
  for (int r = 0; r < 2; ++r) {
    const auto& row = rows[r];
    EXPECT_EQ(row["answered"], 3) << row.dump();
    EXPECT_EQ(row["rejected"], 0) << row.dump();
    EXPECT_DOUBLE_EQ(row["delta"].get<double>(), delta);
    EXPECT_DOUBLE_EQ(row["clip_norm"].get<double>(), 0.05);
    EXPECT_DOUBLE_EQ(row["noise_multiplier"].get<double>(), 0.8);
    EXPECT_DOUBLE_EQ(row["sampling_rate"].get<double>(), 1.0);
    privacy::PrivacySpent want =
        privacy::ComputeEpsilon(1.0, 0.8, r + 1, delta);
    EXPECT_NEAR(row["epsilon"].get<double>(), want.epsilon, 1e-9 * want.epsilon)
        << row.dump();
    EXPECT_TRUE(row["server_eval_loss"].is_number()) << row.dump();
    // FFA-LoRA (DP's default) sends only B; 4 bits a value plus 8 bytes a
    // block of 256 plus framing: more than an eighth of F32, under a sixth.
    ASSERT_EQ(row["bytes_up_workers"].size(), 3u) << row.dump();
    for (const auto& [id, bytes] : row["bytes_up_workers"].items()) {
      EXPECT_GT(bytes.get<uint64_t>(), kLoraBF32Bytes / 8) << id;
      EXPECT_LT(bytes.get<uint64_t>(), kLoraBF32Bytes / 6) << id;
    }
  }
  EXPECT_GT(rows[1]["epsilon"].get<double>(), rows[0]["epsilon"].get<double>());
  const std::string log = Slurp(Path("coordinator.log"));
  EXPECT_THAT(log, HasSubstr("dp: user-level DP-FedAvg, clip norm 0.05"));
  EXPECT_THAT(log, HasSubstr("round 2/2 done: selected 3 answered 3"));
  EXPECT_THAT(log, HasSubstr("| epsilon "));
  const std::string w0 = Slurp(Path("worker-0.log"));
  EXPECT_THAT(w0, HasSubstr("(4-bit)"));
  EXPECT_THAT(w0, HasSubstr("(clip 0.05)"));
}

// Distributed DP after secure aggregation: each of two edges sums its
// workers' masked updates (it sees only the sum), then adds its share of
// the noise; the cloud adds none, and accounts for the round with the
// edges' sampling. Worker 5 drops out after key agreement every round, so
// edge 1 recovers the sum of 2 of its 3 workers. The global adapter travels
// in 8 bits, cloud to edges and edges to workers.
TEST_F(HierarchyTest, DpNoiseSharesAtTheEdgesAfterSecureAggregation) {
  pid_t coord = Spawn(
      CloudArgs(
          0, 2, 1,
          {"--set", "dp.enabled=true", "--set", "dp.placement=edges", "--set",
           "dp.clip_norm=0.05", "--set", "dp.noise_multiplier=1.0", "--set",
           "dp.population=6", "--set", "compression.bits=8", "--set",
           "compression.download_bits=8", "--set", "freezing.apf.enabled=false",
           "--set", "secagg.enabled=true"}),
      Path("coordinator.log"));
  int cloud = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(cloud, 0) << Logs();
  // The dropped worker holds its edge's rounds until their deadline.
  const std::vector<std::string> deadline = {"--set",
                                             "federation.round_deadline_s=30"};
  std::vector<pid_t> edges = {StartEdge(cloud, 0, 0, deadline),
                              StartEdge(cloud, 1, 0, deadline)};
  std::vector<int> edge_ports = EdgePorts(edges);
  ASSERT_THAT(edge_ports, ::testing::Each(::testing::Gt(0))) << Logs();
  std::vector<pid_t> workers;
  for (int i = 0; i < 6; ++i) {
    std::vector<std::string> extra;
    if (i == 5) extra = {"--set", "simulation.dropout_prob=1"};
    workers.push_back(StartWorker(edge_ports[i / 3], i, 6, extra));
  }
  ASSERT_EQ(Wait(coord, std::chrono::seconds(400)), 0) << Logs();
  for (pid_t e : edges) EXPECT_EQ(Wait(e, std::chrono::seconds(30)), 0);
  for (pid_t w : workers) {
    EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 0) << Logs();
  }
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 2u) << Logs();
  const double delta = std::pow(6.0, -1.1);
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    EXPECT_EQ(row["edges_answered"], 2) << row.dump();
    EXPECT_DOUBLE_EQ(row["sampling_rate"].get<double>(), 1.0) << row.dump();
    privacy::PrivacySpent want =
        privacy::ComputeEpsilon(1.0, 1.0, static_cast<int64_t>(r) + 1, delta);
    EXPECT_NEAR(row["epsilon"].get<double>(), want.epsilon,
                1e-9 * want.epsilon);
  }
  // Each edge adds N(0, (zC)^2 / 2): stddev 0.05 / sqrt(2) = 0.03536, after
  // unmasking; the cloud adds nothing on top.
  std::string e0 = Slurp(Path("edge-0.log"));
  EXPECT_THAT(e0, HasSubstr("secure aggregation: sum of 3 masked updates "
                            "recovered (0 dropped"));
  EXPECT_THAT(e0, HasSubstr("dp: sum of 3 users' updates clipped to 0.05, "
                            "noise stddev 0.03536 added here"));
  std::string e1 = Slurp(Path("edge-1.log"));
  EXPECT_THAT(e1, HasSubstr("secure aggregation: sum of 2 masked updates "
                            "recovered (1 dropped after agreeing keys"));
  EXPECT_THAT(e1, HasSubstr("dp: sum of 2 users' updates clipped to 0.05, "
                            "noise stddev 0.03536 added here"));
  std::string w0 = Slurp(Path("worker-0.log"));
  EXPECT_THAT(w0, HasSubstr("(masked)"));
  EXPECT_THAT(w0, HasSubstr("secure aggregation: unmasked (3 survivors"));
  EXPECT_THAT(Slurp(Path("coordinator.log")),
              HasSubstr("noise stddev 0 added here (0.05 at the edges)"));
}

}  // namespace
}  // namespace fedpeft
