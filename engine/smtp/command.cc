// The SMTP command parser: turns one command line into a verb and argument, and MAIL / RCPT /
// BDAT arguments into checked values. It owns the address grammar (RFC 5321 section 4.1.2, RFC
// 6531 for UTF-8) and the ESMTP parameter rules (SIZE, BODY, SMTPUTF8, RFC 3461 DSN).
// It must never allocate, copy, or read outside the view it was given: it runs on every command
// of every session, on untrusted input. Replies for refused arguments are returned as values;
// the session decides what to send.
#include "engine/smtp/command.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

namespace sluice::smtp {
namespace {

constexpr ParseError kMailSyntax{501, "5.5.4", "Syntax: MAIL FROM:<address>"};
constexpr ParseError kRcptSyntax{501, "5.5.4", "Syntax: RCPT TO:<address>"};
constexpr ParseError kBdatSyntax{501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"};
constexpr ParseError kParamSyntax{501, "5.5.4", "Bad ESMTP parameter syntax"};
constexpr ParseError kUnsupportedParameter{555, "5.5.4", "Unsupported parameter"};
// Recognised but given twice: a syntax error in the parameters (501), not an unknown one (555).
constexpr ParseError kDuplicateParameter{501, "5.5.4", "Duplicate parameter"};
constexpr ParseError kBadSize{501, "5.5.4", "Bad SIZE parameter"};
// A SIZE too large for 64 bits is larger than any limit we could have: the same answer as a SIZE
// above max_message_size (DESIGN.md section 4).
constexpr ParseError kSizeOverflow{552, "5.3.4", "Message size exceeds fixed maximum message size",
                                   RejectReason::too_big};
constexpr ParseError kBadBody{501, "5.5.4", "Bad BODY parameter (7BIT or 8BITMIME)"};
constexpr ParseError kBadSmtputf8{501, "5.5.4", "SMTPUTF8 takes no value"};
constexpr ParseError kBadRet{501, "5.5.4", "Bad RET parameter (FULL or HDRS)"};
constexpr ParseError kBadEnvid{501, "5.5.4", "Bad ENVID parameter"};
constexpr ParseError kBadNotify{501, "5.5.4", "Bad NOTIFY parameter"};
constexpr ParseError kBadOrcpt{501, "5.5.4", "Bad ORCPT parameter"};
constexpr ParseError kBadSender{553, "5.1.7", "Bad sender address syntax"};
constexpr ParseError kBadRecipient{501, "5.1.3", "Bad recipient address syntax"};
constexpr ParseError kNonAsciiSender{553, "5.6.7", "Non-ASCII sender address requires SMTPUTF8",
                                     RejectReason::non_ascii_address};
constexpr ParseError kNonAsciiRecipient{553, "5.6.7", "Non-ASCII recipient address requires SMTPUTF8",
                                        RejectReason::non_ascii_address};
constexpr ParseError kSenderPathTooLong{501, "5.1.7", "Sender address too long (path over 256 octets)"};
constexpr ParseError kSenderLocalTooLong{501, "5.1.7", "Sender local part too long (over 64 octets)"};
constexpr ParseError kRecipientPathTooLong{501, "5.1.3", "Recipient address too long (path over 256 octets)"};
constexpr ParseError kRecipientLocalTooLong{501, "5.1.3", "Recipient local part too long (over 64 octets)"};

// The replies that differ between the two paths: a sender and a recipient. There is no
// "domain too long" reply: a path within 256 octets cannot hold a domain over 255.
struct PathErrors {
  const ParseError& bad_address;
  const ParseError& non_ascii;
  const ParseError& path_too_long;
  const ParseError& local_too_long;
};
constexpr PathErrors kSenderErrors{kBadSender, kNonAsciiSender, kSenderPathTooLong, kSenderLocalTooLong};
constexpr PathErrors kRecipientErrors{kBadRecipient, kNonAsciiRecipient, kRecipientPathTooLong, kRecipientLocalTooLong};

// IPv6 text is at most 45 characters (INET6_ADDRSTRLEN - 1); longer is not an address.
constexpr size_t kIpv6TextOctetsMax = INET6_ADDRSTRLEN - 1;
constexpr std::string_view kIpv6Tag = "IPv6:";
constexpr std::string_view kPostmaster = "postmaster";

constexpr bool is_alpha(unsigned char c) {
  return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
constexpr bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
constexpr bool is_let_dig(unsigned char c) {
  return is_alpha(c) || is_digit(c);
}
constexpr bool is_upper_hex(unsigned char c) {
  return is_digit(c) || (c >= 'A' && c <= 'F');
}

// RFC 5322 atext, as RFC 5321 uses it for Dot-string.
constexpr bool is_atext(unsigned char c) {
  if (is_let_dig(c)) {
    return true;
  }
  constexpr std::string_view kSpecials = "!#$%&'*+-/=?^_`{|}~";
  return kSpecials.find(static_cast<char>(c)) != std::string_view::npos;
}

// Case-insensitive equality against an ASCII literal.
constexpr bool iequals(std::string_view text, std::string_view literal) {
  if (text.size() != literal.size()) {
    return false;
  }
  for (size_t i = 0; i < text.size(); ++i) {
    const auto a = static_cast<unsigned char>(text[i]);
    const auto b = static_cast<unsigned char>(literal[i]);
    if (a != b && !(is_alpha(a) && (a | 0x20) == (b | 0x20))) {
      return false;
    }
  }
  return true;
}

constexpr bool istarts_with(std::string_view text, std::string_view literal) {
  return text.size() >= literal.size() && iequals(text.substr(0, literal.size()), literal);
}

bool has_non_ascii(std::string_view text) {
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      return true;
    }
  }
  return false;
}

// Length of the well-formed UTF-8 sequence (RFC 3629 section 4) of a non-ASCII character at
// `text[at]`, or 0 if it is malformed (overlong, surrogate, above U+10FFFF, truncated).
size_t utf8_sequence_octets(std::string_view text, size_t at) {
  const auto byte = [&](size_t i) -> unsigned { return static_cast<unsigned char>(text[i]); };
  const auto in = [](unsigned c, unsigned low, unsigned high) { return c >= low && c <= high; };
  const unsigned lead = byte(at);
  size_t octets = 0;
  unsigned second_low = 0x80;
  unsigned second_high = 0xBF;
  if (in(lead, 0xC2, 0xDF)) {
    octets = 2;
  } else if (in(lead, 0xE0, 0xEF)) {
    octets = 3;
    second_low = lead == 0xE0 ? 0xA0 : 0x80;
    second_high = lead == 0xED ? 0x9F : 0xBF;
  } else if (in(lead, 0xF0, 0xF4)) {
    octets = 4;
    second_low = lead == 0xF0 ? 0x90 : 0x80;
    second_high = lead == 0xF4 ? 0x8F : 0xBF;
  } else {
    return 0;
  }
  if (text.size() - at < octets || !in(byte(at + 1), second_low, second_high)) {
    return 0;
  }
  for (size_t i = 2; i < octets; ++i) {
    if (!in(byte(at + i), 0x80, 0xBF)) {
      return 0;
    }
  }
  return octets;
}

// Snum "." Snum "." Snum "." Snum, each 1 to 3 digits, at most 255.
bool valid_ipv4_literal(std::string_view text) {
  int parts = 0;
  size_t i = 0;
  while (true) {
    unsigned value = 0;
    size_t digits = 0;
    while (i < text.size() && is_digit(text[i]) && digits < 3) {
      value = value * 10 + static_cast<unsigned>(text[i] - '0');
      ++digits;
      ++i;
    }
    if (digits == 0 || value > 255) {
      return false;
    }
    ++parts;
    if (i == text.size()) {
      return parts == 4;
    }
    if (text[i] != '.' || parts == 4) {
      return false;
    }
    ++i;
  }
}

bool valid_ipv6_literal(std::string_view text) {
  if (text.empty() || text.size() > kIpv6TextOctetsMax) {
    return false;
  }
  // Only these characters can be in an IPv6 address; checking them first also keeps a NUL from
  // ending the copy early for inet_pton.
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (!(is_digit(u) || ((u | 0x20) >= 'a' && (u | 0x20) <= 'f') || c == ':' || c == '.')) {
      return false;
    }
  }
  std::array<char, kIpv6TextOctetsMax + 1> buffer{};
  std::memcpy(buffer.data(), text.data(), text.size());
  in6_addr address{};
  return inet_pton(AF_INET6, buffer.data(), &address) == 1;
}

// "[" IPv4 "]" or "[IPv6:" IPv6 "]". General address literals ("[tag:...]") are refused: we could
// not route to them.
bool valid_address_literal(std::string_view text) {
  if (text.size() < 2 || text.front() != '[' || text.back() != ']') {
    return false;
  }
  const std::string_view inner = text.substr(1, text.size() - 2);
  if (istarts_with(inner, kIpv6Tag)) {
    return valid_ipv6_literal(inner.substr(kIpv6Tag.size()));
  }
  return valid_ipv4_literal(inner);
}

// sub-domain = Let-dig [Ldh-str]; with UTF-8, a non-ASCII character counts as a letter (U-label).
bool valid_label(std::string_view label, bool utf8_allowed) {
  if (label.empty() || label.size() > kDomainLabelOctetsMax) {
    return false;
  }
  if (label.front() == '-' || label.back() == '-') {
    return false;
  }
  size_t i = 0;
  while (i < label.size()) {
    const auto c = static_cast<unsigned char>(label[i]);
    if (c < 0x80) {
      if (!is_let_dig(c) && c != '-') {
        return false;
      }
      ++i;
      continue;
    }
    const size_t octets = utf8_allowed ? utf8_sequence_octets(label, i) : 0;
    if (octets == 0) {
      return false;
    }
    i += octets;
  }
  return true;
}

// Atom *("." Atom), atext (plus UTF-8 when allowed).
bool valid_dot_string(std::string_view text, bool utf8_allowed) {
  bool atom_empty = true;
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '.') {
      if (atom_empty) {
        return false;
      }
      atom_empty = true;
      ++i;
      continue;
    }
    if (c < 0x80) {
      if (!is_atext(c)) {
        return false;
      }
      ++i;
    } else {
      const size_t octets = utf8_allowed ? utf8_sequence_octets(text, i) : 0;
      if (octets == 0) {
        return false;
      }
      i += octets;
    }
    atom_empty = false;
  }
  return !atom_empty;
}

