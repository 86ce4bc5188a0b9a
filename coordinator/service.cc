#include "coordinator/service.h"

#include <cmath>
#include <exception>

#include "common/file_util.h"
#include "common/logging.h"
#include "delivery/sha256.h"
#include "proto/grpc_util.h"
#include "proto/tensor_codec.h"
#include "worker/model_download.h"

namespace fedpeft {
namespace coordinator {
namespace {

grpc::Status Grpc(const Status& s) { return transport::ToGrpcStatus(s); }

grpc::Status Denied(const std::string& message) {
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, message);
}

grpc::Status InternalError(const char* where, const std::exception& e) {
  FP_LOG_ERROR("service", "{}: {}", where, e.what());
  return grpc::Status(grpc::StatusCode::INTERNAL,
                      std::string(where) + ": " + e.what());
}

// A long poll's budget: what the client asks, but never past its own
// deadline (less a margin for the reply).
std::chrono::milliseconds LongPollBudget(const grpc::ServerContext& ctx,
                                         uint32_t wait_ms) {
  auto wait = std::chrono::milliseconds(wait_ms);
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      ctx.deadline() - std::chrono::system_clock::now());
  if (left - std::chrono::milliseconds(200) < wait) {
    wait = std::max(std::chrono::milliseconds(0),
                    left - std::chrono::milliseconds(200));
  }
  return wait;
}

// The task as the protocol carries it; an executor's USERS task holds its
// users' TRAIN tasks.
void ToProto(const TaskInfo& task, proto::Task* out) {
  switch (task.kind) {
    case TaskInfo::Kind::kWait:
      out->set_kind(proto::Task::WAIT);
      break;
    case TaskInfo::Kind::kTrain:
      out->set_kind(proto::Task::TRAIN);
      break;
    case TaskInfo::Kind::kShutdown:
      out->set_kind(proto::Task::SHUTDOWN);
      break;
    case TaskInfo::Kind::kUsers:
      out->set_kind(proto::Task::USERS);
      break;
  }
  out->set_round(static_cast<uint64_t>(task.round));
  out->set_deadline_unix_ms(task.deadline_unix_ms);
  out->set_adapter_version(static_cast<uint64_t>(task.round));
  out->set_message(task.message);
  proto::TrainSpec* spec = out->mutable_train();
  spec->set_local_epochs(task.train.local_epochs);
  spec->set_local_steps(task.train.local_steps);
  spec->set_batch_size(task.train.batch_size);
  spec->set_lr(task.train.lr);
  spec->set_fedprox_mu(task.train.fedprox_mu);
  spec->set_seed(task.seed);
  spec->set_train_b_only(task.train_b_only);
  spec->set_prune_threshold(task.prune_threshold);
  spec->set_clip_norm(task.clip_norm);
  spec->set_withhold_metrics(task.withhold_metrics);
  spec->set_upload_bits(static_cast<uint32_t>(task.compression.bits));
  spec->set_block_size(static_cast<uint32_t>(task.compression.block_size));
  spec->set_error_feedback(task.compression.error_feedback);
  out->set_noise_stddev(task.noise_stddev);
  out->set_count_noise_stddev(task.count_noise_stddev);
  out->set_rank(static_cast<uint32_t>(task.rank));
  for (const auto& key : task.frozen) out->add_frozen(key);
  out->set_edge_rounds(static_cast<uint32_t>(task.edge_rounds));
  if (task.secagg) {
    const SecAggTaskInfo& sa = *task.secagg;
    proto::SecAggTask* secagg = out->mutable_secagg();
    secagg->set_session_id(sa.session_id);
    secagg->set_num_clients(sa.num_clients);
    secagg->set_threshold(sa.threshold);
    secagg->set_index(sa.index);
    secagg->set_scale(sa.scale);
    secagg->set_vector_length(sa.vector_length);
    for (const auto& name : sa.tensors) secagg->add_tensors(name);
  }
  if (!task.user_id.empty()) out->set_user_id(task.user_id);
  for (const TaskInfo& user : task.users) ToProto(user, out->add_user_tasks());
}

}  // namespace

FederationService::FederationService(
    RoundEngine& engine, size_t chunk_bytes, size_t max_message_bytes,
    std::unique_ptr<security::Allowlist> allowlist,
    delivery::ModelSource* models)
    : engine_(engine),
      models_(models),
      chunk_bytes_(chunk_bytes),
      max_message_bytes_(max_message_bytes),
      allowlist_(std::move(allowlist)) {}

