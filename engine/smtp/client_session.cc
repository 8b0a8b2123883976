// SMTP client protocol (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN). Owns one outbound
// connection's protocol state and the results of its current transaction; owns no socket, no file,
// no clock, and never the message body. Never: asserts on the server's bytes, sends a command the
// server did not advertise the extension for, or leaves a recipient of a transaction without
// exactly one result.
#include "engine/smtp/client_session.h"

#include <utility>

#include "engine/io/assert.h"
#include "engine/io/strings.h"

namespace sluice::smtp {
namespace {

uint8_t reply_class(const Reply& reply) {
  return static_cast<uint8_t>(reply.code() / 100);
}

// The reply as a result: its class decides, its text is kept (bounded) for the DSN and the log.
RecipientResult from_reply(ClientCommand command, const Reply& reply) {
  RecipientResult result;
  const uint8_t klass = reply_class(reply);
  result.status = klass == 2   ? DeliveryStatus::delivered
                  : klass == 5 ? DeliveryStatus::bounced
                               : DeliveryStatus::deferred;
  result.cause = ResultCause::reply;
  result.command = command;
  result.code = reply.code();
  result.enhanced = reply.enhanced().value_or(EnhancedStatus{klass, 0, 0});
  for (size_t i = 0; i < reply.line_count() && result.text.size() < kResultTextOctetsMax; ++i) {
    if (i != 0) {
      result.text += ' ';
    }
    result.text += reply.line(i);
  }
  if (result.text.size() > kResultTextOctetsMax) {
    result.text.resize(kResultTextOctetsMax);
  }
  return result;
}

RecipientResult ours(DeliveryStatus status, ResultCause cause, ClientCommand command, EnhancedStatus enhanced,
                     std::string text) {
  RecipientResult result;
  result.status = status;
  result.cause = cause;
  result.command = command;
  result.enhanced = enhanced;
  result.text = std::move(text);
  return result;
}

bool clean_envelope_string(std::string_view text) {
  return text.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

void append_notify(uint8_t notify, std::string& out) {
  if ((notify & kNotifyNever) != 0) {
    out += " NOTIFY=NEVER";
    return;
  }
  out += " NOTIFY=";
  bool first = true;
  for (const auto& [bit, name] :
       {std::pair{kNotifySuccess, "SUCCESS"}, std::pair{kNotifyFailure, "FAILURE"}, std::pair{kNotifyDelay, "DELAY"}}) {
    if ((notify & bit) != 0) {
      out += first ? "" : ",";
      out += name;
      first = false;
    }
  }
}

}  // namespace

std::string_view client_command_name(ClientCommand command) {
  switch (command) {
    case ClientCommand::greeting:
      return "greeting";
    case ClientCommand::ehlo:
      return "EHLO";
    case ClientCommand::helo:
      return "HELO";
    case ClientCommand::rset:
      return "RSET";
    case ClientCommand::mail:
      return "MAIL FROM";
    case ClientCommand::rcpt:
      return "RCPT TO";
    case ClientCommand::data:
      return "DATA";
    case ClientCommand::data_end:
      return "end of DATA";
    case ClientCommand::quit:
      return "QUIT";
  }
  return "unknown";
}

std::string_view delivery_status_name(DeliveryStatus status) {
  switch (status) {
    case DeliveryStatus::delivered:
      return "delivered";
    case DeliveryStatus::deferred:
      return "deferred";
    case DeliveryStatus::bounced:
      return "bounced";
  }
  return "unknown";
}

std::string_view result_cause_name(ResultCause cause) {
  switch (cause) {
    case ResultCause::reply:
      return "reply";
    case ResultCause::message_too_big:
      return "message_too_big";
    case ResultCause::smtputf8_refused:
      return "smtputf8_refused";
    case ResultCause::eight_bit_refused:
      return "eight_bit_refused";
    case ResultCause::invalid_envelope:
      return "invalid_envelope";
    case ResultCause::protocol_error:
      return "protocol_error";
    case ResultCause::timeout:
      return "timeout";
    case ResultCause::connection_lost:
      return "connection_lost";
    case ResultCause::unroutable:
      return "unroutable";
    case ResultCause::connect_failed:
      return "connect_failed";
  }
  return "unknown";
}

std::string_view client_action_name(ClientAction action) {
  switch (action) {
    case ClientAction::none:
      return "none";
    case ClientAction::ready:
      return "ready";
    case ClientAction::send_body:
      return "send_body";
    case ClientAction::transaction_done:
      return "transaction_done";
    case ClientAction::close:
      return "close";
  }
  return "unknown";
}

std::string_view client_state_name(ClientState state) {
  switch (state) {
    case ClientState::handshake:
      return "handshake";
    case ClientState::idle:
      return "idle";
    case ClientState::transaction:
      return "transaction";
    case ClientState::body:
      return "body";
    case ClientState::quitting:
      return "quitting";
    case ClientState::closed:
      return "closed";
  }
  return "unknown";
}

ClientSession::ClientSession(const ClientSettings* settings, uint64_t now_ms) : _settings(settings) {
  SLUICE_ASSERT(settings != nullptr && !settings->hostname.empty());
  SLUICE_ASSERT(clean_envelope_string(settings->hostname) && settings->hostname.find(' ') == std::string::npos);
  _pending.push_back(Pending{ClientCommand::greeting});
  restart_timer(now_ms);
}

// --- the owner's calls ----------------------------------------------------------------------

ClientStep ClientSession::on_input(std::string_view input, uint64_t now_ms, std::string& out) {
  SLUICE_ASSERT(!_awaiting_body, "body_queued() comes before more input");
  SLUICE_ASSERT(!_results_ready, "take_results() comes before more input");
  if (_state == ClientState::closed) {
    return ClientStep{input.size(), ClientAction::close};
  }
  size_t consumed = 0;
  while (consumed < input.size()) {
    const ReplyFeed feed = _parser.feed(input.substr(consumed));
    consumed += feed.consumed;
    if (feed.stop == ReplyStop::need_more) {
      break;
    }
    if (feed.stop == ReplyStop::error) {
      // Nothing awaited (an idle connection): the garbage stands where the next MAIL would be answered.
      const bool awaited = _pending_head < _pending.size();
      const ClientCommand command = awaited ? _pending[_pending_head].command : ClientCommand::mail;
      return ClientStep{input.size(),
                        fail_and_close(ours(DeliveryStatus::deferred, ResultCause::protocol_error, command, {4, 5, 0},
                                            str_cat("protocol error in the reply", awaited ? " to " : "",
                                                    awaited ? client_command_name(command) : "", ": ",
                                                    reply_error_name(_parser.error()))))};
    }
    const ClientAction action = on_reply(_parser.reply(), now_ms, out);
    if (action == ClientAction::close) {
      return ClientStep{input.size(), action};
    }
    if (action != ClientAction::none) {
      return ClientStep{consumed, action};
    }
  }
  return ClientStep{consumed, ClientAction::none};
}

bool ClientSession::can_start() const {
  return !_has_transaction && !_results_ready && (_state == ClientState::handshake || _state == ClientState::idle);
}

ClientAction ClientSession::start_transaction(ClientTransaction transaction, uint64_t now_ms, std::string& out) {
  SLUICE_ASSERT(can_start());
  SLUICE_ASSERT(!transaction.recipients.empty() && transaction.recipients.size() <= kClientRecipientsMax);
  _transaction = std::move(transaction);
  const size_t count = _transaction.recipients.size();
  _results.assign(count, RecipientResult{});
  _resolved.assign(count, 0);
  _accepted.assign(count, 0);
  _has_transaction = true;
  _mail_failed = false;
  _empty_body = false;
  if (_state == ClientState::handshake) {
    return ClientAction::none;  // begins when the handshake ends
  }
  return begin_transaction(now_ms, out);
}

std::vector<RecipientResult> ClientSession::take_results() {
  SLUICE_ASSERT(_results_ready);
  _results_ready = false;
  std::vector<RecipientResult> results = std::move(_results);
  _results.clear();
  return results;
}

void ClientSession::body_queued(bool body_ends_with_crlf, uint64_t now_ms, std::string& out) {
  SLUICE_ASSERT(_awaiting_body && _state == ClientState::body);
  _awaiting_body = false;
  if (!_bdat) {
    out += body_ends_with_crlf ? ".\r\n" : "\r\n.\r\n";
  }
  _pending.push_back(Pending{ClientCommand::data_end});
  // Until body_sent(), the wait is for the body's sends (data block), not yet for the reply.
  _body_sending = true;
  _deadline_ms = now_ms + _settings->timeouts.timeout_ms_data_block;
}

void ClientSession::body_progress(uint64_t now_ms) {
  if (_state == ClientState::body && _body_sending) {
    _deadline_ms = now_ms + _settings->timeouts.timeout_ms_data_block;
  }
}

void ClientSession::body_sent(uint64_t now_ms) {
  if (_state == ClientState::body && _body_sending) {
    _body_sending = false;
    _deadline_ms = now_ms + _settings->timeouts.timeout_ms_data_termination;
  }
}

ClientAction ClientSession::finish(uint64_t now_ms, std::string& out) {
  SLUICE_ASSERT(!_has_transaction && !_results_ready);
  if (_state == ClientState::idle) {
    return quit(now_ms, out);
  }
  if (_state == ClientState::handshake) {
    _state = ClientState::closed;
    _deadline_ms.reset();
    return ClientAction::close;
  }
  return _state == ClientState::closed ? ClientAction::close : ClientAction::none;
}

ClientAction ClientSession::on_timeout(uint64_t now_ms, std::string& out) {
  (void)out;
  if (_state == ClientState::closed) {
    return ClientAction::close;
  }
  if (!_deadline_ms || now_ms < *_deadline_ms) {
    return ClientAction::none;
  }
  if (_state == ClientState::quitting) {
    _state = ClientState::closed;
    _deadline_ms.reset();
    return ClientAction::close;
  }
  const ClientCommand command =
      _pending_head < _pending.size() ? _pending[_pending_head].command : ClientCommand::data_end;
  if (_body_sending) {
    return fail_and_close(ours(DeliveryStatus::deferred, ResultCause::timeout, command, {4, 4, 2},
                               "timed out while sending the message body"));
  }
  return fail_and_close(ours(DeliveryStatus::deferred, ResultCause::timeout, command, {4, 4, 2},
                             str_cat("timed out waiting for the reply to ", client_command_name(command))));
}

ClientAction ClientSession::on_close() {
  if (_state == ClientState::closed) {
    return ClientAction::close;
  }
  if (_state == ClientState::quitting || (_state == ClientState::idle && !_has_transaction)) {
    // After QUIT a close is the expected end; an idle pooled connection closed by the server just ends.
    const bool quitting = _state == ClientState::quitting;
    _state = ClientState::closed;
    _deadline_ms.reset();
    if (!quitting && !_failure) {
      _failure = ours(DeliveryStatus::deferred, ResultCause::connection_lost, ClientCommand::mail, {4, 4, 2},
                      "connection closed by the server while idle");
    }
    return ClientAction::close;
  }
  const ClientCommand command = _pending_head < _pending.size() ? _pending[_pending_head].command : ClientCommand::data;
  return fail_and_close(ours(DeliveryStatus::deferred, ResultCause::connection_lost, command, {4, 4, 2},
                             str_cat("lost connection while waiting for the reply to ", client_command_name(command))));
}

std::optional<uint64_t> ClientSession::next_deadline_ms() const {
  return _deadline_ms;
}

// --- replies ----------------------------------------------------------------------------------

ClientAction ClientSession::on_reply(const Reply& reply, uint64_t now_ms, std::string& out) {
  if (_pending_head == _pending.size()) {
    // Nobody asked: a server that closes an idle connection says 421 first (RFC 5321 3.8).
    if (reply.code() == 421 && _state == ClientState::idle) {
      return fail_and_quit(from_reply(ClientCommand::mail, reply), now_ms, out);
    }
    return fail_and_close(ours(DeliveryStatus::deferred, ResultCause::protocol_error, ClientCommand::mail, {4, 5, 0},
                               str_cat("unexpected reply from the server: ", reply.code())));
  }
  const Pending pending = _pending[_pending_head++];
  if (_pending_head == _pending.size()) {
    _pending.clear();
    _pending_head = 0;
  }
  restart_timer(now_ms);
  if (_observer != nullptr) {
    _observer->on_reply(pending.command, reply.code());
  }
  if (_state == ClientState::quitting) {
    return on_quitting_reply(pending.command, reply);
  }
  if (reply.code() == 421) {
    return fail_and_quit(from_reply(pending.command, reply), now_ms, out);
  }
  switch (pending.command) {
    case ClientCommand::greeting:
    case ClientCommand::ehlo:
    case ClientCommand::helo:
      return on_handshake_reply(pending.command, reply, now_ms, out);
    case ClientCommand::quit:
      SLUICE_ASSERT(false, "QUIT is only sent when quitting");
      return ClientAction::close;
    default:
      return on_transaction_reply(pending, reply, now_ms, out);
  }
}

ClientAction ClientSession::on_quitting_reply(ClientCommand command, const Reply& reply) {
  if (command == ClientCommand::quit || reply.code() == 354) {
    // The reply to QUIT, or a 354 that turned our QUIT into message text: done either way.
    _state = ClientState::closed;
    _deadline_ms.reset();
    _pending.clear();
    _pending_head = 0;
    return ClientAction::close;
  }
  return ClientAction::none;  // a pipelined command's reply after a 421: nothing depends on it
}

ClientAction ClientSession::on_handshake_reply(ClientCommand command, const Reply& reply, uint64_t now_ms,
                                               std::string& out) {
  const uint8_t klass = reply_class(reply);
  if (klass == 3) {
    return fail_and_close(ours(DeliveryStatus::deferred, ResultCause::protocol_error, command, {4, 5, 0},
                               str_cat("unexpected reply to ", client_command_name(command), ": ", reply.code())));
  }
  if (command == ClientCommand::ehlo && klass == 5) {
    // No ESMTP here (RFC 5321 3.2): say HELO and use no extension.
    send(ClientCommand::helo, 0, str_cat("HELO ", _settings->hostname, "\r\n"), now_ms, out);
    return ClientAction::none;
  }
  if (klass != 2) {
    return fail_and_quit(from_reply(command, reply), now_ms, out);
  }
  if (command == ClientCommand::greeting) {
    send(ClientCommand::ehlo, 0, str_cat("EHLO ", _settings->hostname, "\r\n"), now_ms, out);
    return ClientAction::none;
  }
  _esmtp = command == ClientCommand::ehlo;
  if (_esmtp) {
    _caps = parse_ehlo_reply(reply).value_or(EhloCapabilities{});
    _caps.pipelining = _caps.pipelining && _settings->pipelining;
  }
  return handshake_done(now_ms, out);
}

ClientAction ClientSession::handshake_done(uint64_t now_ms, std::string& out) {
  _state = ClientState::idle;
  _deadline_ms.reset();
  if (_has_transaction) {
    return begin_transaction(now_ms, out);
  }
  return ClientAction::ready;
}

ClientAction ClientSession::on_transaction_reply(const Pending& pending, const Reply& reply, uint64_t now_ms,
                                                 std::string& out) {
  const uint8_t klass = reply_class(reply);
  if (pending.command == ClientCommand::data) {
    return on_data_reply(reply, now_ms, out);
  }
  if (pending.command == ClientCommand::data_end) {
    return on_data_end_reply(reply);
  }
  if (klass == 3) {
    return fail_and_close(
        ours(DeliveryStatus::deferred, ResultCause::protocol_error, pending.command, {4, 5, 0},
             str_cat("unexpected reply to ", client_command_name(pending.command), ": ", reply.code())));
  }
  const bool pipelined = _caps.pipelining;
  switch (pending.command) {
    case ClientCommand::rset:
      if (klass != 2) {
        // The server's transaction state is unknown: defer, and do not keep this connection.
        RecipientResult result = from_reply(ClientCommand::rset, reply);
        result.status = DeliveryStatus::deferred;
        return fail_and_close(result);
      }
      if (!pipelined) {
        std::string line;
        write_mail(line);
        send(ClientCommand::mail, 0, line, now_ms, out);
      }
      return ClientAction::none;
    case ClientCommand::mail:
      if (klass != 2) {
        resolve_open(from_reply(ClientCommand::mail, reply));
        _mail_failed = true;
        if (!pipelined) {
          return end_transaction(true);
        }
        return ClientAction::none;  // the pipelined RCPT and DATA replies follow
      }
      if (!pipelined) {
        send_next_unpipelined(0, now_ms, out);
      }
      return ClientAction::none;
    case ClientCommand::rcpt: {
      SLUICE_ASSERT(pending.recipient < _transaction.recipients.size());
      if (!_mail_failed && _resolved[pending.recipient] == 0) {
        if (klass == 2) {
          _accepted[pending.recipient] = 1;
        } else {
          _results[pending.recipient] = from_reply(ClientCommand::rcpt, reply);
          _resolved[pending.recipient] = 1;
        }
      }
      if (!pipelined) {
        if (pending.recipient + 1 < _transaction.recipients.size()) {
          send_next_unpipelined(pending.recipient + 1, now_ms, out);
        } else if (any_accepted() && _bdat) {
          return begin_bdat(out);
        } else if (any_accepted()) {
          send(ClientCommand::data, 0, "DATA\r\n", now_ms, out);
        } else {
          return end_transaction(true);  // every RCPT refused: no DATA (RFC 5321 3.3)
        }
      }
      return ClientAction::none;
    }
    default:
      SLUICE_ASSERT(false, "not a transaction command");
      return ClientAction::close;
  }
}

ClientAction ClientSession::on_data_reply(const Reply& reply, uint64_t now_ms, std::string& out) {
  const uint8_t klass = reply_class(reply);
  const bool usable = !_mail_failed && any_accepted();
  if (reply.code() == 354) {
    if (!usable) {
      // A pipelining server that said 354 with no recipient: end the empty message (RFC 2920 3.1).
      _empty_body = true;
      send(ClientCommand::data_end, 0, ".\r\n", now_ms, out);
      return ClientAction::none;
    }
    _state = ClientState::body;
    _awaiting_body = true;
    _deadline_ms.reset();
    return ClientAction::send_body;
  }
  if (klass == 2 || klass == 3) {
    return fail_and_close(ours(DeliveryStatus::deferred, ResultCause::protocol_error, ClientCommand::data, {4, 5, 0},
                               str_cat("unexpected reply to DATA: ", reply.code())));
  }
  // 503/554 when no recipient was accepted (already resolved), or a refusal of the accepted ones.
  resolve_accepted(from_reply(ClientCommand::data, reply));
  return end_transaction(true);
}

ClientAction ClientSession::on_data_end_reply(const Reply& reply) {
  if (_empty_body) {
    return end_transaction(false);  // every recipient has its result from RCPT or MAIL
  }
  if (reply_class(reply) == 3) {
    return fail_and_close(ours(DeliveryStatus::deferred, ResultCause::protocol_error, ClientCommand::data_end,
                               {4, 5, 0}, str_cat("unexpected reply to the end of DATA: ", reply.code())));
  }
  resolve_accepted(from_reply(ClientCommand::data_end, reply));
  // A refused BDAT (no recipient left, or the message refused): RSET before the next one, as the
  // server's state after a failed chunk is its own choice (RFC 3030 3).
  return end_transaction(_bdat && reply_class(reply) != 2);
}

// --- the transaction ----------------------------------------------------------------------------

std::optional<RecipientResult> ClientSession::refusal_before_sending() const {
  bool clean = clean_envelope_string(_transaction.sender) && clean_envelope_string(_transaction.envid);
  for (const ClientRecipient& recipient : _transaction.recipients) {
    clean = clean && clean_envelope_string(recipient.address) && clean_envelope_string(recipient.orcpt);
  }
  if (!clean) {
    return ours(DeliveryStatus::bounced, ResultCause::invalid_envelope, ClientCommand::mail, {5, 5, 2},
                "envelope address or parameter holds CR, LF or NUL");
  }
  if (_transaction.smtputf8 && !_caps.smtputf8) {
    return ours(DeliveryStatus::bounced, ResultCause::smtputf8_refused, ClientCommand::mail, {5, 6, 7},
                "SMTPUTF8 is required, but was not offered by the host");
  }
  if (_caps.size && _caps.size_octets_max != 0 && _transaction.size_octets > _caps.size_octets_max) {
    return ours(DeliveryStatus::bounced, ResultCause::message_too_big, ClientCommand::mail, {5, 3, 4},
                str_cat("message size ", _transaction.size_octets, " exceeds the size limit ", _caps.size_octets_max,
                        " of the host"));
  }
  if (_transaction.body_8bit && !_caps.eight_bit_mime) {
    return ours(DeliveryStatus::bounced, ResultCause::eight_bit_refused, ClientCommand::mail, {5, 6, 3},
                "8-bit message, but 8BITMIME was not offered by the host");
  }
  return std::nullopt;
}

ClientAction ClientSession::begin_transaction(uint64_t now_ms, std::string& out) {
  SLUICE_ASSERT(_state == ClientState::idle && _has_transaction && _pending_head == _pending.size());
  if (const std::optional<RecipientResult> refusal = refusal_before_sending()) {
    resolve_open(*refusal);
    return end_transaction(_needs_rset);  // nothing was sent: the server's state is as it was
  }
  _state = ClientState::transaction;
  _bdat = _settings->chunking && _caps.chunking;
  if (!_caps.pipelining) {
    if (_needs_rset) {
      send(ClientCommand::rset, 0, "RSET\r\n", now_ms, out);
    } else {
      std::string line;
      write_mail(line);
      send(ClientCommand::mail, 0, line, now_ms, out);
    }
    return ClientAction::none;
  }
  // RFC 2920: RSET, MAIL and every RCPT may be pipelined, DATA ends the group.
  if (_needs_rset) {
    send(ClientCommand::rset, 0, "RSET\r\n", now_ms, out);
  }
  std::string line;
  write_mail(line);
  send(ClientCommand::mail, 0, line, now_ms, out);
  for (uint32_t i = 0; i < _transaction.recipients.size(); ++i) {
    line.clear();
    write_rcpt(i, line);
    send(ClientCommand::rcpt, i, line, now_ms, out);
  }
  if (_bdat) {
    return begin_bdat(out);  // RFC 3030 4.2: BDAT may be pipelined after the RCPTs
  }
  send(ClientCommand::data, 0, "DATA\r\n", now_ms, out);
  return ClientAction::none;
}

// The whole message as one last chunk: its reply (awaited after body_queued) is the final one.
ClientAction ClientSession::begin_bdat(std::string& out) {
  str_append(&out, "BDAT ", _transaction.size_octets, " LAST\r\n");
  _state = ClientState::body;
  _awaiting_body = true;
  return ClientAction::send_body;
}

void ClientSession::write_mail(std::string& out) const {
  str_append(&out, "MAIL FROM:<", _transaction.sender, ">");
  if (_caps.size) {
    str_append(&out, " SIZE=", _transaction.size_octets);
  }
  if (_transaction.body_8bit) {
    out += " BODY=8BITMIME";  // refusal_before_sending() made sure it is offered
  }
  if (_transaction.smtputf8) {
    out += " SMTPUTF8";
  }
  if (_caps.dsn) {
    if (_transaction.ret == DsnRet::full) {
      out += " RET=FULL";
    } else if (_transaction.ret == DsnRet::hdrs) {
      out += " RET=HDRS";
    }
    if (!_transaction.envid.empty()) {
      str_append(&out, " ENVID=", _transaction.envid);
    }
  }
  out += "\r\n";
}

void ClientSession::write_rcpt(uint32_t index, std::string& out) const {
  const ClientRecipient& recipient = _transaction.recipients[index];
  str_append(&out, "RCPT TO:<", recipient.address, ">");
  if (_caps.dsn) {
    if (recipient.notify != 0) {
      append_notify(recipient.notify, out);
    }
    if (!recipient.orcpt.empty()) {
      str_append(&out, " ORCPT=", recipient.orcpt);
    }
  }
  out += "\r\n";
}

void ClientSession::send(ClientCommand command, uint32_t recipient, std::string_view line, uint64_t now_ms,
                         std::string& out) {
  const bool was_waiting = _pending_head < _pending.size();
  out += line;
  _pending.push_back(Pending{command, recipient});
  if (!was_waiting) {
    // Nothing else was awaited: this reply's clock starts now (otherwise when the one before it arrives).
    _deadline_ms = now_ms + timeout_ms(command);
  }
}

void ClientSession::send_next_unpipelined(uint32_t rcpt_index, uint64_t now_ms, std::string& out) {
  std::string line;
  write_rcpt(rcpt_index, line);
  send(ClientCommand::rcpt, rcpt_index, line, now_ms, out);
}

ClientAction ClientSession::end_transaction(bool needs_rset) {
  for (const uint8_t resolved : _resolved) {
    SLUICE_ASSERT(resolved == 1, "every recipient has a result when a transaction ends");
  }
  _needs_rset = needs_rset;
  _has_transaction = false;
  _results_ready = true;
  _mail_failed = false;
  _empty_body = false;
  _body_sending = false;
  _bdat = false;
  _transaction = ClientTransaction{};  // the envelope is not needed any more
  ++_transactions;
  if (_state == ClientState::transaction || _state == ClientState::body) {
    _state = ClientState::idle;
  }
  if (_state == ClientState::idle) {
    _deadline_ms.reset();
  }
  return ClientAction::transaction_done;
}

void ClientSession::resolve_open(const RecipientResult& result) {
  if (!_has_transaction) {
    return;
  }
  for (size_t i = 0; i < _results.size(); ++i) {
    if (_resolved[i] == 0) {
      _results[i] = result;
      _resolved[i] = 1;
    }
  }
}

void ClientSession::resolve_accepted(const RecipientResult& result) {
  for (size_t i = 0; i < _results.size(); ++i) {
    if (_accepted[i] == 1 && _resolved[i] == 0) {
      _results[i] = result;
      _resolved[i] = 1;
    }
  }
}

ClientAction ClientSession::fail_and_quit(const RecipientResult& result, uint64_t now_ms, std::string& out) {
  _failure = result;
  resolve_open(result);
  const bool had_transaction = _has_transaction;
  _awaiting_body = false;
  _body_sending = false;
  quit(now_ms, out);
  if (had_transaction) {
    return end_transaction(true);
  }
  return ClientAction::none;
}

ClientAction ClientSession::fail_and_close(const RecipientResult& result) {
  _failure = result;
  resolve_open(result);
  const bool had_transaction = _has_transaction;
  _state = ClientState::closed;
  _awaiting_body = false;
  _body_sending = false;
  _deadline_ms.reset();
  _pending.clear();
  _pending_head = 0;
  if (had_transaction) {
    return end_transaction(true);
  }
  return ClientAction::close;
}

ClientAction ClientSession::quit(uint64_t now_ms, std::string& out) {
  _state = ClientState::quitting;
  send(ClientCommand::quit, 0, "QUIT\r\n", now_ms, out);
  return ClientAction::none;
}

void ClientSession::restart_timer(uint64_t now_ms) {
  if (_pending_head < _pending.size()) {
    _deadline_ms = now_ms + timeout_ms(_pending[_pending_head].command);
  } else {
    _deadline_ms.reset();
  }
}

uint64_t ClientSession::timeout_ms(ClientCommand command) const {
  const ClientTimeouts& t = _settings->timeouts;
  switch (command) {
    case ClientCommand::greeting:
      return t.timeout_ms_greeting;
    case ClientCommand::mail:
      return t.timeout_ms_mail;
    case ClientCommand::rcpt:
      return t.timeout_ms_rcpt;
    case ClientCommand::data:
      return t.timeout_ms_data_initiation;
    case ClientCommand::data_end:
      return t.timeout_ms_data_termination;
    case ClientCommand::ehlo:
    case ClientCommand::helo:
    case ClientCommand::rset:
    case ClientCommand::quit:
      return t.timeout_ms_command;
  }
  return t.timeout_ms_command;
}

bool ClientSession::any_accepted() const {
  for (size_t i = 0; i < _accepted.size(); ++i) {
    if (_accepted[i] == 1 && _resolved[i] == 0) {
      return true;
    }
  }
  return false;
}

}  // namespace sluice::smtp
