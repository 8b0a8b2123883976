#pragma once
// The SMTP client side of one outbound connection (RFC 5321, with PIPELINING RFC 2920, SIZE
// RFC 1870, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531, DSN RFC 3461), as a state machine without I/O:
// the server's bytes in, commands out (appended to a std::string), and one result per recipient.
// It is the mirror of ServerSession: no socket, no file, no clock. The owner (a shard's delivery
// code) moves bytes between it and the socket, passes its clock as now_ms, asks next_deadline_ms()
// and calls on_timeout() when it passed, and sends the message body itself from the spool file.
//
// It never: copies a message body (the owner sends it from the spool), treats a reply it cannot
// parse as anything but a deferral (the server is untrusted: nothing is asserted on its bytes), or
// gives a recipient two results (or none) for one transaction.
//
// Decisions where the RFCs leave room:
// * The end of data: the spool holds the body in wire form without the final ".\r\n" (CRLF lines,
//   dot-stuffed; see AcceptedMessage::body). After send_body the owner queues those bytes, then
//   calls body_queued(), which appends ".\r\n" to `out` (or "\r\n.\r\n" if the owner says the body
//   does not end with CRLF): the owner sends `out` after the body.
// * RSET: only before a transaction on a reused connection whose previous transaction did not end
//   with the server's reply to the end of data (MAIL, every RCPT or DATA refused, an empty body
//   sent after a stray 354). After that final reply the server has reset itself (RFC 5321 4.1.1.4),
//   whatever its code. The RSET is sent lazily, at the start of the next transaction (pipelined
//   with it when the server offers PIPELINING), so a connection that is finished instead only
//   gets QUIT. A refused RSET defers that transaction and closes the connection.
// * PIPELINING: MAIL, every RCPT and DATA go in one write (RFC 2920 3.1: DATA is the last command
//   of a group). Without it, one command at a time, and no DATA when every RCPT was refused. With
//   PIPELINING and every RCPT refused, DATA's expected 503/554 is read; if the server says 354
//   anyway, the session sends only ".\r\n" (an empty message, RFC 2920 3.1) and ignores its reply.
// * When MAIL is refused, every recipient gets MAIL's reply (the RCPT replies that follow it in a
//   pipeline, typically 503, say nothing about the recipients).
// * A greeting, EHLO or HELO refusal gives the open transaction's recipients (if one was handed
//   in before the handshake ended) that reply's result, and is kept in failure() for the others
//   the owner meant for this connection; the session then sends QUIT. EHLO refused with 5xx: HELO
//   (no extension is used then). A 2xx other than 250 to EHLO: accepted, no extensions.
// * 421 at any point (RFC 5321 3.8): everything in flight is deferred with that reply, then QUIT
//   (the server is closing; the session is done on the 221 or on the close).
// * A protocol violation (a reply the parser refuses: garbage, a line over kReplyLineOctetsMax,
//   an endless multi-line reply past kReplyLinesMax / kReplyOctetsMax, a bare CR; a reply class
//   that makes no sense for the command, such as 354 to MAIL; a reply nobody asked for), a timeout,
//   or a lost connection: everything in flight is deferred (4.5.0, 4.4.2, 4.4.2) and the session
//   closes without QUIT (the stream's framing, or the server, can no longer be trusted).
//   A bare LF ending a reply line is tolerated (ReplyParser's client line rules).
// * Checks made before anything is sent, each giving every recipient a permanent failure
//   (RFC 1870, RFC 6531, RFC 6152): SIZE larger than the server's advertised limit (5.3.4);
//   an SMTPUTF8 message to a server without SMTPUTF8 (5.6.7); an 8-bit body to a server without
//   8BITMIME: ResultCause::eight_bit_refused (5.6.3): the owner may convert the body to 7 bits
//   and try again instead of bouncing (this session does no MIME conversion). An envelope string
//   with CR, LF or NUL (the spool is a file, not trusted to be well formed): 5.5.2.
// * Timeouts (RFC 5321 4.5.3.2) are per reply awaited: with pipelining, the clock for a RCPT's
//   reply starts when the previous reply arrived. The data block timeout runs from body_queued()
//   and from every body_progress(); the final dot timeout from body_sent().
// * CHUNKING/BDAT (RFC 3030) only when ClientSettings::chunking asks for it and the server offers
//   it: the message goes as one "BDAT <size_octets> LAST" chunk, pipelined after the last RCPT
//   (with PIPELINING) or sent after the last RCPT reply when one was accepted (without). The
//   owner then sends exactly size_octets octets of the message as it is, not dot-stuffed, and
//   body_queued() appends nothing. The relay does not use it: its spool holds DATA's wire form
//   (PEERS.md: Postfix's client does the same); sluice-bench send --chunking does.
//   STARTTLS and AUTH are not done here.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/smtp/command.h"
#include "engine/smtp/ehlo_capabilities.h"
#include "engine/smtp/reply_parser.h"

