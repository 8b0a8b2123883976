#pragma once
// The SMTP server side of one connection, as a state machine without I/O: bytes in, replies out,
// and two requests to its owner (commit this message; close). The owner (a shard) moves bytes
// between it and the socket, stores the message, and reports the store's outcome back. Keeping
// I/O out makes every protocol rule testable without sockets, and lets a transport (TLS) sit
// under it unchanged.
//
// It never acknowledges a message itself: the 250 after DATA is written only by commit_done(),
// which the owner calls when the spool's fdatasync covering the message completed.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/io/address.h"
#include "engine/smtp/command.h"
#include "engine/smtp/data_scanner.h"
#include "engine/smtp/line_reader.h"
#include "engine/smtp/replies.h"

namespace sluice::smtp {

struct ServerLimits {
  uint64_t message_octets_max = 52'428'800;
  uint32_t recipients_max = 1000;
  uint32_t errors_max = 20;
  uint32_t command_line_octets_max = 512;         // RFC 5321 4.5.3.1.4, including CRLF
  uint32_t param_command_line_octets_max = 2048;  // MAIL/RCPT with ESMTP parameters
  uint32_t received_headers_max = 100;            // more: a mail loop (554 5.4.6)
  uint64_t body_memory_octets_max = UINT64_MAX;   // the shard's body budget: SIZE= above it, 452 4.3.1
};

// What EHLO offers. The server offers everything; a test receiver (sluice-bench sink) hides some,
// to play an older or stricter server. HELO is always accepted; without `ehlo`, EHLO gets 502.
struct EhloOffer {
  bool ehlo = true;
  bool pipelining = true;
  bool size = true;
  bool eight_bit_mime = true;
  bool chunking = true;  // not offered: a BDAT is still read (a client that ignores EHLO is not refused)
};

// Shared, read-only configuration of every session on a shard.
struct ServerSettings {
  std::string hostname = "localhost";
  ServerLimits limits;
  EhloOffer offer;
  io::NetworkList relay_networks;
  std::vector<std::string> relay_domains;  // lower case; ".example.test" also matches subdomains
};

// What the session knows of its peer when it starts.
struct ClientInfo {
  io::SocketAddress address;
  bool relay_allowed = false;   // the address is in [relay] networks
  uint64_t session_serial = 0;  // the owner's number for this session (logs: session=S<shard>-<serial>)
};

// The DSN parameters of one accepted recipient (RFC 3461), ORCPT as sent (xtext).
struct RecipientDsn {
  uint8_t notify = 0;  // kNotify* bits, 0 when not given
  std::string orcpt;
};

// A complete message waiting for the spool.
struct AcceptedMessage {
  std::string sender;
  std::vector<std::string> recipients;
  std::vector<RecipientDsn> recipient_dsn;  // one per recipient
  DsnRet ret = DsnRet::none;                // RET= of MAIL
  std::string envid;                        // ENVID= of MAIL as sent (xtext), or empty
  std::string helo;
  bool esmtp = false;
  bool body_8bit = false;
  bool smtputf8 = false;
  bool add_message_id = false;  // missing, and the client may relay: we add one
  bool add_date = false;
  uint64_t rfc_size = 0;
  uint64_t started_ms = 0;  // the host's clock at MAIL: a transaction's duration in the log
  std::string body;         // wire form: CRLF lines, dot-stuffed, without the final ".\r\n"
};

enum class SessionAction : uint8_t {
  none,    // all input consumed; send what is in `out` and wait for more
  commit,  // a message is ready: take_message(), store it, then commit_done()
  close,   // send what is in `out`, then close the connection
};

struct SessionStep {
  size_t consumed = 0;  // bytes of the input used; the rest must be passed again later
  SessionAction action = SessionAction::none;
};

// A refusal, as the session reports it to its owner (who counts and logs it). Every view is valid
// only during the on_reject() call.
struct RejectEvent {
  RejectReason reason = RejectReason::syntax;
  std::string_view reply;    // the reply line sent, without CRLF
  std::string_view address;  // what was refused: a path or a command's argument; may be empty
  std::string_view helo;
  bool in_transaction = false;  // MAIL was accepted: `sender` and `recipients` are the transaction's
  std::string_view sender;
  const std::vector<std::string>* recipients = nullptr;  // accepted so far
  // false: count it, but write no line (the same refusal of this transaction was logged: each
  // RCPT over max_recipients is counted, the first one logged).
  bool log = true;
};

// What happened in a session, for its disconnect line.
struct SessionCounts {
  uint32_t commands = 0;    // command lines received
  uint32_t messages = 0;    // acknowledged with 250 queued
  uint32_t failed = 0;      // end of data reached, refused by the spool (451)
  uint32_t rejections = 0;  // every refusal reported through on_reject()
};

// The owner's own answer to a MAIL or RCPT that the session's rules accepted. An empty reply
// leaves the session's answer (what the server does); else `reply` (a whole reply, CRLF ended,
// valid until the session returns) is sent instead, the command is refused without counting as
// the client's error, and with `close` the session ends after it (a 421).
struct HostVerdict {
  std::string_view reply;
  bool close = false;
};

// Used by the session to ask its owner about the state of the world, and to report refusals.
class SessionHost {
 public:
  virtual ~SessionHost() = default;
  virtual bool spool_space_low() const = 0;  // below min_free_bytes: MAIL gets 452 4.3.1
  virtual void on_reject(const RejectEvent& event, const ClientInfo& client) = 0;
  // The owner's clock (ms, monotonic); the session keeps no clock of its own.
  virtual uint64_t now_ms() const = 0;
  // Policy hooks for a receiver that injects faults (sluice-bench sink); the server keeps the
  // defaults, which leave every answer to the session.
  virtual HostVerdict mail_verdict(std::string_view /*reverse_path*/) { return {}; }
  virtual HostVerdict recipient_verdict(std::string_view /*forward_path*/) { return {}; }
};

class ServerSession {
 public:
  ServerSession(const ServerSettings* settings, SessionHost* host, const ClientInfo& client);