// DQUOTE *(qtextSMTP / quoted-pairSMTP) DQUOTE, the closing quote last.
bool valid_quoted_string(std::string_view text, bool utf8_allowed) {
  if (text.size() < 2 || text.front() != '"') {
    return false;
  }
  size_t i = 1;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '"') {
      return i == text.size() - 1;
    }
    if (c == '\\') {
      if (i + 1 >= text.size()) {
        return false;
      }
      const auto escaped = static_cast<unsigned char>(text[i + 1]);
      if (escaped < 32 || escaped > 126) {
        return false;
      }
      i += 2;
      continue;
    }
    if (c < 0x80) {
      // qtextSMTP: %d32-33 / %d35-91 / %d93-126 (the quote and backslash are handled above).
      if (c < 32 || c > 126) {
        return false;
      }
      ++i;
      continue;
    }
    const size_t octets = utf8_allowed ? utf8_sequence_octets(text, i) : 0;
    if (octets == 0) {
      return false;
    }
    i += octets;
  }
  return false;
}

bool valid_local_part(std::string_view local, bool utf8_allowed) {
  if (local.empty() || local.size() > kLocalPartOctetsMax) {
    return false;
  }
  if (local.front() == '"') {
    return valid_quoted_string(local, utf8_allowed);
  }
  return valid_dot_string(local, utf8_allowed);
}