namespace sluice::smtp {

// RFC 5321 4.5.3.2, and Postfix's smtp_helo_timeout / smtp_quit_timeout for the rest.
struct ClientTimeouts {
  uint64_t timeout_ms_greeting = 5 * 60'000;
  uint64_t timeout_ms_command = 5 * 60'000;  // EHLO, HELO, RSET, QUIT
  uint64_t timeout_ms_mail = 5 * 60'000;
  uint64_t timeout_ms_rcpt = 5 * 60'000;
  uint64_t timeout_ms_data_initiation = 2 * 60'000;
  uint64_t timeout_ms_data_block = 3 * 60'000;
  uint64_t timeout_ms_data_termination = 10 * 60'000;
};

// Shared, read-only configuration of every client session on a shard.
struct ClientSettings {
  std::string hostname = "localhost";  // our EHLO/HELO name
  ClientTimeouts timeouts;
  // Use PIPELINING when the server offers it. Off only in sluice-bench (--pipelining off), to
  // measure a server one command at a time; the relay always pipelines.
  bool pipelining = true;
  // Send the message with BDAT when the server offers CHUNKING (see the decisions above). Only
  // sluice-bench (--chunking), whose messages are built unstuffed; the relay sends DATA.
  bool chunking = false;
};

// Recipients in one transaction: the owner splits larger sets (DESIGN.md: up to N per transaction).
inline constexpr size_t kClientRecipientsMax = 1000;
// Reply text kept per recipient result: enough for a DSN's Diagnostic-Code and a log line; a
// 16 KiB reply copied into each of a thousand results would not be.
inline constexpr size_t kResultTextOctetsMax = 1024;

struct ClientRecipient {
  std::string address;  // the forward-path without <>
  uint8_t notify = 0;   // kNotify* bits (command.h), 0 = not given
  std::string orcpt;    // "addr-type;xtext" as received, or empty
};

// One transaction as the owner hands it in: the envelope and facts about the stored body.
struct ClientTransaction {
  std::string sender;                       // the reverse-path without <>; empty for the null sender
  std::vector<ClientRecipient> recipients;  // 1 to kClientRecipientsMax
  DsnRet ret = DsnRet::none;                // RET= (sent only when the server offers DSN)
  std::string envid;                        // ENVID= as received (xtext), or empty
  uint64_t size_octets = 0;                 // the message size (DESIGN.md section 4), for SIZE=
                                            // and BDAT's chunk size (exact, with chunking)
  bool body_8bit = false;                   // BODY=8BITMIME
  bool smtputf8 = false;
};

// The command a reply (or a wait for one) answered: "in reply to ..." in a DSN or a log line.
enum class ClientCommand : uint8_t { greeting, ehlo, helo, rset, mail, rcpt, data, data_end, quit };
std::string_view client_command_name(ClientCommand command);  // "MAIL FROM", "end of DATA", ...

// Told of every reply to a command the session sent (the greeting included), in order, before the
// session acts on it: sluice-bench times each SMTP step with it. Must not call into the session.
class ClientReplyObserver {
 public:
  virtual ~ClientReplyObserver() = default;
  virtual void on_reply(ClientCommand command, uint16_t code) = 0;
};

enum class DeliveryStatus : uint8_t {
  delivered,  // 2xx to RCPT and 2xx after the data
  deferred,   // try again later
  bounced,    // permanent failure: a DSN to the sender
};
std::string_view delivery_status_name(DeliveryStatus status);

enum class ResultCause : uint8_t {
  reply,              // the server's reply decided: `code` and `text` are its
  message_too_big,    // SIZE above the server's limit, nothing sent (5.3.4)
  smtputf8_refused,   // SMTPUTF8 message, the server has no SMTPUTF8, nothing sent (5.6.7)
  eight_bit_refused,  // 8-bit body, the server has no 8BITMIME, nothing sent (5.6.3; may convert)
  invalid_envelope,   // CR, LF or NUL in an envelope string, nothing sent (5.5.2)
  protocol_error,     // the server broke the protocol (4.5.0)
  timeout,            // no reply in time (4.4.2)
  connection_lost,    // closed before the reply (4.4.2)
  // Set by the delivery code, never by the session: no connection was made.
  unroutable,      // DNS or the route gave no host to try (the enhanced code says why)
  connect_failed,  // no address of any host took a connection (4.4.1)
};
std::string_view result_cause_name(ResultCause cause);

struct RecipientResult {
  DeliveryStatus status = DeliveryStatus::deferred;
  ResultCause cause = ResultCause::reply;
  ClientCommand command = ClientCommand::greeting;  // in reply to (or waiting for) this
  uint16_t code = 0;                                // the server's reply code; 0 unless cause == reply
  EnhancedStatus enhanced;  // the server's enhanced code, or class.0.0 when it sent none; ours otherwise
  // The reply's lines joined with one space (enhanced code included as sent), at most
  // kResultTextOctetsMax octets; or the session's own words for the other causes.
  std::string text;

