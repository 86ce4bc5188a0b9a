// The round stages a round engine runs, built for its role (the cloud, or
// an edge whose round parameters come from the cloud's tasks).
//
// Adding a stage: write it in this folder (a RoundStage), construct it in
// Pipeline::Build (pipeline.cc) and put it in `order`. A stage with only
// the common hooks lives in `more`; the engine needs no change.
#ifndef FEDPEFT_COORDINATOR_STAGES_PIPELINE_H_
#define FEDPEFT_COORDINATOR_STAGES_PIPELINE_H_

#include <memory>
#include <vector>

#include "coordinator/stages/adapter_planner.h"
#include "coordinator/stages/privacy.h"
#include "coordinator/stages/round_stage.h"
#include "coordinator/stages/secure_sum.h"
#include "coordinator/stages/update_validation.h"

namespace fedpeft {
namespace coordinator {

struct Pipeline {
  std::unique_ptr<UpdateValidation> validation;
  std::unique_ptr<AdapterPlanner> planner;
  std::unique_ptr<PrivacyStage> privacy;
  std::unique_ptr<SecureSumStage> secure_sum;
  std::vector<std::unique_ptr<RoundStage>> more;  // common hooks only
  // Every stage, in the order hooks run (OnClose runs it backwards).
  std::vector<RoundStage*> order;

  // `cloud`: the cloud's stages (APF, the accountant); otherwise an edge's.
  static StatusOr<Pipeline> Build(const CoordinatorConfig& config,
                                  const model::LlamaConfig& model,
                                  std::shared_ptr<const TensorMap> adapter,
                                  Registry* registry, bool cloud);
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_STAGES_PIPELINE_H_
