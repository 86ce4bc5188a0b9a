// A deterministic RandomSource for reproducible secure-aggregation tests
// (never for production: security/secagg_crypto.h's SystemRandom is).
#ifndef FEDPEFT_TESTS_SECURITY_SEEDED_RANDOM_H_
#define FEDPEFT_TESTS_SECURITY_SEEDED_RANDOM_H_

#include <cstddef>
#include <cstdint>
#include <random>

#include "security/secagg_crypto.h"

namespace fedpeft {
namespace secagg {

class SeededRandom : public RandomSource {
 public:
  explicit SeededRandom(uint64_t seed) : rng_(seed) {}
  Status Fill(uint8_t* out, size_t size) override {
    for (size_t i = 0; i < size; ++i) out[i] = static_cast<uint8_t>(rng_());
    return Status::Ok();
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace secagg
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_SECURITY_SEEDED_RANDOM_H_
