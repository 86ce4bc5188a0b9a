#include "coordinator/stages/secure_sum.h"

#include <algorithm>
#include <cmath>

#include "common/logging.h"
#include "security/dp.h"
#include "security/secagg_fixed_point.h"
#include "security/secagg_messages.h"
#include "security/secagg_update.h"

namespace fedpeft {
namespace coordinator {
namespace {

// Parses `bytes` as a message of type M from client `sender` (refused when
// it claims another sender) and hands it to `receive`.
template <typename M, typename Receive>
Status ReceiveFrom(uint32_t sender, const std::string& bytes, Receive receive) {
  ASSIGN_OR_RETURN(M msg, secagg::FromBytes<M>(bytes));
  if (msg.sender != sender) {
    return Status::InvalidArgument("sender " + std::to_string(msg.sender) +
                                   " is not the caller's id " +
                                   std::to_string(sender));
  }
  return receive(msg);
}

}  // namespace

// The secure aggregation of the current round.
struct SecureSumStage::Session {
  enum class Stage { kAdvertise, kShareKeys, kMaskedInput, kUnmask, kDone };
  Stage stage = Stage::kAdvertise;
  bool failed = false;  // a step missed its threshold: no sum this round
  std::unique_ptr<secagg::Server> server;
  secagg::Params params;
  double scale = 0;
  std::vector<std::string> names;          // masked tensors
  std::map<std::string, uint32_t> index;   // worker -> client id
  std::string broadcast;                   // round 0's result
  std::map<uint32_t, std::string> routed;  // round 1's, per client of U2
  std::string unmask_request;              // round 3's request
  std::set<uint32_t> advertised, shared, survivors, unmasked;
  // Each of rounds 0 and 1 may take setup_time from its start.
  Clock::duration setup_time{};
  Clock::time_point setup_deadline;
};

SecureSumStage::SecureSumStage(
    const SecAggOptions& options,
    std::shared_ptr<const TensorMap> template_adapter)
    : options_(options), template_(std::move(template_adapter)) {}

SecureSumStage::~SecureSumStage() = default;

void SecureSumStage::OnOpen(RoundContext& round, RoundMetrics* m) {
  session_.reset();
  if (!options_.enabled) return;
  Start(round);
}

void SecureSumStage::Start(RoundContext& round) {
  std::vector<std::string> members;  // sorted: selected is a set
  for (const auto& id : round.selected) {
    if (!round.registry->Find(id)->profile.edge) members.push_back(id);
  }
  if (members.empty()) return;
  const char* what = round.label;
  auto sa = std::make_unique<Session>();
  Status s;
  if (members.size() < 2) {
    s = Status::FailedPrecondition(
        "needs at least 2 workers in a round, 1 selected (its update alone "
        "would be the sum)");
  } else if (!(round.clip_norm > 0)) {
    s = Status::FailedPrecondition("the round has no DP clip norm");
  }
  if (s.ok()) {
    sa->names = secagg::MaskedTensorNames(*template_, round.frozen, round.ffa);
    auto length = secagg::MaskedVectorLength(*template_, sa->names);
    auto scale = secagg::ChooseFixedPointScale(
        round.clip_norm, static_cast<uint32_t>(members.size()));
    uint64_t nonce = 0;
    s = secagg::SystemRandom().Fill(reinterpret_cast<uint8_t*>(&nonce),
                                    sizeof(nonce));
    if (!length.ok()) s = length.status();
    if (!scale.ok()) s = scale.status();
    if (s.ok()) {
      sa->params.num_clients = static_cast<uint32_t>(members.size());
      sa->params.vector_length = *length;
      sa->params.session_id = nonce ^ static_cast<uint64_t>(round.round);
      sa->scale = *scale;
      auto server = secagg::Server::Create(sa->params);
      s = server.status();
      if (s.ok()) sa->server = std::move(server).value();
    }
  }
  for (size_t i = 0; i < members.size(); ++i) {
    sa->index[members[i]] = static_cast<uint32_t>(i);
  }
  if (!s.ok()) {
    FP_LOG_ERROR("coordinator",
                 "{} {}: secure aggregation cannot run: {}; its workers sit "
                 "this round out",
                 what, round.round, s.message());
    sa->failed = true;
    sa->stage = Session::Stage::kDone;
    for (const auto& id : members) round.Reject(id);
    session_ = std::move(sa);
    return;
  }
  // Key agreement (two steps) takes at most half of the round.
  const double setup_s =
      std::min(options_.setup_timeout_s, round.deadline_s / 4);
  sa->setup_time = std::chrono::milliseconds(
      static_cast<int64_t>(std::max(0.05, setup_s) * 1000));
  sa->setup_deadline = Clock::now() + sa->setup_time;
  FP_LOG_INFO("coordinator",
              "{} {}: secure aggregation over {} workers (threshold {}, {} "
              "words, fixed-point unit {:.3g})",
              what, round.round, members.size(), sa->params.Threshold(),
              sa->params.vector_length, sa->scale);
  session_ = std::move(sa);
}

void SecureSumStage::FillTask(const RoundContext& round, const Participant& p,
                              TaskInfo* task) const {
  const std::string& id = p.profile.worker_id;
  if (!session_ || !session_->index.count(id)) return;
  SecAggTaskInfo sa;
  sa.session_id = session_->params.session_id;
  sa.num_clients = session_->params.num_clients;
  sa.threshold = session_->params.Threshold();
  sa.index = session_->index.at(id);
  sa.scale = session_->scale;
  sa.vector_length = session_->params.vector_length;
  sa.tensors = session_->names;
  task->secagg = std::move(sa);
}

void SecureSumStage::OnTick(RoundContext& round, Clock::time_point now) {
  if (!session_ || session_->failed) return;
  Session& sa = *session_;
  using Stage = Session::Stage;
  const char* what = round.label;
  // Workers that missed a step cannot take part any more: they have
  // answered this round, for nothing.
  auto drop_missing = [&](const std::set<uint32_t>& in, const char* why) {
    for (const auto& [id, index] : sa.index) {
      if (in.count(index) || round.answered.count(id)) continue;
      round.Reject(id);
      FP_LOG_WARN("coordinator",
                  "{} {}: '{}' left out of secure aggregation: {}", what,
                  round.round, id, why);
    }
  };
  auto fail = [&](const Status& s) {
    FP_LOG_ERROR("coordinator", "{} {}: secure aggregation failed: {}", what,
                 round.round, s.message());
    sa.failed = true;
    sa.stage = Stage::kDone;
    drop_missing({}, "the aggregation failed");
    round.Notify();
  };
  if (sa.stage == Stage::kAdvertise &&
      (sa.advertised.size() == sa.index.size() || now >= sa.setup_deadline)) {
    auto broadcast = sa.server->CloseAdvertise();
    if (!broadcast.ok()) return fail(broadcast.status());
    sa.broadcast = secagg::ToBytes(*broadcast);
    sa.stage = Stage::kShareKeys;
    sa.setup_deadline = now + sa.setup_time;
    drop_missing(sa.advertised, "no keys advertised in time");
    round.Notify();
  }
  if (sa.stage == Stage::kShareKeys &&
      (sa.shared.size() == sa.advertised.size() || now >= sa.setup_deadline)) {
    auto routed = sa.server->CloseShareKeys();
    if (!routed.ok()) return fail(routed.status());
    std::set<uint32_t> u2;
    for (const auto& r : *routed) {
      sa.routed[r.recipient] = secagg::ToBytes(r);
      u2.insert(r.recipient);
    }
    sa.stage = Stage::kMaskedInput;
    drop_missing(u2, "no key shares sent in time");
    FP_LOG_INFO("coordinator",
                "{} {}: secure aggregation keys agreed by {} of {}", what,
                round.round, u2.size(), sa.index.size());
    round.Notify();
  }
}

void SecureSumStage::OnClose(RoundContext& round,
                             std::unique_lock<std::mutex>& lock,
                             std::vector<Update>* updates, RoundMetrics* m) {
  if (!session_) return;
  // Masked updates count once their sum is recovered.
  Finish(round, lock, updates);
  m->secagg_workers = 0;
  for (const auto& u : *updates) {
    if (u.summed) m->secagg_workers = static_cast<int>(u.members.size());
  }
}

void SecureSumStage::Finish(RoundContext& round,
                            std::unique_lock<std::mutex>& lock,
                            std::vector<Update>* updates) {
  Session& sa = *session_;
  using Stage = Session::Stage;
  const char* what = round.label;
  const int64_t number = round.round;
  std::vector<Update> masked, rest;
  for (auto& p : *updates) {
    (sa.index.count(p.worker_id) ? masked : rest).push_back(std::move(p));
  }
  *updates = std::move(rest);
  auto done = [&]() {
    sa.stage = Stage::kDone;
    sa.server.reset();
    round.Notify();
  };
  auto fail = [&](const Status& s) {
    FP_LOG_ERROR("coordinator",
                 "{} {}: secure aggregation failed: {}; the {} masked updates "
                 "are lost",
                 what, number, s.message(), masked.size());
    sa.failed = true;
    done();
  };
  if (sa.failed || round.stopping()) return done();
  if (sa.stage != Stage::kMaskedInput) {
    return fail(Status::FailedPrecondition(
        "the round closed before the workers agreed on keys"));
  }
  auto request = sa.server->CloseMaskedInput();
  if (!request.ok()) return fail(request.status());
  sa.unmask_request = secagg::ToBytes(*request);
  sa.survivors =
      std::set<uint32_t>(request->survivors.begin(), request->survivors.end());
  sa.stage = Stage::kUnmask;
  round.Notify();
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(
                         options_.unmask_timeout_s * 1000));
  while (!round.stopping() && sa.unmasked.size() < sa.survivors.size() &&
         Clock::now() < deadline) {
    round.changed->wait_until(lock, deadline);
  }
  std::unique_ptr<secagg::Server> server = std::move(sa.server);
  const std::vector<std::string> names = sa.names;
  const double scale = sa.scale;
  const size_t answers = sa.unmasked.size();
  const size_t dropped = request->dropped.size();
  done();
  if (masked.size() != sa.survivors.size()) {
    return fail(Status::Internal(
        std::to_string(masked.size()) + " masked uploads but " +
        std::to_string(sa.survivors.size()) + " survivors"));
  }
  // Unmasking runs the survivors' and the dropped workers' PRGs over the
  // whole vector: not under the lock.
  lock.unlock();
  StatusOr<std::vector<uint32_t>> words = server->Finish();
  server.reset();
  uint32_t unclipped = 0;
  StatusOr<TensorMap> sum = words.status();
  if (words.ok()) {
    sum = secagg::DecodeSumWords(*words, *template_, names, scale, &unclipped);
  }
  lock.lock();
  if (!sum.ok()) return fail(sum.status());
  const size_t k = masked.size();
  if (unclipped > k) {
    return fail(
        Status::Corruption("the sum counts " + std::to_string(unclipped) +
                           " unclipped updates of " + std::to_string(k)));
  }
  // No server can check a masked input's norm, and one client's words can
  // move the sum anywhere in the fixed-point range. What it cannot hide is
  // the sum's norm: k updates clipped to C sum to at most k·C (plus the
  // encoding's rounding, at most one unit per word and client). A larger
  // sum means out-of-range words: the round refuses it whole.
  const double bound =
      static_cast<double>(k) *
      (round.clip_norm +
       scale * std::sqrt(static_cast<double>(sa.params.vector_length)));
  const double norm = privacy::GlobalNorm(*sum);
  if (!(norm <= bound)) {
    return fail(Status::InvalidArgument(fmt::format(
        "the unmasked sum has norm {:.6g}, more than {} updates clipped to "
        "{:.6g} can reach ({:.6g}): a client sent out-of-range words",
        norm, k, round.clip_norm, bound)));
  }
  Update total;
  total.worker_id = fmt::format("secure sum of {} workers", k);
  total.summed = true;
  UpdateHeader& h = total.header;
  h.round = number;
  h.workers = static_cast<uint32_t>(k);
  h.unclipped = unclipped;
  double loss = 0, eval = 0;
  for (const auto& p : masked) {
    const UpdateHeader& m = p.header;
    total.members.emplace_back(p.worker_id, m);
    h.num_samples += m.num_samples;
    loss += m.train_loss * static_cast<double>(m.num_samples);
    if (std::isfinite(m.eval_loss) && m.eval_tokens > 0) {
      eval += m.eval_loss * static_cast<double>(m.eval_tokens);
      h.eval_tokens += m.eval_tokens;
    }
    h.train_seconds = std::max(h.train_seconds, m.train_seconds);
    h.tokens_per_second += m.tokens_per_second;
  }
  h.train_loss =
      loss / static_cast<double>(std::max<uint64_t>(1, h.num_samples));
  h.metrics_withheld =
      std::all_of(masked.begin(), masked.end(),
                  [](const Update& p) { return p.header.metrics_withheld; });
  h.eval_loss = h.eval_tokens > 0 ? eval / static_cast<double>(h.eval_tokens)
                                  : std::nan("");
  for (auto& [key, t] : *sum) t.div_(static_cast<double>(k));
  total.delta = std::move(sum).value();
  FP_LOG_INFO("coordinator",
              "{} {}: secure aggregation: sum of {} masked updates recovered "
              "({} dropped after agreeing keys, {} unmask answers)",
              what, number, k, dropped, answers);
  updates->push_back(std::move(total));
}

std::optional<std::vector<std::string>> SecureSumStage::MaskedNames(
    const std::string& id) const {
  if (!session_ || !session_->index.count(id)) return std::nullopt;
  return session_->names;
}

StatusOr<std::vector<uint32_t>> SecureSumStage::Flatten(
    const std::string& worker_id, const UpdateHeader& header,
    const TensorMap& words, const std::vector<std::string>& names) {
  const std::string from = "masked update from '" + worker_id + "'";
  if (words.size() != names.size()) {
    return Status::InvalidArgument(
        from + ": " + std::to_string(words.size()) + " tensors, expected " +
        std::to_string(names.size()) +
        " (every tensor of the round's secure aggregation)");
  }
  std::vector<uint32_t> flat;
  for (const std::string& name : names) {
    auto it = words.find(name);
    if (it == words.end() || it->second.scalar_type() != torch::kInt32) {
      return Status::InvalidArgument(
          from + ": tensor '" + name +
          (it == words.end() ? "' missing" : "' is not CODEC_MASKED"));
    }
    torch::Tensor t = it->second.contiguous();
    const auto* p = reinterpret_cast<const uint32_t*>(t.data_ptr<int32_t>());
    flat.insert(flat.end(), p, p + t.numel());
  }
  RETURN_IF_ERROR(CheckNumSamples(from, header.num_samples));
  if (!std::isfinite(header.train_loss)) {
    return Status::InvalidArgument(from +
                                   ": train_loss: expected a finite number");
  }
  flat.push_back(header.masked_unclipped);
  return flat;
}

bool SecureSumStage::Accepting(const std::string& id) const {
  return session_ && session_->server && session_->index.count(id);
}

Status SecureSumStage::Receive(const std::string& id,
                               std::vector<uint32_t> flat) {
  secagg::MaskedInputMsg msg;
  msg.session_id = session_->params.session_id;
  msg.sender = session_->index.at(id);
  msg.masked = std::move(flat);
  return session_->server->ReceiveMaskedInput(msg);
}

StatusOr<SecAggResult> SecureSumStage::Exchange(
    RoundContext& round, std::unique_lock<std::mutex>& lock,
    const std::string& id, int64_t for_round, SecAggStep step,
    const std::string& message, Clock::time_point until) {
  using Stage = Session::Stage;
  Session* const sa = session_.get();
  auto closed = [&](const std::string& why) {
    return Status::FailedPrecondition("secure aggregation of round " +
                                      std::to_string(for_round) + ": '" + id +
                                      "' " + why);
  };
  if (!sa || for_round != round.round || !sa->index.count(id)) {
    return closed("is not part of it (current round " +
                  std::to_string(round.round) + ")");
  }
  const uint32_t me = sa->index.at(id);
  if (!message.empty()) {
    if (sa->failed || !sa->server) return closed("came too late");
    secagg::Server& server = *sa->server;
    Status s;
    std::set<uint32_t>* done = nullptr;  // who completed the step
    switch (step) {
      case SecAggStep::kAdvertise:
        s = ReceiveFrom<secagg::AdvertiseMsg>(me, message, [&](const auto& m) {
          return server.ReceiveAdvertise(m);
        });
        done = &sa->advertised;
        break;
      case SecAggStep::kShareKeys:
        s = ReceiveFrom<secagg::ShareKeysMsg>(me, message, [&](const auto& m) {
          return server.ReceiveShareKeys(m);
        });
        done = &sa->shared;
        break;
      case SecAggStep::kUnmask:
        s = ReceiveFrom<secagg::UnmaskMsg>(me, message, [&](const auto& m) {
          return server.ReceiveUnmask(m);
        });
        done = &sa->unmasked;
        break;
    }
    if (s.ok()) done->insert(me);
    if (!s.ok()) {
      FP_LOG_WARN("coordinator",
                  "round {}: secure aggregation message from "
                  "'{}' refused: {}",
                  for_round, id, s.message());
      return Status::InvalidArgument("secure aggregation message from '" + id +
                                     "': " + s.message());
    }
    round.Notify();
    if (step == SecAggStep::kUnmask) return SecAggResult{true, ""};
  }
  while (true) {
    if (session_.get() != sa || round.round != for_round) {
      return closed("is not part of it any more (the round moved on)");
    }
    if (sa->failed) return closed("ended: the aggregation failed");
    switch (step) {
      case SecAggStep::kAdvertise:
        if (sa->stage > Stage::kAdvertise) {
          if (!sa->advertised.count(me)) {
            return closed("advertised no keys in time");
          }
          return SecAggResult{true, sa->broadcast};
        }
        break;
      case SecAggStep::kShareKeys:
        if (sa->stage > Stage::kShareKeys) {
          auto it = sa->routed.find(me);
          if (it == sa->routed.end()) return closed("shared no keys in time");
          return SecAggResult{true, it->second};
        }
        break;
      case SecAggStep::kUnmask:
        if (sa->stage == Stage::kUnmask) {
          if (!sa->survivors.count(me)) {
            return closed("sent no masked update the sum holds");
          }
          return SecAggResult{true, sa->unmask_request};
        }
        if (sa->stage == Stage::kDone) return closed("is over");
        break;
    }
    if (round.changed->wait_until(lock, until) == std::cv_status::timeout) {
      return SecAggResult{};
    }
  }
}

}  // namespace coordinator
}  // namespace fedpeft
