// Base-model delivery through the coordinator's gRPC service (plaintext
// here; the certificate roles are in tls_service_test.cc): the manifest of
// model.path, its blocks by name, and requests from the network that are
// refused with the field named while the server goes on serving.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "coordinator/edge.h"
#include "delivery/model_manifest.h"
#include "delivery/sha256.h"
#include "tests/coordinator/service_fixture.h"
#include "worker/model_download.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace coordinator {
namespace {

using ::testing::HasSubstr;

class ModelServiceTest : public testing_util::ServiceTest {
 protected:
  grpc::Status Manifest(proto::ModelManifest* out) {
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    return stub_->GetModelManifest(&ctx, proto::ModelManifestRequest(), out);
  }
  // The blocks `hashes` asks for, in the order received.
  grpc::Status Blocks(const std::vector<std::string>& hashes,
                      std::vector<proto::ModelBlock>* out) {
    proto::ModelBlocksRequest req;
    for (const auto& h : hashes) req.add_hashes(h);
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, std::chrono::seconds(10));
    auto reader = stub_->GetModelBlocks(&ctx, req);
    proto::ModelBlock b;
    while (reader->Read(&b)) out->push_back(b);
    return reader->Finish();
  }
};

TEST_F(ModelServiceTest, ServesTheManifestAndCheckedBlocksOfModelPath) {
  // max_message_mb 1 (the fixture's): blocks of 512 KiB by default.
  Start(Config());
  proto::ModelManifest pm;
  grpc::Status s = Manifest(&pm);
  ASSERT_TRUE(s.ok()) << s.error_message();
  delivery::ModelManifest m = worker::ManifestFromProto(pm);
  ASSERT_TRUE(delivery::ValidateManifest(m, "reply").ok());
  EXPECT_EQ(m.block_size, 512u << 10);
  StatusOr<delivery::ModelManifest> local =
      delivery::BuildManifest(kModel, 512 << 10);
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(m.id, local->id);
  std::vector<std::string> all;
  for (const auto& f : m.files)
    all.insert(all.end(), f.blocks.begin(), f.blocks.end());
  std::vector<proto::ModelBlock> got;
  s = Blocks(all, &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.size(), all.size());
  uint64_t bytes = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].hash(), all[i]);
    EXPECT_EQ(delivery::Sha256Hex(got[i].data()), all[i]);
    bytes += got[i].data().size();
  }
  EXPECT_EQ(bytes, m.total_bytes());
  EXPECT_EQ(coordinator_->model_source().stats().bytes_served, bytes);
}

TEST_F(ModelServiceTest, BadBlockRequestsAreRefusedNamingTheField) {
  Start(Config());
  proto::ModelManifest pm;
  ASSERT_TRUE(Manifest(&pm).ok());
  const std::string good = pm.files(1).blocks(0);
  struct Case {
    std::vector<std::string> hashes;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{}, "hashes: expected 1 to 256 block names, got 0"},
      {std::vector<std::string>(257, good), "got 257"},
      {{good, "../../etc/passwd"}, "hashes[1]: expected 64 lowercase hex"},
      {{good, std::string(64, 'A')}, "hashes[1]"},
      {{delivery::Sha256Hex("not a block")}, "hashes[0]"},
  };
  for (const Case& c : cases) {
    std::vector<proto::ModelBlock> got;
    grpc::Status s = Blocks(c.hashes, &got);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.says));
  }
  std::vector<proto::ModelBlock> got;
  grpc::Status s = Blocks({delivery::Sha256Hex("not a block")}, &got);
  EXPECT_THAT(s.error_message(), HasSubstr("is not a block of model"));
  // The server goes on serving.
  got.clear();
  s = Blocks({good}, &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(delivery::Sha256Hex(got[0].data()), good);
}

// The model.source keys, on each kind of process, with their key paths.
TEST(ModelSourceConfigTest, KeysAreCheckedWhereTheyApply) {
  const std::vector<std::string> plain = {"tls.insecure=true"};
  auto with = [&](std::vector<std::string> sets) {
    sets.insert(sets.end(), plain.begin(), plain.end());
    return sets;
  };
  auto w = worker::LoadWorkerConfig(
      "", with({"model.source=upstream", "model.cache_dir=/tmp/c"}));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_TRUE(w->model.upstream());
  w = worker::LoadWorkerConfig("", with({"model.source=upstream"}));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("model.cache_dir: is required"));
  w = worker::LoadWorkerConfig("", with({"model.source=cloud"}));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(
      w.status().message(),
      HasSubstr("model.source: expected local or upstream, got 'cloud'"));
  w = worker::LoadWorkerConfig(
      "", with({"model.source=upstream", "model.cache_dir=/tmp/c",
                "worker.distributed.world_size=2"}));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("model.source: upstream needs"));
  auto c = LoadCoordinatorConfig(
      "", with({"model.source=upstream", "model.cache_dir=/tmp/c"}));
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("model.source: the cloud coordinator has no upstream"));
  c = LoadCoordinatorConfig("", with({"model.block_size=100"}));
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("model.block_size: must be 0"));
  c = LoadCoordinatorConfig(
      "", with({"model.block_size=8388608", "server.max_message_mb=4"}));
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("does not fit in a message of server.max_message_mb"));
  c = LoadCoordinatorConfig(
      "", with({"server.max_message_mb=1", "server.chunk_kb=64"}));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->model.BlockSizeFor(c->server.max_message_mb), 512u << 10);
  auto e = LoadEdgeConfig(
      "", with({"model.source=upstream", "model.cache_dir=/tmp/e"}));
  EXPECT_TRUE(e.ok()) << e.status().ToString();
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
