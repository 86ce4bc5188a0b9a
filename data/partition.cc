// Shuffling and partitioning of records across federated workers.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <utility>

#include "data/dataset.h"

namespace fedpeft {
namespace data {
namespace {

// Uniform in [0, bound) by rejection, the same on every standard library
// (std::uniform_int_distribution's algorithm is implementation-defined).
// REQUIRES: bound >= 1.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  const uint64_t limit = max - (max % bound + 1) % bound;  // bound * k - 1
  uint64_t draw;
  do {
    draw = rng();
  } while (draw > limit);
  return draw % bound;
}

void FisherYates(std::mt19937_64& rng, std::vector<size_t>* items) {
  for (size_t i = items->size(); i > 1; --i) {
    std::swap((*items)[i - 1], (*items)[UniformBelow(rng, i)]);
  }
}

// Record indices per distinct value of `field`, ordered by value.
StatusOr<std::map<std::string, std::vector<size_t>>> GroupByField(
    const std::vector<Record>& records, const std::string& field,
    const std::string& method) {
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < records.size(); ++i) {
    auto it = records[i].fields.find(field);
    if (it == records[i].fields.end()) {
      std::string present;
      for (const auto& [key, value] : records[i].fields) {
        present += (present.empty() ? "" : ", ") + key;
      }
      return Status::InvalidArgument(
          "partition '" + method + "': record " + std::to_string(i) +
          " has no field '" + field + "' (its fields: [" + present +
          "]); hint: set data.partition_field to a field every record has, "
          "or use partition 'iid'");
    }
    groups[it->second].push_back(i);
  }
  return groups;
}

std::vector<std::vector<size_t>> PartitionIid(size_t num_records, int n,
                                              uint64_t seed) {
  std::vector<std::vector<size_t>> shards(n);
  const std::vector<size_t> order = ShuffledIndices(num_records, seed);
  for (size_t i = 0; i < order.size(); ++i) {
    shards[i % n].push_back(order[i]);
  }
  return shards;
}

// Whole groups, largest first, each to the currently smallest shard (lowest
// index on ties); groups of equal size in an order shuffled by seed.
std::vector<std::vector<size_t>> PartitionByField(
    const std::map<std::string, std::vector<size_t>>& groups, int n,
    uint64_t seed) {
  std::vector<const std::vector<size_t>*> ordered;
  for (const auto& [value, members] : groups) ordered.push_back(&members);
  std::vector<size_t> perm = ShuffledIndices(ordered.size(), seed);
  std::vector<const std::vector<size_t>*> shuffled;
  for (size_t i : perm) shuffled.push_back(ordered[i]);
  std::stable_sort(
      shuffled.begin(), shuffled.end(),
      [](const auto* a, const auto* b) { return a->size() > b->size(); });
  std::vector<std::vector<size_t>> shards(n);
  for (const std::vector<size_t>* members : shuffled) {
    auto smallest = std::min_element(
        shards.begin(), shards.end(),
        [](const auto& a, const auto& b) { return a.size() < b.size(); });
    smallest->insert(smallest->end(), members->begin(), members->end());
  }
  return shards;
}

// Per group, shard proportions p ~ Dirichlet(alpha) (normalized
// Gamma(alpha, 1) draws); the group's shuffled records are cut at the
// rounded cumulative proportions. std::gamma_distribution's algorithm is
// the standard library's, so these shards are reproducible per library
// (libstdc++ here), unlike iid/field which are portable.
std::vector<std::vector<size_t>> PartitionDirichlet(
    const std::map<std::string, std::vector<size_t>>& groups, int n,
    double alpha, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> gamma(alpha, 1.0);
  std::vector<std::vector<size_t>> shards(n);
  std::vector<double> p(n);
  for (const auto& [value, members] : groups) {
    double total = 0;
    for (int k = 0; k < n; ++k) {
      p[k] = gamma(rng);
      total += p[k];
    }
    if (!(total > 0) || !std::isfinite(total)) {
      // Every draw underflowed (tiny alpha): the whole group to one shard.
      std::fill(p.begin(), p.end(), 0.0);
      p[UniformBelow(rng, n)] = 1.0;
      total = 1.0;
    }
    std::vector<size_t> shuffled = members;
    FisherYates(rng, &shuffled);
    const double size = static_cast<double>(shuffled.size());
    double cumulative = 0;
    size_t begin = 0;
    for (int k = 0; k < n; ++k) {
      cumulative += p[k] / total;
      size_t end =
          k + 1 == n
              ? shuffled.size()
              : std::min(shuffled.size(),
                         static_cast<size_t>(std::llround(cumulative * size)));
      end = std::max(end, begin);
      shards[k].insert(shards[k].end(), shuffled.begin() + begin,
                       shuffled.begin() + end);
      begin = end;
    }
  }
  return shards;
}

}  // namespace

std::vector<size_t> ShuffledIndices(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  FisherYates(rng, &order);
  return order;
}

StatusOr<std::vector<std::vector<size_t>>> Partition(
    const std::vector<Record>& records, int n, const std::string& method,
    const std::string& field, double alpha, uint64_t seed) {
  if (n < 1) {
    return Status::InvalidArgument(
        "partition: number of shards must be >= 1, got " + std::to_string(n));
  }
  std::vector<std::vector<size_t>> shards;
  if (method == "iid") {
    shards = PartitionIid(records.size(), n, seed);
  } else if (method == "field" || method == "dirichlet") {
    if (method == "dirichlet" && !(std::isfinite(alpha) && alpha > 0)) {
      return Status::InvalidArgument(
          "partition 'dirichlet': alpha must be > 0, got " +
          std::to_string(alpha));
    }
    ASSIGN_OR_RETURN(auto groups, GroupByField(records, field, method));
    shards = method == "field" ? PartitionByField(groups, n, seed)
                               : PartitionDirichlet(groups, n, alpha, seed);
  } else {
    return Status::InvalidArgument("partition: unknown method '" + method +
                                   "', expected iid, field or dirichlet");
  }
  for (std::vector<size_t>& shard : shards) {
    std::sort(shard.begin(), shard.end());
  }
  return shards;
}

}  // namespace data
}  // namespace fedpeft
