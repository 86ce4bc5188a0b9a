// Update validation: the checks every accepted update passes, whatever the
// round's privacy or merge: tensors named and shaped as the planner expects
// (and not frozen), a whole adapter only as complete LoRA pairs, a sample
// count, float32 values that are all finite, a finite train loss.
// Messages name the worker, the tensor and what was expected.
//
// Thread-safety: stateless.
#ifndef FEDPEFT_COORDINATOR_STAGES_UPDATE_VALIDATION_H_
#define FEDPEFT_COORDINATOR_STAGES_UPDATE_VALIDATION_H_

#include "coordinator/stages/round_stage.h"

namespace fedpeft {
namespace coordinator {

class UpdateValidation : public RoundStage {
 public:
  const char* name() const override { return "update_validation"; }
  Status CheckUpdate(const UpdateCheck& u) const override;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_STAGES_UPDATE_VALIDATION_H_
