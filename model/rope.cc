#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "common/json_util.h"
#include "common/logging.h"
#include "common/text.h"

namespace fedpeft {
namespace model {
namespace {

constexpr double kPi = 3.14159265358979323846;

// rope_scaling.<key> as a number; absent/null keeps `*out`, or is an error
// naming the type when `required`.
Status ReadNumber(const nlohmann::json& j, const std::string& key,
                  const std::string& type, bool required,
                  const std::string& source, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (!required) return Status::Ok();
    return Status::InvalidArgument(source + ": key 'rope_scaling." + key +
                                   "' is missing (required for rope_type \"" +
                                   type + "\")");
  }
  if (!it->is_number()) {
    return Status::InvalidArgument(source + ": key 'rope_scaling." + key +
                                   "' is " + JsonBrief(*it) +
                                   ", expected a number");
  }
  *out = it->get<double>();
  return Status::Ok();
}

Status ReadPositions(const nlohmann::json& j, const std::string& type,
                     bool required, const std::string& source, int64_t* out) {
  double v = static_cast<double>(*out);
  RETURN_IF_ERROR(ReadNumber(j, "original_max_position_embeddings", type,
                             required, source, &v));
  if (v != std::floor(v) || v < 0 || v > double{int64_t{1} << 40}) {
    return Status::InvalidArgument(
        source + ": key 'rope_scaling.original_max_position_embeddings' is " +
        FormatG(v) + ", expected a positive integer");
  }
  *out = static_cast<int64_t>(v);
  return Status::Ok();
}

}  // namespace

const char* RopeScaling::SupportedTypes() {
  return "\"linear\", \"dynamic\", \"yarn\", \"llama3\" (or \"default\"/null "
         "for none)";
}

void RopeScaling::Validate(std::vector<std::string>* errors) const {
  if (!enabled()) return;
  auto bad = [errors](const std::string& field, const std::string& what,
                      double got) {
    errors->push_back("rope_scaling." + field + ": must be " + what + ", got " +
                      FormatG(got));
  };
  if (type != "linear" && type != "dynamic" && type != "yarn" &&
      type != "llama3") {
    errors->push_back("rope_scaling.type: must be one of " +
                      std::string(SupportedTypes()) + ", got \"" + type + "\"");
    return;
  }
  if (!(factor > 0) || !std::isfinite(factor)) bad("factor", "> 0", factor);
  if (type == "llama3") {
    if (original_max_position_embeddings < 1) {
      bad("original_max_position_embeddings", ">= 1",
          static_cast<double>(original_max_position_embeddings));
    }
    if (!(low_freq_factor > 0)) {
      bad("low_freq_factor", "> 0", low_freq_factor);
    }
    if (!(high_freq_factor > low_freq_factor)) {
      bad("high_freq_factor",
          "> low_freq_factor (" + FormatG(low_freq_factor) + ")",
          high_freq_factor);
    }
  }
  if (type == "yarn") {
    if (original_max_position_embeddings < 0) {
      bad("original_max_position_embeddings", ">= 1 or absent",
          static_cast<double>(original_max_position_embeddings));
    }
    if (!(beta_fast > 0)) bad("beta_fast", "> 0", beta_fast);
    if (!(beta_slow > 0)) bad("beta_slow", "> 0", beta_slow);
    if (!(attention_factor >= 0)) {
      bad("attention_factor", "> 0 or absent", attention_factor);
    }
    if (!(mscale >= 0)) bad("mscale", ">= 0", mscale);
    if (!(mscale_all_dim >= 0)) bad("mscale_all_dim", ">= 0", mscale_all_dim);
  }
}

StatusOr<RopeScaling> RopeScaling::FromHfJson(const nlohmann::json& j,
                                              const std::string& source) {
  RopeScaling s;
  if (j.is_null()) return s;
  if (!j.is_object()) {
    return Status::InvalidArgument(source + ": key 'rope_scaling' is " +
                                   JsonBrief(j) +
                                   ", expected an object or "
                                   "null");
  }
  // transformers: rope_scaling.get("rope_type", rope_scaling.get("type")).
  const char* type_key = j.contains("rope_type") ? "rope_type" : "type";
  if (!j.contains(type_key) || !j.at(type_key).is_string()) {
    return Status::InvalidArgument(
        source + ": key 'rope_scaling.rope_type' (or 'rope_scaling.type') is " +
        (j.contains(type_key) ? JsonBrief(j.at(type_key)) : "missing") +
        ", expected one of " + SupportedTypes());
  }
  const std::string type = j.at(type_key).get<std::string>();
  if (type == "default") return s;
  if (type != "linear" && type != "dynamic" && type != "yarn" &&
      type != "llama3") {
    return Status::Unimplemented(source + ": key 'rope_scaling." + type_key +
                                 "' is \"" + type + "\", expected one of " +
                                 SupportedTypes());
  }
  s.type = type;
  RETURN_IF_ERROR(ReadNumber(j, "factor", type, true, source, &s.factor));
  if (type == "llama3") {
    RETURN_IF_ERROR(ReadNumber(j, "low_freq_factor", type, true, source,
                               &s.low_freq_factor));
    RETURN_IF_ERROR(ReadNumber(j, "high_freq_factor", type, true, source,
                               &s.high_freq_factor));
    RETURN_IF_ERROR(ReadPositions(j, type, true, source,
                                  &s.original_max_position_embeddings));
  } else if (type == "yarn") {
    RETURN_IF_ERROR(ReadPositions(j, type, false, source,
                                  &s.original_max_position_embeddings));
    if (s.original_max_position_embeddings == 0 &&
        j.contains("original_max_position_embeddings") &&
        !j.at("original_max_position_embeddings").is_null()) {
      return Status::InvalidArgument(
          source +
          ": key 'rope_scaling.original_max_position_embeddings' is 0, "
          "expected a positive integer");
    }
    // transformers: `beta_fast or 32`, `beta_slow or 1`.
    RETURN_IF_ERROR(
        ReadNumber(j, "beta_fast", type, false, source, &s.beta_fast));
    RETURN_IF_ERROR(
        ReadNumber(j, "beta_slow", type, false, source, &s.beta_slow));
    if (s.beta_fast == 0) s.beta_fast = 32.0;
    if (s.beta_slow == 0) s.beta_slow = 1.0;
    RETURN_IF_ERROR(ReadNumber(j, "attention_factor", type, false, source,
                               &s.attention_factor));
    RETURN_IF_ERROR(ReadNumber(j, "mscale", type, false, source, &s.mscale));
    RETURN_IF_ERROR(ReadNumber(j, "mscale_all_dim", type, false, source,
                               &s.mscale_all_dim));
    if (j.contains("truncate") && !j.at("truncate").is_null()) {
      if (!j.at("truncate").is_boolean()) {
        return Status::InvalidArgument(
            source + ": key 'rope_scaling.truncate' is " +
            JsonBrief(j.at("truncate")) + ", expected true or false");
      }
      s.truncate = j.at("truncate").get<bool>();
    }
  }
  static const std::set<std::string> kKnown = {
      "rope_type",        "type",
      "factor",           "low_freq_factor",
      "high_freq_factor", "original_max_position_embeddings",
      "beta_fast",        "beta_slow",
      "attention_factor", "mscale",
      "mscale_all_dim",   "truncate"};
  for (const auto& [key, value] : j.items()) {
    if (kKnown.count(key) == 0) {
      FP_LOG_WARN("model", "{}: ignoring unknown key 'rope_scaling.{}'", source,
                  key);
    }
  }
  std::vector<std::string> errors;
  s.Validate(&errors);
  if (!errors.empty()) {
    std::string msg = source + ": ";
    for (size_t i = 0; i < errors.size(); ++i) {
      msg += (i > 0 ? "; " : "") + errors[i];
    }
    return Status::InvalidArgument(msg);
  }
  return s;
}

nlohmann::json RopeScaling::ToHfJson() const {
  if (!enabled()) return nullptr;
  nlohmann::json j;
  j["rope_type"] = type;
  j["factor"] = factor;
  if (type == "llama3") {
    j["low_freq_factor"] = low_freq_factor;
    j["high_freq_factor"] = high_freq_factor;
    j["original_max_position_embeddings"] = original_max_position_embeddings;
  } else if (type == "yarn") {
    if (original_max_position_embeddings > 0) {
      j["original_max_position_embeddings"] = original_max_position_embeddings;
    }
    j["beta_fast"] = beta_fast;
    j["beta_slow"] = beta_slow;
    if (attention_factor > 0) j["attention_factor"] = attention_factor;
    if (mscale > 0) j["mscale"] = mscale;
    if (mscale_all_dim > 0) j["mscale_all_dim"] = mscale_all_dim;
    if (!truncate) j["truncate"] = false;
  }
  return j;
}

RopeFrequencies ComputeRopeFrequencies(const RopeScaling& s, int64_t head_dim,
                                       double theta,
                                       int64_t max_position_embeddings,
                                       int64_t seq_len) {
  RopeFrequencies out;
  const int64_t half = head_dim / 2;
  const double d = static_cast<double>(head_dim);
  double base = theta;
  if (s.type == "dynamic" && seq_len > max_position_embeddings) {
    const double ratio = static_cast<double>(seq_len) /
                         static_cast<double>(max_position_embeddings);
    base = theta * std::pow(s.factor * ratio - (s.factor - 1.0), d / (d - 2.0));
  }
  out.inv_freq.resize(half);
  for (int64_t i = 0; i < half; ++i) {
    out.inv_freq[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / d);
  }
  if (s.type == "linear") {
    for (double& f : out.inv_freq) f /= s.factor;
  } else if (s.type == "llama3") {
    const double old_len =
        static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor;
    const double high_wavelen = old_len / s.high_freq_factor;
    for (double& f : out.inv_freq) {
      const double wavelen = 2.0 * kPi / f;
      if (wavelen > low_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_len / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
  } else if (s.type == "yarn") {
    double factor = s.factor;
    double original = static_cast<double>(max_position_embeddings);
    if (s.original_max_position_embeddings > 0) {
      original = static_cast<double>(s.original_max_position_embeddings);
      factor = static_cast<double>(max_position_embeddings) / original;
    }
    auto mscale_of = [](double scale, double m) {
      return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
    };
    if (s.attention_factor > 0) {
      out.attention_factor = s.attention_factor;
    } else if (s.mscale > 0 && s.mscale_all_dim > 0) {
      out.attention_factor =
          mscale_of(factor, s.mscale) / mscale_of(factor, s.mscale_all_dim);
    } else {
      out.attention_factor = mscale_of(factor, 1.0);
    }
    // The dimension whose pair turns `rotations` times over `original`.
    auto correction_dim = [&](double rotations) {
      return d * std::log(original / (rotations * 2.0 * kPi)) /
             (2.0 * std::log(theta));
    };
    double low = correction_dim(s.beta_fast);
    double high = correction_dim(s.beta_slow);
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, d - 1.0);
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const double ramp =
          std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double extrapolate = 1.0 - ramp;
      const double f = out.inv_freq[i];
      out.inv_freq[i] = f / factor * (1.0 - extrapolate) + f * extrapolate;
    }
  }
  return out;
}

}  // namespace model
}  // namespace fedpeft
