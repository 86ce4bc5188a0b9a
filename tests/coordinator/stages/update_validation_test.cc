// UpdateValidation without a server: each check refuses exactly the update
// that breaks it, with a message naming the worker and the tensor, and a
// well-formed update (any subset of the expected tensors) passes.
#include "coordinator/stages/update_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tests/coordinator/stages/stage_test_util.h"

namespace fedpeft {
namespace coordinator {
namespace {

using stage_test::AKey;
using stage_test::BKey;
using stage_test::kQ;
using stage_test::kV;
using ::testing::AllOf;
using ::testing::HasSubstr;

class UpdateValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // What the planner would expect at rank 2: every tensor of the global
    // adapter, v_proj's A frozen this round.
    std::map<std::string, transport::TensorSpec> specs;
    for (const auto& [key, t] : stage_test::Adapter(2)) {
      transport::TensorSpec spec;
      spec.shape = t.sizes().vec();
      spec.dtype = torch::kFloat32;
      specs[key] = spec;
    }
    expected_.specs = specs;
    expected_.excluded = {AKey(kV)};
    header_.round = 1;
    header_.num_samples = 10;
    header_.train_loss = 1.5;
    delta_[AKey(kQ)] = torch::full({2, 5}, 0.25f);
    delta_[BKey(kQ)] = torch::full({6, 2}, -0.5f);
  }

  Status Check(const TensorMap& delta) const {
    return validation_.CheckUpdate(
        UpdateCheck{"w1", /*edge=*/false, header_, delta, expected_});
  }

  UpdateValidation validation_;
  UploadExpectation expected_;
  UpdateHeader header_;
  TensorMap delta_;  // a good update: q_proj only
};

TEST_F(UpdateValidationTest, PassesAGoodUpdateOfSomeOfTheTensors) {
  Status s = Check(delta_);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(UpdateValidationTest, RefusesAnUnknownTensorByName) {
  delta_["base_model.model.lm_head.lora_A.weight"] = torch::zeros({2, 5});
  Status s = Check(delta_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("'w1'"),
                    HasSubstr("'base_model.model.lm_head.lora_A.weight'"),
                    HasSubstr("unexpected tensor")));
}

TEST_F(UpdateValidationTest, RefusesATensorFrozenThisRound) {
  // Known and of the right shape, but frozen: the planner excluded it.
  delta_[AKey(kV)] = torch::zeros({2, 5});
  Status s = Check(delta_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'" + AKey(kV) + "'"),
                                 HasSubstr("frozen this round")));
}

TEST_F(UpdateValidationTest, RefusesAWrongShapeSayingGotAndExpected) {
  delta_[BKey(kQ)] = torch::zeros({6, 3});
  Status s = Check(delta_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("'" + BKey(kQ) + "'"), HasSubstr("[6, 3]"),
                    HasSubstr("expected [6, 2]")));
}

TEST_F(UpdateValidationTest, RefusesZeroSamplesAndANonFiniteLoss) {
  header_.num_samples = 0;
  Status s = Check(delta_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("num_samples must be in [1, 1099511627776], got 0"));

  // 2^63 passed once, and became a negative FedAvg weight as int64.
  header_.num_samples = uint64_t{1} << 63;
  s = Check(delta_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("'w1'"), HasSubstr("got 9223372036854775808")));
  header_.num_samples = kMaxNumSamples;
  EXPECT_TRUE(Check(delta_).ok());

  header_.num_samples = 10;
  header_.train_loss = std::numeric_limits<double>::infinity();
  s = Check(delta_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("train_loss"));
}

TEST_F(UpdateValidationTest, RefusesNaNAndNonFloat32Values) {
  TensorMap nan = delta_;
  nan[BKey(kQ)] = nan[BKey(kQ)].clone();
  nan[BKey(kQ)][3][1] = std::nanf("");
  Status s = Check(nan);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("'" + BKey(kQ) + "'"), HasSubstr("NaN or Inf")));

  // Without specs (a whole adapter's upload) the dtype is still checked.
  expected_.specs.reset();
  TensorMap f64 = delta_;
  f64[AKey(kQ)] = f64[AKey(kQ)].to(torch::kFloat64);
  s = Check(f64);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("'" + AKey(kQ) + "'"), HasSubstr("not float32")));
}

TEST_F(UpdateValidationTest, RefusesAWholeAdapterWithAnIncompletePair) {
  expected_.specs.reset();  // a whole adapter: shapes only once decoded
  header_.whole_adapter = true;
  TensorMap adapter = stage_test::Adapter(3, 6, 5, 0.1f);
  EXPECT_TRUE(Check(adapter).ok());

  adapter.erase(BKey(kV));  // v_proj's A without its B
  Status s = Check(adapter);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'" + AKey(kV) + "'"),
                                 HasSubstr("incomplete LoRA pair")));
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
