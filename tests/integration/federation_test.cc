// End-to-end federations of real `fedpeft` processes over real sockets on
// 127.0.0.1: a coordinator and workers started from the shipped configs,
// a worker killed mid-round, the coordinator killed and restarted; the
// hierarchy (two edges of three workers, κ = 2, an edge killed and
// restarted), heterogeneous ranks from worker profiles, and freezing.
// Every server binds port 0 and writes the port it got to its
// server.port_file; the test waits for that file and hands the port to the
// clients (no port picked here for another process to bind).

#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_util::FederationTest;
using testing_util::kBinary;
using testing_util::Slurp;

TEST_F(FederationTest, ThreeWorkersTwoRoundsThenExport) {
  pid_t coord = Spawn(CoordinatorArgs(0, 2, 3), Path("coordinator.log"));
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
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rows[r]["round"], r + 1);
    EXPECT_EQ(rows[r]["selected"], 3);
    EXPECT_EQ(rows[r]["answered"], 3);
    EXPECT_EQ(rows[r]["dropped"], 0);
    EXPECT_GT(rows[r]["bytes_up"].get<uint64_t>(), 0u);
    EXPECT_GT(rows[r]["bytes_down"].get<uint64_t>(), 0u);
    for (const char* k : {"train_loss", "eval_loss", "seconds"}) {
      EXPECT_TRUE(rows[r][k].is_number()) << k << " in " << rows[r].dump();
    }
  }
  std::string log = Slurp(Path("coordinator.log"));
  EXPECT_THAT(log, HasSubstr("round 2/2 done: selected 3 answered 3"));

  // The merged global adapter exports in PEFT format and loads.
  pid_t ex =
      Spawn({"export", "--checkpoint", Path("ckpt"), "--out", Path("adapter")},
            Path("export.log"));
  ASSERT_EQ(Wait(ex, std::chrono::seconds(60)), 0) << Slurp(Path("export.log"));
  EXPECT_TRUE(fs::exists(Path("adapter/adapter_config.json")));
  pid_t gen = Spawn({"generate", "--adapter", Path("adapter"), "--prompt",
                     "ROMEO:", "--max-tokens", "8"},
                    Path("generate.log"));
  EXPECT_EQ(Wait(gen, std::chrono::seconds(60)), 0)
      << Slurp(Path("generate.log"));
  pid_t merged = Spawn({"export", "--checkpoint", Path("ckpt"), "--merge",
                        "--out", Path("merged")},
                       Path("merge.log"));
  EXPECT_EQ(Wait(merged, std::chrono::seconds(60)), 0)
      << Slurp(Path("merge.log"));
  EXPECT_TRUE(fs::exists(Path("merged/model.safetensors")));
}

TEST_F(FederationTest, WorkerKilledMidRoundDoesNotStopTheRound) {
  pid_t coord = Spawn(CoordinatorArgs(0, 2, 3), Path("coordinator.log"));
  int port = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(port, 0) << Logs();
  std::vector<pid_t> workers;
  workers.push_back(StartWorker(port, 0, 3));
  workers.push_back(StartWorker(port, 1, 3));
  // A very slow worker that will still be computing when it is killed.
  pid_t slow = StartWorker(port, 2, 3, {"--set", "simulation.slowdown=200"});
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string log = Slurp(Path("coordinator.log"));
        return log.find("update from 'worker-0'") != std::string::npos &&
               log.find("update from 'worker-1'") != std::string::npos;
      },
      std::chrono::seconds(240)))
      << Logs();
  kill(slow, SIGKILL);
  Wait(slow, std::chrono::seconds(10));
  ASSERT_EQ(Wait(coord, std::chrono::seconds(240)), 0) << Logs();
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 2u) << Logs();
  EXPECT_EQ(rows[0]["selected"], 3);
  EXPECT_EQ(rows[0]["answered"], 2);
  EXPECT_EQ(rows[0]["dropped"], 1);
  EXPECT_TRUE(rows[0]["aggregated"].get<bool>());
  // Round 2 selects only the workers still alive.
  EXPECT_EQ(rows[1]["selected"], 2);
  EXPECT_EQ(rows[1]["answered"], 2);
  EXPECT_THAT(Slurp(Path("coordinator.log")),
              HasSubstr("no answer from 'worker-2'"));
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(Wait(workers[i], std::chrono::seconds(30)), 0) << Logs();
  }
}