// Where the "@" that separates local part and domain is: the last one, since a domain never
// holds "@" but a quoted local part may.
size_t domain_separator(std::string_view mailbox) {
  return mailbox.rfind('@');
}

// xtext (RFC 3461 section 4): printable ASCII except "+" and "=", and "+" HEXCHAR HEXCHAR.
bool valid_xtext(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '+') {
      if (text.size() - i < 3 || !is_upper_hex(text[i + 1]) || !is_upper_hex(text[i + 2])) {
        return false;
      }
      i += 3;
      continue;
    }
    if (c < 33 || c > 126 || c == '=') {
      return false;
    }
    ++i;
  }
  return true;
}

// 1*DIGIT into 64 bits; nullopt on no digits, a non-digit, or overflow. `overflowed` tells the
// last case apart.
std::optional<uint64_t> parse_decimal(std::string_view text, bool& overflowed) {
  overflowed = false;
  if (text.empty()) {
    return std::nullopt;
  }
  uint64_t value = 0;
  for (const char c : text) {
    if (!is_digit(c)) {
      return std::nullopt;
    }
    const auto digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
      overflowed = true;
      return std::nullopt;
    }
    value = value * 10 + digit;
  }
  return value;
}

// NOTIFY=NEVER, or a comma list of SUCCESS, FAILURE, DELAY, each at most once (RFC 3461 4.1):
// the kNotify* bits, or 0 when invalid.
uint8_t parse_notify(std::string_view value) {
  if (iequals(value, "NEVER")) {
    return kNotifyNever;
  }
  constexpr std::array<std::string_view, 3> kConditions = {"SUCCESS", "FAILURE", "DELAY"};
  constexpr std::array<uint8_t, 3> kBits = {kNotifySuccess, kNotifyFailure, kNotifyDelay};
  uint8_t seen = 0;
  size_t start = 0;
  while (true) {
    const size_t comma = value.find(',', start);
    const std::string_view item =
        value.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    bool matched = false;
    for (size_t i = 0; i < kConditions.size(); ++i) {
      if (iequals(item, kConditions[i])) {
        if ((seen & kBits[i]) != 0) {
          return 0;
        }
        seen |= kBits[i];
        matched = true;
      }
    }
    if (!matched) {
      return 0;
    }
    if (comma == std::string_view::npos) {
      return seen;
    }
    start = comma + 1;
  }
}

