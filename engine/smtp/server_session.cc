// SMTP server protocol (RFC 5321 with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8,
// CHUNKING, DSN: its parameters are kept for the spool). Owns one connection's protocol state; owns no socket, no file,
// no clock. Never: acknowledges a message before commit_done(), takes a bare CR/LF as a line end, or lets a HELO name
// grant anything.
#include "engine/smtp/server_session.h"

#include <algorithm>
#include <cstring>
#include <variant>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/io/assert.h"
#include "engine/io/strings.h"
#include "engine/smtp/command.h"
#include "engine/smtp/header_lines.h"
#include "engine/smtp/replies.h"

namespace sluice::smtp {
namespace {

// How much of a declared SIZE= we reserve up front, so one hostile MAIL cannot claim memory.
// It counts against the shard's body budget (Shard: BodyBudget) from MAIL on.
constexpr uint64_t kBodyReserveOctetsMax = 256 << 10;
constexpr uint64_t kBodyReserveOctetsDefault = 4096;

struct HeaderFacts {
  uint32_t received = 0;
  bool has_message_id = false;
  bool has_date = false;
};

// Looks at the field names of the header block only (lines up to the first empty line).
HeaderFacts inspect_headers(std::string_view block) {
  HeaderFacts facts;
  for_each_header_line(block, [&](std::string_view line) {
    if (line[0] != ' ' && line[0] != '\t') {
      facts.received += header_name_is(line, "Received") ? 1 : 0;
      facts.has_message_id |= header_name_is(line, "Message-ID");
      facts.has_date |= header_name_is(line, "Date");
    }
    return true;
  });
  return facts;
}

// How much of a refused command's argument a rejection report carries.
constexpr size_t kReportedArgumentOctetsMax = 300;

std::string_view without_crlf(std::string_view reply) {
  while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) {
    reply.remove_suffix(1);
  }
  // A reply that is several lines (a refusal followed by 421): report its first line.
  const size_t newline = reply.find("\r\n");
  return newline == std::string_view::npos ? reply : reply.substr(0, newline);
}

// The server's line rules: a bare CR or LF in a command line, or a bare LF ending a dropped long
// line, closes the session (SMTP smuggling); a line is judged when it has ended, as a whole.
// MAIL and RCPT may be the longest lines, so the reader stops at their limit and
// handle_command() applies each verb's own.
LineReaderSettings server_line_rules(const ServerLimits& limits) {
  return LineReaderSettings{limits.param_command_line_octets_max, BareLf::error, BareCr::error_at_line_end};
}

}  // namespace

ServerSession::ServerSession(const ServerSettings* settings, SessionHost* host, const ClientInfo& client)
    : _settings(settings), _host(host), _client(client), _lines(server_line_rules(settings->limits)) {}

void ServerSession::greet(std::string& out) const {
  str_append(&out, "220 ", _settings->hostname, " ESMTP Sluice\r\n");
}

void ServerSession::on_timeout(std::string& out) const {
  out.append(reply::kTimeout);
}

SessionStep ServerSession::on_input(std::string_view input, std::string& out) {
  SessionStep total;
  while (total.consumed < input.size() && total.action == SessionAction::none) {
    const std::string_view rest = input.substr(total.consumed);
    SessionStep step;
    switch (_phase) {
      case Phase::command:
        step = on_command_input(rest, out);
        break;
      case Phase::data:
        step = on_data_input(rest, out);
        break;
      case Phase::bdat_chunk:
        step = on_bdat_input(rest, out);
        break;
      case Phase::committing:
      case Phase::closed:
        return total;  // the owner passes the rest again after commit_done()
    }
    total.consumed += step.consumed;
    total.action = step.action;
  }
  return total;
}

// One command line at a time: after DATA or BDAT the rest of the input is not commands.
SessionStep ServerSession::on_command_input(std::string_view input, std::string& out) {
  const LineStep step = _lines.read(input);
  if (step.line_ended) {
    ++_counts.commands;  // every line end, whatever became of the line (the disconnect log counts them)
  }
  switch (step.event) {
    case LineEvent::need_more:
    case LineEvent::skipped_end:
      return {step.consumed, SessionAction::none};
    case LineEvent::line:
      return {step.consumed, handle_command(step.line, out)};
    case LineEvent::too_long:
      return {step.consumed, reject(RejectReason::line_too_long, reply::kLineTooLong, out)};
    case LineEvent::bare_cr:
    case LineEvent::bare_lf:
      return {step.consumed, close_bare_newline(out)};
  }
  SLUICE_ASSERT(false, "unknown line event");
  return {step.consumed, SessionAction::none};
}

