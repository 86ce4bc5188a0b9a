#include "model/bpe.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>
#include <utility>

#include "model/hf_json.h"
#include "model/tokenizer.h"
#include "model/utf8.h"

namespace fedpeft {
namespace model {

namespace {

constexpr char kSpaceMark[] = "\xE2\x96\x81";  // U+2581
constexpr size_t kSpaceMarkBytes = 3;

}  // namespace

StatusOr<std::unique_ptr<BpeModel>> BpeModel::Parse(const nlohmann::json& spec,
                                                    const std::string& where) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  auto dropout = spec.find("dropout");
  if (dropout != spec.end() && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return Status::Unimplemented(
        where +
        ".dropout: BPE dropout is not supported (it makes encoding "
        "random); expected null");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    ASSIGN_OR_RETURN(std::string value, hf_json::String(spec, key, where));
    if (!value.empty()) {
      return Status::Unimplemented(
          where + "." + key + " \"" + value +
          "\" is not supported; expected null or \"\"");
    }
  }
  ASSIGN_OR_RETURN(m->fuse_unk_, hf_json::Bool(spec, "fuse_unk", where, false));
  ASSIGN_OR_RETURN(m->byte_fallback_,
                   hf_json::Bool(spec, "byte_fallback", where, false));
  ASSIGN_OR_RETURN(m->ignore_merges_,
                   hf_json::Bool(spec, "ignore_merges", where, false));

  auto vocab = spec.find("vocab");
  if (vocab == spec.end() || !vocab->is_object()) {
    return Status::InvalidArgument(where +
                                   ".vocab: missing or not an object of "
                                   "token -> id");
  }
  if (static_cast<int64_t>(vocab->size()) > kMaxTokenizerPieces) {
    return Status::InvalidArgument(where +
                                   ".vocab: " + std::to_string(vocab->size()) +
                                   " tokens, more than the limit of " +
                                   std::to_string(kMaxTokenizerPieces));
  }
  m->vocab_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= kMaxTokenizerPieces) {
      return Status::InvalidArgument(where + ".vocab[\"" + it.key() +
                                     "\"]: id must be an integer in [0, " +
                                     std::to_string(kMaxTokenizerPieces) +
                                     "), got " + it.value().dump());
    }
    const int64_t id = it.value().get<int64_t>();
    m->vocab_[it.key()] = id;
    if (id >= static_cast<int64_t>(m->tokens_.size())) {
      m->tokens_.resize(id + 1);
      m->has_token_.resize(id + 1, false);
    }
    m->tokens_[id] = it.key();
    m->has_token_[id] = true;
  }

  ASSIGN_OR_RETURN(std::string unk, hf_json::String(spec, "unk_token", where));
  if (!unk.empty()) {
    auto found = m->vocab_.find(unk);
    if (found == m->vocab_.end()) {
      return Status::InvalidArgument(where + ".unk_token \"" + unk +
                                     "\" is not in the vocabulary");
    }
    m->unk_id_ = found->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto found = m->vocab_.find(name);
    m->byte_ids_[b] = found == m->vocab_.end() ? -1 : found->second;
  }

  // Chunking at U+2581 is exact only if no token could span such a cut:
  // none holds the mark right after a character other than the mark.
  m->split_at_space_mark_ = m->vocab_.count(kSpaceMark) > 0;
  for (auto it = m->vocab_.begin();
       m->split_at_space_mark_ && it != m->vocab_.end(); ++it) {
    const std::string& token = it->first;
    for (size_t p = token.find(kSpaceMark, 1); p != std::string::npos;
         p = token.find(kSpaceMark, p + 1)) {
      if (p < kSpaceMarkBytes ||
          token.compare(p - kSpaceMarkBytes, kSpaceMarkBytes, kSpaceMark) !=
              0) {
        m->split_at_space_mark_ = false;
        break;
      }
    }
  }

  ASSIGN_OR_RETURN(const nlohmann::json* merges,
                   hf_json::Array(spec, "merges", where));
  if (static_cast<int64_t>(merges->size()) > kMaxTokenizerPieces * 4) {
    return Status::InvalidArgument(
        where + ".merges: " + std::to_string(merges->size()) +
        " merges, more than the limit of " +
        std::to_string(kMaxTokenizerPieces * 4));
  }
  m->merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const nlohmann::json& merge = (*merges)[rank];
    const std::string at = where + ".merges[" + std::to_string(rank) + "]";
    std::string left;
    std::string right;
    if (merge.is_string()) {
      const std::string& s = merge.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos ||
          s.find(' ', space + 1) != std::string::npos) {
        return Status::InvalidArgument(at + " \"" + s +
                                       "\": expected two tokens separated by "
                                       "one space");
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return Status::InvalidArgument(
          at + ": expected \"a b\" or [\"a\", \"b\"], got " + merge.dump());
    }
    auto a = m->vocab_.find(left);
    auto b = m->vocab_.find(right);
    auto ab = m->vocab_.find(left + right);
    for (const auto& [found, token] :
         {std::make_pair(a, left), std::make_pair(b, right),
          std::make_pair(ab, left + right)}) {
      if (found == m->vocab_.end()) {
        return Status::InvalidArgument(at + ": token \"" + token +
                                       "\" is not in the vocabulary");
      }
    }
    // A pair listed twice keeps its last rank, as tokenizers' map does.
    m->merges_[PairKey(a->second, b->second)] =
        Merge{static_cast<int32_t>(rank), static_cast<int32_t>(ab->second)};
  }
  return m;
}

