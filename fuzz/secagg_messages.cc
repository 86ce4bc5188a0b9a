// Fuzz target: the messages of secure aggregation (security/secagg_messages.h)
// as the SecAgg RPC's handlers and the worker read them: the same bytes
// through FromBytes of every message type, then, where one parses, the
// promises of a parsed message and a byte-exact round trip.
//
// Input: the message bytes (the SecAgg RPC's `bytes` field).
#include "security/secagg_messages.h"

#include <string>
#include <vector>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"

namespace fedpeft {
namespace fuzz {
namespace {

using namespace secagg;  // NOLINT(build/namespaces): the subject here

// Offset of the type byte: after the magic "FSAG" and the version.
constexpr size_t kTypeOffset = 5;

void CheckId(uint32_t id, const std::string& what) {
  FUZZ_CHECK(id < kMaxClients, what + " is client " + std::to_string(id));
}

void CheckShares(const std::vector<EncryptedShare>& shares, uint32_t owner,
                 uint32_t EncryptedShare::*member, const char* what) {
  CheckId(owner, what);
  FUZZ_CHECK(shares.size() <= kMaxClients,
             std::to_string(shares.size()) + " shares");
  for (const EncryptedShare& s : shares) {
    CheckId(s.sender, "a share's sender");
    CheckId(s.recipient, "a share's recipient");
    FUZZ_CHECK(s.*member == owner, std::string("a share not of the ") + what);
    FUZZ_CHECK(s.ciphertext.size() == kShareCiphertextBytes,
               "a ciphertext of " + std::to_string(s.ciphertext.size()));
  }
}

// The promises of each parsed message beyond its wire format.
void CheckParsed(const AdvertiseMsg& m) { CheckId(m.sender, "sender"); }
void CheckParsed(const AdvertiseBroadcast& m) {
  FUZZ_CHECK(m.clients.size() <= kMaxClients,
             std::to_string(m.clients.size()) + " clients");
  for (const AdvertiseMsg& c : m.clients) {
    CheckId(c.sender, "an advertisement's sender");
    FUZZ_CHECK(c.session_id == m.session_id,
               "an advertisement of another session");
  }
}
void CheckParsed(const ShareKeysMsg& m) {
  CheckShares(m.shares, m.sender, &EncryptedShare::sender, "sender");
}
void CheckParsed(const RoutedShares& m) {
  CheckShares(m.shares, m.recipient, &EncryptedShare::recipient, "recipient");
}
void CheckParsed(const MaskedInputMsg& m) {
  CheckId(m.sender, "sender");
  FUZZ_CHECK(m.masked.size() <= kMaxVectorLength,
             std::to_string(m.masked.size()) + " words");
}
void CheckParsed(const UnmaskRequest& m) {
  FUZZ_CHECK(
      m.survivors.size() <= kMaxClients && m.dropped.size() <= kMaxClients,
      "lists longer than kMaxClients");
  for (uint32_t id : m.survivors) CheckId(id, "a survivor");
  for (uint32_t id : m.dropped) CheckId(id, "a dropped client");
}
void CheckParsed(const UnmaskMsg& m) {
  CheckId(m.sender, "sender");
  FUZZ_CHECK(m.shares.size() <= kMaxClients,
             std::to_string(m.shares.size()) + " shares");
  for (const RevealedShare& s : m.shares) {
    CheckId(s.owner, "a share's owner");
    FUZZ_CHECK(
        s.kind == ShareKind::kSelfMaskSeed || s.kind == ShareKind::kMaskingKey,
        "share kind " + std::to_string(static_cast<int>(s.kind)));
    FUZZ_CHECK(s.y.size() == kShamirElementBytes,
               "a share of " + std::to_string(s.y.size()) + " bytes");
  }
}

// Parses `bytes` as an M; returns whether it parsed. A parsed message
// re-serializes to exactly `bytes` (the format has one encoding per
// message) and carries the type byte of M.
template <typename M>
bool Parses(const std::string& bytes, MessageType type) {
  StatusOr<M> parsed = FromBytes<M>(bytes);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == StatusCode::kCorruption,
               parsed.status().ToString());
    FUZZ_CHECK(!parsed.status().message().empty(), "error without a message");
    return false;
  }
  FUZZ_CHECK(
      bytes.size() > kTypeOffset && static_cast<uint8_t>(bytes[kTypeOffset]) ==
                                        static_cast<uint8_t>(type),
      "parsed as type " + std::to_string(static_cast<int>(type)));
  CheckParsed(*parsed);
  FUZZ_CHECK(ToBytes(*parsed) == bytes, "round trip changed the bytes");
  return true;
}

}  // namespace

int FuzzSecaggMessages(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const int parsed =
      Parses<AdvertiseMsg>(bytes, MessageType::kAdvertise) +
      Parses<AdvertiseBroadcast>(bytes, MessageType::kAdvertiseBroadcast) +
      Parses<ShareKeysMsg>(bytes, MessageType::kShareKeys) +
      Parses<RoutedShares>(bytes, MessageType::kRoutedShares) +
      Parses<MaskedInputMsg>(bytes, MessageType::kMaskedInput) +
      Parses<UnmaskRequest>(bytes, MessageType::kUnmaskRequest) +
      Parses<UnmaskMsg>(bytes, MessageType::kUnmask);
  FUZZ_CHECK(parsed <= 1, "parsed as " + std::to_string(parsed) + " types");
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
