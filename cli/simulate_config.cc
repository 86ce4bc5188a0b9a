#include "cli/simulate_config.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "common/file_util.h"
#include "coordinator/coordinator_config.h"
#include "coordinator/edge_config.h"
#include "security/certs.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace cli {
namespace {

// simulation.timeout_s at most: a year, in seconds.
constexpr double kMaxTimeoutS = 365.0 * 24 * 3600;

// Whether node[a][b] is set. Const lookups only, and none below a missing
// key: yaml-cpp throws on operator[] of the node a missing key returns.
bool IsSet(const YAML::Node& node, const char* a, const char* b) {
  const YAML::Node child = node[a];
  return child.IsDefined() && child.IsMap() && child[b].IsDefined();
}

// Sets section[a][b] = value. yaml-cpp throws on a subscript of a scalar
// or a list, so a section[a] the user wrote as one is refused instead.
Status SetKey(YAML::Node& section, const std::string& section_name,
              const char* a, const char* b, const std::string& value,
              const std::string& path) {
  const YAML::Node child = static_cast<const YAML::Node&>(section)[a];
  if (child.IsDefined() && !child.IsMap() && !child.IsNull()) {
    return Status::InvalidArgument("config '" + path + "': " + section_name +
                                   "." + a + ": expected a map");
  }
  section[a][b] = value;
  return Status::Ok();
}

// Sets `section`'s tls: mutual TLS with certificate `name` from `certs`, or
// tls.insecure when `certs` is empty. A tls section the user wrote is
// refused with simulation.tls (simulate owns the certificates) and kept
// without it.
Status SetTls(YAML::Node& section, const std::string& section_name,
              const std::string& certs, const std::string& name) {
  const bool has_tls =
      static_cast<const YAML::Node&>(section)["tls"].IsDefined();
  if (certs.empty()) {
    if (!has_tls) section["tls"]["insecure"] = true;
    return Status::Ok();
  }
  if (has_tls) {
    return Status::InvalidArgument(
        section_name +
        ".tls: set by simulate with simulation.tls: true (throw-away "
        "certificates); remove it, or set simulation.tls: false to configure "
        "TLS yourself");
  }
  section["tls"]["enabled"] = true;
  section["tls"]["ca"] = security::CaCertPath(certs);
  section["tls"]["cert"] = security::CertPath(certs, name);
  section["tls"]["key"] = security::KeyPath(certs, name);
  return Status::Ok();
}

// The defaults simulate derives from the topology, for keys the user left
// unset. Runs on validated sections only (its reads cannot throw).
void DeriveDefaults(SimulationConfig& c) {
  const SimulationOptions& sim = c.sim;
  YAML::Node& coord = c.coordinator;
  YAML::Node& edge = c.edge;
  if (!IsSet(coord, "federation", "min_available")) {
    coord["federation"]["min_available"] =
        sim.edges > 0 ? sim.edges : sim.participants();
  }
  if (sim.edges > 0 && !IsSet(edge, "federation", "min_available")) {
    // Every edge waits for all of its workers before its first round
    // (virtual users: set per edge when it starts).
    edge["federation"]["min_available"] = sim.workers / sim.edges;
  }
  if (sim.edges > 0 && !IsSet(coord, "dp", "population")) {
    // The cloud cannot count the users behind edges; the simulation can.
    coord["dp"]["population"] = sim.participants();
  }
  if (sim.virtual_users() && sim.edges > 0) {
    // The coordinator's federation.sampling and fraction say how users are
    // sampled; behind edges the edges sample them, and the cloud takes
    // every edge each round. The accountant may then take the edges'
    // sampling rate (dp.trust_edge_sampling: the simulation runs them).
    const YAML::Node& cc = coord;
    const YAML::Node f = cc["federation"];
    const std::string sampling =
        f["sampling"] ? f["sampling"].as<std::string>() : "fixed";
    const double fraction = f["fraction"] ? f["fraction"].as<double>() : 1.0;
    edge["federation"]["sampling"] = sampling;
    edge["federation"]["fraction"] = fraction;
    coord["federation"]["sampling"] = "fixed";
    coord["federation"]["fraction"] = 1.0;
    if (!IsSet(coord, "dp", "trust_edge_sampling")) {
      coord["dp"]["trust_edge_sampling"] = true;
    }
    c.notes.push_back("users sampled at the edges (" + sampling +
                      ", fraction " + ToConfigString(fraction) +
                      "); the cloud takes every edge each round");
  }
}

}  // namespace

