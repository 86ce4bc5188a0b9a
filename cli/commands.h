// The subcommands of the `fedpeft` executable. Each takes the arguments
// after the subcommand name, prints results on stdout and errors on stderr,
// and returns the process exit code: 0 success, 1 failure (a clear message
// was printed), 2 usage error.
#ifndef FEDPEFT_CLI_COMMANDS_H_
#define FEDPEFT_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace fedpeft {
namespace cli {

using Args = std::vector<std::string>;

int RunTrain(const Args& args);
int RunEval(const Args& args);
int RunGenerate(const Args& args);
int RunExport(const Args& args);
int RunInitModel(const Args& args);
int RunCoordinator(const Args& args);
int RunWorker(const Args& args);
// Hosts many virtual users of a federation (worker/executor.h).
int RunExecutor(const Args& args);
int RunEdge(const Args& args);
int RunStatus(const Args& args);
int RunSimulate(const Args& args);
int RunPrivacy(const Args& args);
int RunCerts(const Args& args);
int RunTokenize(const Args& args);
int RunServe(const Args& args);

}  // namespace cli
}  // namespace fedpeft

#endif  // FEDPEFT_CLI_COMMANDS_H_
