#include "security/secagg_messages.h"

#include <algorithm>
#include <string>
#include <utility>

namespace fedpeft {
namespace secagg {
namespace {

constexpr uint8_t kMagic[4] = {'F', 'S', 'A', 'G'};
constexpr size_t kHeaderBytes = 4 + 1 + 1 + 8;
// Wire sizes of the fixed-size list entries.
constexpr size_t kAdvertiseEntryBytes = 4 + 2 * kKeyBytes;
constexpr size_t kEncryptedShareBytes = 4 + 4 + 4 + kShareCiphertextBytes;
constexpr size_t kRevealedShareBytes = 4 + 1 + kShamirElementBytes;

const char* TypeName(MessageType type) {
  switch (type) {
    case MessageType::kAdvertise:
      return "Advertise";
    case MessageType::kAdvertiseBroadcast:
      return "AdvertiseBroadcast";
    case MessageType::kShareKeys:
      return "ShareKeys";
    case MessageType::kRoutedShares:
      return "RoutedShares";
    case MessageType::kMaskedInput:
      return "MaskedInput";
    case MessageType::kUnmaskRequest:
      return "UnmaskRequest";
    case MessageType::kUnmask:
      return "Unmask";
  }
  return "unknown";
}

std::string Indexed(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

class Writer {
 public:
  Writer(MessageType type, uint64_t session_id) {
    out_.insert(out_.end(), kMagic, kMagic + 4);
    U8(kWireVersion);
    U8(static_cast<uint8_t>(type));
    U64(session_id);
  }
  void U8(uint8_t v) { out_.push_back(v); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i)
      out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i)
      out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void Bytes(const uint8_t* data, size_t size) {
    out_.insert(out_.end(), data, data + size);
  }
  void AdvertiseEntry(const AdvertiseMsg& a) {
    U32(a.sender);
    Bytes(a.encryption_key.data(), a.encryption_key.size());
    Bytes(a.masking_key.data(), a.masking_key.size());
  }
  // An owner id, then its list of shares (ShareKeys: the sender's;
  // RoutedShares: the recipient's).
  void ShareList(uint32_t owner, const std::vector<EncryptedShare>& shares) {
    U32(owner);
    U32(static_cast<uint32_t>(shares.size()));
    for (const EncryptedShare& s : shares) {
      U32(s.sender);
      U32(s.recipient);
      U32(static_cast<uint32_t>(s.ciphertext.size()));
      Bytes(s.ciphertext.data(), s.ciphertext.size());
    }
  }
  std::vector<uint8_t> Take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

// Reads fields in order with bounds checks; every error names the message
// and the field.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, MessageType type)
      : data_(data), size_(size), type_(type) {}

  // Magic, version and type; the session id into *session_id.
  Status Header(uint64_t* session_id) {
    if (data_ == nullptr && size_ > 0) return Error("data", "null pointer");
    if (size_ < kHeaderBytes) {
      return Error("header", "truncated: " + std::to_string(size_) +
                                 " bytes, a header alone is " +
                                 std::to_string(kHeaderBytes));
    }
    for (int i = 0; i < 4; ++i) {
      if (data_[i] != kMagic[i]) {
        return Error("magic", "not a secagg message (expected \"FSAG\")");
      }
    }
    pos_ = 4;
    uint8_t version = 0, type = 0;
    RETURN_IF_ERROR(U8("version", &version));
    if (version != kWireVersion) {
      return Error("version", "got " + std::to_string(version) +
                                  ", this build reads " +
                                  std::to_string(kWireVersion));
    }
    RETURN_IF_ERROR(U8("type", &type));
    if (type != static_cast<uint8_t>(type_)) {
      return Error("type", "got message type " + std::to_string(type) +
                               ", expected " +
                               std::to_string(static_cast<int>(type_)) + " (" +
                               TypeName(type_) + ")");
    }
    return U64("session_id", session_id);
  }

  Status U8(const std::string& field, uint8_t* v) {
    RETURN_IF_ERROR(Need(field, 1));
    *v = data_[pos_++];
    return Status::Ok();
  }
  Status U32(const std::string& field, uint32_t* v) {
    RETURN_IF_ERROR(Need(field, 4));
    *v = 0;
    for (int i = 0; i < 4; ++i)
      *v |= static_cast<uint32_t>(data_[pos_++]) << (8 * i);
    return Status::Ok();
  }
  Status U64(const std::string& field, uint64_t* v) {
    RETURN_IF_ERROR(Need(field, 8));
    *v = 0;
    for (int i = 0; i < 8; ++i)
      *v |= static_cast<uint64_t>(data_[pos_++]) << (8 * i);
    return Status::Ok();
  }
  Status Bytes(const std::string& field, uint8_t* out, size_t size) {
    RETURN_IF_ERROR(Need(field, size));
    std::copy(data_ + pos_, data_ + pos_ + size, out);
    pos_ += size;
    return Status::Ok();
  }
  // A client id: < kMaxClients.
  Status Id(const std::string& field, uint32_t* v) {
    RETURN_IF_ERROR(U32(field, v));
    if (*v >= kMaxClients) {
      return Error(field, "client id " + std::to_string(*v) +
                              " out of range [0, " +
                              std::to_string(kMaxClients) + ")");
    }
    return Status::Ok();
  }
  // A list count: <= kMaxClients and the entries (entry_bytes each, at least)
  // must fit in what is left, checked before anything is allocated.
  Status Count(const std::string& field, size_t entry_bytes, uint32_t* n) {
    RETURN_IF_ERROR(U32(field, n));
    if (*n > kMaxClients) {
      return Error(field, "count " + std::to_string(*n) + " exceeds " +
                              std::to_string(kMaxClients));
    }
    if (static_cast<uint64_t>(*n) * entry_bytes > size_ - pos_) {
      return Error(field, "count " + std::to_string(*n) + " needs " +
                              std::to_string(*n * entry_bytes) +
                              " bytes, only " + std::to_string(size_ - pos_) +
                              " left (truncated)");
    }
    return Status::Ok();
  }
  // Fields `prefix`.sender, .encryption_key, .masking_key.
  Status AdvertiseEntry(const std::string& prefix, AdvertiseMsg* a) {
    RETURN_IF_ERROR(Id(prefix + "sender", &a->sender));
    RETURN_IF_ERROR(
        Bytes(prefix + "encryption_key", a->encryption_key.data(), kKeyBytes));
    return Bytes(prefix + "masking_key", a->masking_key.data(), kKeyBytes);
  }
  // The inverse of Writer::ShareList: the owner id (field `owner_field`),
  // then the shares, each of whose `member` (sender or recipient) must be
  // that owner.
  Status ShareList(const char* owner_field, uint32_t EncryptedShare::*member,
                   uint32_t* owner, std::vector<EncryptedShare>* shares) {
    RETURN_IF_ERROR(Id(owner_field, owner));
    uint32_t n = 0;
    RETURN_IF_ERROR(Count("shares", kEncryptedShareBytes, &n));
    shares->resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      const std::string f = Indexed("shares", i);
      EncryptedShare& s = (*shares)[i];
      RETURN_IF_ERROR(EncryptedShareEntry(f, &s));
      if (s.*member != *owner) {
        return Error(f + "." + owner_field, "got " + std::to_string(s.*member) +
                                                ", expected the message's " +
                                                owner_field + " " +
                                                std::to_string(*owner));
      }
    }
    return Status::Ok();
  }
  Status EncryptedShareEntry(const std::string& field, EncryptedShare* s) {
    RETURN_IF_ERROR(Id(field + ".sender", &s->sender));
    RETURN_IF_ERROR(Id(field + ".recipient", &s->recipient));
    uint32_t len = 0;
    RETURN_IF_ERROR(U32(field + ".size", &len));
    if (len != kShareCiphertextBytes) {
      return Error(field + ".size", "got " + std::to_string(len) +
                                        ", expected " +
                                        std::to_string(kShareCiphertextBytes));
    }
    s->ciphertext.resize(len);
    return Bytes(field + ".ciphertext", s->ciphertext.data(), len);
  }
  Status Done() {
    if (pos_ != size_) {
      return Error("end", std::to_string(size_ - pos_) +
                              " trailing bytes after the message");
    }
    return Status::Ok();
  }
  Status Error(const std::string& field, const std::string& what) const {
    return Status::Corruption(std::string("secagg ") + TypeName(type_) +
                              " message, field " + field + " (offset " +
                              std::to_string(pos_) + "): " + what);
  }