void ServerSession::report(RejectReason reason, std::string_view text, std::string_view address, bool log) {
  ++_counts.rejections;
  RejectEvent event;
  event.reason = reason;
  event.reply = without_crlf(text);
  event.address = address.substr(0, kReportedArgumentOctetsMax);
  event.helo = _helo;
  event.in_transaction = _mail_given;
  event.sender = _sender;
  event.recipients = &_recipients;
  event.log = log;
  _host->on_reject(event, _client);
}

SessionAction ServerSession::reject(RejectReason reason, std::string_view text, std::string& out,
                                    std::string_view address, bool counts_as_error) {
  report(reason, text, address);
  out.append(text);
  return counts_as_error ? count_error(out) : SessionAction::none;
}

SessionAction ServerSession::reject_parse_error(const ParseError& error, std::string_view argument, std::string& out) {
  const std::string text = str_cat(error.code, " ", error.enhanced, " ", error.text, "\r\n");
  return reject(error.reason, text, out, argument);
}

SessionAction ServerSession::close_bare_newline(std::string& out) {
  report(RejectReason::bare_newline, reply::kBadNewline, {});
  out.append(reply::kBadNewline);
  _phase = Phase::closed;
  return SessionAction::close;
}

SessionAction ServerSession::count_error(std::string& out) {
  ++_errors;
  if (_errors >= _settings->limits.errors_max) {
    report(RejectReason::too_many_errors, reply::kTooManyErrors, {});
    out.append(reply::kTooManyErrors);
    _phase = Phase::closed;
    return SessionAction::close;
  }
  return SessionAction::none;
}

SessionAction ServerSession::handle_command(std::string_view text, std::string& out) {
  const CommandLine command = parse_command_line(text);
  const bool has_params = command.verb == Verb::mail || command.verb == Verb::rcpt;
  const uint32_t limit =
      has_params ? _settings->limits.param_command_line_octets_max : _settings->limits.command_line_octets_max;
  if (text.size() + 2 > limit) {
    return reject(RejectReason::line_too_long, reply::kLineTooLong, out);
  }
  switch (command.verb) {
    case Verb::ehlo:
      return handle_helo(command.argument, true, out);
    case Verb::helo:
      return handle_helo(command.argument, false, out);
    case Verb::mail:
      return handle_mail(command.argument, out);
    case Verb::rcpt:
      return handle_rcpt(command.argument, out);
    case Verb::data:
      return handle_data(command.argument, out);
    case Verb::bdat:
      return handle_bdat(command.argument, out);
    case Verb::rset:
      if (!command.argument.empty()) {
        return reject(RejectReason::syntax, reply::kNoArguments, out, command.argument);
      }
      reset_transaction();
      out.append(reply::kOk);
      return SessionAction::none;
    case Verb::noop:
      out.append(reply::kOk);
      return SessionAction::none;
    case Verb::quit:
      out.append(reply::kBye);
      _phase = Phase::closed;
      return SessionAction::close;
    case Verb::vrfy:
      out.append(reply::kVrfy);
      return SessionAction::none;
    case Verb::expn:
      return reject(RejectReason::unknown_command, reply::kExpnDisabled, out);
    case Verb::help:
      out.append(reply::kHelp);
      return SessionAction::none;
    case Verb::turn:
    case Verb::send:
    case Verb::soml:
    case Verb::saml:
    case Verb::starttls:
    case Verb::auth:
      return reject(RejectReason::unknown_command, reply::kNotImplemented, out);
    case Verb::unknown:
      break;
  }
  return reject(RejectReason::unknown_command, reply::kUnknownCommand, out, text.substr(0, text.find(' ')));
}

SessionAction ServerSession::handle_helo(std::string_view argument, bool extended, std::string& out) {
  const std::string_view name = strip_whitespace(argument);
  if (name.empty() || name.find(' ') != std::string_view::npos) {
    return reject(RejectReason::syntax, reply::kHeloSyntax, out, argument);
  }
  if (extended && !_settings->offer.ehlo) {
    return reject(RejectReason::unknown_command, reply::kNotImplemented, out, "EHLO");  // a HELO-only server
  }
  reset_transaction();
  _helo_given = true;
  _esmtp = extended;
  _helo.assign(name.substr(0, 255));
  if (!extended) {
    str_append(&out, "250 ", _settings->hostname, "\r\n");
    return SessionAction::none;
  }
  append_ehlo_reply(out);
  return SessionAction::none;
}

