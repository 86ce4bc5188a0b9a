#include "model/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <queue>
#include <unordered_map>
#include <utility>

#include "common/file_util.h"
#include "common/text.h"
#include "model/gguf_reader.h"
#include "model/hf_tokenizer.h"
#include "model/safetensors.h"

namespace fedpeft {
namespace model {
namespace {

namespace fs = std::filesystem;

// SentencePiece's piece types (sentencepiece_model.proto, field numbers).
enum class PieceKind {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// SentencePiece's whitespace mark U+2581, spelled ' ' in our pieces.
constexpr char kSpaceMark[] = "\xE2\x96\x81";
// SentencePiece's surface for <unk> (" \u2047 ").
constexpr char kUnkSurface[] = " \xE2\x81\x87 ";
// llama2.c starts its best score at -1e10: pieces scored lower never merge.
constexpr float kMinMergeScore = -1e10f;

// Parses "<0xXX>" into its byte value.
bool ParseByteToken(const std::string& piece, int* byte) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') {
    return false;
  }
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return false;
    }
    value = value * 16 + digit;
  }
  *byte = value;
  return true;
}

// Everything a BPE-by-score tokenizer needs, whichever file it came from.
// Pieces spell whitespace as ' ' (llama2.c's convention; SentencePiece's
// U+2581 is converted on load).
struct BpeVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<PieceKind> kinds;
  int64_t unk_id = 0;
  int64_t bos_id = 1;
  int64_t eos_id = 2;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
  // SentencePiece escapes ' ' as U+2581, so a literal U+2581 in the text is
  // a space too; llama2.c files have no such mark.
  bool space_mark_is_space = false;
};

// The BPE of SentencePiece's BPE models and of llama2.c's encode(): start
// from one symbol per UTF-8 codepoint (its bytes as byte tokens when the
// codepoint is not a piece), then repeatedly merge the adjacent pair whose
// concatenation is a piece with the highest score, the leftmost on ties.
// Verified against libsentencepiece on all of tiny-shakespeare
// (tests/model/tokenizer_test.cc holds the golden hash).
class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeVocab vocab) : vocab_(std::move(vocab)) {
    for (int& id : byte_ids_) id = -1;
    for (size_t id = 0; id < vocab_.pieces.size(); ++id) {
      const std::string& piece = vocab_.pieces[id];
      token_ids_.emplace(piece, static_cast<int64_t>(id));  // first id wins
      switch (vocab_.kinds[id]) {
        case PieceKind::kByte: {
          int byte = 0;
          if (ParseByteToken(piece, &byte)) {
            if (byte_ids_[byte] < 0) byte_ids_[byte] = static_cast<int>(id);
            byte_of_id_.emplace(static_cast<int64_t>(id), byte);
          }
          break;
        }
        case PieceKind::kUserDefined:
          if (!piece.empty()) user_defined_.push_back(piece);
          [[fallthrough]];
        case PieceKind::kNormal:
          // First id wins on duplicates, as in SentencePiece's piece map.
          piece_ids_.emplace(piece, static_cast<int64_t>(id));
          break;
        default:  // unknown, control, unused: never produced by a merge
          break;
      }
    }
    // Longest first, for SentencePiece's longest-prefix match.
    std::sort(user_defined_.begin(), user_defined_.end(),
              [](const std::string& a, const std::string& b) {
                return a.size() > b.size();
              });
  }

  using Tokenizer::Encode;
  std::vector<int64_t> Encode(const std::string& text, bool add_bos,
                              bool add_eos) const override;
  std::string Decode(const std::vector<int64_t>& ids) const override;

  int64_t vocab_size() const override {
    return static_cast<int64_t>(vocab_.pieces.size());
  }
  int64_t bos_id() const override { return vocab_.bos_id; }
  int64_t eos_id() const override { return vocab_.eos_id; }
  // Any piece by its text, control pieces (<s>, </s>) included. Chat
  // templates look specials up for every record, so a hash map.
  int64_t TokenToId(const std::string& token) const override {
    auto it = token_ids_.find(ReplaceAll(token, kSpaceMark, " "));
    return it == token_ids_.end() ? -1 : it->second;
  }

 private:
  // Id of a normal or user-defined piece, or -1.
  int64_t Lookup(const std::string& piece) const {
    auto it = piece_ids_.find(piece);
    return it == piece_ids_.end() ? -1 : it->second;
  }

  // SentencePiece's "identity" normalization: optional whitespace cleanup
  // and the dummy-prefix space.
  std::string Normalize(const std::string& text) const;

  BpeVocab vocab_;
  std::unordered_map<std::string, int64_t> piece_ids_;
  std::unordered_map<std::string, int64_t> token_ids_;  // every piece
  std::vector<std::string> user_defined_;
  int byte_ids_[256];
  std::unordered_map<int64_t, int> byte_of_id_;
};

