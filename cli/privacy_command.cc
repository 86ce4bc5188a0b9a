// `fedpeft privacy`: the privacy calculator for DP-FedAvg, like the ones
// Opacus and TF Privacy ship. Given the sampling rate, the rounds and delta
// it prints epsilon for a noise multiplier, or the noise multiplier for a
// target epsilon; the last line is machine-readable (key=value).
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "security/rdp_accountant.h"

namespace fedpeft {
namespace cli {
namespace {

namespace po = boost::program_options;

constexpr const char* kSynopsis =
    "--sampling-rate Q --steps N --delta D "
    "(--noise-multiplier Z | --target-epsilon E)";

// Shortest round-trip-safe enough text for a double ("inf" for infinity).
std::string Num(double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", x);
  return buf;
}

// Prints a usage error naming the flag, the value got and the one expected.
int UsageError(const std::string& flag, const std::string& got,
               const std::string& expected) {
  std::cerr << "fedpeft privacy: " << flag << ": got " << got << ", expected "
            << expected << "\nusage: fedpeft privacy " << kSynopsis
            << "   (--help for all options)\n";
  return kExitUsage;
}

// The note TF Privacy's calculator prints when the best order sits at an
// edge of the grid: more orders would give a tighter bound there.
void PrintOrderNote(const std::vector<double>& orders, double order) {
  if (orders.empty()) return;
  if (order == orders.front() || order == orders.back()) {
    std::cout << "note: the best order is at the edge of the grid ["
              << Num(orders.front()) << ", " << Num(orders.back())
              << "]; the bound may be loose\n";
  }
}

}  // namespace

int RunPrivacy(const Args& args) {
  const std::string cmd = "privacy";
  double q = 0, noise_multiplier = 0, target_epsilon = 0, delta = 0;
  int64_t steps = 0;
  po::options_description desc("options");
  desc.add_options()("help,h", "show this help")(
      "sampling-rate", po::value(&q)->required(),
      "probability that a given user takes part in a round, in (0, 1] "
      "(Poisson sampling; 1 = every user every round)")(
      "steps", po::value(&steps)->required(),
      "rounds (applications of the sampled Gaussian mechanism), >= 1")(
      "delta", po::value(&delta)->required(), "target delta, in (0, 1)")(
      "noise-multiplier", po::value(&noise_multiplier),
      "noise stddev over clip norm, >= 0: print epsilon")(
      "target-epsilon", po::value(&target_epsilon),
      "epsilon to meet, > 0: print the smallest noise multiplier meeting it");
  po::variables_map vm;
  int code = kExitOk;
  if (!ParseArgs(cmd, kSynopsis, desc, args, &vm, &code)) return code;

  const bool by_noise = vm.count("noise-multiplier") > 0;
  const bool by_target = vm.count("target-epsilon") > 0;
  if (by_noise == by_target) {
    std::cerr << "fedpeft privacy: give exactly one of --noise-multiplier and "
                 "--target-epsilon\nusage: fedpeft privacy "
              << kSynopsis << "\n";
    return kExitUsage;
  }
  if (!(q > 0 && q <= 1)) {
    return UsageError("--sampling-rate", Num(q), "a value in (0, 1]");
  }
  if (steps < 1) {
    return UsageError("--steps", std::to_string(steps), "an integer >= 1");
  }
  if (!(delta > 0 && delta < 1)) {
    return UsageError("--delta", Num(delta), "a value in (0, 1), e.g. 1e-5");
  }
  if (by_noise && !(noise_multiplier >= 0 && std::isfinite(noise_multiplier))) {
    return UsageError("--noise-multiplier", Num(noise_multiplier),
                      "a finite value >= 0");
  }
  if (by_target && !(target_epsilon > 0 && std::isfinite(target_epsilon))) {
    return UsageError("--target-epsilon", Num(target_epsilon),
                      "a finite value > 0");
  }

  const std::vector<double> orders = privacy::DefaultOrders();
  std::cout << "sampled Gaussian mechanism: sampling rate " << Num(q) << ", "
            << steps << " steps, delta " << Num(delta) << "\n"
            << "accountant: RDP (Mironov, Talwar, Zhang 2019) at "
            << orders.size() << " orders in [" << Num(orders.front()) << ", "
            << Num(orders.back())
            << "], improved conversion (Balle et al. 2020)\n";

  if (by_target) {
    std::cout << "target epsilon " << Num(target_epsilon) << "\n";
    StatusOr<double> z =
        privacy::NoiseMultiplierFor(target_epsilon, q, steps, delta);
    if (!z.ok()) return Fail(cmd, z.status());
    // Report (and account) the multiplier exactly as printed, rounded up so
    // the printed value still meets the target.
    noise_multiplier = std::stod(Num(*z));
    if (noise_multiplier < *z)
      noise_multiplier = std::stod(Num(*z * (1 + 1e-9)));
  } else {
    std::cout << "noise multiplier " << Num(noise_multiplier) << "\n";
  }

  privacy::RdpAccountant accountant(orders);
  accountant.Compose(q, noise_multiplier, steps);
  const privacy::PrivacySpent spent = accountant.Spent(delta);
  if (std::isinf(spent.epsilon)) {
    std::cout << "no finite epsilon: too little noise for any order\n";
  } else {
    std::cout << "best order " << Num(spent.order) << "\n";
    PrintOrderNote(orders, spent.order);
  }
  if (by_target) {
    std::cout << "noise_multiplier=" << Num(noise_multiplier) << " ";
  }
  std::cout << "epsilon=" << Num(spent.epsilon) << " order=" << Num(spent.order)
            << "\n";
  return kExitOk;
}

}  // namespace cli
}  // namespace fedpeft