TEST_F(FederationTest, CoordinatorRestartResumesWithTheSameAdapter) {
  pid_t coord = Spawn(CoordinatorArgs(0, 3, 2), Path("coordinator.log"));
  int port = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(port, 0) << Logs();
  std::vector<pid_t> workers;
  for (int i = 0; i < 2; ++i) {
    workers.push_back(
        StartWorker(port, i, 2, {"--set", "simulation.slowdown=3"}));
  }
  // Kill the coordinator as soon as round 1 is checkpointed.
  ASSERT_TRUE(
      WaitFor([&] { return Slurp(Path("ckpt/LATEST")) == "round-000001\n"; },
              std::chrono::seconds(240)))
      << Logs();
  kill(coord, SIGKILL);
  Wait(coord, std::chrono::seconds(10));
  std::string latest = Slurp(Path("ckpt/LATEST"));
  ASSERT_EQ(latest, "round-000001\n")
      << "the coordinator got past round 1 before it was killed";
  auto round1 = coordinator::LoadCheckpointFolder(Path("ckpt/round-000001"));
  ASSERT_TRUE(round1.ok()) << round1.status().ToString();
  const std::string digest = coordinator::TensorDigest(round1->global);

  // Same config, same address (the port the first one bound, free again
  // since it died): it resumes at round 2 and the workers, which kept
  // retrying, rejoin on their own.
  pid_t again = Spawn(CoordinatorArgs(port, 3, 2), Path("coordinator2.log"));
  ASSERT_EQ(Wait(again, std::chrono::seconds(300)), 0) << Logs();
  std::string log2 = Slurp(Path("coordinator2.log"));
  EXPECT_THAT(log2, HasSubstr("from checkpoint round 1 (adapter digest " +
                              digest + "); next round 2"));
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 3u) << Logs();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(rows[r]["round"], r + 1);
  EXPECT_THAT(log2, ::testing::Not(HasSubstr("round 1/3")));
  for (pid_t w : workers) {
    EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 0) << Logs();
  }
  EXPECT_THAT(Logs(), HasSubstr("registering again"));
}

// The quickstart's own command, both modes, shortened.
TEST_F(FederationTest, SimulateRunsTheWholeFederation) {
  for (const std::string mode : {"processes", "threads"}) {
    std::string out = Path("sim-" + mode);
    std::string log = Path("simulate-" + mode + ".txt");
    pid_t sim = Spawn(
        {"simulate",
         "--config",
         "configs/quickstart.yaml",
         "--out",
         out,
         "--set",
         "simulation.mode=" + mode,
         "--set",
         std::string("simulation.workers=") + (mode == "threads" ? "6" : "3"),
         "--set",
         "simulation.dropout_prob=[0]",
         "--set",
         "simulation.sample_tokens=8",
         "--set",
         "coordinator.federation.rounds=2",
         "--set",
         "coordinator.train.local_steps=3",
         "--set",
         "coordinator.eval.data.max_records=600",
         "--set",
         "worker.data.max_records=600",
         "--set",
         "worker.data.max_seq_len=64",
         "--set",
         "simulation.compute_threads=2"},
        log);
    ASSERT_EQ(Wait(sim, std::chrono::seconds(400)), 0) << Slurp(log) << Logs();
    std::string text = Slurp(log);
    EXPECT_THAT(text, HasSubstr("2 rounds aggregated"));
    if (mode == "threads") {
      // Six worker threads, never more than two of them computing, and the
      // coordinator reading the same copy of the base.
      EXPECT_THAT(text, HasSubstr("6 workers as threads sharing one base "
                                  "model with the coordinator, at most 2 "
                                  "computing at once"));
      std::smatch m;
      ASSERT_TRUE(std::regex_search(
          text, m, std::regex(R"(compute slots: (\d+) of 2 used at most)")))
          << text;
      EXPECT_GE(std::stoi(m[1]), 1);
      EXPECT_LE(std::stoi(m[1]), 2);
    }
    EXPECT_THAT(text, HasSubstr("sample, base+adapter:"));
    EXPECT_TRUE(fs::exists(out + "/adapter/adapter_model.safetensors"));
    EXPECT_TRUE(fs::exists(out + "/metrics.jsonl"));
    if (mode == "processes") {
      EXPECT_TRUE(fs::exists(out + "/logs/worker-2.log"));
    }
    // The quickstart runs on throw-away mutual TLS (simulation.tls).
    EXPECT_THAT(text, HasSubstr("mutual TLS with throw-away certificates"));
    EXPECT_TRUE(fs::exists(out + "/certs/ca.crt"));
    EXPECT_TRUE(fs::exists(out + "/certs/worker-0.key"));
  }
}

