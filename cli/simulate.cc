// fedpeft simulate: a whole federation on one machine.
//
// mode: processes -- the coordinator and every worker are separate
//   `fedpeft` processes talking gRPC over 127.0.0.1 (free ports picked by
//   the OS), each with its own log under DIR/logs/.
// mode: virtual -- simulation.users virtual users (10^4 and more) hosted
//   by simulation.executors `fedpeft executor` processes (worker/
//   executor.h), each training the users a round selects on
//   simulation.executor_threads threads; the coordinator (and edges) are
//   processes as in mode processes, and every user is a participant of its
//   own. Memory grows with the executors' threads, not with the users.
// mode: threads -- one process: the coordinator's gRPC server and N worker
//   clients as threads sharing one read-only base model, so 100+ workers
//   fit in memory (O(base + N x adapter)). At most
//   simulation.compute_threads of them (default: one per core) train at
//   once (worker/compute_slots.h); the rest wait for a slot.
//
// The config has three sections: `simulation` (workers, mode,
// heterogeneity), `coordinator` (a coordinator config) and `worker` (the
// config every worker starts from; simulate sets worker.id, data.shard,
// server.address and the heterogeneity profile of each). With
// `topology.edges: E` (processes mode), E edge aggregators run as their own
// processes between the coordinator and the workers (worker i talks to edge
// i mod E), configured by the optional `edge` section.
//
// simulation.tls (default true): a throw-away CA and certificates in
// OUT/certs (coordinator, edge-<e>, worker-<i>; valid 7 days), and every
// connection on mutual TLS, as a real deployment would run. false: every
// process runs with tls.insecure (plaintext, with its warning).
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/simulate_config.h"
#include "cli/simulate_report.h"
#include "common/config.h"
#include "common/file_util.h"
#include "common/heap.h"
#include "common/logging.h"
#include "coordinator/checkpoint.h"
#include "coordinator/coordinator.h"
#include "coordinator/edge.h"
#include "coordinator/service.h"
#include "model/generate.h"
#include "peft/peft_io.h"
#include "security/certs.h"
#include "worker/worker_client.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace cli {
namespace {

namespace po = boost::program_options;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Starts `fedpeft <args>` with stdout/stderr into `log`. Returns the pid.
pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  // Children die with the simulation, however it ends (Ctrl-C, SIGTERM,
  // SIGKILL): the kernel sends them SIGTERM when it exits.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);  // it died before prctl
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
  }
  int null_fd = ::open("/dev/null", O_RDONLY);
  if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
  std::vector<char*> argv;
  static std::string self = "/proc/self/exe";
  argv.push_back(const_cast<char*>("fedpeft"));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, nullptr);
  execv(self.c_str(), argv.data());
  std::perror("execv fedpeft");
  _exit(127);
}

