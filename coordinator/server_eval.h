// Server-side evaluation (`eval.data`): the global adapter's loss on the
// held-out split of the whole data file, after every aggregated round.
//
// Thread-safety: the round loop only.
#ifndef FEDPEFT_COORDINATOR_SERVER_EVAL_H_
#define FEDPEFT_COORDINATOR_SERVER_EVAL_H_

#include <memory>
#include <vector>

#include "coordinator/stages/adapter_planner.h"
#include "data/dataset.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace coordinator {

class ServerEval {
 public:
  // Null when config.eval.data.path is empty. Reads the tokenizer and the
  // data file; `planner` (outliving this) describes variable-rank globals.
  static StatusOr<std::unique_ptr<ServerEval>> Create(
      const CoordinatorConfig& config,
      std::shared_ptr<const model::LlamaWeights> base,
      const AdapterPlanner& planner);
  // The loss of base + `global`; NaN (logged) when it cannot be loaded.
  double Evaluate(const TensorMap& global);

 private:
  ServerEval(const CoordinatorConfig& config,
             std::shared_ptr<const model::LlamaWeights> base,
             const AdapterPlanner& planner)
      : config_(config), base_(std::move(base)), planner_(planner) {}
  const CoordinatorConfig config_;
  const std::shared_ptr<const model::LlamaWeights> base_;
  const AdapterPlanner& planner_;
  std::unique_ptr<peft::PeftModel> model_;
  std::vector<data::Example> examples_;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_SERVER_EVAL_H_
