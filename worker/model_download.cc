#include "worker/model_download.h"

namespace fedpeft {
namespace worker {

void ManifestToProto(const delivery::ModelManifest& m,
                     proto::ModelManifest* out) {
  out->set_manifest_id(m.id);
  out->set_block_size(m.block_size);
  out->set_entry(m.entry);
  for (const delivery::ManifestFile& f : m.files) {
    proto::ModelFile* pf = out->add_files();
    pf->set_path(f.path);
    pf->set_size(f.size);
    for (const std::string& b : f.blocks) pf->add_blocks(b);
  }
}

delivery::ModelManifest ManifestFromProto(const proto::ModelManifest& m) {
  delivery::ModelManifest out;
  out.id = m.manifest_id();
  out.block_size = m.block_size();
  out.entry = m.entry();
  out.files.reserve(m.files_size());
  for (const proto::ModelFile& pf : m.files()) {
    delivery::ManifestFile f;
    f.path = pf.path();
    f.size = pf.size();
    f.blocks.assign(pf.blocks().begin(), pf.blocks().end());
    out.files.push_back(std::move(f));
  }
  return out;
}

StatusOr<delivery::ModelManifest> GrpcBlockRemote::GetManifest() {
  ASSIGN_OR_RETURN(proto::ModelManifest m, client_.GetModelManifest(role_));
  // A block travels in one message (with a few bytes of framing).
  if (m.block_size() + (4 << 10) > client_.max_message_bytes()) {
    return Status::InvalidArgument(
        "the server's model comes in blocks of " +
        std::to_string(m.block_size()) +
        " bytes, more than fits in a "
        "message of max_message_mb (" +
        std::to_string(client_.max_message_bytes() >> 20) +
        " MiB) of the connection to " + client_.address() + ": raise it");
  }
  return ManifestFromProto(m);
}

Status GrpcBlockRemote::GetBlocks(const std::vector<std::string>& hashes,
                                  const OnBlock& on_block) {
  return client_.GetModelBlocks(hashes, [&](proto::ModelBlock& b) {
    return on_block(b.hash(), std::move(*b.mutable_data()));
  });
}

StatusOr<std::string> FetchUpstreamModel(const ModelOptions& model,
                                         const ConnectionOptions& server,
                                         const std::string& id) {
  // A client of its own: no session, nothing registered yet.
  FederationClient client(
      id, server, [] { return proto::WorkerProfile(); },
      [](const proto::RegisterReply&) { return Status::Ok(); });
  RETURN_IF_ERROR(client.Connect());
  GrpcBlockRemote remote(client, proto::ROLE_WORKER);
  StatusOr<std::string> path =
      delivery::DeliverModel(remote, model.cache_dir, id);
  if (!path.ok()) {
    return path.status().WithContext("model.source upstream (" +
                                     server.address + ")");
  }
  return path;
}

}  // namespace worker
}  // namespace fedpeft
