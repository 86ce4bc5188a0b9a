#include "worker/distributed_worker.h"

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/logging.h"
#include "model/loader.h"
#include "peft/peft_io.h"
#include "worker/worker_client.h"

namespace fedpeft {
namespace worker {
namespace {

using Json = nlohmann::json;

// Everything in TrainOptions that changes the numbers. A key added to
// TrainOptions that only changes how they are computed (e.g. checkpointing)
// may stay out: each rank then takes it from its own config.
Json TrainOptionsToJson(const TrainOptions& t) {
  const OptimOptions& o = t.optim;
  return Json{
      {"epochs", t.epochs},
      {"max_steps", t.max_steps},
      {"batch_size", t.batch_size},
      {"grad_accum", t.grad_accum},
      {"fedprox_mu", t.fedprox_mu},
      {"seed", t.seed},
      {"trainable_layers", t.trainable_layers},
      {"frozen", t.frozen},
      {"optim",
       {{"lr", o.lr},
        {"weight_decay", o.weight_decay},
        {"beta1", o.beta1},
        {"beta2", o.beta2},
        {"eps", o.eps},
        {"max_grad_norm", o.max_grad_norm},
        {"schedule", o.schedule},
        {"warmup_steps", o.warmup_steps},
        {"min_lr_ratio", o.min_lr_ratio}}},
  };
}

// Overwrites `t`'s fields with the plan's. Throws nlohmann's exceptions on
// a malformed plan.
void TrainOptionsFromJson(const Json& j, TrainOptions* t) {
  j.at("epochs").get_to(t->epochs);
  j.at("max_steps").get_to(t->max_steps);
  j.at("batch_size").get_to(t->batch_size);
  j.at("grad_accum").get_to(t->grad_accum);
  j.at("fedprox_mu").get_to(t->fedprox_mu);
  j.at("seed").get_to(t->seed);
  j.at("trainable_layers").get_to(t->trainable_layers);
  j.at("frozen").get_to(t->frozen);
  const Json& o = j.at("optim");
  o.at("lr").get_to(t->optim.lr);
  o.at("weight_decay").get_to(t->optim.weight_decay);
  o.at("beta1").get_to(t->optim.beta1);
  o.at("beta2").get_to(t->optim.beta2);
  o.at("eps").get_to(t->optim.eps);
  o.at("max_grad_norm").get_to(t->optim.max_grad_norm);
  o.at("schedule").get_to(t->optim.schedule);
  o.at("warmup_steps").get_to(t->optim.warmup_steps);
  o.at("min_lr_ratio").get_to(t->optim.min_lr_ratio);
}

// The adapter tensors in key order: what Broadcast sends and receives.
std::vector<torch::Tensor> AdapterInOrder(peft::PeftModel& peft) {
  std::vector<torch::Tensor> tensors;
  for (auto& kv : peft.AdapterTensors()) tensors.push_back(kv.second);
  return tensors;
}

// Both sides of a round after the plan: the adapter layouts agree, then
// rank 0's adapter overwrites everyone's.
Status ShareAdapter(DistributedGroup& group, peft::PeftModel& peft) {
  RETURN_IF_ERROR(group.ExpectSame(LayoutFingerprint(peft.AdapterTensors()),
                                   "adapter layouts (names and shapes)"));
  std::vector<torch::Tensor> tensors = AdapterInOrder(peft);
  return group.Broadcast(tensors, 0);
}

}  // namespace

Status LeadRound(DistributedGroup& group, int64_t round,
                 const TrainOptions& options, peft::PeftModel& peft) {
  Json plan{{"kind", "train"},
            {"round", round},
            {"adapter_config", AdapterConfigToJson(peft.options(), "").dump()},
            {"train", TrainOptionsToJson(options)}};
  RETURN_IF_ERROR(group.Post(plan.dump()));
  return ShareAdapter(group, peft);
}

Status LeadShutdown(DistributedGroup& group, const Status& why) {
  if (!group.status().ok()) return group.status();  // they fail on their own
  Json plan{{"kind", "shutdown"}, {"ok", why.ok()}, {"message", why.message()}};
  RETURN_IF_ERROR(group.Post(plan.dump()));
  return group.WaitCommandTaken();
}

DistributedFollower::DistributedFollower(
    const WorkerConfig& config, std::shared_ptr<const model::LlamaWeights> base)
    : config_(config), base_(std::move(base)) {}

StatusOr<std::unique_ptr<DistributedFollower>> DistributedFollower::Create(
    const WorkerConfig& config, std::shared_ptr<const model::LlamaWeights> base,
    std::shared_ptr<const model::Tokenizer> tokenizer) {
  const DistributedOptions& d = config.worker.distributed;
  if (!d.enabled() || d.rank == 0) {
    return Status::InvalidArgument(
        "worker.distributed.rank " + std::to_string(d.rank) +
        ": a follower is rank 1 .. world_size-1 (rank 0 runs the worker "
        "client)");
  }
  std::unique_ptr<DistributedFollower> f(
      new DistributedFollower(config, std::move(base)));
  ASSIGN_OR_RETURN(f->device_, model::ParseDevice(config.model.device));
  ASSIGN_OR_RETURN(WorkerData local, LoadWorkerData(config, *tokenizer));
  f->train_ = std::move(local.train);
  ASSIGN_OR_RETURN(f->group_, DistributedGroup::Join(d, f->device_));
  RETURN_IF_ERROR(
      f->group_->ExpectSame(ExamplesFingerprint(f->train_), "training data"));
  FP_LOG_INFO("worker",
              "'{}' rank {} of {}: {} train examples; rounds come from rank 0",
              config.worker.id, d.rank, d.world_size, f->train_.size());
  return f;
}

Status DistributedFollower::Run() {
  while (true) {
    ASSIGN_OR_RETURN(std::optional<std::string> command,
                     group_->NextCommand([this] { return stopped_.load(); }));
    if (!command) return Status::Ok();  // Stop()
    Json plan = Json::parse(*command, nullptr, /*allow_exceptions=*/false);
    if (!plan.is_object() || !plan.contains("kind")) {
      return Status::Corruption(
          "worker.distributed: rank 0 sent a command "
          "that is not a plan (different versions?)");
    }
    if (plan["kind"] == "shutdown") {
      const bool ok = plan.value("ok", false);
      FP_LOG_INFO("worker", "'{}' rank {}: rank 0 stopped{}", config_.worker.id,
                  group_->rank(), ok ? "" : " with an error");
      if (ok) return Status::Ok();
      return Status::Unavailable("worker.distributed: rank 0 stopped: " +
                                 plan.value("message", std::string()));
    }
    RETURN_IF_ERROR(TrainRound(plan));
  }
}

Status DistributedFollower::TrainRound(const Json& plan) {
  TrainOptions t = config_.train;
  int64_t round = 0;
  std::string adapter_config;
  try {
    plan.at("round").get_to(round);
    plan.at("adapter_config").get_to(adapter_config);
    TrainOptionsFromJson(plan.at("train"), &t);
  } catch (const std::exception& e) {
    return Status::Corruption(
        std::string("worker.distributed: rank 0's plan: ") + e.what());
  }
  if (!peft_ || adapter_config != adapter_config_) {
    ASSIGN_OR_RETURN(
        peft::PeftOptions options,
        peft::AdapterConfigFromJson(adapter_config, "rank 0's adapter config"));
    ASSIGN_OR_RETURN(peft_, peft::PeftModel::Create(base_, options, 1));
    peft_->model().to(device_);
    adapter_config_ = adapter_config;
  }
  RETURN_IF_ERROR(ShareAdapter(*group_, *peft_));
  t.progress_bar = false;
  t.log_every = 0;
  MakeDataParallel(*group_, &t);
  LocalTrainer trainer(*peft_, t, device_);
  if (t.fedprox_mu > 0) {
    TensorMap global;
    for (const auto& kv : peft_->AdapterTensors()) {
      global[kv.first] = kv.second.detach().clone();
    }
    trainer.SetProximalAnchor(global);
  }
  TrainResult r;
  try {
    r = trainer.Train(train_);
  } catch (const std::exception& e) {
    // Only a data-parallel step throws: the group says what broke.
    return group_->status().ok() ? Status::Internal(e.what())
                                 : group_->status();
  }
  FP_LOG_INFO("worker",
              "'{}' rank {} round {}: {} steps on its share, {} tokens over "
              "all ranks, train loss {:.4f}, {:.1f}s",
              config_.worker.id, group_->rank(), round, r.steps, r.tokens,
              r.mean_loss, r.seconds);
  return Status::Ok();
}

}  // namespace worker
}  // namespace fedpeft
