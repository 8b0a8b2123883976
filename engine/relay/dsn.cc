#include "engine/relay/dsn.h"

#include <cctype>

#include <algorithm>

#include "engine/io/strings.h"
#include "engine/smtp/trace_header.h"

namespace sluice::relay {

namespace {

constexpr size_t kFieldValueOctetsMax = 900;  // a field stays well under the 998-octet line limit
constexpr size_t kTextLineOctetsMax = 900;

// One line, no control characters, at most `max` octets (not cutting a UTF-8 sequence).
std::string one_line(std::string_view text, size_t max = kFieldValueOctetsMax) {
  std::string out;
  out.reserve(std::min(text.size(), max));
  bool space = false;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      space = !out.empty();
      continue;
    }
    if (space) {
      out.push_back(' ');
      space = false;
    }
    out.push_back(c);
  }
  if (out.size() > max) {
    size_t cut = max;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) {
      --cut;  // out[cut] continues a sequence: cut before the sequence begins
    }
    out.resize(cut);
  }
  return out;
}

bool has_control(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

// A line of our own text in wire form: dot-stuffed, CRLF.
void line(std::string& out, std::string_view text) {
  if (!text.empty() && text.front() == '.') {
    out.push_back('.');
  }
  out.append(text);
  out.append("\r\n");
}

// The gravest action among the recipients: failed, else delayed, else delivered/relayed.
DsnAction gravest(const DsnReport& report) {
  DsnAction worst = DsnAction::delivered;
  for (const DsnRecipient& r : report.recipients) {
    if (r.action == DsnAction::failed) {
      return DsnAction::failed;
    }
    if (r.action == DsnAction::delayed) {
      worst = DsnAction::delayed;
    }
  }
  return worst;
}

// A reply as a server sent it: three digits, then a space, a hyphen or the end.
bool is_smtp_reply(std::string_view text) {
  if (text.size() < 3 || !std::isdigit(static_cast<unsigned char>(text[0])) ||
      !std::isdigit(static_cast<unsigned char>(text[1])) || !std::isdigit(static_cast<unsigned char>(text[2]))) {
    return false;
  }
  return text.size() == 3 || text[3] == ' ' || text[3] == '-';
}

std::string_view subject_for(const DsnReport& report) {
  const DsnAction worst = gravest(report);
  if (worst == DsnAction::failed) {
    return "Undelivered Mail Returned to Sender";
  }
  if (worst == DsnAction::delayed) {
    return "Delayed Mail (still being retried)";
  }
  return "Successful Mail Delivery Report";
}

void human_readable(const DsnReport& report, std::string& out) {
  line(out, str_cat("This is the mail system at host ", one_line(report.reporting_mta), "."));
  line(out, "");
  const DsnAction worst = gravest(report);
  if (worst == DsnAction::failed) {
    line(out, "Your message could not be delivered to one or more recipients.");
    line(out, "It is attached below. The reasons are given for each recipient.");
  } else if (worst == DsnAction::delayed) {
    line(out, "Your message could not be delivered yet to one or more recipients.");
    line(out, "The mail system will keep trying; you need not send it again.");
  } else {
    line(out, "Your message was delivered (or passed on) to the recipients below.");
  }
  line(out, "");
  for (const DsnRecipient& r : report.recipients) {
    std::string text = str_cat("<", one_line(r.final_recipient, 512), ">: ");
    if (!r.remote_mta.empty()) {
      str_append(&text, "host ", one_line(r.remote_mta, 255), " said: ");
    }
    str_append(&text, r.diagnostic.empty() ? str_cat("status ", one_line(r.status, 16))
                                           : one_line(r.diagnostic, kTextLineOctetsMax - 300));
    line(out, one_line(text, kTextLineOctetsMax));
  }
}

void delivery_status(const DsnReport& report, std::string& out) {
  line(out, str_cat("Reporting-MTA: dns; ", one_line(report.reporting_mta, 255)));
  line(out, str_cat("X-Sluice-Queue-ID: ", one_line(report.queue_id, 64)));
  if (!report.envid.empty()) {
    const std::string envid = xtext_decode(report.envid);
    if (!has_control(envid)) {
      line(out, str_cat("Original-Envelope-Id: ", one_line(envid)));
    }
  }
  line(out, str_cat("Arrival-Date: ", smtp::rfc5322_date(report.arrival_s)));
  for (const DsnRecipient& r : report.recipients) {
    line(out, "");
    if (!r.orcpt.empty()) {
      const std::string orcpt = xtext_decode(r.orcpt);
      const size_t semicolon = orcpt.find(';');
      if (semicolon != std::string::npos && semicolon > 0 && !has_control(orcpt)) {
        line(out, str_cat("Original-Recipient: ", one_line(orcpt, 600)));
      }
    }
    line(out, str_cat("Final-Recipient: rfc822; ", one_line(r.final_recipient, 600)));
    line(out, str_cat("Action: ", dsn_action_name(r.action)));
    line(out, str_cat("Status: ", one_line(r.status, 16)));
    if (!r.remote_mta.empty()) {
      line(out, str_cat("Remote-MTA: dns; ", one_line(r.remote_mta, 255)));
    }
    if (!r.diagnostic.empty()) {
      // "smtp" only for a remote server's reply (it starts with its code); our own reasons
      // (SIZE, 8BITMIME, DNS, a lost connection) get our own type, as Postfix's "X-Postfix".
      line(out, str_cat("Diagnostic-Code: ", is_smtp_reply(r.diagnostic) ? "smtp" : "X-Sluice", "; ",
                        one_line(r.diagnostic)));
    }
    if (r.last_attempt_s > 0) {
      line(out, str_cat("Last-Attempt-Date: ", smtp::rfc5322_date(r.last_attempt_s)));
    }
    if (r.action == DsnAction::delayed && r.will_retry_until_s > 0) {
      line(out, str_cat("Will-Retry-Until: ", smtp::rfc5322_date(r.will_retry_until_s)));
    }
  }
}

// The original's header block (wire form, up to and including the CRLF before the empty line).
std::string_view header_block(std::string_view wire) {
  if (wire.starts_with("\r\n")) {
    return {};
  }
  const size_t end = wire.find("\r\n\r\n");
  return end == std::string_view::npos ? wire : wire.substr(0, end + 2);
}

bool has_8bit(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

}  // namespace

std::string_view dsn_action_name(DsnAction action) {
  switch (action) {
    case DsnAction::failed:
      return "failed";
    case DsnAction::delayed:
      return "delayed";
    case DsnAction::delivered:
      return "delivered";
    case DsnAction::relayed:
      return "relayed";
  }
  return "failed";
}

bool dsn_wanted(std::string_view envelope_sender, uint8_t notify, DsnAction action) {
  if (envelope_sender.empty()) {
    return false;  // never bounce a bounce (RFC 5321 6.1, RFC 3461 6.2)
  }
  if (notify == 0) {
    return action == DsnAction::failed || action == DsnAction::delayed;
  }
  if (notify & kDsnNotifyNever) {
    return false;
  }
  switch (action) {
    case DsnAction::failed:
      return notify & kDsnNotifyFailure;
    case DsnAction::delayed:
      return notify & kDsnNotifyDelay;
    case DsnAction::delivered:
    case DsnAction::relayed:
      return notify & kDsnNotifySuccess;
  }
  return false;
}

std::string xtext_decode(std::string_view text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9')
      return c - '0';
    if (c >= 'A' && c <= 'F')
      return c - 'A' + 10;
    return -1;  // RFC 3461: upper case only
  };
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
      continue;
    }
    out.push_back(text[i]);
  }
  return out;
}

