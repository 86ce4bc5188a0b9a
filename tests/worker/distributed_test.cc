// A worker over several processes (worker/distributed.h): its config keys,
// and data-parallel training in real processes over loopback sockets. The
// ranks are this test binary run again (fork + exec of /proc/self/exe) as
// DistributedChild.TrainsItsShare, told what to do through the environment;
// rank 0 listens on port 0 and writes the port it got to a file that the
// test hands to rank 1 (no port is picked here for another process).

#include "worker/distributed.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "model/loader.h"
#include "model/tokenizer.h"
#include "peft/peft_io.h"
#include "tests/process_fixture.h"
#include "tests/test_paths.h"
#include "worker/data_parallel.h"
#include "worker/train_config.h"
#include "worker/worker_config.h"

extern char** environ;

namespace fedpeft {
namespace worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// ---- config ----------------------------------------------------------------

StatusOr<WorkerConfig> WorkerWith(std::vector<std::string> sets) {
  return LoadWorkerConfig(kSource + "/configs/flat/worker.yaml", sets);
}

TEST(DistributedConfigTest, DefaultIsOneProcessAndSetWorks) {
  auto one = WorkerWith({});
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(one->worker.distributed.world_size, 1);
  EXPECT_EQ(one->worker.distributed.rank, 0);
  EXPECT_EQ(one->worker.distributed.master_address, "127.0.0.1:29500");
  EXPECT_EQ(one->worker.distributed.timeout_s, 300);
  EXPECT_FALSE(one->worker.distributed.enabled());

  auto two = WorkerWith({"worker.distributed.world_size=2",
                         "worker.distributed.rank=1",
                         "worker.distributed.master_address=10.0.0.7:29511",
                         "worker.distributed.timeout_s=20"});
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  EXPECT_TRUE(two->worker.distributed.enabled());
  EXPECT_EQ(two->worker.distributed.rank, 1);
  EXPECT_EQ(two->worker.distributed.master_address, "10.0.0.7:29511");
  EXPECT_EQ(two->worker.distributed.timeout_s, 20);
}

TEST(DistributedConfigTest, BadValuesNameTheKeyAndValue) {
  struct Case {
    std::vector<std::string> sets;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"worker.distributed.world_size=0"},
       "worker.distributed.world_size: must be >= 1 (1 = one process), got 0"},
      {{"worker.distributed.world_size=2", "worker.distributed.rank=2"},
       "worker.distributed.rank: must be in [0, world_size) = [0, 2), got 2"},
      {{"worker.distributed.rank=-1"},
       "worker.distributed.rank: must be in [0, world_size) = [0, 1), got -1"},
      {{"worker.distributed.master_address=localhost"},
       "worker.distributed.master_address: expected HOST:PORT (rank 0's "
       "store, e.g. 10.0.0.1:29500), got 'localhost'"},
      {{"worker.distributed.master_address=host:99999"},
       "worker.distributed.master_address: expected HOST:PORT"},
      {{"worker.distributed.world_size=2", "worker.distributed.rank=1",
        "worker.distributed.master_address=127.0.0.1:0"},
       "worker.distributed.master_address: port 0 (any free port) is for "
       "rank 0 only"},
      {{"worker.distributed.timeout_s=0"},
       "worker.distributed.timeout_s: must be > 0, got 0"},
      {{"worker.distributed.world_sise=2"}, "worker.distributed.world_sise"},
  };
  for (const Case& c : cases) {
    auto got = WorkerWith(c.sets);
    ASSERT_FALSE(got.ok()) << c.sets[0];
    EXPECT_THAT(got.status().message(), HasSubstr(c.expected));
  }
  // `fedpeft train` reads the same keys at the top level.
  auto job =
      LoadTrainJobConfig(kSource + "/configs/local_train.yaml",
                         {"distributed.world_size=2", "distributed.rank=3"});
  ASSERT_FALSE(job.ok());
  EXPECT_THAT(job.status().message(),
              HasSubstr("distributed.rank: must be in [0, world_size) = "
                        "[0, 2), got 3"));
}

// ---- data-parallel training
// --------------------------------------------------

// One setup for the parent's one-process run and for every rank: the same
// model, examples, adapter initialisation and options.
struct TrainSetup {
  std::shared_ptr<const model::LlamaWeights> weights;
  std::vector<data::Example> train;
  std::unique_ptr<peft::PeftModel> peft;
  TrainOptions options;
};

