#include "aggregation/hetero_rank.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "aggregation/mean.h"  // DtypeName
#include "common/config.h"     // ToConfigString

namespace fedpeft {
namespace aggregation {
namespace {

constexpr char kASuffix[] = ".lora_A.weight";
constexpr char kBSuffix[] = ".lora_B.weight";

enum class Side { kNone, kA, kB };

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Which factor `key` names; fills *module with the key minus its suffix.
Side SplitKey(const std::string& key, std::string* module) {
  for (const auto& [suffix, side] :
       {std::pair<const char*, Side>{kASuffix, Side::kA},
        std::pair<const char*, Side>{kBSuffix, Side::kB}}) {
    const std::string s(suffix);
    if (EndsWith(key, s)) {
      if (module) *module = key.substr(0, key.size() - s.size());
      return side;
    }
  }
  return Side::kNone;
}

// The rank axis of a factor: rows of A, columns of B.
int64_t RankDim(Side side) { return side == Side::kA ? 0 : 1; }

torch::Tensor F64(const torch::Tensor& t) { return t.to(torch::kFloat64); }

// ------------------------------------------------------------ validation --

std::string OptionProblems(const HeteroOptions& o) {
  std::string problems;
  auto check = [&](bool ok, const std::string& message) {
    if (!ok) problems += (problems.empty() ? "" : "; ") + message;
  };
  check(o.r_max >= 1, "r_max must be >= 1, got " + std::to_string(o.r_max));
  check(o.scaling > 0 && std::isfinite(o.scaling),
        "scaling must be > 0 and finite, got " + ToConfigString(o.scaling));
  check(o.stack_max_rank == 0 || o.stack_max_rank >= o.r_max,
        "stack_max_rank must be 0 (no cap) or >= r_max (" +
            std::to_string(o.r_max) + "), got " +
            std::to_string(o.stack_max_rank));
  check(o.rank_tol >= 0 && o.rank_tol < 1,
        "rank_tol must be in [0, 1), got " + ToConfigString(o.rank_tol));
  return problems;
}

// `init` can re-seed every module of `global` up to index r_max - 1.
Status CheckInit(const HeteroOptions& options, const TensorMap& global,
                 const std::vector<LoraPair>& pairs, const TensorMap& init) {
  const std::string hint =
      " (hint: init is the initial global adapter, PEFT's random A, at rank "
      ">= r_max)";
  for (const LoraPair& p : pairs) {
    auto it = init.find(p.a_key);
    if (it == init.end()) {
      return Status::InvalidArgument("init adapter: missing key '" + p.a_key +
                                     "'" + hint);
    }
    const torch::Tensor& a = it->second;
    const int64_t in = global.at(p.a_key).size(1);
    if (!a.defined() || a.scalar_type() != torch::kFloat32 || a.dim() != 2 ||
        a.size(0) < options.r_max || a.size(1) != in) {
      return Status::InvalidArgument(
          "init adapter: key '" + p.a_key + "': got " + DtypeName(a) + " " +
          (a.defined() ? ShapeString(a.sizes()) : std::string("[]")) +
          ", expected float32 [>= " + std::to_string(options.r_max) + ", " +
          std::to_string(in) + "]" + hint);
    }
  }
  return Status::Ok();
}

Status CheckUpdate(const TensorMap& global, const HeteroUpdate& u) {
  const std::string where = "update from worker '" + u.worker_id + "': ";
  if (u.rank < 1) {
    return Status::InvalidArgument(where + "rank must be >= 1, got " +
                                   std::to_string(u.rank));
  }
  if (u.num_samples <= 0) {
    return Status::InvalidArgument(
        where + "num_samples must be > 0, got " +
        std::to_string(u.num_samples) +
        " (it weights the update; a worker that trained on nothing should "
        "not report)");
  }
  if (u.whole_adapter) {
    auto pairs = LoraPairs(u.delta);
    if (!pairs.ok()) return pairs.status().WithContext(where + "whole adapter");
  }
  for (const auto& [key, d] : u.delta) {
    auto it = global.find(key);
    if (it == global.end()) {
      return Status::InvalidArgument(
          where + "unexpected key '" + key +
          "', not a LoRA key of the global adapter (hint: was the worker "
          "configured with other target modules?)");
    }
    const std::string at_key = where + "key '" + key + "': ";
    if (!d.defined() || d.scalar_type() != torch::kFloat32) {
      return Status::InvalidArgument(at_key + "dtype got " + DtypeName(d) +
                                     ", expected float32");
    }
    const torch::Tensor& g = it->second;
    const Side side = SplitKey(key, nullptr);
    std::vector<int64_t> expected = g.sizes().vec();
    const int64_t dim = RankDim(side);
    expected[dim] = std::min(expected[dim], u.rank);
    if (u.whole_adapter) expected[dim] = d.dim() == 2 ? d.size(dim) : -1;
    if (d.sizes() != at::IntArrayRef(expected)) {
      return Status::InvalidArgument(
          at_key + "shape got " + ShapeString(d.sizes()) + ", expected " +
          ShapeString(expected) +
          " (the global truncated to the worker's rank " +
          std::to_string(u.rank) + "; hint: does the reported rank match?)");
    }
    if (!torch::isfinite(d).all().item<bool>()) {
      const int64_t nan = torch::isnan(d).sum().item<int64_t>();
      const int64_t inf = torch::isinf(d).sum().item<int64_t>();
      return Status::InvalidArgument(
          at_key + "values got " + std::to_string(nan) + " NaN and " +
          std::to_string(inf) + " Inf, expected finite values");
    }
  }
  return Status::Ok();
}

Status CheckInputs(const HeteroOptions& options, const TensorMap& global,
                   const TensorMap& init,
                   const std::vector<HeteroUpdate>& updates,
                   std::vector<LoraPair>* pairs) {
  const std::string problems = OptionProblems(options);
  if (!problems.empty()) {
    return Status::InvalidArgument(std::string("hetero_rank ") +
                                   HeteroMethodName(options.method) +
                                   " options: " + problems);
  }
  if (updates.empty()) {
    return Status::FailedPrecondition(
        "hetero_rank: no worker updates to aggregate");
  }
  for (const auto& [key, g] : global) {
    if (!g.defined() || g.scalar_type() != torch::kFloat32) {
      return Status::InvalidArgument("global adapter: key '" + key +
                                     "': dtype got " + DtypeName(g) +
                                     ", expected float32");
    }
  }
  auto listed = LoraPairs(global);
  if (!listed.ok()) return listed.status().WithContext("global adapter");
  *pairs = std::move(listed).value();
  if (options.method != HeteroMethod::kZeroPad) {
    RETURN_IF_ERROR(CheckInit(options, global, *pairs, init));
  }
  for (const HeteroUpdate& u : updates) {
    if (u.whole_adapter && options.method != HeteroMethod::kStack) {
      return Status::InvalidArgument(
          "update from worker '" + u.worker_id +
          "': a whole adapter is only merged by the stack method");
    }
    RETURN_IF_ERROR(CheckUpdate(global, u));
  }
  return Status::Ok();
}

// ------------------------------------------------------------------ math --

// What one worker contributes to one module, in float64. a_g, b_g: the
// truncated global it started from; da, db: its deltas (undefined when not
// sent, i.e. zero).
struct Contribution {
  double num_samples = 0;
  torch::Tensor a_g, b_g, da, db;
  bool whole = false;  // da/db hold a whole local adapter (stack only)

