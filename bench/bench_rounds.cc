// Round overhead of the federated runtime: a coordinator and N in-process
// workers (threads sharing one base model) talking gRPC over 127.0.0.1.
//
// overhead = round wall time - the slowest worker's compute time
// (training + local eval, as each worker reports it), i.e. what selection,
// task long polls, adapter downloads, uploads, validation, aggregation,
// checkpointing and logging add on top of the work itself. Also prints bytes
// on the wire per round per worker.
//
//   build/bench/fedpeft_bench_rounds [--workers 8,32,128] [--rounds 4]
//
// Medians over rounds 2..R (round 1 includes connection set-up).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/logging.h"
#include "coordinator/coordinator.h"
#include "coordinator/service.h"
#include "worker/worker_client.h"

namespace fp = fedpeft;

namespace {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  std::string text(s);
  size_t start = 0;
  while (start < text.size()) {
    size_t comma = text.find(',', start);
    out.push_back(std::stoi(text.substr(start, comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

struct Result {
  int workers = 0;
  double round_s = 0;
  double compute_s = 0;
  double overhead_s = 0;
  double bytes_per_worker = 0;
};

Result RunOne(int n, int rounds, const std::string& source,
              const std::string& dir) {
  std::filesystem::remove_all(dir);
  std::vector<std::string> c = {
      "server.address=127.0.0.1:0",
      "federation.rounds=" + std::to_string(rounds),
      "federation.min_available=" + std::to_string(n),
      "federation.quorum=1.0",
      "federation.round_deadline_s=600",
      "federation.heartbeat_interval_ms=1000",
      "federation.worker_timeout_s=60",
      "federation.task_wait_ms=1000",
      "federation.shutdown_grace_s=2",
      "model.path=" + source + "/assets/stories260K",
      "peft.lora.r=8",
      "train.local_steps=1",
      "train.batch_size=2",
      "checkpoint.dir=" + dir + "/ckpt",
      "logging.metrics_file=",
      "tls.insecure=true",  // one process on 127.0.0.1
  };
  auto cfg = fp::coordinator::LoadCoordinatorConfig("", c);
  if (!cfg.ok()) {
    std::fprintf(stderr, "%s\n", cfg.status().ToString().c_str());
    std::exit(1);
  }
  auto coord = fp::coordinator::Coordinator::Create(*cfg);
  if (!coord.ok()) {
    std::fprintf(stderr, "%s\n", coord.status().ToString().c_str());
    std::exit(1);
  }
  auto server = fp::coordinator::FederationServer::Start(**coord, cfg->server);
  if (!server.ok()) std::exit(1);
  std::string addr = "127.0.0.1:" + std::to_string((*server)->port());
  std::vector<std::string> w = {
      "model.path=" + source + "/assets/stories260K",
      "data.path=" + source + "/assets/data/tinyshakespeare/input.txt",
      "data.max_records=2000",
      "data.max_seq_len=64",
      "server.address=" + addr,
      "server.task_wait_ms=1000",
      "tls.insecure=true",
  };
  auto base_cfg = fp::worker::LoadWorkerConfig("", w);
  if (!base_cfg.ok()) {
    std::fprintf(stderr, "%s\n", base_cfg.status().ToString().c_str());
    std::exit(1);
  }
  auto base = fp::worker::LoadWorkerBase(base_cfg->model);
  if (!base.ok()) std::exit(1);
  std::vector<std::unique_ptr<fp::worker::WorkerClient>> clients;
  for (int i = 0; i < n; ++i) {
    auto wc = *base_cfg;
    wc.worker.id = "w" + std::to_string(i);
    wc.shard = std::to_string(i) + "/" + std::to_string(n);
    wc.data.partition = "iid";
    auto client =
        fp::worker::WorkerClient::Create(wc, base->weights, base->tokenizer);
    if (!client.ok()) {
      std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
      std::exit(1);
    }
    clients.push_back(std::move(client).value());
  }
  std::vector<std::thread> threads;
  for (auto& cl : clients) threads.emplace_back([&cl] { (void)cl->Run(); });
  fp::Status s = (*coord)->Run();
  for (auto& cl : clients) cl->Stop();
  for (auto& t : threads) t.join();
  (*server)->Shutdown();
  if (!s.ok()) std::exit(1);

  std::vector<double> round_s, compute_s, overhead_s, bytes;
  auto history = (*coord)->History();
  for (size_t i = 1; i < history.size(); ++i) {  // skip round 1 (set-up)
    const auto& m = history[i];
    round_s.push_back(m.seconds);
    compute_s.push_back(m.max_train_seconds);
    overhead_s.push_back(m.seconds - m.max_train_seconds);
    bytes.push_back(static_cast<double>(m.bytes_up + m.bytes_down) /
                    std::max(1, m.answered));
  }
  Result r;
  r.workers = n;
  r.round_s = Median(round_s);
  r.compute_s = Median(compute_s);
  r.overhead_s = Median(overhead_s);
  r.bytes_per_worker = Median(bytes);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes{8, 32, 128};
  int rounds = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--workers")) sizes = ParseList(argv[i + 1]);
    if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
  }
  fp::SetLogLevel(fp::LogLevel::kWarn);
  torch::set_num_threads(1);
  std::string source = FEDPEFT_SOURCE_DIR;
  std::string dir =
      std::filesystem::temp_directory_path() / "fedpeft_bench_rounds";
  std::printf(
      "| workers | round s | slowest worker compute s | overhead s | "
      "bytes/round/worker |\n|---|---|---|---|---|\n");
  for (int n : sizes) {
    Result r = RunOne(n, rounds, source, dir);
    std::printf("| %d | %.3f | %.3f | %.3f | %.0f |\n", r.workers, r.round_s,
                r.compute_s, r.overhead_s, r.bytes_per_worker);
    std::fflush(stdout);
  }
  std::filesystem::remove_all(dir);
  return 0;
}
