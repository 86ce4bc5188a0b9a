#include "serve/pipeline_head.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>

#include "common/blocking_queue.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/process_stats.h"
#include "data/chat_template.h"
#include "model/generate.h"
#include "proto/grpc_util.h"
#include "serve/engine.h"
#include "serve/pipeline_link.h"
#include "serve/pipeline_partition.h"
#include "serve/pipeline_runtime.h"

namespace fedpeft {
namespace serve {
// Not anonymous: PipelineHead::Impl holds these.
namespace pipeline_head_internal {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A request's end of its sequence: tokens as they are sampled, then done.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int64_t> tokens;  // GUARDED_BY(mu)
  bool done = false;           // GUARDED_BY(mu)
  Status error;                // GUARDED_BY(mu)

  void Put(int64_t id) {
    {
      std::lock_guard<std::mutex> lock(mu);
      tokens.push_back(id);
    }
    cv.notify_one();
  }
  void Close(Status status) {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
      error = std::move(status);
    }
    cv.notify_one();
  }
};

// A generation in the ring; owned by the compute thread once admitted.
struct Sequence {
  uint64_t id = 0;
  std::string model;
  std::vector<int64_t> prompt;
  std::vector<int64_t> stop_ids;
  int64_t max_tokens = 0;
  double temperature = 0;
  double top_p = 1;
  std::mt19937_64 rng;
  int64_t produced = 0;
  uint64_t epoch = 0;
  bool cancelled = false;
  std::shared_ptr<Channel> channel;
};

struct Event {
  enum Kind { kNew, kReturned, kCancel, kFail } kind = kNew;
  std::shared_ptr<Sequence> sequence;  // kNew
  proto::Activation activation;        // kReturned
  torch::Tensor hidden;                // kReturned in a one-stage ring
  uint64_t id = 0;                     // kCancel
  std::string reason;                  // kFail
};

struct StageSlot {
  bool joined = false;
  proto::StageReport report;
  Clock::time_point seen;
};

const char* StateName(int state) {
  switch (state) {
    case proto::StageReport::READY:
      return "ready";
    case proto::StageReport::LOADING:
      return "loading";
    default:
      return "joining";
  }
}

}  // namespace pipeline_head_internal

using namespace pipeline_head_internal;  // NOLINT(build/namespaces)

class PipelineHead::Impl {
 public:
  Impl(const ServeConfig& config, std::unique_ptr<model::Tokenizer> tokenizer)
      : config_(config),
        p_(config.pipeline),
        K_(config.pipeline.stages),
        tokenizer_(std::move(tokenizer)),
        stages_(config.pipeline.stages) {}

  ~Impl() {
    stop_ = true;
    if (control_.joinable()) control_.join();
    if (compute_.joinable()) compute_.join();
    if (server_) server_->Shutdown();
  }

  fedpeft::Status Start();
  std::vector<std::string> Models() const { return config_.serve.Names(); }
  fedpeft::Status Check(const CompletionRequest& request,
                        std::vector<int64_t>* ids,
                        std::vector<int64_t>* stop_ids) const;
  fedpeft::Status Complete(const CompletionRequest& request,
                           const DeltaCallback& on_delta,
                           CompletionResult* result);
  int port() const { return server_ ? server_->port() : 0; }
  fedpeft::Status Health() const {
    std::lock_guard<std::mutex> lock(mu_);
    return load_error_;
  }

 private:
  grpc::Status Join(const proto::StageReport& report,
                    proto::StageAssignment* reply);
  void FillStatus(proto::PipelineStatusReply* reply);
  void Control();
  void Compute();
  // The ring's checks; "" when it may be up. REQUIRES: mu_ held.
  std::string RingProblem(Clock::time_point now);
  void MarkDown(const std::string& reason);  // REQUIRES: mu_ held
  void SplitAndLoad(std::unique_lock<std::mutex>& lock);
  void FillSelf(proto::StageReport* report);
  // Compute thread:
  void Advance(Sequence& s, const torch::Tensor& x, int64_t position);
  void Step(Sequence& s, const torch::Tensor& hidden);
  void Finish(Sequence& s, fedpeft::Status status);