std::string BpeTokenizer::Normalize(const std::string& input) const {
  std::string text =
      vocab_.space_mark_is_space ? ReplaceAll(input, kSpaceMark, " ") : input;
  if (vocab_.remove_extra_whitespaces) {
    std::string collapsed;
    for (char c : text) {
      if (c == ' ' && (collapsed.empty() || collapsed.back() == ' ')) continue;
      collapsed.push_back(c);
    }
    if (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    text = std::move(collapsed);
  }
  if (vocab_.add_dummy_prefix && !text.empty()) text.insert(0, " ");
  return text;
}

// llama2.c rescans all pairs after every merge (quadratic); a heap of
// candidate pairs with stale-entry checks gives the same merges in
// O(n log n), which matters for whole-file text records.
std::vector<int64_t> BpeTokenizer::Encode(const std::string& input,
                                          bool add_bos, bool add_eos) const {
  struct Symbol {
    std::string piece;  // empty for byte-fallback and unknown symbols
    int64_t id;
    int prev;
    int next;
    bool alive;
    int version;  // bumped when `piece` grows, to drop stale heap entries
  };
  std::vector<Symbol> symbols;
  auto add_symbol = [&symbols](std::string piece, int64_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(Symbol{std::move(piece), id, index - 1, index + 1,
                             /*alive=*/true, /*version=*/0});
  };
  auto add_codepoint = [&](const std::string& cp) {
    const int64_t id = Lookup(cp);
    if (id >= 0) {
      add_symbol(cp, id);
      return;
    }
    const bool bytes = std::all_of(cp.begin(), cp.end(), [this](char c) {
      return byte_ids_[static_cast<unsigned char>(c)] >= 0;
    });
    if (!bytes) {
      add_symbol(std::string(), vocab_.unk_id);
      return;
    }
    for (unsigned char byte : cp) add_symbol(std::string(), byte_ids_[byte]);
  };

  const std::string text = Normalize(input);
  // Codepoint split as llama2.c does it: a new buffer at every
  // non-continuation byte, at most 4 bytes. User-defined pieces are matched
  // whole first, as SentencePiece's prefix matcher does.
  std::string buffer;
  for (size_t i = 0; i < text.size(); ++i) {
    if (buffer.empty() && !user_defined_.empty()) {
      bool matched = false;
      for (const std::string& piece : user_defined_) {
        if (text.compare(i, piece.size(), piece) == 0) {
          add_symbol(piece, Lookup(piece));
          i += piece.size() - 1;
          matched = true;
          break;
        }
      }
      if (matched) continue;
    }
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) != 0x80) buffer.clear();
    buffer.push_back(static_cast<char>(c));
    const bool next_is_continuation =
        i + 1 < text.size() &&
        (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_is_continuation && buffer.size() < 4) continue;
    add_codepoint(buffer);
    buffer.clear();
  }
  if (!symbols.empty()) symbols.back().next = -1;

  struct Candidate {
    float score;
    int left;
    int right;
    int left_version;
    int right_version;
    int64_t id;
  };
  // Highest score first; on ties the leftmost pair (left indices keep
  // their text order, so this is llama2.c's first-best on a rescan).
  auto lower = [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower)> heap(
      lower);
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& a = symbols[left];
    const Symbol& b = symbols[right];
    if (a.piece.empty() || b.piece.empty()) return;  // bytes, <unk>
    const int64_t id = Lookup(a.piece + b.piece);
    if (id < 0 || !(vocab_.scores[id] > kMinMergeScore)) return;
    heap.push(
        Candidate{vocab_.scores[id], left, right, a.version, b.version, id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) {
    consider(i, i + 1);
  }
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& a = symbols[top.left];
    Symbol& b = symbols[top.right];
    if (!a.alive || !b.alive || a.next != top.right ||
        a.version != top.left_version || b.version != top.right_version) {
      continue;
    }
    a.piece += b.piece;
    a.id = top.id;
    ++a.version;
    b.alive = false;
    a.next = b.next;
    if (b.next >= 0) symbols[b.next].prev = top.left;
    consider(a.prev, top.left);
    consider(top.left, a.next);
  }

  std::vector<int64_t> ids;
  ids.reserve(symbols.size() + 2);
  if (add_bos) ids.push_back(vocab_.bos_id);
  for (const Symbol& s : symbols) {
    if (s.alive) ids.push_back(s.id);
  }
  if (add_eos) ids.push_back(vocab_.eos_id);
  return ids;
}