// Waits for `pid` up to `until`; returns its exit code, or -1 on timeout.
int WaitUntil(pid_t pid, Clock::time_point until) {
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    if (r < 0) return -2;
    if (Clock::now() >= until) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Terminate(pid_t pid) {
  kill(pid, SIGTERM);
  if (WaitUntil(pid, Clock::now() + std::chrono::seconds(5)) == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
}

// Reads the port a server wrote to `port_file`; empty when `pid` exited or
// `deadline` passed first.
std::string WaitForPort(pid_t pid, const std::string& port_file,
                        Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    if (WaitUntil(pid, Clock::now()) != -1) return "";
    auto text = ReadFileToString(port_file, 64);
    if (text.ok() && !text->empty() && text->back() == '\n') {
      std::string port = *text;
      port.pop_back();
      return port;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return "";
}

// A CA and the certificates of every participant, in p.certs (replaced).
Status MakeThrowAwayCertificates(const SimulationOptions& sim,
                                 const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  security::CaOptions ca;
  ca.name = "fedpeft-simulate-ca";
  ca.days = 7;
  RETURN_IF_ERROR(security::CreateCa(dir, ca));
  auto issue = [&](const std::string& name, security::CertRole role) {
    security::IssueOptions o;
    o.name = name;
    o.role = role;
    o.days = 7;
    return security::IssueCertificate(dir, dir, o);
  };
  RETURN_IF_ERROR(issue("coordinator", security::CertRole::kCoordinator));
  for (int e = 0; e < sim.edges; ++e) {
    RETURN_IF_ERROR(
        issue("edge-" + std::to_string(e), security::CertRole::kEdge));
  }
  if (sim.virtual_users()) {
    for (int e = 0; e < sim.executors; ++e) {
      RETURN_IF_ERROR(
          issue("executor-" + std::to_string(e), security::CertRole::kWorker));
    }
    return Status::Ok();
  }
  for (int i = 0; i < sim.workers; ++i) {
    RETURN_IF_ERROR(
        issue("worker-" + std::to_string(i), security::CertRole::kWorker));
  }
  return Status::Ok();
}

int RunProcesses(const SimulationOptions& sim, const RunPaths& p,
                 const std::string& cmd) {
  auto deadline =
      Clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(sim.timeout_s * 1000));
  pid_t coord = Spawn({"coordinator", "--config", p.coordinator_yaml},
                      JoinPath(p.logs, "coordinator.log"));
  std::string port = WaitForPort(coord, p.port_file, deadline);
  if (port.empty()) {
    Terminate(coord);
    return Fail(cmd, Status::Internal("the coordinator did not start; see " +
                                      JoinPath(p.logs, "coordinator.log")));
  }
  std::printf("coordinator on 127.0.0.1:%s (pid %d)\n", port.c_str(),
              static_cast<int>(coord));
  std::vector<pid_t> edges;
  std::vector<std::string> worker_addresses;
  for (int e = 0; e < sim.edges; ++e) {
    const std::string id = "edge-" + std::to_string(e);
    const std::string port_file = JoinPath(p.out, id + ".port");
    std::error_code ec;
    fs::remove(port_file, ec);
    std::vector<std::string> edge_args = {"edge", "--config", p.edge_yaml};
    for (const std::string& o :
         EdgeOverrides(sim, e, "127.0.0.1:" + port, port_file, p.certs)) {
      edge_args.push_back("--set");
      edge_args.push_back(o);
    }
    edges.push_back(Spawn(edge_args, JoinPath(p.logs, id + ".log")));
    // An edge listens once it has registered with the cloud.
    std::string edge_port = WaitForPort(edges.back(), port_file, deadline);
    if (edge_port.empty()) {
      Terminate(coord);
      for (pid_t pid : edges) Terminate(pid);
      return Fail(cmd, Status::Internal("edge " + id + " did not start; see " +
                                        JoinPath(p.logs, id + ".log")));
    }
    worker_addresses.push_back("127.0.0.1:" + edge_port);
    std::printf("edge %s on 127.0.0.1:%s\n", id.c_str(), edge_port.c_str());
  }
  if (worker_addresses.empty()) worker_addresses.push_back("127.0.0.1:" + port);
  std::vector<pid_t> workers;
  // Worker processes, or executor processes hosting the virtual users.
  const bool v = sim.virtual_users();
  const int processes = v ? sim.executors : sim.workers;
  if (v) {
    std::printf("starting %d executors hosting %d users\n", sim.executors,
                sim.users);
  } else {
    std::printf("starting %d workers\n", sim.workers);
  }
  std::fflush(stdout);
  for (int i = 0; i < processes; ++i) {
    const std::string id = (v ? "executor-" : "worker-") + std::to_string(i);
    const std::string& address = worker_addresses[i % worker_addresses.size()];
    std::vector<std::string> args{v ? "executor" : "worker", "--config",
                                  p.worker_yaml};
    for (const std::string& o : v ? ExecutorOverrides(sim, i, address, p.certs)
                                  : WorkerOverrides(sim, i, address, p.certs)) {
      args.push_back("--set");
      args.push_back(o);
    }
    workers.push_back(Spawn(args, JoinPath(p.logs, id + ".log")));
  }
  int coord_exit = WaitUntil(coord, deadline);
  if (coord_exit == -1) {
    Terminate(coord);
    for (pid_t w : edges) Terminate(w);
    for (pid_t w : workers) Terminate(w);
    return Fail(cmd, Status::DeadlineExceeded(
                         "simulation.timeout_s reached; see " + p.logs));
  }
  int failed_workers = 0;
  for (pid_t e : edges) {
    int code = WaitUntil(e, Clock::now() + std::chrono::seconds(20));
    if (code == -1) Terminate(e);
    if (code != 0) {
      FP_LOG_WARN("simulate", "an edge did not exit cleanly (code {})", code);
    }
  }
  for (size_t i = 0; i < workers.size(); ++i) {
    int code = WaitUntil(workers[i], Clock::now() + std::chrono::seconds(20));
    if (code == -1) {
      Terminate(workers[i]);
      code = -1;
    }
    if (code != 0) ++failed_workers;
  }
  if (coord_exit != 0) {
    return Fail(cmd, Status::Internal("the coordinator exited with " +
                                      std::to_string(coord_exit) + "; see " +
                                      JoinPath(p.logs, "coordinator.log")));
  }
  if (failed_workers > 0) {
    FP_LOG_WARN("simulate", "{} worker(s) did not exit cleanly; see {}",
                failed_workers, p.logs);
  }
  return kExitOk;
}

// Whether a coordinator and the workers load the same frozen base.
bool SameBase(const worker::ModelOptions& a, const worker::ModelOptions& b) {
  return !a.upstream() && !b.upstream() && a.path == b.path &&
         a.dtype == b.dtype && a.base_dtype == b.base_dtype &&
         a.device == b.device;
}

int RunThreads(const SimulationOptions& sim, const RunPaths& p,
               const std::string& cmd) {
  auto ccfg = coordinator::LoadCoordinatorConfig(p.coordinator_yaml, {});
  if (!ccfg.ok()) return Fail(cmd, ccfg.status());
  torch::set_num_threads(1);  // many trainers share the cores
  const int slots =
      sim.compute_threads > 0
          ? sim.compute_threads
          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  // Only `slots` threads run steps at a time; with glibc's default arenas
  // (8 per core) each would keep a step's peak of free memory.
  LimitArenas(slots);
  auto base_cfg = worker::LoadWorkerConfig(p.worker_yaml, {});
  if (!base_cfg.ok()) return Fail(cmd, base_cfg.status());
  auto base = worker::LoadWorkerBase(base_cfg->model);
  if (!base.ok()) return Fail(cmd, base.status());
  // The coordinator reads the same frozen weights (adapter shapes,
  // server-side eval): one copy in the process when both name the same.
  const bool same_base = SameBase(ccfg->model, base_cfg->model);
  auto coord = coordinator::Coordinator::Create(
      *ccfg, same_base ? base->weights : nullptr);
  if (!coord.ok()) return Fail(cmd, coord.status());
  auto server = coordinator::FederationServer::Start(**coord, ccfg->server);
  if (!server.ok()) return Fail(cmd, server.status());
  auto compute = std::make_shared<worker::ComputeSlots>(slots);
  std::vector<std::unique_ptr<worker::WorkerClient>> clients;
  for (int i = 0; i < sim.workers; ++i) {
    std::string addr = "127.0.0.1:" + std::to_string((*server)->port());
    auto wc = worker::LoadWorkerConfig(p.worker_yaml,
                                       WorkerOverrides(sim, i, addr, p.certs));
    if (!wc.ok()) return Fail(cmd, wc.status());
    auto client = worker::WorkerClient::Create(*wc, base->weights,
                                               base->tokenizer, compute);
    if (!client.ok()) return Fail(cmd, client.status());
    clients.push_back(std::move(client).value());
  }
  std::printf(
      "coordinator on 127.0.0.1:%d; %d workers as threads sharing "
      "one base model%s, at most %d computing at once\n",
      (*server)->port(), sim.workers, same_base ? " with the coordinator" : "",
      slots);
  std::fflush(stdout);
  std::vector<std::thread> threads;
  for (auto& c : clients) {
    threads.emplace_back([&c] {
      Status s = c->Run();
      if (!s.ok()) {
        FP_LOG_WARN("simulate", "worker '{}' stopped: {}", c->id(),
                    s.message());
      }
    });
  }
  Status s = (*coord)->Run();
  for (auto& c : clients) c->Stop();
  for (auto& t : threads) t.join();
  FP_LOG_INFO("simulate",
              "compute slots: {} of {} used at most, {} waits for a slot",
              compute->peak_in_use(), slots, compute->waits());
  (*server)->Shutdown();
  if (!s.ok()) return Fail(cmd, s);
  return kExitOk;
}

}  // namespace

int RunSimulate(const Args& args) {
  const std::string cmd = "simulate";
  std::string config_path, out_dir;
  std::vector<std::string> overrides;
  bool check_only = false;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "config", po::value(&config_path)->required(),
      "simulation YAML (e.g. configs/quickstart.yaml)")(
      "out", po::value(&out_dir),
      "directory for logs, metrics.jsonl, checkpoints and the adapter")(
      "set", po::value(&overrides)->composing(),
      "override a key: --set coordinator.federation.rounds=3 (repeatable)")(
      "check", po::bool_switch(&check_only),
      "validate the config (every section) and exit");
  po::variables_map vm;
  int code = 0;
  if (!ParseArgs(cmd, "--config FILE --out DIR [--set key=value ...]", desc,
                 args, &vm, &code)) {
    return code;
  }
  if (out_dir.empty() && !check_only) {
    std::cerr << "fedpeft simulate: the option '--out' is required\n";
    return kExitUsage;
  }
  if (out_dir.empty()) out_dir = "out/simulate-check";  // never written
  auto config = LoadSimulationConfig(config_path, overrides, out_dir);
  if (!config.ok()) return Fail(cmd, config.status());
  const SimulationOptions& sim = config->sim;
  const RunPaths& p = config->paths;
  if (check_only) {
    if (sim.virtual_users()) {
      std::printf("%s: config OK (%d users on %d executors, virtual)\n",
                  config_path.c_str(), sim.users, sim.executors);
    } else {
      std::printf("%s: config OK (%d workers, %s)\n", config_path.c_str(),
                  sim.workers, sim.mode.c_str());
    }
    return kExitOk;
  }
  const int participants = sim.participants();
  std::error_code ec;
  fs::remove(p.port_file, ec);
  fs::remove(p.metrics, ec);
  fs::remove_all(p.checkpoints, ec);
  Status s = EnsureDirectory(p.logs);
  if (s.ok() && !p.certs.empty()) {
    s = MakeThrowAwayCertificates(sim, p.certs);
    if (s.ok()) {
      std::printf("mutual TLS with throw-away certificates in %s\n",
                  p.certs.c_str());
    }
  }
  if (!s.ok()) return Fail(cmd, s);
  for (const std::string& note : config->notes) {
    std::printf("%s\n", note.c_str());
  }
  s = WriteFileAtomic(p.coordinator_yaml, ToYaml(config->coordinator));
  if (s.ok() && sim.edges > 0) {
    s = WriteFileAtomic(p.edge_yaml, ToYaml(config->edge));
  }
  if (s.ok()) s = WriteFileAtomic(p.worker_yaml, ToYaml(config->worker));
  if (!s.ok()) return Fail(cmd, s);

  auto t0 = Clock::now();
  int rc = sim.mode == "threads" ? RunThreads(sim, p, cmd)
                                 : RunProcesses(sim, p, cmd);
  if (rc != kExitOk) return rc;
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  // The merged global adapter, in PEFT format.
  auto ckpt = coordinator::LoadLatestCheckpoint(p.checkpoints);
  if (!ckpt.ok()) return Fail(cmd, ckpt.status());
  auto options =
      peft::AdapterConfigFromJson(ckpt->adapter_config.dump(), p.checkpoints);
  if (!options.ok()) return Fail(cmd, options.status());
  const std::string adapter_dir = JoinPath(out_dir, "adapter");
  s = peft::SaveAdapter(adapter_dir, *options, ckpt->global, ckpt->base_model);
  if (!s.ok()) return Fail(cmd, s);

  // Summary: the metrics of every round, bytes, and what it learned.
  PrintRoundTable(p.metrics, seconds,
                  std::to_string(participants) +
                      (sim.virtual_users() ? " users" : " workers") + " (" +
                      sim.mode + ")");

  if (sim.sample_tokens > 0) {
    // The coordinator's tokenizer (model.tokenizer), as its server eval used.
    auto ccfg = coordinator::LoadCoordinatorConfig(p.coordinator_yaml, {});
    if (!ccfg.ok()) return Fail(cmd, ccfg.status());
    auto base =
        LoadBase(ckpt->base_model, ccfg->model.tokenizer, model::LoadOptions{});
    if (!base.ok()) return Fail(cmd, base.status());
    auto pm = peft::PeftModel::Create(base->weights, *options, 0);
    if (!pm.ok()) return Fail(cmd, pm.status());
    model::LlamaModel plain(base->weights);
    model::GenerateOptions g;
    g.max_new_tokens = sim.sample_tokens;
    auto prompt = base->tokenizer->Encode(sim.sample_prompt, true, false);
    std::string before =
        base->tokenizer->Decode(model::Generate(plain, prompt, g));
    s = (*pm)->LoadAdapterTensors(ckpt->global);
    if (!s.ok()) return Fail(cmd, s);
    std::string after =
        base->tokenizer->Decode(model::Generate((*pm)->model(), prompt, g));
    for (std::string* t : {&before, &after}) {
      for (char& c : *t) {
        if (c == '\n') c = ' ';
      }
    }
    std::printf("sample, base:          %s%s\n", sim.sample_prompt.c_str(),
                before.c_str());
    std::printf("sample, base+adapter:  %s%s\n", sim.sample_prompt.c_str(),
                after.c_str());
  }
  std::printf("outputs: %s (metrics.jsonl, logs/, checkpoints/, adapter/)\n",
              out_dir.c_str());
  return kExitOk;
}

}  // namespace cli
}  // namespace fedpeft