  friend bool operator==(const RecipientResult&, const RecipientResult&) = default;
};

enum class ClientAction : uint8_t {
  none,              // send what is in `out`, wait for input (or the deadline)
  ready,             // the handshake is done and no transaction is open: start_transaction() or finish()
  send_body,         // 354: queue the body's wire bytes, then call body_queued() before more input
  transaction_done,  // take_results(); then state() says what next (idle, quitting or closed)
  close,             // send what is in `out`, then close the connection: the session is over
};
std::string_view client_action_name(ClientAction action);

struct ClientStep {
  size_t consumed = 0;  // bytes of the input used; pass the rest again (after acting)
  ClientAction action = ClientAction::none;
};

enum class ClientState : uint8_t {
  handshake,    // greeting, EHLO/HELO
  idle,         // ready for a transaction
  transaction,  // commands sent, replies awaited
  body,         // the body is being sent / its final reply awaited
  quitting,     // QUIT sent (or about to be): wait for its reply or the close
  closed,       // done: close the connection
};
std::string_view client_state_name(ClientState state);

class ClientSession {
 public:
  // The connection is established at `now_ms`: the greeting timeout starts.
  ClientSession(const ClientSettings* settings, uint64_t now_ms);

  // The server's bytes. Stops after a reply that needs the owner (send_body, ready,
  // transaction_done); on close the rest is dropped.
  ClientStep on_input(std::string_view input, uint64_t now_ms, std::string& out);

  // Hands in the next transaction: allowed when can_start() (during the handshake too; it begins
  // when the handshake ends). Returns transaction_done when it is refused before anything is sent.
  bool can_start() const;
  ClientAction start_transaction(ClientTransaction transaction, uint64_t now_ms, std::string& out);
  // One result per recipient, in the transaction's order; once per transaction_done.
  std::vector<RecipientResult> take_results();

  // After send_body: the body's bytes are queued; appends the end of data to `out`.
  void body_queued(bool body_ends_with_crlf, uint64_t now_ms, std::string& out);
  void body_progress(uint64_t now_ms);  // a send of the body completed: the data block timer restarts
  void body_sent(uint64_t now_ms);      // the end of data was sent: the final reply timer starts

  // No more transactions: QUIT (from idle), or close at once (during the handshake, not yet able
  // to speak). Only without an open transaction.
  ClientAction finish(uint64_t now_ms, std::string& out);

  // The deadline passed (the owner checks next_deadline_ms()).
  ClientAction on_timeout(uint64_t now_ms, std::string& out);
  // The connection closed (EOF or error) or could not be used.
  ClientAction on_close();

