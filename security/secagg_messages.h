// The messages of secure aggregation (security/secagg.h), one plain struct per
// message, each with Serialize() to bytes and Parse() from bytes. The
// transport (the SecAgg RPC's `bytes`; a MaskedInputMsg travels as
// UploadUpdate's CODEC_MASKED tensors) only moves these bytes; Client and
// Server check the meaning of a parsed message (ids in range, the session,
// the phase). Flow, for the clients of one edge and the edge as server:
//
//   client -> server   AdvertiseMsg        round 0, two public keys
//   server -> clients  AdvertiseBroadcast  the list U1 of advertisements
//   client -> server   ShareKeysMsg        round 1, one ciphertext per peer
//   server -> client   RoutedShares        the ciphertexts addressed to it
//   client -> server   MaskedInputMsg      round 2, y_u
//   server -> clients  UnmaskRequest       round 3, survivors and dropped
//   client -> server   UnmaskMsg           the shares the request asks for
//
// Wire format, all integers little-endian:
//   "FSAG" | version u8 (= 1) | type u8 | session_id u64 | body
// with the body as documented per struct; a list is a u32 count followed by
// its entries. Parse() trusts nothing: it checks the magic, version, type
// and every count against kMaxClients / kMaxVectorLength and against the
// bytes actually left before it allocates, requires fixed-size fields to
// have their size, and rejects trailing bytes. Its errors (Corruption) name
// the message, the field, what was got and what was expected.
//
// Thread-safety: values.
#ifndef FEDPEFT_SECURITY_SECAGG_MESSAGES_H_
#define FEDPEFT_SECURITY_SECAGG_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "security/secagg_crypto.h"

namespace fedpeft {
namespace secagg {

// Client ids are in [0, kMaxClients); a message's lists hold at most that
// many entries.
inline constexpr uint32_t kMaxClients = 10000;
// The longest vector (in 32-bit words, 1 GiB) a MaskedInputMsg may carry.
inline constexpr uint64_t kMaxVectorLength = uint64_t{1} << 28;
// Bytes of one encrypted share pair: AES-256-GCM of (share of the masking
// key || share of the self-mask seed), each a 66-byte field element, plus
// the 16-byte tag.
inline constexpr size_t kShareCiphertextBytes =
    2 * kShamirElementBytes + kAeadTagBytes;

inline constexpr uint8_t kWireVersion = 1;

enum class MessageType : uint8_t {
  kAdvertise = 1,
  kAdvertiseBroadcast = 2,
  kShareKeys = 3,
  kRoutedShares = 4,
  kMaskedInput = 5,
  kUnmaskRequest = 6,
  kUnmask = 7,
};

// Round 0: a client's two X25519 public keys (c_u^PK for encrypting shares,
// s_u^PK for the pairwise masks).
// Body: sender u32 | encryption_key 32 | masking_key 32.
struct AdvertiseMsg {
  uint64_t session_id = 0;
  uint32_t sender = 0;
  PublicKey encryption_key{};
  PublicKey masking_key{};

  std::vector<uint8_t> Serialize() const;
  static StatusOr<AdvertiseMsg> Parse(const uint8_t* data, size_t size);
};

// The server's broadcast closing round 0: every advertisement it accepted
// (the set U1), sorted by sender.
// Body: list of (sender u32 | encryption_key 32 | masking_key 32).
struct AdvertiseBroadcast {
  uint64_t session_id = 0;
  std::vector<AdvertiseMsg> clients;  // each with this session_id

  std::vector<uint8_t> Serialize() const;
  static StatusOr<AdvertiseBroadcast> Parse(const uint8_t* data, size_t size);
};

// The shares `sender` made for `recipient`, encrypted for the recipient
// (kShareCiphertextBytes bytes; see secagg.h for the key and nonce).
// Entry: sender u32 | recipient u32 | size u32 | ciphertext.
struct EncryptedShare {
  uint32_t sender = 0;
  uint32_t recipient = 0;
  std::vector<uint8_t> ciphertext;
};

// Round 1: a client's encrypted shares, one per other client of U1.
// Body: sender u32 | list of EncryptedShare (each with this sender).
struct ShareKeysMsg {
  uint64_t session_id = 0;
  uint32_t sender = 0;
  std::vector<EncryptedShare> shares;

  std::vector<uint8_t> Serialize() const;
  static StatusOr<ShareKeysMsg> Parse(const uint8_t* data, size_t size);
};

// The server's routing closing round 1, one per client of U2: the
// ciphertexts every other client of U2 addressed to `recipient`. Its senders
// plus the recipient are U2, the set the recipient masks against.
// Body: recipient u32 | list of EncryptedShare (each to this recipient).
struct RoutedShares {
  uint64_t session_id = 0;
  uint32_t recipient = 0;
  std::vector<EncryptedShare> shares;

  std::vector<uint8_t> Serialize() const;
  static StatusOr<RoutedShares> Parse(const uint8_t* data, size_t size);
};

// Round 2: the masked input y_u in Z_2^32.
// Body: sender u32 | length u64 | length x u32.
struct MaskedInputMsg {
  uint64_t session_id = 0;
  uint32_t sender = 0;
  std::vector<uint32_t> masked;

  std::vector<uint8_t> Serialize() const;
  static StatusOr<MaskedInputMsg> Parse(const uint8_t* data, size_t size);
};

// Round 3 request, the same for every client of U3: the survivors U3 (sent a
// masked input) and the dropped clients U2 \ U3 (shared keys, sent no masked
// input). Both sorted, disjoint; together they are U2.
// Body: list of survivor u32 | list of dropped u32.
struct UnmaskRequest {
  uint64_t session_id = 0;
  std::vector<uint32_t> survivors;
  std::vector<uint32_t> dropped;

  std::vector<uint8_t> Serialize() const;
  static StatusOr<UnmaskRequest> Parse(const uint8_t* data, size_t size);
};

enum class ShareKind : uint8_t {
  kSelfMaskSeed = 0,  // a share of b_v (v survived)
  kMaskingKey = 1,    // a share of s_v^SK (v dropped)
};

// One revealed share: the sender's share (x = sender + 1) of `owner`'s
// secret of `kind`.
// Entry: owner u32 | kind u8 | y 66 bytes.
struct RevealedShare {
  uint32_t owner = 0;
  ShareKind kind = ShareKind::kSelfMaskSeed;
  SecretBytes y;  // kShamirElementBytes
};

// Round 3 answer: the shares the UnmaskRequest asked for.
// Body: sender u32 | list of RevealedShare.
struct UnmaskMsg {
  uint64_t session_id = 0;
  uint32_t sender = 0;
  std::vector<RevealedShare> shares;

  std::vector<uint8_t> Serialize() const;
  static StatusOr<UnmaskMsg> Parse(const uint8_t* data, size_t size);
};

// A message as the string a protobuf `bytes` field holds, and back (also
// from the vector Serialize() returns).
template <typename M>
std::string ToBytes(const M& message) {
  const std::vector<uint8_t> bytes = message.Serialize();
  return std::string(bytes.begin(), bytes.end());
}
template <typename M>
StatusOr<M> FromBytes(const std::string& bytes) {
  return M::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}
template <typename M>
StatusOr<M> FromBytes(const std::vector<uint8_t>& bytes) {
  return M::Parse(bytes.data(), bytes.size());
}

}  // namespace secagg
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_SECAGG_MESSAGES_H_
