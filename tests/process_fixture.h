// A test that runs child processes: a fresh scratch directory per test
// (kept when the test fails, for its logs), and every child still running
// killed when the test ends.
#ifndef FEDPEFT_TESTS_PROCESS_FIXTURE_H_
#define FEDPEFT_TESTS_PROCESS_FIXTURE_H_

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace fedpeft {

class ProcessTest : public ::testing::Test {
 protected:
  // The directory is <temp>/<prefix><pid>_<test name>.
  explicit ProcessTest(std::string prefix) : prefix_(std::move(prefix)) {}

  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           (prefix_ + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    for (pid_t pid : pids_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  std::string Path(const std::string& name) const {
    return (dir_ / name).string();
  }

  // Exit code (128 + the signal when killed), or -1 when `pid` still runs
  // after `timeout`.
  int Wait(pid_t pid, std::chrono::seconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pids_.erase(std::remove(pids_.begin(), pids_.end(), pid), pids_.end());
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

  std::filesystem::path dir_;
  std::vector<pid_t> pids_;  // children to kill at the end

 private:
  std::string prefix_;
};

}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_PROCESS_FIXTURE_H_
