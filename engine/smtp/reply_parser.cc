// The SMTP reply parser: see reply_parser.h for the rules and the decisions behind them.
// It works octet by octet so that every answer (replies, errors, the octet an error is found at)
// is the same however the stream is split; replies are small and arrive a few per message, so
// the loop's cost does not matter. It must never hold more than one reply in progress, and never
// assert on a server's bytes.
#include "engine/smtp/reply_parser.h"

#include "engine/io/assert.h"
#include "engine/io/strings.h"

namespace sluice::smtp {
namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// 1 to 3 digits at `text[at]`; advances `at`.
std::optional<uint16_t> parse_sub_code(std::string_view text, size_t& at) {
  uint16_t value = 0;
  size_t digits = 0;
  while (at < text.size() && is_digit(text[at])) {
    if (++digits > 3) {
      return std::nullopt;
    }
    value = static_cast<uint16_t>(value * 10 + (text[at] - '0'));
    ++at;
  }
  if (digits == 0) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

std::string EnhancedStatus::to_string() const {
  return str_cat(static_cast<unsigned>(klass), '.', subject, '.', detail);
}

std::optional<EnhancedPrefix> parse_enhanced_status(std::string_view text) {
  if (text.size() < 5 || (text[0] != '2' && text[0] != '4' && text[0] != '5') || text[1] != '.') {
    return std::nullopt;
  }
  size_t at = 2;
  const std::optional<uint16_t> subject = parse_sub_code(text, at);
  if (!subject || at >= text.size() || text[at] != '.') {
    return std::nullopt;
  }
  ++at;
  const std::optional<uint16_t> detail = parse_sub_code(text, at);
  if (!detail || (at < text.size() && text[at] != ' ')) {
    return std::nullopt;
  }
  return EnhancedPrefix{EnhancedStatus{static_cast<uint8_t>(text[0] - '0'), *subject, *detail}, at};
}

std::string_view Reply::line(size_t index) const {
  SLUICE_ASSERT(index < _line_ends.size(), "reply line index out of range");
  const size_t begin = index == 0 ? 0 : _line_ends[index - 1];
  return std::string_view(_text).substr(begin, _line_ends[index] - begin);
}

void Reply::clear() {
  _code = 0;
  _enhanced.reset();
  _text.clear();
  _line_ends.clear();
  _wire_octets = 0;
}

std::string_view reply_error_name(ReplyError error) {
  switch (error) {
    case ReplyError::none:
      return "none";
    case ReplyError::bad_code:
      return "bad_code";
    case ReplyError::mixed_codes:
      return "mixed_codes";
    case ReplyError::bare_cr:
      return "bare_cr";
    case ReplyError::line_too_long:
      return "line_too_long";
    case ReplyError::too_many_lines:
      return "too_many_lines";
    case ReplyError::reply_too_long:
      return "reply_too_long";
  }
  return "unknown";
}

ReplyParser::ReplyParser() {
  // The common reply is one short line and an EHLO reply a dozen: room for those up front, so that
  // the usual exchange does not allocate; larger replies grow up to the limits.
  _line.reserve(kReplyLineOctetsRfc);
  _reply._text.reserve(kReplyLineOctetsRfc);
  _reply._line_ends.reserve(16);
}

ReplyFeed ReplyParser::fail(ReplyError error, size_t consumed) {
  SLUICE_ASSERT(error != ReplyError::none);
  _error = error;
  return ReplyFeed{consumed, ReplyStop::error};
}

ReplyFeed ReplyParser::feed(std::string_view bytes) {
  if (_error != ReplyError::none) {
    return ReplyFeed{0, ReplyStop::error};
  }
  if (_reply_done) {
    _reply.clear();
    _reply_done = false;
  }
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (_pending_cr && c != '\n') {
      return fail(ReplyError::bare_cr, i + 1);
    }
    ++_line_octets;
    ++_reply._wire_octets;
    if (_line_octets > kReplyLineOctetsMax) {
      return fail(ReplyError::line_too_long, i + 1);
    }
    if (_reply._wire_octets > kReplyOctetsMax) {
      return fail(ReplyError::reply_too_long, i + 1);
    }
    if (c == '\n') {
      _pending_cr = false;
      if (!end_line()) {
        return fail(_error, i + 1);
      }
      if (_reply_done) {
        return ReplyFeed{i + 1, ReplyStop::reply};
      }
    } else if (c == '\r') {
      _pending_cr = true;
    } else {
      _line.push_back(c);
    }
  }
  return ReplyFeed{bytes.size(), ReplyStop::need_more};
}

bool ReplyParser::end_line() {
  const std::string_view line = _line;
  // Reply-code = %x32-35 %x30-39 %x30-39, then "-" (more lines follow), SP or nothing (the last).
  if (line.size() < 3 || line[0] < '2' || line[0] > '5' || !is_digit(line[1]) || !is_digit(line[2]) ||
      (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
    _error = ReplyError::bad_code;
    return false;
  }
  const auto code = static_cast<uint16_t>((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
  const bool last = line.size() == 3 || line[3] == ' ';
  const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view();
  if (_reply._line_ends.empty()) {
    _reply._code = code;
    if (const auto enhanced = parse_enhanced_status(text); enhanced && enhanced->status.klass == code / 100) {
      _reply._enhanced = enhanced->status;
    }
  } else if (code != _reply._code) {
    _error = ReplyError::mixed_codes;
    return false;
  }
  _reply._text.append(text);
  _reply._line_ends.push_back(static_cast<uint32_t>(_reply._text.size()));
  _line.clear();
  _line_octets = 0;
  if (last) {
    _reply_done = true;
  } else if (_reply._line_ends.size() >= kReplyLinesMax) {
    // A continuation line was the last one allowed: the reply cannot end within the limit.
    _error = ReplyError::too_many_lines;
    return false;
  }
  return true;
}

}  // namespace sluice::smtp
