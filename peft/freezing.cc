#include "peft/freezing.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <utility>
#include <vector>

namespace fedpeft {
namespace peft {
namespace {

constexpr int kStateVersion = 1;

// Every out-of-range option. Comparisons are written so that NaN fails them.
std::vector<OptionProblem> OptionProblems(const ApfOptions& o) {
  std::vector<OptionProblem> problems;
  auto check = [&](bool ok, const char* key, std::string message) {
    if (!ok) problems.push_back({key, std::move(message)});
  };
  check(o.threshold > 0 && o.threshold <= 1, "threshold",
        "must be in (0, 1], got " + ToConfigString(o.threshold) +
            " (the effective perturbation it is compared with is in [0, 1])");
  check(o.ema >= 0 && o.ema < 1, "ema",
        "must be in [0, 1), got " + ToConfigString(o.ema));
  check(o.warmup_rounds >= 1, "warmup_rounds",
        "must be >= 1, got " + std::to_string(o.warmup_rounds));
  check(o.period_step >= 1, "period_step",
        "must be >= 1, got " + std::to_string(o.period_step));
  check(o.max_period >= 0, "max_period",
        "must be >= 0 (0 = no cap), got " + std::to_string(o.max_period));
  return problems;
}

// ---------------------------------------------------------------- base64 --
// The EMA tensors are stored as base64 of their float32 bytes: exact, and
// about a third of the size of a JSON list of decimal numbers (the state of a
// 7B model's adapter holds millions of values).

constexpr char kAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string Base64Encode(const std::vector<uint8_t>& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t chunk = uint32_t{bytes[i]} << 16;
    if (n > 1) chunk |= uint32_t{bytes[i + 1]} << 8;
    if (n > 2) chunk |= uint32_t{bytes[i + 2]};
    for (size_t j = 0; j < 4; ++j) {
      out.push_back(j <= n ? kAlphabet[(chunk >> (18 - 6 * j)) & 63] : '=');
    }
  }
  return out;
}

// False on any character outside the alphabet, bad length or bad padding.
bool Base64Decode(const std::string& text, std::vector<uint8_t>* bytes) {
  if (text.size() % 4 != 0) return false;
  bytes->clear();
  bytes->reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t chunk = 0;
    int pad = 0;
    for (size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      uint32_t v = 0;
      if (c == '=') {
        // Padding only in the last two places of the last group.
        if (i + 4 != text.size() || j < 2) return false;
        ++pad;
      } else {
        if (pad) return false;
        const char* p = std::strchr(kAlphabet, c);
        if (c == '\0' || p == nullptr) return false;
        v = static_cast<uint32_t>(p - kAlphabet);
      }
      chunk = (chunk << 6) | v;
    }
    bytes->push_back(static_cast<uint8_t>(chunk >> 16));
    if (pad < 2) bytes->push_back(static_cast<uint8_t>(chunk >> 8));
    if (pad < 1) bytes->push_back(static_cast<uint8_t>(chunk));
  }
  return true;
}

// float32 values <-> little-endian bytes, independent of the host's order.
std::vector<uint8_t> FloatBytes(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kFloat32).contiguous();
  const float* data = c.data_ptr<float>();
  std::vector<uint8_t> bytes(static_cast<size_t>(c.numel()) * 4);
  for (int64_t i = 0; i < c.numel(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &data[i], 4);
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = (bits >> (8 * b)) & 0xff;
  }
  return bytes;
}

torch::Tensor FloatsFromBytes(const std::vector<uint8_t>& bytes,
                              const std::vector<int64_t>& shape) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  float* data = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint32_t bits = 0;
    for (int b = 0; b < 4; ++b) bits |= uint32_t{bytes[4 * i + b]} << (8 * b);
    std::memcpy(&data[i], &bits, 4);
  }
  return t;
}

// ‖t‖₂ accumulated in float64: float32 squares overflow above ~1e19.
double Norm(const torch::Tensor& t) {
  return torch::linalg_vector_norm(t, 2, c10::nullopt, /*keepdim=*/false,
                                   torch::kFloat64)
      .item<double>();
}

bool IsFrozen(int64_t period, int64_t from, int64_t until, int64_t round) {
  return period > 0 && from <= round && round <= until;
}

}  // namespace

