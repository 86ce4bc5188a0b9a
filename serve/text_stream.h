// The text of an answer as it is generated, cut into pieces that are safe to
// send: a piece never ends inside a UTF-8 sequence (nor on the U+FFFD a
// decoder writes for one that is still incomplete), never holds the start
// of a stop string that may yet complete, and nothing at or after the first
// stop string is sent. Fed the decode of all tokens so far after each
// token, so byte-level and SentencePiece tokens that only make sense
// together are seen together.
//
// Thread-safety: one thread at a time.
#ifndef FEDPEFT_SERVE_TEXT_STREAM_H_
#define FEDPEFT_SERVE_TEXT_STREAM_H_

#include <string>
#include <vector>

namespace fedpeft {
namespace serve {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stops);

  // `text`: the decode of every token so far. Returns what may be sent now
  // beyond what was sent before. After a stop string shows up, stopped()
  // is true and later calls return "".
  std::string Update(const std::string& text);
  // At the end of generation: whatever was held back (an incomplete
  // sequence or a partial stop string that never completed).
  std::string Finish();

  bool stopped() const { return stopped_; }
  // Everything returned so far: the answer.
  const std::string& sent() const { return sent_; }

 private:
  std::vector<std::string> stops_;
  std::string text_;  // the latest full text
  std::string sent_;
  bool stopped_ = false;
};

// Bytes at the end of `s` that do not yet form a whole UTF-8 character
// (0 to 3), counting a final U+FFFD as incomplete.
size_t IncompleteUtf8Tail(const std::string& s);

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_TEXT_STREAM_H_