  // When the awaited reply is due; nullopt when nothing is awaited (idle: the owner's pool
  // decides how long an idle connection lives).
  std::optional<uint64_t> next_deadline_ms() const;

  // Null (the default) for none; the observer must outlive the session.
  void set_reply_observer(ClientReplyObserver* observer) { _observer = observer; }

  ClientState state() const { return _state; }
  // The server's extensions (after EHLO; empty after HELO).
  const EhloCapabilities& capabilities() const { return _caps; }
  bool esmtp() const { return _esmtp; }
  // Why the session ended without a clean QUIT, as the result each recipient of the connection
  // would get; nullopt while it has not (or when it ended cleanly).
  const std::optional<RecipientResult>& failure() const { return _failure; }
  uint32_t transactions() const { return _transactions; }  // ended, with a result for each recipient

 private:
  struct Pending {
    ClientCommand command;
    uint32_t recipient = 0;  // for rcpt
  };

  ClientAction on_reply(const Reply& reply, uint64_t now_ms, std::string& out);
  ClientAction on_handshake_reply(ClientCommand command, const Reply& reply, uint64_t now_ms, std::string& out);
  ClientAction on_transaction_reply(const Pending& pending, const Reply& reply, uint64_t now_ms, std::string& out);
  ClientAction on_data_reply(const Reply& reply, uint64_t now_ms, std::string& out);
  ClientAction on_data_end_reply(const Reply& reply);
  ClientAction on_quitting_reply(ClientCommand command, const Reply& reply);
  ClientAction handshake_done(uint64_t now_ms, std::string& out);
  ClientAction begin_transaction(uint64_t now_ms, std::string& out);
  std::optional<RecipientResult> refusal_before_sending() const;
  void write_mail(std::string& out) const;
  void write_rcpt(uint32_t index, std::string& out) const;
  void send(ClientCommand command, uint32_t recipient, std::string_view line, uint64_t now_ms, std::string& out);
  void send_next_unpipelined(uint32_t after_rcpt, uint64_t now_ms, std::string& out);
  ClientAction begin_bdat(std::string& out);
  ClientAction end_transaction(bool needs_rset);
  // Every recipient still without a result gets `result`; with no transaction open, it is the failure.
  void resolve_open(const RecipientResult& result);
  void resolve_accepted(const RecipientResult& result);
  ClientAction fail_and_quit(const RecipientResult& result, uint64_t now_ms, std::string& out);
  ClientAction fail_and_close(const RecipientResult& result);
  ClientAction quit(uint64_t now_ms, std::string& out);
  void restart_timer(uint64_t now_ms);
  uint64_t timeout_ms(ClientCommand command) const;
  bool any_accepted() const;

  const ClientSettings* _settings;
  ClientReplyObserver* _observer = nullptr;
  ClientState _state = ClientState::handshake;
  ReplyParser _parser;
  EhloCapabilities _caps;
  bool _esmtp = false;
  bool _needs_rset = false;  // the last transaction did not end with the reply to the end of data
  bool _has_transaction = false;
  bool _results_ready = false;
  bool _mail_failed = false;      // MAIL refused: the pipelined RCPT replies are ignored
  bool _empty_body = false;       // ".\r\n" sent after a stray 354: its reply is ignored
  bool _awaiting_body = false;    // send_body given, body_queued() not yet called
  bool _body_sending = false;     // from body_queued() to body_sent(): the data block timeout applies
  bool _bdat = false;             // this transaction sends its message with BDAT LAST
  std::vector<Pending> _pending;  // replies awaited, oldest first from _pending_head
  size_t _pending_head = 0;
  std::optional<uint64_t> _deadline_ms;
  ClientTransaction _transaction;
  std::vector<RecipientResult> _results;  // parallel to _transaction.recipients
  std::vector<uint8_t> _resolved;         // 1: _results[i] is final
  std::vector<uint8_t> _accepted;         // 1: 2xx to RCPT
  std::optional<RecipientResult> _failure;
  uint32_t _transactions = 0;
};

}  // namespace sluice::smtp