BuiltDsn build_dsn(const DsnReport& report, std::string_view original_wire) {
  const bool full = report.ret == DsnReturn::full;
  const std::string_view returned = full ? original_wire : header_block(original_wire);
  const bool returned_8bit = has_8bit(returned);
  std::string text;
  human_readable(report, text);
  std::string status;
  delivery_status(report, status);
  // RFC 2046 5.1.1: the boundary must not occur in any part (at most 70 characters).
  std::string boundary = one_line(report.boundary, 60);
  auto occurs = [&](const std::string& b) {
    return returned.find(b) != std::string_view::npos || text.find(b) != std::string::npos ||
           status.find(b) != std::string::npos;
  };
  while (boundary.size() < 70 && occurs(boundary)) {
    boundary.push_back('z');
  }
  BuiltDsn built;
  std::string& out = built.wire;
  out.reserve(2048 + returned.size());
  line(out, str_cat("From: Mail Delivery System <MAILER-DAEMON@", one_line(report.reporting_mta, 255), ">"));
  line(out, str_cat("To: <", one_line(report.original_sender, 600), ">"));
  line(out, str_cat("Subject: ", subject_for(report)));
  line(out, str_cat("Date: ", smtp::rfc5322_date(report.now_s)));
  line(out, str_cat("Message-ID: <", one_line(report.message_id, 255), ">"));
  line(out, "Auto-Submitted: auto-replied");  // RFC 3834: no vacation replies to it
  line(out, "MIME-Version: 1.0");
  line(out, str_cat("Content-Type: multipart/report; report-type=delivery-status; boundary=\"", boundary, "\""));
  line(out, "");
  line(out, "This is a MIME-encapsulated message.");
  line(out, "");
  line(out, str_cat("--", boundary));
  line(out, "Content-Type: text/plain; charset=us-ascii");
  line(out, "");
  out.append(text);
  line(out, "");
  line(out, str_cat("--", boundary));
  line(out, "Content-Type: message/delivery-status");
  line(out, "");
  out.append(status);
  line(out, "");
  line(out, str_cat("--", boundary));
  line(out, full ? "Content-Type: message/rfc822" : "Content-Type: text/rfc822-headers");
  line(out, returned_8bit ? "Content-Transfer-Encoding: 8bit" : "Content-Transfer-Encoding: 7bit");
  line(out, "");
  out.append(returned);  // already in wire form (dot-stuffed)
  if (!returned.empty() && !returned.ends_with("\r\n")) {
    out.append("\r\n");
  }
  line(out, "");
  line(out, str_cat("--", boundary, "--"));
  built.body_8bit = has_8bit(out);
  return built;
}

}  // namespace sluice::relay