grpc::Status FederationService::Authenticate(const grpc::ServerContext& ctx,
                                             const char* call,
                                             const std::string* session,
                                             std::string* name,
                                             security::CertRole* role) {
  name->clear();
  if (!allowlist_) return grpc::Status::OK;
  *name = security::PeerCertificateName(ctx);
  if (name->empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        std::string(call) +
                            ": the client certificate has no common name; "
                            "issue one with `fedpeft certs issue --name`");
  }
  if (!allowlist_->Allows(*name)) {
    FP_LOG_WARN("service", "{} from '{}' refused: not in the TLS allowlist",
                call, *name);
    engine_.Revoke(*name, "certificate name not in the TLS allowlist");
    return Denied(std::string(call) + ": certificate name '" + *name +
                  "' is not allowed (tls.allowed_names / "
                  "tls.allowlist_file); it may have been revoked");
  }
  if (role != nullptr) {
    StatusOr<security::CertRole> r =
        security::CertificateRole(security::PeerCertificatePem(ctx));
    if (!r.ok()) {
      FP_LOG_WARN("service", "{} from '{}' refused: {}", call, *name,
                  r.status().message());
      return Denied(std::string(call) + ": " + r.status().message());
    }
    *role = *r;
  }
  if (session != nullptr) {
    StatusOr<std::string> owner = engine_.SessionOwner(*session);
    // An unknown session is the handler's to answer (NOT_FOUND: register).
    if (owner.ok() && *owner != *name) {
      FP_LOG_WARN("service",
                  "{} on the session of '{}' came with the certificate of "
                  "'{}': refused",
                  call, *owner, *name);
      return Denied(std::string(call) + ": session belongs to '" + *owner +
                    "', but the call came with the certificate of '" + *name +
                    "'");
    }
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::Register(grpc::ServerContext* ctx,
                                         const proto::RegisterRequest* req,
                                         proto::RegisterReply* reply) {
  try {
    std::string peer;
    security::CertRole cert_role = security::CertRole::kWorker;
    grpc::Status auth =
        Authenticate(*ctx, "Register", nullptr, &peer, &cert_role);
    if (!auth.ok()) return auth;
    const proto::WorkerProfile& p = req->profile();
    const security::CertRole wanted = p.role() == proto::ROLE_EDGE
                                          ? security::CertRole::kEdge
                                          : security::CertRole::kWorker;
    if (!peer.empty() && cert_role != wanted) {
      // Edges are trusted more than workers (their updates are means of
      // several users); the CA, not the caller, says who is which.
      FP_LOG_WARN("service",
                  "Register of '{}' as {} with a certificate of role {}: "
                  "refused",
                  peer, security::CertRoleName(wanted),
                  security::CertRoleName(cert_role));
      return Denied("Register: '" + peer + "' asks to register as " +
                    security::CertRoleName(wanted) +
                    ", but its certificate's role is " +
                    security::CertRoleName(cert_role) +
                    " (a participant registers only in the role the CA "
                    "issued: `fedpeft certs issue --role`)");
    }
    if (!peer.empty() && p.worker_id() != peer) {
      FP_LOG_WARN("service",
                  "Register as '{}' with the certificate of '{}': refused",
                  p.worker_id(), peer);
      return Denied("Register: profile worker_id '" + p.worker_id() +
                    "' does not match the client certificate name '" + peer +
                    "' (the certificate is the identity: set worker.id or "
                    "edge.id to '" +
                    peer + "', or issue a certificate for '" + p.worker_id() +
                    "')");
    }
    WorkerProfile profile;
    profile.worker_id = p.worker_id();
    profile.threads = p.threads();
    profile.ram_bytes = p.ram_bytes();
    profile.tokens_per_second = p.tokens_per_second();
    profile.uplink_bytes_per_second = p.uplink_bytes_per_second();
    profile.num_samples = p.num_samples();
    profile.version = p.version();
    profile.edge = p.role() == proto::ROLE_EDGE;
    profile.seq_len = p.seq_len();
    profile.hosted_users = p.hosted_users();
    profile.first_user = p.first_user();
    if (p.role() != proto::ROLE_WORKER && p.role() != proto::ROLE_EDGE) {
      return Grpc(Status::InvalidArgument(
          "profile.role: expected ROLE_WORKER (0) or ROLE_EDGE (1), got " +
          std::to_string(static_cast<int>(p.role()))));
    }
    if (!std::isfinite(profile.tokens_per_second) ||
        profile.tokens_per_second < 0 ||
        !std::isfinite(profile.uplink_bytes_per_second) ||
        profile.uplink_bytes_per_second < 0) {
      return Grpc(Status::InvalidArgument(
          "profile: tokens_per_second and uplink_bytes_per_second must be "
          "finite and >= 0"));
    }
    auto r = engine_.Register(profile);
    if (!r.ok()) return Grpc(r.status());
    reply->set_session_id(r->session_id);
    reply->set_federation_id(r->federation_id);
    reply->set_heartbeat_interval_ms(r->heartbeat_interval_ms);
    reply->set_max_message_bytes(max_message_bytes_);
    reply->set_chunk_bytes(chunk_bytes_);
    reply->set_adapter_config_json(r->adapter_config_json);
    reply->set_base_model(r->base_model);
    reply->set_plan_json(r->plan_json);
    return grpc::Status::OK;
  } catch (const std::exception& e) {
    return InternalError("Register", e);
  }
}

grpc::Status FederationService::Heartbeat(grpc::ServerContext* ctx,
                                          const proto::HeartbeatRequest* req,
                                          proto::HeartbeatReply* reply) {
  std::string peer;
  grpc::Status auth =
      Authenticate(*ctx, "Heartbeat", &req->session_id(), &peer);
  if (!auth.ok()) return auth;
  auto round = engine_.Heartbeat(req->session_id());
  if (!round.ok()) return Grpc(round.status());
  reply->set_round(static_cast<uint64_t>(*round));
  return grpc::Status::OK;
}

grpc::Status FederationService::GetTask(grpc::ServerContext* ctx,
                                        const proto::TaskRequest* req,
                                        proto::Task* reply) {
  try {
    std::string peer;
    grpc::Status auth =
        Authenticate(*ctx, "GetTask", &req->session_id(), &peer);
    if (!auth.ok()) return auth;
    auto task = engine_.GetTask(req->session_id(),
                                LongPollBudget(*ctx, req->wait_ms()));
    if (!task.ok()) return Grpc(task.status());
    ToProto(*task, reply);
    return grpc::Status::OK;
  } catch (const std::exception& e) {
    return InternalError("GetTask", e);
  }
}

grpc::Status FederationService::DownloadAdapter(
    grpc::ServerContext* ctx, const proto::DownloadRequest* req,
    grpc::ServerWriter<proto::TensorChunk>* writer) {
  try {
    std::string peer;
    grpc::Status auth =
        Authenticate(*ctx, "DownloadAdapter", &req->session_id(), &peer);
    if (!auth.ok()) return auth;
    auto global = engine_.GlobalAdapter(req->session_id(),
                                        static_cast<int64_t>(req->round()),
                                        req->cached_round());
    if (!global.ok()) return Grpc(global.status());
    uint64_t bytes = 0;
    std::mt19937_64 rng(engine_.NextCodecSeed());
    Status s = transport::EncodeTensors(
        **global, chunk_bytes_,
        [&](const proto::TensorChunk& chunk) {
          bytes += chunk.ByteSizeLong();
          return writer->Write(chunk);
        },
        engine_.DownloadCodec(), &rng, engine_.AdapterSchema());
    engine_.AddBytesDown(bytes);
    return Grpc(s);
  } catch (const std::exception& e) {
    return InternalError("DownloadAdapter", e);
  }
}

grpc::Status FederationService::UploadUpdate(
    grpc::ServerContext* ctx, grpc::ServerReader<proto::UploadMessage>* reader,
    proto::UploadReply* reply) {
  try {
    proto::UploadMessage msg;
    if (!reader->Read(&msg) || !msg.has_header()) {
      return Grpc(Status::InvalidArgument(
          "upload: the first message must be an UpdateHeader"));
    }
    uint64_t bytes = msg.ByteSizeLong();
    // A copy: the read loop below reuses `msg` for the chunks.
    const proto::UpdateHeader h = msg.header();
    const std::string session = h.session_id();
    const int64_t round = static_cast<int64_t>(h.round());
    std::string peer;
    grpc::Status auth = Authenticate(*ctx, "UploadUpdate", &session, &peer);
    if (!auth.ok()) return auth;
    UpdateHeader header;
    header.round = round;
    header.num_samples = h.num_samples();
    header.train_loss = h.train_loss();
    header.eval_loss = h.eval_loss();
    header.eval_tokens = h.eval_tokens();
    header.train_seconds = h.train_seconds();
    header.tokens_per_second = h.tokens_per_second();
    header.rank = h.rank();
    header.whole_adapter = h.kind() == proto::UpdateHeader::ADAPTER;
    header.workers = h.workers();
    header.edge_rounds = h.edge_rounds();
    header.rank_min = h.rank_min();
    header.rank_max = h.rank_max();
    header.rank_mean = h.rank_mean();
    header.unclipped = h.unclipped();
    header.users_selected = h.users_selected();
    header.users_alive = h.users_alive();
    header.masked_unclipped = h.masked_unclipped();
    header.metrics_withheld = h.metrics_withheld();
    if (h.kind() != proto::UpdateHeader::DELTA &&
        h.kind() != proto::UpdateHeader::ADAPTER) {
      Status bad = Status::InvalidArgument(
          "upload: kind " + std::to_string(static_cast<int>(h.kind())) +
          ", expected DELTA (0) or ADAPTER (1)");
      engine_.RecordRejectedUpload(session, round, bad.message(), bytes);
      return Grpc(bad);
    }
    // Refuse early: a stale, duplicate or unselected upload, or one of a
    // rank the worker was not given, is not read.
    Status allowed = engine_.CheckUploadAllowed(session, round);
    StatusOr<UploadExpectation> expect =
        allowed.ok() ? engine_.ExpectedUpload(session, header)
                     : StatusOr<UploadExpectation>(allowed);
    if (!expect.ok()) {
      engine_.RecordRejectedUpload(session, round, expect.status().message(),
                                   bytes);
      return Grpc(expect.status());
    }

    transport::DecoderLimits limits;
    limits.max_total_bytes = engine_.max_update_bytes();
    limits.max_tensors = expect->max_tensors;
    limits.expected = expect->specs;
    limits.require_all_expected = false;    // untrained tensors stay home
    limits.output_dtype = torch::kFloat32;  // F16 and quantized uploads
    limits.masked = expect->masked;         // secure aggregation's words
    transport::TensorDecoder decoder(limits);
    Status s;
    // The first error ends the upload: the handler returns, which closes the
    // stream (the client's next write fails and it reads this status), so
    // a rejected stream costs no more than the bytes that decided it.
    while (s.ok() && reader->Read(&msg)) {
      bytes += msg.ByteSizeLong();
      if (!msg.has_chunk()) {
        s = Status::InvalidArgument(
            "upload: a second UpdateHeader in the "
            "stream");
        break;
      }
      s = decoder.Add(msg.chunk());
    }
    TensorMap delta;
    if (s.ok()) {
      auto decoded = decoder.Finish();
      if (decoded.ok()) {
        delta = std::move(decoded).value();
      } else {
        s = decoded.status();
      }
    }
    if (s.ok() && h.num_tensors() != delta.size()) {
      s = Status::InvalidArgument(
          "upload: header announced " + std::to_string(h.num_tensors()) +
          " tensors, the stream carried " + std::to_string(delta.size()));
    }
    if (!s.ok()) {
      engine_.RecordRejectedUpload(session, round, s.message(), bytes);
      return Grpc(s);
    }
    s = engine_.SubmitUpdate(session, header, std::move(delta), bytes);
    if (!s.ok()) return Grpc(s);
    reply->set_accepted(true);
    return grpc::Status::OK;
  } catch (const std::exception& e) {
    return InternalError("UploadUpdate", e);
  }
}

grpc::Status FederationService::GetStatus(grpc::ServerContext* ctx,
                                          const proto::StatusRequest* req,
                                          proto::StatusReply* reply) {
  std::string peer;
  security::CertRole role = security::CertRole::kOperator;
  grpc::Status auth = Authenticate(*ctx, "GetStatus", nullptr, &peer, &role);
  if (!auth.ok()) return auth;
  if (!peer.empty() && role != security::CertRole::kOperator) {
    FP_LOG_WARN("service", "GetStatus from '{}' (role {}): refused", peer,
                security::CertRoleName(role));
    return Denied(
        "GetStatus: needs an operator certificate (`fedpeft certs "
        "issue --role operator`); '" +
        peer + "' has role " + security::CertRoleName(role));
  }
  CoordinatorStatus s = engine_.GetStatus();
  reply->set_federation_id(s.federation_id);
  reply->set_state(s.state);
  reply->set_round(static_cast<uint64_t>(s.round));
  reply->set_total_rounds(static_cast<uint64_t>(s.total_rounds));
  reply->set_selected(s.selected);
  reply->set_answered(s.answered);
  reply->set_last_train_loss(s.last_train_loss);
  reply->set_last_eval_loss(s.last_eval_loss);
  reply->set_bytes_up(s.bytes_up);
  reply->set_bytes_down(s.bytes_down);
  reply->set_strategy(s.strategy);
  reply->set_uptime_seconds(s.uptime_seconds);
  for (const auto& w : s.workers) {
    proto::WorkerStatus* ws = reply->add_workers();
    ws->set_worker_id(w.worker_id);
    ws->set_alive(w.alive);
    ws->set_rounds_completed(w.rounds_completed);
    ws->set_last_seen_ms_ago(w.last_seen_ms_ago);
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::SecAgg(grpc::ServerContext* ctx,
                                       const proto::SecAggRequest* req,
                                       proto::SecAggReply* reply) {
  try {
    std::string peer;
    grpc::Status auth = Authenticate(*ctx, "SecAgg", &req->session_id(), &peer);
    if (!auth.ok()) return auth;
    SecAggStep step;
    switch (req->step()) {
      case proto::SecAggRequest::ADVERTISE:
        step = SecAggStep::kAdvertise;
        break;
      case proto::SecAggRequest::SHARE_KEYS:
        step = SecAggStep::kShareKeys;
        break;
      case proto::SecAggRequest::UNMASK:
        step = SecAggStep::kUnmask;
        break;
      default:
        return Grpc(Status::InvalidArgument(
            "SecAgg: step " + std::to_string(static_cast<int>(req->step())) +
            " (expected ADVERTISE=1, SHARE_KEYS=2 or UNMASK=3)"));
    }
    if (req->message().size() > max_message_bytes_) {
      return Grpc(Status::InvalidArgument(
          "SecAgg: message of " + std::to_string(req->message().size()) +
          " bytes, more than the server's limit " +
          std::to_string(max_message_bytes_)));
    }
    StatusOr<SecAggResult> r = engine_.SecAggExchange(
        req->session_id(), static_cast<int64_t>(req->round()), step,
        req->message(), LongPollBudget(*ctx, req->wait_ms()));
    if (!r.ok()) return Grpc(r.status());
    reply->set_ready(r->ready);
    reply->set_message(std::move(r->message));
    return grpc::Status::OK;
  } catch (const std::exception& e) {
    return InternalError("SecAgg", e);
  }
}

grpc::Status FederationService::AuthenticateFetch(
    const grpc::ServerContext& ctx, const char* call, std::string* name) {
  security::CertRole role = security::CertRole::kWorker;
  grpc::Status auth = Authenticate(ctx, call, nullptr, name, &role);
  if (!auth.ok()) return auth;
  if (!name->empty() && role != security::CertRole::kWorker &&
      role != security::CertRole::kEdge) {
    FP_LOG_WARN("service", "{} from '{}' (role {}): refused", call, *name,
                security::CertRoleName(role));
    return Denied(std::string(call) +
                  ": needs a worker or edge certificate; '" + *name +
                  "' has role " + security::CertRoleName(role));
  }
  if (models_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        std::string(call) +
                            ": this server delivers no model; set "
                            "model.source local and model.path on the client");
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::GetModelManifest(
    grpc::ServerContext* ctx, const proto::ModelManifestRequest* req,
    proto::ModelManifest* reply) {
  try {
    std::string peer;
    grpc::Status auth = AuthenticateFetch(*ctx, "GetModelManifest", &peer);
    if (!auth.ok()) return auth;
    auto manifest = models_->Manifest();
    if (!manifest.ok()) {
      FP_LOG_ERROR("service", "GetModelManifest: {}",
                   manifest.status().message());
      return Grpc(manifest.status().WithContext("GetModelManifest"));
    }
    worker::ManifestToProto(**manifest, reply);
    return grpc::Status::OK;
  } catch (const std::exception& e) {
    return InternalError("GetModelManifest", e);
  }
}

grpc::Status FederationService::GetModelBlocks(
    grpc::ServerContext* ctx, const proto::ModelBlocksRequest* req,
    grpc::ServerWriter<proto::ModelBlock>* writer) {
  try {
    std::string peer;
    grpc::Status auth = AuthenticateFetch(*ctx, "GetModelBlocks", &peer);
    if (!auth.ok()) return auth;
    const int n = req->hashes_size();
    if (n < 1 || static_cast<size_t>(n) > delivery::kMaxBlocksPerRequest) {
      return Grpc(Status::InvalidArgument(
          "GetModelBlocks: hashes: expected 1 to " +
          std::to_string(delivery::kMaxBlocksPerRequest) +
          " block names, got " + std::to_string(n)));
    }
    for (int i = 0; i < n; ++i) {
      if (!delivery::IsSha256Hex(req->hashes(i))) {
        return Grpc(Status::InvalidArgument(
            "GetModelBlocks: hashes[" + std::to_string(i) +
            "]: expected 64 lowercase hex digits (SHA-256), got '" +
            req->hashes(i).substr(0, 80) + "'"));
      }
    }
    uint64_t bytes = 0;
    int sent = 0;
    for (int i = 0; i < n; ++i) {
      StatusOr<std::string> data = models_->ReadBlock(req->hashes(i));
      if (!data.ok()) {
        FP_LOG_WARN("service", "GetModelBlocks from '{}': {}", peer,
                    data.status().message());
        return Grpc(data.status().WithContext("GetModelBlocks: hashes[" +
                                              std::to_string(i) + "]"));
      }
      proto::ModelBlock block;
      block.set_hash(req->hashes(i));
      bytes += data->size();
      block.set_data(std::move(data).value());
      if (!writer->Write(block)) break;  // the client went away
      ++sent;
    }
    const delivery::SourceStats st = models_->stats();
    FP_LOG_INFO("service",
                "model blocks: {} ({} B) to '{}'; {} blocks ({} B) served in "
                "all, {} ({} B) fetched from upstream",
                sent, bytes, peer.empty() ? ctx->peer() : peer,
                st.blocks_served, st.bytes_served, st.blocks_fetched,
                st.bytes_fetched);
    return grpc::Status::OK;
  } catch (const std::exception& e) {
    return InternalError("GetModelBlocks", e);
  }
}

StatusOr<std::unique_ptr<FederationServer>> FederationServer::Start(
    RoundEngine& engine, const ServerOptions& options,
    delivery::ModelSource* models) {
  const size_t max_message = static_cast<size_t>(options.max_message_mb) << 20;
  size_t chunk = std::min(static_cast<size_t>(options.chunk_kb) << 10,
                          transport::ChunkBytesForMessageLimit(max_message));
  ASSIGN_OR_RETURN(transport::HostPort hp,
                   transport::SplitHostPort(options.address));
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   security::MakeServerCredentials(options.tls, "coordinator"));
  std::unique_ptr<security::Allowlist> allowlist;
  if (options.tls.enabled) {
    ASSIGN_OR_RETURN(allowlist, security::Allowlist::Create(options.tls));
    FP_LOG_INFO("coordinator", "clients admitted: {}", allowlist->Describe());
  }
  std::unique_ptr<FederationServer> server(new FederationServer());
  server->service_ = std::make_unique<FederationService>(
      engine, chunk, max_message, std::move(allowlist), models);
  grpc::ServerBuilder builder;
  transport::ServerBuilderDefaults(&builder, max_message);
  // Long polls hold a thread each: allow one per worker and then some.
  grpc::ResourceQuota quota("fedpeft-coordinator");
  quota.SetMaxThreads(1024);
  builder.SetResourceQuota(quota);
  builder.AddListeningPort(transport::JoinHostPort(hp.host, hp.port),
                           credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return Status::Unavailable("server.address: cannot listen on '" +
                               options.address +
                               "' (in use, or not an address of this host?)");
  }
  FP_LOG_INFO("coordinator",
              "listening on {}:{} ({}, max message {} MiB, chunks "
              "of {} KiB)",
              hp.host, server->port_,
              options.tls.enabled ? "mutual TLS" : "PLAINTEXT",
              options.max_message_mb, chunk >> 10);
  if (!options.port_file.empty()) {
    RETURN_IF_ERROR(WriteFileAtomic(options.port_file,
                                    std::to_string(server->port_) + "\n"));
  }
  return server;
}

FederationServer::~FederationServer() { Shutdown(); }

void FederationServer::Shutdown(std::chrono::milliseconds grace) {
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + grace);
    server_->Wait();
    server_.reset();
  }
}

}  // namespace coordinator
}  // namespace fedpeft
