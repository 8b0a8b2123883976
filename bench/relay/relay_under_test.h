#pragma once
// What `sluice-bench relay` and `compare` measure: a relay under test between `send` and the
// sink. Sluice (bench/relay/sluice_relay.h), a private Postfix (bench/relay/postfix_relay.h), or
// none: the limit, where send talks to the sink straight.
//
// The life of one per matrix cell: start() with a fresh working directory (on a disk, not tmpfs),
// a sample() before the load and one after the sink has every message, stop(). Every process it
// starts is its own, stopped by PID in stop() (and in the destructor, on any error path); it never
// touches a system instance (no /etc/postfix, no system spool).
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/relay/proc_stats.h"
#include "engine/io/address.h"

namespace sluice::bench {

struct RelaySample {
  CpuTicks cpu;          // the relay's processes, cumulative (threads and io-wq workers included)
  Memory memory;         // now, summed over its processes
  std::optional<uint64_t> fsyncs;  // spool fdatasyncs so far, when the relay reports them
  std::optional<uint64_t> queued;  // messages still in its queue, when it can tell
};

struct RelayStart {
  std::string workdir;                   // empty directory of its own, on a disk
  std::vector<io::SocketAddress> sinks;  // where it relays to: one MX host each (equal preference)
  uint32_t threads = 0;                  // 0: the relay's default
};

class RelayUnderTest {
 public:
  virtual ~RelayUnderTest() = default;
  virtual std::string_view name() const = 0;  // "sluice", "postfix", "limit"
  // Starts it and waits until it greets; returns the address `send` connects to.
  virtual absl::StatusOr<io::SocketAddress> start(const RelayStart& start) = 0;
  virtual absl::StatusOr<RelaySample> sample() = 0;
  // Stops every process it started, by PID; idempotent. Errors are reported, not thrown away.
  virtual absl::Status stop() = 0;
};

}  // namespace sluice::bench
