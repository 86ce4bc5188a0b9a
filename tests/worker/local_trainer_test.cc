#include "worker/local_trainer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "model/loader.h"
#include "model/tokenizer.h"
#include "tests/test_paths.h"
#include "worker/train_config.h"

namespace fedpeft {
namespace worker {
namespace {

using ::testing::HasSubstr;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    torch::set_num_threads(1);
    auto w = model::LoadModel(kModel);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    weights_ = new std::shared_ptr<const model::LlamaWeights>(*w);
    auto tok = model::LoadTokenizer(kModel + "/tokenizer.model");
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete weights_;
    delete tokenizer_;
  }

  // Shakespeare examples: `n_records` speeches, split train/eval.
  static void Examples(int64_t n_records, std::vector<data::Example>* train,
                       std::vector<data::Example>* eval) {
    data::DataOptions d;
    d.path = kShakespeare;
    d.max_seq_len = 64;
    d.max_records = n_records;
    auto records = data::LoadRecords(d);
    ASSERT_TRUE(records.ok()) << records.status().ToString();
    std::vector<data::Record> tr, ev;
    data::SplitTrainEval(*records, 0.2, 7, &tr, &ev);
    *train = data::Tokenize(tr, *tokenizer_, d);
    *eval = data::Tokenize(ev, *tokenizer_, d);
    ASSERT_FALSE(train->empty());
    ASSERT_FALSE(eval->empty());
  }

  static std::unique_ptr<peft::PeftModel> NewLora(uint64_t seed = 3) {
    peft::PeftOptions o;
    o.lora.r = 4;
    o.lora.alpha = 8;
    auto pm = peft::PeftModel::Create(*weights_, o, seed);
    EXPECT_TRUE(pm.ok()) << pm.status().ToString();
    return std::move(pm).value();
  }