// ORCPT=addr-type ";" xtext (RFC 3461 4.2); addr-type is an atom ("rfc822", "utf-8", ...).
bool valid_orcpt(std::string_view value) {
  if (value.size() > kOrcptOctetsMax) {
    return false;
  }
  const size_t semicolon = value.find(';');
  if (semicolon == std::string_view::npos || semicolon == 0 || semicolon + 1 == value.size()) {
    return false;
  }
  const std::string_view addr_type = value.substr(0, semicolon);
  if (!is_let_dig(addr_type.front())) {
    return false;
  }
  for (const char c : addr_type) {
    if (!is_let_dig(c) && c != '-') {
      return false;
    }
  }
  return valid_xtext(value.substr(semicolon + 1));
}

// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
bool valid_keyword(std::string_view keyword) {
  if (keyword.empty() || !is_let_dig(keyword.front())) {
    return false;
  }
  for (const char c : keyword) {
    if (!is_let_dig(c) && c != '-') {
      return false;
    }
  }
  return true;
}

// esmtp-value = 1*(%d33-60 / %d62-126); UTF-8 is never valid in a parameter we know.
bool valid_value(std::string_view value) {
  if (value.empty()) {
    return false;
  }
  for (const char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 33 || u > 126 || c == '=') {
      return false;
    }
  }
  return true;
}