std::optional<int64_t> BpeModel::TokenToId(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int64_t id) const {
  if (id < 0 || id >= id_limit() || !has_token_[id]) return nullptr;
  return &tokens_[id];
}

void BpeModel::Tokenize(const std::string& word,
                        std::vector<int64_t>* ids) const {
  if (!split_at_space_mark_ || word.size() <= kMaxCachedWordBytes) {
    TokenizeCached(word, ids);
    return;
  }
  // Cut before every U+2581 that follows something else.
  size_t begin = 0;
  for (size_t p = word.find(kSpaceMark, 1); p != std::string::npos;
       p = word.find(kSpaceMark, p + kSpaceMarkBytes)) {
    if (p >= kSpaceMarkBytes &&
        word.compare(p - kSpaceMarkBytes, kSpaceMarkBytes, kSpaceMark) == 0) {
      continue;
    }
    if (p > begin) TokenizeCached(word.substr(begin, p - begin), ids);
    begin = p;
  }
  TokenizeCached(word.substr(begin), ids);
}

void BpeModel::TokenizeCached(const std::string& word,
                              std::vector<int64_t>* ids) const {
  if (word.size() > kMaxCachedWordBytes) {
    TokenizeUncached(word, ids);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int64_t> word_ids;
  TokenizeUncached(word, &word_ids);
  ids->insert(ids->end(), word_ids.begin(), word_ids.end());
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() >= kWordCacheEntries) cache_.clear();
  cache_.emplace(word, std::move(word_ids));
}

void BpeModel::TokenizeUncached(const std::string& word,
                                std::vector<int64_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto whole = vocab_.find(word);
    if (whole != vocab_.end()) {
      ids->push_back(whole->second);
      return;
    }
  }
  struct Symbol {
    int64_t id;
    int prev;
    int next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto push = [&symbols](int64_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(Symbol{id, index - 1, index + 1, true});
  };
  bool last_was_unk = false;
  std::string cp;
  for (size_t i = 0; i < word.size();) {
    size_t len = utf8::ValidSequenceLength(word, i);
    if (len == 0) len = 1;  // not reached for validated text
    cp.assign(word, i, len);
    i += len;
    auto found = vocab_.find(cp);
    if (found != vocab_.end()) {
      push(found->second);
      last_was_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : cp) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : cp) push(byte_ids_[c]);
        last_was_unk = false;
        continue;
      }
    }
    // Without an unk token tokenizers fails the encoding; we drop the
    // codepoint (documented in hf_tokenizer.h).
    if (unk_id_ < 0) continue;
    if (!(fuse_unk_ && last_was_unk)) push(unk_id_);
    last_was_unk = true;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    int32_t rank;
    int pos;
    int32_t id;
  };
  // Lowest rank first, then leftmost.
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> heap(
      later);
  auto consider = [&](int left) {
    if (left < 0) return;
    const int right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) {
      heap.push(Candidate{it->second.rank, left, it->second.id});
    }
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& a = symbols[top.pos];
    if (!a.alive || a.next < 0) continue;
    Symbol& b = symbols[a.next];
    // A stale entry: one side changed since it was pushed.
    auto it = merges_.find(PairKey(a.id, b.id));
    if (it == merges_.end() || it->second.rank != top.rank ||
        it->second.id != top.id) {
      continue;
    }
    a.id = top.id;
    b.alive = false;
    a.next = b.next;
    if (b.next >= 0) symbols[b.next].prev = top.pos;
    consider(a.prev);
    consider(top.pos);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids->push_back(s.id);
  }
}

}  // namespace model
}  // namespace fedpeft