void ServerSession::append_ehlo_reply(std::string& out) const {
  const EhloOffer& offer = _settings->offer;
  str_append(&out, "250-", _settings->hostname, "\r\n");
  if (offer.pipelining) {
    out.append("250-PIPELINING\r\n");
  }
  if (offer.size) {
    str_append(&out, "250-SIZE ", _settings->limits.message_octets_max, "\r\n");
  }
  if (offer.eight_bit_mime) {
    out.append("250-8BITMIME\r\n");
  }
  out.append("250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n");
  if (offer.chunking) {
    out.append("250-CHUNKING\r\n");
  }
  out.append("250 DSN\r\n");
}

SessionAction ServerSession::apply_verdict(const HostVerdict& verdict, std::string& out) {
  out.append(verdict.reply);
  if (verdict.close) {
    _phase = Phase::closed;
    return SessionAction::close;
  }
  return SessionAction::none;
}

SessionAction ServerSession::handle_mail(std::string_view argument, std::string& out) {
  if (!_helo_given) {
    return reject(RejectReason::bad_sequence, reply::kNeedHelo, out);
  }
  if (_mail_given) {
    return reject(RejectReason::bad_sequence, reply::kNestedMail, out);
  }
  const auto parsed = parse_mail_from(argument, _esmtp);
  if (const auto* error = std::get_if<ParseError>(&parsed)) {
    return reject_parse_error(*error, argument, out);
  }
  const auto& mail = std::get<MailFrom>(parsed);
  if (mail.size && *mail.size > _settings->limits.message_octets_max) {
    return reject(RejectReason::too_big, reply::kMessageTooBig, out, mail.reverse_path);
  }
  if (mail.size && *mail.size > _settings->limits.body_memory_octets_max) {
    return reject(RejectReason::too_big, reply::kBodyMemoryExceeded, out);  // could never be held
  }
  if (_host->spool_space_low()) {
    return reject(RejectReason::spool_low, reply::kSpoolLow, out, mail.reverse_path);
  }
  if (const HostVerdict verdict = _host->mail_verdict(mail.reverse_path); !verdict.reply.empty()) {
    return apply_verdict(verdict, out);
  }
  _mail_given = true;
  _mail_ms = _host->now_ms();
  _sender.assign(mail.reverse_path);
  _ret = mail.ret_kind;
  _envid.assign(mail.envid);
  _smtputf8 = mail.smtputf8;
  _body_8bit_declared = mail.body == MailFrom::Body::eight_bit_mime;
  const uint64_t declared = mail.size.value_or(0);
  _body.reserve(std::min(kBodyReserveOctetsMax, std::max(kBodyReserveOctetsDefault, declared + declared / 16)));
  out.append(reply::kSenderOk);
  return SessionAction::none;
}

bool ServerSession::recipient_allowed(std::string_view forward_path) const {
  if (_client.relay_allowed) {
    return true;
  }
  const std::string domain = to_lower(domain_of(forward_path));
  if (domain.empty()) {
    return equals_ignore_case(forward_path, "postmaster");
  }
  for (const std::string& entry : _settings->relay_domains) {
    if (entry == domain) {
      return true;
    }
    if (!entry.empty() && entry[0] == '.' && domain.ends_with(entry)) {
      return true;
    }
  }
  return false;
}

SessionAction ServerSession::handle_rcpt(std::string_view argument, std::string& out) {
  if (!_mail_given) {
    return reject(RejectReason::bad_sequence, reply::kNeedMail, out);
  }
  _rcpt_attempted = true;
  const auto parsed = parse_rcpt_to(argument, _smtputf8);
  if (const auto* error = std::get_if<ParseError>(&parsed)) {
    return reject_parse_error(*error, argument, out);
  }
  const auto& rcpt = std::get<RcptTo>(parsed);
  if (!recipient_allowed(rcpt.forward_path)) {
    return reject(RejectReason::relay_denied, reply::kRelayDenied, out, rcpt.forward_path);
  }
  if (_recipients.size() >= _settings->limits.recipients_max) {
    // Not the client's error: a client that sends more recipients than we take gets 452 for the
    // rest and sends the message to the first recipients_max (RFC 5321 4.5.3.1.8). Each one is
    // counted, the first one logged: a 10,000-recipient transaction is not 9,000 log lines.
    out.append(reply::kTooManyRecipients);
    report(RejectReason::too_many_recipients, reply::kTooManyRecipients, rcpt.forward_path, !_excess_rcpt_reported);
    _excess_rcpt_reported = true;
    return SessionAction::none;
  }
  if (const HostVerdict verdict = _host->recipient_verdict(rcpt.forward_path); !verdict.reply.empty()) {
    return apply_verdict(verdict, out);
  }
  _recipients.emplace_back(rcpt.forward_path);
  _recipient_dsn.push_back(RecipientDsn{rcpt.notify_flags, std::string(rcpt.orcpt)});
  out.append(reply::kRecipientOk);
  return SessionAction::none;
}