TrainSetup MakeSetup() {
  torch::set_num_threads(1);
  TrainSetup s;
  auto w = model::LoadModel(kModel);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  s.weights = *w;
  auto tok = model::LoadTokenizer(kModel + "/tokenizer.model");
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  data::DataOptions d;
  d.path = kShakespeare;
  d.max_seq_len = 48;
  d.max_records = 40;
  auto records = data::LoadRecords(d);
  EXPECT_TRUE(records.ok()) << records.status().ToString();
  s.train = data::Tokenize(*records, **tok, d);
  peft::PeftOptions o;
  o.lora.r = 4;
  o.lora.alpha = 8;
  auto pm = peft::PeftModel::Create(s.weights, o, 3);
  EXPECT_TRUE(pm.ok()) << pm.status().ToString();
  s.peft = std::move(pm).value();
  // An odd batch (rows split 3/4, so the ranks' token counts differ), two
  // micro-batches a step, and more steps than one epoch holds, so a short
  // last batch and a reshuffle are in it too.
  s.options.batch_size = 7;
  s.options.grad_accum = 2;
  s.options.max_steps = 4;
  s.options.optim.lr = 5e-3;
  s.options.optim.max_grad_norm = 0.05;  // low enough to clip
  s.options.progress_bar = false;
  s.options.log_every = 0;
  s.options.seed = 11;
  return s;
}

TensorMap Snapshot(peft::PeftModel& pm) {
  TensorMap out;
  for (const auto& kv : pm.AdapterTensors()) {
    out[kv.first] = kv.second.detach().clone();
  }
  return out;
}

// The child: one rank, configured by FEDPEFT_DIST_* variables; writes its
// trained adapter to FEDPEFT_DIST_OUT. A failure fails this test, which is
// the child's exit code.
TEST(DistributedChild, TrainsItsShare) {
  const char* rank_env = std::getenv("FEDPEFT_DIST_RANK");
  if (!rank_env) {
    GTEST_SKIP() << "a rank of DistributedTrainTest; runs when it starts it";
  }
  TrainSetup s = MakeSetup();
  ASSERT_FALSE(HasFailure());
  DistributedOptions d;
  d.world_size = 2;
  d.rank = std::atoi(rank_env);
  d.master_address = std::getenv("FEDPEFT_DIST_ADDRESS");
  d.port_file = std::getenv("FEDPEFT_DIST_PORT_FILE");
  d.timeout_s = 30;
  auto group = DistributedGroup::Join(d, torch::Device(torch::kCPU));
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  MakeDataParallel(**group, &s.options);
  if (const char* die = std::getenv("FEDPEFT_DIST_DIE_AT_STEP")) {
    // A rank whose process ends mid-training (a crash, an OOM kill).
    const int at = std::atoi(die);
    auto reduce = s.options.reduce_step;
    auto steps = std::make_shared<int>(0);
    s.options.reduce_step = [reduce, steps, at](StepShare& share) {
      if (++*steps == at) _exit(3);
      reduce(share);
    };
  }
  LocalTrainer trainer(*s.peft, s.options, torch::Device(torch::kCPU));
  TrainResult r;
  try {
    r = trainer.Train(s.train);
  } catch (const std::exception& e) {
    FAIL() << "training failed: " << e.what();
  }
  EXPECT_EQ(r.steps, 4);
  Status saved = peft::SaveAdapter(std::getenv("FEDPEFT_DIST_OUT"),
                                   s.peft->options(), Snapshot(*s.peft), "");
  ASSERT_TRUE(saved.ok()) << saved.ToString();
  std::printf("tokens=%lld loss=%.6f\n", static_cast<long long>(r.tokens),
              r.mean_loss);
}

class DistributedTrainTest : public ProcessTest {
 protected:
  DistributedTrainTest() : ProcessTest("fedpeft_dist_") {}

