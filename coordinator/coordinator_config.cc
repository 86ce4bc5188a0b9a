#include "coordinator/coordinator_config.h"

#include <cmath>

#include "aggregation/hetero_rank.h"
#include "common/logging.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace coordinator {

void ServerOptions::Read(ConfigReader& in) {
  in.Get("address", &address);
  in.Get("port_file", &port_file);
  in.Get("max_message_mb", &max_message_mb);
  in.Get("chunk_kb", &chunk_kb);
  in.Check(address.find(':') != std::string::npos, "address",
           "expected HOST:PORT, got '" + address + "'");
  in.Check(max_message_mb >= 1 && max_message_mb <= 1024, "max_message_mb",
           "must be in [1, 1024], got " + ToConfigString(max_message_mb));
  in.Check(chunk_kb >= 1 && chunk_kb * 1024LL < max_message_mb * 1048576LL,
           "chunk_kb",
           "must be >= 1 and below server.max_message_mb, got " +
               ToConfigString(chunk_kb));
}

void FederationOptions::Read(ConfigReader& in) {
  in.Get("id", &id);
  in.Get("rounds", &rounds);
  in.Get("min_available", &min_available);
  in.Get("fraction", &fraction);
  in.Get("sampling", &sampling);
  in.Check(sampling == "fixed" || sampling == "poisson", "sampling",
           "expected fixed or poisson, got '" + sampling + "'");
  in.Get("min_workers", &min_workers);
  in.Get("max_workers", &max_workers);
  in.Get("quorum", &quorum);
  in.Get("round_deadline_s", &round_deadline_s);
  in.Get("on_quorum_miss", &on_quorum_miss);
  in.Get("max_retries", &max_retries);
  in.Get("heartbeat_interval_ms", &heartbeat_interval_ms);
  in.Get("worker_timeout_s", &worker_timeout_s);
  in.Get("task_wait_ms", &task_wait_ms);
  in.Get("shutdown_grace_s", &shutdown_grace_s);
  in.Get("seed", &seed);
  if (id.empty()) id = "fedpeft-" + std::to_string(seed);
  in.Check(rounds >= 1, "rounds",
           "must be >= 1, got " + ToConfigString(rounds));
  in.Check(min_available >= 1, "min_available",
           "must be >= 1, got " + ToConfigString(min_available));
  in.Check(fraction > 0 && fraction <= 1, "fraction",
           "must be in (0, 1], got " + ToConfigString(fraction));
  in.Check(min_workers >= 1, "min_workers",
           "must be >= 1, got " + ToConfigString(min_workers));
  in.Check(max_workers == 0 || max_workers >= min_workers, "max_workers",
           "must be 0 (no cap) or >= min_workers, got " +
               ToConfigString(max_workers));
  in.Check(quorum > 0 && quorum <= 1, "quorum",
           "must be in (0, 1], got " + ToConfigString(quorum));
  in.Check(round_deadline_s > 0, "round_deadline_s",
           "must be > 0, got " + ToConfigString(round_deadline_s));
  in.Check(on_quorum_miss == "retry" || on_quorum_miss == "skip",
           "on_quorum_miss",
           "expected retry or skip, got '" + on_quorum_miss + "'");
  in.Check(max_retries >= 0, "max_retries",
           "must be >= 0, got " + ToConfigString(max_retries));
  in.Check(heartbeat_interval_ms >= 50, "heartbeat_interval_ms",
           "must be >= 50, got " + ToConfigString(heartbeat_interval_ms));
  in.Check(worker_timeout_s * 1000 > heartbeat_interval_ms, "worker_timeout_s",
           "must exceed the heartbeat interval, got " +
               ToConfigString(worker_timeout_s));
  in.Check(task_wait_ms >= 10 && task_wait_ms <= 60000, "task_wait_ms",
           "must be in [10, 60000], got " + ToConfigString(task_wait_ms));
  in.Check(shutdown_grace_s >= 0, "shutdown_grace_s",
           "must be >= 0, got " + ToConfigString(shutdown_grace_s));
}

