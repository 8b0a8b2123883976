#pragma once
// Per-client-address limits (concurrent connections, connections per minute) for clients outside
// [relay] networks, counted across all shards. Relay-network clients (the bulk senders) never
// reach this table, so the fast path takes no lock; other clients take one short lock at connect
// and disconnect, never per byte.
// The table is bounded: when it is full, the entry idle longest (no live connection) is reclaimed
// for the new address; a new client is never admitted uncounted, and when every entry has a live
// connection the new one is refused (table_full: 421 4.7.0).
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"

namespace sluice::app {

enum class ClientAdmission : uint8_t { admitted, too_many_connections, rate_exceeded, table_full };

class ClientLimits {
 public:
  static constexpr size_t kTrackedClientsMax = 100'000;

  ClientLimits(uint32_t connections_max, uint32_t rate_per_minute_max, size_t tracked_max = kTrackedClientsMax)
      : _connections_max(connections_max), _rate_per_minute_max(rate_per_minute_max), _tracked_max(tracked_max) {}

  // On admitted, the caller must call release(ip) when the connection ends.
  ClientAdmission admit(const std::string& ip, uint64_t now_ms);
  void release(const std::string& ip);
  size_t tracked() const;

 private:
  struct Entry {
    uint32_t connections = 0;
    uint32_t connections_this_minute = 0;
    uint64_t minute = 0;
    uint64_t idle_since = 0;  // sequence number of its last release to zero connections
  };
  struct Idle {
    std::string ip;
    uint64_t since = 0;
  };
  bool reclaim_one();
  void compact_idle();

  const uint32_t _connections_max;
  const uint32_t _rate_per_minute_max;
  const size_t _tracked_max;
  mutable std::mutex _mutex;
  absl::flat_hash_map<std::string, Entry> _clients;
  // Entries that dropped to zero connections, oldest first; an item is stale when its entry has
  // been reclaimed, has a live connection again, or went idle again later (idle_since differs).
  std::deque<Idle> _idle;
  uint64_t _next_idle = 1;
};

}  // namespace sluice::app
