#pragma once

// Socket addresses and IP networks: numeric parsing ("ADDR:PORT", "[V6ADDR]:PORT", CIDR) and
// membership tests for access control (relay networks, PROXY-protocol trusted load balancers).

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sluice::io {

// Longest textual address we accept ("[" + IPv6 with embedded IPv4 + "]:" + port).
inline constexpr size_t kAddressTextMax = 64;

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;  // 0 = no address (AF_UNSPEC)

  static SocketAddress from_sockaddr(const sockaddr* address, socklen_t length);
  // Addresses in network byte order, port in host byte order.
  static SocketAddress ipv4(const in_addr& address, uint16_t port);
  static SocketAddress ipv6(const in6_addr& address, uint16_t port);

  int family() const;
  uint16_t port() const;  // host byte order; 0 for AF_UNSPEC
  void set_port(uint16_t port);
  const sockaddr* get() const;
  sockaddr* get_mutable();  // for accept()/getsockname(): set `length` afterwards

  // True for ::ffff:a.b.c.d; unmapped() turns it into a.b.c.d (same port), else returns a copy.
  bool is_ipv4_mapped() const;
  SocketAddress unmapped() const;

  std::string to_string() const;  // "1.2.3.4:25" or "[::1]:25"; "unspecified" when empty
  std::string ip_string() const;  // "1.2.3.4" or "::1", no port

  // Same family, address and port.
  friend bool operator==(const SocketAddress& a, const SocketAddress& b);
};

// "ADDR:PORT" or "[V6ADDR]:PORT", numeric only (no names, no zone ids); port 0-65535.
absl::StatusOr<SocketAddress> parse_host_port(std::string_view text);
// As parse_host_port, but a bare "ADDR" or "V6ADDR" (or "[V6ADDR]") means `default_port`.
absl::StatusOr<SocketAddress> parse_host_optional_port(std::string_view text, uint16_t default_port);
// A numeric IPv4 or IPv6 address without port or brackets.
absl::StatusOr<SocketAddress> parse_ip(std::string_view text, uint16_t port = 0);

// An IPv4 or IPv6 prefix. IPv4-mapped IPv6 prefixes (::ffff:0:0/96 and longer) are stored as
// IPv4, and IPv4-mapped clients are compared as IPv4, so either spelling matches either client.
class Network {
 public:
  // "127.0.0.0/8", "::1/128", or a bare address (host route). Host bits must be zero.
  static absl::StatusOr<Network> parse(std::string_view cidr);

  bool contains(const SocketAddress& address) const;
  int family() const { return _family; }
  uint8_t prefix_length() const { return _prefix_length; }
  std::string to_string() const;

  friend bool operator==(const Network& a, const Network& b) = default;

 private:
  int _family = AF_UNSPEC;
  uint8_t _prefix_length = 0;
  std::array<uint8_t, 16> _address{};  // first 4 bytes used for AF_INET
};

class NetworkList {
 public:
  NetworkList() = default;
  explicit NetworkList(std::vector<Network> networks) : _networks(std::move(networks)) {}

  // Parses every entry; the error names the first bad one.
  static absl::StatusOr<NetworkList> parse(const std::vector<std::string>& cidrs);

  void add(const Network& network) { _networks.push_back(network); }
  bool contains(const SocketAddress& address) const;
  bool empty() const { return _networks.empty(); }
  size_t size() const { return _networks.size(); }
  const std::vector<Network>& networks() const { return _networks; }
  std::string to_string() const;  // "127.0.0.0/8, ::1/128"

  friend bool operator==(const NetworkList& a, const NetworkList& b) = default;

 private:
  std::vector<Network> _networks;
};

}  // namespace sluice::io
