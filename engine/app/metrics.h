#pragma once
// Counters each shard publishes for /metrics. Written only by the owning shard (relaxed atomic
// stores, no lock); read by the admin thread, which sums them over shards.
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/relay/scheduler.h"
#include "engine/smtp/replies.h"
#include "resolver/resolver.h"
#include "spool/spool.h"

namespace sluice::app {

// One table of reasons, shared with the SMTP session and the log (engine/smtp/replies.h).
using Rejection = smtp::RejectReason;

inline constexpr size_t kDeliveryLatencyBuckets = 10;
inline constexpr std::array<uint64_t, kDeliveryLatencyBuckets - 1> kDeliveryLatencyBoundsMs = {
    10, 50, 100, 500, 1'000, 5'000, 30'000, 300'000, 3'600'000};

struct ShardMetrics {
  std::atomic<uint64_t> connections_total{0};
  std::atomic<uint64_t> connections_current{0};
  std::atomic<uint64_t> transactions_total{0};
  std::atomic<uint64_t> messages_accepted{0};
  std::atomic<uint64_t> bytes_accepted{0};
  std::atomic<uint64_t> log_lines_dropped{0};
  // Delivery.
  std::atomic<uint64_t> outbound_connections{0};  // open now
  std::atomic<uint64_t> recipients_delivered{0};
  std::atomic<uint64_t> recipients_deferred{0};
  std::atomic<uint64_t> recipients_bounced{0};
  std::atomic<uint64_t> messages_finished{0};  // removed from the queue, every recipient final
  std::atomic<uint64_t> deferrals_4xx{0};         // deferred by the server's 4xx reply
  std::atomic<uint64_t> deferrals_network{0};     // deferred without one: connect, timeout, lost, DNS
  // Arrival to the delivered recipient's 2xx, per recipient (kDeliveryLatencyBoundsMs).
  std::array<std::atomic<uint64_t>, kDeliveryLatencyBuckets> delivery_latency_bucket{};
  std::atomic<uint64_t> delivery_latency_sum_ms{0};  // LogBuffer over its bound, or stderr broken
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Rejection::count_)> rejections{};

  void add(std::atomic<uint64_t>& counter, uint64_t amount = 1) {
    counter.store(counter.load(std::memory_order_relaxed) + amount, std::memory_order_relaxed);
  }
  void reject(Rejection reason) { add(rejections[static_cast<size_t>(reason)]); }
};

// What the spool knows, taken on each shard's own thread (spool state is not atomic) when
// /metrics is rendered, so gauges such as the queue size are never stale.
struct SpoolSnapshot {
  spool::SpoolMetrics metrics;
  uint64_t messages = 0;  // in the queue index now
  uint64_t free_bytes = 0;
  bool below_min_free = false;
  // Delivery, taken on the shard's thread too.
  std::vector<relay::SiteSummary> sites;
  resolver::ResolverMetrics dns;
  uint64_t jobs = 0;
  uint64_t jobs_scheduled = 0;
  uint64_t jobs_in_flight = 0;
};
// Sites shown in /metrics with their ready queue depth: the largest ones.
inline constexpr size_t kMetricsSitesMax = 20;

// `spools`: one snapshot per shard, in shard order (empty if the shards did not answer).
std::string render_prometheus(const std::vector<const ShardMetrics*>& shards, const std::vector<SpoolSnapshot>& spools);

}  // namespace sluice::app