  const ServeConfig config_;
  const PipelineOptions p_;
  const int K_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  ModelIdentity identity_;
  model::LoadOptions load_;
  data::ChatFamily family_ = data::ChatFamily::kAlpaca;
  int64_t context_ = 0;
  std::string address_;
  double gbps_ = 0;
  uint64_t memory_ = 0;
  std::unique_ptr<PipelineServer> server_;
  std::unique_ptr<RelayLink> link_;
  BusyMeter busy_;
  Admission admission_;

  mutable std::mutex mu_;
  std::vector<StageSlot> stages_;     // GUARDED_BY(mu_); [0] unused
  std::vector<int64_t> split_;        // GUARDED_BY(mu_); empty until split
  std::atomic<uint64_t> epoch_{1};    // written under mu_
  std::atomic<bool> ring_up_{false};  // written under mu_
  std::string down_reason_ = "waiting for the stages to join";  // mu_
  fedpeft::Status load_error_;                                  // mu_
  std::shared_ptr<StageRuntime> runtime_;  // set once under mu_
  uint64_t weight_bytes_ = 0;              // GUARDED_BY(mu_)

  BlockingQueue<Event> events_;
  std::map<uint64_t, std::shared_ptr<Sequence>> live_;  // compute thread
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint32_t> in_flight_{0};
  std::atomic<bool> stop_{false};
  std::thread control_;
  std::thread compute_;
};

fedpeft::Status PipelineHead::Impl::Start() {
  ASSIGN_OR_RETURN(identity_, IdentifyModel(config_.model.path));
  ASSIGN_OR_RETURN(load_, config_.model.ToLoadOptions());
  context_ = identity_.config.context_length();
  data::DataOptions chat;
  chat.chat_template = config_.serve.chat_template;
  RETURN_IF_ERROR(data::ResolveChatTemplate(
      config_.model.path, config_.model.tokenizer, *tokenizer_, &chat));
  ASSIGN_OR_RETURN(family_, data::ParseChatTemplateName(chat.chat_template));
  if (!p_.layers.empty()) {
    RETURN_IF_ERROR(SplitByHand(p_.layers, identity_.config.n_layers).status());
  }
  admission_.Configure(config_.serve.parallel, config_.serve.max_waiting);
  const size_t max_message = size_t{64} << 20;
  PipelineHandlers handlers;
  handlers.join = [this](const proto::StageReport& r,
                         proto::StageAssignment* a) { return Join(r, a); };
  handlers.relay = [this](proto::Activation&& a) {
    Event e;
    e.kind = Event::kReturned;
    e.activation = std::move(a);
    events_.Push(std::move(e));
  };
  handlers.status = [this](proto::PipelineStatusReply* r) { FillStatus(r); };
  ASSIGN_OR_RETURN(server_,
                   PipelineServer::Start(p_.listen_address(), config_.tls,
                                         max_message, handlers));
  ASSIGN_OR_RETURN(transport::HostPort hp,
                   transport::SplitHostPort(p_.listen_address()));
  address_ = p_.advertise.empty()
                 ? transport::JoinHostPort(hp.host, server_->port())
                 : p_.advertise;
  if (!p_.port_file.empty()) {
    RETURN_IF_ERROR(
        WriteFileAtomic(p_.port_file, std::to_string(server_->port()) + "\n")
            .WithContext("pipeline.port_file"));
  }
  gbps_ = MeasureBandwidthGbps();
  memory_ = p_.memory_mb > 0 ? static_cast<uint64_t>(p_.memory_mb) << 20
                             : static_cast<uint64_t>(0.9 * AvailableRamBytes());
  link_ = std::make_unique<RelayLink>(config_.tls, max_message);
  FP_LOG_INFO("pipeline",
              "head of {} stage(s): pipeline on {} ({}); {} layers, {:.1f} "
              "GB/s matrix-vector, {} MiB for weights; split {}",
              K_, address_, config_.tls.enabled ? "mutual TLS" : "PLAINTEXT",
              identity_.config.n_layers, gbps_, memory_ >> 20,
              p_.layers.empty() ? "by memory and speed" : "by hand");
  if (config_.serve.parallel < K_) {
    FP_LOG_WARN("pipeline",
                "serve.parallel ({}) is below pipeline.stages ({}): stages "
                "will wait for each other; recurrent pipelining needs at "
                "least one sequence per stage",
                config_.serve.parallel, K_);
  }
  compute_ = std::thread([this] { Compute(); });
  control_ = std::thread([this] { Control(); });
  return fedpeft::Status::Ok();
}

