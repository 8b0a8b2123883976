#pragma once
// Per-client-address limits (concurrent connections, connections per minute) for clients outside
// [relay] networks, counted across all shards. Relay-network clients (the bulk senders) never
// reach this table, so the fast path takes no lock; other clients take one short lock at connect
// and disconnect, never per byte.
#include <cstdint>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"

namespace sluice::app {

enum class ClientAdmission : uint8_t { admitted, too_many_connections, rate_exceeded };

class ClientLimits {
 public:
  // A table bound: beyond it, new addresses are admitted uncounted rather than growing memory.
  static constexpr size_t kTrackedClientsMax = 100'000;

  ClientLimits(uint32_t connections_max, uint32_t rate_per_minute_max)
      : _connections_max(connections_max), _rate_per_minute_max(rate_per_minute_max) {}

  // On admitted, the caller must call release(ip) when the connection ends.
  ClientAdmission admit(const std::string& ip, uint64_t now_ms);
  void release(const std::string& ip);

 private:
  struct Entry {
    uint32_t connections = 0;
    uint32_t connections_this_minute = 0;
    uint64_t minute = 0;
  };
  const uint32_t _connections_max;
  const uint32_t _rate_per_minute_max;
  std::mutex _mutex;
  absl::flat_hash_map<std::string, Entry> _clients;
};

}  // namespace sluice::app
