// Socket addresses and IP networks.
//
// Owns the one numeric parser for "ADDR:PORT", "[V6ADDR]:PORT" and CIDR text, used by the config,
// the command line and access control. It never resolves names (no DNS, no blocking call): an
// address that is not numeric is an error, and the error says what is wrong with it.

#include "engine/io/address.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/io/strings.h"

namespace sluice::io {
namespace {

// The longest numeric address inet_pton can accept (IPv6 with embedded IPv4), plus NUL.
constexpr size_t kIpTextMax = INET6_ADDRSTRLEN;
// Longest text quoted back in an error message, so a hostile value cannot flood the log.
constexpr size_t kQuotedTextMax = 80;
constexpr int kIpv4Bits = 32;
constexpr int kIpv6Bits = 128;
// An IPv4-mapped IPv6 address is ::ffff:0:0/96 followed by the IPv4 address.
constexpr int kMappedPrefixBits = 96;
constexpr std::array<uint8_t, 12> kMappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

std::string quote(std::string_view text) {
  if (text.size() > kQuotedTextMax) {
    return absl::StrCat("'", absl::CHexEscape(to_absl(text.substr(0, kQuotedTextMax))), "...'");
  }
  return absl::StrCat("'", absl::CHexEscape(to_absl(text)), "'");
}

absl::Status invalid(std::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(quote(text), ": ", why));
}

bool is_decimal_digits(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Decimal, no sign, no leading zeros (except "0" itself), at most `max`.
bool parse_decimal(std::string_view text, uint32_t max, uint32_t& value) {
  if (!is_decimal_digits(text) || text.size() > 10 || (text.size() > 1 && text[0] == '0')) {
    return false;
  }
  uint64_t result = 0;
  for (char c : text) {
    result = result * 10 + static_cast<uint64_t>(c - '0');
  }
  if (result > max) {
    return false;
  }
  value = static_cast<uint32_t>(result);
  return true;
}

absl::StatusOr<uint16_t> parse_port(std::string_view whole, std::string_view text) {
  if (text.empty()) {
    return invalid(whole, "missing port after ':'");
  }
  uint32_t port = 0;
  if (!parse_decimal(text, UINT16_MAX, port)) {
    return invalid(whole, "port must be a decimal number 0-65535 without leading zeros");
  }
  return static_cast<uint16_t>(port);
}

bool is_ipv4_char(char c) {
  return (c >= '0' && c <= '9') || c == '.';
}
bool is_ipv6_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

bool mapped_bytes(const in6_addr& address) {
  return std::memcmp(address.s6_addr, kMappedPrefix.data(), kMappedPrefix.size()) == 0;
}

// True when the first `bits` bits of a and b are equal.
bool prefix_equal(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole_bytes = bits / 8;
  if (std::memcmp(a, b, static_cast<size_t>(whole_bytes)) != 0) {
    return false;
  }
  const int rest = bits % 8;
  if (rest == 0) {
    return true;
  }
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole_bytes] & mask) == (b[whole_bytes] & mask);
}

// Zeroes every bit after the first `bits`.
void clear_host_bits(uint8_t* bytes, size_t size, int bits) {
  for (size_t i = 0; i < size; ++i) {
    const int bit_start = static_cast<int>(i) * 8;
    if (bit_start >= bits) {
      bytes[i] = 0;
    } else if (bit_start + 8 > bits) {
      bytes[i] &= static_cast<uint8_t>(0xff << (8 - (bits - bit_start)));
    }
  }
}

}  // namespace

SocketAddress SocketAddress::from_sockaddr(const sockaddr* address, socklen_t length) {
  SocketAddress result;
  const socklen_t copied = std::min<socklen_t>(length, sizeof(result.storage));
  std::memcpy(&result.storage, address, copied);
  result.length = copied;
  return result;
}

SocketAddress SocketAddress::ipv4(const in_addr& address, uint16_t port) {
  SocketAddress result;
  auto* sin = reinterpret_cast<sockaddr_in*>(&result.storage);
  sin->sin_family = AF_INET;
  sin->sin_addr = address;
  sin->sin_port = htons(port);
  result.length = sizeof(sockaddr_in);
  return result;
}

SocketAddress SocketAddress::ipv6(const in6_addr& address, uint16_t port) {
  SocketAddress result;
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&result.storage);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_addr = address;
  sin6->sin6_port = htons(port);
  result.length = sizeof(sockaddr_in6);
  return result;
}

int SocketAddress::family() const {
  return length == 0 ? AF_UNSPEC : storage.ss_family;
}

uint16_t SocketAddress::port() const {
  switch (family()) {
    case AF_INET:
      return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
    case AF_INET6:
      return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
    default:
      return 0;
  }
}