void LocalTrainSpec::Read(ConfigReader& in) {
  in.Get("local_epochs", &local_epochs);
  in.Get("local_steps", &local_steps);
  in.Get("batch_size", &batch_size);
  in.Get("lr", &lr);
  in.Get("fedprox_mu", &fedprox_mu);
  in.Check(local_epochs >= 1, "local_epochs",
           "must be >= 1, got " + ToConfigString(local_epochs));
  in.Check(
      local_steps >= 0, "local_steps",
      "must be >= 0 (0 = local_epochs), got " + ToConfigString(local_steps));
  in.Check(batch_size >= 1, "batch_size",
           "must be >= 1, got " + ToConfigString(batch_size));
  in.Check(lr > 0, "lr", "must be > 0, got " + ToConfigString(lr));
  in.Check(fedprox_mu >= 0, "fedprox_mu",
           "must be >= 0, got " + ToConfigString(fedprox_mu));
}

void HeterogeneityOptions::Read(ConfigReader& in) {
  in.Get("enabled", &enabled);
  in.Get("method", &method);
  in.Get("r_min", &policy.r_min);
  in.Get("safety", &policy.safety);
  in.Get("grow_below", &policy.grow_below);
  in.Get("prune_threshold", &prune_threshold);
  in.Get("stack_max_rank", &stack_max_rank);
  in.Check(aggregation::ParseHeteroMethod(method).ok(), "method",
           "expected zero_pad, svd or stack, got '" + method + "'");
  in.Check(policy.r_min >= 1, "r_min",
           "must be >= 1, got " + ToConfigString(policy.r_min));
  in.Check(policy.safety > 0 && policy.safety <= 1, "safety",
           "must be in (0, 1], got " + ToConfigString(policy.safety));
  in.Check(policy.grow_below > 0 && policy.grow_below < 1, "grow_below",
           "must be in (0, 1), got " + ToConfigString(policy.grow_below));
  in.Check(
      prune_threshold >= 0 && prune_threshold < 1, "prune_threshold",
      "must be in [0, 1) (0 = off), got " + ToConfigString(prune_threshold));
  in.Check(
      stack_max_rank >= 0, "stack_max_rank",
      "must be >= 0 (0 = lossless), got " + ToConfigString(stack_max_rank));
}

nlohmann::json HeterogeneityOptions::ToJson() const {
  return {{"enabled", enabled},
          {"method", method},
          {"r_min", policy.r_min},
          {"r_max", policy.r_max},
          {"safety", policy.safety},
          {"grow_below", policy.grow_below},
          {"prune_threshold", prune_threshold},
          {"stack_max_rank", stack_max_rank}};
}

StatusOr<HeterogeneityOptions> HeterogeneityOptions::FromJson(
    const nlohmann::json& j) {
  HeterogeneityOptions h;
  try {
    h.enabled = j.at("enabled").get<bool>();
    h.method = j.at("method").get<std::string>();
    h.policy.r_min = j.at("r_min").get<int64_t>();
    h.policy.r_max = j.at("r_max").get<int64_t>();
    h.policy.safety = j.at("safety").get<double>();
    h.policy.grow_below = j.at("grow_below").get<double>();
    h.prune_threshold = j.at("prune_threshold").get<double>();
    h.stack_max_rank = j.at("stack_max_rank").get<int64_t>();
  } catch (const std::exception& e) {
    return Status::InvalidArgument(
        std::string("heterogeneity plan from the coordinator: ") + e.what());
  }
  if (!aggregation::ParseHeteroMethod(h.method).ok() || h.policy.r_min < 1 ||
      h.policy.r_max < h.policy.r_min) {
    return Status::InvalidArgument(
        "heterogeneity plan from the coordinator: method '" + h.method +
        "', r_min " + std::to_string(h.policy.r_min) + ", r_max " +
        std::to_string(h.policy.r_max) +
        " (expected zero_pad|svd|stack and 1 <= r_min <= r_max)");
  }
  return h;
}

void FreezingOptions::Read(ConfigReader& in) {
  ConfigReader a = in.Section("apf");
  apf.Read(a);
  in.Get("ffa", &ffa);
}

void HierarchyOptions::Read(ConfigReader& in) {
  in.Get("edge_rounds", &edge_rounds);
  in.Check(edge_rounds >= 1 && edge_rounds <= 1000, "edge_rounds",
           "must be in [1, 1000], got " + ToConfigString(edge_rounds));
}

