// SHA-256 digests as lowercase hex, the names of content-addressed blocks
// (OpenSSL's EVP interface underneath).
//
// Thread-safety: free functions, no shared state.
#ifndef FEDPEFT_DELIVERY_SHA256_H_
#define FEDPEFT_DELIVERY_SHA256_H_

#include <string>
#include <string_view>

namespace fedpeft {
namespace delivery {

// The SHA-256 of `data`, 64 lowercase hex digits.
std::string Sha256Hex(std::string_view data);

// Whether `s` is 64 lowercase hex digits (a block name as the protocol
// carries it).
bool IsSha256Hex(std::string_view s);

}  // namespace delivery
}  // namespace fedpeft

#endif  // FEDPEFT_DELIVERY_SHA256_H_