SessionAction ServerSession::handle_data(std::string_view argument, std::string& out) {
  if (!argument.empty()) {
    return reject(RejectReason::syntax, reply::kNoArguments, out, argument);
  }
  if (!_mail_given) {
    return reject(RejectReason::bad_sequence, reply::kNeedMail, out);
  }
  if (_used_bdat) {
    return reject(RejectReason::bad_sequence, reply::kDataAfterBdat, out);
  }
  if (_recipients.empty()) {
    return reject(RejectReason::bad_sequence, no_recipients_reply(), out);
  }
  _scan = DataScanState{};
  _too_big = false;
  _body.clear();
  _phase = Phase::data;
  out.append(reply::kStartData);
  return SessionAction::none;
}

SessionStep ServerSession::on_data_input(std::string_view input, std::string& out) {
  const ScanResult result = scan_data(_scan, input.data(), input.size());
  if (result.stop == ScanStop::bare_newline) {
    return {result.consumed, close_bare_newline(out)};
  }
  // Past the limit we stop storing (the body is dropped) but keep scanning to the end of data.
  if (!_too_big && _scan.wire_octets - _scan.stuffed_dots > _settings->limits.message_octets_max + 5) {
    _too_big = true;
    std::string().swap(_body);
  }
  if (!_too_big) {
    _body.append(input.data(), result.consumed);
  }
  if (result.stop != ScanStop::end_of_data) {
    return {result.consumed, SessionAction::none};
  }
  if (!_too_big) {
    _body.resize(_scan.body_octets);
  }
  return {result.consumed, finish_message(out)};
}

SessionAction ServerSession::handle_bdat(std::string_view argument, std::string& out) {
  const auto parsed = parse_bdat(argument);
  if (std::holds_alternative<ParseError>(parsed)) {
    // Without a valid size we cannot know where the chunk ends: whatever follows could be
    // chunk octets or commands, so reading on would let chunk content run as commands. Say so,
    // then close (as for a bare LF).
    report(RejectReason::syntax, reply::kBdatSizeInvalid, argument);
    out.append(reply::kBdatSizeInvalid);
    _phase = Phase::closed;
    return SessionAction::close;
  }
  const auto& bdat = std::get<BdatArgs>(parsed);
  SLUICE_ASSERT(_phase == Phase::command);
  _bdat_remaining = bdat.chunk_octets;
  _bdat_last = bdat.last;
  _bdat_discard = !_mail_given || _recipients.empty() || _too_big;
  if (!_bdat_discard && !_used_bdat) {
    _used_bdat = true;
    _bdat = BdatEncodeState{};
    _body.clear();
  }
  _phase = Phase::bdat_chunk;
  if (_bdat_remaining == 0) {
    return on_bdat_input({}, out).action;
  }
  return SessionAction::none;
}

SessionStep ServerSession::on_bdat_input(std::string_view input, std::string& out) {
  const size_t take = static_cast<size_t>(std::min<uint64_t>(_bdat_remaining, input.size()));
  _bdat_remaining -= take;
  if (!_bdat_discard) {
    if (bdat_encode(_bdat, input.substr(0, take), _body) == BdatStop::bare_newline) {
      return {take, close_bare_newline(out)};
    }
    if (_bdat.body_octets - _bdat.stuffed_dots > _settings->limits.message_octets_max + 2) {
      _too_big = true;
      _bdat_discard = true;
      std::string().swap(_body);
    }
  }
  if (_bdat_remaining > 0) {
    return {take, SessionAction::none};
  }
  _phase = Phase::command;
  if (_bdat_discard) {
    return {take, refuse_bdat_chunk(out)};
  }
  if (!_bdat_last) {
    out.append(reply::kChunkOk);
    return {take, SessionAction::none};
  }
  if (bdat_finish(_bdat, _body) == BdatStop::bare_newline) {
    return {take, close_bare_newline(out)};
  }
  return {take, finish_message(out)};
}