  void greet(std::string& out) const;
  SessionStep on_input(std::string_view input, std::string& out);
  AcceptedMessage take_message();
  void commit_done(bool stored, std::string_view queue_id, std::string& out);
  void on_timeout(std::string& out) const;

  // Octets of the message waiting for commit (valid while waiting_for_commit()): its wire bytes,
  // and its envelope as stored (sender, recipients, client details).
  uint64_t message_octets() const { return _ready.body.size(); }
  uint64_t envelope_octets() const {
    uint64_t octets = _ready.sender.size() + _ready.helo.size() + _ready.envid.size() + 64;
    for (const std::string& recipient : _ready.recipients) {
      octets += recipient.size() + 8;
    }
    for (const RecipientDsn& dsn : _ready.recipient_dsn) {
      octets += dsn.orcpt.size() + 3;
    }
    return octets;
  }
  // Memory this session holds for message bodies (being received or waiting for commit): the
  // buffers' capacity, which is what is allocated (a growing body doubles its buffer).
  uint64_t body_memory_octets() const { return _body.capacity() + _ready.body.capacity(); }
  uint64_t body_octets() const { return _body.size() + _ready.body.size(); }  // of which in use
  bool in_data_phase() const { return _phase == Phase::data || _phase == Phase::bdat_chunk; }
  // A message body is being received: DATA until its end, or BDAT from the first chunk of a
  // transaction to its LAST (its owner bounds how long that may take as a whole).
  bool body_in_progress() const { return in_data_phase() || (_used_bdat && _mail_given); }
  bool waiting_for_commit() const { return _phase == Phase::committing; }
  bool transaction_open() const { return _mail_given; }
  // A command line has begun and not ended yet (its owner bounds how long a line may take).
  bool command_line_pending() const { return _lines.in_line(); }
  const ClientInfo& client() const { return _client; }
  const SessionCounts& counts() const { return _counts; }
  const std::string& helo() const { return _helo; }

 private:
  enum class Phase : uint8_t { command, data, bdat_chunk, committing, closed };

  SessionStep on_command_input(std::string_view input, std::string& out);
  SessionStep on_data_input(std::string_view input, std::string& out);
  SessionStep on_bdat_input(std::string_view input, std::string& out);
  SessionAction handle_command(std::string_view line, std::string& out);
  SessionAction handle_helo(std::string_view argument, bool extended, std::string& out);
  SessionAction handle_mail(std::string_view argument, std::string& out);
  SessionAction handle_rcpt(std::string_view argument, std::string& out);
  SessionAction handle_data(std::string_view argument, std::string& out);
  SessionAction handle_bdat(std::string_view argument, std::string& out);
  SessionAction apply_verdict(const HostVerdict& verdict, std::string& out);
  void append_ehlo_reply(std::string& out) const;
  SessionAction finish_message(std::string& out);
  SessionAction refuse_message(RejectReason reason, std::string_view text, std::string& out);
  SessionAction refuse_bdat_chunk(std::string& out);
  std::string_view no_recipients_reply() const;
  SessionAction count_error(std::string& out);
  // Sends `text`, reports the refusal, and counts it toward errors_max when `counts_as_error`.
  SessionAction reject(RejectReason reason, std::string_view text, std::string& out, std::string_view address = {},
                       bool counts_as_error = true);
  SessionAction reject_parse_error(const ParseError& error, std::string_view argument, std::string& out);
  void report(RejectReason reason, std::string_view text, std::string_view address, bool log = true);
  SessionAction close_bare_newline(std::string& out);
  bool recipient_allowed(std::string_view forward_path) const;
  void reset_transaction();

  const ServerSettings* _settings;
  SessionHost* _host;
  ClientInfo _client;
  Phase _phase = Phase::command;
  bool _helo_given = false;
  bool _esmtp = false;
  bool _mail_given = false;
  bool _rcpt_attempted = false;  // DATA without any RCPT is 503; with all RCPTs refused, 554
  bool _used_bdat = false;
  bool _bdat_last = false;
  bool _bdat_discard = false;  // chunk of a failed transaction: read and dropped
  bool _too_big = false;
  bool _too_big_reported = false;      // a BDAT transaction over the limit is logged once
  bool _excess_rcpt_reported = false;  // RCPTs over recipients_max are logged once per transaction
  bool _smtputf8 = false;
  bool _body_8bit_declared = false;
  uint32_t _errors = 0;
  SessionCounts _counts;
  uint64_t _mail_ms = 0;
  uint64_t _bdat_remaining = 0;
  LineReader _lines;  // command lines: CRLF only, at most param_command_line_octets_max
  std::string _helo;
  std::string _sender;
  std::vector<std::string> _recipients;
  std::vector<RecipientDsn> _recipient_dsn;  // parallel to _recipients
  DsnRet _ret = DsnRet::none;
  std::string _envid;
  std::string _body;
  DataScanState _scan;
  BdatEncodeState _bdat;
  AcceptedMessage _ready;
};

}  // namespace sluice::smtp
