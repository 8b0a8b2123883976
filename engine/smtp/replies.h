#pragma once
// Every SMTP reply text Sluice sends, in one table (STYLE.md: "one reply table"). Each carries an
// RFC 3463 enhanced status code. Replies that need a parameter (hostname, queue id, size) are
// built by the functions at the bottom from the same texts.
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string_view>

namespace sluice::smtp {

// Why Sluice refused something (a command, a message, a connection). One table: its names are
// the `reason=` of log lines and the labels of sluice_rejections_total.
enum class RejectReason : uint8_t {
  relay_denied,
  too_big,
  too_many_recipients,
  line_too_long,
  bare_newline,
  mail_loop,
  spool_low,
  spool_error,
  too_many_connections,
  too_many_from_client,
  rate_limited,
  timeout,
  too_many_errors,
  proxy_invalid,
  early_talker,
  syntax,             // a command's arguments (MAIL, RCPT, HELO, BDAT, no-argument commands)
  non_ascii_address,  // an 8-bit address without SMTPUTF8
  bad_sequence,       // 503 / 554 no valid recipients: a command out of order
  unknown_command,    // 500 / 502
  input_overflow,     // more pipelined input parked than the shard holds for one client
  count_,
};

struct RejectReasonName {
  RejectReason reason;
  std::string_view name;
};

inline constexpr RejectReasonName kRejectReasonNames[] = {
    {RejectReason::relay_denied, "relay_denied"},
    {RejectReason::too_big, "message_too_big"},
    {RejectReason::too_many_recipients, "too_many_recipients"},
    {RejectReason::line_too_long, "line_too_long"},
    {RejectReason::bare_newline, "bare_newline"},
    {RejectReason::mail_loop, "mail_loop"},
    {RejectReason::spool_low, "spool_low"},
    {RejectReason::spool_error, "spool_error"},
    {RejectReason::too_many_connections, "too_many_connections"},
    {RejectReason::too_many_from_client, "too_many_from_client"},
    {RejectReason::rate_limited, "rate_limited"},
    {RejectReason::timeout, "timeout"},
    {RejectReason::too_many_errors, "too_many_errors"},
    {RejectReason::proxy_invalid, "proxy_invalid"},
    {RejectReason::early_talker, "early_talker"},
    {RejectReason::syntax, "syntax"},
    {RejectReason::non_ascii_address, "non_ascii_address"},
    {RejectReason::bad_sequence, "bad_sequence"},
    {RejectReason::unknown_command, "unknown_command"},
    {RejectReason::input_overflow, "input_overflow"},
};

constexpr bool reject_reason_names_in_order() {
  for (size_t i = 0; i < std::size(kRejectReasonNames); ++i) {
    if (static_cast<size_t>(kRejectReasonNames[i].reason) != i) {
      return false;
    }
  }
  return true;
}
static_assert(std::size(kRejectReasonNames) == static_cast<size_t>(RejectReason::count_),
              "every RejectReason needs a name");
static_assert(reject_reason_names_in_order(), "kRejectReasonNames must follow the enum's order");

// `reason` is one of ours (never count_): indexing is checked by the static_asserts above.
constexpr std::string_view reject_reason_name(RejectReason reason) {
  return static_cast<size_t>(reason) < std::size(kRejectReasonNames)
             ? kRejectReasonNames[static_cast<size_t>(reason)].name
             : std::string_view("unknown");
}

}  // namespace sluice::smtp

