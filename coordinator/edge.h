// The edge aggregator (`fedpeft edge --config FILE`): a participant of the
// cloud coordinator that serves workers of its own.
//
//   cloud ──task(κ, adapter)──▶ edge ──κ edge rounds──▶ its workers
//   cloud ◀──one update──────── edge (merged; weight = its workers' samples)
//
// HierFAVG (Liu et al. 2020): workers run their local steps, the edge
// aggregates every edge round (FedAvg by samples, or the federation's
// heterogeneous-rank merge), and the cloud aggregates the edges every κ edge
// rounds. The edge holds its own deadlines and quorum; each edge round gets
// its share of what is left of the cloud round's deadline. It is a
// composition: a client of the cloud (worker/federation_client.h) plus the
// same round engine the cloud runs (edge_rounds.h, round_engine.h) behind
// the same gRPC service, so workers cannot tell an edge from the cloud.
//
// Its base model is model.path, or (model.source upstream) fetched from the
// cloud into model.cache_dir before it registers; either way it delivers
// that model to its workers that fetch it (delivery/model_source.h), a
// fetched one from its cache, so the cloud sends the model once for all of
// them.
//
// A restarted edge registers again under its id and rejoins the cloud
// round in progress if that is still open to it; its workers re-register on
// their own (their calls get NOT_FOUND).
//
// Thread-safety: Run() on one thread; Stop() from any thread.
#ifndef FEDPEFT_COORDINATOR_EDGE_H_
#define FEDPEFT_COORDINATOR_EDGE_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/edge_config.h"

namespace fedpeft {
namespace coordinator {

class Edge {
 public:
  explicit Edge(const EdgeConfig& config);
  ~Edge();
  // Registers with the cloud, serves workers, and answers cloud tasks until
  // the cloud says SHUTDOWN (OK), Stop() (OK), or the cloud stays
  // unreachable past upstream.give_up_after_s.
  Status Run();
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_EDGE_H_
