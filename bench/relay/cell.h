#pragma once
// One cell of a `sluice-bench relay` / `compare` matrix through one relay under test: a fresh
// working directory, an in-process sink, the relay, `send` in process, then the wait until the
// sink has every accepted message and the relay's queue is empty, and the figures.
//
// The accounting is by id: every message send got 250 for (its accepted_messages) must arrive at
// the sink exactly once and intact. A message that arrived but was not accepted (send gave up
// waiting for the reply, the relay delivered it anyway) is counted apart: it is not a loss.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/relay/relay_under_test.h"
#include "bench/sink/ids.h"

namespace sluice::bench {

struct CellSpec {
  uint64_t size_octets = 1024;  // body octets
  uint32_t rcpts = 1;
  uint32_t sessions = 50;
  uint32_t messages_per_connection = 0;  // 0: no limit
  uint64_t messages = 1000;
  std::string label() const;  // "1k x1 rcpt, 100/conn"
};

// What every cell of a run shares.
// Sink addresses a cell can have: 127.0.0.3 to 127.0.0.202.
inline constexpr uint32_t kMxHostsMax = 200;

struct CellOptions {
  std::string tmpdir = "/var/tmp";  // each cell's working directory is made under it
  uint32_t relay_threads = 0;       // 0: the relay's default
  uint32_t send_threads = 1;
  // Sink addresses, 127.0.0.3 up, one port: with more than one, Sluice finds them as MX hosts of
  // equal preference through a DNS fixture (sluice_relay.h); Postfix and the limit use the first.
  uint32_t mx_hosts = 1;
  bool keep = false;                // keep the working directories (a failed cell's is always kept)
  bool progress = false;            // send's progress line on stdout
  uint64_t stall_timeout_ms = 60'000;   // no new arrival for this long: the cell failed
  uint64_t settle_timeout_ms = 60'000;  // every message arrived, the relay's queue still not empty
};

struct Accounting {
  uint64_t lost = 0;        // accepted by send, never arrived
  uint64_t duplicated = 0;  // extra arrivals of an id of the run
  uint64_t corrupt = 0;     // arrivals of an id of the run with a wrong or missing checksum
  uint64_t unaccepted_arrivals = 0;  // arrived, though send did not get 250 for it
  std::vector<uint64_t> lost_examples;  // the first few lost message numbers
  bool clean() const { return lost == 0 && duplicated == 0 && corrupt == 0; }
};

// `accepted` sorted (SendResults::finish); `received`, `duplicate_ids`, `corrupt_ids` as the sink
// reports them (SinkResults). Ids of other runs are ignored.
Accounting account(std::string_view run_id, const std::vector<uint64_t>& accepted, const IdSet& received,
                   const std::vector<std::string>& duplicate_ids, const std::vector<std::string>& corrupt_ids);

struct CellResult {
  std::string relay;  // RelayUnderTest::name()
  CellSpec spec;
  std::string error;  // empty: the cell completed
  std::string workdir;  // when kept
  uint64_t sent = 0;
  uint64_t accepted = 0;
  uint64_t arrived = 0;  // messages the sink answered 250
  std::vector<uint64_t> arrived_per_sink;  // the same, per sink address
  double send_s = 0;     // send's own run
  double e2e_s = 0;      // send start -> last arrival
  double msg_per_s = 0;  // accepted / e2e_s
  std::optional<double> relay_cpu_us_per_msg;  // none for the limit
  double box_cpu_us_per_msg = 0;
  double box_cpus = 0;  // the box's average busy CPUs over the cell
  uint64_t relay_peak_rss_octets = 0;
  std::optional<double> fsyncs_per_msg;
  uint64_t e2e_p50_us = 0, e2e_p99_us = 0, e2e_max_us = 0;  // the sink's arrival latency
  uint64_t send_p50_us = 0, send_p99_us = 0;                 // send: started -> final reply
  Accounting accounting;
  bool clean() const { return error.empty() && accounting.clean(); }
};

// `cell_index` makes the run id unique in the whole run (the sink is fresh per cell anyway).
CellResult run_cell(RelayUnderTest& relay, const CellSpec& spec, const CellOptions& options, uint32_t cell_index);

}  // namespace sluice::bench
