// A pipeline stage after the head (`fedpeft serve --config FILE --set
// pipeline.stage=i`, i >= 1): it serves Relay on pipeline.listen, joins the
// head at pipeline.head and repeats the join as its heartbeat
// (pipeline.heartbeat_ms), loads the span of layers the head assigns (and
// each adapter's part of those layers), then runs every activation that
// arrives through its layers and relays the result to the next stage. The
// last stage relays only each sequence's last row, to the head.
//
// A new ring epoch from the head (a stage failed and the ring re-formed)
// drops every KV cache; a refused join (another model, stage count or
// index) ends the stage with that error. While the head is unreachable the
// stage keeps trying and keeps its span.
//
// Thread-safety: RunPipelineStage blocks until `stop`.
#ifndef FEDPEFT_SERVE_PIPELINE_STAGE_H_
#define FEDPEFT_SERVE_PIPELINE_STAGE_H_

#include <atomic>

#include "common/status.h"
#include "serve/serve_config.h"

namespace fedpeft {
namespace serve {

// REQUIRES: config.pipeline.enabled() && !config.pipeline.is_head().
Status RunPipelineStage(const ServeConfig& config,
                        const std::atomic<bool>& stop);

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_PIPELINE_STAGE_H_
