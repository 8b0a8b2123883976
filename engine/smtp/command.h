// SMTP command-line parsing: verbs, MAIL FROM / RCPT TO paths with their ESMTP parameters, BDAT
// arguments, and the address syntax of RFC 5321 section 4.1.2 (with the RFC 6531 UTF-8 extension).
//
// Everything here is a pure function over a string_view: no allocation, no copies. Every
// string_view in a result points into the caller's input, so the input must outlive the result.
// Line length limits and bare CR / LF are the session's business (the line splitter enforces
// them before a line reaches this parser).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <variant>

#include "engine/smtp/replies.h"

namespace sluice::smtp {

// RFC 5321 section 4.5.3.1: limits on the parts of an address, in octets.
inline constexpr size_t kLocalPartOctetsMax = 64;
inline constexpr size_t kDomainOctetsMax = 255;
// A path is "<" [source route ":"] mailbox ">": the limit counts the angle brackets.
inline constexpr size_t kPathOctetsMax = 256;
// RFC 1035 section 2.3.4: one label of a domain.
inline constexpr size_t kDomainLabelOctetsMax = 63;
// RFC 3461 section 4.4 and 4.2: ENVID at most 100 characters, ORCPT at most 500.
inline constexpr size_t kEnvidOctetsMax = 100;
inline constexpr size_t kOrcptOctetsMax = 500;

// DSN parameters decoded (RFC 3461): RET= of MAIL, NOTIFY= of RCPT as bits. The values are the
// spool's on-disk ones (spool/format.h; the shard checks they agree).
enum class DsnRet : uint8_t { none = 0, full = 1, hdrs = 2 };
inline constexpr uint8_t kNotifyNever = 1u << 0;
inline constexpr uint8_t kNotifySuccess = 1u << 1;
inline constexpr uint8_t kNotifyFailure = 1u << 2;
inline constexpr uint8_t kNotifyDelay = 1u << 3;

enum class Verb : uint8_t {
  ehlo,
  helo,
  mail,
  rcpt,
  data,
  bdat,
  rset,
  noop,
  quit,
  vrfy,
  expn,
  help,
  turn,
  send,
  soml,
  saml,
  starttls,
  auth,
  unknown,
};

struct CommandLine {
  Verb verb;
  // The text after the verb and one space ("FROM:<a@b> SIZE=10" for MAIL); empty when the verb
  // stands alone.
  std::string_view argument;
};

// Splits a command line (without its CRLF; a trailing CRLF is removed if present) into verb and
// argument. Verbs are matched case-insensitively; a verb must be followed by a space or the end of
// the line, so "MAILX" and "MAIL\t" are Verb::unknown.
CommandLine parse_command_line(std::string_view line_without_crlf);

// What the session replies when an argument is refused. `enhanced` is the RFC 3463 status code.
struct ParseError {
  uint16_t code;
  std::string_view enhanced;
  std::string_view text;
  RejectReason reason = RejectReason::syntax;  // what the session logs and counts
};

struct MailFrom {
  // The mailbox without "<>" and without any source route; empty for the null sender "<>".
  std::string_view reverse_path;
  std::optional<uint64_t> size;
  enum class Body : uint8_t { unspecified, seven_bit, eight_bit_mime } body = Body::unspecified;
  bool smtputf8 = false;
  // DSN parameters (RFC 3461), validated and kept as sent (ENVID still xtext-encoded).
  std::string_view ret;            // "FULL" or "HDRS" in the client's case, or empty
  std::string_view envid;          // xtext, or empty
  DsnRet ret_kind = DsnRet::none;  // `ret` decoded
};

struct RcptTo {
  // The mailbox without "<>" and without any source route; may be "postmaster" with no domain.
  std::string_view forward_path;
  // DSN parameters (RFC 3461), validated and kept as sent.
  std::string_view notify;   // "NEVER" or a comma list of SUCCESS, FAILURE, DELAY; or empty
  std::string_view orcpt;    // "addr-type;xtext", or empty
  uint8_t notify_flags = 0;  // `notify` decoded: kNotify* bits, 0 when not given
};

struct BdatArgs {
  uint64_t chunk_octets;
  bool last;
};

// `argument` is CommandLine::argument of a MAIL command: "FROM:<path> [params]". SMTPUTF8 is
// accepted only when `smtputf8_allowed_by_us` (we advertised it); a non-ASCII sender needs it.
std::variant<MailFrom, ParseError> parse_mail_from(std::string_view argument, bool smtputf8_allowed_by_us);

// `argument` is CommandLine::argument of a RCPT command: "TO:<path> [params]".
// `smtputf8_transaction` is MailFrom::smtputf8 of the transaction: it allows a non-ASCII
// recipient (RFC 6531 section 3.4).
std::variant<RcptTo, ParseError> parse_rcpt_to(std::string_view argument, bool smtputf8_transaction = false);

// `argument` is CommandLine::argument of a BDAT command: "chunk-size [LAST]" (RFC 3030).
std::variant<BdatArgs, ParseError> parse_bdat(std::string_view argument);

// Domain or address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]"), as allowed after "@" in a
// mailbox and as the EHLO argument. With `utf8_allowed`, labels may hold UTF-8 (U-labels).
bool valid_domain(std::string_view domain, bool utf8_allowed = false);

// Local-part "@" (Domain / address-literal), within the RFC 5321 length limits. The local part
// may be a quoted string. Without `utf8_allowed`, every octet must be ASCII.
bool valid_mailbox(std::string_view address, bool utf8_allowed);

// Whether every octet is ASCII or part of a well-formed UTF-8 sequence (RFC 3629).
bool valid_utf8(std::string_view text);

// The text after the last "@" (a quoted local part may itself hold "@"); empty if there is none.
std::string_view domain_of(std::string_view mailbox);

}  // namespace sluice::smtp
