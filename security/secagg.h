// Secure aggregation: the edge (server) learns the sum of its workers'
// (clients') updates and nothing else about any single one. This is the
// semi-honest protocol of Bonawitz et al., "Practical Secure Aggregation for
// Privacy-Preserving Machine Learning" (CCS 2017), over Z_2^32:
//
//   Round 0 AdvertiseKeys   client u makes two X25519 key pairs, (c_u^SK,
//                           c_u^PK) for encrypting shares and (s_u^SK,
//                           s_u^PK) for masks, and sends the public keys.
//                           The server broadcasts them (the set U1).
//   Round 1 ShareKeys       u draws a self-mask seed b_u and splits b_u and
//                           s_u^SK into t-of-|U1| Shamir shares (x = id + 1),
//                           one pair per v in U1, encrypted (AES-256-GCM)
//                           under a key from X25519(c_u^SK, c_v^PK). The
//                           server routes them; the senders are U2.
//   Round 2 MaskedInput     u sends, over v in U2 \ {u},
//                             y_u = x_u + PRG(b_u) + sum_{v<u} PRG(s_uv)
//                                               - sum_{v>u} PRG(s_uv)
//                           (mod 2^32), s_uv from X25519(s_u^SK, s_v^PK).
//                           The senders are U3.
//   Round 3 Unmasking       the server names the survivors U3 and the
//                           dropped U2 \ U3; each client reveals its shares
//                           of b_v for the survivors and of s_v^SK for the
//                           dropped, never both for one v. From any t
//                           answers the server rebuilds those secrets,
//                           removes PRG(b_u) for u in U3 and the pair masks
//                           each u in U3 shared with a dropped v, and
//                           returns sum_{u in U3} x_u (mod 2^32) exactly.
//
// Key schedule, PRG and wire formats: secagg_crypto.h, secagg_messages.h;
// encoding real-valued updates: secagg_fixed_point.h.
//
// Threat model: a semi-honest (honest-but-curious) server that follows the
// protocol, and clients of which fewer than t collude with it. There are no
// signatures and no consistency-check round (the paper's "active" variant):
// a malicious server could lie about who dropped, route different U1/U2 to
// different clients, or drop honest clients to isolate one input. Clients
// still refuse the requests that would reveal a single input outright (both
// shares for one peer, themselves named as dropped, a second unmask request,
// fewer than t survivors). Authenticity of the transport (TLS) is assumed.
//
// Dropouts: up to n - t clients may vanish anywhere, before or after masking
// (a client of U3 that does not answer round 3 is fine), as long as at least
// t reach every Close/Finish step; otherwise that step fails with
// FailedPrecondition and the round's sum is not recovered — never a wrong
// sum.
//
// Errors never advance a phase: a Client or Server whose call failed is in
// the state it was before, so the caller may retry with a corrected message
// or give up the session. A session is one use: make new Clients and a new
// Server (and a new session_id) per aggregation.
//
// Thread-safety: Client and Server are not thread-safe; one thread (the one
// that owns the round state) calls them.
#ifndef FEDPEFT_SECURITY_SECAGG_H_
#define FEDPEFT_SECURITY_SECAGG_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "common/status.h"
#include "security/secagg_crypto.h"
#include "security/secagg_messages.h"

namespace fedpeft {
namespace secagg {

// The default threshold: n - floor(n/3), at least 2, so up to a third of
// the clients may drop out. Always above n/2.
uint32_t DefaultThreshold(uint32_t num_clients);

struct Params {
  // n: the clients of the session, ids 0 .. n-1. In [2, kMaxClients).
  uint32_t num_clients = 0;
  // t: how many clients must reach each step (and answer round 3) for the
  // sum to be recovered; also how many colluding clients it takes to rebuild
  // a secret. 0 picks DefaultThreshold(num_clients). Otherwise
  // n/2 < t <= n and t >= 2: a majority, so two disjoint groups cannot both
  // reach it (which would let a cheating server unmask one client's input).
  uint32_t threshold = 0;
  // Words per input vector, in [1, kMaxVectorLength].
  uint64_t vector_length = 0;
  // Unique per aggregation (e.g. edge id and round), bound into every key,
  // mask and message, so nothing from one session is accepted in another.
  uint64_t session_id = 0;

  // The threshold in effect (resolving 0).
  uint32_t Threshold() const;
  // Every violated constraint, e.g. "secagg.threshold: must be in (n/2, n]
  // = (5, 10], got 3".
  Status Validate() const;
};

// One client's side of a session. Holds its private keys, self-mask seed
// and the shares others sent it, all wiped (OPENSSL_cleanse) as soon as they
// are no longer needed and on destruction. Non-copyable.
class Client {
 public:
  // REQUIRES: `rng` (default SystemRandom()) outlives the client.
  // Fails (InvalidArgument) on invalid params or id >= num_clients.
  static StatusOr<std::unique_ptr<Client>> Create(uint32_t id,
                                                  const Params& params,
                                                  RandomSource* rng = nullptr);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  uint32_t id() const { return id_; }

  // Round 0: generates both key pairs. Call once.
  StatusOr<AdvertiseMsg> Advertise();

