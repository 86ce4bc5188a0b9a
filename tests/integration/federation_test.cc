// End-to-end federations of real `fedpeft` processes over real sockets on
// 127.0.0.1: a coordinator and workers started from the shipped configs,
// a worker killed mid-round, the coordinator killed and restarted; the
// hierarchy (two edges of three workers, κ = 2, an edge killed and
// restarted), heterogeneous ranks from worker profiles, and freezing.
// Every server binds port 0 and writes the port it got to its
// server.port_file; the test waits for that file and hands the port to the
// clients (no port picked here for another process to bind).
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "coordinator/checkpoint.h"
#include "security/rdp_accountant.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;

const std::string kSource = FEDPEFT_SOURCE_DIR;
const std::string kBinary = FEDPEFT_BINARY;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class FederationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_fed_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    for (pid_t pid : pids_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (!HasFailure()) fs::remove_all(dir_);
  }

  std::string Path(const std::string& name) { return (dir_ / name).string(); }

  // Starts `fedpeft <args>` in the source tree, output into `log`.
  pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
    pid_t pid = fork();
    if (pid == 0) {
      if (chdir(kSource.c_str()) != 0) _exit(126);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv{const_cast<char*>(kBinary.c_str())};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(kBinary.c_str(), argv.data());
      _exit(127);
    }
    pids_.push_back(pid);
    return pid;
  }

  // Exit code, or -1 when `pid` is still running after `timeout`.
  int Wait(pid_t pid, std::chrono::seconds timeout) {
    auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pids_.erase(std::remove(pids_.begin(), pids_.end(), pid), pids_.end());
        if (WIFEXITED(status)) return WEXITSTATUS(status);
        return 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return -1;
  }

  bool WaitFor(const std::function<bool()>& ready,
               std::chrono::seconds timeout) {
    auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      if (ready()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return ready();
  }

  // Whether `pid` has exited, without reaping it (Wait() still gets its
  // exit code).
  static bool Exited(pid_t pid) {
    siginfo_t info{};
    return waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid == pid;
  }

  // The port server `pid` listens on, once it has written it to
  // `port_file` (server.port_file: the port and a newline, written after
  // it listens); -1 when `pid` exits first or `timeout` passes.
  int WaitForPort(pid_t pid, const std::string& port_file,
                  std::chrono::seconds timeout = std::chrono::seconds(120)) {
    int port = -1;
    WaitFor(
        [&] {
          const std::string text = Slurp(port_file);
          if (!text.empty() && text.back() == '\n') {
            port = std::stoi(text);
            return true;
          }
          return Exited(pid);
        },
        timeout);
    return port;
  }

  // `command`, then "--set" before each of `sets`, then `extra`.
  static std::vector<std::string> Command(
      std::vector<std::string> command, const std::vector<std::string>& sets,
      const std::vector<std::string>& extra = {}) {
    for (const std::string& kv : sets) {
      command.push_back("--set");
      command.push_back(kv);
    }
    command.insert(command.end(), extra.begin(), extra.end());
    return command;
  }

  // Quick liveness and long polls for a server's `federation` section.
  static std::vector<std::string> FastFederation(
      std::vector<std::string> sets) {
    for (const char* kv :
         {"federation.heartbeat_interval_ms=300",
          "federation.worker_timeout_s=3", "federation.task_wait_ms=1000"}) {
      sets.push_back(kv);
    }
    return sets;
  }

  // `port` 0: a free port, written to coordinator.port (WaitForPort).
  std::vector<std::string> CoordinatorArgs(
      int port, int rounds, int min_available,
      std::vector<std::string> extra = {}) {
    return Command(
        {"coordinator", "--config", coordinator_config_},
        FastFederation(
            {"server.address=127.0.0.1:" + std::to_string(port),
             "server.port_file=" + Path("coordinator.port"),
             "federation.rounds=" + std::to_string(rounds),
             "federation.min_available=" + std::to_string(min_available),
             "federation.shutdown_grace_s=3", "federation.round_deadline_s=120",
             "train.local_steps=4", "eval.data.max_records=600",
             "eval.data.max_seq_len=64", "checkpoint.dir=" + Path("ckpt"),
             "logging.metrics_file=" + Path("metrics.jsonl"),
             "model.threads=1"}),
        extra);
  }

  pid_t StartWorker(int port, int i, int n,
                    std::vector<std::string> extra = {}) {
    return Spawn(
        Command({"worker", "--config", worker_config_},
                {"worker.id=worker-" + std::to_string(i),
                 "data.shard=" + std::to_string(i) + "/" + std::to_string(n),
                 "data.max_records=600", "data.max_seq_len=64",
                 "server.address=127.0.0.1:" + std::to_string(port),
                 "server.task_wait_ms=1000", "server.backoff_max_ms=1000"},
                extra),
        Path("worker-" + std::to_string(i) + ".log"));
  }

  std::vector<nlohmann::json> Metrics() {
    std::vector<nlohmann::json> rows;
    std::istringstream in(Slurp(Path("metrics.jsonl")));
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
    }
    return rows;
  }

  std::string Logs() {
    std::string all;
    for (const auto& e : fs::directory_iterator(dir_)) {
      if (e.path().extension() == ".log") {
        all += "==== " + e.path().filename().string() + "\n" +
               Slurp(e.path().string());
      }
    }
    return all;
  }

  fs::path dir_;
  std::vector<pid_t> pids_;
  // What CoordinatorArgs() and StartWorker() start from.
  std::string coordinator_config_ = "configs/flat/coordinator.yaml";
  std::string worker_config_ = "configs/flat/worker.yaml";
};

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
         "worker.data.max_seq_len=64"},
        log);
    ASSERT_EQ(Wait(sim, std::chrono::seconds(400)), 0) << Slurp(log) << Logs();
    std::string text = Slurp(log);
    EXPECT_THAT(text, HasSubstr("2 rounds aggregated"));
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
  pid_t init = Spawn({"certs", "init", "--out", certs}, Path("certs.txt"));
  ASSERT_EQ(Wait(init, std::chrono::seconds(30)), 0)
      << Slurp(Path("certs.txt"));
  for (const auto& [role, name] :
       std::vector<std::pair<std::string, std::string>>{
           {"coordinator", "coordinator"},
           {"worker", "worker-0"},
           {"worker", "worker-1"},
           {"operator", "operator"}}) {
    pid_t p = Spawn({"certs", "issue", "--role", role, "--name", name, "--ca",
                     certs, "--out", certs},
                    Path("certs.txt"));
    ASSERT_EQ(Wait(p, std::chrono::seconds(30)), 0) << Slurp(Path("certs.txt"));
  }
  {
    std::ofstream allow(Path("allowlist.yaml"));
    allow << "allowed_names: [worker-0, worker-1, operator]\n";
  }
  auto tls = [&](const std::string& name) {
    return std::vector<std::string>{
        "--set", "tls.ca=" + certs + "/ca.crt",
        "--set", "tls.cert=" + certs + "/" + name + ".crt",
        "--set", "tls.key=" + certs + "/" + name + ".key"};
  };
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
