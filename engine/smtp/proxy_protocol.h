#pragma once

// PROXY protocol v1 (text) and v2 (binary) header parser, per haproxy's proxy-protocol.txt.
// The caller feeds everything received so far on a connection from a trusted load balancer and
// calls again with more bytes while the answer is need_more.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/io/address.h"

namespace sluice::smtp {

// Longest v1 line, "PROXY TCP6 <39> <39> 65535 65535\r\n" (the spec's bound, CRLF included).
inline constexpr size_t kProxyV1OctetsMax = 107;
// v2: 16-octet fixed part plus at most 1,024 octets of addresses and TLVs (our limit).
inline constexpr size_t kProxyV2OctetsMax = 16 + 1024;

enum class ProxyParseStatus : uint8_t { need_more, done, invalid };

struct ProxyParseResult {
  ProxyParseStatus status = ProxyParseStatus::need_more;
  // With done: the header's exact length; SMTP starts at received_so_far[header_octets].
  size_t header_octets = 0;
  // v2 LOCAL, v2 AF_UNSPEC, v1 "PROXY UNKNOWN": health checks and unknown protocols; the
  // connection's own peer and local addresses stand. source/destination are then empty.
  bool use_socket_address = false;
  io::SocketAddress source;       // the real client
  io::SocketAddress destination;  // the address the client connected to (at the balancer)
  std::string_view error;         // with invalid: a static text saying what was wrong
};

// Never reads past received_so_far and never allocates. Returns invalid for anything malformed
// or too long and for bytes that cannot begin a PROXY header (e.g. "EHLO"), as soon as that can
// be seen; need_more while the bytes so far are a proper prefix of a header that may be valid.
ProxyParseResult parse_proxy_header(std::string_view received_so_far);

}  // namespace sluice::smtp