grpc::Status PipelineHead::Impl::Join(const proto::StageReport& r,
                                      proto::StageAssignment* reply) {
  auto refuse = [&r](const std::string& why) {
    FP_LOG_WARN("pipeline", "stage {} at {} refused: {}", r.stage(),
                r.address(), why);
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, why);
  };
  if (r.stages() != static_cast<uint32_t>(K_)) {
    return refuse("the stage's pipeline.stages is " +
                  std::to_string(r.stages()) + ", the head's is " +
                  std::to_string(K_));
  }
  if (r.stage() < 1 || r.stage() >= static_cast<uint32_t>(K_)) {
    return refuse("pipeline.stage " + std::to_string(r.stage()) +
                  " is not a stage after the head (1 to " +
                  std::to_string(K_ - 1) + ")");
  }
  if (!(r.bandwidth_gbps() > 0) || !std::isfinite(r.bandwidth_gbps())) {
    return refuse("bandwidth_gbps must be a positive number, got " +
                  std::to_string(r.bandwidth_gbps()));
  }
  const model::LlamaConfig& c = identity_.config;
  const proto::StageModel& m = r.model();
  if (m.fingerprint() != identity_.fingerprint) {
    return refuse(
        "its model (" + std::to_string(m.n_layers()) + " layers, dim " +
        std::to_string(m.dim()) + ", vocab " + std::to_string(m.vocab_size()) +
        ", fingerprint " + m.fingerprint().substr(0, 12) +
        ") is not the head's (" + std::to_string(c.n_layers) + " layers, dim " +
        std::to_string(c.dim) + ", vocab " + std::to_string(c.vocab_size) +
        ", fingerprint " + identity_.fingerprint.substr(0, 12) +
        "): every stage needs the same model.path files");
  }
  const std::vector<std::string> names = config_.serve.Names();
  if (std::vector<std::string>(m.served().begin(), m.served().end()) != names) {
    std::string theirs, ours;
    for (const auto& n : m.served()) theirs += (theirs.empty() ? "" : ", ") + n;
    for (const auto& n : names) ours += (ours.empty() ? "" : ", ") + n;
    return refuse("it serves [" + theirs + "], the head [" + ours +
                  "]: every stage needs the same serve.base_name and "
                  "serve.adapters");
  }
  std::lock_guard<std::mutex> lock(mu_);
  StageSlot& slot = stages_[r.stage()];
  const Clock::time_point now = Clock::now();
  if (slot.joined && slot.report.address() != r.address()) {
    // A restarted stage (with a new port) replaces the old process; two
    // live processes configured as one stage would show here repeatedly.
    FP_LOG_WARN("pipeline", "stage {} is now at {} (was {})", r.stage(),
                r.address(), slot.report.address());
  }
  if (!slot.joined) {
    FP_LOG_INFO(
        "pipeline", "stage {} joined from {} ({:.1f} GB/s, {} MiB for weights)",
        r.stage(), r.address(), r.bandwidth_gbps(), r.memory_bytes() >> 20);
  }
  slot.joined = true;
  slot.report = r;
  slot.seen = now;
  if (split_.empty()) {
    std::string missing;
    for (int i = 1; i < K_; ++i) {
      if (!stages_[i].joined) {
        missing += (missing.empty() ? "" : ", ") + std::to_string(i);
      }
    }
    reply->set_assigned(false);
    reply->set_wait_reason(missing.empty() ? "the head is splitting the model"
                                           : "waiting for stage(s) " + missing);
    return grpc::Status::OK;
  }
  const int i = static_cast<int>(r.stage());
  reply->set_assigned(true);
  reply->set_layer_begin(static_cast<uint32_t>(split_[i]));
  reply->set_layer_end(static_cast<uint32_t>(split_[i + 1]));
  reply->set_last(i == K_ - 1);
  reply->set_next_address(i == K_ - 1 ? address_
                                      : stages_[i + 1].report.address());
  reply->set_epoch(epoch_);
  return grpc::Status::OK;
}

