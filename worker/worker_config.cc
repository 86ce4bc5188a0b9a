#include "worker/worker_config.h"

namespace fedpeft {
namespace worker {

void WorkerIdentity::Read(ConfigReader& in) {
  in.Get("id", &id);
  in.Get("threads", &threads);
  in.Get("ram_mb", &ram_mb);
  in.Get("uplink_mbps", &uplink_mbps);
  ConfigReader d = in.Section("distributed");
  distributed.Read(d);
  in.Check(!id.empty() && id.size() <= 128, "id",
           "expected 1 to 128 characters, got '" + id + "'");
  in.Check(threads >= 1, "threads",
           "must be >= 1, got " + ToConfigString(threads));
  in.Check(ram_mb >= 0, "ram_mb",
           "must be >= 0, got " + ToConfigString(ram_mb));
  in.Check(uplink_mbps >= 0, "uplink_mbps",
           "must be >= 0, got " + ToConfigString(uplink_mbps));
}

void ConnectionOptions::Read(ConfigReader& in) {
  in.Get("address", &address);
  in.Get("max_message_mb", &max_message_mb);
  in.Get("rpc_timeout_s", &rpc_timeout_s);
  in.Get("task_wait_ms", &task_wait_ms);
  in.Get("backoff_initial_ms", &backoff_initial_ms);
  in.Get("backoff_max_ms", &backoff_max_ms);
  in.Get("give_up_after_s", &give_up_after_s);
  in.Check(address.find(':') != std::string::npos, "address",
           "expected HOST:PORT, got '" + address + "'");
  in.Check(max_message_mb >= 1 && max_message_mb <= 1024, "max_message_mb",
           "must be in [1, 1024], got " + ToConfigString(max_message_mb));
  in.Check(rpc_timeout_s > 0, "rpc_timeout_s",
           "must be > 0, got " + ToConfigString(rpc_timeout_s));
  in.Check(task_wait_ms >= 10, "task_wait_ms",
           "must be >= 10, got " + ToConfigString(task_wait_ms));
  in.Check(backoff_initial_ms >= 1, "backoff_initial_ms",
           "must be >= 1, got " + ToConfigString(backoff_initial_ms));
  in.Check(
      backoff_max_ms >= backoff_initial_ms, "backoff_max_ms",
      "must be >= backoff_initial_ms, got " + ToConfigString(backoff_max_ms));
  in.Check(give_up_after_s >= 0, "give_up_after_s",
           "must be >= 0 (0 = never), got " + ToConfigString(give_up_after_s));
}

void SimulationProfile::Read(ConfigReader& in) {
  in.Get("slowdown", &slowdown);
  in.Get("dropout_prob", &dropout_prob);
  in.Get("seed", &seed);
  in.Get("emulate_uplink", &emulate_uplink);
  in.Check(slowdown >= 1.0, "slowdown",
           "must be >= 1, got " + ToConfigString(slowdown));
  in.Check(dropout_prob >= 0 && dropout_prob <= 1, "dropout_prob",
           "must be in [0, 1] (1: drops every round after training), got " +
               ToConfigString(dropout_prob));
}

void ExecutorOptions::Read(ConfigReader& in) {
  in.Get("users", &users);
  in.Get("first_user", &first_user);
  in.Get("population", &population);
  in.Get("threads", &threads);
  in.Get("state_dir", &state_dir);
  constexpr int kMax = 10000000;
  in.Check(users >= 0 && users <= kMax, "users",
           "must be in [0, 10000000], got " + ToConfigString(users));
  in.Check(first_user >= 0 && first_user <= kMax, "first_user",
           "must be in [0, 10000000], got " + ToConfigString(first_user));
  in.Check(population == 0 || population >= first_user + users, "population",
           "must be 0 (first_user + users) or at least first_user + users = " +
               std::to_string(first_user + users) + ", got " +
               ToConfigString(population));
  in.Check(
      threads >= 0 && threads <= 256, "threads",
      "must be in [0, 256] (0 = one per core), got " + ToConfigString(threads));
}

void WorkerConfig::Read(ConfigReader& in) {
  ConfigReader w = in.Section("worker");
  worker.Read(w);
  ConfigReader s = in.Section("server");
  server.Read(s);
  ConfigReader tls = in.Section("tls");
  server.tls.Read(tls, security::kTlsClient);
  ConfigReader m = in.Section("model");
  model.Read(m);
  // The other processes of a distributed worker never dial the server.
  m.Check(!model.upstream() || !worker.distributed.enabled(), "source",
          "upstream needs one process per worker (worker.distributed."
          "world_size 1): copy the model to every process's machine and "
          "use model.source local");
  ConfigReader d = in.Section("data");
  data.Read(d);
  d.Get("shard", &shard);
  if (!shard.empty()) {
    auto parsed = data::ParseShard(shard);
    d.Check(parsed.ok(), "shard", parsed.ok() ? "" : parsed.status().message());
  }
  ConfigReader t = in.Section("train");
  train.Read(t);
  ConfigReader sim = in.Section("simulation");
  simulation.Read(sim);
  ConfigReader e = in.Section("executor");
  executor.Read(e);
  ConfigReader l = in.Section("logging");
  logging.Read(l);
}

StatusOr<WorkerConfig> LoadWorkerConfig(
    const std::string& path, const std::vector<std::string>& overrides) {
  return LoadConfigAs<WorkerConfig>(path, overrides);
}

}  // namespace worker
}  // namespace fedpeft
