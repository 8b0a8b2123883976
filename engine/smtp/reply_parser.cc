// The SMTP reply parser: see reply_parser.h for the rules and the decisions behind them.
// Lines come from the line reader that the server uses too (line_reader.h), which answers the
// same however the stream is split and says at which octet a line broke a rule; the parser gives
// the reader no more than one octet past the reply's budget, so that reply_too_long is found at
// its octet as well. It must never hold more than one reply in progress, and never assert on a
// server's bytes.
#include "engine/smtp/reply_parser.h"

#include <algorithm>

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

ReplyParser::ReplyParser() : _lines(LineReaderSettings{kReplyLineOctetsMax, BareLf::ends_line, BareCr::error_at_once}) {
  // The common reply is one short line and an EHLO reply a dozen: room for those up front, so that
  // the usual exchange does not allocate; larger replies grow up to the limits.
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
  size_t used = 0;
  while (true) {
    // Past the reply's budget the reader gets one octet more: the one that breaks a rule. A
    // line's rule (bare CR, length) on that octet is reported before the reply's length.
    const size_t budget = kReplyOctetsMax - _reply._wire_octets;
    const std::string_view rest = bytes.substr(used);
    const LineStep step = _lines.read(rest.substr(0, std::min(rest.size(), budget + 1)));
    used += step.consumed;
    _reply._wire_octets += step.consumed;
    if (step.event == LineEvent::bare_cr) {
      return fail(ReplyError::bare_cr, used);
    }
    if (step.event == LineEvent::too_long) {
      return fail(ReplyError::line_too_long, used);
    }
    if (_reply._wire_octets > kReplyOctetsMax) {
      return fail(ReplyError::reply_too_long, used);
    }
    if (step.event == LineEvent::need_more) {
      SLUICE_ASSERT(used == bytes.size());
      return ReplyFeed{used, ReplyStop::need_more};
    }
    SLUICE_ASSERT(step.event == LineEvent::line, "the client's line rules end lines or fail");
    if (!end_line(step.line)) {
      return fail(_error, used);
    }
    if (_reply_done) {
      return ReplyFeed{used, ReplyStop::reply};
    }
  }
}

bool ReplyParser::end_line(std::string_view line) {
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
