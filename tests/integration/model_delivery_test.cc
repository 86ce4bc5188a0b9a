// End-to-end base-model delivery (model.source upstream): a cloud that
// holds the model, one edge and workers that hold none. The edge fetches
// the model from the cloud once and serves it to its three workers from its
// cache; a block corrupted in the edge's cache is detected and fetched from
// the cloud again when a fourth worker joins with an empty cache. Real
// `fedpeft` processes over real sockets (federation_fixture.h).

#include <nlohmann/json.hpp>

#include "delivery/model_manifest.h"
#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_util::FederationTest;
using testing_util::Slurp;

constexpr uint64_t kDeliveryBlock = 64 << 10;

class ModelDeliveryTest : public FederationTest {
 protected:
  std::vector<std::string> CloudArgs(int rounds,
                                     std::vector<std::string> extra = {}) {
    return Command(
        {"coordinator", "--config", cloud_config_},
        FastFederation(
            {"server.address=127.0.0.1:0",
             "server.port_file=" + Path("coordinator.port"),
             "federation.rounds=" + std::to_string(rounds),
             "federation.min_available=1", "federation.shutdown_grace_s=3",
             "federation.round_deadline_s=120", "hierarchy.edge_rounds=1",
             "train.local_steps=2", "eval.data.max_records=200",
             "eval.data.max_seq_len=64", "checkpoint.dir=" + Path("ckpt"),
             "logging.metrics_file=" + Path("metrics.jsonl"), "model.threads=1",
             "model.block_size=" + std::to_string(kDeliveryBlock)}),
        extra);
  }
  // No local model: model.path names nothing.
  pid_t StartEdge(int cloud_port, int min_workers = 3,
                  std::vector<std::string> extra = {}) {
    return Spawn(
        Command(
            {"edge", "--config", edge_config_},
            FastFederation(
                {"upstream.address=127.0.0.1:" + std::to_string(cloud_port),
                 "upstream.task_wait_ms=1000", "upstream.backoff_max_ms=1000",
                 "server.address=127.0.0.1:0",
                 "server.port_file=" + Path("edge.port"),
                 "federation.min_available=" + std::to_string(min_workers),
                 "federation.shutdown_grace_s=3", "model.threads=1",
                 "model.path=/nonexistent/model", "model.source=upstream",
                 "model.cache_dir=" + Path("edge-cache")}),
            extra),
        Path("edge.log"));
  }
  pid_t StartUpstreamWorker(int edge_port, int i,
                            std::vector<std::string> extra = {}) {
    std::vector<std::string> sets = {
        "--set", "model.path=/nonexistent/model",
        "--set", "model.source=upstream",
        "--set", "model.cache_dir=" + Path("cache-" + std::to_string(i))};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return StartWorker(edge_port, i, 4, sets);
  }
  // The latest bytes_model_down_total of the cloud's metrics (-1: none).
  int64_t CloudModelBytes() {
    std::vector<nlohmann::json> rows = Metrics();
    if (rows.empty()) return -1;
    return rows.back().value("bytes_model_down_total", int64_t{-1});
  }
  std::string WorkerLog(int i) {
    return Slurp(Path("worker-" + std::to_string(i) + ".log"));
  }
  // Whether worker i has trained a round.
  bool Trained(int i) {
    return WorkerLog(i).find("'worker-" + std::to_string(i) + "' round ") !=
           std::string::npos;
  }

  std::string cloud_config_ = "configs/hier/coordinator.yaml";
  std::string edge_config_ = "configs/hier/edge.yaml";
};

