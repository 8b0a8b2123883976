// Fuzz target for the SMTP reply parser and the EHLO capability parser. Properties, not only "no
// crash":
// 1. The input (after its first octet) parsed in one piece, cut in two at a point taken from the
//    first octet, and (when short) fed one octet at a time gives the same replies, the same error
//    and the same consumed count.
// 2. Every reply keeps the limits and the grammar: code 200-599, 1 to kReplyLinesMax lines, at
//    most kReplyOctetsMax wire octets, no CR or LF in a line, an enhanced code only with the
//    code's class and equal to what the first line says; without an error all input is consumed.
// 3. A reply written back in its shortest wire form parses to the same code, enhanced code and
//    lines.
// 4. A 250 reply always gives EHLO capabilities, with bounded, valid, upper-case, distinct AUTH
//    mechanisms, and the same capabilities when its text is upper- or lower-cased (keywords are
//    case-insensitive; only the domain keeps its case).
// 5. When the first octet is odd, all of that again on the input rewritten into reply-shaped
//    lines (codes, continuation marks, enhanced codes, EHLO keywords; stretched to reach every
//    limit), so that unguided random input reaches multi-line and pipelined replies; there, the
//    only errors allowed are the limits (and mixed codes when the rewrite mixed them in).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "engine/smtp/ehlo_capabilities.h"
#include "engine/smtp/reply_parser.h"

namespace {

using namespace sluice::smtp;

void require(bool ok) {
  if (!ok) {
    __builtin_trap();
  }
}

struct Outcome {
  std::vector<Reply> replies;
  ReplyError error = ReplyError::none;
  size_t consumed = 0;
  bool in_reply = false;
  friend bool operator==(const Outcome&, const Outcome&) = default;
};

// Feeds `pieces` one after another, each until it is used up or the parser fails.
Outcome parse_pieces(const std::vector<std::string_view>& pieces) {
  Outcome out;
  ReplyParser parser;
  for (std::string_view piece : pieces) {
    while (out.error == ReplyError::none) {
      const ReplyFeed r = parser.feed(piece);
      require(r.consumed <= piece.size());
      out.consumed += r.consumed;
      piece.remove_prefix(r.consumed);
      if (r.stop == ReplyStop::reply) {
        out.replies.push_back(parser.reply());
        continue;
      }
      if (r.stop == ReplyStop::error) {
        out.error = parser.error();
        require(out.error != ReplyError::none);
        require(parser.feed("250 ok\r\n") == (ReplyFeed{0, ReplyStop::error}));  // final
      } else {
        require(piece.empty());
      }
      break;
    }
  }
  out.in_reply = parser.in_reply();
  return out;
}

// The shortest wire form: LF line ends, a bare code for an empty last line.
std::string shortest_wire(const Reply& reply) {
  std::string wire;
  for (size_t i = 0; i < reply.line_count(); ++i) {
    const bool last = i + 1 == reply.line_count();
    wire += std::to_string(reply.code());
    if (!last) {
      wire += '-';
    } else if (!reply.line(i).empty()) {
      wire += ' ';
    }
    wire += reply.line(i);
    wire += '\n';
  }
  return wire;
}

bool valid_mechanism(std::string_view name) {
  if (name.empty() || name.size() > kSaslMechanismOctetsMax) {
    return false;
  }
  for (const char c : name) {
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
      return false;
    }
  }
  return true;
}

// The reply again, every line's text mapped octet by octet.
template <typename Map>
Reply recased(const Reply& reply, Map map) {
  std::string wire = shortest_wire(reply);
  for (char& c : wire) {
    c = map(c);
  }
  const Outcome out = parse_pieces({wire});
  require(out.error == ReplyError::none && out.replies.size() == 1);
  return out.replies[0];
}

bool same_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) {
      return false;
    }
  }
  return true;
}