void ApfOptions::Read(ConfigReader& in) {
  in.Get("enabled", &enabled);
  in.Get("threshold", &threshold);
  in.Get("ema", &ema);
  in.Get("warmup_rounds", &warmup_rounds);
  in.Get("period_step", &period_step);
  in.Get("max_period", &max_period);
  for (const OptionProblem& p : OptionProblems(*this)) {
    in.Check(false, p.key, p.message);
  }
}

Status ApfOptions::Validate() const {
  std::string message;
  for (const OptionProblem& p : OptionProblems(*this)) {
    message +=
        (message.empty() ? "" : "; ") + ("apf." + p.key) + ": " + p.message;
  }
  return message.empty() ? Status::Ok() : Status::InvalidArgument(message);
}

ApfController::ApfController(ApfOptions options)
    : options_(std::move(options)) {}

std::set<std::string> ApfController::FrozenAt(int64_t round) const {
  std::set<std::string> frozen;
  for (const auto& [key, s] : tensors_) {
    if (IsFrozen(s.period, s.frozen_from, s.frozen_until, round)) {
      frozen.insert(key);
    }
  }
  return frozen;
}

void ApfController::Observe(int64_t round, const TensorMap& applied) {
  torch::NoGradGuard no_grad;
  const double beta = options_.ema;
  for (const auto& [key, update] : applied) {
    if (!update.defined()) continue;
    TensorState& s = tensors_[key];
    if (IsFrozen(s.period, s.frozen_from, s.frozen_until, round)) continue;
    const torch::Tensor u =
        update.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    if (s.ema.defined() && s.ema.sizes() != u.sizes()) {
      // A new shape (e.g. a new rank) makes the old history meaningless.
      s.ema = torch::Tensor();
      s.magnitude = 0;
      s.observations = 0;
    }
    if (!s.ema.defined()) s.ema = torch::zeros_like(u);
    s.ema.mul_(beta).add_(u, 1 - beta);
    s.magnitude = beta * s.magnitude + (1 - beta) * Norm(u);
    ++s.observations;
    Decide(round, s);
  }
}

void ApfController::Decide(int64_t round, TensorState& s) const {
  if (s.observations < options_.warmup_rounds) return;
  const double perturbation =
      s.magnitude > 0 ? std::min(1.0, Norm(s.ema) / s.magnitude) : 0.0;
  if (perturbation < options_.threshold) {
    // Additive increase on a confirmed (or first) stability; a tensor that
    // failed its last check and has calmed down again is frozen for its
    // halved period without growing it.
    if (s.period == 0 || s.pending_check) {
      s.period += options_.period_step;
      if (options_.max_period > 0) {
        s.period = std::min(s.period, options_.max_period);
      }
    }
    s.frozen_from = round + 1;
    s.frozen_until = round + s.period;
    s.pending_check = true;
  } else if (s.pending_check) {
    // Multiplicative decrease: it was frozen too long.
    s.period = std::max<int64_t>(1, s.period / 2);
    s.pending_check = false;
  }
}

double ApfController::FrozenFraction(int64_t round, size_t num_tensors) const {
  if (num_tensors == 0) return 0.0;
  return static_cast<double>(FrozenAt(round).size()) /
         static_cast<double>(num_tensors);
}

nlohmann::json ApfController::State() const {
  nlohmann::json tensors = nlohmann::json::object();
  for (const auto& [key, s] : tensors_) {
    tensors[key] = {
        {"shape", s.ema.sizes().vec()},
        {"ema", Base64Encode(FloatBytes(s.ema))},
        {"magnitude", s.magnitude},
        {"observations", s.observations},
        {"period", s.period},
        {"frozen_from", s.frozen_from},
        {"frozen_until", s.frozen_until},
        {"pending_check", s.pending_check},
    };
  }
  return {{"version", kStateVersion}, {"tensors", std::move(tensors)}};
}