// Byte tokens become raw bytes (SentencePiece would turn invalid UTF-8 into
// U+FFFD; we keep the bytes), and the leading space of the first piece (the
// dummy prefix) is dropped as SentencePiece does, so Decode(Encode(s)) == s.
std::string BpeTokenizer::Decode(const std::vector<int64_t>& ids) const {
  std::string text;
  bool at_start = true;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const PieceKind kind = vocab_.kinds[id];
    if (kind == PieceKind::kControl) continue;  // <s>, </s>
    if (kind == PieceKind::kByte) {
      auto byte = byte_of_id_.find(id);
      if (byte != byte_of_id_.end()) {
        text.push_back(static_cast<char>(byte->second));
      }
    } else if (kind == PieceKind::kUnknown) {
      text += kUnkSurface;
    } else {
      const std::string& piece = vocab_.pieces[id];
      const bool strip =
          at_start && !piece.empty() && piece[0] == ' ' &&
          (vocab_.add_dummy_prefix || vocab_.remove_extra_whitespaces);
      text.append(piece, strip ? 1 : 0, std::string::npos);
    }
    at_start = false;
  }
  return text;
}

// ---------------------------------------------------------------------------
// SentencePiece tokenizer.model: a serialized sentencepiece.ModelProto. We
// read the few fields BPE needs with a small protobuf wire-format reader
// instead of linking libsentencepiece: Debian's libsentencepiece0 bundles
// protobuf-lite 3.14 with exported symbols, which clash with the
// libprotobuf 3.21 that LibTorch loads into the same process (a crash in
// static initialization, or a version-check abort, depending on link
// order).

class WireReader {
 public:
  explicit WireReader(const std::string& data)
      : p_(data.data()), end_(data.data() + data.size()) {}
  WireReader(const char* p, const char* end) : p_(p), end_(end) {}

  bool done() const { return p_ >= end_; }

  bool Varint(uint64_t* out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) return false;
      const uint8_t b = static_cast<uint8_t>(*p_++);
      value |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) {
        *out = value;
        return true;
      }
    }
    return false;
  }

  // Reads one field header; `field` and `wire` are its number and type.
  bool Tag(uint32_t* field, uint32_t* wire) {
    uint64_t tag = 0;
    if (!Varint(&tag) || (tag >> 3) == 0 || (tag >> 3) > (1u << 29)) {
      return false;
    }
    *field = static_cast<uint32_t>(tag >> 3);
    *wire = static_cast<uint32_t>(tag & 7);
    return true;
  }

  bool Bytes(const char** begin, const char** end) {
    uint64_t len = 0;
    if (!Varint(&len) || len > static_cast<uint64_t>(end_ - p_)) return false;
    *begin = p_;
    *end = p_ + len;
    p_ += len;
    return true;
  }

  bool Fixed32(uint32_t* out) {
    if (end_ - p_ < 4) return false;
    std::memcpy(out, p_, 4);
    p_ += 4;
    return true;
  }

  bool Skip(uint32_t wire) {
    uint64_t ignored = 0;
    const char* b = nullptr;
    const char* e = nullptr;
    uint32_t f32 = 0;
    switch (wire) {
      case 0:
        return Varint(&ignored);
      case 1:
        if (end_ - p_ < 8) return false;
        p_ += 8;
        return true;
      case 2:
        return Bytes(&b, &e);
      case 5:
        return Fixed32(&f32);
      default:  // groups (3, 4) are not used by sentencepiece_model.proto
        return false;
    }
  }

 private:
  const char* p_;
  const char* end_;
};