void PipelineHead::Impl::FillSelf(proto::StageReport* r) {
  r->set_stage(0);
  r->set_stages(K_);
  r->set_address(address_);
  r->mutable_model()->set_fingerprint(identity_.fingerprint);
  r->mutable_model()->set_n_layers(identity_.config.n_layers);
  r->mutable_model()->set_dim(identity_.config.dim);
  r->mutable_model()->set_vocab_size(identity_.config.vocab_size);
  r->set_bandwidth_gbps(gbps_);
  r->set_memory_bytes(memory_);
  r->set_state(runtime_ ? proto::StageReport::READY
                        : proto::StageReport::LOADING);
  r->set_epoch(epoch_);
  if (!split_.empty()) {
    r->set_layer_begin(0);
    r->set_layer_end(static_cast<uint32_t>(split_[1]));
  }
  r->set_weight_bytes(weight_bytes_);
  r->set_sequences(in_flight_);
  FillMemory(r);
  busy_.Fill(r);
  std::string error;
  r->set_downstream_ok(K_ == 1 || link_->ok(&error));
  r->set_downstream_error(error);
}

void PipelineHead::Impl::FillStatus(proto::PipelineStatusReply* reply) {
  std::lock_guard<std::mutex> lock(mu_);
  reply->set_epoch(epoch_);
  reply->set_ring_up(ring_up_);
  reply->set_down_reason(ring_up_ ? "" : down_reason_);
  reply->set_in_flight(in_flight_);
  FillSelf(reply->add_stages());
  for (int i = 1; i < K_; ++i) *reply->add_stages() = stages_[i].report;
}

std::string PipelineHead::Impl::RingProblem(Clock::time_point now) {
  if (!load_error_.ok()) return "the head failed to load its layers";
  if (split_.empty() || runtime_ == nullptr) return down_reason_;
  for (int i = 1; i < K_; ++i) {
    StageSlot& s = stages_[i];
    const std::string name =
        "stage " + std::to_string(i) + " (" + s.report.address() + ")";
    if (!s.joined) return name + " has not joined";
    if (now - s.seen > milliseconds(p_.stage_timeout_ms)) {
      s.joined = false;
      return name + " stopped answering (no heartbeat for " +
             std::to_string(p_.stage_timeout_ms) + " ms)";
    }
    const proto::StageReport& r = s.report;
    if (r.state() != proto::StageReport::READY) {
      return name + " is " + StateName(r.state());
    }
    if (r.epoch() != epoch_) return name + " is still in an older ring";
    if (r.layer_begin() != split_[i] || r.layer_end() != split_[i + 1]) {
      return name + " holds other layers";
    }
    if (!r.downstream_ok()) {
      return name + " cannot relay: " + r.downstream_error();
    }
  }
  std::string error;
  if (K_ > 1 && !link_->ok(&error)) {
    return "the head cannot relay to stage 1 (" + stages_[1].report.address() +
           "): " + error;
  }
  return "";
}

void PipelineHead::Impl::MarkDown(const std::string& reason) {
  down_reason_ = reason;
  if (!ring_up_) return;
  ring_up_ = false;
  epoch_ = epoch_ + 1;
  FP_LOG_WARN("pipeline", "ring down: {}; {} sequence(s) in flight fail",
              reason, in_flight_.load());
  Event e;
  e.kind = Event::kFail;
  e.reason = reason;
  events_.Push(std::move(e));
}