namespace sluice::smtp::reply {

inline constexpr std::string_view kOk = "250 2.0.0 Ok\r\n";
inline constexpr std::string_view kSenderOk = "250 2.1.0 Ok\r\n";
inline constexpr std::string_view kRecipientOk = "250 2.1.5 Ok\r\n";
inline constexpr std::string_view kStartData = "354 End data with <CR><LF>.<CR><LF>\r\n";
inline constexpr std::string_view kBye = "221 2.0.0 Bye\r\n";
inline constexpr std::string_view kVrfy =
    "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n";
inline constexpr std::string_view kHelp = "214 2.0.0 See https://www.rfc-editor.org/rfc/rfc5321\r\n";
inline constexpr std::string_view kChunkOk = "250 2.0.0 Ok: chunk received\r\n";

inline constexpr std::string_view kShuttingDown = "421 4.3.2 Service shutting down, try again later\r\n";
inline constexpr std::string_view kTooManyConnections = "421 4.7.0 Too many connections, try again later\r\n";
inline constexpr std::string_view kTooManyFromYou = "421 4.7.0 Too many connections from your address\r\n";
inline constexpr std::string_view kRateExceeded = "421 4.7.0 Connection rate limit exceeded\r\n";
inline constexpr std::string_view kTooManyErrors = "421 4.7.0 Too many errors\r\n";
inline constexpr std::string_view kTooMuchInput = "421 4.7.0 Error: too much pipelined input\r\n";
inline constexpr std::string_view kTimeout = "421 4.4.2 Error: timeout exceeded\r\n";
inline constexpr std::string_view kSpoolLow = "452 4.3.1 Insufficient system storage\r\n";
inline constexpr std::string_view kBodyMemoryExceeded =
    "452 4.3.1 Error: message larger than the memory this server holds for message bodies\r\n";
inline constexpr std::string_view kBodyMemoryExceededClosing =
    "421 4.3.1 Error: message larger than the memory this server holds for message bodies; closing\r\n";
inline constexpr std::string_view kTooManyRecipients = "452 4.5.3 Error: too many recipients\r\n";
inline constexpr std::string_view kSpoolFailed = "451 4.3.0 Error: queue file write error\r\n";

inline constexpr std::string_view kUnknownCommand = "500 5.5.1 Error: command not recognized\r\n";
inline constexpr std::string_view kLineTooLong = "500 5.5.2 Error: line too long\r\n";
inline constexpr std::string_view kTextLineTooLong = "500 5.5.2 Error: message has a line longer than 998 octets\r\n";
inline constexpr std::string_view kNeedHelo = "503 5.5.1 Error: send HELO/EHLO first\r\n";
inline constexpr std::string_view kNestedMail = "503 5.5.1 Error: nested MAIL command\r\n";
inline constexpr std::string_view kNeedMail = "503 5.5.1 Error: need MAIL command\r\n";
inline constexpr std::string_view kNeedRcpt = "503 5.5.1 Error: need RCPT command\r\n";
inline constexpr std::string_view kNoValidRecipients = "554 5.5.1 Error: no valid recipients\r\n";
inline constexpr std::string_view kDataAfterBdat =
    "503 5.5.1 Error: DATA not allowed after BDAT in one transaction\r\n";
inline constexpr std::string_view kNoArguments = "501 5.5.4 Syntax: command takes no arguments\r\n";
inline constexpr std::string_view kHeloSyntax = "501 5.5.4 Syntax: EHLO/HELO hostname\r\n";
inline constexpr std::string_view kNotImplemented = "502 5.5.1 Error: command not implemented\r\n";
inline constexpr std::string_view kExpnDisabled = "502 5.5.1 Error: EXPN is disabled\r\n";
inline constexpr std::string_view kBdatSizeInvalid =
    "521 5.5.4 Syntax: BDAT chunk-size [LAST]; chunk end unknown, closing connection\r\n";
inline constexpr std::string_view kBadNewline = "521 5.5.2 Error: bare CR or LF is not allowed; closing connection\r\n";
inline constexpr std::string_view kMessageTooBig = "552 5.3.4 Error: message too big\r\n";
inline constexpr std::string_view kMailLoop = "554 5.4.6 Error: too many Received: headers, mail loop detected\r\n";
inline constexpr std::string_view kRelayDenied = "554 5.7.1 Relay access denied\r\n";
inline constexpr std::string_view kEarlyTalker = "554 5.5.0 Error: SMTP protocol synchronization\r\n";

}  // namespace sluice::smtp::reply