std::string ToYaml(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

// The tls.cert / tls.key overrides for participant `name` when simulate
// made certificates in `certs` (empty: none).
std::vector<std::string> CertOverrides(const std::string& certs,
                                       const std::string& name) {
  if (certs.empty()) return {};
  return {"tls.cert=" + security::CertPath(certs, name),
          "tls.key=" + security::KeyPath(certs, name)};
}

std::vector<std::string> EdgeOverrides(const SimulationOptions& sim, int e,
                                       const std::string& upstream,
                                       const std::string& port_file,
                                       const std::string& certs) {
  const std::string id = "edge-" + std::to_string(e);
  std::vector<std::string> o = {"edge.id=" + id, "upstream.address=" + upstream,
                                "server.address=127.0.0.1:0",
                                "server.port_file=" + port_file};
  if (sim.virtual_users()) {
    // Every edge waits for all the users of its executors (executor i
    // talks to edge i mod E) before its first round.
    int users = 0;
    for (int x = e; x < sim.executors; x += sim.edges) {
      users += sim.FirstUser(x + 1) - sim.FirstUser(x);
    }
    o.push_back("federation.min_available=" + std::to_string(users));
  }
  for (const std::string& c : CertOverrides(certs, id)) o.push_back(c);
  return o;
}

// The per-worker settings simulate adds to the shared worker config.
std::vector<std::string> WorkerOverrides(const SimulationOptions& sim, int i,
                                         const std::string& address,
                                         const std::string& certs) {
  std::vector<std::string> o =
      CertOverrides(certs, "worker-" + std::to_string(i));
  std::vector<std::string> rest = {
      "worker.id=worker-" + std::to_string(i),
      "data.shard=" + std::to_string(i) + "/" + std::to_string(sim.workers),
      "server.address=" + address,
      "simulation.slowdown=" +
          std::to_string(sim.slowdown[i % sim.slowdown.size()]),
      "simulation.dropout_prob=" +
          std::to_string(sim.dropout_prob[i % sim.dropout_prob.size()]),
      "worker.ram_mb=" + std::to_string(static_cast<int64_t>(
                             sim.ram_mb[i % sim.ram_mb.size()])),
      "worker.uplink_mbps=" +
          std::to_string(sim.uplink_mbps[i % sim.uplink_mbps.size()]),
      "simulation.seed=" + std::to_string(1000 + i)};
  o.insert(o.end(), rest.begin(), rest.end());
  return o;
}

// The settings simulate adds to the worker config for executor `e`.
std::vector<std::string> ExecutorOverrides(const SimulationOptions& sim, int e,
                                           const std::string& address,
                                           const std::string& certs) {
  const std::string id = "executor-" + std::to_string(e);
  std::vector<std::string> o = CertOverrides(certs, id);
  const int cores =
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const int threads = sim.executor_threads > 0
                          ? sim.executor_threads
                          : std::max(1, cores / sim.executors);
  std::vector<std::string> rest = {
      "worker.id=" + id,
      "server.address=" + address,
      "executor.first_user=" + std::to_string(sim.FirstUser(e)),
      "executor.users=" +
          std::to_string(sim.FirstUser(e + 1) - sim.FirstUser(e)),
      "executor.population=" + std::to_string(sim.users),
      "executor.threads=" + std::to_string(threads),
      "simulation.dropout_prob=" + std::to_string(sim.dropout_prob[0]),
      "simulation.seed=" + std::to_string(1000 + e)};
  o.insert(o.end(), rest.begin(), rest.end());
  return o;
}

void SimulationOptions::Read(ConfigReader& in) {
  in.Get("workers", &workers);
  in.Get("users", &users);
  in.Get("executors", &executors);
  in.Get("executor_threads", &executor_threads);
  in.Get("tls", &tls);
  in.Get("mode", &mode);
  in.Get("slowdown", &slowdown);
  in.Get("dropout_prob", &dropout_prob);
  in.Get("ram_mb", &ram_mb);
  in.Get("uplink_mbps", &uplink_mbps);
  in.Get("timeout_s", &timeout_s);
  in.Get("sample_prompt", &sample_prompt);
  in.Get("sample_tokens", &sample_tokens);
  in.Get("compute_threads", &compute_threads);
  in.Check(workers >= 1 && workers <= 4096, "workers",
           "must be in [1, 4096], got " + ToConfigString(workers));
  in.Check(mode == "processes" || mode == "threads" || mode == "virtual",
           "mode",
           "expected processes, threads or virtual, got '" + mode + "'");
  in.Check(!virtual_users() || (users >= 1 && users <= 10000000), "users",
           "mode virtual needs users in [1, 10000000], got " +
               ToConfigString(users));
  in.Check(executors >= 0 && executors <= 64 &&
               (!virtual_users() || executors <= users),
           "executors",
           "must be in [0, 64] (0 = one per edge) and at most users, got " +
               ToConfigString(executors));
  in.Check(executor_threads >= 0 && executor_threads <= 64, "executor_threads",
           "must be in [0, 64] (0 = the cores shared among executors), "
           "got " +
               ToConfigString(executor_threads));
  in.Check(!slowdown.empty(), "slowdown", "must list at least one value");
  for (double s : slowdown) {
    in.Check(s >= 1.0 && std::isfinite(s), "slowdown",
             "every value must be >= 1 and finite, got " + ToConfigString(s));
  }
  in.Check(!dropout_prob.empty(), "dropout_prob",
           "must list at least one value");
  for (double p : dropout_prob) {
    in.Check(p >= 0 && p < 1, "dropout_prob",
             "every value must be in [0, 1), got " + ToConfigString(p));
  }
  in.Check(!ram_mb.empty() && !uplink_mbps.empty(), "ram_mb",
           "ram_mb and uplink_mbps must list at least one value");
  // Each worker gets worker.ram_mb and worker.uplink_mbps from these.
  for (double r : ram_mb) {
    in.Check(r >= 0 && r <= 1e9, "ram_mb",
             "every value must be in [0, 1e9] (MB; 0 = measured), got " +
                 ToConfigString(r));
  }
  for (double u : uplink_mbps) {
    in.Check(u >= 0 && std::isfinite(u), "uplink_mbps",
             "every value must be >= 0 and finite (0 = unknown), got " +
                 ToConfigString(u));
  }
  in.Check(
      timeout_s > 0 && timeout_s <= kMaxTimeoutS, "timeout_s",
      "must be in (0, 31536000] (a year), got " + ToConfigString(timeout_s));
  in.Check(sample_tokens >= 0, "sample_tokens",
           "must be >= 0, got " + ToConfigString(sample_tokens));
  in.Check(compute_threads >= 0 && compute_threads <= 64, "compute_threads",
           "must be in [0, 64] (0 = one per core), got " +
               ToConfigString(compute_threads));
}

StatusOr<SimulationConfig> LoadSimulationConfig(
    const std::string& path, const std::vector<std::string>& overrides,
    const std::string& out_dir) {
  ASSIGN_OR_RETURN(YAML::Node root, LoadConfigFile(path, overrides));
  SimulationConfig c;
  RunPaths& p = c.paths;
  p.out = out_dir;
  p.logs = JoinPath(out_dir, "logs");
  p.coordinator_yaml = JoinPath(out_dir, "coordinator.yaml");
  p.worker_yaml = JoinPath(out_dir, "worker.yaml");
  p.edge_yaml = JoinPath(out_dir, "edge.yaml");
  p.port_file = JoinPath(out_dir, "coordinator.port");
  p.metrics = JoinPath(out_dir, "metrics.jsonl");
  p.checkpoints = JoinPath(out_dir, "checkpoints");

  // The coordinator and worker sections, with what simulate decides.
  const YAML::Node& const_root = root;  // const: lookups must not insert
  YAML::Node coord = YAML::Clone(const_root["coordinator"]);
  if (!coord.IsMap()) coord = YAML::Node(YAML::NodeType::Map);
  YAML::Node work = YAML::Clone(const_root["worker"]);
  if (!work.IsMap()) work = YAML::Node(YAML::NodeType::Map);
  RETURN_IF_ERROR(
      SetKey(coord, "coordinator", "server", "address", "127.0.0.1:0", path));
  RETURN_IF_ERROR(
      SetKey(coord, "coordinator", "server", "port_file", p.port_file, path));
  RETURN_IF_ERROR(
      SetKey(coord, "coordinator", "checkpoint", "dir", p.checkpoints, path));
  RETURN_IF_ERROR(
      SetKey(coord, "coordinator", "logging", "metrics_file", p.metrics, path));
  // topology.edges: edge aggregators between the coordinator and workers.
  YAML::Node edge = YAML::Clone(const_root["edge"]);
  if (!edge.IsMap()) edge = YAML::Node(YAML::NodeType::Map);
  if (!static_cast<const YAML::Node&>(edge)["model"]) {
    edge["model"] = YAML::Clone(static_cast<const YAML::Node&>(work)["model"]);
  }
  RETURN_IF_ERROR(  // set per run
      SetKey(edge, "edge", "upstream", "address", "127.0.0.1:1", path));
  RETURN_IF_ERROR(
      SetKey(edge, "edge", "server", "address", "127.0.0.1:0", path));
  // simulation.tls, read ahead of the full validation below (which needs
  // the tls sections in place); a malformed value is reported there.
  bool use_tls = true;
  try {
    const YAML::Node t = const_root["simulation"]["tls"];
    if (t.IsDefined() && t.IsScalar()) use_tls = t.as<bool>();
  } catch (const YAML::Exception&) {
  }
  if (use_tls) p.certs = JoinPath(out_dir, "certs");
  Status tls = SetTls(coord, "coordinator", p.certs, "coordinator");
  if (tls.ok()) tls = SetTls(work, "worker", p.certs, "worker-0");
  if (tls.ok()) tls = SetTls(edge, "edge", p.certs, "edge-0");
  if (!tls.ok()) return tls.WithContext("config '" + path + "'");

  // Validate everything (every section, unknown keys) before starting a
  // process.
  SimulationOptions& sim = c.sim;
  YAML::Node full = YAML::Clone(root);
  full["coordinator"] = coord;
  full["worker"] = work;
  full["edge"] = edge;
  ConfigReader in(full, path);
  ConfigReader sim_in = in.Section("simulation");
  sim.Read(sim_in);
  coordinator::CoordinatorConfig cc;
  ConfigReader cin = in.Section("coordinator");
  cc.Read(cin);
  worker::WorkerConfig wc;
  ConfigReader win = in.Section("worker");
  wc.Read(win);
  ConfigReader top = in.Section("topology");
  top.Get("edges", &sim.edges);
  if (sim.virtual_users() && sim.executors == 0) {
    sim.executors = std::max(1, sim.edges);
  }
  const int below = sim.virtual_users() ? sim.executors : sim.workers;
  top.Check(sim.edges >= 0 && sim.edges <= below, "edges",
            std::string("must be in [0, simulation.") +
                (sim.virtual_users() ? "executors" : "workers") +
                "] (0 = flat), got " + ToConfigString(sim.edges));
  top.Check(sim.edges == 0 || sim.mode != "threads", "edges",
            "edges run as their own processes: needs simulation.mode "
            "processes or virtual");
  coordinator::EdgeConfig ec;
  ConfigReader ein = in.Section("edge");
  ec.Read(ein);
  RETURN_IF_ERROR(in.Finish());
  c.coordinator = coord;
  c.worker = work;
  c.edge = edge;
  DeriveDefaults(c);
  return c;
}

}  // namespace cli
}  // namespace fedpeft
