#include "coordinator/edge_plan.h"

#include <nlohmann/json.hpp>

#include "proto/tensor_codec.h"

namespace fedpeft {
namespace coordinator {

std::string EdgePlan::ToJson() const {
  nlohmann::json j = {{"heterogeneity", heterogeneity.ToJson()},
                      {"ffa", ffa},
                      {"adapter_seed", adapter_seed},
                      {"dp", dp},
                      {"dp_report_worker_metrics", dp_report_worker_metrics},
                      {"compression",
                       {{"bits", compression.bits},
                        {"block_size", compression.block_size},
                        {"error_feedback", compression.error_feedback},
                        {"download_bits", compression.download_bits}}},
                      {"secagg", secagg.ToJson()}};
  return j.dump();
}

StatusOr<EdgePlan> EdgePlan::FromJson(const std::string& text) {
  EdgePlan plan;
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    ASSIGN_OR_RETURN(plan.heterogeneity,
                     HeterogeneityOptions::FromJson(j.at("heterogeneity")));
    plan.ffa = j.at("ffa").get<bool>();
    plan.adapter_seed = j.at("adapter_seed").get<uint64_t>();
    plan.dp = j.at("dp").get<bool>();
    plan.dp_report_worker_metrics =
        j.at("dp_report_worker_metrics").get<bool>();
    const nlohmann::json& c = j.at("compression");
    plan.compression.bits = c.at("bits").get<int>();
    plan.compression.block_size = c.at("block_size").get<int64_t>();
    plan.compression.error_feedback = c.at("error_feedback").get<bool>();
    plan.compression.download_bits = c.at("download_bits").get<int>();
    ASSIGN_OR_RETURN(plan.secagg, SecAggOptions::FromJson(j.at("secagg")));
  } catch (const std::exception& e) {
    return Status::InvalidArgument(
        std::string("plan_json from the coordinator: ") + e.what() +
        " (is the coordinator a fedpeft of another version?)");
  }
  for (int bits : {plan.compression.bits, plan.compression.download_bits}) {
    RETURN_IF_ERROR(transport::ValidateCodecOptions(
        {bits, plan.compression.block_size}, "plan_json compression"));
  }
  return plan;
}

}  // namespace coordinator
}  // namespace fedpeft