 private:
  Status Need(const std::string& field, size_t n) {
    if (size_ - pos_ < n) {
      return Error(field, "truncated: need " + std::to_string(n) + " bytes, " +
                              std::to_string(size_ - pos_) + " left");
    }
    return Status::Ok();
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  MessageType type_;
};

}  // namespace

// ---- AdvertiseMsg -----------------------------------------------------------

std::vector<uint8_t> AdvertiseMsg::Serialize() const {
  Writer w(MessageType::kAdvertise, session_id);
  w.AdvertiseEntry(*this);
  return w.Take();
}

StatusOr<AdvertiseMsg> AdvertiseMsg::Parse(const uint8_t* data, size_t size) {
  Reader r(data, size, MessageType::kAdvertise);
  AdvertiseMsg m;
  RETURN_IF_ERROR(r.Header(&m.session_id));
  RETURN_IF_ERROR(r.AdvertiseEntry("", &m));
  RETURN_IF_ERROR(r.Done());
  return m;
}

// ---- AdvertiseBroadcast -----------------------------------------------------

std::vector<uint8_t> AdvertiseBroadcast::Serialize() const {
  Writer w(MessageType::kAdvertiseBroadcast, session_id);
  w.U32(static_cast<uint32_t>(clients.size()));
  for (const AdvertiseMsg& c : clients) w.AdvertiseEntry(c);
  return w.Take();
}

StatusOr<AdvertiseBroadcast> AdvertiseBroadcast::Parse(const uint8_t* data,
                                                       size_t size) {
  Reader r(data, size, MessageType::kAdvertiseBroadcast);
  AdvertiseBroadcast m;
  RETURN_IF_ERROR(r.Header(&m.session_id));
  uint32_t n = 0;
  RETURN_IF_ERROR(r.Count("clients", kAdvertiseEntryBytes, &n));
  m.clients.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    m.clients[i].session_id = m.session_id;
    RETURN_IF_ERROR(
        r.AdvertiseEntry(Indexed("clients", i) + ".", &m.clients[i]));
  }
  RETURN_IF_ERROR(r.Done());
  return m;
}

// ---- ShareKeysMsg -----------------------------------------------------------

std::vector<uint8_t> ShareKeysMsg::Serialize() const {
  Writer w(MessageType::kShareKeys, session_id);
  w.ShareList(sender, shares);
  return w.Take();
}

StatusOr<ShareKeysMsg> ShareKeysMsg::Parse(const uint8_t* data, size_t size) {
  Reader r(data, size, MessageType::kShareKeys);
  ShareKeysMsg m;
  RETURN_IF_ERROR(r.Header(&m.session_id));
  RETURN_IF_ERROR(
      r.ShareList("sender", &EncryptedShare::sender, &m.sender, &m.shares));
  RETURN_IF_ERROR(r.Done());
  return m;
}

// ---- RoutedShares -----------------------------------------------------------

std::vector<uint8_t> RoutedShares::Serialize() const {
  Writer w(MessageType::kRoutedShares, session_id);
  w.ShareList(recipient, shares);
  return w.Take();
}

StatusOr<RoutedShares> RoutedShares::Parse(const uint8_t* data, size_t size) {
  Reader r(data, size, MessageType::kRoutedShares);
  RoutedShares m;
  RETURN_IF_ERROR(r.Header(&m.session_id));
  RETURN_IF_ERROR(r.ShareList("recipient", &EncryptedShare::recipient,
                              &m.recipient, &m.shares));
  RETURN_IF_ERROR(r.Done());
  return m;
}

// ---- MaskedInputMsg ---------------------------------------------------------

std::vector<uint8_t> MaskedInputMsg::Serialize() const {
  Writer w(MessageType::kMaskedInput, session_id);
  w.U32(sender);
  w.U64(masked.size());
  for (uint32_t v : masked) w.U32(v);
  return w.Take();
}

StatusOr<MaskedInputMsg> MaskedInputMsg::Parse(const uint8_t* data,
                                               size_t size) {
  Reader r(data, size, MessageType::kMaskedInput);
  MaskedInputMsg m;
  RETURN_IF_ERROR(r.Header(&m.session_id));
  RETURN_IF_ERROR(r.Id("sender", &m.sender));
  uint64_t n = 0;
  RETURN_IF_ERROR(r.U64("length", &n));
  if (n > kMaxVectorLength) {
    return r.Error("length", "got " + std::to_string(n) + " words, at most " +
                                 std::to_string(kMaxVectorLength));
  }
  // Exactly n words must follow: checked before allocating.
  const size_t left = size - kHeaderBytes - 4 - 8;
  if (left != n * 4) {
    return r.Error("masked", "length says " + std::to_string(n) + " words (" +
                                 std::to_string(n * 4) + " bytes), " +
                                 std::to_string(left) + " bytes follow");
  }
  m.masked.resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(r.U32("masked", &m.masked[i]));
  }
  RETURN_IF_ERROR(r.Done());
  return m;
}

