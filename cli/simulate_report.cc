// The table `fedpeft simulate` prints at the end of a run.
#include "cli/simulate_report.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/logging.h"

namespace fedpeft {
namespace cli {
namespace {

std::string Fixed(double v, int digits = 4) {
  if (!std::isfinite(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string Mib(uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MiB", b / 1048576.0);
  return buf;
}

}  // namespace

void PrintRoundTable(const std::string& metrics_path, double seconds,
                     const std::string& who) {
  std::ifstream metrics(metrics_path);
  std::string line;
  uint64_t up = 0, down = 0;
  int rounds = 0;
  double epsilon = std::nan(""), delta = std::nan("");
  std::printf(
      "\nround  answered  dropped  train_loss  eval_loss  server_eval  "
      "up         down       ranks     frozen  seconds  epsilon\n");
  while (std::getline(metrics, line)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
      // A field of an unexpected type would throw from value() below.
      for (const char* k : {"bytes_up", "bytes_down", "round", "answered",
                            "selected", "dropped", "rank_min", "rank_max"}) {
        if (j.contains(k) && !j[k].is_number_integer()) {
          throw std::invalid_argument(k);
        }
      }
      if (j.contains("aggregated") && !j["aggregated"].is_boolean()) {
        throw std::invalid_argument("aggregated");
      }
    } catch (...) {
      FP_LOG_WARN("simulate", "{}: skipping a malformed metrics line",
                  metrics_path);
      continue;
    }
    auto num = [&](const char* k) {
      return j[k].is_number() ? j[k].get<double>() : std::nan("");
    };
    uint64_t bu = j.value("bytes_up", 0ull), bd = j.value("bytes_down", 0ull);
    up += bu;
    down += bd;
    if (j.value("aggregated", false)) ++rounds;
    std::string ranks = std::to_string(j.value("rank_min", 0ll)) + ".." +
                        std::to_string(j.value("rank_max", 0ll));
    std::printf(
        "%-6lld %3d/%-5d %-8d %-11s %-10s %-12s %-10s %-10s %-9s %4.0f%%   "
        "%-8.1f %s\n",
        j.value("round", 0ll), j.value("answered", 0), j.value("selected", 0),
        j.value("dropped", 0), Fixed(num("train_loss")).c_str(),
        Fixed(num("eval_loss")).c_str(), Fixed(num("server_eval_loss")).c_str(),
        Mib(bu).c_str(), Mib(bd).c_str(), ranks.c_str(),
        100 * num("frozen_fraction"), num("seconds"),
        std::isfinite(num("epsilon")) ? Fixed(num("epsilon")).c_str() : "-");
    if (std::isfinite(num("epsilon"))) {
      epsilon = num("epsilon");
      delta = num("delta");
    }
  }
  std::printf(
      "\n%d rounds aggregated in %.1f s with %s; bytes up %s, down %s\n",
      rounds, seconds, who.c_str(), Mib(up).c_str(), Mib(down).c_str());
  if (std::isfinite(epsilon)) {
    std::printf("privacy: (epsilon %.3f, delta %.3g) user-level DP spent\n",
                epsilon, delta);
  }
}

}  // namespace cli
}  // namespace fedpeft
