// Small helpers shared by the benchmarks in bench/: medians, wall-clock
// timing, comma-separated flag values and a line describing the machine.
// Header-only; nothing here allocates beyond what it returns.
//
// Thread-safety: reentrant.
#ifndef FEDPEFT_BENCH_BENCH_UTIL_H_
#define FEDPEFT_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fedpeft {
namespace bench {

// The median of `v` (the mean of the middle two for an even count).
// REQUIRES: !v.empty().
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Wall-clock seconds one call of `f` takes.
template <typename F>
double Seconds(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// Seconds per call of `f`, from one run that loops `f` until at least
// `min_seconds` have passed: for work that takes microseconds, where a
// single call would time the clock rather than the work.
template <typename F>
double SecondsPerCall(F&& f, double min_seconds = 0.02) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  int calls = 0;
  double elapsed = 0;
  do {
    f();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds);
  return elapsed / calls;
}

// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// The 1-minute load average from /proc/loadavg, or "" where there is none.
inline std::string LoadAverage() {
  std::ifstream loadavg("/proc/loadavg");
  std::string one_minute;
  loadavg >> one_minute;
  return one_minute;
}

// "2 cores, load average 3.51 (1 min)" — the context a wall-clock number on
// a shared machine needs. The load average is left out where /proc is not.
inline std::string MachineSummary() {
  std::ostringstream out;
  out << std::thread::hardware_concurrency() << " cores";
  const std::string load = LoadAverage();
  if (!load.empty()) out << ", load average " << load << " (1 min)";
  return out.str();
}

// A benchmark's main(): `parse(argc, argv, &args)` (false: `usage()`, exit
// 2), then `run(args)`; an exception becomes exit 1 naming `program`.
template <typename Args, typename Parse, typename Usage, typename Run>
int BenchMain(int argc, char** argv, const char* program, Parse parse,
              Usage usage, Run run) {
  Args args;
  if (!parse(argc, argv, &args)) {
    usage();
    return 2;
  }
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace bench
}  // namespace fedpeft

#endif  // FEDPEFT_BENCH_BENCH_UTIL_H_