struct EsmtpParam {
  std::string_view keyword;
  std::string_view value;
  bool has_value;
};

// Walks the space-separated parameters after a path. Repeated spaces and trailing spaces are
// tolerated, as Postfix does.
class ParamReader {
 public:
  explicit ParamReader(std::string_view text) : _text(text) {}

  // Next parameter, or nullopt at the end. Sets `syntax_error` for a malformed one.
  std::optional<EsmtpParam> next(bool& syntax_error) {
    syntax_error = false;
    while (_at < _text.size() && _text[_at] == ' ') {
      ++_at;
    }
    if (_at == _text.size()) {
      return std::nullopt;
    }
    const size_t end = std::min(_text.find(' ', _at), _text.size());
    const std::string_view token = _text.substr(_at, end - _at);
    _at = end;
    const size_t equals = token.find('=');
    EsmtpParam param{token.substr(0, equals), {}, equals != std::string_view::npos};
    if (param.has_value) {
      param.value = token.substr(equals + 1);
    }
    if (!valid_keyword(param.keyword) || (param.has_value && !valid_value(param.value))) {
      syntax_error = true;
    }
    return param;
  }

 private:
  std::string_view _text;
  size_t _at = 0;
};

struct PathSplit {
  std::string_view path;    // "<...>" with the brackets
  std::string_view params;  // what follows the path, starting with a space, or empty
};

// Finds the path after "FROM:" / "TO:": skips spaces after the colon (Postfix tolerates them),
// requires "<", and finds the closing ">" outside any quoted string.
std::optional<PathSplit> split_path(std::string_view after_colon) {
  size_t i = 0;
  while (i < after_colon.size() && after_colon[i] == ' ') {
    ++i;
  }
  if (i == after_colon.size() || after_colon[i] != '<') {
    return std::nullopt;
  }
  const size_t open = i;
  bool quoted = false;
  for (++i; i < after_colon.size(); ++i) {
    const char c = after_colon[i];
    if (quoted && c == '\\') {
      ++i;  // the escaped character, whatever it is
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == '>' && !quoted) {
      const std::string_view rest = after_colon.substr(i + 1);
      if (!rest.empty() && rest.front() != ' ') {
        return std::nullopt;
      }
      return PathSplit{after_colon.substr(open, i + 1 - open), rest};
    }
  }
  return std::nullopt;
}

// Strips a source route ("@a,@b:") from the text inside the brackets; its domains must be valid,
// then it is ignored (RFC 5321 section 4.1.2, appendix C). nullopt if it is malformed.
std::optional<std::string_view> strip_source_route(std::string_view inner, bool utf8_allowed) {
  if (inner.empty() || inner.front() != '@') {
    return inner;
  }
  size_t i = 0;
  while (i < inner.size() && inner[i] == '@') {
    const size_t start = i + 1;
    size_t end = start;
    if (end < inner.size() && inner[end] == '[') {
      end = inner.find(']', end);
      if (end == std::string_view::npos) {
        return std::nullopt;
      }
      ++end;
    } else {
      while (end < inner.size() && inner[end] != ',' && inner[end] != ':') {
        ++end;
      }
    }
    if (end == inner.size() || !valid_domain(inner.substr(start, end - start), utf8_allowed)) {
      return std::nullopt;
    }
    if (inner[end] == ':') {
      return inner.substr(end + 1);
    }
    if (inner[end] != ',') {
      return std::nullopt;
    }
    i = end + 1;
  }
  return std::nullopt;
}