void check_ehlo(const Reply& reply) {
  const std::optional<EhloCapabilities> caps = parse_ehlo_reply(reply);
  require(caps.has_value() == (reply.code() == 250));
  if (!caps) {
    return;
  }
  require(caps->domain.find_first_of(" \t") == std::string::npos);
  require(reply.line(0).find(caps->domain) != std::string_view::npos);
  require(caps->size || caps->size_octets_max == 0);
  require(caps->auth || caps->auth_mechanisms.empty());
  require(caps->auth_mechanisms.size() <= kAuthMechanismsMax);
  for (size_t i = 0; i < caps->auth_mechanisms.size(); ++i) {
    require(valid_mechanism(caps->auth_mechanisms[i]));
    for (size_t j = 0; j < i; ++j) {
      require(caps->auth_mechanisms[i] != caps->auth_mechanisms[j]);
    }
  }
  const auto upper = [](char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; };
  const auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
  for (const Reply& other : {recased(reply, upper), recased(reply, lower)}) {
    std::optional<EhloCapabilities> other_caps = parse_ehlo_reply(other);
    require(other_caps.has_value());
    require(same_ignoring_case(other_caps->domain, caps->domain));
    other_caps->domain = caps->domain;
    require(*other_caps == *caps);
  }
}

void check_reply(const Reply& reply) {
  require(reply.code() >= 200 && reply.code() <= 599);
  require(reply.line_count() >= 1 && reply.line_count() <= kReplyLinesMax);
  require(reply.wire_octets() <= kReplyOctetsMax);
  size_t least_octets = 0;
  for (size_t i = 0; i < reply.line_count(); ++i) {
    const std::string_view line = reply.line(i);
    require(line.find_first_of("\r\n") == std::string_view::npos);
    // Code, separator and LF at least around the text.
    require(line.size() + 5 <= kReplyLineOctetsMax || line.empty());
    least_octets += line.size() + 4;
  }
  require(reply.wire_octets() >= least_octets);
  if (reply.enhanced()) {
    const EnhancedStatus& e = *reply.enhanced();
    require(e.klass == reply.code() / 100 && (e.klass == 2 || e.klass == 4 || e.klass == 5));
    require(e.subject <= 999 && e.detail <= 999);
    const auto prefix = parse_enhanced_status(reply.line(0));
    require(prefix.has_value() && prefix->status == e);
  }
  const std::string wire = shortest_wire(reply);
  require(wire.size() <= reply.wire_octets());
  const Outcome again = parse_pieces({wire});
  require(again.error == ReplyError::none && again.replies.size() == 1 && !again.in_reply);
  const Reply& copy = again.replies[0];
  require(copy.code() == reply.code() && copy.enhanced() == reply.enhanced() &&
          copy.line_count() == reply.line_count());
  for (size_t i = 0; i < reply.line_count(); ++i) {
    require(copy.line(i) == reply.line(i));
  }
  check_ehlo(reply);
}

// `allowed`: which errors the input may cause; none means any.
void check_stream(std::string_view input, size_t cut, const std::vector<ReplyError>& allowed) {
  const Outcome whole = parse_pieces({input});
  require(parse_pieces({input.substr(0, cut), input.substr(cut)}) == whole);
  if (input.size() <= 1024) {
    std::vector<std::string_view> octets;
    for (size_t i = 0; i < input.size(); ++i) {
      octets.push_back(input.substr(i, 1));
    }
    require(parse_pieces(octets) == whole);
  }
  require(whole.consumed <= input.size());
  if (whole.error == ReplyError::none) {
    require(whole.consumed == input.size());
  }
  if (!allowed.empty() && whole.error != ReplyError::none) {
    require(std::find(allowed.begin(), allowed.end(), whole.error) != allowed.end());
  }
  for (const Reply& reply : whole.replies) {
    check_reply(reply);
  }
}

// How reply_shaped() stretches its input, from the first octet: so that every limit is reached.
struct Shape {
  size_t repeat = 1;          // 1 to 128: how many times each piece's text is repeated, or with
                              // long_replies how many lines each piece becomes
  bool long_replies = false;  // 20 to 147 lines per reply instead of about 4, lines also broken at
                              // kLongReplyBreaks (too_many_lines; reply_too_long without short_lines)
  bool mixed = false;         // now and then a line with another code (mixed_codes)
  bool short_lines = false;   // texts cut to kShortTextOctets (big replies of lines within the limit);
                              // with long_replies, texts not repeated (many short lines)
};