void SocketAddress::set_port(uint16_t port) {
  switch (family()) {
    case AF_INET:
      reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(port);
      break;
    case AF_INET6:
      reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(port);
      break;
    default:
      break;
  }
}

const sockaddr* SocketAddress::get() const {
  return reinterpret_cast<const sockaddr*>(&storage);
}

sockaddr* SocketAddress::get_mutable() {
  return reinterpret_cast<sockaddr*>(&storage);
}

bool SocketAddress::is_ipv4_mapped() const {
  return family() == AF_INET6 && mapped_bytes(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr);
}

SocketAddress SocketAddress::unmapped() const {
  if (!is_ipv4_mapped()) {
    return *this;
  }
  const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&storage);
  in_addr v4{};
  std::memcpy(&v4.s_addr, sin6->sin6_addr.s6_addr + kMappedPrefix.size(), sizeof(v4.s_addr));
  return ipv4(v4, port());
}

std::string SocketAddress::ip_string() const {
  char buffer[kIpTextMax] = {};
  switch (family()) {
    case AF_INET:
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, buffer, sizeof(buffer));
      return buffer;
    case AF_INET6:
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, buffer, sizeof(buffer));
      return buffer;
    default:
      return "unspecified";
  }
}

std::string SocketAddress::to_string() const {
  switch (family()) {
    case AF_INET:
      return absl::StrCat(ip_string(), ":", port());
    case AF_INET6:
      return absl::StrCat("[", ip_string(), "]:", port());
    default:
      return "unspecified";
  }
}

bool operator==(const SocketAddress& a, const SocketAddress& b) {
  if (a.family() != b.family()) {
    return false;
  }
  switch (a.family()) {
    case AF_INET: {
      const auto* x = reinterpret_cast<const sockaddr_in*>(&a.storage);
      const auto* y = reinterpret_cast<const sockaddr_in*>(&b.storage);
      return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    case AF_INET6: {
      const auto* x = reinterpret_cast<const sockaddr_in6*>(&a.storage);
      const auto* y = reinterpret_cast<const sockaddr_in6*>(&b.storage);
      return x->sin6_port == y->sin6_port && std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(in6_addr)) == 0 &&
             x->sin6_scope_id == y->sin6_scope_id;
    }
    default:
      return a.length == b.length && std::memcmp(&a.storage, &b.storage, static_cast<size_t>(a.length)) == 0;
  }
}

absl::StatusOr<SocketAddress> parse_ip(std::string_view text, uint16_t port) {
  if (text.empty()) {
    return invalid(text, "empty address");
  }
  const bool v6 = text.find(':') != std::string_view::npos;
  const bool chars_ok =
      v6 ? std::all_of(text.begin(), text.end(), is_ipv6_char) : std::all_of(text.begin(), text.end(), is_ipv4_char);
  if (!chars_ok) {
    // Checked before inet_pton: it would stop at an embedded NUL and accept the prefix.
    return invalid(text, "not a numeric IP address (host names and zone ids are not accepted)");
  }
  if (text.size() >= kIpTextMax) {
    return invalid(text, "address too long");
  }
  char buffer[kIpTextMax] = {};
  std::memcpy(buffer, text.data(), text.size());
  if (v6) {
    in6_addr address{};
    if (inet_pton(AF_INET6, buffer, &address) != 1) {
      return invalid(text, "not a valid IPv6 address");
    }
    return SocketAddress::ipv6(address, port);
  }
  in_addr address{};
  if (inet_pton(AF_INET, buffer, &address) != 1) {
    return invalid(text, "not a valid IPv4 address (four decimal numbers 0-255, no leading zeros)");
  }
  return SocketAddress::ipv4(address, port);
}

absl::StatusOr<SocketAddress> parse_host_port(std::string_view text) {
  if (text.empty()) {
    return invalid(text, "empty address (expected ADDR:PORT or [V6ADDR]:PORT)");
  }
  std::string_view host;
  std::string_view port_text;
  if (text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return invalid(text, "missing ']' after IPv6 address");
    }
    host = text.substr(1, close - 1);
    const std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return invalid(text, "missing ':PORT' after ']'");
    }
    if (host.find(':') == std::string_view::npos) {
      return invalid(text, "brackets are only for IPv6 addresses");
    }
    port_text = rest.substr(1);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return invalid(text, "missing port (expected ADDR:PORT or [V6ADDR]:PORT)");
    }
    host = text.substr(0, colon);
    if (host.find(':') != std::string_view::npos) {
      return invalid(text, "an IPv6 address with a port must be in brackets, as in [::1]:25");
    }
    port_text = text.substr(colon + 1);
  }
  auto port = parse_port(text, port_text);
  if (!port.ok()) {
    return port.status();
  }
  auto address = parse_ip(host, *port);
  if (!address.ok()) {
    return invalid(text, address.status().message());
  }
  return address;
}

