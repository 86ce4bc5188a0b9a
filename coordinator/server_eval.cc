#include "coordinator/server_eval.h"

#include <cmath>

#include "common/logging.h"
#include "model/tokenizer.h"
#include "worker/local_trainer.h"

namespace fedpeft {
namespace coordinator {

StatusOr<std::unique_ptr<ServerEval>> ServerEval::Create(
    const CoordinatorConfig& config,
    std::shared_ptr<const model::LlamaWeights> base,
    const AdapterPlanner& planner) {
  if (config.eval.data.path.empty()) return std::unique_ptr<ServerEval>();
  std::unique_ptr<ServerEval> e(new ServerEval(config, base, planner));
  std::string tok_path = config.model.tokenizer;
  if (tok_path.empty()) {
    ASSIGN_OR_RETURN(tok_path, model::FindTokenizerForModel(
                                   config.model.path, base->config.vocab_size));
  }
  ASSIGN_OR_RETURN(auto tok,
                   model::LoadTokenizer(tok_path, base->config.vocab_size));
  data::DataOptions data_options = config.eval.data;
  RETURN_IF_ERROR(data::ResolveChatTemplate(config.model.path, tok_path, *tok,
                                            &data_options));
  ASSIGN_OR_RETURN(auto records, data::LoadRecords(data_options));
  std::vector<data::Record> train_records, eval_records;
  data::SplitTrainEval(records, data_options.eval_fraction, data_options.seed,
                       &train_records, &eval_records);
  e->examples_ = data::Tokenize(eval_records, *tok, data_options);
  ASSIGN_OR_RETURN(e->model_, peft::PeftModel::Create(base, config.peft,
                                                      config.adapter_seed));
  return e;
}

double ServerEval::Evaluate(const TensorMap& global) {
  if (!model_ || examples_.empty()) return std::nan("");
  Status s = model_->LoadAdapterTensors(global);
  if (!s.ok() && planner_.hetero()) {
    // Ranks changed by module (stack merge): an eval model of those ranks.
    auto m = peft::PeftModel::Create(base_, planner_.OptionsFor(global),
                                     config_.adapter_seed);
    if (m.ok()) {
      model_ = std::move(m).value();
      s = model_->LoadAdapterTensors(global);
    }
  }
  if (!s.ok()) {
    FP_LOG_WARN("coordinator", "server-side eval skipped: {}", s.message());
    return std::nan("");
  }
  worker::EvalResult r =
      worker::Evaluate(model_->model(), examples_, config_.eval.batch_size,
                       torch::Device(torch::kCPU));
  return r.loss;
}

}  // namespace coordinator
}  // namespace fedpeft