void DpOptions::Read(ConfigReader& in) {
  in.Get("enabled", &enabled);
  in.Get("clip_norm", &clip_norm);
  in.Get("noise_multiplier", &noise_multiplier);
  in.Get("placement", &placement);
  in.Get("adaptive_clipping", &adaptive_clipping);
  in.Get("target_quantile", &target_quantile);
  in.Get("clip_learning_rate", &clip_learning_rate);
  in.Get("count_stddev", &count_stddev);
  in.Get("target_epsilon", &target_epsilon);
  in.Get("budget", &budget);
  in.Get("delta", &delta);
  in.Get("population", &population);
  in.Get("noise_seed", &noise_seed);
  in.Get("report_worker_metrics", &report_worker_metrics);
  in.Get("max_users_per_edge", &max_users_per_edge);
  in.Get("trust_edge_sampling", &trust_edge_sampling);
  in.Check(max_users_per_edge >= 0, "max_users_per_edge",
           "must be >= 0 (0 = dp.population), got " +
               ToConfigString(max_users_per_edge));
  in.Check(std::isfinite(clip_norm) && clip_norm > 0, "clip_norm",
           "must be a number > 0, got " + ToConfigString(clip_norm));
  in.Check(std::isfinite(noise_multiplier) && noise_multiplier >= 0,
           "noise_multiplier",
           "must be a number >= 0, got " + ToConfigString(noise_multiplier));
  in.Check(placement == "central" || placement == "edges", "placement",
           "expected central or edges, got '" + placement + "'");
  in.Check(target_quantile > 0 && target_quantile < 1, "target_quantile",
           "must be in (0, 1), got " + ToConfigString(target_quantile));
  in.Check(clip_learning_rate > 0 && clip_learning_rate <= 10,
           "clip_learning_rate",
           "must be in (0, 10], got " + ToConfigString(clip_learning_rate));
  in.Check(std::isfinite(count_stddev) && count_stddev >= 0, "count_stddev",
           "must be >= 0 (0 = participants / 20), got " +
               ToConfigString(count_stddev));
  in.Check(
      std::isfinite(target_epsilon) && target_epsilon >= 0, "target_epsilon",
      "must be >= 0 (0 = no budget), got " + ToConfigString(target_epsilon));
  in.Check(budget == "calibrate" || budget == "stop", "budget",
           "expected calibrate or stop, got '" + budget + "'");
  in.Check(
      delta >= 0 && delta < 1, "delta",
      "must be in (0, 1) (0 = 1/population^1.1), got " + ToConfigString(delta));
  in.Check(population >= 0, "population",
           "must be >= 0 (0 = the workers registered at round 1), got " +
               ToConfigString(population));
  if (enabled && target_epsilon > 0 && budget == "calibrate") {
    in.Check(!in.Has("noise_multiplier"), "noise_multiplier",
             "is calibrated from dp.target_epsilon with dp.budget calibrate; "
             "remove one of the two (or set dp.budget: stop)");
  }
}

void CompressionOptions::Read(ConfigReader& in) {
  in.Get("bits", &bits);
  in.Get("block_size", &block_size);
  in.Get("error_feedback", &error_feedback);
  in.Get("download_bits", &download_bits);
  for (const auto& [key, value] : {std::pair<const char*, int>{"bits", bits},
                                   {"download_bits", download_bits}}) {
    in.Check(
        value == 32 || value == 16 || value == 8 || value == 4 || value == 2,
        key, "expected 32, 16, 8, 4 or 2, got " + ToConfigString(value));
  }
  in.Check(block_size >= 1 && block_size <= transport::kMaxBlockSize,
           "block_size",
           "must be in [1, " + std::to_string(transport::kMaxBlockSize) +
               "], got " + ToConfigString(block_size));
}