void PipelineHead::Impl::SplitAndLoad(std::unique_lock<std::mutex>& lock) {
  const model::LlamaConfig& c = identity_.config;
  StatusOr<std::vector<int64_t>> split = std::vector<int64_t>{};
  if (!p_.layers.empty()) {
    split = SplitByHand(p_.layers, c.n_layers);
  } else {
    std::vector<StageCapacity> caps(K_);
    caps[0] = {gbps_, memory_};
    for (int i = 1; i < K_; ++i) {
      caps[i] = {stages_[i].report.bandwidth_gbps(),
                 stages_[i].report.memory_bytes()};
    }
    split = PartitionLayers(
        std::vector<uint64_t>(c.n_layers, LayerWeightBytes(c, load_)),
        IoWeightBytes(c, load_), caps);
  }
  if (!split.ok()) {
    load_error_ = split.status();
    FP_LOG_ERROR("pipeline", "{}", split.status().ToString());
    return;
  }
  split_ = *split;
  FP_LOG_INFO("pipeline", "split of {} layers over {} stage(s): {}", c.n_layers,
              K_, DescribeSplit(split_));
  model::LoadOptions load = load_;
  load.span = model::LayerSpan{0, split_[1], true};
  lock.unlock();
  auto weights = model::LoadModel(config_.model.path, load);
  StatusOr<std::unique_ptr<StageRuntime>> rt =
      weights.ok() ? StageRuntime::Create(config_, *weights)
                   : StatusOr<std::unique_ptr<StageRuntime>>(weights.status());
  lock.lock();
  if (!rt.ok()) {
    load_error_ = rt.status();
    FP_LOG_ERROR("pipeline", "head: {}", rt.status().ToString());
    return;
  }
  weight_bytes_ = static_cast<uint64_t>((*weights)->nbytes());
  runtime_ = std::move(rt).value();
  down_reason_ = "the stages are loading their layers";
}

void PipelineHead::Impl::Control() {
  Clock::time_point last_log = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const Clock::time_point now = Clock::now();
    if (split_.empty() && load_error_.ok()) {
      bool all = true;
      for (int i = 1; i < K_; ++i) all = all && stages_[i].joined;
      if (all) SplitAndLoad(lock);
    }
    if (K_ > 1 && !split_.empty() && stages_[1].joined) {
      link_->SetTarget(stages_[1].report.address());
    }
    const std::string problem = RingProblem(now);
    if (problem.empty() && !ring_up_) {
      ring_up_ = true;
      std::string spans = "stage 0: " + std::to_string(weight_bytes_ >> 20) +
                          " MiB, layers [0, " + std::to_string(split_[1]) +
                          ") + embeddings and output layer";
      for (int i = 1; i < K_; ++i) {
        spans += "; stage " + std::to_string(i) + " (" +
                 stages_[i].report.address() + "): " +
                 std::to_string(stages_[i].report.weight_bytes() >> 20) +
                 " MiB, layers [" + std::to_string(split_[i]) + ", " +
                 std::to_string(split_[i + 1]) + ")";
      }
      FP_LOG_INFO("pipeline", "ring up (epoch {}): {}", epoch_.load(), spans);
    } else if (!problem.empty()) {
      MarkDown(problem);
    }
    if (ring_up_ && in_flight_ > 0 &&
        now - last_log > std::chrono::seconds(10)) {
      last_log = now;
      std::string line;
      for (int i = 1; i < K_; ++i) {
        const proto::StageReport& r = stages_[i].report;
        line += (i > 1 ? "; " : "") + std::string("stage ") +
                std::to_string(i) + " busy " +
                std::to_string(static_cast<int>(r.busy_fraction() * 100)) +
                "%, RSS " + std::to_string(r.rss_bytes() >> 20) + " MiB";
      }
      FP_LOG_INFO("pipeline", "{} sequence(s) in flight; {}", in_flight_.load(),
                  line.empty() ? "one stage" : line);
    }
    lock.unlock();
    std::this_thread::sleep_for(
        milliseconds(std::max(10, p_.heartbeat_ms / 4)));
    lock.lock();
  }
}

