#pragma once
// Walking the lines of a message's header block (RFC 5322 section 2.2), shared by the server's
// header checks (Received count, Message-ID, Date) and sluice-bench sink's id and checksum.
#include <string_view>

#include "engine/io/strings.h"

namespace sluice::smtp {

// Calls visit(line) for each CRLF-ended line of `block` (the CRLF not included), up to the empty
// line that ends the header or the end of `block`; stops early when visit returns false.
// Continuation lines (starting with space or tab) are passed as they are.
template <typename Visit>
void for_each_header_line(std::string_view block, Visit visit) {
  size_t pos = 0;
  while (pos < block.size()) {
    size_t end = block.find("\r\n", pos);
    if (end == std::string_view::npos) {
      end = block.size();
    }
    const std::string_view line = block.substr(pos, end - pos);
    if (line.empty() || !visit(line)) {
      return;
    }
    pos = end + 2;
  }
}

// True when `line` is a field named `name` (any case), "Name:" with nothing between.
inline bool header_name_is(std::string_view line, std::string_view name) {
  return line.size() > name.size() && line[name.size()] == ':' && equals_ignore_case(line.substr(0, name.size()), name);
}

}  // namespace sluice::smtp
