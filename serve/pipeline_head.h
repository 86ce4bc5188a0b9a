// The head of a pipeline (`fedpeft serve --config FILE` with pipeline.stages
// = K > 0 and pipeline.stage 0): stage 0 of the ring, and the OpenAI HTTP
// front (it is the Backend of serve/http_server.h).
//
// The head holds the embeddings, the output layer and the first span of
// layers: in MDI-LLM's ring (Macario et al. 2025, arXiv 2505.18164) the
// first device both starts and ends each token, so the tokenizer, the
// sampling and the client connections live in one process, only hidden
// states travel between stages, and a tied embedding (Qwen2.5, Llama-3.2)
// is held once rather than at both ends of a chain.
//
// Forming the ring: stages 1..K-1 join (Join, repeated as heartbeats) with
// their model fingerprint, measured matrix-vector bandwidth and memory
// budget. Once all have joined, the head splits the layers
// (serve/pipeline_partition.h: by hand with pipeline.layers, otherwise so
// the slowest stage is as fast as it can be within every stage's memory),
// loads its own span, and assigns the others theirs; the ring is up when
// every stage reports its span loaded in the current epoch and its relay
// stream open. A stage whose model, stage count or index does not fit is
// refused with a message naming both sides.
//
// Recurrent pipeline parallelism: up to serve.parallel sequences are in
// flight (serve.max_waiting more wait, the rest get 503). Each sequence has
// at most one activation in the ring at a time; with several sequences,
// each stage works on a different one's token at any moment. The head's
// compute thread takes events in arrival order: a new request (prefill
// through its span), or a returned activation (output layer, sampling as
// `fedpeft generate` does, then the next token through its span), so new
// requests join the ring between other sequences' tokens.
//
// Failure: a stage silent for pipeline.stage_timeout_ms, a stage reporting
// its relay broken, a stage that re-joins (restarted), or the head's own
// relay breaking takes the ring down: every sequence in flight fails with
// Unavailable naming the stage and why (503), the epoch advances so stages
// drop their KV caches, and the ring comes up again when every stage is
// back. New requests get 503 while it is down.
//
// Thread-safety: Models, Check and Complete are thread-safe.
#ifndef FEDPEFT_SERVE_PIPELINE_HEAD_H_
#define FEDPEFT_SERVE_PIPELINE_HEAD_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "serve/openai_api.h"
#include "serve/serve_config.h"

namespace fedpeft {
namespace serve {

class PipelineHead : public Backend {
 public:
  // Starts the head's pipeline server and its threads; the ring forms as
  // stages join. `tokenizer` is the model's.
  static StatusOr<std::unique_ptr<PipelineHead>> Create(
      const ServeConfig& config, std::unique_ptr<model::Tokenizer> tokenizer);
  ~PipelineHead() override;

  std::vector<std::string> Models() const override;
  Status Check(const CompletionRequest& request) const override;
  Status Complete(const CompletionRequest& request,
                  const DeltaCallback& on_delta,
                  CompletionResult* result) override;

  // The pipeline server's port (pipeline.listen may ask for port 0).
  int port() const;
  // A load error of the head's own span (the process should end), or OK.
  Status Health() const;

 private:
  class Impl;
  explicit PipelineHead(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_PIPELINE_HEAD_H_
