#include "common/process_stats.h"

#include <cstdlib>
#include <fstream>
#include <string>

namespace fedpeft {

double PeakRssMib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::strtod(line.c_str() + 6, nullptr) / 1024.0;  // kB
    }
  }
  return -1.0;
}

}  // namespace fedpeft
