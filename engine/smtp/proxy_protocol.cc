// PROXY protocol v1/v2 header parser (haproxy proxy-protocol.txt).
//
// Owns the decision "is this a complete, valid PROXY header, and how long is it". It reads only
// the bytes it is given, keeps no state between calls (the caller re-offers everything received
// so far), never allocates and never throws: this runs on the data path, on bytes from the
// network. It is strict: anything the spec does not allow is invalid, and the connection is
// closed by the caller, because a lenient parser in front of access control is an open relay.

#include "engine/smtp/proxy_protocol.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace sluice::smtp {
namespace {

// ---- v1 ---------------------------------------------------------------------------------------

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr std::string_view kV1Tcp4 = "TCP4";
constexpr std::string_view kV1Tcp6 = "TCP6";
constexpr std::string_view kV1Unknown = "UNKNOWN";
// Longest tokens: an IPv6 address in text (with embedded IPv4: 45) and a port (5 digits).
constexpr size_t kV1AddressMax = INET6_ADDRSTRLEN - 1;
constexpr size_t kV1PortMax = 5;
constexpr size_t kV1ProtocolMax = kV1Unknown.size();

enum class Step : uint8_t { ok, need_more, invalid };

ProxyParseResult need_more() {
  return ProxyParseResult{};
}

ProxyParseResult invalid(std::string_view why) {
  ProxyParseResult result;
  result.status = ProxyParseStatus::invalid;
  result.error = why;
  return result;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_address_char(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}
bool is_protocol_char(char c) {
  return (c >= 'A' && c <= 'Z') || is_digit(c);
}

// Reads a v1 line left to right. Running out of input is need_more, never an error: the rest
// may still arrive. The first byte that cannot belong to a valid line is invalid at once.
class V1Reader {
 public:
  explicit V1Reader(std::string_view input) : _input(input) {}

  size_t position() const { return _position; }
  std::string_view error() const { return _error; }

  // Matches `literal` exactly.
  Step literal(std::string_view literal, std::string_view error) {
    for (char expected : literal) {
      if (_position == _input.size()) {
        return Step::need_more;
      }
      if (_input[_position] != expected) {
        return fail(error);
      }
      ++_position;
    }
    return Step::ok;
  }

  // A non-empty run of `allowed` characters of at most `max` octets, ended by ' ' or '\r'
  // (not consumed).
  template <typename Allowed>
  Step token(size_t max, Allowed allowed, std::string_view error, std::string_view& out) {
    const size_t start = _position;
    while (_position < _input.size() && _input[_position] != ' ' && _input[_position] != '\r') {
      if (!allowed(_input[_position]) || _position - start == max) {
        return fail(error);
      }
      ++_position;
    }
    out = _input.substr(start, _position - start);
    if (_position == _input.size()) {
      return Step::need_more;
    }
    return out.empty() ? fail(error) : Step::ok;
  }

  // Skips any bytes up to CR (the rest of a "PROXY UNKNOWN" line, which the spec says to ignore).
  Step skip_to_cr() {
    while (_position < _input.size() && _input[_position] != '\r') {
      if (_input[_position] == '\n') {
        return fail("PROXY v1: bare LF in header");
      }
      ++_position;
    }
    return _position == _input.size() ? Step::need_more : Step::ok;
  }

 private:
  Step fail(std::string_view error) {
    _error = error;
    return Step::invalid;
  }

  std::string_view _input;
  size_t _position = 0;
  std::string_view _error;
};

bool parse_v1_port(std::string_view text, uint16_t& port) {
  if (text.empty() || text.size() > kV1PortMax || (text.size() > 1 && text[0] == '0')) {
    return false;
  }
  uint32_t value = 0;
  for (char c : text) {
    if (!is_digit(c)) {
      return false;
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > UINT16_MAX) {
    return false;
  }
  port = static_cast<uint16_t>(value);
  return true;
}

// inet_pton wants a NUL-terminated string; tokens are at most kV1AddressMax octets of
// address characters (no NUL), checked by the reader.
bool parse_v1_address(std::string_view text, bool v6, uint16_t port, io::SocketAddress& out) {
  std::array<char, kV1AddressMax + 1> buffer{};
  std::memcpy(buffer.data(), text.data(), text.size());
  if (v6) {
    in6_addr address{};
    if (inet_pton(AF_INET6, buffer.data(), &address) != 1) {
      return false;
    }
    out = io::SocketAddress::ipv6(address, port);
    return true;
  }
  in_addr address{};
  if (inet_pton(AF_INET, buffer.data(), &address) != 1) {
    return false;
  }
  out = io::SocketAddress::ipv4(address, port);
  return true;
}

// Whether a protocol token seen so far can still grow into TCP4, TCP6 or UNKNOWN.
bool protocol_may_be(std::string_view token) {
  for (std::string_view name : {kV1Tcp4, kV1Tcp6, kV1Unknown}) {
    if (name.substr(0, token.size()) == token) {
      return true;
    }
  }
  return false;
}

ProxyParseResult parse_v1(std::string_view input) {
  // A valid line ends within the first kProxyV1OctetsMax octets; looking further is pointless.
  const bool over_limit = input.size() >= kProxyV1OctetsMax;
  V1Reader reader(input.substr(0, kProxyV1OctetsMax));
  ProxyParseResult result;

  // Returns the parse result for a step that did not succeed.
  auto stopped = [&](Step step) {
    if (step == Step::invalid) {
      return invalid(reader.error());
    }
    return over_limit ? invalid("PROXY v1: header longer than 107 octets") : need_more();
  };

  Step step = reader.literal(kV1Prefix, "not a PROXY protocol header");
  if (step != Step::ok) {
    return stopped(step);
  }
  std::string_view protocol;
  step = reader.token(kV1ProtocolMax, is_protocol_char, "PROXY v1: unknown protocol", protocol);
  if (step == Step::need_more && !protocol_may_be(protocol)) {
    return invalid("PROXY v1: unknown protocol");
  }
  if (step != Step::ok) {
    return stopped(step);
  }

  if (protocol == kV1Unknown) {
    step = reader.skip_to_cr();
    if (step == Step::ok) {
      step = reader.literal("\r\n", "PROXY v1: CR not followed by LF");
    }
    if (step != Step::ok) {
      return stopped(step);
    }
    result.status = ProxyParseStatus::done;
    result.header_octets = reader.position();
    result.use_socket_address = true;
    return result;
  }
  if (protocol != kV1Tcp4 && protocol != kV1Tcp6) {
    return invalid("PROXY v1: unknown protocol");
  }
  const bool v6 = protocol == kV1Tcp6;

  std::string_view source_text;
  std::string_view destination_text;
  std::string_view source_port_text;
  std::string_view destination_port_text;
  const auto bad_address = "PROXY v1: malformed address";
  const auto bad_port = "PROXY v1: malformed port";
  const auto bad_separator = "PROXY v1: fields must be separated by one space";
  if ((step = reader.literal(" ", bad_separator)) != Step::ok ||
      (step = reader.token(kV1AddressMax, is_address_char, bad_address, source_text)) != Step::ok ||
      (step = reader.literal(" ", bad_separator)) != Step::ok ||
      (step = reader.token(kV1AddressMax, is_address_char, bad_address, destination_text)) != Step::ok ||
      (step = reader.literal(" ", bad_separator)) != Step::ok ||
      (step = reader.token(kV1PortMax, is_digit, bad_port, source_port_text)) != Step::ok ||
      (step = reader.literal(" ", bad_separator)) != Step::ok ||
      (step = reader.token(kV1PortMax, is_digit, bad_port, destination_port_text)) != Step::ok ||
      (step = reader.literal("\r\n", "PROXY v1: header must end with CRLF")) != Step::ok) {
    return stopped(step);
  }

  uint16_t source_port = 0;
  uint16_t destination_port = 0;
  if (!parse_v1_port(source_port_text, source_port) || !parse_v1_port(destination_port_text, destination_port)) {
    return invalid(bad_port);
  }
  if (!parse_v1_address(source_text, v6, source_port, result.source) ||
      !parse_v1_address(destination_text, v6, destination_port, result.destination)) {
    return invalid(v6 ? "PROXY v1: TCP6 needs two valid IPv6 addresses"
                      : "PROXY v1: TCP4 needs two valid IPv4 addresses");
  }
  result.status = ProxyParseStatus::done;
  result.header_octets = reader.position();
  return result;
}

// ---- v2 ---------------------------------------------------------------------------------------

constexpr std::string_view kV2Signature{"\r\n\r\n\0\r\nQUIT\n", 12};
constexpr size_t kV2FixedOctets = 16;
constexpr size_t kV2PayloadMax = kProxyV2OctetsMax - kV2FixedOctets;
constexpr uint8_t kV2Version = 0x2;
constexpr uint8_t kV2CommandLocal = 0x0;
constexpr uint8_t kV2CommandProxy = 0x1;
constexpr uint8_t kV2FamilyUnspec = 0x0;
constexpr uint8_t kV2FamilyInet = 0x1;
constexpr uint8_t kV2FamilyInet6 = 0x2;
constexpr uint8_t kV2TransportUnspec = 0x0;
constexpr uint8_t kV2TransportStream = 0x1;
// Address block sizes: two addresses and two ports.
constexpr size_t kV2Inet4Octets = 4 + 4 + 2 + 2;
constexpr size_t kV2Inet6Octets = 16 + 16 + 2 + 2;
constexpr size_t kV2TlvHeaderOctets = 3;  // type, length (16-bit big-endian)

uint8_t byte_at(std::string_view data, size_t index) {
  return static_cast<uint8_t>(data[index]);
}

uint16_t big_endian_16(std::string_view data, size_t index) {
  return static_cast<uint16_t>((byte_at(data, index) << 8) | byte_at(data, index + 1));
}

// Checks that the octets after the addresses are whole TLVs (haproxy rejects them otherwise).
bool tlvs_well_formed(std::string_view tlvs) {
  size_t position = 0;
  while (position < tlvs.size()) {
    if (tlvs.size() - position < kV2TlvHeaderOctets) {
      return false;
    }
    const size_t value_octets = big_endian_16(tlvs, position + 1);
    position += kV2TlvHeaderOctets;
    if (tlvs.size() - position < value_octets) {
      return false;
    }
    position += value_octets;
  }
  return true;
}

ProxyParseResult parse_v2(std::string_view input) {
  const size_t signature_seen = std::min(input.size(), kV2Signature.size());
  if (input.substr(0, signature_seen) != kV2Signature.substr(0, signature_seen)) {
    return invalid("not a PROXY protocol header");
  }
  if (input.size() <= kV2Signature.size()) {
    return need_more();
  }
  const uint8_t version_command = byte_at(input, 12);
  const uint8_t command = version_command & 0x0f;
  if ((version_command >> 4) != kV2Version) {
    return invalid("PROXY v2: unsupported version");
  }
  if (command != kV2CommandLocal && command != kV2CommandProxy) {
    return invalid("PROXY v2: unknown command");
  }
  if (input.size() < 14) {
    return need_more();
  }
  const uint8_t family = byte_at(input, 13) >> 4;
  const uint8_t transport = byte_at(input, 13) & 0x0f;
  size_t address_octets = 0;
  if (command == kV2CommandProxy) {
    if (family == kV2FamilyInet && transport == kV2TransportStream) {
      address_octets = kV2Inet4Octets;
    } else if (family == kV2FamilyInet6 && transport == kV2TransportStream) {
      address_octets = kV2Inet6Octets;
    } else if (family != kV2FamilyUnspec || (transport != kV2TransportUnspec && transport != kV2TransportStream)) {
      return invalid("PROXY v2: unsupported address family or transport");
    }
  }
  if (input.size() < kV2FixedOctets) {
    return need_more();
  }
  const size_t payload_octets = big_endian_16(input, 14);
  if (payload_octets > kV2PayloadMax) {
    return invalid("PROXY v2: header longer than 16 + 1024 octets");
  }
  if (payload_octets < address_octets) {
    return invalid("PROXY v2: length too short for the address family");
  }
  const size_t header_octets = kV2FixedOctets + payload_octets;
  if (input.size() < header_octets) {
    return need_more();
  }

  ProxyParseResult result;
  result.status = ProxyParseStatus::done;
  result.header_octets = header_octets;
  if (command == kV2CommandLocal || family == kV2FamilyUnspec) {
    // The spec: the receiver discards the block (family, addresses and TLVs alike).
    result.use_socket_address = true;
    return result;
  }
  const std::string_view payload = input.substr(kV2FixedOctets, payload_octets);
  if (!tlvs_well_formed(payload.substr(address_octets))) {
    return invalid("PROXY v2: malformed TLV");
  }
  if (family == kV2FamilyInet) {
    in_addr source{};
    in_addr destination{};
    std::memcpy(&source.s_addr, payload.data(), 4);
    std::memcpy(&destination.s_addr, payload.data() + 4, 4);
    result.source = io::SocketAddress::ipv4(source, big_endian_16(payload, 8));
    result.destination = io::SocketAddress::ipv4(destination, big_endian_16(payload, 10));
  } else {
    in6_addr source{};
    in6_addr destination{};
    std::memcpy(source.s6_addr, payload.data(), 16);
    std::memcpy(destination.s6_addr, payload.data() + 16, 16);
    result.source = io::SocketAddress::ipv6(source, big_endian_16(payload, 32));
    result.destination = io::SocketAddress::ipv6(destination, big_endian_16(payload, 34));
  }
  return result;
}

}  // namespace

ProxyParseResult parse_proxy_header(std::string_view received_so_far) {
  if (received_so_far.empty()) {
    return need_more();
  }
  // The two versions differ in their first octet: 'P' (v1) or CR (v2).
  if (received_so_far.front() == kV1Prefix.front()) {
    return parse_v1(received_so_far);
  }
  if (received_so_far.front() == kV2Signature.front()) {
    return parse_v2(received_so_far);
  }
  return invalid("not a PROXY protocol header");
}

}  // namespace sluice::smtp
