#pragma once
// The EHLO capability parser (RFC 5321 section 4.1.1.1): from a server's 250 reply to EHLO, the
// extensions the SMTP client acts on. A pure function of a parsed Reply (reply_parser.h).
//
// The first line names the server (its first word) and is never a capability. Every later line is
// ehlo-keyword *(SP ehlo-param); keywords are case-insensitive. Unknown keywords, lines that are not
// a keyword (smtp-sink's bare "250 " last line, stray text) and malformed parameters are ignored,
// never an error: an advertisement we cannot read is one we do not use. Postfix's smtp client does
// the same.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/smtp/reply_parser.h"

namespace sluice::smtp {

// RFC 4422 section 3.1: a SASL mechanism name is 1 to 20 characters of A-Z, 0-9, "-" and "_".
inline constexpr size_t kSaslMechanismOctetsMax = 20;
// Mechanisms kept from the AUTH lines; a real server offers a handful, later ones are dropped.
inline constexpr size_t kAuthMechanismsMax = 16;

struct EhloCapabilities {
  std::string domain;                        // the first word of the first line, as sent; may be empty
  bool pipelining = false;                   // RFC 2920
  bool size = false;                         // RFC 1870
  uint64_t size_octets_max = 0;              // with `size`: the fixed limit; 0 = none ("SIZE", "SIZE 0",
                                             // or a parameter that is not a decimal number in 64 bits)
  bool eight_bit_mime = false;               // RFC 6152
  bool enhanced_status_codes = false;        // RFC 2034
  bool smtputf8 = false;                     // RFC 6531
  bool chunking = false;                     // RFC 3030
  bool dsn = false;                          // RFC 3461
  bool starttls = false;                     // RFC 3207
  bool auth = false;                         // RFC 4954 ("AUTH mech..." or the old "AUTH=mech..." form)
  std::vector<std::string> auth_mechanisms;  // upper case, in the server's order, no duplicates,
                                             // only valid names, at most kAuthMechanismsMax

  friend bool operator==(const EhloCapabilities&, const EhloCapabilities&) = default;
};

// nullopt unless the reply's code is 250: a 5xx means the server does not do EHLO (fall back to
// HELO), anything else is the session's business.
std::optional<EhloCapabilities> parse_ehlo_reply(const Reply& reply);

}  // namespace sluice::smtp
