// The EHLO capability parser: see ehlo_capabilities.h. It reads only the Reply it is given, keeps
// at most kAuthMechanismsMax mechanism names, and treats everything it does not understand as an
// extension that was not offered.
#include "engine/smtp/ehlo_capabilities.h"

#include <algorithm>
#include <string_view>

#include "engine/io/strings.h"

namespace sluice::smtp {
namespace {

bool is_alnum(char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
bool valid_keyword(std::string_view word) {
  if (word.empty() || !is_alnum(word[0])) {
    return false;
  }
  return std::all_of(word.begin(), word.end(), [](char c) { return is_alnum(c) || c == '-'; });
}

bool valid_sasl_mechanism(std::string_view name) {
  if (name.empty() || name.size() > kSaslMechanismOctetsMax) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) { return is_alnum(c) || c == '-' || c == '_'; });
}

bool is_blank(char c) {
  return c == ' ' || c == '\t';
}

// The next word of `rest` (words are separated by runs of SP or HTAB, which servers mix up).
std::string_view next_word(std::string_view& rest) {
  size_t begin = 0;
  while (begin < rest.size() && is_blank(rest[begin])) {
    ++begin;
  }
  size_t end = begin;
  while (end < rest.size() && !is_blank(rest[end])) {
    ++end;
  }
  const std::string_view word = rest.substr(begin, end - begin);
  rest.remove_prefix(end);
  return word;
}

void add_mechanism(EhloCapabilities& caps, std::string_view name) {
  if (!valid_sasl_mechanism(name) || caps.auth_mechanisms.size() >= kAuthMechanismsMax) {
    return;
  }
  std::string upper(name);
  for (char& c : upper) {
    if (c >= 'a' && c <= 'z') {
      c = static_cast<char>(c - 'a' + 'A');
    }
  }
  if (std::find(caps.auth_mechanisms.begin(), caps.auth_mechanisms.end(), upper) == caps.auth_mechanisms.end()) {
    caps.auth_mechanisms.push_back(std::move(upper));
  }
}

void add_mechanisms(EhloCapabilities& caps, std::string_view params) {
  caps.auth = true;
  for (std::string_view name = next_word(params); !name.empty(); name = next_word(params)) {
    add_mechanism(caps, name);
  }
}

void parse_line(EhloCapabilities& caps, std::string_view line) {
  std::string_view rest = line;
  const std::string_view keyword = next_word(rest);
  // The pre-RFC 4954 form "AUTH=LOGIN PLAIN" (Postfix's broken_sasl_auth_clients adds it).
  if (keyword.size() > 5 && equals_ignore_case(keyword.substr(0, 5), "AUTH=")) {
    add_mechanism(caps, keyword.substr(5));
    add_mechanisms(caps, rest);
    return;
  }
  if (!valid_keyword(keyword)) {
    return;
  }
  if (equals_ignore_case(keyword, "PIPELINING")) {
    caps.pipelining = true;
  } else if (equals_ignore_case(keyword, "SIZE")) {
    caps.size = true;
    uint64_t limit = 0;
    caps.size_octets_max = parse_decimal(next_word(rest), limit) ? limit : 0;
  } else if (equals_ignore_case(keyword, "8BITMIME")) {
    caps.eight_bit_mime = true;
  } else if (equals_ignore_case(keyword, "ENHANCEDSTATUSCODES")) {
    caps.enhanced_status_codes = true;
  } else if (equals_ignore_case(keyword, "SMTPUTF8")) {
    caps.smtputf8 = true;
  } else if (equals_ignore_case(keyword, "CHUNKING")) {
    caps.chunking = true;
  } else if (equals_ignore_case(keyword, "DSN")) {
    caps.dsn = true;
  } else if (equals_ignore_case(keyword, "STARTTLS")) {
    caps.starttls = true;
  } else if (equals_ignore_case(keyword, "AUTH")) {
    add_mechanisms(caps, rest);
  }
}

}  // namespace

std::optional<EhloCapabilities> parse_ehlo_reply(const Reply& reply) {
  if (reply.code() != 250) {
    return std::nullopt;
  }
  EhloCapabilities caps;
  std::string_view greeting = reply.line(0);
  caps.domain = std::string(next_word(greeting));
  for (size_t i = 1; i < reply.line_count(); ++i) {
    parse_line(caps, reply.line(i));
  }
  return caps;
}

}  // namespace sluice::smtp
