// Fetching a model into a cache and serving it from one: everything once,
// then nothing; a resumed fetch takes only what is missing; corrupt blocks
// (cached, or damaged on the way) are detected and fetched again; two
// models that share blocks share the cache; an edge's cache fetches a
// block once for concurrent readers.
#include "delivery/model_fetch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <thread>

#include "delivery/model_source.h"
#include "delivery/sha256.h"
#include "tests/delivery/delivery_fixture.h"

namespace fedpeft {
namespace delivery {
namespace {

using delivery_test::DeliveryTest;
using delivery_test::FakeRemote;
using delivery_test::ReadAll;
using delivery_test::WriteAll;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

constexpr uint64_t kBlock = 64 << 10;

// Distinct blocks of a manifest.
size_t DistinctBlocks(const ModelManifest& m) {
  std::set<std::string> all;
  for (const ManifestFile& f : m.files)
    all.insert(f.blocks.begin(), f.blocks.end());
  return all.size();
}

void ExpectSameFiles(const std::string& want, const std::string& got) {
  for (const auto& e : fs::directory_iterator(want)) {
    EXPECT_EQ(ReadAll(e.path()), ReadAll(fs::path(got) / e.path().filename()))
        << e.path();
  }
}

TEST_F(DeliveryTest, DeliverFetchesEveryBlockOnceThenNothing) {
  FakeRemote remote(kModel, kBlock);
  FetchStats first;
  ModelManifest m;
  StatusOr<std::string> path =
      DeliverModel(remote, Path("cache"), "w0", &first, &m);
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_EQ(*path, Path("cache") + "/models/" + m.id);
  ExpectSameFiles(kModel, *path);
  EXPECT_EQ(first.blocks_fetched, static_cast<int64_t>(DistinctBlocks(m)));
  EXPECT_EQ(first.bytes_fetched, m.total_bytes());
  EXPECT_EQ(first.blocks_cached, 0);
  EXPECT_EQ(remote.sent_total(), first.blocks_fetched);

  FetchStats second;
  path = DeliverModel(remote, Path("cache"), "w0", &second);
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_EQ(second.blocks_fetched, 0);
  EXPECT_EQ(second.bytes_cached, m.total_bytes());
  EXPECT_EQ(remote.sent_total(), first.blocks_fetched);  // nothing more sent
}

TEST_F(DeliveryTest, AnInterruptedFetchResumesWithWhatIsMissing) {
  FakeRemote remote(kModel, kBlock);
  remote.CutAfter(7);
  StatusOr<std::string> path = DeliverModel(remote, Path("cache"), "w0");
  ASSERT_FALSE(path.ok());
  EXPECT_EQ(path.status().code(), StatusCode::kUnavailable);
  FetchStats again;
  ModelManifest m;
  path = DeliverModel(remote, Path("cache"), "w0", &again, &m);
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_EQ(again.blocks_cached, 7);
  EXPECT_EQ(again.blocks_fetched, static_cast<int64_t>(DistinctBlocks(m)) - 7);
  EXPECT_EQ(remote.sent_total(), static_cast<int>(DistinctBlocks(m)));
  ExpectSameFiles(kModel, *path);
}

TEST_F(DeliveryTest, ACorruptCachedBlockIsDetectedAndFetchedAgain) {
  FakeRemote remote(kModel, kBlock);
  ModelManifest m;
  ASSERT_TRUE(DeliverModel(remote, Path("cache"), "w0", nullptr, &m).ok());
  const std::string victim = m.files[1].blocks[3];  // model.safetensors
  BlockStore store(Path("cache/blocks"));
  std::string bytes = ReadAll(store.PathOf(victim));
  bytes[100] ^= 0x10;
  WriteAll(store.PathOf(victim), bytes);

  FetchStats st;
  StatusOr<std::string> path = DeliverModel(remote, Path("cache"), "w0", &st);
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_EQ(st.corrupt, 1);
  EXPECT_EQ(st.blocks_fetched, 1);
  EXPECT_EQ(remote.sent(victim), 2);
  EXPECT_EQ(ReadAll(store.PathOf(victim)).size(), kBlock);
  EXPECT_TRUE(store.Get(victim).ok());
  ExpectSameFiles(kModel, *path);
}

TEST_F(DeliveryTest, ABlockDamagedOnTheWayIsAskedForAgain) {
  FakeRemote remote(kModel, kBlock);
  StatusOr<ModelManifest> m = remote.GetManifest();
  ASSERT_TRUE(m.ok());
  const std::string victim = m->files[1].blocks[0];
  remote.Damage(victim, 1);
  FetchStats st;
  StatusOr<std::string> path = DeliverModel(remote, Path("cache"), "w0", &st);
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_EQ(st.corrupt, 1);
  EXPECT_EQ(remote.sent(victim), 2);
  ExpectSameFiles(kModel, *path);
  // Damaged every time: a clear error after the last attempt.
  FakeRemote always(kModel, kBlock);
  always.Damage(victim, 100);
  path = DeliverModel(always, Path("cache2"), "w1");
  ASSERT_FALSE(path.ok());
  EXPECT_THAT(path.status().message(), HasSubstr("still missing or corrupt"));
  EXPECT_EQ(always.sent(victim), 3);
}

TEST_F(DeliveryTest, ADamagedAssembledFileIsRebuilt) {
  FakeRemote remote(kModel, kBlock);
  StatusOr<std::string> path = DeliverModel(remote, Path("cache"), "w0");
  ASSERT_TRUE(path.ok());
  const fs::path weights = fs::path(*path) / "model.safetensors";
  std::string bytes = ReadAll(weights);
  bytes[bytes.size() / 2] ^= 1;
  WriteAll(weights, bytes);
  path = DeliverModel(remote, Path("cache"), "w0");
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  ExpectSameFiles(kModel, *path);
}

TEST_F(DeliveryTest, TwoModelsSharingBlocksShareTheCache) {
  const std::string other = CopyModel("finetune");
  WriteAll(fs::path(other) / "config.json",
           ReadAll(fs::path(other) / "config.json") + " ");
  FakeRemote base(kModel, kBlock);
  FakeRemote tuned(other, kBlock);
  ModelManifest mb, mt;
  FetchStats sb, st;
  StatusOr<std::string> pb = DeliverModel(base, Path("cache"), "e", &sb, &mb);
  StatusOr<std::string> pt = DeliverModel(tuned, Path("cache"), "e", &st, &mt);
  ASSERT_TRUE(pb.ok() && pt.ok());
  EXPECT_NE(*pb, *pt);
  EXPECT_EQ(st.blocks_fetched, 1);  // config.json alone
  EXPECT_EQ(st.bytes_fetched, fs::file_size(fs::path(other) / "config.json"));
  EXPECT_EQ(st.blocks_cached, static_cast<int64_t>(DistinctBlocks(mt)) - 1);
  ExpectSameFiles(other, *pt);
}

TEST_F(DeliveryTest, LocalSourceServesCheckedBlocksOfItsManifestOnly) {
  const std::string model = CopyModel("model");
  LocalModelSource source(model, kBlock);
  auto m = source.Manifest();
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const std::string first = (*m)->files[1].blocks[0];
  StatusOr<std::string> got = source.ReadBlock(first);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(Sha256Hex(*got), first);
  EXPECT_EQ(source.stats().bytes_served, got->size());
  StatusOr<std::string> unknown = source.ReadBlock(Sha256Hex("nope"));
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  // The file changed under the server: refused, not served.
  std::string bytes = ReadAll(fs::path(model) / "model.safetensors");
  bytes[10] ^= 1;
  WriteAll(fs::path(model) / "model.safetensors", bytes);
  got = source.ReadBlock(first);
  EXPECT_EQ(got.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(got.status().message(), HasSubstr("changed"));
}

// Upstream that holds every GetBlocks until released.
class GatedRemote : public BlockRemote {
 public:
  explicit GatedRemote(BlockRemote& inner) : inner_(inner) {}
  StatusOr<ModelManifest> GetManifest() override {
    return inner_.GetManifest();
  }
  Status GetBlocks(const std::vector<std::string>& hashes,
                   const OnBlock& on_block) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++calls_;
    cv_.wait(lock, [this] { return open_; });
    lock.unlock();
    return inner_.GetBlocks(hashes, on_block);
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  int calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  BlockRemote& inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;  // GUARDED_BY(mu_)
  int calls_ = 0;      // GUARDED_BY(mu_)
};

TEST_F(DeliveryTest, EdgeCacheFetchesAMissingBlockOnceForConcurrentReaders) {
  FakeRemote cloud(kModel, kBlock);
  GatedRemote gated(cloud);
  StatusOr<ModelManifest> m = cloud.GetManifest();
  ASSERT_TRUE(m.ok());
  BlockStore store(Path("edge/blocks"));
  ASSERT_TRUE(store.Open().ok());
  CachedModelSource source(std::make_shared<const ModelManifest>(*m), store,
                           gated);
  const std::string hash = m->files[1].blocks[2];
  constexpr int kReaders = 4;
  std::vector<StatusOr<std::string>> got(kReaders, Status::Internal("unset"));
  std::vector<std::thread> readers;
  for (int i = 0; i < kReaders; ++i) {
    readers.emplace_back([&, i] { got[i] = source.ReadBlock(hash); });
  }
  // Released once one reader fetches and the others wait for its fetch.
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (source.stats().joined_fetches < kReaders - 1 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
  }
  EXPECT_EQ(source.stats().joined_fetches, kReaders - 1);
  gated.Open();
  for (auto& t : readers) t.join();
  for (const auto& g : got) {
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_EQ(Sha256Hex(*g), hash);
  }
  EXPECT_EQ(gated.calls(), 1);
  EXPECT_EQ(cloud.sent(hash), 1);
  EXPECT_EQ(source.stats().blocks_fetched, 1);
  EXPECT_EQ(source.stats().blocks_served, kReaders);
  // Cached now: served without upstream.
  ASSERT_TRUE(source.ReadBlock(hash).ok());
  EXPECT_EQ(cloud.sent(hash), 1);
  // Corrupt in the cache: detected, fetched again, served right.
  std::string bytes = ReadAll(store.PathOf(hash));
  bytes[0] ^= 1;
  WriteAll(store.PathOf(hash), bytes);
  StatusOr<std::string> again = source.ReadBlock(hash);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(Sha256Hex(*again), hash);
  EXPECT_EQ(store.corrupt_found(), 1);
  EXPECT_EQ(cloud.sent(hash), 2);
  // Not a block of the model: refused without asking upstream.
  EXPECT_EQ(source.ReadBlock(Sha256Hex("x")).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(gated.calls(), 2);
}

}  // namespace
}  // namespace delivery
}  // namespace fedpeft
