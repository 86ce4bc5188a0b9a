#include "common/process_stats.h"

#include <cstdlib>
#include <fstream>
#include <string>

namespace fedpeft {
namespace {

// The kB figure of `key` ("VmHWM:") in /proc/self/status, in MiB, or -1.
double StatusMib(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      return std::strtod(line.c_str() + key.size(), nullptr) / 1024.0;
    }
  }
  return -1.0;
}

}  // namespace

double PeakRssMib() { return StatusMib("VmHWM:"); }

double RssMib() { return StatusMib("VmRSS:"); }

uint64_t AvailableRamBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

}  // namespace fedpeft
