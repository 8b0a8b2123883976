// Prometheus text rendering of the shards' counters.
#include "engine/app/metrics.h"

#include <algorithm>

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

// A Prometheus label value in its quotes: backslash, quote and line feed escaped.
std::string label_value(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

// What the shards' schedulers and resolvers say: job counts, the largest sites' ready queues,
// DNS queries, cache hits, failures and latency.
[[gnu::noinline]] void render_delivery(std::string& out, const std::vector<SpoolSnapshot>& spools) {
  if (spools.empty()) {
    return;
  }
  uint64_t jobs = 0, scheduled = 0, in_flight = 0;
  resolver::ResolverMetrics dns;
  std::vector<relay::SiteSummary> sites;
  for (const SpoolSnapshot& snapshot : spools) {
    jobs += snapshot.jobs;
    scheduled += snapshot.jobs_scheduled;
    in_flight += snapshot.jobs_in_flight;
    dns.queries_sent += snapshot.dns.queries_sent;
    dns.query_failures += snapshot.dns.query_failures;
    dns.query_timeouts += snapshot.dns.query_timeouts;
    dns.query_latency_ms_sum += snapshot.dns.query_latency_ms_sum;
    dns.cache_hits += snapshot.dns.cache_hits;
    dns.cache_misses += snapshot.dns.cache_misses;
    dns.plans += snapshot.dns.plans;
    dns.plans_failed_temporary += snapshot.dns.plans_failed_temporary;
    dns.plans_failed_permanent += snapshot.dns.plans_failed_permanent;
    dns.plan_latency_ms_sum += snapshot.dns.plan_latency_ms_sum;
    for (const relay::SiteSummary& site : snapshot.sites) {
      auto same = std::find_if(sites.begin(), sites.end(), [&](const relay::SiteSummary& s) { return s.name == site.name; });
      if (same == sites.end()) {
        sites.push_back(site);
      } else {
        same->ready += site.ready;
        same->connections += site.connections;
      }
    }
  }
  str_append(&out, "# HELP sluice_delivery_jobs Delivery jobs (one message's recipients at one domain) by state.\n",
             "# TYPE sluice_delivery_jobs gauge\n", "sluice_delivery_jobs{state=\"scheduled\"} ", scheduled, "\n",
             "sluice_delivery_jobs{state=\"in_flight\"} ", in_flight, "\n", "sluice_delivery_jobs{state=\"ready\"} ",
             jobs - scheduled - in_flight, "\n");
  std::sort(sites.begin(), sites.end(), [](const relay::SiteSummary& a, const relay::SiteSummary& b) {
    return a.ready != b.ready ? a.ready > b.ready : a.name < b.name;
  });
  str_append(&out, "# HELP sluice_site_ready Jobs ready at a site (the largest sites), and its connections.\n",
             "# TYPE sluice_site_ready gauge\n");
  for (size_t i = 0; i < sites.size() && i < kMetricsSitesMax; ++i) {
    const std::string name = label_value(sites[i].name);
    str_append(&out, "sluice_site_ready{site=", name, "} ", sites[i].ready, "\n");
    str_append(&out, "sluice_site_connections{site=", name, "} ", sites[i].connections, "\n");
  }
  counter(out, "sluice_dns_queries_total", "DNS queries sent.", "counter", dns.queries_sent);
  counter(out, "sluice_dns_query_failures_total", "DNS queries that failed (timeouts included).", "counter",
          dns.query_failures);
  counter(out, "sluice_dns_cache_hits_total", "Lookups answered from the DNS cache.", "counter", dns.cache_hits);
  counter(out, "sluice_dns_cache_misses_total", "Lookups that needed a query.", "counter", dns.cache_misses);
  counter(out, "sluice_dns_plans_total", "Delivery plans made (MX, then addresses).", "counter", dns.plans);
  counter(out, "sluice_dns_plans_failed_total", "Delivery plans that failed (temporary or permanent).", "counter",
          dns.plans_failed_temporary + dns.plans_failed_permanent);
  counter(out, "sluice_dns_plan_latency_ms_sum", "Total time to make delivery plans.", "counter",
          dns.plan_latency_ms_sum);
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
  str_append(&out, "# HELP sluice_deferrals_total Deferred recipients by cause: a 4xx reply, or no reply.\n",
             "# TYPE sluice_deferrals_total counter\n", "sluice_deferrals_total{class=\"4xx\"} ",
             sum(shards, &ShardMetrics::deferrals_4xx), "\n", "sluice_deferrals_total{class=\"network\"} ",
             sum(shards, &ShardMetrics::deferrals_network), "\n");
  str_append(&out, "# HELP sluice_delivery_latency_ms From arrival to the 2xx of a delivered recipient.\n",
             "# TYPE sluice_delivery_latency_ms histogram\n");
  uint64_t delivered = 0;
  for (size_t bucket = 0; bucket < kDeliveryLatencyBuckets; ++bucket) {
    for (const ShardMetrics* shard : shards) {
      delivered += shard->delivery_latency_bucket[bucket].load(std::memory_order_relaxed);
    }
    if (bucket + 1 < kDeliveryLatencyBuckets) {
      str_append(&out, "sluice_delivery_latency_ms_bucket{le=\"", kDeliveryLatencyBoundsMs[bucket], "\"} ", delivered,
                 "\n");
    } else {
      str_append(&out, "sluice_delivery_latency_ms_bucket{le=\"+Inf\"} ", delivered, "\n");
    }
  }
  str_append(&out, "sluice_delivery_latency_ms_sum ", sum(shards, &ShardMetrics::delivery_latency_sum_ms), "\n",
             "sluice_delivery_latency_ms_count ", delivered, "\n");
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
    str_append(&out, "sluice_spool_below_min_free{shard=\"", shard, "\"} ", spools[shard].below_min_free ? "1\n" : "0\n");
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
  render_delivery(out, spools);
  return out;
}

}  // namespace sluice::app