  static std::shared_ptr<const model::LlamaWeights>* weights_;
  static model::Tokenizer* tokenizer_;
};
std::shared_ptr<const model::LlamaWeights>* TrainerTest::weights_ = nullptr;
model::Tokenizer* TrainerTest::tokenizer_ = nullptr;

TEST_F(TrainerTest, ShortLoraRunLowersHeldOutLoss) {
  std::vector<data::Example> train, eval;
  Examples(600, &train, &eval);
  auto pm = NewLora();
  TrainOptions t;
  t.max_steps = 60;
  t.batch_size = 8;
  t.progress_bar = false;
  t.log_every = 0;
  t.optim.lr = 5e-3;
  torch::Device cpu(torch::kCPU);
  EvalResult before = Evaluate(pm->model(), eval, 16, cpu);
  LocalTrainer trainer(*pm, t, cpu);
  TrainResult r = trainer.Train(train);
  EvalResult after = Evaluate(pm->model(), eval, 16, cpu);
  EXPECT_EQ(r.steps, 60);
  EXPECT_GT(r.tokens, 0);
  EXPECT_TRUE(std::isfinite(after.loss));
  // The shipped model knows children's stories, not Shakespeare: a few
  // dozen LoRA steps must move held-out loss clearly.
  EXPECT_LT(after.loss, before.loss - 0.1)
      << "before " << before.loss << " after " << after.loss;
  EXPECT_NEAR(after.perplexity, std::exp(after.loss), 1e-6 * after.perplexity);
}

TEST_F(TrainerTest, OnlyAdapterParametersChange) {
  std::vector<data::Example> train, eval;
  Examples(100, &train, &eval);
  auto pm = NewLora();
  torch::Tensor q_before = pm->model().ProjectionWeight(0, "q_proj").clone();
  TensorMap adapter_before;
  for (const auto& kv : pm->AdapterTensors()) {
    adapter_before[kv.first] = kv.second.detach().clone();
  }
  TrainOptions t;
  t.max_steps = 3;
  t.progress_bar = false;
  LocalTrainer trainer(*pm, t, torch::Device(torch::kCPU));
  trainer.Train(train);
  EXPECT_TRUE(
      torch::equal(q_before, pm->model().ProjectionWeight(0, "q_proj")));
  EXPECT_TRUE(torch::equal(
      q_before, (*weights_)->Get("model.layers.0.self_attn.q_proj.weight")));
  int changed = 0;
  for (const auto& kv : pm->AdapterTensors()) {
    if (!torch::equal(adapter_before[kv.first], kv.second)) ++changed;
  }
  EXPECT_EQ(changed, static_cast<int>(adapter_before.size()));
}

// Frozen tensors (APF, FFA-LoRA's A) and the layers below the trainable
// ones stay exactly as they were; everything else trains, and the trainer
// names what it trained (the worker uploads only that).
TEST_F(TrainerTest, FrozenTensorsAndLowerLayersStayPut) {
  std::vector<data::Example> train, eval;
  Examples(100, &train, &eval);
  auto pm = NewLora();
  TensorMap before;
  for (const auto& kv : pm->AdapterTensors()) {
    before[kv.first] = kv.second.detach().clone();
  }
  const std::string frozen =
      "base_model.model.model.layers.4.self_attn.q_proj.lora_A.weight";
  TrainOptions t;
  t.max_steps = 3;
  t.progress_bar = false;
  t.trainable_layers = 2;  // layers 3 and 4 of 5
  t.frozen = {frozen};
  LocalTrainer trainer(*pm, t, torch::Device(torch::kCPU));
  trainer.Train(train);
  for (const auto& [key, now] : pm->AdapterTensors()) {
    const bool trains = LayerOfKey(key) >= 3 && key != frozen;
    EXPECT_EQ(trainer.trained_keys().count(key) == 1, trains) << key;
    EXPECT_EQ(torch::equal(before.at(key), now), !trains) << key;
  }
  // With nothing left to train, a step only measures the loss.
  t.trainable_layers = 0;
  for (const auto& kv : before) t.frozen.insert(kv.first);
  LocalTrainer idle(*pm, t, torch::Device(torch::kCPU));
  TrainResult r = idle.Train(train);
  EXPECT_TRUE(idle.trained_keys().empty());
  EXPECT_TRUE(std::isfinite(r.mean_loss));
}

TEST(LayerOfKeyTest, ParsesTheLayerIndex) {
  EXPECT_EQ(LayerOfKey("base_model.model.model.layers.12.mlp.up_proj.lora_A"
                       ".weight"),
            12);
  EXPECT_EQ(LayerOfKey("lm_head.weight"), -1);
  EXPECT_EQ(LayerOfKey("model.layers.x.q"), -1);
}

TEST_F(TrainerTest, GradAccumulationEqualsOneBigBatch) {
  std::vector<data::Example> train, eval;
  Examples(200, &train, &eval);
  // Four full-length examples: two micro-batches of 2 == one batch of 4.
  std::vector<data::Example> four;
  for (const auto& e : train) {
    if (e.tokens.size() == 64 && four.size() < 4) four.push_back(e);
  }
  ASSERT_EQ(four.size(), 4u);
  std::vector<size_t> order{0, 1, 2, 3};
  auto big = data::MakeBatches(four, order, 4);
  auto small = data::MakeBatches(four, order, 2);
  ASSERT_EQ(big.size(), 1u);
  ASSERT_EQ(small.size(), 2u);

  TrainOptions t;
  t.optim.schedule = "constant";
  // Adam's first step is lr * g / (|g| + eps): with the default eps it is
  // ~lr * sign(g), so a coordinate whose gradient is ~0 moves by up to lr on
  // the last bits of the summation order (seen on one CPU: 1.6e-6 apart),
  // and a wrongly scaled gradient would go unseen. With eps 1 the step is
  // about lr * g: proportional to the gradient, which is what is compared.
  t.optim.eps = 1.0;
  auto a = NewLora(11);
  auto b = NewLora(11);
  LocalTrainer ta(*a, t, torch::Device(torch::kCPU));
  LocalTrainer tb(*b, t, torch::Device(torch::kCPU));
  // B starts at zero, so this step moves B only; A's gradient is zero in
  // both runs.
  double la = ta.Step(big, 10);
  double lb = tb.Step(small, 10);
  EXPECT_NEAR(la, lb, 1e-5);
  TensorMap ma = a->AdapterTensors(), mb = b->AdapterTensors();
  for (const auto& kv : ma) {
    EXPECT_TRUE(torch::allclose(kv.second, mb.at(kv.first), 1e-5, 1e-6))
        << kv.first << ": max difference "
        << (kv.second - mb.at(kv.first)).abs().max().item<float>();
  }
}

// The memory savers change no number: gradient checkpointing (with LoRA
// dropout, whose masks the recompute must replay) and the chunked loss
// train the same adapter as the plain step over the full logits.
TEST_F(TrainerTest, CheckpointingAndChunkedLossTrainTheSameAdapter) {
  std::vector<data::Example> train, eval;
  Examples(200, &train, &eval);
  auto run = [&](bool checkpointing, bool chunked) {
    peft::PeftOptions o;
    o.lora.r = 4;
    o.lora.alpha = 8;
    o.lora.dropout = 0.1;
    o.lora.target_modules = model::ProjectionNames();
    auto pm = peft::PeftModel::Create(*weights_, o, 3);
    EXPECT_TRUE(pm.ok()) << pm.status().ToString();
    TrainOptions t;
    t.max_steps = 3;
    t.batch_size = 4;
    t.progress_bar = false;
    t.log_every = 0;
    t.optim.eps = 1.0;  // steps proportional to gradients (see above)
    t.gradient_checkpointing = checkpointing;
    t.chunked_loss = chunked;
    LocalTrainer trainer(**pm, t, torch::Device(torch::kCPU));
    EXPECT_EQ((*pm)->model().gradient_checkpointing(), checkpointing);
    torch::manual_seed(21);  // dropout
    TrainResult r = trainer.Train(train);
    TensorMap out;
    for (const auto& kv : (*pm)->AdapterTensors()) {
      out[kv.first] = kv.second.detach().clone();
    }
    return std::make_pair(r.mean_loss, out);
  };
  const auto [plain_loss, plain] = run(false, false);
  for (const auto& [checkpointing, chunked] :
       std::vector<std::pair<bool, bool>>{
           {true, false}, {false, true}, {true, true}}) {
    SCOPED_TRACE(std::string("checkpointing ") +
                 (checkpointing ? "on" : "off") + ", chunked loss " +
                 (chunked ? "on" : "off"));
    const auto [loss, adapter] = run(checkpointing, chunked);
    EXPECT_NEAR(loss, plain_loss, 1e-5 * plain_loss);
    for (const auto& [key, t] : plain) {
      EXPECT_TRUE(torch::allclose(adapter.at(key), t, 1e-5, 1e-7))
          << key << ": " << (adapter.at(key) - t).abs().max().item<double>();
    }
  }
}

TEST_F(TrainerTest, ChunkedLanguageModelLossEqualsFullLogits) {
  auto pm = NewLora();
  data::Batch b;
  b.tokens = torch::arange(40, torch::kInt64).remainder(500).view({2, 20});
  b.targets = b.tokens.roll(-1, 1).clone();
  b.targets.index_put_({torch::indexing::Slice(), -1}, -100);
  b.num_target_tokens = 38;
  torch::NoGradGuard no_grad;
  const double full = LanguageModelLoss(pm->model(), b, false).item<double>();
  const double chunked = LanguageModelLoss(pm->model(), b).item<double>();
  EXPECT_NEAR(chunked, full, 1e-5 * full);
}

TEST_F(TrainerTest, FedProxKeepsParametersNearTheAnchor) {
  std::vector<data::Example> train, eval;
  Examples(200, &train, &eval);
  auto distance = [&](double mu) {
    auto pm = NewLora(5);
    TensorMap anchor;
    for (const auto& kv : pm->AdapterTensors()) {
      anchor[kv.first] = kv.second.detach().clone();
    }
    TrainOptions t;
    t.max_steps = 15;
    t.fedprox_mu = mu;
    t.progress_bar = false;
    t.optim.lr = 1e-2;
    t.optim.max_grad_norm = 0;
    LocalTrainer trainer(*pm, t, torch::Device(torch::kCPU));
    trainer.SetProximalAnchor(anchor);
    trainer.Train(train);
    double d = 0;
    for (const auto& kv : pm->AdapterTensors()) {
      d += (kv.second - anchor.at(kv.first)).pow(2).sum().item<double>();
    }
    return std::sqrt(d);
  };
  double free_distance = distance(0.0);
  double prox_distance = distance(100.0);
  EXPECT_GT(free_distance, 0.0);
  EXPECT_LT(prox_distance, 0.8 * free_distance)
      << "free " << free_distance << " prox " << prox_distance;
}

TEST(LearningRateTest, WarmupThenCosineToFloor) {
  auto w =
      model::RandomLlamaWeights(model::LlamaConfig{16, 32, 1, 2, 2, 32, 64}, 1);
  auto pm = peft::PeftModel::Create(w, peft::PeftOptions{}, 1);
  ASSERT_TRUE(pm.ok()) << pm.status().ToString();
  TrainOptions t;
  t.optim.lr = 1.0;
  t.optim.warmup_steps = 10;
  t.optim.min_lr_ratio = 0.1;
  LocalTrainer trainer(**pm, t, torch::Device(torch::kCPU));
  EXPECT_DOUBLE_EQ(trainer.LearningRate(0, 110), 0.1);
  EXPECT_DOUBLE_EQ(trainer.LearningRate(9, 110), 1.0);
  EXPECT_NEAR(trainer.LearningRate(10, 110), 1.0, 1e-12);
  EXPECT_NEAR(trainer.LearningRate(60, 110), 0.55, 1e-12);
  EXPECT_NEAR(trainer.LearningRate(110, 110), 0.1, 1e-12);
  t.optim.schedule = "constant";
  LocalTrainer constant(**pm, t, torch::Device(torch::kCPU));
  EXPECT_DOUBLE_EQ(constant.LearningRate(60, 110), 1.0);
}

TEST(TrainConfigTest, ErrorsNameKeysAndFile) {
  std::string path = kSource + "/configs/local_train.yaml";
  auto cfg =
      LoadTrainJobConfig(path, {"train.batch_size=0", "train.optim.lr=fast",
                                "lora.r=4", "model.dtype=int8"});
  ASSERT_FALSE(cfg.ok());
  const std::string& m = cfg.status().message();
  EXPECT_THAT(m, HasSubstr("local_train.yaml"));
  EXPECT_THAT(m, HasSubstr("train.batch_size: must be >= 1, got 0"));
  EXPECT_THAT(m, HasSubstr("train.optim.lr: expected a number, got 'fast'"));
  EXPECT_THAT(m, HasSubstr("unknown key 'lora'"));
  EXPECT_THAT(m, HasSubstr("model.dtype"));
}

TEST(TrainConfigTest, BaseDtypeIsReadAndChecked) {
  std::string path = kSource + "/configs/local_train.yaml";
  auto cfg = LoadTrainJobConfig(path, {"model.base_dtype=nf4"});
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  auto load = cfg->model.ToLoadOptions();
  ASSERT_TRUE(load.ok());
  ASSERT_TRUE(load->base_dtype.has_value());
  EXPECT_EQ(*load->base_dtype, model::BaseDtype::kNf4);
  auto plain = LoadTrainJobConfig(path, {});
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->model.ToLoadOptions()->base_dtype.has_value());
  auto bad = LoadTrainJobConfig(path, {"model.base_dtype=fp4"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(),
              HasSubstr("model.base_dtype: expected auto, float32, bfloat16, "
                        "float16, int8 or nf4, got 'fp4'"));
}

TEST(TrainConfigTest, MemoryOptionsAreRead) {
  std::string path = kSource + "/configs/local_train.yaml";
  auto cfg = LoadTrainJobConfig(path, {});
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_FALSE(cfg->train.gradient_checkpointing);
  EXPECT_TRUE(cfg->train.chunked_loss);
  cfg = LoadTrainJobConfig(
      path, {"train.gradient_checkpointing=true", "train.chunked_loss=false"});
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_TRUE(cfg->train.gradient_checkpointing);
  EXPECT_FALSE(cfg->train.chunked_loss);
  cfg = LoadTrainJobConfig(path, {"train.gradient_checkpointing=sometimes"});
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(),
              HasSubstr("train.gradient_checkpointing"));
}

}  // namespace
}  // namespace worker
}  // namespace fedpeft