  torch::Tensor LocalA() const { return da.defined() ? a_g + da : a_g; }
  torch::Tensor LocalB() const { return db.defined() ? b_g + db : b_g; }
};

// The contributions of the workers that touched `pair`.
std::vector<Contribution> Contributions(
    const LoraPair& pair, const torch::Tensor& a_global,
    const torch::Tensor& b_global, const std::vector<HeteroUpdate>& updates) {
  std::vector<Contribution> out;
  for (const HeteroUpdate& u : updates) {
    auto a = u.delta.find(pair.a_key);
    auto b = u.delta.find(pair.b_key);
    if (a == u.delta.end() && b == u.delta.end()) continue;
    const int64_t r = std::min(u.rank, a_global.size(0));
    Contribution c;
    c.num_samples = static_cast<double>(u.num_samples);
    c.a_g = a_global.narrow(0, 0, r);
    c.b_g = b_global.narrow(1, 0, r);
    if (a != u.delta.end()) c.da = F64(a->second);
    if (b != u.delta.end()) c.db = F64(b->second);
    c.whole = u.whole_adapter;
    if (c.whole) {
      c.a_g = a_global;
      c.b_g = b_global;
    }
    out.push_back(std::move(c));
  }
  return out;
}

// raw[k] / Σ raw; falls back to the sample counts when Σ raw is 0.
std::vector<double> Normalise(std::vector<double> raw,
                              const std::vector<Contribution>& cs) {
  double total = 0;
  for (double x : raw) total += x;
  if (!(total > 0)) {
    total = 0;
    for (size_t k = 0; k < cs.size(); ++k) {
      raw[k] = cs[k].num_samples;
      total += raw[k];
    }
  }
  for (double& x : raw) x /= total;
  return raw;
}

std::vector<double> SampleWeights(const std::vector<Contribution>& cs) {
  std::vector<double> raw;
  for (const Contribution& c : cs) raw.push_back(c.num_samples);
  return Normalise(std::move(raw), cs);
}

// ‖B·A‖_F without the out×in product: ‖BA‖² = tr(BᵀB · AAᵀ), and both
// Gram matrices are symmetric, so the trace is the sum of their elementwise
// product (r×r work).
double ProductNorm(const torch::Tensor& b, const torch::Tensor& a) {
  const double sq =
      (b.t().mm(b) * a.mm(a.t())).sum().item<double>();  // may round below 0
  return std::sqrt(std::max(sq, 0.0));
}

// A rank-revealing factorisation W = U·diag(S)·Vᵀ of W = bcat·acat
// (S descending), computed from the factors only (see the header).
struct LowRank {
  torch::Tensor u;  // [out, q]
  torch::Tensor s;  // [q]
  torch::Tensor v;  // [in, q]
};

LowRank FactorizeProduct(const torch::Tensor& bcat, const torch::Tensor& acat) {
  auto [qb, rb] = torch::linalg_qr(bcat, "reduced");
  auto [qa, ra] = torch::linalg_qr(acat.t(), "reduced");
  auto [uc, s, vch] = torch::linalg_svd(rb.mm(ra.t()), /*full_matrices=*/false);
  return {qb.mm(uc), s, qa.mm(vch.t())};
}

struct Factors {
  torch::Tensor a;  // float32 [rank, in]
  torch::Tensor b;  // float32 [out, rank]
  double truncated_energy = 0;
};

// The balanced factors of `w` keeping at most `max_keep` components with
// singular value >= rank_tol · σ_max, returned at rank max(kept, min_rank):
// components from `kept` on are re-seeded (A row from init_a, B column 0).
Factors Balanced(const LowRank& w, int64_t max_keep, int64_t min_rank,
                 const HeteroOptions& options, const torch::Tensor& init_a) {
  const int64_t q = w.s.size(0);
  const double sigma_max = q > 0 ? w.s[0].item<double>() : 0.0;
  int64_t kept = 0;
  if (sigma_max > 0) {
    const double floor = options.rank_tol * sigma_max;
    while (kept < q && kept < max_keep && w.s[kept].item<double>() >= floor &&
           w.s[kept].item<double>() > 0) {
      ++kept;
    }
  }
  const int64_t rank = std::max(kept, min_rank);
  const int64_t out = w.u.size(0);
  const int64_t in = w.v.size(0);

  Factors f;
  const double total = w.s.square().sum().item<double>();
  if (total > 0 && kept < q) {
    const double dropped =
        w.s.narrow(0, kept, q - kept).square().sum().item<double>();
    f.truncated_energy = std::sqrt(dropped / total);
  }

  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor a = torch::zeros({rank, in}, opts);
  torch::Tensor b = torch::zeros({out, rank}, opts);
  if (kept > 0) {
    const torch::Tensor root = w.s.narrow(0, 0, kept).sqrt();
    a.narrow(0, 0, kept).copy_(root.unsqueeze(1) * w.v.narrow(1, 0, kept).t());
    b.narrow(1, 0, kept)
        .copy_(w.u.narrow(1, 0, kept) * root.unsqueeze(0) / options.scaling);
  }
  if (rank > kept) {
    // B's columns stay zero, so these rows do not change the product.
    a.narrow(0, kept, rank - kept).copy_(init_a.narrow(0, kept, rank - kept));
  }
  f.a = a.to(torch::kFloat32).contiguous();
  f.b = b.to(torch::kFloat32).contiguous();
  return f;
}

// HetLoRA: A and B averaged separately with norm-weighted, zero-padded deltas.
Factors ZeroPadModule(const HeteroOptions& options, const torch::Tensor& a_g,
                      const torch::Tensor& b_g,
                      const std::vector<Contribution>& cs) {
  std::vector<double> raw;
  for (const Contribution& c : cs) {
    raw.push_back(c.num_samples * options.scaling *
                  ProductNorm(c.LocalB(), c.LocalA()));
  }
  const std::vector<double> w = Normalise(std::move(raw), cs);
  torch::Tensor a = a_g.clone();
  torch::Tensor b = b_g.clone();
  for (size_t k = 0; k < cs.size(); ++k) {
    // Adding into the leading rows/columns is adding the zero-padded delta.
    if (cs[k].da.defined()) {
      a.narrow(0, 0, cs[k].da.size(0)).add_(cs[k].da, w[k]);
    }
    if (cs[k].db.defined()) {
      b.narrow(1, 0, cs[k].db.size(1)).add_(cs[k].db, w[k]);
    }
  }
  return {a.to(torch::kFloat32).contiguous(),
          b.to(torch::kFloat32).contiguous(), 0.0};
}

// FlexLoRA: the weighted mean of the local products, truncated to r_max.
Factors SvdModule(const HeteroOptions& options,
                  const std::vector<Contribution>& cs,
                  const torch::Tensor& init_a) {
  const std::vector<double> w = SampleWeights(cs);
  std::vector<torch::Tensor> bs, as;
  for (size_t k = 0; k < cs.size(); ++k) {
    bs.push_back(cs[k].LocalB() * (w[k] * options.scaling));
    as.push_back(cs[k].LocalA());
  }
  const LowRank lr = FactorizeProduct(torch::cat(bs, 1), torch::cat(as, 0));
  return Balanced(lr, options.r_max, options.r_max, options, init_a);
}

// FLoRA made exact for deltas: old product plus the weighted mean change of
// the products, compressed without loss up to the cap.
Factors StackModule(const HeteroOptions& options, const torch::Tensor& a_g,
                    const torch::Tensor& b_g,
                    const std::vector<Contribution>& cs,
                    const torch::Tensor& init_a) {
  const std::vector<double> w = SampleWeights(cs);
  const double s = options.scaling;
  std::vector<torch::Tensor> bs{b_g * s};
  std::vector<torch::Tensor> as{a_g};
  for (size_t k = 0; k < cs.size(); ++k) {
    // B_k·A_k − B_gk·A_gk = B_gk·δA + δB·A_k (A_k = A_gk + δA): the same
    // product as stacking [B_k | −B_gk] against [A_k; A_gk], with the shared
    // large part cancelled exactly instead of in floating point.
    const Contribution& c = cs[k];
    if (c.whole) {  // B_k·A_k − B_G·A_G, stacked as is
      bs.push_back(c.db * (w[k] * s));
      as.push_back(c.da);
      bs.push_back(c.b_g * (-w[k] * s));
      as.push_back(c.a_g);
      continue;
    }
    if (c.da.defined()) {
      bs.push_back(c.b_g * (w[k] * s));
      as.push_back(c.da);
    }
    if (c.db.defined()) {
      bs.push_back(c.db * (w[k] * s));
      as.push_back(c.LocalA());
    }
  }
  const int64_t out = b_g.size(0);
  const int64_t in = a_g.size(1);
  const int64_t full = std::min(out, in);
  const int64_t cap = options.stack_max_rank > 0
                          ? std::min(options.stack_max_rank, full)
                          : full;
  const LowRank lr = FactorizeProduct(torch::cat(bs, 1), torch::cat(as, 0));
  return Balanced(lr, cap, options.r_max, options, init_a);
}

}  // namespace

StatusOr<std::vector<LoraPair>> LoraPairs(const TensorMap& adapter) {
  std::map<std::string, LoraPair> by_module;
  for (const auto& [key, t] : adapter) {
    std::string module;
    const Side side = SplitKey(key, &module);
    if (side == Side::kNone) {
      return Status::InvalidArgument(
          "key '" + key + "' is not a LoRA weight (expected '<module>" +
          kASuffix + "' or '<module>" + kBSuffix + "')");
    }
    if (!t.defined() || t.dim() != 2) {
      return Status::InvalidArgument(
          "key '" + key + "': expected a 2-D tensor, got " +
          (t.defined()
               ? std::to_string(t.dim()) + "-D " + ShapeString(t.sizes())
               : std::string("undefined")));
    }
    LoraPair& p = by_module[module];
    p.module = module;
    (side == Side::kA ? p.a_key : p.b_key) = key;
  }
  std::vector<LoraPair> pairs;
  for (auto& [module, p] : by_module) {
    if (p.a_key.empty() || p.b_key.empty()) {
      const std::string& have = p.a_key.empty() ? p.b_key : p.a_key;
      return Status::InvalidArgument(
          "key '" + have + "' has no partner '" + module +
          (p.a_key.empty() ? kASuffix : kBSuffix) + "' (incomplete LoRA pair)");
    }
    const torch::Tensor& a = adapter.at(p.a_key);
    const torch::Tensor& b = adapter.at(p.b_key);
    if (a.size(0) != b.size(1)) {
      return Status::InvalidArgument(
          "module '" + module + "': rank of A " + ShapeString(a.sizes()) +
          " is " + std::to_string(a.size(0)) + " but B " +
          ShapeString(b.sizes()) + " has " + std::to_string(b.size(1)) +
          " columns (expected A [r, in], B [out, r])");
    }
    pairs.push_back(std::move(p));
  }
  return pairs;
}

std::map<std::string, int64_t> ModuleRanks(const TensorMap& adapter) {
  std::map<std::string, int64_t> ranks;
  for (const auto& [key, t] : adapter) {
    std::string module;
    const Side side = SplitKey(key, &module);
    if (side == Side::kNone || !t.defined() || t.dim() != 2) continue;
    // A decides when both are present (B only fills in for partial maps).
    if (side == Side::kA) {
      ranks[module] = t.size(0);
    } else {
      ranks.emplace(module, t.size(1));
    }
  }
  return ranks;
}

TensorMap TruncateRank(const TensorMap& adapter, int64_t rank) {
  TensorMap out;
  for (const auto& [key, t] : adapter) {
    const Side side = SplitKey(key, nullptr);
    if (side == Side::kNone || !t.defined() || t.dim() != 2 ||
        t.size(RankDim(side)) <= rank) {
      out.emplace(key, t.clone());
      continue;
    }
    out.emplace(
        key,
        t.narrow(RankDim(side), 0, rank).clone(at::MemoryFormat::Contiguous));
  }
  return out;
}

TensorMap ZeroPadRank(const TensorMap& adapter, int64_t rank) {
  TensorMap out;
  for (const auto& [key, t] : adapter) {
    const Side side = SplitKey(key, nullptr);
    const int64_t dim = RankDim(side);
    if (side == Side::kNone || !t.defined() || t.dim() != 2 ||
        t.size(dim) >= rank) {
      out.emplace(key, t.clone());
      continue;
    }
    std::vector<int64_t> shape = t.sizes().vec();
    shape[dim] = rank;
    torch::Tensor padded = torch::zeros(shape, t.options());
    padded.narrow(dim, 0, t.size(dim)).copy_(t);
    out.emplace(key, std::move(padded));
  }
  return out;
}

StatusOr<HeteroMethod> ParseHeteroMethod(const std::string& name) {
  for (HeteroMethod m :
       {HeteroMethod::kZeroPad, HeteroMethod::kSvd, HeteroMethod::kStack}) {
    if (name == HeteroMethodName(m)) return m;
  }
  return Status::InvalidArgument(
      "heterogeneous-rank method: expected one of zero_pad, svd, stack, got '" +
      name + "'");
}

const char* HeteroMethodName(HeteroMethod method) {
  switch (method) {
    case HeteroMethod::kZeroPad:
      return "zero_pad";
    case HeteroMethod::kSvd:
      return "svd";
    case HeteroMethod::kStack:
      return "stack";
  }
  return "unknown";
}

StatusOr<TensorMap> HeteroAggregate(const HeteroOptions& options,
                                    const TensorMap& global,
                                    const TensorMap& init,
                                    const std::vector<HeteroUpdate>& updates,
                                    HeteroStats* stats) {
  std::vector<LoraPair> pairs;
  try {
    RETURN_IF_ERROR(CheckInputs(options, global, init, updates, &pairs));
  } catch (const std::exception& e) {
    return Status::Internal(std::string("hetero_rank: checking inputs: ") +
                            e.what());
  }
  const char* method = HeteroMethodName(options.method);
  HeteroStats result_stats;
  TensorMap out;
  for (const LoraPair& p : pairs) {
    try {
      const torch::Tensor a_g = F64(global.at(p.a_key));
      const torch::Tensor b_g = F64(global.at(p.b_key));
      const std::vector<Contribution> cs = Contributions(p, a_g, b_g, updates);
      Factors f;
      if (cs.empty()) {
        f = {global.at(p.a_key).clone(), global.at(p.b_key).clone(), 0.0};
      } else {
        torch::Tensor init_a;
        if (options.method != HeteroMethod::kZeroPad) {
          init_a = F64(init.at(p.a_key));
        }
        switch (options.method) {
          case HeteroMethod::kZeroPad:
            f = ZeroPadModule(options, a_g, b_g, cs);
            break;
          case HeteroMethod::kSvd:
            f = SvdModule(options, cs, init_a);
            break;
          case HeteroMethod::kStack:
            f = StackModule(options, a_g, b_g, cs, init_a);
            break;
        }
      }
      result_stats.max_rank = std::max(result_stats.max_rank, f.a.size(0));
      result_stats.truncated_energy =
          std::max(result_stats.truncated_energy, f.truncated_energy);
      out.emplace(p.a_key, std::move(f.a));
      out.emplace(p.b_key, std::move(f.b));
    } catch (const std::exception& e) {
      return Status::Internal(std::string("hetero_rank ") + method +
                              ": module '" + p.module + "': " + e.what());
    }
  }
  if (stats) *stats = result_stats;
  return out;
}

}  // namespace aggregation
}  // namespace fedpeft