TEST_F(FederationTest, ConfigErrorsNameTheKeyAndExitNonZero) {
  pid_t c =
      Spawn({"coordinator", "--config", "configs/flat/coordinator.yaml",
             "--set", "federation.rounds=0", "--set", "strategy.nmae=fedavg"},
            Path("c.log"));
  EXPECT_EQ(Wait(c, std::chrono::seconds(30)), 1);
  std::string log = Slurp(Path("c.log"));
  EXPECT_THAT(log, HasSubstr("federation.rounds: must be >= 1, got 0"));
  EXPECT_THAT(log, HasSubstr("unknown key 'strategy.nmae'"));
  pid_t w = Spawn({"worker", "--config", "configs/flat/worker.yaml", "--set",
                   "data.shard=5/2", "--set", "worker.threads=many"},
                  Path("w.log"));
  EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 1);
  log = Slurp(Path("w.log"));
  EXPECT_THAT(log, HasSubstr("data.shard"));
  EXPECT_THAT(log,
              HasSubstr("worker.threads: expected an integer, got 'many'"));
}

// ---- transport security --------------------------------------------------

// `fedpeft certs` makes a CA and certificates; the shipped configs/tls/
// coordinator and two workers run on mutual TLS with them; `status` needs a
// certificate; a worker whose id is not its certificate's name stops.
TEST_F(FederationTest, MutualTlsWithCertsCommands) {
  const std::string certs = Path("certs");
  ASSERT_TRUE(MakeCerts(certs, {{"coordinator", "coordinator"},
                                {"worker", "worker-0"},
                                {"worker", "worker-1"},
                                {"operator", "operator"}}))
      << Slurp(Path("certs.txt"));
  {
    std::ofstream allow(Path("allowlist.yaml"));
    allow << "allowed_names: [worker-0, worker-1, operator]\n";
  }
  auto tls = [&](const std::string& name) { return TlsSets(certs, name); };
  coordinator_config_ = "configs/tls/coordinator.yaml";
  worker_config_ = "configs/tls/worker.yaml";
  std::vector<std::string> extra = tls("coordinator");
  extra.insert(extra.end(),
               {"--set", "tls.allowlist_file=" + Path("allowlist.yaml")});
  pid_t coord = Spawn(CoordinatorArgs(0, 2, 2, extra), Path("coordinator.log"));
  int port = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(port, 0) << Logs();
  // worker-1's id with worker-0's certificate: refused before it dials.
  std::vector<std::string> wrong = tls("worker-0");
  pid_t impostor =
      Spawn({"worker", "--config", worker_config_, "--set",
             "worker.id=worker-1", "--set", "data.max_records=600", wrong[0],
             wrong[1], wrong[2], wrong[3], wrong[4], wrong[5]},
            Path("impostor.txt"));
  std::vector<pid_t> workers;
  for (int i = 0; i < 2; ++i) {
    std::vector<std::string> w = tls("worker-" + std::to_string(i));
    w.insert(w.end(), {"--set", "simulation.slowdown=2"});
    workers.push_back(StartWorker(port, i, 2, w));
  }
  EXPECT_EQ(Wait(impostor, std::chrono::seconds(60)), 1);
  EXPECT_THAT(Slurp(Path("impostor.txt")),
              HasSubstr("is the certificate of 'worker-0', but this "
                        "participant's id is 'worker-1'"));

  // `status` over mutual TLS with the operator's certificate, once both
  // workers are in.
  ASSERT_TRUE(WaitFor(
      [&] {
        return Slurp(Path("coordinator.log")).find("2 registered") !=
               std::string::npos;
      },
      std::chrono::seconds(120)))
      << Logs();
  const std::string address = "127.0.0.1:" + std::to_string(port);
  pid_t st = Spawn(
      {"status", "--address", address, "--ca", certs + "/ca.crt", "--cert",
       certs + "/operator.crt", "--key", certs + "/operator.key"},
      Path("status.txt"));
  EXPECT_EQ(Wait(st, std::chrono::seconds(30)), 0) << Slurp(Path("status.txt"));
  EXPECT_THAT(Slurp(Path("status.txt")), HasSubstr("worker-1"));
  pid_t plain = Spawn({"status", "--address", address}, Path("plain.txt"));
  EXPECT_EQ(Wait(plain, std::chrono::seconds(30)), 1);
  EXPECT_THAT(Slurp(Path("plain.txt")),
              HasSubstr("pass --ca, --cert and --key"));

  ASSERT_EQ(Wait(coord, std::chrono::seconds(300)), 0) << Logs();
  for (pid_t w : workers) {
    EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 0) << Logs();
  }
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 2u) << Logs();
  for (const auto& row : rows) EXPECT_EQ(row["answered"], 2);
  std::string log = Slurp(Path("coordinator.log"));
  EXPECT_THAT(log, HasSubstr("(mutual TLS,"));
  EXPECT_THAT(log, HasSubstr("worker 'worker-0' registered"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("PLAINTEXT")));
}

