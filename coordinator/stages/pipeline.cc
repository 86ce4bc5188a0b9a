#include "coordinator/stages/pipeline.h"

namespace fedpeft {
namespace coordinator {

StatusOr<Pipeline> Pipeline::Build(const CoordinatorConfig& config,
                                   const model::LlamaConfig& model,
                                   std::shared_ptr<const TensorMap> adapter,
                                   Registry* registry, bool cloud) {
  Pipeline p;
  p.validation = std::make_unique<UpdateValidation>();
  ASSIGN_OR_RETURN(p.planner, AdapterPlanner::Create(config, model, adapter,
                                                     registry, !cloud));
  p.privacy = std::make_unique<PrivacyStage>(config, cloud);
  p.secure_sum = std::make_unique<SecureSumStage>(config.secagg, adapter);
  // Outermost first: an update is validated, then privacy checks its clip
  // bound; on the way out the secure sum (innermost) unmasks before privacy
  // accounts for the round and the planner re-assigns ranks.
  p.order = {p.validation.get(), p.planner.get(), p.privacy.get(),
             p.secure_sum.get()};
  for (auto& s : p.more) p.order.push_back(s.get());
  return p;
}

}  // namespace coordinator
}  // namespace fedpeft
