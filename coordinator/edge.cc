#include "coordinator/edge.h"

#include <cmath>

#include "common/file_util.h"
#include "common/logging.h"
#include "coordinator/edge_rounds.h"
#include "coordinator/service.h"
#include "delivery/model_source.h"
#include "peft/peft_io.h"
#include "worker/federation_client.h"
#include "worker/model_download.h"

namespace fedpeft {
namespace coordinator {

class Edge::Impl {
 public:
  explicit Impl(const EdgeConfig& config) : config_(config) {}

  Status Run();
  void Stop() {
    stop_ = true;
    if (uplink_) uplink_->Stop();
    std::shared_ptr<EdgeRounds> r = std::atomic_load(&rounds_);
    if (r) r->Stop();
  }

 private:
  proto::WorkerProfile Profile();
  Status OnRegistered(const proto::RegisterReply& reply);
  Status Serve(const proto::Task& task);

  // The base model its workers fetch (model.source upstream on their
  // side): its own files, or (model.source upstream here) the blocks it
  // fetched from the cloud, cached once for all its workers. Sets
  // *model_path to the model the edge loads itself.
  Status SetUpModel(std::string* model_path);

  const EdgeConfig config_;
  std::atomic<bool> stop_{false};
  std::unique_ptr<worker::FederationClient> uplink_;
  std::unique_ptr<worker::GrpcBlockRemote> cloud_blocks_;
  std::unique_ptr<delivery::BlockStore> block_store_;
  std::unique_ptr<delivery::ModelSource> model_source_;
  std::shared_ptr<EdgeRounds> rounds_;
  std::unique_ptr<FederationServer> server_;
  std::string federation_id_;
  std::string adapter_config_json_;
  std::string plan_json_;
  bool whole_adapter_ = false;  // stack merge: upload the adapter itself
  EdgePlan plan_;
  std::mt19937_64 rng_{std::random_device()()};  // stochastic rounding
  // The cloud adapter of cache_round_ (tensors it may leave out later).
  TensorMap cache_;
  uint64_t cache_round_ = 0;
};

proto::WorkerProfile Edge::Impl::Profile() {
  proto::WorkerProfile p;
  p.set_worker_id(config_.id);
  p.set_role(proto::ROLE_EDGE);
  p.set_version("0.1.0");
  // num_samples stays 0 here: the weight of an edge is the samples of the
  // workers behind each of its updates, sent with the update.
  return p;
}

Status Edge::Impl::OnRegistered(const proto::RegisterReply& reply) {
  // A registration is a new session: the cloud may have restarted, so
  // nothing cached from before is trusted.
  cache_.clear();
  cache_round_ = 0;
  if (!rounds_) {
    federation_id_ = reply.federation_id();
    adapter_config_json_ = reply.adapter_config_json();
    plan_json_ = reply.plan_json();
    return Status::Ok();
  }
  if (reply.adapter_config_json() != adapter_config_json_ ||
      reply.plan_json() != plan_json_) {
    return Status::FailedPrecondition(
        "the cloud coordinator now runs another adapter or plan than this "
        "edge started with; restart the edge");
  }
  return Status::Ok();
}

Status Edge::Impl::Serve(const proto::Task& task) {
  const int64_t round = static_cast<int64_t>(task.round());
  // The cloud adapter: the tensors that changed since our copy, if any.
  std::map<std::string, transport::TensorSpec> expected;
  if (!whole_adapter_)
    expected = transport::SpecsOf(rounds_->engine().AdapterTemplate());
  uint64_t down = 0;
  auto got = uplink_->Download(round, cache_.empty() ? 0 : cache_round_,
                               expected, &down);
  RETURN_IF_ERROR(got.status());
  TensorMap cloud = cache_;
  for (auto& kv : *got) cloud[kv.first] = std::move(kv.second);
  cache_ = cloud;
  cache_round_ = static_cast<uint64_t>(round);

  EdgeTask et;
  et.cloud_round = round;
  et.edge_rounds = std::max<int>(1, static_cast<int>(task.edge_rounds()));
  et.train.local_epochs = std::max(1, task.train().local_epochs());
  et.train.local_steps = task.train().local_steps();
  et.train.batch_size = std::max(1, task.train().batch_size());
  et.train.lr = task.train().lr();
  et.train.fedprox_mu = task.train().fedprox_mu();
  et.seed = task.train().seed();
  et.deadline_unix_ms = task.deadline_unix_ms();
  et.frozen.assign(task.frozen().begin(), task.frozen().end());
  et.train_b_only = task.train().train_b_only();
  et.prune_threshold = task.train().prune_threshold();
  et.clip_norm = task.train().clip_norm();
  et.noise_stddev = task.noise_stddev();
  et.count_noise_stddev = task.count_noise_stddev();
  et.compression = plan_.compression;
  if (task.train().upload_bits() > 0) {
    et.compression.bits = static_cast<int>(task.train().upload_bits());
  }
  if (task.train().block_size() > 0) {
    et.compression.block_size = task.train().block_size();
  }
  et.compression.error_feedback = task.train().error_feedback();
  RETURN_IF_ERROR(transport::ValidateCodecOptions(
      {et.compression.bits, et.compression.block_size}, "the cloud's task"));
  if (!std::isfinite(et.noise_stddev) || et.noise_stddev < 0 ||
      !std::isfinite(et.count_noise_stddev) || et.count_noise_stddev < 0 ||
      !std::isfinite(et.clip_norm) || et.clip_norm < 0) {
    return Status::InvalidArgument(
        "the cloud's task: clip_norm, noise_stddev and count_noise_stddev "
        "must be finite and >= 0");
  }
  FP_LOG_INFO("edge", "'{}': cloud round {}: {} edge rounds ({} down)",
              config_.id, round, et.edge_rounds, down);
  ASSIGN_OR_RETURN(EdgeResult r, rounds_->Run(cloud, et));

  TensorMap up;
  if (whole_adapter_) {
    up = std::move(r.adapter);
  } else {
    const std::set<std::string> frozen(et.frozen.begin(), et.frozen.end());
    for (const auto& [key, t] : r.adapter) {
      // Frozen tensors, and FFA-LoRA's A, are not the edge's to change.
      if (frozen.count(key) ||
          (et.train_b_only && key.find(".lora_A.") != std::string::npos)) {
        continue;
      }
      auto c = cloud.find(key);
      if (c == cloud.end()) continue;
      up[key] = (t - c->second).contiguous();
    }
  }
  proto::UpdateHeader h;
  h.set_round(static_cast<uint64_t>(round));
  h.set_num_samples(r.num_samples);
  h.set_train_loss(r.train_loss);
  h.set_eval_loss(r.eval_loss);
  h.set_eval_tokens(r.eval_tokens);
  h.set_train_seconds(r.train_seconds);
  h.set_num_tensors(static_cast<uint32_t>(up.size()));
  h.set_rank(0);
  h.set_kind(whole_adapter_ ? proto::UpdateHeader::ADAPTER
                            : proto::UpdateHeader::DELTA);
  h.set_workers(static_cast<uint32_t>(r.workers));
  h.set_edge_rounds(static_cast<uint32_t>(r.rounds_aggregated));
  h.set_rank_min(static_cast<uint32_t>(r.rank_min));
  h.set_rank_max(static_cast<uint32_t>(r.rank_max));
  h.set_rank_mean(r.rank_mean);
  h.set_unclipped(r.unclipped);
  h.set_users_selected(static_cast<uint32_t>(r.users_selected));
  h.set_users_alive(static_cast<uint32_t>(r.users_alive));
  h.set_metrics_withheld(plan_.dp && !plan_.dp_report_worker_metrics);
  // The same codec as the workers' (no error feedback at the edge: its
  // update is a noisy mean that changes every round).
  ASSIGN_OR_RETURN(
      worker::EncodedUpdate encoded,
      worker::EncodeUpdate(up, {et.compression.bits, et.compression.block_size},
                           0, &rng_));
  const transport::Schema schema =
      transport::Schema::OfKeys(rounds_->engine().AdapterTemplate());
  uint64_t bytes = 0;
  Status s = uplink_->Upload(
      h, encoded.wire,
      whole_adapter_ || et.compression.bits >= 16 ? nullptr : &schema, &bytes);
  if (!s.ok()) {
    FP_LOG_WARN("edge", "'{}': cloud round {}: upload rejected: {}", config_.id,
                round, s.message());
    return Status::Ok();
  }
  FP_LOG_INFO("edge",
              "'{}': cloud round {}: uploaded the merge of {} workers over {} "
              "edge rounds ({} samples, train loss {:.4f}, {} B{})",
              config_.id, round, r.workers, r.rounds_aggregated, r.num_samples,
              r.train_loss, bytes,
              et.compression.bits < 32
                  ? fmt::format(", {}-bit", et.compression.bits)
                  : std::string());
  return Status::Ok();
}

Status Edge::Impl::SetUpModel(std::string* model_path) {
  const worker::ModelOptions& m = config_.model;
  if (!m.upstream()) {
    *model_path = m.path;
    model_source_ = std::make_unique<delivery::LocalModelSource>(
        m.path, m.BlockSizeFor(config_.server.max_message_mb));
    return Status::Ok();
  }
  cloud_blocks_ =
      std::make_unique<worker::GrpcBlockRemote>(*uplink_, proto::ROLE_EDGE);
  delivery::ModelManifest manifest;
  ASSIGN_OR_RETURN(*model_path,
                   delivery::DeliverModel(*cloud_blocks_, m.cache_dir,
                                          config_.id, nullptr, &manifest));
  if (manifest.block_size + (4 << 10) >
      static_cast<uint64_t>(config_.server.max_message_mb) << 20) {
    return Status::InvalidArgument(
        "server.max_message_mb: " +
        std::to_string(config_.server.max_message_mb) +
        " MiB cannot carry the cloud's model blocks of " +
        std::to_string(manifest.block_size) + " bytes to this edge's workers");
  }
  block_store_ =
      std::make_unique<delivery::BlockStore>(JoinPath(m.cache_dir, "blocks"));
  model_source_ = std::make_unique<delivery::CachedModelSource>(
      std::make_shared<const delivery::ModelManifest>(std::move(manifest)),
      *block_store_, *cloud_blocks_);
  return Status::Ok();
}

Status Edge::Impl::Run() {
  uplink_ = std::make_unique<worker::FederationClient>(
      config_.id, config_.upstream, [this] { return Profile(); },
      [this](const proto::RegisterReply& r) { return OnRegistered(r); });
  RETURN_IF_ERROR(uplink_->Connect());
  // The model first: nothing to serve without it.
  std::string model_path;
  Status model = SetUpModel(&model_path);
  if (stop_) return Status::Ok();
  RETURN_IF_ERROR(model);
  RETURN_IF_ERROR(uplink_->Register());
  if (stop_) return Status::Ok();

  // The edge's round engine, configured by the cloud's adapter and plan.
  ASSIGN_OR_RETURN(EdgePlan plan, EdgePlan::FromJson(plan_json_));
  plan_ = plan;
  CoordinatorConfig cfg;
  cfg.server = config_.server;
  cfg.federation = config_.rounds;
  cfg.federation.id = federation_id_ + "/" + config_.id;
  cfg.model = config_.model;
  cfg.model.path = model_path;
  cfg.model.source = "local";
  ASSIGN_OR_RETURN(cfg.peft,
                   peft::AdapterConfigFromJson(adapter_config_json_,
                                               "the cloud's adapter config"));
  cfg.logging = config_.logging;
  cfg.max_update_mb = config_.max_update_mb;
  ASSIGN_OR_RETURN(std::unique_ptr<EdgeRounds> r,
                   EdgeRounds::Create(cfg, plan));
  std::atomic_store(&rounds_, std::shared_ptr<EdgeRounds>(std::move(r)));
  whole_adapter_ =
      plan.heterogeneity.enabled && plan.heterogeneity.method == "stack";
  ASSIGN_OR_RETURN(server_,
                   FederationServer::Start(rounds_->engine(), cfg.server,
                                           model_source_.get()));
  if (stop_) rounds_->Stop();
  FP_LOG_INFO("edge",
              "'{}': serving workers for federation '{}' (cloud {}); merge {}",
              config_.id, federation_id_, config_.upstream.address,
              plan.heterogeneity.enabled ? plan.heterogeneity.method
                                         : std::string("fedavg"));
  uplink_->StartHeartbeat();
  Status result = Status::Ok();
  while (!stop_) {
    auto task = uplink_->GetTask();
    if (stop_) break;
    if (!task.ok()) {
      result = task.status();
      break;
    }
    if (task->kind() == proto::Task::SHUTDOWN) {
      FP_LOG_INFO("edge", "'{}': the cloud says shut down ({})", config_.id,
                  task->message());
      break;
    }
    if (task->kind() != proto::Task::TRAIN) continue;
    Status s = Serve(*task);
    if (!s.ok() && !stop_) {
      FP_LOG_WARN("edge", "'{}': cloud round {}: {}", config_.id, task->round(),
                  s.message());
    }
  }
  rounds_->Finish();
  uplink_->Stop();
  server_->Shutdown();
  const delivery::SourceStats st = model_source_->stats();
  FP_LOG_INFO("edge",
              "'{}': model blocks: {} ({} B) served to workers, {} ({} B) "
              "fetched from the cloud after start-up, {} requests shared a "
              "fetch",
              config_.id, st.blocks_served, st.bytes_served, st.blocks_fetched,
              st.bytes_fetched, st.joined_fetches);
  return result;
}

Edge::Edge(const EdgeConfig& config) : impl_(std::make_unique<Impl>(config)) {}
Edge::~Edge() = default;
Status Edge::Run() { return impl_->Run(); }
void Edge::Stop() { impl_->Stop(); }

}  // namespace coordinator
}  // namespace fedpeft