// FFA-LoRA and adaptive freezing: what is not trained is not uploaded, and
// the server (which would reject a frozen tensor) takes every upload.
TEST_F(FederationTest, FrozenTensorsStayHome) {
  pid_t coord = Spawn(CoordinatorArgs(0, 5, 2,
                                      {"--set", "freezing.ffa=true", "--set",
                                       "freezing.apf.enabled=true", "--set",
                                       "freezing.apf.threshold=0.99", "--set",
                                       "freezing.apf.warmup_rounds=1"}),
                      Path("coordinator.log"));
  int port = WaitForPort(coord, Path("coordinator.port"));
  ASSERT_GT(port, 0) << Logs();
  std::vector<pid_t> workers = {StartWorker(port, 0, 2),
                                StartWorker(port, 1, 2)};
  ASSERT_EQ(Wait(coord, std::chrono::seconds(300)), 0) << Logs();
  for (pid_t w : workers) EXPECT_EQ(Wait(w, std::chrono::seconds(30)), 0);
  std::string logs = Logs();
  // FFA: only the 35 lora_B of the 70 adapter tensors travel ...
  EXPECT_THAT(logs, HasSubstr("round 1: rank 8, 4 steps, 35 of 70 tensors"));
  // ... and once APF freezes some B, fewer still.
  std::regex fewer("round [2-5]: rank 8, 4 steps, ([0-9]+) of 70 tensors");
  int least = 35;
  for (auto it = std::sregex_iterator(logs.begin(), logs.end(), fewer);
       it != std::sregex_iterator(); ++it) {
    least = std::min(least, std::stoi((*it)[1]));
  }
  EXPECT_LT(least, 35) << logs;
  EXPECT_THAT(logs, ::testing::Not(HasSubstr("rejected upload")));
  auto rows = Metrics();
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_GT(rows.back()["frozen_fraction"].get<double>(), 0.0);
  // A frozen tensor is also not downloaded again: later rounds move fewer
  // bytes down than the first.
  EXPECT_LT(rows.back()["bytes_down"].get<uint64_t>(),
            rows[0]["bytes_down"].get<uint64_t>());
}

}  // namespace
}  // namespace fedpeft
