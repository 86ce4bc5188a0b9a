// Params and the client side of secure aggregation (the server side is in
// secagg_server.cc).
#include "security/secagg.h"

#include <algorithm>
#include <string>
#include <utility>

namespace fedpeft {
namespace secagg {
namespace {

const std::array<uint8_t, kAeadNonceBytes> kZeroNonce = {};

// Authenticated with every share ciphertext, so a ciphertext cannot be
// replayed into another session or passed off as from another sender.
std::vector<uint8_t> ShareAad(uint64_t session_id, uint32_t sender,
                              uint32_t recipient) {
  static constexpr char kLabel[] = "fedpeft-secagg-v1 shares";
  std::vector<uint8_t> aad(kLabel, kLabel + sizeof(kLabel) - 1);
  for (int i = 0; i < 8; ++i) {
    aad.push_back(static_cast<uint8_t>(session_id >> (8 * i)));
  }
  for (uint32_t v : {sender, recipient}) {
    for (int i = 0; i < 4; ++i)
      aad.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  return aad;
}

std::string Id(uint32_t id) { return std::to_string(id); }

}  // namespace

// ---- Params -----------------------------------------------------------------

uint32_t DefaultThreshold(uint32_t num_clients) {
  return std::max<uint32_t>(2, num_clients - num_clients / 3);
}

uint32_t Params::Threshold() const {
  return threshold != 0 ? threshold : DefaultThreshold(num_clients);
}

Status Params::Validate() const {
  std::vector<std::string> errors;
  if (num_clients < 2 || num_clients >= kMaxClients) {
    errors.push_back("secagg.num_clients: must be in [2, " +
                     std::to_string(kMaxClients) + "), got " +
                     std::to_string(num_clients));
  } else {
    const uint32_t t = Threshold();
    if (t < 2 || 2 * static_cast<uint64_t>(t) <= num_clients ||
        t > num_clients) {
      errors.push_back(
          "secagg.threshold: must be in (n/2, n] and >= 2 with n = " +
          std::to_string(num_clients) + ", got " + std::to_string(t) +
          " (0 picks the default n - floor(n/3) = " +
          std::to_string(DefaultThreshold(num_clients)) + ")");
    }
  }
  if (vector_length < 1 || vector_length > kMaxVectorLength) {
    errors.push_back("secagg.vector_length: must be in [1, " +
                     std::to_string(kMaxVectorLength) + "], got " +
                     std::to_string(vector_length));
  }
  if (errors.empty()) return Status::Ok();
  std::string msg = errors[0];
  for (size_t i = 1; i < errors.size(); ++i) msg += "; " + errors[i];
  return Status::InvalidArgument(msg);
}

// ---- Client -----------------------------------------------------------------

StatusOr<std::unique_ptr<Client>> Client::Create(uint32_t id,
                                                 const Params& params,
                                                 RandomSource* rng) {
  RETURN_IF_ERROR(params.Validate());
  if (id >= params.num_clients) {
    return Status::InvalidArgument("secagg client id " + Id(id) +
                                   " out of range [0, " +
                                   Id(params.num_clients) + ")");
  }
  return std::unique_ptr<Client>(
      new Client(id, params, rng != nullptr ? *rng : SystemRandom()));
}

Client::Client(uint32_t id, const Params& params, RandomSource& rng)
    : id_(id), params_(params), rng_(rng) {}

// Every secret is a SecretBytes and wipes itself.
Client::~Client() = default;

Status Client::CheckPhase(Phase want, const char* step) const {
  if (phase_ == want) return Status::Ok();
  // What the client has done last, by phase.
  static const char* const kDone[] = {"nothing", "Advertise", "ShareKeys",
                                      "MaskedInput", "Unmask"};
  return Status::FailedPrecondition(
      std::string("secagg client ") + Id(id_) + ": " + step +
      " called out of order (last step done: " +
      kDone[static_cast<int>(phase_)] + ", expected " +
      kDone[static_cast<int>(want)] +
      "); each step runs once, in protocol order");
}

StatusOr<AdvertiseMsg> Client::Advertise() {
  RETURN_IF_ERROR(CheckPhase(Phase::kNew, "Advertise"));
  ASSIGN_OR_RETURN(X25519KeyPair enc, GenerateX25519KeyPair(rng_));
  ASSIGN_OR_RETURN(X25519KeyPair mask, GenerateX25519KeyPair(rng_));
  encryption_keys_ = std::move(enc);
  masking_keys_ = std::move(mask);
  AdvertiseMsg msg;
  msg.session_id = params_.session_id;
  msg.sender = id_;
  msg.encryption_key = encryption_keys_.public_key;
  msg.masking_key = masking_keys_.public_key;
  phase_ = Phase::kAdvertised;
  return msg;
}

StatusOr<ShareKeysMsg> Client::ShareKeys(const AdvertiseBroadcast& advertised) {
  RETURN_IF_ERROR(CheckPhase(Phase::kAdvertised, "ShareKeys"));
  const std::string where = "secagg client " + Id(id_) + ", ShareKeys: ";
  const uint32_t t = params_.Threshold();
  if (advertised.session_id != params_.session_id) {
    return Status::InvalidArgument(where + "advertisements of session " +
                                   std::to_string(advertised.session_id) +
                                   ", expected " +
                                   std::to_string(params_.session_id));
  }
  if (advertised.clients.size() < t ||
      advertised.clients.size() > params_.num_clients) {
    return Status::FailedPrecondition(
        where + std::to_string(advertised.clients.size()) +
        " clients advertised keys, need between t = " + std::to_string(t) +
        " and n = " + Id(params_.num_clients));
  }
  std::map<uint32_t, AdvertiseMsg> u1;
  std::set<PublicKey> keys;
  for (const AdvertiseMsg& a : advertised.clients) {
    if (a.sender >= params_.num_clients || a.session_id != params_.session_id) {
      return Status::InvalidArgument(where + "advertisement of client " +
                                     Id(a.sender) +
                                     " has an id >= n or another session");
    }
    if (!u1.emplace(a.sender, a).second) {
      return Status::InvalidArgument(where + "client " + Id(a.sender) +
                                     " advertised twice");
    }
    // Distinct keys (the paper's check): a reused key would let one client
    // pose as another or cancel masks.
    if (!keys.insert(a.encryption_key).second ||
        !keys.insert(a.masking_key).second) {
      return Status::InvalidArgument(where + "client " + Id(a.sender) +
                                     " advertised a public key already seen");
    }
  }
  auto self = u1.find(id_);
  if (self == u1.end() ||
      self->second.encryption_key != encryption_keys_.public_key ||
      self->second.masking_key != masking_keys_.public_key) {
    return Status::InvalidArgument(
        where + "the advertisements do not carry this client's own keys");
  }

  SecretBytes seed(kKeyBytes);
  RETURN_IF_ERROR(rng_.Fill(seed.data(), seed.size()));
  std::vector<uint32_t> xs;
  for (const auto& [v, a] : u1) xs.push_back(v + 1);
  ASSIGN_OR_RETURN(std::vector<ShamirShare> key_shares,
                   ShamirSplit(masking_keys_.private_key, t, xs, rng_));
  ASSIGN_OR_RETURN(std::vector<ShamirShare> seed_shares,
                   ShamirSplit(seed, t, xs, rng_));

  ShareKeysMsg msg;
  msg.session_id = params_.session_id;
  msg.sender = id_;
  std::map<uint32_t, Held> held;
  size_t i = 0;
  for (const auto& [v, a] : u1) {
    ShamirShare& key_share = key_shares[i];
    ShamirShare& seed_share = seed_shares[i];
    ++i;
    if (v == id_) {
      held[v] = Held{std::move(key_share.y), std::move(seed_share.y)};
      continue;
    }
    SecretBytes plain(2 * kShamirElementBytes);
    std::copy(key_share.y.data(), key_share.y.data() + kShamirElementBytes,
              plain.data());
    std::copy(seed_share.y.data(), seed_share.y.data() + kShamirElementBytes,
              plain.data() + kShamirElementBytes);
    ASSIGN_OR_RETURN(
        SecretBytes key,
        DeriveShareKey(encryption_keys_.private_key, a.encryption_key,
                       params_.session_id, id_, v));
    EncryptedShare enc;
    enc.sender = id_;
    enc.recipient = v;
    ASSIGN_OR_RETURN(
        enc.ciphertext,
        AeadSeal(key, kZeroNonce, ShareAad(params_.session_id, id_, v), plain));
    msg.shares.push_back(std::move(enc));
  }
  self_seed_ = std::move(seed);
  u1_ = std::move(u1);
  held_ = std::move(held);
  phase_ = Phase::kSharedKeys;
  return msg;
}

StatusOr<MaskedInputMsg> Client::MaskedInput(const std::vector<uint32_t>& input,
                                             const RoutedShares& routed) {
  RETURN_IF_ERROR(CheckPhase(Phase::kSharedKeys, "MaskedInput"));
  const std::string where = "secagg client " + Id(id_) + ", MaskedInput: ";
  if (input.size() != params_.vector_length) {
    return Status::InvalidArgument(where + "input of " +
                                   std::to_string(input.size()) +
                                   " words, expected vector_length " +
                                   std::to_string(params_.vector_length));
  }
  if (routed.session_id != params_.session_id || routed.recipient != id_) {
    return Status::InvalidArgument(where + "routed shares are for client " +
                                   Id(routed.recipient) + " in session " +
                                   std::to_string(routed.session_id) +
                                   ", expected this client in session " +
                                   std::to_string(params_.session_id));
  }
  std::map<uint32_t, Held> received;
  for (const EncryptedShare& enc : routed.shares) {
    const uint32_t v = enc.sender;
    auto peer = u1_.find(v);
    if (v == id_ || peer == u1_.end()) {
      return Status::InvalidArgument(where + "shares from client " + Id(v) +
                                     ", which is not another client of U1");
    }
    if (received.count(v) != 0) {
      return Status::InvalidArgument(where + "two ciphertexts from client " +
                                     Id(v));
    }
    if (enc.recipient != id_) {
      return Status::InvalidArgument(where + "a ciphertext from client " +
                                     Id(v) + " addressed to client " +
                                     Id(enc.recipient));
    }
    ASSIGN_OR_RETURN(SecretBytes key,
                     DeriveShareKey(encryption_keys_.private_key,
                                    peer->second.encryption_key,
                                    params_.session_id, v, id_));
    StatusOr<SecretBytes> plain = AeadOpen(
        key, kZeroNonce, ShareAad(params_.session_id, v, id_), enc.ciphertext);
    if (!plain.ok()) {
      return plain.status().WithContext(where + "shares from client " + Id(v));
    }
    if (plain->size() != 2 * kShamirElementBytes) {
      return Status::Corruption(where + "shares from client " + Id(v) +
                                " decrypt to " + std::to_string(plain->size()) +
                                " bytes, expected " +
                                std::to_string(2 * kShamirElementBytes));
    }
    received[v] = Held{
        SecretBytes(plain->data(), kShamirElementBytes),
        SecretBytes(plain->data() + kShamirElementBytes, kShamirElementBytes)};
  }
  const uint32_t t = params_.Threshold();
  if (received.size() + 1 < t) {
    return Status::FailedPrecondition(
        where + "only " + std::to_string(received.size() + 1) +
        " clients (with this one) shared keys, need t = " + std::to_string(t));
  }

  MaskedInputMsg msg;
  msg.session_id = params_.session_id;
  msg.sender = id_;
  msg.masked = input;
  RETURN_IF_ERROR(
      PrgAccumulate(self_seed_, +1, msg.masked.data(), msg.masked.size()));
  for (const auto& [v, unused] : received) {
    ASSIGN_OR_RETURN(
        SecretBytes seed,
        DerivePairMaskSeed(masking_keys_.private_key, u1_.at(v).masking_key,
                           params_.session_id, id_, v));
    // +PRG(s_uv) for v < u, -PRG(s_uv) for v > u: cancels in y_u + y_v.
    RETURN_IF_ERROR(PrgAccumulate(seed, v < id_ ? +1 : -1, msg.masked.data(),
                                  msg.masked.size()));
  }
  std::set<uint32_t> u2{id_};
  for (auto& [v, h] : received) {
    u2.insert(v);
    held_[v] = std::move(h);
  }
  u2_ = std::move(u2);
  // Everything needed later is in held_; the keys and b_u go now.
  encryption_keys_.private_key.Clear();
  masking_keys_.private_key.Clear();
  self_seed_.Clear();
  phase_ = Phase::kMasked;
  return msg;
}

StatusOr<UnmaskMsg> Client::Unmask(const UnmaskRequest& request) {
  if (phase_ == Phase::kUnmasked) {
    return Status::FailedPrecondition(
        "secagg client " + Id(id_) +
        ", Unmask: refusing a second unmask request (answering two could "
        "reveal both secrets of one client)");
  }
  RETURN_IF_ERROR(CheckPhase(Phase::kMasked, "Unmask"));
  const std::string where =
      "secagg client " + Id(id_) + ", Unmask: refusing the request: ";
  if (request.session_id != params_.session_id) {
    return Status::InvalidArgument(
        where + "session " + std::to_string(request.session_id) +
        ", expected " + std::to_string(params_.session_id));
  }
  const std::set<uint32_t> survivors(request.survivors.begin(),
                                     request.survivors.end());
  const std::set<uint32_t> dropped(request.dropped.begin(),
                                   request.dropped.end());
  for (uint32_t v : survivors) {
    if (dropped.count(v) != 0) {
      return Status::InvalidArgument(
          where +
          "it asks for both the self-mask seed share and the masking "
          "key share of client " +
          Id(v) + " (that would unmask its input)");
    }
  }
  if (survivors.size() != request.survivors.size() ||
      dropped.size() != request.dropped.size()) {
    return Status::InvalidArgument(where + "a client is named twice");
  }
  if (dropped.count(id_) != 0 || survivors.count(id_) == 0) {
    return Status::InvalidArgument(
        where +
        "it does not name this client, which sent its masked input, "
        "among the survivors");
  }
  for (const std::set<uint32_t>* s : {&survivors, &dropped}) {
    for (uint32_t v : *s) {
      if (u2_.count(v) == 0) {
        return Status::InvalidArgument(where + "client " + Id(v) +
                                       " is not in U2 (it shared no keys "
                                       "with this client)");
      }
    }
  }
  if (survivors.size() + dropped.size() != u2_.size()) {
    return Status::InvalidArgument(
        where + "survivors and dropped cover " +
        std::to_string(survivors.size() + dropped.size()) + " of the " +
        std::to_string(u2_.size()) + " clients of U2");
  }
  const uint32_t t = params_.Threshold();
  if (survivors.size() < t) {
    return Status::InvalidArgument(
        where + "only " + std::to_string(survivors.size()) +
        " survivors, fewer than t = " + std::to_string(t));
  }

  UnmaskMsg msg;
  msg.session_id = params_.session_id;
  msg.sender = id_;
  for (uint32_t v : survivors) {
    msg.shares.push_back(RevealedShare{v, ShareKind::kSelfMaskSeed,
                                       held_.at(v).self_seed_share});
  }
  for (uint32_t v : dropped) {
    msg.shares.push_back(RevealedShare{v, ShareKind::kMaskingKey,
                                       held_.at(v).masking_key_share});
  }
  held_.clear();  // wipes the shares
  phase_ = Phase::kUnmasked;
  return msg;
}

}  // namespace secagg
}  // namespace fedpeft