// A tokenizer file, refused unread beyond kMaxTokenizerFileBytes.
StatusOr<std::string> ReadTokenizerFile(const std::string& path) {
  StatusOr<std::string> data = ReadFileToString(path, kMaxTokenizerFileBytes);
  if (!data.ok()) return data.status().WithContext("tokenizer");
  return data;
}

// Reads an int32 proto field (negative values arrive as 64-bit varints).
bool ReadInt32(WireReader& in, int64_t* out) {
  uint64_t v = 0;
  if (!in.Varint(&v)) return false;
  *out = static_cast<int32_t>(static_cast<uint32_t>(v));
  return true;
}

StatusOr<SentencePieceVocab> ReadSentencePieceModel(const std::string& path) {
  ASSIGN_OR_RETURN(std::string data, ReadTokenizerFile(path));
  auto corrupt = [&path](const std::string& what) {
    return Status::Corruption("tokenizer '" + path +
                              "': not a valid SentencePiece model: " + what);
  };
  SentencePieceVocab vocab;
  int64_t model_type = 1;  // proto default: UNIGRAM
  std::string normalizer = "nmt_nfkc";
  bool has_charsmap = false;
  WireReader top(data);
  while (!top.done()) {
    uint32_t field = 0;
    uint32_t wire = 0;
    if (!top.Tag(&field, &wire)) return corrupt("bad field header");
    const char* b = nullptr;
    const char* e = nullptr;
    if (field == 1 && wire == 2) {  // repeated SentencePiece pieces
      if (!top.Bytes(&b, &e)) return corrupt("truncated piece");
      std::string piece;
      float score = 0;
      int64_t type = 1;
      WireReader in(b, e);
      while (!in.done()) {
        uint32_t f = 0;
        uint32_t w = 0;
        if (!in.Tag(&f, &w)) return corrupt("bad piece field");
        const char* pb = nullptr;
        const char* pe = nullptr;
        uint32_t bits = 0;
        if (f == 1 && w == 2) {
          if (!in.Bytes(&pb, &pe)) return corrupt("truncated piece text");
          piece.assign(pb, pe);
        } else if (f == 2 && w == 5) {
          if (!in.Fixed32(&bits)) return corrupt("truncated score");
          std::memcpy(&score, &bits, 4);
        } else if (f == 3 && w == 0) {
          if (!ReadInt32(in, &type)) return corrupt("truncated type");
        } else if (!in.Skip(w)) {
          return corrupt("truncated piece field " + std::to_string(f));
        }
      }
      if (static_cast<int64_t>(vocab.pieces.size()) >= kMaxTokenizerPieces) {
        return corrupt("more than the limit of " +
                       std::to_string(kMaxTokenizerPieces) + " pieces");
      }
      if (type < 1 || type > 6) {
        return corrupt("piece " + std::to_string(vocab.pieces.size()) +
                       " has unknown type " + std::to_string(type));
      }
      vocab.pieces.push_back(std::move(piece));
      vocab.scores.push_back(score);
      vocab.types.push_back(static_cast<int>(type));
    } else if ((field == 2 || field == 3) && wire == 2) {
      // 2: TrainerSpec, 3: NormalizerSpec.
      if (!top.Bytes(&b, &e)) return corrupt("truncated spec");
      WireReader in(b, e);
      while (!in.done()) {
        uint32_t f = 0;
        uint32_t w = 0;
        if (!in.Tag(&f, &w)) return corrupt("bad spec field");
        int64_t value = 0;
        const char* sb = nullptr;
        const char* se = nullptr;
        bool ok = true;
        if (field == 2 && w == 0 && (f == 3 || f == 40 || f == 41 || f == 42)) {
          ok = ReadInt32(in, &value);
          if (f == 3) model_type = value;
          if (f == 40) vocab.unk_id = value;
          if (f == 41) vocab.bos_id = value;
          if (f == 42) vocab.eos_id = value;
        } else if (field == 3 && w == 2 && (f == 1 || f == 2)) {
          ok = in.Bytes(&sb, &se);
          if (f == 1) normalizer.assign(sb, se);
          if (f == 2) has_charsmap = se > sb;
        } else if (field == 3 && w == 0 && (f == 3 || f == 4)) {
          ok = ReadInt32(in, &value);
          if (f == 3) vocab.add_dummy_prefix = value != 0;
          if (f == 4) vocab.remove_extra_whitespaces = value != 0;
        } else {
          ok = in.Skip(w);
        }
        if (!ok) return corrupt("truncated spec field " + std::to_string(f));
      }
    } else if (!top.Skip(wire)) {
      return corrupt("truncated field " + std::to_string(field));
    }
  }
  const int64_t n = static_cast<int64_t>(vocab.pieces.size());
  if (n == 0) return corrupt("no pieces");
  if (model_type != 2) {
    static const char* const kTypes[] = {"?", "unigram", "bpe", "word", "char"};
    const char* name =
        model_type >= 1 && model_type <= 4 ? kTypes[model_type] : "unknown";
    return Status::Unimplemented(
        "tokenizer '" + path + "': SentencePiece model type " + name +
        " is not supported, only bpe (as in Llama models)");
  }
  if (normalizer != "identity" && has_charsmap) {
    return Status::Unimplemented(
        "tokenizer '" + path + "': SentencePiece normalization '" + normalizer +
        "' is not supported, only identity (as in Llama models)");
  }
  auto in_range = [n](int64_t id) { return id >= 0 && id < n; };
  if (!in_range(vocab.unk_id) || !in_range(vocab.bos_id) ||
      !in_range(vocab.eos_id)) {
    return corrupt("unk/bos/eos ids " + std::to_string(vocab.unk_id) + "/" +
                   std::to_string(vocab.bos_id) + "/" +
                   std::to_string(vocab.eos_id) + " must lie in [0, " +
                   std::to_string(n) + ")");
  }
  return vocab;
}