TEST_F(ModelDeliveryTest,
       EdgeFetchesOnceForThreeWorkersAndRefetchesACorruptBlock) {
  StatusOr<delivery::ModelManifest> manifest =
      delivery::BuildManifest(kModel, kDeliveryBlock);
  ASSERT_TRUE(manifest.ok()) << manifest.status().ToString();
  const int64_t model_bytes = static_cast<int64_t>(manifest->total_bytes());
  const size_t blocks = manifest->total_blocks();
  ASSERT_GT(blocks, 16u);

  pid_t cloud = Spawn(CloudArgs(60), Path("coordinator.log"));
  const int cloud_port = WaitForPort(cloud, Path("coordinator.port"));
  ASSERT_GT(cloud_port, 0) << Logs();
  pid_t edge = StartEdge(cloud_port);
  const int edge_port = WaitForPort(edge, Path("edge.port"));
  ASSERT_GT(edge_port, 0) << Logs();
  for (int i = 0; i < 3; ++i) StartUpstreamWorker(edge_port, i);

  // The workers train on the delivered model.
  ASSERT_TRUE(WaitFor([&] { return Trained(0) && Trained(1) && Trained(2); },
                      std::chrono::seconds(300)))
      << Logs();
  ASSERT_TRUE(WaitFor([&] { return CloudModelBytes() >= 0; },
                      std::chrono::seconds(120)))
      << Logs();
  // The cloud sent the model once: the edge cached it for its workers.
  EXPECT_EQ(CloudModelBytes(), model_bytes) << Logs();
  const std::string fetched = "fetched " + std::to_string(blocks) +
                              " blocks (" + std::to_string(model_bytes) +
                              " B), 0 from the cache";
  EXPECT_THAT(Slurp(Path("edge.log")),
              HasSubstr("'edge-0': model " + manifest->id.substr(0, 16)))
      << Slurp(Path("edge.log"));
  EXPECT_THAT(Slurp(Path("edge.log")), HasSubstr(fetched));
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(WorkerLog(i), HasSubstr(fetched)) << WorkerLog(i);
    EXPECT_TRUE(fs::is_directory(Path("cache-" + std::to_string(i)) +
                                 "/models/" + manifest->id));
  }

  // Damage one block of the weights in the edge's cache; a fourth worker
  // with an empty cache joins.
  const std::string victim = manifest->files[1].blocks[3];
  ASSERT_EQ(manifest->files[1].path, "model.safetensors");
  const fs::path block_file =
      fs::path(Path("edge-cache")) / "blocks" / victim.substr(0, 2) / victim;
  std::string bytes = Slurp(block_file.string());
  ASSERT_EQ(bytes.size(), kDeliveryBlock);
  bytes[4242] ^= 0x20;
  {
    std::ofstream out(block_file, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  StartUpstreamWorker(edge_port, 3);
  ASSERT_TRUE(WaitFor([&] { return Trained(3); }, std::chrono::seconds(300)))
      << Logs();
  const std::string edge_log = Slurp(Path("edge.log"));
  EXPECT_THAT(edge_log, HasSubstr("corrupt block " + victim)) << edge_log;
  EXPECT_THAT(edge_log, HasSubstr("block " + victim.substr(0, 16) + " (" +
                                  std::to_string(kDeliveryBlock) +
                                  " B) fetched from upstream"));
  EXPECT_THAT(WorkerLog(3), HasSubstr(fetched)) << WorkerLog(3);
  // The cloud sent that block once more, and nothing else.
  EXPECT_TRUE(WaitFor(
      [&] {
        return CloudModelBytes() ==
               model_bytes + static_cast<int64_t>(kDeliveryBlock);
      },
      std::chrono::seconds(120)))
      << "bytes_model_down_total " << CloudModelBytes() << "\n"
      << Logs();
  // The federation's remaining rounds are not this test's: TearDown ends
  // the processes.
}

// The same over mutual TLS (configs/tls/): the edge fetches with its edge
// certificate from the coordinator's, the worker with its worker
// certificate from the edge's.
TEST_F(ModelDeliveryTest, OverMutualTlsAWorkerWithoutAModelTrainsBehindAnEdge) {
  const std::string certs = Path("certs");
  ASSERT_TRUE(MakeCerts(certs, {{"coordinator", "coordinator"},
                                {"edge", "edge-0"},
                                {"worker", "worker-0"}}))
      << Slurp(Path("certs.txt"));
  auto tls = [&](const std::string& name) { return TlsSets(certs, name); };
  cloud_config_ = "configs/tls/coordinator.yaml";
  edge_config_ = "configs/tls/edge.yaml";
  worker_config_ = "configs/tls/worker.yaml";
  pid_t cloud =
      Spawn(CloudArgs(30, tls("coordinator")), Path("coordinator.log"));
  const int cloud_port = WaitForPort(cloud, Path("coordinator.port"));
  ASSERT_GT(cloud_port, 0) << Logs();
  pid_t edge = StartEdge(cloud_port, 1, tls("edge-0"));
  const int edge_port = WaitForPort(edge, Path("edge.port"));
  ASSERT_GT(edge_port, 0) << Logs();
  StartUpstreamWorker(edge_port, 0, tls("worker-0"));
  ASSERT_TRUE(WaitFor([&] { return Trained(0); }, std::chrono::seconds(300)))
      << Logs();
  StatusOr<delivery::ModelManifest> manifest =
      delivery::BuildManifest(kModel, kDeliveryBlock);
  ASSERT_TRUE(manifest.ok());
  const std::string fetched =
      "fetched " + std::to_string(manifest->total_blocks()) + " blocks (" +
      std::to_string(manifest->total_bytes()) + " B)";
  EXPECT_THAT(Slurp(Path("edge.log")), HasSubstr(fetched));
  EXPECT_THAT(WorkerLog(0), HasSubstr(fetched));
  // Each side named the certificate it served.
  EXPECT_THAT(Slurp(Path("edge.log")), HasSubstr("to 'worker-0'"));
  EXPECT_THAT(Slurp(Path("coordinator.log")), HasSubstr("to 'edge-0'"));
}

}  // namespace
}  // namespace fedpeft
