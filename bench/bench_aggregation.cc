// Aggregation throughput: how fast the coordinator turns N client deltas
// into the next global adapter, in GB/s of update data consumed (N × adapter
// bytes / seconds), next to std::memcpy of the same buffers measured in the
// same run. memcpy is the floor any aggregation must read through: a
// strategy that reaches a large share of it is bound by memory, not by
// per-tensor overhead.
//
//   fedpeft_bench_aggregation                      # both adapters, 8 and 32
//   fedpeft_bench_aggregation --clients 8 --adapters llama7b-r8-qv
//       --strategies fedavg --repeats 9 --threads 2   (one line)
//
// The memcpy baseline copies every client's tensors, key by key, into one
// destination buffer per key (allocated and touched before timing) — the
// same loop order and the same cache-resident destination as the weighted
// mean's per-key accumulator, so the two differ only in the arithmetic.
// Every repeat runs memcpy and then each strategy on the same inputs;
// reported times are medians over repeats (one untimed warm-up each).
// --threads sets LibTorch's intra-op threads (default 1, like memcpy).
//
// Prints a Markdown table on stdout; progress goes to stderr.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "aggregation/strategy.h"
#include "bench/bench_util.h"

namespace fedpeft {
namespace bench {
namespace {

using aggregation::ClientUpdate;

// LoRA on q_proj and v_proj of every layer: A [r, in], B [out, r].
struct Adapter {
  std::string name;
  std::string description;
  int64_t layers;
  int64_t hidden;  // q_proj in/out, v_proj in
  int64_t kv_dim;  // v_proj out (smaller than hidden with GQA)
  int64_t rank;
};

const std::vector<Adapter>& Adapters() {
  static const auto* adapters = new std::vector<Adapter>{
      {"llama7b-r8-qv", "Llama-2-7B, r=8 on q,v", 32, 4096, 4096, 8},
      {"tinyllama-r8-qv", "TinyLlama-1.1B, r=8 on q,v", 22, 2048, 256, 8},
  };
  return *adapters;
}

TensorMap AdapterShapes(const Adapter& a) {
  TensorMap t;
  for (int64_t l = 0; l < a.layers; ++l) {
    const std::string p =
        "base_model.model.model.layers." + std::to_string(l) + ".self_attn.";
    t[p + "q_proj.lora_A.weight"] = torch::empty({a.rank, a.hidden});
    t[p + "q_proj.lora_B.weight"] = torch::empty({a.hidden, a.rank});
    t[p + "v_proj.lora_A.weight"] = torch::empty({a.rank, a.hidden});
    t[p + "v_proj.lora_B.weight"] = torch::empty({a.kv_dim, a.rank});
  }
  return t;
}

struct Args {
  std::vector<int> clients = {8, 32};
  std::vector<std::string> adapters = {"llama7b-r8-qv", "tinyllama-r8-qv"};
  std::vector<std::string> strategies = aggregation::StrategyNames();
  int repeats = 5;
  int threads = 1;
};

void Usage() {
  std::cerr << "usage: fedpeft_bench_aggregation [--clients 8,32] "
               "[--adapters llama7b-r8-qv,tinyllama-r8-qv] "
               "[--strategies fedavg,...] [--repeats 5] [--threads 1]\n";
}

bool ParseArgs(int argc, char** argv, Args* args) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h" || i + 1 >= argc) return false;
    const std::string value = argv[++i];
    try {
      if (flag == "--clients") {
        args->clients.clear();
        for (const auto& c : SplitCommas(value)) {
          args->clients.push_back(std::stoi(c));
        }
      } else if (flag == "--adapters") {
        args->adapters = SplitCommas(value);
      } else if (flag == "--strategies") {
        args->strategies = SplitCommas(value);
      } else if (flag == "--repeats") {
        args->repeats = std::stoi(value);
      } else if (flag == "--threads") {
        args->threads = std::stoi(value);
      } else {
        std::cerr << "unknown flag " << flag << "\n";
        return false;
      }
    } catch (const std::exception&) {
      std::cerr << flag << ": expected a number, got '" << value << "'\n";
      return false;
    }
  }
  for (int c : args->clients) {
    if (c < 1) return false;
  }
  return args->repeats >= 1 && args->threads >= 1;
}

struct Row {
  std::string adapter;
  int64_t params = 0;
  int clients = 0;
  std::string method;
  double seconds = 0;
  double bytes = 0;
  double memcpy_seconds = 0;
};

int Run(const Args& args) {
  torch::set_num_threads(args.threads);
  std::vector<Row> rows;
  for (const std::string& adapter_name : args.adapters) {
    const Adapter* adapter = nullptr;
    for (const Adapter& a : Adapters()) {
      if (a.name == adapter_name) adapter = &a;
    }
    if (!adapter) {
      std::cerr << "unknown adapter '" << adapter_name << "'\n";
      return 2;
    }
    const TensorMap shapes = AdapterShapes(*adapter);
    int64_t params = 0;
    for (const auto& [key, t] : shapes) params += t.numel();

    for (int n : args.clients) {
      std::cerr << "== " << adapter->name << " x " << n << " clients ("
                << params * 4 / 1e6 << " MB each), " << args.repeats
                << " repeats, " << args.threads << " thread(s)\n";
      torch::manual_seed(0);
      TensorMap global;
      for (const auto& [key, t] : shapes) {
        global[key] = torch::randn(t.sizes()) * 0.02;
      }
      std::vector<ClientUpdate> updates(n);
      for (int k = 0; k < n; ++k) {
        updates[k].worker_id = "w" + std::to_string(k);
        updates[k].num_samples = 100 + k;
        for (const auto& [key, t] : shapes) {
          updates[k].delta[key] = torch::randn(t.sizes()) * 1e-3;
        }
      }
      // memcpy destinations: one per key, touched before timing.
      std::vector<std::vector<float>> dst;
      for (const auto& [key, t] : shapes) dst.emplace_back(t.numel(), 1.0f);

      const double bytes = static_cast<double>(n) * params * sizeof(float);
      auto copy_all = [&] {
        size_t i = 0;
        for (const auto& [key, t] : shapes) {
          const size_t size = t.numel() * sizeof(float);
          for (const ClientUpdate& u : updates) {
            std::memcpy(dst[i].data(), u.delta.at(key).data_ptr<float>(), size);
          }
          ++i;
        }
      };

      std::map<std::string, std::unique_ptr<aggregation::Strategy>> made;
      for (const std::string& name : args.strategies) {
        aggregation::StrategyOptions options;
        options.name = name;
        // The default 0.1 cuts nothing at 8 clients (floor(0.8) = 0), which
        // would time the plain mean; 0.2 cuts 1 of 8 and 6 of 32 each end.
        options.trim_ratio = 0.2;
        auto s = aggregation::MakeStrategy(options);
        if (!s.ok()) {
          std::cerr << s.status().ToString() << "\n";
          return 2;
        }
        made[name] = std::move(s).value();
      }
      auto aggregate = [&](aggregation::Strategy& s) {
        aggregation::RoundContext ctx;
        ctx.round = 1;
        auto out = s.Aggregate(ctx, global, updates);
        if (!out.ok()) {
          std::cerr << out.status().ToString() << "\n";
          std::exit(1);
        }
      };

      // Warm-up (page faults, allocator caches), then interleaved repeats.
      copy_all();
      for (auto& [name, s] : made) aggregate(*s);
      std::vector<double> memcpy_times;
      std::map<std::string, std::vector<double>> times;
      for (int r = 0; r < args.repeats; ++r) {
        memcpy_times.push_back(Seconds(copy_all));
        for (const std::string& name : args.strategies) {
          times[name].push_back(Seconds([&] { aggregate(*made[name]); }));
        }
        std::cerr << "  repeat " << r + 1 << "/" << args.repeats << ": memcpy "
                  << memcpy_times.back() * 1e3 << " ms";
        for (const std::string& name : args.strategies) {
          std::cerr << ", " << name << " " << times[name].back() * 1e3 << " ms";
        }
        std::cerr << "\n";
      }
      volatile float sink = dst.front().front();
      (void)sink;
      const double memcpy_s = Median(memcpy_times);
      rows.push_back(
          {adapter->name, params, n, "memcpy", memcpy_s, bytes, memcpy_s});
      for (const std::string& name : args.strategies) {
        rows.push_back({adapter->name, params, n, name, Median(times[name]),
                        bytes, memcpy_s});
      }
    }
  }

  std::printf(
      "| adapter | params/client | MB/client | clients | method | median ms "
      "| GB/s | memcpy GB/s | / memcpy |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    const double gbs = r.bytes / r.seconds / 1e9;
    const double memcpy_gbs = r.bytes / r.memcpy_seconds / 1e9;
    std::printf("| %s | %.2fM | %.1f | %d | %s | %.2f | %.2f | %.2f | %.2f |\n",
                r.adapter.c_str(), r.params / 1e6, r.params * 4 / 1e6,
                r.clients, r.method.c_str(), r.seconds * 1e3, gbs, memcpy_gbs,
                r.memcpy_seconds / r.seconds);
  }
  std::printf(
      "\nGB/s = clients x adapter bytes / median seconds over %d repeats; "
      "LibTorch intra-op threads: %d; memcpy single-threaded; "
      "trimmed_mean with trim_ratio 0.2. "
      "Target: fedavg >= 0.50 of memcpy.\n",
      args.repeats, args.threads);
  for (const Row& r : rows) {
    if (r.method != "fedavg") continue;
    const double ratio = r.memcpy_seconds / r.seconds;
    std::printf("- fedavg, %s x %d: %.2f of memcpy, %s\n", r.adapter.c_str(),
                r.clients, ratio, ratio >= 0.5 ? "meets" : "MISSES");
  }
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace fedpeft

int main(int argc, char** argv) {
  namespace b = fedpeft::bench;
  return b::BenchMain<b::Args>(argc, argv, "fedpeft_bench_aggregation",
                               b::ParseArgs, b::Usage, b::Run);
}