// ---- UnmaskRequest ----------------------------------------------------------

std::vector<uint8_t> UnmaskRequest::Serialize() const {
  Writer w(MessageType::kUnmaskRequest, session_id);
  w.U32(static_cast<uint32_t>(survivors.size()));
  for (uint32_t id : survivors) w.U32(id);
  w.U32(static_cast<uint32_t>(dropped.size()));
  for (uint32_t id : dropped) w.U32(id);
  return w.Take();
}

StatusOr<UnmaskRequest> UnmaskRequest::Parse(const uint8_t* data, size_t size) {
  Reader r(data, size, MessageType::kUnmaskRequest);
  UnmaskRequest m;
  RETURN_IF_ERROR(r.Header(&m.session_id));
  for (auto* list : {&m.survivors, &m.dropped}) {
    const char* name = list == &m.survivors ? "survivors" : "dropped";
    uint32_t n = 0;
    RETURN_IF_ERROR(r.Count(name, 4, &n));
    list->resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      RETURN_IF_ERROR(r.Id(Indexed(name, i), &(*list)[i]));
    }
  }
  RETURN_IF_ERROR(r.Done());
  return m;
}

// ---- UnmaskMsg --------------------------------------------------------------

std::vector<uint8_t> UnmaskMsg::Serialize() const {
  Writer w(MessageType::kUnmask, session_id);
  w.U32(sender);
  w.U32(static_cast<uint32_t>(shares.size()));
  for (const RevealedShare& s : shares) {
    w.U32(s.owner);
    w.U8(static_cast<uint8_t>(s.kind));
    w.Bytes(s.y.data(), s.y.size());
  }
  return w.Take();
}