  // Round 1, given U1. Checks the session, that U1 has between t and n
  // distinct clients with ids < n, that it carries this client's own keys
  // unchanged, and that no public key appears twice; then shares b_u and
  // s_u^SK and encrypts one share pair for every other client of U1.
  StatusOr<ShareKeysMsg> ShareKeys(const AdvertiseBroadcast& advertised);

  // Round 2: decrypts the shares routed to this client (every sender must be
  // in U1, at most once, and authenticate), takes U2 = senders + self (at
  // least t), and masks `input` (vector_length words, e.g. from
  // FixedPointEncode). Afterwards the private keys and b_u are wiped.
  StatusOr<MaskedInputMsg> MaskedInput(const std::vector<uint32_t>& input,
                                       const RoutedShares& routed);

  // Round 3: answers one unmask request, once. Refuses (InvalidArgument,
  // nothing revealed) a request that names a client both survivor and
  // dropped, names this client as dropped, names a client outside U2 or
  // twice, does not cover U2, or has fewer than t survivors; refuses
  // (FailedPrecondition) any request after one was answered.
  StatusOr<UnmaskMsg> Unmask(const UnmaskRequest& request);

 private:
  enum class Phase { kNew, kAdvertised, kSharedKeys, kMasked, kUnmasked };
  // The shares this client holds of client v's two secrets.
  struct Held {
    SecretBytes masking_key_share;  // of s_v^SK
    SecretBytes self_seed_share;    // of b_v
  };

  Client(uint32_t id, const Params& params, RandomSource& rng);
  Status CheckPhase(Phase want, const char* step) const;

  const uint32_t id_;
  const Params params_;
  RandomSource& rng_;
  Phase phase_ = Phase::kNew;
  X25519KeyPair encryption_keys_;        // c_u
  X25519KeyPair masking_keys_;           // s_u
  SecretBytes self_seed_;                // b_u
  std::map<uint32_t, AdvertiseMsg> u1_;  // by id, includes self
  std::set<uint32_t> u2_;
  std::map<uint32_t, Held> held_;  // by owner id, includes self
};

// The server's (edge's) side of a session: collects each round's messages,
// closes the round when the caller decides (a deadline, or all n in), and
// finally reconstructs the sum. Holds no client secret except, in Finish,
// the self-mask seeds of U3 and the masking keys of the dropped clients,
// wiped after use. Non-copyable.
//
// Each Receive* checks one message (session, phase, sender's membership in
// the previous set, no duplicate, sizes, and for ShareKeys exactly one
// ciphertext per other client of U1) and keeps it, or rejects it with
// InvalidArgument and changes nothing.
class Server {
 public:
  // Fails (InvalidArgument) on invalid params.
  static StatusOr<std::unique_ptr<Server>> Create(const Params& params);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  Status ReceiveAdvertise(const AdvertiseMsg& msg);
  // Closes round 0: U1 = the advertisers, sorted. FailedPrecondition with
  // fewer than t.
  StatusOr<AdvertiseBroadcast> CloseAdvertise();

  Status ReceiveShareKeys(const ShareKeysMsg& msg);
  // Closes round 1: U2 = the clients that shared keys; one RoutedShares per
  // client of U2 (sorted by recipient), to be delivered to that client.
  // FailedPrecondition with fewer than t.
  StatusOr<std::vector<RoutedShares>> CloseShareKeys();

  Status ReceiveMaskedInput(const MaskedInputMsg& msg);
  // Closes round 2: U3 = the clients that sent a masked input; the request
  // to send to every client of U3. FailedPrecondition with fewer than t.
  StatusOr<UnmaskRequest> CloseMaskedInput();

  Status ReceiveUnmask(const UnmaskMsg& msg);
  // Reconstructs and returns sum_{u in U3} x_u mod 2^32 (vector_length
  // words). FailedPrecondition ("too many dropouts") while fewer than t
  // clients of U3 have answered — call again if more answers arrive;
  // Corruption if the shares are inconsistent (a rebuilt masking key does
  // not match its advertised public key, or the spare share of the t + 1 used
  // disagrees).
  StatusOr<std::vector<uint32_t>> Finish();

  // U3, known after CloseMaskedInput: whose inputs the sum contains.
  const std::vector<uint32_t>& survivors() const { return u3_; }

 private:
  enum class Phase { kAdvertise, kShareKeys, kMaskedInput, kUnmask, kDone };

  explicit Server(const Params& params);
  Status CheckMessage(Phase want, const char* step, uint64_t session_id,
                      uint32_t sender) const;
  Status CheckQuorum(size_t have, const char* what) const;

  const Params params_;
  const uint32_t threshold_;
  Phase phase_ = Phase::kAdvertise;
  std::map<uint32_t, AdvertiseMsg> advertised_;       // U1 once closed
  std::map<uint32_t, ShareKeysMsg> shared_;           // U2 once closed
  std::map<uint32_t, std::vector<uint32_t>> masked_;  // U3 once closed
  std::vector<uint32_t> u3_;
  std::vector<uint32_t> dropped_;           // U2 \ U3
  std::map<uint32_t, UnmaskMsg> unmasked_;  // answers of round 3
};

}  // namespace secagg
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_SECAGG_H_
