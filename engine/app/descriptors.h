#pragma once
// The process's descriptor budget, planned once at start-up from the open-file limit: what the
// spool, DNS and outbound delivery may hold, a reserve for answering "421" over the limit, the
// admin endpoint and logs, and the inbound sessions that get the rest. Every part has its bound,
// so a large queue or a burst of connections cannot take another part's descriptors.
#include <cstdint>
#include <string>

namespace sluice::app {

// Kept free: the admin endpoint and its connections, the log, start-up files, and the accept
// of a connection over the limit that is answered 421 4.7.0 and closed.
inline constexpr uint64_t kDescriptorReserve = 256;
// c-ares sockets a shard's resolver may hold: a UDP and a TCP one (after truncation) for each of
// at most 16 servers ([dns] servers, config.h kDnsServersMax; asserted in main.cc).
inline constexpr uint64_t kDnsDescriptorsPerShard = 32;
// Segment files a shard's delivery keeps open for reading bodies when not sending from them
// (engine/app/segment_reader.h); those it sends from are bounded by its connections.
inline constexpr uint64_t kSegmentReadersPerShard = 32;
// Fewer inbound sessions than this and the relay cannot work: start-up fails with a message.
inline constexpr uint64_t kInboundSessionsMin = 16;

struct DescriptorDemand {
  uint64_t limit = 0;  // RLIMIT_NOFILE (soft, after raising it to the hard limit)
  uint32_t shards = 1;
  uint64_t spool_per_shard = 0;      // spool::spool_descriptors_max
  uint64_t listeners_per_shard = 0;  // SMTP listening sockets
  uint64_t ring_per_shard = 3;       // the io_uring itself and its mappings
  uint64_t outbound = 0;             // delivery's connections over all shards ([delivery] max_connections)
  uint64_t sessions_configured = 0;  // [server] max_sessions; 0 = the rest of the budget
};

struct DescriptorBudget {
  uint64_t limit = 0;
  uint64_t reserve = 0;
  uint64_t spool = 0;
  uint64_t dns = 0;
  uint64_t engine = 0;  // listeners and rings
  uint64_t outbound = 0;  // connections, and the segment readers of delivery
  uint64_t inbound = 0;  // concurrent inbound sessions, over all shards
  bool fits = false;     // the limit covers the fixed parts and kInboundSessionsMin sessions
  uint64_t needed = 0;   // the smallest limit that fits

  std::string to_log_fields() const;  // "descriptors_limit=... inbound=... ..."
};

DescriptorBudget plan_descriptors(const DescriptorDemand& demand);

}  // namespace sluice::app
