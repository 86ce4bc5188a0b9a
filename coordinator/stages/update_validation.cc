#include "coordinator/stages/update_validation.h"

#include <cmath>

#include "aggregation/hetero_rank.h"
#include "aggregation/mean.h"

namespace fedpeft {
namespace coordinator {

Status UpdateValidation::CheckUpdate(const UpdateCheck& u) const {
  const std::string& worker_id = u.worker_id;
  // Names and shapes (the service's decoder checked them already; direct
  // callers did not), then values.
  if (u.expected.specs) {
    for (const auto& [key, t] : u.delta) {
      auto it = u.expected.specs->find(key);
      if (it == u.expected.specs->end() || u.expected.excluded.count(key)) {
        return Status::InvalidArgument("update from '" + worker_id +
                                       "': unexpected tensor '" + key +
                                       "' (unknown, or frozen this round)");
      }
      if (t.sizes().vec() != it->second.shape) {
        return Status::InvalidArgument("update from '" + worker_id +
                                       "': tensor '" + key + "' has shape " +
                                       ShapeString(t.sizes()) + ", expected " +
                                       ShapeString(it->second.shape));
      }
    }
  }
  if (u.header.whole_adapter) {
    RETURN_IF_ERROR(aggregation::LoraPairs(u.delta).status().WithContext(
        "update from '" + worker_id + "'"));
  }
  RETURN_IF_ERROR(
      CheckNumSamples("update from '" + worker_id + "'", u.header.num_samples));
  for (const auto& [key, t] : u.delta) {
    if (t.scalar_type() != torch::kFloat32) {
      return Status::InvalidArgument("update from '" + worker_id +
                                     "': tensor '" + key + "' is not float32");
    }
    if (!torch::isfinite(t).all().item<bool>()) {
      return Status::InvalidArgument("update from '" + worker_id +
                                     "': tensor '" + key +
                                     "' holds NaN or Inf");
    }
  }
  if (!std::isfinite(u.header.train_loss)) {
    return Status::InvalidArgument("update from '" + worker_id +
                                   "': train_loss: expected a finite number");
  }
  return Status::Ok();
}

}  // namespace coordinator
}  // namespace fedpeft