std::unique_ptr<Tokenizer> TokenizerFromSentencePiece(SentencePieceVocab spm) {
  BpeVocab vocab;
  vocab.pieces.reserve(spm.pieces.size());
  for (const std::string& piece : spm.pieces) {
    vocab.pieces.push_back(ReplaceAll(piece, kSpaceMark, " "));
  }
  vocab.scores = std::move(spm.scores);
  for (int type : spm.types)
    vocab.kinds.push_back(static_cast<PieceKind>(type));
  vocab.unk_id = spm.unk_id;
  vocab.bos_id = spm.bos_id;
  vocab.eos_id = spm.eos_id;
  vocab.add_dummy_prefix = spm.add_dummy_prefix;
  vocab.remove_extra_whitespaces = spm.remove_extra_whitespaces;
  vocab.space_mark_is_space = true;
  return std::unique_ptr<Tokenizer>(new BpeTokenizer(std::move(vocab)));
}

StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePiece(
    const std::string& path) {
  ASSIGN_OR_RETURN(SentencePieceVocab spm, ReadSentencePieceVocab(path));
  return TokenizerFromSentencePiece(std::move(spm));
}

// The tokenizer.ggml.* keys of a GGUF file with tokenizer model "llama"
// (SentencePiece BPE), as model/gguf_export.h writes them.
StatusOr<SentencePieceVocab> ReadGgufVocab(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  ASSIGN_OR_RETURN(GgufReader gguf, GgufReader::Parse(file->bytes(), path));
  if (gguf.metadata().count("tokenizer.ggml.model") == 0) {
    return Status::NotFound(path +
                            ": the GGUF file has no tokenizer "
                            "(tokenizer.ggml.model); pass --tokenizer");
  }
  ASSIGN_OR_RETURN(std::string kind, gguf.GetString("tokenizer.ggml.model"));
  if (kind != "llama") {
    return Status::Unimplemented(
        path + ": tokenizer.ggml.model is '" + kind +
        "', only 'llama' (SentencePiece BPE) is supported; pass --tokenizer");
  }
  SentencePieceVocab v;
  ASSIGN_OR_RETURN(v.pieces, gguf.GetStringArray("tokenizer.ggml.tokens"));
  const int64_t n = static_cast<int64_t>(v.pieces.size());
  ASSIGN_OR_RETURN(std::vector<double> scores,
                   gguf.GetNumberArray("tokenizer.ggml.scores"));
  ASSIGN_OR_RETURN(std::vector<double> types,
                   gguf.GetNumberArray("tokenizer.ggml.token_type"));
  if (static_cast<int64_t>(scores.size()) != n ||
      static_cast<int64_t>(types.size()) != n) {
    return Status::Corruption(
        path + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) +
        " and token_type " + std::to_string(types.size()) +
        " entries, expected one per token (" + std::to_string(n) + ")");
  }
  for (int64_t i = 0; i < n; ++i) {
    const double t = types[i];
    if (!(t >= 1 && t <= 6) || t != static_cast<int>(t)) {
      return Status::Corruption(path + ": tokenizer.ggml.token_type of token " +
                                std::to_string(i) + " is " + std::to_string(t) +
                                ", expected 1 to 6");
    }
    v.types.push_back(static_cast<int>(t));
    v.scores.push_back(static_cast<float>(scores[i]));
  }
  if (n == 0)
    return Status::Corruption(path + ": tokenizer.ggml.tokens is empty");
  ASSIGN_OR_RETURN(v.unk_id,
                   gguf.GetInt("tokenizer.ggml.unknown_token_id", 0, n - 1));
  ASSIGN_OR_RETURN(v.bos_id,
                   gguf.GetInt("tokenizer.ggml.bos_token_id", 0, n - 1));
  ASSIGN_OR_RETURN(v.eos_id,
                   gguf.GetInt("tokenizer.ggml.eos_token_id", 0, n - 1));
  if (gguf.metadata().count("tokenizer.ggml.add_space_prefix") != 0) {
    ASSIGN_OR_RETURN(v.add_dummy_prefix,
                     gguf.GetBool("tokenizer.ggml.add_space_prefix"));
  }
  return v;
}