StatusOr<UnmaskMsg> UnmaskMsg::Parse(const uint8_t* data, size_t size) {
  Reader r(data, size, MessageType::kUnmask);
  UnmaskMsg m;
  RETURN_IF_ERROR(r.Header(&m.session_id));
  RETURN_IF_ERROR(r.Id("sender", &m.sender));
  uint32_t n = 0;
  RETURN_IF_ERROR(r.Count("shares", kRevealedShareBytes, &n));
  m.shares.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    RevealedShare& s = m.shares[i];
    const std::string f = Indexed("shares", i);
    RETURN_IF_ERROR(r.Id(f + ".owner", &s.owner));
    uint8_t kind = 0;
    RETURN_IF_ERROR(r.U8(f + ".kind", &kind));
    if (kind > static_cast<uint8_t>(ShareKind::kMaskingKey)) {
      return r.Error(f + ".kind", "got " + std::to_string(kind) +
                                      ", expected 0 (self-mask seed) or 1 "
                                      "(masking key)");
    }
    s.kind = static_cast<ShareKind>(kind);
    s.y = SecretBytes(kShamirElementBytes);
    RETURN_IF_ERROR(r.Bytes(f + ".y", s.y.data(), s.y.size()));
  }
  RETURN_IF_ERROR(r.Done());
  return m;
}

}  // namespace secagg
}  // namespace fedpeft