  // Runs this binary as rank `rank` with `extra` environment variables;
  // output into rank<R>.log.
  pid_t StartRank(int rank, const std::string& address,
                  std::vector<std::string> extra = {}) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.push_back(*e);
    env.push_back("FEDPEFT_DIST_RANK=" + std::to_string(rank));
    env.push_back("FEDPEFT_DIST_ADDRESS=" + address);
    env.push_back("FEDPEFT_DIST_PORT_FILE=" + Path("port"));
    env.push_back("FEDPEFT_DIST_OUT=" + Path("rank" + std::to_string(rank)));
    env.push_back("OMP_WAIT_POLICY=PASSIVE");  // two processes, two cores
    env.insert(env.end(), extra.begin(), extra.end());
    const std::string self = fs::read_symlink("/proc/self/exe").string();
    const std::string filter = "--gtest_filter=DistributedChild.*";
    const std::string log = Path("rank" + std::to_string(rank) + ".log");
    // Everything exec needs is built before fork: the child only execs.
    std::vector<char*> argv{const_cast<char*>(self.c_str()),
                            const_cast<char*>(filter.c_str()), nullptr};
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      execve(self.c_str(), argv.data(), envp.data());
      _exit(127);
    }
    pids_.push_back(pid);
    return pid;
  }

  // The port rank 0 listens on, once written; -1 when it exits first.
  int WaitForPort(pid_t rank0) {
    const auto until = Clock::now() + std::chrono::seconds(120);
    while (Clock::now() < until) {
      std::ifstream in(Path("port"));
      std::string text((std::istreambuf_iterator<char>(in)),
                       std::istreambuf_iterator<char>());
      if (!text.empty() && text.back() == '\n') return std::stoi(text);
      siginfo_t info{};
      if (waitid(P_PID, rank0, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == rank0) {
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

  std::string Log(int rank) {
    std::ifstream in(Path("rank" + std::to_string(rank) + ".log"));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
};

// The key property: two processes, each on its half of every batch, make
// the same update as one process on the whole batch (the token-weighted
// gradient mean is the one-process gradient), and stay identical.
TEST_F(DistributedTrainTest, TwoProcessesMatchOneProcess) {
  pid_t rank0 = StartRank(0, "127.0.0.1:0");
  const int port = WaitForPort(rank0);
  ASSERT_GT(port, 0) << Log(0);
  pid_t rank1 = StartRank(1, "127.0.0.1:" + std::to_string(port));

  // Meanwhile, the same training in this process alone.
  TrainSetup s = MakeSetup();
  ASSERT_FALSE(HasFailure());
  const TensorMap init = Snapshot(*s.peft);
  LocalTrainer trainer(*s.peft, s.options, torch::Device(torch::kCPU));
  TrainResult one = trainer.Train(s.train);
  const TensorMap expected = Snapshot(*s.peft);

  ASSERT_EQ(Wait(rank0, std::chrono::seconds(180)), 0) << Log(0) << Log(1);
  ASSERT_EQ(Wait(rank1, std::chrono::seconds(60)), 0) << Log(0) << Log(1);
  auto got0 = peft::LoadAdapter(Path("rank0"));
  auto got1 = peft::LoadAdapter(Path("rank1"));
  ASSERT_TRUE(got0.ok()) << got0.status().ToString();
  ASSERT_TRUE(got1.ok()) << got1.status().ToString();
  ASSERT_EQ(got0->tensors.size(), expected.size());
  double worst = 0, moved = 0;
  for (const auto& [key, want] : expected) {
    const torch::Tensor& a = got0->tensors.at(key);
    // Both ranks applied the same reduced gradients: bit for bit equal.
    EXPECT_TRUE(torch::equal(a, got1->tensors.at(key))) << key;
    worst = std::max(worst, (a - want).abs().max().item<double>());
    moved = std::max(moved, (want - init.at(key)).abs().max().item<double>());
    EXPECT_TRUE(torch::allclose(a, want, /*rtol=*/1e-4, /*atol=*/1e-6))
        << key << ": max difference " << (a - want).abs().max().item<double>();
  }
  // The update is real (clipped AdamW steps of lr 5e-3), and the ranks
  // match one process to float rounding: the gradients agree to ~1e-6 of
  // their size, which AdamW's normalisation carries into 4e-6 here. (An
  // unweighted mean of the ranks' gradients is off by 1e-2.)
  EXPECT_GT(moved, 1e-3);
  EXPECT_LT(worst, 1e-3 * moved);
  std::printf(
      "one process: %lld tokens, loss %.6f; max |2 ranks - 1| = %.3g "
      "(largest change %.3g)\n%s",
      static_cast<long long>(one.tokens), one.mean_loss, worst, moved,
      Log(0).c_str());
  EXPECT_THAT(Log(0), HasSubstr("tokens=" + std::to_string(one.tokens)));
}

// A rank that dies mid-training: the other fails within timeout_s with an
// error that says what happened, rather than hang.
TEST_F(DistributedTrainTest, LostRankFailsTheOtherWithAClearError) {
  pid_t rank0 = StartRank(0, "127.0.0.1:0");
  const int port = WaitForPort(rank0);
  ASSERT_GT(port, 0) << Log(0);
  pid_t rank1 = StartRank(1, "127.0.0.1:" + std::to_string(port),
                          {"FEDPEFT_DIST_DIE_AT_STEP=2"});
  EXPECT_EQ(Wait(rank1, std::chrono::seconds(120)), 3) << Log(1);
  // timeout_s is 30 in the ranks; a closed socket is usually seen at once.
  const int code = Wait(rank0, std::chrono::seconds(90));
  EXPECT_NE(code, -1) << "rank 0 still runs 90 s after rank 1 died\n" << Log(0);
  EXPECT_NE(code, 0) << Log(0);
  EXPECT_THAT(Log(0), HasSubstr("worker.distributed rank 0 of 2: all-reduce "
                                "of a training step failed"));
}

}  // namespace
}  // namespace worker
}  // namespace fedpeft