// ---------------------------------------------------------------------------
// llama2.c tokenizer files (tokenizer.bin, tok<N>.bin), as written by
// llama2.c's tokenizer.py: int32 max_token_length, then per token float32
// score, int32 byte length, bytes. Pieces use ' ' for U+2581, byte tokens
// are spelled "<0xXX>", <s>/</s> are "\n<s>\n"/"\n</s>\n"; ids 0/1/2 are
// <unk>/<s>/</s> by llama2.c's convention.

StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2c(const std::string& path,
                                                 int64_t vocab_size) {
  if (vocab_size < 3) {
    return Status::InvalidArgument(
        "tokenizer '" + path +
        "': a llama2.c tokenizer needs the model's vocabulary size (>= 3), "
        "got " +
        std::to_string(vocab_size) +
        "; hint: load the model first and pass its vocab_size");
  }
  ASSIGN_OR_RETURN(std::string data, ReadTokenizerFile(path));
  auto corrupt = [&path](const std::string& what) {
    return Status::Corruption("tokenizer '" + path +
                              "' (llama2.c format): " + what);
  };
  size_t offset = 0;
  auto read4 = [&](void* out) {
    if (data.size() - offset < 4) return false;
    std::memcpy(out, data.data() + offset, 4);
    offset += 4;
    return true;
  };
  int32_t max_len = 0;
  if (!read4(&max_len)) {
    return corrupt("file is " + std::to_string(data.size()) +
                   " bytes, too short for the int32 max_token_length");
  }
  if (max_len <= 0 || max_len > (1 << 16)) {
    return corrupt("max_token_length is " + std::to_string(max_len) +
                   ", expected 1.." + std::to_string(1 << 16));
  }
  // Every token takes at least 8 bytes (score, length): a vocabulary size
  // the file cannot hold is refused before anything is sized from it (it
  // comes from the model's config, which may be hostile).
  if (static_cast<uint64_t>(vocab_size) > (data.size() - offset) / 8) {
    return corrupt("file is " + std::to_string(data.size()) +
                   " bytes, too short for the model's vocabulary of " +
                   std::to_string(vocab_size) +
                   " tokens (8 bytes each at least); hint: wrong tokenizer "
                   "for this model?");
  }
  if (vocab_size > kMaxTokenizerPieces) {
    return corrupt("the model's vocabulary of " + std::to_string(vocab_size) +
                   " tokens is more than the limit of " +
                   std::to_string(kMaxTokenizerPieces) + " pieces");
  }
  BpeVocab vocab;
  vocab.pieces.reserve(vocab_size);
  vocab.scores.reserve(vocab_size);
  vocab.kinds.reserve(vocab_size);
  for (int64_t id = 0; id < vocab_size; ++id) {
    float score = 0;
    int32_t len = 0;
    if (!read4(&score) || !read4(&len)) {
      return corrupt("truncated at token " + std::to_string(id) + " (offset " +
                     std::to_string(offset) +
                     "): the file holds fewer tokens than the model's "
                     "vocabulary of " +
                     std::to_string(vocab_size) +
                     "; hint: wrong tokenizer for this model?");
    }
    if (len < 0 || len > max_len) {
      return corrupt("token " + std::to_string(id) + " has length " +
                     std::to_string(len) + ", expected 0.." +
                     std::to_string(max_len) + " (max_token_length)");
    }
    if (data.size() - offset < static_cast<size_t>(len)) {
      return corrupt("truncated inside token " + std::to_string(id) +
                     ": needs " + std::to_string(len) + " bytes, " +
                     std::to_string(data.size() - offset) + " left");
    }
    if (std::isnan(score)) {
      return corrupt("token " + std::to_string(id) + " has a NaN score");
    }
    std::string piece(data.data() + offset, len);
    offset += len;
    int byte = 0;
    PieceKind kind = PieceKind::kNormal;
    if (id == vocab.unk_id) {
      kind = PieceKind::kUnknown;
    } else if (id == vocab.bos_id || id == vocab.eos_id) {
      kind = PieceKind::kControl;
    } else if (ParseByteToken(piece, &byte)) {
      kind = PieceKind::kByte;
    }
    vocab.pieces.push_back(std::move(piece));
    vocab.scores.push_back(score);
    vocab.kinds.push_back(kind);
  }
  if (offset != data.size()) {
    return corrupt(std::to_string(data.size() - offset) + " bytes left after " +
                   std::to_string(vocab_size) +
                   " tokens: the file holds more tokens than the model's "
                   "vocabulary; hint: wrong tokenizer for this model?");
  }
  return std::unique_ptr<Tokenizer>(new BpeTokenizer(std::move(vocab)));
}

}  // namespace