void PipelineHead::Impl::Compute() {
  std::shared_ptr<StageRuntime> rt;
  while (!stop_) {
    std::optional<Event> e = events_.Pop(milliseconds(100));
    if (!e) continue;
    if (rt == nullptr) {
      std::lock_guard<std::mutex> lock(mu_);
      rt = runtime_;
    }
    const Clock::time_point t0 = Clock::now();
    try {
      switch (e->kind) {
        case Event::kNew: {
          Sequence& s = *e->sequence;
          if (!ring_up_ || rt == nullptr) {
            std::lock_guard<std::mutex> lock(mu_);
            s.channel->Close(fedpeft::Status::Unavailable(
                "the pipeline is not ready: " + down_reason_));
            break;
          }
          s.epoch = epoch_;
          live_[s.id] = e->sequence;
          ++in_flight_;
          Advance(s, rt->Embed(s.prompt), 0);
          break;
        }
        case Event::kReturned: {
          const proto::Activation& a = e->activation;
          const uint64_t id = e->hidden.defined() ? e->id : a.sequence();
          auto it = live_.find(id);
          if (it == live_.end()) break;  // failed or cancelled meanwhile
          Sequence& s = *it->second;
          if (!e->hidden.defined() && a.epoch() != s.epoch) break;
          if (!a.error().empty()) {
            Finish(s, fedpeft::Status::Internal(a.error()));
            break;
          }
          if (e->hidden.defined()) {
            Step(s, e->hidden);
            break;
          }
          StatusOr<torch::Tensor> h =
              FromActivationBytes(a.hidden(), a.rows(), identity_.config.dim);
          if (!h.ok()) {
            Finish(s, h.status().WithContext("from the last stage"));
            break;
          }
          Step(s, *h);
          break;
        }
        case Event::kCancel: {
          auto it = live_.find(e->id);
          if (it != live_.end()) it->second->cancelled = true;
          break;
        }
        case Event::kFail: {
          const auto failing = std::move(live_);
          live_.clear();
          for (const auto& [id, s] : failing) {
            s->channel->Close(fedpeft::Status::Unavailable(
                "the pipeline broke while generating: " + e->reason));
          }
          in_flight_ = 0;
          if (rt != nullptr) rt->Clear();
          break;
        }
      }
    } catch (const std::exception& ex) {
      // A LibTorch error fails the sequence it came from.
      const uint64_t id = e->kind == Event::kNew ? e->sequence->id
                          : e->hidden.defined()  ? e->id
                                                 : e->activation.sequence();
      FP_LOG_ERROR("pipeline", "sequence {}: {}", id, ex.what());
      auto it = live_.find(id);
      if (it != live_.end()) {
        Finish(*it->second,
               fedpeft::Status::Internal(std::string("generation failed: ") +
                                         ex.what()));
      } else if (e->kind == Event::kNew) {
        e->sequence->channel->Close(fedpeft::Status::Internal(ex.what()));
      }
    }
    if (e->kind == Event::kNew || e->kind == Event::kReturned) {
      busy_.Add(Clock::now() - t0);
    }
  }
}

void PipelineHead::Impl::Advance(Sequence& s, const torch::Tensor& x,
                                 int64_t position) {
  std::shared_ptr<StageRuntime> rt = runtime_;
  StatusOr<torch::Tensor> y = rt->Run(s.id, s.model, position, x);
  if (!y.ok()) return Finish(s, y.status());
  if (K_ == 1) {  // the ring is this process: back into the queue
    Event e;
    e.kind = Event::kReturned;
    e.id = s.id;
    e.hidden = y->narrow(1, y->size(1) - 1, 1);
    events_.Push(std::move(e));
    return;
  }
  proto::Activation a;
  a.set_epoch(s.epoch);
  a.set_sequence(s.id);
  a.set_model(s.model);
  a.set_position(static_cast<uint32_t>(position));
  a.set_rows(static_cast<uint32_t>(y->size(1)));
  a.set_hidden(ToActivationBytes(*y));
  link_->Send(std::move(a));
}

void PipelineHead::Impl::Step(Sequence& s, const torch::Tensor& hidden) {
  std::shared_ptr<StageRuntime> rt = runtime_;
  const torch::Tensor logits = rt->Logits(hidden);
  const int64_t next = model::PickToken(logits, s.temperature, s.top_p, s.rng);
  const int64_t prompt = static_cast<int64_t>(s.prompt.size());
  if (next == identity_.config.eos_id ||
      std::find(s.stop_ids.begin(), s.stop_ids.end(), next) !=
          s.stop_ids.end()) {
    return Finish(s, fedpeft::Status::Ok());
  }
  s.channel->Put(next);
  ++s.produced;
  if (s.cancelled || s.produced >= s.max_tokens ||
      prompt + s.produced >= context_) {
    return Finish(s, fedpeft::Status::Ok());
  }
  Advance(s, rt->Embed({next}), prompt + s.produced - 1);
}

void PipelineHead::Impl::Finish(Sequence& s, fedpeft::Status status) {
  const uint64_t id = s.id;
  s.channel->Close(std::move(status));
  runtime_->Release(id);
  if (K_ > 1) {
    proto::Activation a;
    a.set_epoch(s.epoch);
    a.set_sequence(id);
    a.set_release(true);
    link_->Send(std::move(a));
  }
  if (live_.erase(id) > 0) --in_flight_;
}

