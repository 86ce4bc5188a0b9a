#include "coordinator/edge_config.h"

namespace fedpeft {
namespace coordinator {

void EdgeConfig::Read(ConfigReader& in) {
  ConfigReader e = in.Section("edge");
  e.Get("id", &id);
  e.Check(!id.empty() && id.size() <= 128, "id",
          "expected 1 to 128 characters, got '" + id + "'");
  ConfigReader u = in.Section("upstream");
  upstream.Read(u);
  ConfigReader s = in.Section("server");
  server.Read(s);
  // One certificate for both sides: the edge serves its workers and is a
  // client of the cloud (`fedpeft certs issue --role edge`).
  ConfigReader tls = in.Section("tls");
  server.tls.Read(tls, security::kTlsServer | security::kTlsClient);
  upstream.tls = server.tls;
  ConfigReader f = in.Section("federation");
  for (const char* key : {"rounds", "id", "on_quorum_miss", "max_retries"}) {
    f.Check(!f.Has(key), key,
            "is the cloud's to set: an edge runs the rounds each cloud task "
            "asks for (the coordinator's hierarchy.edge_rounds) and skips an "
            "edge round that misses its quorum");
  }
  rounds.Read(f);
  ConfigReader m = in.Section("model");
  model.Read(m);
  if (!model.upstream()) CheckBlockSizeFits(m, model, server);
  ConfigReader l = in.Section("logging");
  logging.metrics_file.clear();
  logging.Read(l);
  ConfigReader lim = in.Section("limits");
  lim.Get("max_update_mb", &max_update_mb);
  lim.Check(max_update_mb >= 1, "max_update_mb",
            "must be >= 1, got " + ToConfigString(max_update_mb));
}

StatusOr<EdgeConfig> LoadEdgeConfig(const std::string& path,
                                    const std::vector<std::string>& overrides) {
  return LoadConfigAs<EdgeConfig>(path, overrides);
}

}  // namespace coordinator
}  // namespace fedpeft
