// What this process has used, for the figures runs print at their end.
#ifndef FEDPEFT_COMMON_PROCESS_STATS_H_
#define FEDPEFT_COMMON_PROCESS_STATS_H_

namespace fedpeft {

// Peak resident set size of this process in MiB (VmHWM of
// /proc/self/status), or -1 where there is none (not Linux).
double PeakRssMib();

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_PROCESS_STATS_H_