fedpeft::Status PipelineHead::Impl::Check(
    const CompletionRequest& request, std::vector<int64_t>* ids,
    std::vector<int64_t>* stop_ids) const {
  const std::vector<std::string> names = Models();
  if (std::find(names.begin(), names.end(), request.model) == names.end()) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    return fedpeft::Status::NotFound("model '" + request.model +
                                     "' is not served here; models: " + list);
  }
  RETURN_IF_ERROR(
      BuildPrompt(request, *tokenizer_, family_, context_, ids, stop_ids));
  if (!ring_up_) {
    std::lock_guard<std::mutex> lock(mu_);
    return fedpeft::Status::Unavailable("the pipeline is not ready: " +
                                        down_reason_);
  }
  return fedpeft::Status::Ok();
}

fedpeft::Status PipelineHead::Impl::Complete(const CompletionRequest& request,
                                             const DeltaCallback& on_delta,
                                             CompletionResult* result) {
  auto s = std::make_shared<Sequence>();
  RETURN_IF_ERROR(Check(request, &s->prompt, &s->stop_ids));
  ASSIGN_OR_RETURN(Admission::Ticket ticket, admission_.Enter());
  s->id = next_id_++;
  s->model = request.model;
  s->max_tokens = request.max_tokens;
  s->temperature = request.temperature;
  s->top_p = request.top_p;
  s->rng.seed(request.has_seed ? request.seed : std::random_device{}());
  s->channel = std::make_shared<Channel>();
  const auto start = Clock::now();
  std::shared_ptr<Channel> channel = s->channel;
  Event e;
  e.kind = Event::kNew;
  e.sequence = s;
  const uint64_t id = s->id;
  events_.Push(std::move(e));

  AnswerStream answer(request, *tokenizer_, on_delta);
  bool stopped = false;
  fedpeft::Status status;
  for (;;) {
    std::deque<int64_t> tokens;
    bool done = false;
    {
      std::unique_lock<std::mutex> lock(channel->mu);
      channel->cv.wait(
          lock, [&] { return !channel->tokens.empty() || channel->done; });
      tokens.swap(channel->tokens);
      done = channel->done;
      status = channel->error;
    }
    for (int64_t t : tokens) {
      if (stopped) break;
      if (!answer.Add(t)) {
        stopped = true;
        Event cancel;
        cancel.kind = Event::kCancel;
        cancel.id = id;
        events_.Push(std::move(cancel));
      }
    }
    if (done) break;
  }
  if (!status.ok()) {
    FP_LOG_WARN("pipeline", "{}: sequence {} failed: {}", request.model, id,
                status.message());
    return status;
  }
  answer.Finish(static_cast<int64_t>(s->prompt.size()), context_, result);
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  FP_LOG_INFO("serve",
              "{}: {} prompt + {} new tokens in {:.0f} ms ({:.1f} tokens/s) "
              "through {} stage(s){}",
              request.model, result->prompt_tokens, result->completion_tokens,
              seconds * 1e3,
              seconds > 0 ? result->completion_tokens / seconds : 0.0, K_,
              answer.client_gone() ? "; the client went away" : "");
  return fedpeft::Status::Ok();
}

PipelineHead::PipelineHead(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
PipelineHead::~PipelineHead() = default;

StatusOr<std::unique_ptr<PipelineHead>> PipelineHead::Create(
    const ServeConfig& config, std::unique_ptr<model::Tokenizer> tokenizer) {
  auto impl = std::make_unique<Impl>(config, std::move(tokenizer));
  RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<PipelineHead>(new PipelineHead(std::move(impl)));
}

std::vector<std::string> PipelineHead::Models() const {
  return impl_->Models();
}

Status PipelineHead::Check(const CompletionRequest& request) const {
  std::vector<int64_t> ids, stop_ids;
  return impl_->Check(request, &ids, &stop_ids);
}

Status PipelineHead::Complete(const CompletionRequest& request,
                              const DeltaCallback& on_delta,
                              CompletionResult* result) {
  return impl_->Complete(request, on_delta, result);
}

int PipelineHead::port() const { return impl_->port(); }

Status PipelineHead::Health() const { return impl_->Health(); }

}  // namespace serve
}  // namespace fedpeft
