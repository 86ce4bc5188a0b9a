// How a pipeline splits layers across its stages (serve/pipeline_partition.h).
#include "serve/pipeline_partition.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fedpeft {
namespace serve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Qwen2.5-0.5B in float32: 24 layers of ~14.9M weights, a tied 151936 x 896
// embedding of ~136M (about nine layers' worth) at the head.
const std::vector<uint64_t> kQwenLayers(24, 59'600'000);
constexpr uint64_t kQwenIo = 544'600'000;

TEST(PipelinePartitionTest, EqualStagesGetEqualBytesCountingTheHeadsIo) {
  auto b = PartitionLayers(kQwenLayers, kQwenIo, {{1, 0}, {1, 0}});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  // 544.6 + 7 x 59.6 = 962 MB at the head, 17 x 59.6 = 1013 MB after it;
  // with 8 at the head it would hold 1021 MB, with 6 stage 1 would hold
  // 1073 MB: either way the slower stage would be slower.
  EXPECT_THAT(*b, ElementsAre(0, 7, 24));
}

TEST(PipelinePartitionTest, AFasterStageTakesMoreLayers) {
  auto b = PartitionLayers(std::vector<uint64_t>(12, 100), 0, {{1, 0}, {2, 0}});
  ASSERT_TRUE(b.ok());
  EXPECT_THAT(*b, ElementsAre(0, 4, 12));  // 400 / 1 == 800 / 2
}

TEST(PipelinePartitionTest, MemoryCapsMoveLayersToStagesWithRoom) {
  // Without caps [0, 2) [2, 4); stage 1 holds one layer at most.
  auto b =
      PartitionLayers(std::vector<uint64_t>(4, 100), 0, {{1, 0}, {1, 100}});
  ASSERT_TRUE(b.ok());
  EXPECT_THAT(*b, ElementsAre(0, 3, 4));
}

TEST(PipelinePartitionTest, AHeadWithOnlyTheIoIsAllowed) {
  auto b =
      PartitionLayers(std::vector<uint64_t>(2, 100), 1000, {{1, 0}, {1, 0}});
  ASSERT_TRUE(b.ok());
  EXPECT_THAT(*b, ElementsAre(0, 0, 2));
}

TEST(PipelinePartitionTest, RefusalsNameWhatDoesNotFit) {
  auto too_small = PartitionLayers(std::vector<uint64_t>(4, 1 << 20), 0,
                                   {{1, 1 << 20}, {1, 1 << 20}});
  ASSERT_FALSE(too_small.ok());
  EXPECT_THAT(too_small.status().message(),
              HasSubstr("do not fit the stages' memory (stage 0 1 MiB, "
                        "stage 1 1 MiB; pipeline.memory_mb)"));
  auto too_many = PartitionLayers(std::vector<uint64_t>(2, 1), 0,
                                  {{1, 0}, {1, 0}, {1, 0}, {1, 0}});
  ASSERT_FALSE(too_many.ok());
  EXPECT_THAT(too_many.status().message(), HasSubstr("4 stages for a model "
                                                     "of 2 layers"));
}

TEST(PipelinePartitionTest, ASplitByHandMustCoverTheModel) {
  auto ok = SplitByHand({1, 2, 2}, 5);
  ASSERT_TRUE(ok.ok());
  EXPECT_THAT(*ok, ElementsAre(0, 1, 3, 5));
  EXPECT_EQ(DescribeSplit(*ok), "[0, 1) [1, 3) [3, 5)");
  auto short_by_one = SplitByHand({1, 3}, 5);
  ASSERT_FALSE(short_by_one.ok());
  EXPECT_THAT(short_by_one.status().message(),
              HasSubstr("pipeline.layers: the stages' layers add up to 4, "
                        "the model has 5"));
  auto empty_stage = SplitByHand({5, 0}, 5);
  ASSERT_FALSE(empty_stage.ok());
  EXPECT_THAT(empty_stage.status().message(),
              HasSubstr("stage 1 is given 0 layers"));
}

}  // namespace
}  // namespace serve
}  // namespace fedpeft
