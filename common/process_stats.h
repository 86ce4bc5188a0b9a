// What this process and the machine have, for the figures runs print at
// their end and for what a process reports of itself (a worker's profile, a
// pipeline stage's status).
#ifndef FEDPEFT_COMMON_PROCESS_STATS_H_
#define FEDPEFT_COMMON_PROCESS_STATS_H_

#include <cstdint>

namespace fedpeft {

// Peak resident set size of this process in MiB (VmHWM of
// /proc/self/status), or -1 where there is none (not Linux).
double PeakRssMib();
// Resident set size now, in MiB (VmRSS), or -1.
double RssMib();
// MemAvailable of /proc/meminfo in bytes, or 0 where there is none.
uint64_t AvailableRamBytes();

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_PROCESS_STATS_H_