// Checks a path's mailbox: lengths first (so the client learns which limit it hit), then the
// character set, then the grammar. Returns the mailbox without brackets and source route.
std::variant<std::string_view, ParseError> check_path(std::string_view path, bool utf8_allowed, bool null_allowed,
                                                      bool postmaster_allowed, const PathErrors& errors) {
  if (path.size() > kPathOctetsMax) {
    return errors.path_too_long;
  }
  const std::string_view inner = path.substr(1, path.size() - 2);
  if (inner.empty()) {
    if (null_allowed) {
      return inner;
    }
    return errors.bad_address;
  }
  if (!utf8_allowed && has_non_ascii(inner)) {
    return errors.non_ascii;
  }
  if (postmaster_allowed && iequals(inner, kPostmaster)) {
    return inner;
  }
  const std::optional<std::string_view> mailbox = strip_source_route(inner, utf8_allowed);
  if (!mailbox) {
    return errors.bad_address;
  }
  const size_t at = domain_separator(*mailbox);
  if (at == std::string_view::npos) {
    return errors.bad_address;
  }
  if (at > kLocalPartOctetsMax) {
    return errors.local_too_long;
  }
  if (!valid_mailbox(*mailbox, utf8_allowed)) {
    return errors.bad_address;
  }
  return *mailbox;
}

// The MAIL parameters we know, as bits for duplicate detection.
enum MailParamBit : unsigned {
  kMailSize = 1u << 0,
  kMailBody = 1u << 1,
  kMailSmtputf8 = 1u << 2,
  kMailRet = 1u << 3,
  kMailEnvid = 1u << 4,
};

// Applies one MAIL parameter to `mail`; nullopt when it is fine.
std::optional<ParseError> apply_mail_param(const EsmtpParam& param, bool smtputf8_allowed_by_us, unsigned& seen,
                                           MailFrom& mail) {
  const auto first_time = [&seen](unsigned bit) {
    const bool first = (seen & bit) == 0;
    seen |= bit;
    return first;
  };
  if (iequals(param.keyword, "SIZE")) {
    if (!first_time(kMailSize)) {
      return kDuplicateParameter;
    }
    bool overflowed = false;
    mail.size = parse_decimal(param.value, overflowed);
    if (overflowed) {
      return kSizeOverflow;
    }
    if (!mail.size) {
      return kBadSize;
    }
    return std::nullopt;
  }
  if (iequals(param.keyword, "BODY")) {
    if (!first_time(kMailBody)) {
      return kDuplicateParameter;
    }
    if (iequals(param.value, "7BIT")) {
      mail.body = MailFrom::Body::seven_bit;
    } else if (iequals(param.value, "8BITMIME")) {
      mail.body = MailFrom::Body::eight_bit_mime;
    } else {
      return kBadBody;
    }
    return std::nullopt;
  }
  if (iequals(param.keyword, "SMTPUTF8")) {
    if (!smtputf8_allowed_by_us) {
      return kUnsupportedParameter;
    }
    if (!first_time(kMailSmtputf8)) {
      return kDuplicateParameter;
    }
    if (param.has_value) {
      return kBadSmtputf8;
    }
    mail.smtputf8 = true;
    return std::nullopt;
  }
  if (iequals(param.keyword, "RET")) {
    if (!first_time(kMailRet)) {
      return kDuplicateParameter;
    }
    if (!iequals(param.value, "FULL") && !iequals(param.value, "HDRS")) {
      return kBadRet;
    }
    mail.ret = param.value;
    mail.ret_kind = iequals(param.value, "FULL") ? DsnRet::full : DsnRet::hdrs;
    return std::nullopt;
  }
  if (iequals(param.keyword, "ENVID")) {
    if (!first_time(kMailEnvid)) {
      return kDuplicateParameter;
    }
    if (param.value.empty() || param.value.size() > kEnvidOctetsMax || !valid_xtext(param.value)) {
      return kBadEnvid;
    }
    mail.envid = param.value;
    return std::nullopt;
  }
  return kUnsupportedParameter;
}

enum RcptParamBit : unsigned {
  kRcptNotify = 1u << 0,
  kRcptOrcpt = 1u << 1,
};

