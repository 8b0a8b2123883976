#pragma once
// Counters each shard publishes for /metrics. Written only by the owning shard (relaxed atomic
// stores, no lock); read by the admin thread, which sums them over shards.
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/smtp/replies.h"
#include "spool/spool.h"

namespace sluice::app {

// One table of reasons, shared with the SMTP session and the log (engine/smtp/replies.h).
using Rejection = smtp::RejectReason;

struct ShardMetrics {
  std::atomic<uint64_t> connections_total{0};
  std::atomic<uint64_t> connections_current{0};
  std::atomic<uint64_t> transactions_total{0};
  std::atomic<uint64_t> messages_accepted{0};
  std::atomic<uint64_t> bytes_accepted{0};
  std::atomic<uint64_t> queue_messages{0};
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Rejection::count_)> rejections{};

  void add(std::atomic<uint64_t>& counter, uint64_t amount = 1) {
    counter.store(counter.load(std::memory_order_relaxed) + amount, std::memory_order_relaxed);
  }
  void reject(Rejection reason) { add(rejections[static_cast<size_t>(reason)]); }
};

// `spools`: snapshots taken on each shard's own thread (spool metrics are not atomic).
std::string render_prometheus(const std::vector<const ShardMetrics*>& shards,
                              const std::vector<spool::SpoolMetrics>& spools);

}  // namespace sluice::app
