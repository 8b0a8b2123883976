// Builds our Received: trace header (and Message-ID:/Date: when missing). Client-supplied text
// (the EHLO name) is reduced to printable ASCII so it can never break the header's syntax.
#include "engine/smtp/trace_header.h"

#include <ctime>

#include "absl/strings/str_cat.h"
#include "engine/io/strings.h"

namespace sluice::smtp {
namespace {

constexpr size_t kHeloOctetsInTraceMax = 255;

std::string printable(std::string_view text) {
  std::string clean(text.substr(0, kHeloOctetsInTraceMax));
  for (char& c : clean) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte >= 0x7f || c == '(' || c == ')' || c == ';') {
      c = '?';
    }
  }
  return clean;
}

std::string address_literal(const io::SocketAddress& address) {
  if (address.family() == AF_INET6) {
    return str_cat("[IPv6:", address.ip_string(), "]");
  }
  return str_cat("[", address.ip_string(), "]");
}

std::string_view protocol_name(const AcceptedMessage& message, const TraceContext& context) {
  if (!message.esmtp) {
    return "SMTP";
  }
  if (message.smtputf8) {
    return context.tls ? (context.authenticated ? "UTF8SMTPSA" : "UTF8SMTPS")
                       : (context.authenticated ? "UTF8SMTPA" : "UTF8SMTP");
  }
  return context.tls ? (context.authenticated ? "ESMTPSA" : "ESMTPS") : (context.authenticated ? "ESMTPA" : "ESMTP");
}

}  // namespace

std::string rfc5322_date(int64_t unix_s) {
  const time_t seconds = static_cast<time_t>(unix_s);
  tm parts{};
  gmtime_r(&seconds, &parts);
  char text[64];
  const size_t length = strftime(text, sizeof(text), "%a, %d %b %Y %H:%M:%S +0000", &parts);
  return std::string(text, length);
}

void append_trace_headers(const AcceptedMessage& message, const TraceContext& context, std::string& out) {
  const std::string date = rfc5322_date(context.now_unix_s);
  str_append(&out, "Received: from ", printable(message.helo), " (",
             context.client != nullptr ? address_literal(*context.client) : "unknown", ")\r\n\tby ", context.hostname,
             " (Sluice) with ", protocol_name(message, context), " id ", context.queue_id);
  if (message.recipients.size() == 1) {
    str_append(&out, "\r\n\tfor <", message.recipients.front(), ">");
  }
  str_append(&out, "; ", date, "\r\n");
  if (message.add_message_id) {
    str_append(&out, "Message-ID: <", context.queue_id, "@", context.hostname, ">\r\n");
  }
  if (message.add_date) {
    str_append(&out, "Date: ", date, "\r\n");
  }
}

}  // namespace sluice::smtp