void SecAggOptions::Read(ConfigReader& in) {
  in.Get("enabled", &enabled);
  in.Get("setup_timeout_s", &setup_timeout_s);
  in.Get("unmask_timeout_s", &unmask_timeout_s);
  in.Check(std::isfinite(setup_timeout_s) && setup_timeout_s > 0,
           "setup_timeout_s",
           "must be a number > 0, got " + ToConfigString(setup_timeout_s));
  in.Check(std::isfinite(unmask_timeout_s) && unmask_timeout_s > 0,
           "unmask_timeout_s",
           "must be a number > 0, got " + ToConfigString(unmask_timeout_s));
}

nlohmann::json SecAggOptions::ToJson() const {
  return {{"enabled", enabled},
          {"setup_timeout_s", setup_timeout_s},
          {"unmask_timeout_s", unmask_timeout_s}};
}

StatusOr<SecAggOptions> SecAggOptions::FromJson(const nlohmann::json& j) {
  SecAggOptions o;
  o.enabled = j.at("enabled").get<bool>();
  o.setup_timeout_s = j.at("setup_timeout_s").get<double>();
  o.unmask_timeout_s = j.at("unmask_timeout_s").get<double>();
  if (!(o.setup_timeout_s > 0) || !(o.unmask_timeout_s > 0)) {
    return Status::InvalidArgument(
        "plan_json secagg: timeouts must be > 0, got " +
        std::to_string(o.setup_timeout_s) + " and " +
        std::to_string(o.unmask_timeout_s));
  }
  return o;
}

void ServerEvalOptions::Read(ConfigReader& in) {
  ConfigReader data_in = in.Section("data");
  // Server-side eval is optional: an absent data.path turns it off, so
  // DataOptions' own "path required" check must not fire here.
  if (data_in.Has("path")) {
    data.Read(data_in);
  } else {
    data.path.clear();
  }
  in.Get("batch_size", &batch_size);
  in.Get("every", &every);
  in.Check(batch_size >= 1, "batch_size",
           "must be >= 1, got " + ToConfigString(batch_size));
  in.Check(every >= 1, "every",
           "must be >= 1 (rounds between evaluations), got " +
               ToConfigString(every));
}

void CheckpointOptions::Read(ConfigReader& in) {
  in.Get("dir", &dir);
  in.Get("keep", &keep);
  in.Check(!dir.empty(), "dir", "must name a directory");
  in.Check(keep >= 1, "keep", "must be >= 1, got " + ToConfigString(keep));
}

void CoordinatorLogging::Read(ConfigReader& in) {
  in.Get("level", &level);
  in.Get("file", &file);
  in.Get("metrics_file", &metrics_file);
  in.Check(ParseLogLevel(level).ok(), "level",
           "expected debug, info, warn or error, got '" + level + "'");
}

void CheckBlockSizeFits(ConfigReader& model_in,
                        const worker::ModelOptions& model,
                        const ServerOptions& server) {
  const uint64_t block = model.BlockSizeFor(server.max_message_mb);
  model_in.Check(
      block + (4 << 10) <= static_cast<uint64_t>(server.max_message_mb) << 20,
      "block_size",
      "a block of " + std::to_string(block) +
          " bytes does not fit in a message of "
          "server.max_message_mb " +
          ToConfigString(server.max_message_mb) +
          " MiB: lower it or raise server.max_message_mb");
}