Status ApfController::LoadState(const nlohmann::json& state) {
  const std::string where = "apf state: ";
  if (!state.is_object()) {
    return Status::InvalidArgument(where + "expected a JSON object, got " +
                                   std::string(state.type_name()));
  }
  for (const auto& [field, value] : state.items()) {
    if (field != "version" && field != "tensors") {
      return Status::InvalidArgument(where + "unexpected field '" + field +
                                     "' (expected version, tensors)");
    }
  }
  if (!state.contains("version") || !state["version"].is_number_integer() ||
      state["version"].get<int64_t>() != kStateVersion) {
    return Status::InvalidArgument(
        where + "version: expected " + std::to_string(kStateVersion) +
        ", got " +
        (state.contains("version") ? state["version"].dump() : "none") +
        " (hint: a checkpoint of another fedpeft version?)");
  }
  if (!state.contains("tensors") || !state["tensors"].is_object()) {
    return Status::InvalidArgument(where +
                                   "tensors: expected an object of "
                                   "per-tensor states");
  }

  static const char* const kFields[] = {
      "shape",  "ema",         "magnitude",    "observations",
      "period", "frozen_from", "frozen_until", "pending_check"};
  std::map<std::string, TensorState> loaded;
  for (const auto& [key, j] : state["tensors"].items()) {
    const std::string at = where + "tensors.'" + key + "'";
    auto bad = [&](const std::string& field, const std::string& message) {
      return Status::InvalidArgument(at + (field.empty() ? "" : "." + field) +
                                     ": " + message);
    };
    if (!j.is_object()) return bad("", "expected an object");
    for (const char* field : kFields) {
      if (!j.contains(field)) return bad(field, "missing");
    }
    if (j.size() != std::size(kFields)) {
      for (const auto& item : j.items()) {
        // Not a structured binding: C++17 lambdas cannot capture one.
        const std::string& field = item.key();
        if (std::find_if(std::begin(kFields), std::end(kFields),
                         [&](const char* f) { return field == f; }) ==
            std::end(kFields)) {
          return bad(field, "unexpected field");
        }
      }
    }

    TensorState s;
    std::vector<int64_t> shape;
    if (!j["shape"].is_array()) return bad("shape", "expected a list");
    int64_t numel = 1;
    for (const auto& d : j["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0 ||
          d.get<int64_t>() > (int64_t{1} << 40)) {
        return bad("shape",
                   "expected non-negative sizes, got " + j["shape"].dump());
      }
      shape.push_back(d.get<int64_t>());
      numel *= shape.back();
      if (numel > (int64_t{1} << 40)) {
        return bad("shape", "too many elements: " + j["shape"].dump());
      }
    }
    if (!j["ema"].is_string()) return bad("ema", "expected a base64 string");
    std::vector<uint8_t> bytes;
    if (!Base64Decode(j["ema"].get<std::string>(), &bytes)) {
      return bad("ema", "not valid base64");
    }
    if (bytes.size() != static_cast<size_t>(numel) * 4) {
      return bad("ema", "holds " + std::to_string(bytes.size()) +
                            " bytes, expected " + std::to_string(numel * 4) +
                            " (float32 values of shape " + j["shape"].dump() +
                            ")");
    }
    s.ema = FloatsFromBytes(bytes, shape);
    if (!torch::isfinite(s.ema).all().item<bool>()) {
      return bad("ema", "holds NaN or Inf values");
    }
    if (!j["magnitude"].is_number() ||
        !std::isfinite(j["magnitude"].get<double>()) ||
        j["magnitude"].get<double>() < 0) {
      return bad("magnitude",
                 "expected a finite number >= 0, got " + j["magnitude"].dump());
    }
    s.magnitude = j["magnitude"].get<double>();
    for (const auto& [field, out] :
         {std::pair<const char*, int64_t*>{"observations", &s.observations},
          {"period", &s.period},
          {"frozen_from", &s.frozen_from},
          {"frozen_until", &s.frozen_until}}) {
      if (!j[field].is_number_integer() || j[field].get<int64_t>() < 0) {
        return bad(field, "expected an integer >= 0, got " + j[field].dump());
      }
      *out = j[field].get<int64_t>();
    }
    if (s.frozen_from > s.frozen_until) {
      return bad("frozen_from", "got " + std::to_string(s.frozen_from) +
                                    ", after frozen_until " +
                                    std::to_string(s.frozen_until));
    }
    if (s.period == 0 && (s.frozen_from != 0 || s.frozen_until != 0)) {
      return bad("period",
                 "0 (never frozen) but frozen_from/frozen_until "
                 "are set");
    }
    if (!j["pending_check"].is_boolean()) {
      return bad("pending_check",
                 "expected a boolean, got " + j["pending_check"].dump());
    }
    s.pending_check = j["pending_check"].get<bool>();
    loaded.emplace(key, std::move(s));
  }
  tensors_ = std::move(loaded);
  return Status::Ok();
}

}  // namespace peft
}  // namespace fedpeft
