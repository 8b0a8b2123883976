#pragma once
// The header fields Sluice adds to a message it accepts: Received: (always, first), and
// Message-ID: / Date: when a client that may relay left them out (RFC 5321 4.4, RFC 5322 3.6).
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/io/address.h"
#include "engine/smtp/server_session.h"

namespace sluice::smtp {

struct TraceContext {
  std::string_view hostname;
  std::string_view queue_id;
  const io::SocketAddress* client = nullptr;
  bool tls = false;
  bool authenticated = false;
  int64_t now_unix_s = 0;
};

// Appends the added header fields (CRLF-terminated lines, wire form) to `out`.
void append_trace_headers(const AcceptedMessage& message, const TraceContext& context, std::string& out);
// RFC 5322 date-time in UTC: "Thu, 26 Nov 2026 22:10:29 +0000".
std::string rfc5322_date(int64_t unix_s);

}  // namespace sluice::smtp
