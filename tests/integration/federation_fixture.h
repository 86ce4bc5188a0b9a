// The fixture of the end-to-end federation tests (federation_test.cc,
// hierarchy_test.cc): real `fedpeft` processes over real sockets on
// 127.0.0.1, each server on port 0 writing the port it got to its
// server.port_file, and the helpers that start, wait for and read them.
#ifndef FEDPEFT_TESTS_INTEGRATION_FEDERATION_FIXTURE_H_
#define FEDPEFT_TESTS_INTEGRATION_FEDERATION_FIXTURE_H_

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
#include "tests/process_fixture.h"
#include "tests/test_paths.h"

namespace fedpeft {
namespace testing_util {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;

inline const std::string kBinary = FEDPEFT_BINARY;

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class FederationTest : public ProcessTest {
 protected:
  FederationTest() : ProcessTest("fedpeft_fed_") {}

  // Starts `fedpeft <args>` in the source tree, output into `log` (stderr
  // into `err_log` instead when given).
  pid_t Spawn(const std::vector<std::string>& args, const std::string& log,
              const std::string& err_log = "") {
    pid_t pid = fork();
    if (pid == 0) {
      if (chdir(kSource.c_str()) != 0) _exit(126);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(err_log.empty()
               ? fd
               : open(err_log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644),
           2);
      std::vector<char*> argv{const_cast<char*>(kBinary.c_str())};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(kBinary.c_str(), argv.data());
      _exit(127);
    }
    pids_.push_back(pid);
    return pid;
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

  // `fedpeft certs init --out dir`, then `certs issue` of each {role,
  // name}; the tools' output in certs.txt. False when one fails.
  bool MakeCerts(
      const std::string& dir,
      const std::vector<std::pair<std::string, std::string>>& issue) {
    std::vector<std::vector<std::string>> runs = {
        {"certs", "init", "--out", dir}};
    for (const auto& [role, name] : issue) {
      runs.push_back({"certs", "issue", "--role", role, "--name", name, "--ca",
                      dir, "--out", dir});
    }
    for (const auto& args : runs) {
      if (Wait(Spawn(args, Path("certs.txt")), std::chrono::seconds(30)) != 0) {
        return false;
      }
    }
    return true;
  }
  // The --set arguments that put process `name` on mutual TLS with the
  // certificates MakeCerts made in `dir`.
  static std::vector<std::string> TlsSets(const std::string& dir,
                                          const std::string& name) {
    return {"--set", "tls.ca=" + dir + "/ca.crt",
            "--set", "tls.cert=" + dir + "/" + name + ".crt",
            "--set", "tls.key=" + dir + "/" + name + ".key"};
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

  // What CoordinatorArgs() and StartWorker() start from.
  std::string coordinator_config_ = "configs/flat/coordinator.yaml";
  std::string worker_config_ = "configs/flat/worker.yaml";
};

}  // namespace testing_util
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_INTEGRATION_FEDERATION_FIXTURE_H_