StatusOr<SentencePieceVocab> ReadSentencePieceVocab(const std::string& path) {
  if (EndsWith(path, ".gguf")) return ReadGgufVocab(path);
  return ReadSentencePieceModel(path);
}

StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path,
                                                   int64_t vocab_size_hint) {
  if (EndsWith(path, ".json")) {
    ASSIGN_OR_RETURN(std::unique_ptr<HfTokenizer> hf, LoadHfTokenizer(path));
    return std::unique_ptr<Tokenizer>(std::move(hf));
  }
  if (EndsWith(path, ".model")) return LoadSentencePiece(path);
  if (EndsWith(path, ".bin")) return LoadLlama2c(path, vocab_size_hint);
  if (EndsWith(path, ".gguf")) return LoadSentencePiece(path);
  return Status::InvalidArgument(
      "tokenizer '" + path +
      "': unknown kind, expected a Hugging Face 'tokenizer.json', a "
      "SentencePiece '*.model', a llama2.c '*.bin' tokenizer or a GGUF "
      "model with its tokenizer");
}

StatusOr<std::string> FindTokenizerForModel(const std::string& model_path,
                                            int64_t vocab_size) {
  // A GGUF model carries its tokenizer.
  if (EndsWith(model_path, ".gguf") && !IsDirectory(model_path)) {
    return model_path;
  }
  std::vector<std::string> candidates;
  if (IsDirectory(model_path)) {
    candidates.push_back(JoinPath(model_path, "tokenizer.json"));
    candidates.push_back(JoinPath(model_path, "tokenizer.model"));
  } else {
    std::string dir = fs::path(model_path).parent_path().string();
    if (dir.empty()) dir = ".";
    if (EndsWith(model_path, ".bin")) {
      if (vocab_size > 0) {
        candidates.push_back(
            JoinPath(dir, "tok" + std::to_string(vocab_size) + ".bin"));
      }
      candidates.push_back(JoinPath(dir, "tokenizer.bin"));
    }
    // A single-file Hugging Face model (model.safetensors) sits in its
    // folder beside tokenizer.json or tokenizer.model.
    candidates.push_back(JoinPath(dir, "tokenizer.json"));
    candidates.push_back(JoinPath(dir, "tokenizer.model"));
  }
  std::string tried;
  for (const std::string& candidate : candidates) {
    if (PathExists(candidate) && !IsDirectory(candidate)) return candidate;
    tried += (tried.empty() ? "" : ", ") + candidate;
  }
  return Status::NotFound("no tokenizer found for model '" + model_path +
                          "' (tried " + tried +
                          "); hint: pass --tokenizer <tokenizer.json, "
                          "tokenizer.model or tok<vocab>.bin>");
}

}  // namespace model
}  // namespace fedpeft