std::optional<ParseError> apply_rcpt_param(const EsmtpParam& param, unsigned& seen, RcptTo& rcpt) {
  const auto first_time = [&seen](unsigned bit) {
    const bool first = (seen & bit) == 0;
    seen |= bit;
    return first;
  };
  if (iequals(param.keyword, "NOTIFY")) {
    if (!first_time(kRcptNotify)) {
      return kDuplicateParameter;
    }
    rcpt.notify_flags = parse_notify(param.value);
    if (rcpt.notify_flags == 0) {
      return kBadNotify;
    }
    rcpt.notify = param.value;
    return std::nullopt;
  }
  if (iequals(param.keyword, "ORCPT")) {
    if (!first_time(kRcptOrcpt)) {
      return kDuplicateParameter;
    }
    if (!valid_orcpt(param.value)) {
      return kBadOrcpt;
    }
    rcpt.orcpt = param.value;
    return std::nullopt;
  }
  return kUnsupportedParameter;
}

// Verbs are four letters except STARTTLS. Folding with | 0x20 is exact here: the only bytes
// that fold onto a lowercase letter are that letter and its uppercase form.
constexpr uint32_t pack4(const char* text) {
  return static_cast<uint32_t>(static_cast<unsigned char>(text[0])) |
         static_cast<uint32_t>(static_cast<unsigned char>(text[1])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(text[2])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(text[3])) << 24;
}
constexpr uint32_t kFold4 = 0x20202020;

struct VerbName {
  uint32_t packed;
  Verb verb;
};
constexpr std::array<VerbName, 17> kFourLetterVerbs = {{
    {pack4("ehlo"), Verb::ehlo},
    {pack4("helo"), Verb::helo},
    {pack4("mail"), Verb::mail},
    {pack4("rcpt"), Verb::rcpt},
    {pack4("data"), Verb::data},
    {pack4("bdat"), Verb::bdat},
    {pack4("rset"), Verb::rset},
    {pack4("noop"), Verb::noop},
    {pack4("quit"), Verb::quit},
    {pack4("vrfy"), Verb::vrfy},
    {pack4("expn"), Verb::expn},
    {pack4("help"), Verb::help},
    {pack4("turn"), Verb::turn},
    {pack4("send"), Verb::send},
    {pack4("soml"), Verb::soml},
    {pack4("saml"), Verb::saml},
    {pack4("auth"), Verb::auth},
}};

Verb match_verb(std::string_view name) {
  if (name.size() == 4) {
    const uint32_t folded = pack4(name.data()) | kFold4;
    for (const VerbName& entry : kFourLetterVerbs) {
      if (entry.packed == folded) {
        return entry.verb;
      }
    }
    return Verb::unknown;
  }
  if (iequals(name, "STARTTLS")) {
    return Verb::starttls;
  }
  return Verb::unknown;
}

}  // namespace

CommandLine parse_command_line(std::string_view line_without_crlf) {
  std::string_view line = line_without_crlf;
  if (line.size() >= 2 && line.substr(line.size() - 2) == "\r\n") {
    line.remove_suffix(2);
  }
  const size_t space = line.find(' ');
  if (space == std::string_view::npos) {
    return CommandLine{match_verb(line), {}};
  }
  return CommandLine{match_verb(line.substr(0, space)), line.substr(space + 1)};
}

