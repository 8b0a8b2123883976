#pragma once
// `sluice-bench send`: the load generator. Each thread runs its own io_uring ring (the engine's
// io::Ring, io::Stream, io::TimerWheel) with --sessions / --threads SMTP client connections, each
// an smtp::ClientSession (the relay's client), so what it measures is the system under test and
// not a second, cheaper client. Messages are built in memory in wire form (CRLF lines, no line
// starting with "."), so the session's end of data is sent as is.
//
// Loops: closed (no --rate: each session sends its next message on the final reply of the
// previous one) or open (--rate N/s: message n is due at start + n/rate whether or not a session
// is free, and its latency is counted from that scheduled time, so queueing delay is not hidden).
//
// Every message carries Message-ID, X-Sluice-Bench-Id: RUN-N (unique in the run),
// X-Sluice-Bench-Sum: crc32c:XXXXXXXX, the CRC32C of the body (the octets after the empty line
// that ends the header, up to and including the CRLF before the final dot), so that a sink can
// prove each message arrived intact and exactly once, and X-Sluice-Bench-Sent: the wall-clock
// time (microseconds since the Unix epoch) the transaction started, so that a sink on the same
// machine can tell each message's end-to-end latency through a relay.
// --json lists the ids that got 250 as "accepted_id_ranges": {"RUN": [[lo, hi], ...]}.
//
// Accounting: every transaction started gets one result per recipient (the session's
// guarantee), so sent == accepted + deferred + rejected (messages: accepted when any recipient
// was accepted, else deferred when any was deferred, else rejected).
#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/io/address.h"
#include "engine/io/latency_histogram.h"

namespace sluice::bench {

struct SizeChoice {
  uint64_t octets = 0;  // body octets
  uint32_t weight = 1;
};

struct SendOptions {
  std::vector<io::SocketAddress> targets;  // connections go round-robin over them
  std::vector<io::SocketAddress> sources;  // local addresses, round-robin; empty: the kernel's
  uint32_t sessions = 1;                   // concurrent connections in all (spread over threads)
  uint64_t messages = 0;                   // 0: until --duration
  uint64_t duration_ms = 0;                // 0: until --messages
  double rate = 0;                         // messages per second offered; 0: closed loop
  std::vector<SizeChoice> sizes = {{1024, 1}};
  uint32_t rcpts = 1;
  uint32_t messages_per_connection = 0;  // 0: no limit
  bool pipelining = true;
  bool chunking = false;  // BDAT when offered (the messages are built unstuffed: exact sizes)
  std::string from = "bench@sluice-bench.test";  // "{n}": the message number
  std::string to = "rcpt{n}@example.test";       // "{n}": the recipient number in the run
  std::string helo = "sluice-bench.test";
  uint32_t threads = 1;
  uint64_t timeout_ms = 60'000;  // each SMTP reply, and the connect
  std::string run_id;            // empty: made from the time and the pid
  std::string json_path;
  bool progress = false;  // the live line on stdout (when it is a terminal)
};

// The latency of each step, in microseconds. Each is timed from the previous reply on the
// connection, or from when its command could first be sent if later (the ClientSession's own
// timeout rule): with PIPELINING the RCPT replies usually arrive with MAIL's.
struct StepHistograms {
  io::LatencyHistogram connect;   // connect(2) submitted -> connected
  io::LatencyHistogram greeting;  // connected -> 220
  io::LatencyHistogram ehlo;      // greeting -> reply to EHLO (or HELO)
  io::LatencyHistogram mail;      // the transaction started -> reply to MAIL
  io::LatencyHistogram rcpt;      // previous reply -> each RCPT's reply
  io::LatencyHistogram data;      // previous reply -> 354
  io::LatencyHistogram data_end;  // 354 (the body queued) -> the final reply
  io::LatencyHistogram message;   // scheduled (open loop) or started -> final reply, accepted ones
  io::LatencyHistogram queue_delay;  // open loop: scheduled -> started (0 in a closed loop)
  void merge(const StepHistograms& other);
};

struct SendResults {
  uint64_t messages_sent = 0;  // transactions started
  uint64_t messages_accepted = 0;
  uint64_t messages_deferred = 0;
  uint64_t messages_rejected = 0;
  uint64_t recipients_accepted = 0;
  uint64_t recipients_deferred = 0;
  uint64_t recipients_rejected = 0;
  // Keyed by the reply code ("451"), or the session's cause when no reply decided
  // ("connection_lost", "timeout", "protocol_error", "message_too_big", ...).
  std::map<std::string, uint64_t> deferred_by_code;
  std::map<std::string, uint64_t> rejected_by_code;
  uint64_t octets_accepted = 0;  // message octets (header and body) of accepted messages
  uint64_t connections = 0;      // connected
  uint64_t connect_failures = 0;
  // Connections that ended without a clean QUIT, or could not connect, by reason.
  std::map<std::string, uint64_t> connection_errors;
  StepHistograms latency;
  // The numbers N of the messages (ids RUN-N) that got 250 for a recipient: a sink's --verify
  // proves each arrived once. Unordered until the run's end sorts them (finish()).
  std::vector<uint64_t> accepted_messages;
  void merge(const SendResults& other);
  void finish();  // sorts accepted_messages
};

// accepted_messages (sorted) as closed ranges [[lo, hi], ...].
std::vector<std::pair<uint64_t, uint64_t>> accepted_ranges(const std::vector<uint64_t>& sorted_messages);

// What the threads share: the message counter and live figures for the progress line.
struct SendRun {
  const SendOptions* options = nullptr;
  std::string run_id;
  uint64_t start_us = 0;
  std::atomic<uint64_t> next_message{0};
  std::atomic<uint64_t> end_us{0};   // when the last worker finished
  std::atomic<uint64_t> opening{0};  // connections not yet at their first message
  std::atomic<bool> stop{false};  // an error, or a signal: no new message, sessions QUIT
  std::atomic<uint64_t> live_sent{0};
  std::atomic<uint64_t> live_accepted{0};
  std::atomic<uint64_t> live_failed{0};  // deferred + rejected messages
  std::atomic<uint64_t> live_latency_sum_us{0};
  std::atomic<uint64_t> live_latency_count{0};
};

// Runs the whole send (threads, progress line) and returns the merged results, or the error
// that stopped it (e.g. no target takes a connection).
absl::Status run_send(const SendOptions& options, SendResults& results, double& elapsed_s, std::string& run_id);

// Ends the run early (SIGINT): no new message is started, what is in flight completes and the
// results are reported. Async-signal-safe.
void request_stop();

// The message body of `octets` (>= 2): CRLF lines of printable text, none starting with ".".
std::string make_body(uint64_t octets);
// "a{n}b" with n substituted (every occurrence).
std::string expand_counter(const std::string& pattern, uint64_t n);

// The human summary and the --json document.
std::string summary_text(const SendOptions& options, const SendResults& results, double elapsed_s);
std::string results_json(const SendOptions& options, const SendResults& results, double elapsed_s,
                         const std::string& run_id);

}  // namespace sluice::bench