// End of DATA or BDAT LAST: check the whole message, then hand it to the owner to store.
// The answer to a chunk read and dropped: the transaction is over the size limit (reported once,
// with its envelope), or there is no transaction to put it in.
SessionAction ServerSession::refuse_bdat_chunk(std::string& out) {
  SessionAction action = SessionAction::none;
  if (_too_big) {
    if (_too_big_reported) {
      out.append(reply::kMessageTooBig);
      action = count_error(out);
    } else {
      _too_big_reported = true;
      action = reject(RejectReason::too_big, reply::kMessageTooBig, out);
    }
  } else {
    action = reject(RejectReason::bad_sequence, _mail_given ? no_recipients_reply() : reply::kNeedMail, out);
  }
  if (_bdat_last) {
    reset_transaction();
  }
  return action;
}

std::string_view ServerSession::no_recipients_reply() const {
  return _rcpt_attempted ? reply::kNoValidRecipients : reply::kNeedRcpt;
}

SessionAction ServerSession::finish_message(std::string& out) {
  const bool from_bdat = _used_bdat;
  const uint64_t wire = from_bdat ? _bdat.body_octets : _scan.body_octets;
  const uint64_t stuffed = from_bdat ? _bdat.stuffed_dots : _scan.stuffed_dots;
  const bool long_line = from_bdat ? _bdat.line_too_long : _scan.line_too_long;
  const int64_t header_end = from_bdat ? _bdat.header_end_octets : _scan.header_end_octets;
  const bool eight_bit = from_bdat ? _bdat.has_8bit : _scan.has_8bit;
  _phase = Phase::command;
  const uint64_t rfc_size = wire - stuffed;
  if (_too_big || rfc_size > _settings->limits.message_octets_max) {
    return refuse_message(RejectReason::too_big, reply::kMessageTooBig, out);
  }
  if (long_line) {
    return refuse_message(RejectReason::line_too_long, reply::kTextLineTooLong, out);
  }
  const size_t header_octets = header_end < 0 ? _body.size() : static_cast<size_t>(header_end);
  const HeaderFacts facts = inspect_headers(std::string_view(_body).substr(0, header_octets));
  if (facts.received > _settings->limits.received_headers_max) {
    return refuse_message(RejectReason::mail_loop, reply::kMailLoop, out);
  }
  _ready.sender = std::move(_sender);
  _ready.recipients = std::move(_recipients);
  _ready.recipient_dsn = std::move(_recipient_dsn);
  _ready.ret = _ret;
  _ready.envid = std::move(_envid);
  _ready.helo = _helo;
  _ready.esmtp = _esmtp;
  _ready.body_8bit = _body_8bit_declared || eight_bit;
  _ready.smtputf8 = _smtputf8;
  _ready.add_message_id = _client.relay_allowed && !facts.has_message_id;
  _ready.add_date = _client.relay_allowed && !facts.has_date;
  _ready.rfc_size = rfc_size;
  _ready.started_ms = _mail_ms;
  _ready.body = std::move(_body);
  reset_transaction();
  _phase = Phase::committing;
  return SessionAction::commit;
}

// A whole message refused at its end: reported with its envelope, then the transaction is over.
SessionAction ServerSession::refuse_message(RejectReason reason, std::string_view text, std::string& out) {
  const SessionAction action = reject(reason, text, out);
  reset_transaction();
  return action;
}

AcceptedMessage ServerSession::take_message() {
  SLUICE_ASSERT(_phase == Phase::committing);
  return std::move(_ready);
}

void ServerSession::commit_done(bool stored, std::string_view queue_id, std::string& out) {
  SLUICE_ASSERT(_phase == Phase::committing);
  _phase = Phase::command;
  if (stored) {
    ++_counts.messages;
    str_append(&out, "250 2.0.0 Ok: queued as ", queue_id, "\r\n");
  } else {
    ++_counts.failed;
    out.append(reply::kSpoolFailed);
  }
}

void ServerSession::reset_transaction() {
  _mail_given = false;
  _rcpt_attempted = false;
  _used_bdat = false;
  _too_big = false;
  _too_big_reported = false;
  _excess_rcpt_reported = false;
  _smtputf8 = false;
  _body_8bit_declared = false;
  _sender.clear();
  _recipients.clear();
  _recipient_dsn.clear();
  _ret = DsnRet::none;
  _envid.clear();
  if (_body.capacity() > kBodyReserveOctetsDefault) {
    std::string().swap(_body);
  } else {
    _body.clear();
  }
}

}  // namespace sluice::smtp