void CoordinatorConfig::Read(ConfigReader& in) {
  ConfigReader s = in.Section("server");
  server.Read(s);
  ConfigReader tls = in.Section("tls");
  server.tls.Read(tls, security::kTlsServer);
  ConfigReader f = in.Section("federation");
  federation.Read(f);
  ConfigReader m = in.Section("model");
  model.Read(m);
  m.Check(!model.upstream(), "source",
          "the cloud coordinator has no upstream: it serves model.path to "
          "the edges and workers that fetch it");
  // A block travels in one message (with a few bytes of framing).
  CheckBlockSizeFits(m, model, server);
  ConfigReader p = in.Section("peft");
  peft.Read(p);
  ConfigReader st = in.Section("strategy");
  strategy.Read(st);
  ConfigReader t = in.Section("train");
  train.Read(t);
  ConfigReader h = in.Section("heterogeneity");
  heterogeneity.Read(h);
  heterogeneity.policy.r_max = peft.lora.r;
  if (heterogeneity.enabled) {
    h.Check(
        peft.method == "lora", "enabled",
        "heterogeneous ranks need peft.method lora, got '" + peft.method + "'");
    h.Check(heterogeneity.policy.r_min <= peft.lora.r, "r_min",
            "must be <= peft.lora.r (the largest rank), got " +
                ToConfigString(heterogeneity.policy.r_min));
    h.Check(peft.lora.rank_pattern.empty() && peft.lora.alpha_pattern.empty(),
            "enabled",
            "heterogeneous ranks assign one rank per worker; remove "
            "peft.lora.rank_pattern / alpha_pattern");
    h.Check(strategy.name == "fedavg", "enabled",
            "heterogeneous ranks merge with their own method (weighted by "
            "samples); set strategy.name: fedavg, got '" +
                strategy.name + "'");
  }
  ConfigReader d = in.Section("dp");
  dp.Read(d);
  ConfigReader fr = in.Section("freezing");
  // With DP on, FFA-LoRA is the default (Sun et al. 2024: training only B
  // keeps the noisy update linear in what is clipped); `ffa: false` opts
  // out.
  if (dp.enabled && peft.method == "lora" && !fr.Has("ffa")) {
    freezing.ffa = true;
  }
  freezing.Read(fr);
  if (freezing.ffa) {
    fr.Check(peft.method == "lora", "ffa",
             "FFA-LoRA needs peft.method lora, got '" + peft.method + "'");
  }
  if (freezing.apf.enabled && heterogeneity.enabled) {
    fr.Check(heterogeneity.method == "zero_pad", "apf.enabled",
             "adaptive freezing works per tensor, which the svd and stack "
             "merges re-factor every round; use heterogeneity.method zero_pad");
  }
  ConfigReader hi = in.Section("hierarchy");
  hierarchy.Read(hi);
  ConfigReader co = in.Section("compression");
  compression.Read(co);
  if (dp.enabled) {
    d.Check(strategy.name != "median" && strategy.name != "trimmed_mean",
            "enabled",
            "DP-FedAvg's noise is calibrated to the sum of clipped updates; "
            "strategy '" +
                strategy.name +
                "' is not a sum (use fedavg, fedavgm, fedadam or fedyogi)");
    d.Check(!heterogeneity.enabled || heterogeneity.method == "zero_pad",
            "enabled",
            "with heterogeneous ranks DP needs heterogeneity.method "
            "zero_pad (svd and stack re-factor the noisy sum), got '" +
                heterogeneity.method + "'");
    d.Check(hierarchy.edge_rounds == 1, "enabled",
            "DP accounts one noisy release per cloud round: set "
            "hierarchy.edge_rounds to 1 (edge rounds in between would "
            "release un-noised sums to the edge's workers), got " +
                ToConfigString(hierarchy.edge_rounds));
  }
  ConfigReader sa = in.Section("secagg");
  secagg.Read(sa);
  if (secagg.enabled) {
    sa.Check(dp.enabled, "enabled",
             "secure aggregation needs dp.enabled: true (the DP clip norm "
             "bounds every coordinate, which sizes the fixed-point words "
             "the masks are added to; dp.noise_multiplier 0 clips without "
             "noise)");
    sa.Check(!heterogeneity.enabled || heterogeneity.method == "zero_pad",
             "enabled",
             "secure aggregation sums one vector layout per round: workers "
             "zero-pad their ranks to it, which is the zero_pad merge; got "
             "heterogeneity.method '" +
                 heterogeneity.method + "'");
  }
  ConfigReader e = in.Section("eval");
  eval.Read(e);
  ConfigReader c = in.Section("checkpoint");
  checkpoint.Read(c);
  ConfigReader l = in.Section("logging");
  logging.Read(l);
  ConfigReader lim = in.Section("limits");
  lim.Get("max_update_mb", &max_update_mb);
  lim.Check(max_update_mb >= 1, "max_update_mb",
            "must be >= 1, got " + ToConfigString(max_update_mb));
  in.Get("adapter_seed", &adapter_seed);
}

StatusOr<CoordinatorConfig> LoadCoordinatorConfig(
    const std::string& path, const std::vector<std::string>& overrides) {
  return LoadConfigAs<CoordinatorConfig>(path, overrides);
}

}  // namespace coordinator
}  // namespace fedpeft
