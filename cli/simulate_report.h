// What `fedpeft simulate` prints when a run ends.
#ifndef FEDPEFT_CLI_SIMULATE_REPORT_H_
#define FEDPEFT_CLI_SIMULATE_REPORT_H_

#include <string>

namespace fedpeft {
namespace cli {

// One line per round of `metrics_path` (answers, losses, bytes, ranks,
// frozen share, seconds, epsilon), then the totals of the run, which took
// `seconds` with `who` ("4 workers (processes)"), and the privacy spent.
// A malformed line is skipped with a warning.
void PrintRoundTable(const std::string& metrics_path, double seconds,
                     const std::string& who);

}  // namespace cli
}  // namespace fedpeft

#endif  // FEDPEFT_CLI_SIMULATE_REPORT_H_