std::variant<MailFrom, ParseError> parse_mail_from(std::string_view argument, bool smtputf8_allowed_by_us) {
  constexpr std::string_view kFrom = "FROM:";
  if (!istarts_with(argument, kFrom)) {
    return kMailSyntax;
  }
  const std::optional<PathSplit> split = split_path(argument.substr(kFrom.size()));
  if (!split) {
    return kMailSyntax;
  }
  MailFrom mail{};
  unsigned seen = 0;
  ParamReader reader(split->params);
  bool syntax_error = false;
  while (const std::optional<EsmtpParam> param = reader.next(syntax_error)) {
    if (syntax_error) {
      return kParamSyntax;
    }
    if (const auto error = apply_mail_param(*param, smtputf8_allowed_by_us, seen, mail)) {
      return *error;
    }
  }
  const auto path = check_path(split->path, mail.smtputf8, /*null_allowed=*/true,
                               /*postmaster_allowed=*/false, kSenderErrors);
  if (const auto* error = std::get_if<ParseError>(&path)) {
    return *error;
  }
  mail.reverse_path = std::get<std::string_view>(path);
  return mail;
}

std::variant<RcptTo, ParseError> parse_rcpt_to(std::string_view argument, bool smtputf8_transaction) {
  constexpr std::string_view kTo = "TO:";
  if (!istarts_with(argument, kTo)) {
    return kRcptSyntax;
  }
  const std::optional<PathSplit> split = split_path(argument.substr(kTo.size()));
  if (!split) {
    return kRcptSyntax;
  }
  RcptTo rcpt{};
  unsigned seen = 0;
  ParamReader reader(split->params);
  bool syntax_error = false;
  while (const std::optional<EsmtpParam> param = reader.next(syntax_error)) {
    if (syntax_error) {
      return kParamSyntax;
    }
    if (const auto error = apply_rcpt_param(*param, seen, rcpt)) {
      return *error;
    }
  }
  const auto path = check_path(split->path, smtputf8_transaction, /*null_allowed=*/false,
                               /*postmaster_allowed=*/true, kRecipientErrors);
  if (const auto* error = std::get_if<ParseError>(&path)) {
    return *error;
  }
  rcpt.forward_path = std::get<std::string_view>(path);
  return rcpt;
}

std::variant<BdatArgs, ParseError> parse_bdat(std::string_view argument) {
  const size_t space = argument.find(' ');
  const std::string_view size_text = argument.substr(0, space);
  bool overflowed = false;
  const std::optional<uint64_t> octets = parse_decimal(size_text, overflowed);
  if (!octets) {
    return kBdatSyntax;
  }
  BdatArgs args{*octets, false};
  if (space == std::string_view::npos) {
    return args;
  }
  std::string_view rest = argument.substr(space + 1);
  while (!rest.empty() && rest.back() == ' ') {
    rest.remove_suffix(1);
  }
  if (rest.empty()) {
    return args;
  }
  if (!iequals(rest, "LAST")) {
    return kBdatSyntax;
  }
  args.last = true;
  return args;
}

bool valid_domain(std::string_view domain, bool utf8_allowed) {
  if (domain.empty() || domain.size() > kDomainOctetsMax) {
    return false;
  }
  if (domain.front() == '[') {
    return valid_address_literal(domain);
  }
  size_t start = 0;
  while (true) {
    const size_t dot = domain.find('.', start);
    const std::string_view label =
        domain.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (!valid_label(label, utf8_allowed)) {
      return false;
    }
    if (dot == std::string_view::npos) {
      return true;
    }
    start = dot + 1;
  }
}

bool valid_mailbox(std::string_view address, bool utf8_allowed) {
  // As a path, the mailbox gets its two angle brackets.
  if (address.size() + 2 > kPathOctetsMax) {
    return false;
  }
  const size_t at = domain_separator(address);
  if (at == std::string_view::npos) {
    return false;
  }
  return valid_local_part(address.substr(0, at), utf8_allowed) && valid_domain(address.substr(at + 1), utf8_allowed);
}

std::string_view domain_of(std::string_view mailbox) {
  const size_t at = domain_separator(mailbox);
  if (at == std::string_view::npos) {
    return {};
  }
  return mailbox.substr(at + 1);
}

bool valid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t octets = utf8_sequence_octets(text, i);
    if (octets == 0) {
      return false;
    }
    i += octets;
  }
  return true;
}

}  // namespace sluice::smtp
