#include "serve/text_stream.h"

#include <algorithm>
#include <utility>

namespace fedpeft {
namespace serve {

size_t IncompleteUtf8Tail(const std::string& s) {
  static const std::string kReplacement = "\xEF\xBF\xBD";
  if (s.size() >= 3 && s.compare(s.size() - 3, 3, kReplacement) == 0) {
    return 3;
  }
  // Walk back over continuation bytes to the lead byte of the last char.
  const size_t n = s.size();
  size_t back = 0;
  while (back < 4 && back < n &&
         (static_cast<unsigned char>(s[n - 1 - back]) & 0xC0) == 0x80) {
    ++back;
  }
  if (back == n) return 0;  // only continuation bytes: nothing to wait for
  const unsigned char lead = static_cast<unsigned char>(s[n - 1 - back]);
  size_t want = 1;
  if ((lead & 0xE0) == 0xC0) {
    want = 2;
  } else if ((lead & 0xF0) == 0xE0) {
    want = 3;
  } else if ((lead & 0xF8) == 0xF0) {
    want = 4;
  }
  return back + 1 < want ? back + 1 : 0;
}

TextStream::TextStream(std::vector<std::string> stops)
    : stops_(std::move(stops)) {}

std::string TextStream::Update(const std::string& text) {
  if (stopped_) return "";
  text_ = text;
  // The first stop string ends the answer before it.
  size_t end = text.size();
  for (const std::string& stop : stops_) {
    const size_t at = text.find(stop);
    if (at != std::string::npos && at < end) {
      end = at;
      stopped_ = true;
    }
  }
  if (!stopped_) {
    // Hold back a tail that may be the start of a stop string.
    size_t hold = 0;
    for (const std::string& stop : stops_) {
      for (size_t k = std::min(stop.size() - 1, text.size()); k > hold; --k) {
        if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
          hold = k;
          break;
        }
      }
    }
    end = text.size() - hold;
    const size_t incomplete = IncompleteUtf8Tail(text.substr(0, end));
    end -= incomplete;
  }
  if (end <= sent_.size()) return "";
  // A decoder may rewrite earlier text (rare); what was sent stays sent.
  std::string piece = text.substr(sent_.size(), end - sent_.size());
  sent_ += piece;
  return piece;
}

std::string TextStream::Finish() {
  if (stopped_ || text_.size() <= sent_.size()) return "";
  std::string rest = text_.substr(sent_.size());
  sent_ += rest;
  return rest;
}

}  // namespace serve
}  // namespace fedpeft
