#pragma once
// The SMTP reply parser (RFC 5321 section 4.2), for the client side: bytes from a server in, whole
// replies out. Sans-I/O and incremental: the caller feeds bytes as they arrive, split anywhere
// (inside a code, inside a CRLF), and gets the same replies in the same order whatever the split.
// Several pipelined replies in one buffer come out one per feed() call; the unfinished rest is
// carried in the parser (at most one reply in progress, so its memory is bounded by the limits
// below, whatever the server sends).
//
// The server is untrusted: every limit has a distinct error value, nothing is asserted on its
// bytes, and an error is final (the client closes with a 4xx-class "protocol error" outcome).
//
// Decisions where the RFC leaves room:
// * Line ends: CRLF, or a bare LF (as Postfix's smtp client tolerates; a reply is interpreted, never
//   relayed into a message, so there is nothing to smuggle, and refusing would turn a sloppy
//   server's 250 or 550 into a deferral). A CR not followed by LF is a protocol error: no real
//   server sends one, and reply text ends up in logs and DSNs.
// * Line length: RFC 5321 4.5.3.1.5 says 512 octets, but real servers (large mailbox providers'
//   5xx texts with URLs) send longer lines, and 4.5.3.1 asks to accept larger objects where
//   possible. Refusing them would turn a permanent 5xx into a 4xx protocol error and a retry loop.
//   So kReplyLineOctetsMax is 2,048, Postfix's line_length_limit default.
// * Code: the first digit must be 2-5 (RFC 5321 4.2 and 4.3.2: other first digits are fatal). The
//   grammar restricts the second digit to 0-5, but clients act on the first digit only (4.2.1), so
//   any second and third digit is accepted.
// * Enhanced status code (RFC 2034, RFC 3463): taken from the first line only, when it begins the
//   text and is followed by SP or the line end, and only when its class equals the reply code's
//   first digit: the reply code is authoritative (RFC 5321 4.2.1), and a mismatched code would
//   contradict it in a DSN. Otherwise the reply has none; this is never an error.
// * Text octets other than CR and LF are kept as sent (UTF-8 included): whoever logs them escapes.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/smtp/line_reader.h"

namespace sluice::smtp {

// The RFC's reply line limit (RFC 5321 4.5.3.1.5), for reference; see kReplyLineOctetsMax.
inline constexpr size_t kReplyLineOctetsRfc = 512;
// One reply line, its line end (CRLF or LF) included.
inline constexpr size_t kReplyLineOctetsMax = 2048;
// Lines in one reply. An EHLO reply has about a dozen; a greeting banner rarely more than 20.
inline constexpr size_t kReplyLinesMax = 100;
// Wire octets of one reply, line ends included. Below kReplyLinesMax x kReplyLineOctetsMax on
// purpose: a server may send a few long lines or many short ones, not both.
inline constexpr size_t kReplyOctetsMax = 16 * 1024;

// "4.7.1": class.subject.detail (RFC 3463 section 2: class 2, 4 or 5; subject and detail 1 to 3
// digits each).
struct EnhancedStatus {
  uint8_t klass = 0;
  uint16_t subject = 0;
  uint16_t detail = 0;

  std::string to_string() const;
  friend bool operator==(const EnhancedStatus&, const EnhancedStatus&) = default;
};

// Parses an enhanced status code at the start of `text`: it must be followed by SP or the end of
// `text`. Returns it and the octets it takes (without the SP), or nullopt.
struct EnhancedPrefix {
  EnhancedStatus status;
  size_t octets;
};
std::optional<EnhancedPrefix> parse_enhanced_status(std::string_view text);

// One complete reply.
class Reply {
 public:
  uint16_t code() const { return _code; }
  // From the first line; see the decisions above.
  const std::optional<EnhancedStatus>& enhanced() const { return _enhanced; }
  // A parsed reply has at least one line. A line's text is what follows "250-" or "250 " without the line end,
  // enhanced code included as sent; empty for a bare "250" or "250 ".
  size_t line_count() const { return _line_ends.size(); }
  std::string_view line(size_t index) const;
  // Wire octets, line ends included.
  size_t wire_octets() const { return _wire_octets; }

  friend bool operator==(const Reply&, const Reply&) = default;

 private:
  friend class ReplyParser;
  void clear();

  uint16_t _code = 0;
  std::optional<EnhancedStatus> _enhanced;
  std::string _text;                 // every line's text, one after another
  std::vector<uint32_t> _line_ends;  // offset in _text just past each line's text
  size_t _wire_octets = 0;
};

enum class ReplyError : uint8_t {
  none,
  bad_code,        // a line does not start with a code 200-599 and then SP, "-" or the line end
  mixed_codes,     // a line of a multi-line reply with a code other than the first line's
  bare_cr,         // a CR not followed by LF
  line_too_long,   // a line longer than kReplyLineOctetsMax
  too_many_lines,  // a reply longer than kReplyLinesMax lines
  reply_too_long,  // a reply longer than kReplyOctetsMax
};

// "bad_code", ...: for log lines.
std::string_view reply_error_name(ReplyError error);

enum class ReplyStop : uint8_t {
  need_more,  // every byte was consumed and no reply was completed
  reply,      // `consumed` ends just after the reply's last line end; ReplyParser::reply() holds it
  error,      // ReplyParser::error() says which; final
};

struct ReplyFeed {
  size_t consumed = 0;
  ReplyStop stop = ReplyStop::need_more;
  friend bool operator==(const ReplyFeed&, const ReplyFeed&) = default;
};

class ReplyParser {
 public:
  ReplyParser();

  // Parses the next piece of the server's byte stream, up to the end of the first reply it
  // completes. On `reply`, bytes after `consumed` are the next replies: feed them again (the
  // reply from this call is replaced by the next call). On `error`, `consumed` includes the octet
  // that proved it, and every later call consumes nothing and returns `error` again.
  ReplyFeed feed(std::string_view bytes);

  // Valid after feed() returned `reply`, until the next feed().
  const Reply& reply() const { return _reply; }
  ReplyError error() const { return _error; }
  // Whether a reply has begun but not ended (a server that closes now cut a reply short).
  bool in_reply() const { return _lines.in_line() || (!_reply_done && _reply.line_count() != 0); }

 private:
  // `line` is without its line end. Returns false (with _error set) when the line breaks a rule;
  // sets _reply_done at its last line.
  bool end_line(std::string_view line);
  ReplyFeed fail(ReplyError error, size_t consumed);

  Reply _reply;
  LineReader _lines;         // the client's line rules: bare LF ends a line, bare CR is an error at once
  bool _reply_done = false;  // _reply is complete: clear it before the next octet
  ReplyError _error = ReplyError::none;
};

}  // namespace sluice::smtp