absl::StatusOr<SocketAddress> parse_host_optional_port(std::string_view text, uint16_t default_port) {
  if (!text.empty() && text.front() == '[' && text.back() == ']') {
    const std::string_view host = text.substr(1, text.size() - 2);
    if (host.find(':') == std::string_view::npos) {
      return invalid(text, "brackets are only for IPv6 addresses");
    }
    auto address = parse_ip(host, default_port);
    if (!address.ok()) {
      return invalid(text, address.status().message());
    }
    return address;
  }
  const size_t colons = static_cast<size_t>(std::count(text.begin(), text.end(), ':'));
  if (!text.empty() && text.front() != '[' && colons != 1) {
    // No colon: bare IPv4; two or more: bare IPv6. Exactly one is IPv4 with a port.
    return parse_ip(text, default_port);
  }
  return parse_host_port(text);
}

absl::StatusOr<Network> Network::parse(std::string_view cidr) {
  const size_t slash = cidr.find('/');
  const std::string_view address_text = cidr.substr(0, slash);
  auto address = parse_ip(address_text);
  if (!address.ok()) {
    return invalid(cidr, address.status().message());
  }
  const bool v4 = address->family() == AF_INET;
  const int bits_max = v4 ? kIpv4Bits : kIpv6Bits;
  uint32_t prefix = static_cast<uint32_t>(bits_max);
  if (slash != std::string_view::npos) {
    if (!parse_decimal(cidr.substr(slash + 1), static_cast<uint32_t>(bits_max), prefix)) {
      return invalid(cidr, absl::StrCat("prefix length must be a decimal number 0-", bits_max));
    }
  }
  Network network;
  if (v4) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&address->storage);
    network._family = AF_INET;
    std::memcpy(network._address.data(), &sin->sin_addr.s_addr, 4);
  } else {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&address->storage);
    if (mapped_bytes(sin6->sin6_addr) && prefix >= kMappedPrefixBits) {
      network._family = AF_INET;
      std::memcpy(network._address.data(), sin6->sin6_addr.s6_addr + kMappedPrefix.size(), 4);
      prefix -= kMappedPrefixBits;
    } else {
      network._family = AF_INET6;
      std::memcpy(network._address.data(), sin6->sin6_addr.s6_addr, 16);
    }
  }
  network._prefix_length = static_cast<uint8_t>(prefix);
  std::array<uint8_t, 16> masked = network._address;
  clear_host_bits(masked.data(), network._family == AF_INET ? 4 : 16, network._prefix_length);
  if (masked != network._address) {
    // Postfix refuses these too: "10.1.2.3/8" is almost always a typo for a host or a network.
    network._address = masked;
    return invalid(cidr, absl::StrCat("host bits are set after the prefix (did you mean ", network.to_string(), "?)"));
  }
  return network;
}

bool Network::contains(const SocketAddress& address) const {
  const SocketAddress client = address.unmapped();
  if (client.family() == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&client.storage);
    const auto* bytes = reinterpret_cast<const uint8_t*>(&sin->sin_addr.s_addr);
    if (_family == AF_INET) {
      return prefix_equal(bytes, _address.data(), _prefix_length);
    }
    if (_family == AF_INET6 && _prefix_length <= kMappedPrefixBits) {
      // A short IPv6 prefix such as ::/0 covers ::ffff:0:0/96, so it covers IPv4 clients too.
      std::array<uint8_t, 16> mapped{};
      std::copy(kMappedPrefix.begin(), kMappedPrefix.end(), mapped.begin());
      std::memcpy(mapped.data() + kMappedPrefix.size(), bytes, 4);
      return prefix_equal(mapped.data(), _address.data(), _prefix_length);
    }
    return false;
  }
  if (client.family() == AF_INET6 && _family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&client.storage);
    return prefix_equal(sin6->sin6_addr.s6_addr, _address.data(), _prefix_length);
  }
  return false;
}

std::string Network::to_string() const {
  char buffer[kIpTextMax] = {};
  inet_ntop(_family == AF_INET ? AF_INET : AF_INET6, _address.data(), buffer, sizeof(buffer));
  return absl::StrCat(buffer, "/", _prefix_length);
}

absl::StatusOr<NetworkList> NetworkList::parse(const std::vector<std::string>& cidrs) {
  NetworkList list;
  for (const std::string& cidr : cidrs) {
    auto network = Network::parse(cidr);
    if (!network.ok()) {
      return network.status();
    }
    list.add(*network);
  }
  return list;
}

bool NetworkList::contains(const SocketAddress& address) const {
  return std::any_of(_networks.begin(), _networks.end(),
                     [&address](const Network& network) { return network.contains(address); });
}

std::string NetworkList::to_string() const {
  return absl::StrJoin(_networks, ", ",
                       [](std::string* out, const Network& network) { out->append(network.to_string()); });
}

}  // namespace sluice::io
