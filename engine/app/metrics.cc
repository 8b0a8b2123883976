// Prometheus text rendering of the shards' counters.
#include "engine/app/metrics.h"

#include "absl/strings/str_cat.h"
#include "engine/io/strings.h"

namespace sluice::app {

namespace {

uint64_t sum(const std::vector<const ShardMetrics*>& shards, std::atomic<uint64_t> ShardMetrics::*field) {
  uint64_t total = 0;
  for (const ShardMetrics* shard : shards) {
    total += (shard->*field).load(std::memory_order_relaxed);
  }
  return total;
}

void counter(std::string& out, const char* name, const char* help, const char* type, uint64_t value) {
  str_append(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ", value, "\n");
}

}  // namespace

std::string render_prometheus(const std::vector<const ShardMetrics*>& shards,
                              const std::vector<SpoolSnapshot>& spools) {
  std::string out;
  counter(out, "sluice_connections_total", "SMTP connections accepted.", "counter",
          sum(shards, &ShardMetrics::connections_total));
  counter(out, "sluice_connections_current", "SMTP connections open now.", "gauge",
          sum(shards, &ShardMetrics::connections_current));
  counter(out, "sluice_transactions_total", "SMTP transactions that reached end of data.", "counter",
          sum(shards, &ShardMetrics::transactions_total));
  counter(out, "sluice_messages_accepted_total", "Messages stored and acknowledged with 250.", "counter",
          sum(shards, &ShardMetrics::messages_accepted));
  counter(out, "sluice_bytes_accepted_total", "Message octets (RFC size) accepted.", "counter",
          sum(shards, &ShardMetrics::bytes_accepted));
  counter(out, "sluice_log_lines_dropped_total", "Log lines dropped: log output too slow, or stderr failing.",
          "counter", sum(shards, &ShardMetrics::log_lines_dropped));
  counter(out, "sluice_outbound_connections", "Delivery connections open now.", "gauge",
          sum(shards, &ShardMetrics::outbound_connections));
  str_append(&out, "# HELP sluice_delivery_recipients_total Delivery attempts per recipient, by outcome.\n",
             "# TYPE sluice_delivery_recipients_total counter\n");
  str_append(&out, "sluice_delivery_recipients_total{outcome=\"delivered\"} ",
             sum(shards, &ShardMetrics::recipients_delivered), "\n");
  str_append(&out, "sluice_delivery_recipients_total{outcome=\"deferred\"} ",
             sum(shards, &ShardMetrics::recipients_deferred), "\n");
  str_append(&out, "sluice_delivery_recipients_total{outcome=\"bounced\"} ",
             sum(shards, &ShardMetrics::recipients_bounced), "\n");
  counter(out, "sluice_messages_finished_total", "Messages removed from the queue with every recipient final.",
          "counter", sum(shards, &ShardMetrics::messages_finished));
  str_append(&out, "# HELP sluice_rejections_total SMTP rejections by reason.\n",
             "# TYPE sluice_rejections_total counter\n");
  for (size_t reason = 0; reason < static_cast<size_t>(Rejection::count_); ++reason) {
    uint64_t total = 0;
    for (const ShardMetrics* shard : shards) {
      total += shard->rejections[reason].load(std::memory_order_relaxed);
    }
    str_append(&out, "sluice_rejections_total{reason=\"", smtp::reject_reason_name(static_cast<Rejection>(reason)),
               "\"} ", total, "\n");
  }
  uint64_t queued = 0;
  for (const SpoolSnapshot& snapshot : spools) {
    queued += snapshot.messages;
  }
  if (!spools.empty()) {  // without the shards' answers there is no figure (rather than a wrong 0)
    counter(out, "sluice_queue_messages", "Messages in the queue.", "gauge", queued);
  }
  str_append(&out, "# HELP sluice_spool_free_bytes Free bytes of the spool's file system, per shard.\n",
             "# TYPE sluice_spool_free_bytes gauge\n");
  for (size_t shard = 0; shard < spools.size(); ++shard) {
    str_append(&out, "sluice_spool_free_bytes{shard=\"", shard, "\"} ", spools[shard].free_bytes, "\n");
  }
  str_append(&out,
             "# HELP sluice_spool_below_min_free 1 while the shard's spool is below min_free_bytes (MAIL gets 452).\n",
             "# TYPE sluice_spool_below_min_free gauge\n");
  for (size_t shard = 0; shard < spools.size(); ++shard) {
    str_append(&out, "sluice_spool_below_min_free{shard=\"", shard, "\"} ", spools[shard].below_min_free ? 1 : 0, "\n");
  }
  spool::SpoolMetrics total;
  for (const SpoolSnapshot& snapshot : spools) {
    const spool::SpoolMetrics& one = snapshot.metrics;
    total.fsyncs += one.fsyncs;
    total.fsync_errors += one.fsync_errors;
    total.messages_per_fsync_sum += one.messages_per_fsync_sum;
    total.messages_per_fsync_count += one.messages_per_fsync_count;
    total.fsync_latency_sum_us += one.fsync_latency_sum_us;
    total.bytes_written += one.bytes_written;
    total.write_errors += one.write_errors;
    total.unavailable += one.unavailable;
    for (size_t bucket = 0; bucket < total.fsync_latency_bucket.size(); ++bucket) {
      total.fsync_latency_bucket[bucket] += one.fsync_latency_bucket[bucket];
    }
  }
  counter(out, "sluice_spool_fsyncs_total", "Spool fdatasyncs completed.", "counter", total.fsyncs);
  counter(out, "sluice_spool_fsync_errors_total", "Spool fdatasyncs that failed.", "counter", total.fsync_errors);
  counter(out, "sluice_spool_messages_fsynced_total", "Records made durable by fdatasyncs.", "counter",
          total.messages_per_fsync_sum);
  counter(out, "sluice_spool_bytes_written_total", "Octets written to the spool.", "counter", total.bytes_written);
  counter(out, "sluice_spool_write_errors_total", "Spool writes that failed.", "counter", total.write_errors);
  counter(out, "sluice_spool_unavailable_total", "Messages refused: no spool segment was ready.", "counter",
          total.unavailable);
  str_append(&out, "# HELP sluice_spool_fsync_seconds Latency of spool fdatasync, from the issue of its linked write.\n",
             "# TYPE sluice_spool_fsync_seconds histogram\n");
  uint64_t cumulative = 0;
  for (size_t bucket = 0; bucket < total.fsync_latency_bucket.size(); ++bucket) {
    cumulative += total.fsync_latency_bucket[bucket];
    const std::string bound = bucket < spool::kFsyncLatencyBoundsUs.size()
                                  ? str_cat(spool::kFsyncLatencyBoundsUs[bucket] / 1e6)
                                  : std::string("+Inf");
    str_append(&out, "sluice_spool_fsync_seconds_bucket{le=\"", bound, "\"} ", cumulative, "\n");
  }
  str_append(&out, "sluice_spool_fsync_seconds_sum ", total.fsync_latency_sum_us / 1e6, "\n",
             "sluice_spool_fsync_seconds_count ", total.fsyncs, "\n");
  return out;
}

}  // namespace sluice::app
