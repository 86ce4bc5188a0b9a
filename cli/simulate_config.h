// The config of `fedpeft simulate`: its own `simulation` and `topology`
// keys, and the coordinator, worker and edge sections it derives from the
// file -- loopback addresses, the paths under the output folder, TLS, and
// the defaults that follow from the topology. Every section is validated
// (unknown keys too) before anything starts; loading reads the file and
// writes nothing, so `simulate --check` and the fuzz target
// (fuzz/simulate_config.cc) run it as `simulate` does.
//
// Thread-safety: plain functions and values.
#ifndef FEDPEFT_CLI_SIMULATE_CONFIG_H_
#define FEDPEFT_CLI_SIMULATE_CONFIG_H_

#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"

namespace fedpeft {
namespace cli {

struct SimulationOptions {
  int workers = 4;
  std::string mode = "processes";         // processes | threads | virtual
  std::vector<double> slowdown{1.0};      // per worker, cycled
  std::vector<double> dropout_prob{0.0};  // per worker, cycled
  std::vector<double> ram_mb{0.0};        // per worker, cycled (0 = measure)
  std::vector<double> uplink_mbps{0.0};   // per worker, cycled (0 = unknown)
  int edges = 0;                          // topology.edges; 0 = flat
  double timeout_s = 1800;                // whole run
  std::string sample_prompt = "ROMEO:";
  int sample_tokens = 48;
  bool tls = true;  // throw-away mutual TLS (false: tls.insecure everywhere)
  // Thread mode: how many workers train at once (0 = one per core); the
  // others wait for a slot, so BLAS never sees hundreds of callers.
  int compute_threads = 0;
  // Virtual mode: the population, the executor processes hosting it (0 =
  // one per edge, at least one) and each one's compute threads (0 = the
  // cores shared among them).
  int users = 0;
  int executors = 0;
  int executor_threads = 0;

  bool virtual_users() const { return mode == "virtual"; }
  // Who the coordinator counts: workers, or virtual users.
  int participants() const { return virtual_users() ? users : workers; }
  // Virtual users u of executor e: [FirstUser(e), FirstUser(e + 1)).
  int FirstUser(int e) const {
    return static_cast<int>(static_cast<int64_t>(users) * e / executors);
  }

  void Read(ConfigReader& in);  // the `simulation` section
};

// Where a simulation writes, under its output folder.
struct RunPaths {
  std::string out;
  std::string logs;
  std::string coordinator_yaml;
  std::string worker_yaml;
  std::string edge_yaml;
  std::string port_file;
  std::string metrics;
  std::string checkpoints;
  std::string certs;  // throw-away certificates; empty without TLS
};

struct SimulationConfig {
  SimulationOptions sim;  // with topology.edges and executors resolved
  RunPaths paths;
  // The sections simulate writes for the processes it starts (the worker
  // section before each worker's own settings).
  YAML::Node coordinator;
  YAML::Node worker;
  YAML::Node edge;
  // What simulate decided for the user and says so ("users sampled at the
  // edges ..."); printed before a run.
  std::vector<std::string> notes;
};

// Loads the simulation config `path` with `overrides` for a run into
// `out_dir`. InvalidArgument naming the file and every bad key.
StatusOr<SimulationConfig> LoadSimulationConfig(
    const std::string& path, const std::vector<std::string>& overrides,
    const std::string& out_dir);

// `node` as YAML text, as simulate writes it for a process.
std::string ToYaml(const YAML::Node& node);

// The tls.cert / tls.key overrides for participant `name` when simulate
// made certificates in `certs` (empty: none).
std::vector<std::string> CertOverrides(const std::string& certs,
                                       const std::string& name);

// The --set overrides edge `e` starts with on top of the edge section:
// its id, `upstream` (the cloud's address), its port file, certificate.
std::vector<std::string> EdgeOverrides(const SimulationOptions& sim, int e,
                                       const std::string& upstream,
                                       const std::string& port_file,
                                       const std::string& certs);

// The --set overrides worker `i` starts with on top of the worker section.
std::vector<std::string> WorkerOverrides(const SimulationOptions& sim, int i,
                                         const std::string& address,
                                         const std::string& certs);

// The --set overrides executor `e` (virtual users) starts with.
std::vector<std::string> ExecutorOverrides(const SimulationOptions& sim, int e,
                                           const std::string& address,
                                           const std::string& certs);

}  // namespace cli
}  // namespace fedpeft

#endif  // FEDPEFT_CLI_SIMULATE_CONFIG_H_