inline constexpr size_t kShortTextOctets = 1000;
inline constexpr std::string_view kLongReplyBreaks = "\n.: \t<>@=";
// With long_replies and without short_lines: lines of a few hundred octets, so that a reply
// outgrows kReplyOctetsMax before kReplyLinesMax.
inline constexpr size_t kLongReplyTextRepeat = 40;

// Rewrites the input into reply-shaped lines: each piece (split at LF, or kLongReplyBreaks; CRs
// removed) gets a code (the same within a reply unless `shape.mixed`), a continuation mark or not,
// and sometimes an enhanced code or an EHLO keyword, all chosen by the piece's first octet.
std::string reply_shaped(std::string_view input, const Shape& shape) {
  static constexpr uint16_t kCodes[] = {220, 250, 250, 250, 354, 421, 450, 550, 251, 334};
  static constexpr std::string_view kKeywords[] = {
      "PIPELINING",  "SIZE 10240000", "SIZE",     "size 0",   "8BITMIME", "AUTH PLAIN LOGIN",    "AUTH=LOGIN",
      "STARTTLS",    "DSN",           "CHUNKING", "smtputf8", "AUTH",     "ENHANCEDSTATUSCODES", "",
      "XCLIENT NAME"};
  const size_t text_repeat = shape.long_replies ? (shape.short_lines ? 1 : kLongReplyTextRepeat) : shape.repeat;
  const size_t line_repeat = shape.long_replies ? shape.repeat : 1;
  std::string out;
  uint16_t code = 0;
  size_t lines = 0;      // lines of the current reply so far
  size_t lines_end = 0;  // with long_replies: the current reply's length
  size_t at = 0;
  while (at < input.size()) {
    size_t end = shape.long_replies ? input.find_first_of(kLongReplyBreaks, at) : input.find('\n', at);
    if (end == std::string_view::npos) {
      end = input.size();
    }
    std::string piece;
    for (const char c : input.substr(at, end - at)) {
      if (c != '\r') {
        piece += c;
      }
    }
    at = end + 1;
    const auto b = static_cast<uint8_t>(piece.empty() ? 0 : piece[0]);
    std::string text;
    for (size_t i = 0; i < text_repeat; ++i) {
      text += piece;
    }
    if (shape.short_lines && text.size() > kShortTextOctets) {
      text.resize(kShortTextOctets);
    }
    if ((b & 8) != 0) {
      text = std::string(kKeywords[(b >> 4) % std::size(kKeywords)]) + text.substr(1);
    }
    for (size_t copy = 0; copy < line_repeat; ++copy) {
      if (code == 0) {
        code = kCodes[b % std::size(kCodes)];
        lines = 0;
        lines_end = 20 + b % 128;
      }
      ++lines;
      std::string line = text;
      if ((b & 4) != 0 && code / 100 != 3) {
        line = std::to_string(code / 100) + "." + std::to_string(b % 8) + "." + std::to_string(b) + " " + line;
      }
      const bool input_end = at >= input.size() && copy + 1 == line_repeat;
      const bool last = (shape.long_replies ? lines >= lines_end : (b & 3) == 0) || input_end;
      const bool other_code = shape.mixed && lines > 1 && b % 29 == 0;
      out += std::to_string(other_code ? code + 1 : code);
      out += last ? ' ' : '-';
      out += line;
      out += (b & 16) != 0 ? "\n" : "\r\n";
      if (last) {
        code = 0;
      }
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t cut = input.empty() ? 0 : (size_t{data[0]} * 257u) % (input.size() + 1);
  check_stream(input, cut, {});
  if ((data[0] & 1) != 0) {
    const Shape shape{.repeat = size_t{1} << (data[0] >> 5),
                      .long_replies = (data[0] & 2) != 0,
                      .mixed = (data[0] & 4) != 0,
                      .short_lines = (data[0] & 8) != 0};
    const std::string shaped = reply_shaped(input, shape);
    std::vector<ReplyError> allowed = {ReplyError::line_too_long, ReplyError::too_many_lines,
                                       ReplyError::reply_too_long};
    if (shape.mixed) {
      allowed.push_back(ReplyError::mixed_codes);
    }
    check_stream(shaped, (size_t{data[0]} * 257u) % (shaped.size() + 1), allowed);
  }
  return 0;
}
