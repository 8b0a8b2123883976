#pragma once
// `sluice-bench sink`: the receiving SMTP server of the load tools. One thread drives the
// server's own smtp::ServerSession on the engine's ring, streams and timer wheel (its driver is
// small, because the real shard is tied to the spool): every message is "stored" by counting it
// and checking its id and checksum (bench/sink/ids.h), then answered 250. Faults (bench/sink/
// faults.h) go through SessionHost's verdict hooks and ServerSettings::offer, so the protocol
// is the server's in every other respect.
//
//   sluice-bench sink --listen H:P [--listen H:P ...] [--json FILE] [faults...]
//   sluice-bench sink --verify SENDER_JSON --json SINK_JSON
//
// --json FILE is written when the sink stops (SIGINT or SIGTERM). --verify compares it with the
// sender's ids (a JSON object with "accepted_ids": ["RUN-N", ...] and/or "accepted_id_ranges":
// {"RUN": [[lo, hi], ...]}, the ids the sender got 250 for) and exits 1 when an accepted message is
// missing, duplicated or corrupt.
//
// The same server runs inside `sluice-bench relay` as a SinkServer: its own thread and ring,
// live counters for the harness to poll, and the results in memory when it stops. Each message's
// end-to-end latency (its arrival, at the end of DATA, minus the sender's X-Sluice-Bench-Sent,
// both wall clock on this machine) is recorded: "arrival_latency_us" in the --json.
#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "bench/sink/faults.h"
#include "bench/sink/ids.h"
#include "engine/io/address.h"
#include "engine/io/latency_histogram.h"

namespace sluice::bench {

int run_sink(int argc, char** argv);  // argv[0] is "sink" (or the program's name)

struct SinkServerOptions {
  std::vector<io::SocketAddress> listen;  // port 0: any (see SinkServer::addresses)
  Faults faults;
  bool announce = false;   // "sluice-bench sink: listening on ..." on stderr once bound
  bool live_line = false;  // the live line on stdout, when it is a terminal
};

struct SinkCounts {
  uint64_t connections = 0;
  uint64_t messages = 0;  // answered 250
  uint64_t recipients = 0;
  uint64_t octets = 0;  // the messages' RFC 5322 size (dot-stuffing removed)
};

struct SinkChecks {
  uint64_t intact = 0;     // first arrival of its id, checksum right
  uint64_t corrupt = 0;    // checksum missing or wrong (any arrival)
  uint64_t duplicate = 0;  // an id that had arrived before
  uint64_t no_id = 0;      // without X-Sluice-Bench-Id
};

// What the sink saw, complete once it has stopped.
struct SinkResults {
  double elapsed_s = 0;
  SinkCounts total;
  SinkChecks checks;
  std::vector<SinkCounts> listeners;        // per --listen address, in their order
  IdSet received;                           // every id that arrived (once each)
  std::vector<std::string> duplicate_ids;   // one entry per extra arrival
  std::vector<std::string> corrupt_ids;
  io::LatencyHistogram arrival_latency_us;  // arrival - X-Sluice-Bench-Sent, messages that carry it
  std::string json;                         // the --json document
};

// Live figures, written by the sink's thread, read by any.
struct SinkLive {
  std::atomic<uint64_t> messages{0};         // answered 250
  std::atomic<uint64_t> distinct_ids{0};     // ids that arrived at least once
  std::atomic<uint64_t> last_arrival_us{0};  // io::monotonic_us() of the last message answered 250
};

// The sink on a thread of its own. start() binds (on that thread, which owns the ring) and
// returns once the addresses are known; stop() ends the loop and joins it.
class SinkServer {
 public:
  explicit SinkServer(SinkServerOptions options);
  SinkServer(const SinkServer&) = delete;
  SinkServer& operator=(const SinkServer&) = delete;
  ~SinkServer();  // stop()

  absl::Status start();
  const std::vector<io::SocketAddress>& addresses() const { return _addresses; }  // as bound
  const SinkLive& live() const { return _live; }
  // Idempotent. Messages not yet answered 250 are not counted (what the results say was acked).
  void stop();
  const SinkResults& results() const { return _results; }  // after stop()

 private:
  void thread_main(std::promise<absl::Status> started);

  SinkServerOptions _options;
  std::vector<io::SocketAddress> _addresses;
  SinkLive _live;
  std::atomic<bool> _stop{false};
  std::thread _thread;
  SinkResults _results;
};

}  // namespace sluice::bench
