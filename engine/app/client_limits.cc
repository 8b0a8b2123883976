// Concurrent-connection and connection-rate limits per client address (Postfix's
// smtpd_client_connection_count_limit and smtpd_client_connection_rate_limit).
#include "engine/app/client_limits.h"

#include "engine/io/assert.h"

namespace sluice::app {

ClientAdmission ClientLimits::admit(const std::string& ip, uint64_t now_ms) {
  std::lock_guard lock(_mutex);
  auto it = _clients.find(ip);
  if (it == _clients.end()) {
    if (_clients.size() >= _tracked_max && !reclaim_one()) {
      return ClientAdmission::table_full;  // every tracked address is connected right now
    }
    it = _clients.emplace(ip, Entry{}).first;
  }
  Entry& entry = it->second;
  const uint64_t minute = now_ms / 60'000;
  if (entry.minute != minute) {
    entry.minute = minute;
    entry.connections_this_minute = 0;
  }
  if (_connections_max > 0 && entry.connections >= _connections_max) {
    return ClientAdmission::too_many_connections;
  }
  if (_rate_per_minute_max > 0 && entry.connections_this_minute >= _rate_per_minute_max) {
    return ClientAdmission::rate_exceeded;
  }
  ++entry.connections;
  ++entry.connections_this_minute;
  return ClientAdmission::admitted;
}

void ClientLimits::release(const std::string& ip) {
  std::lock_guard lock(_mutex);
  auto it = _clients.find(ip);
  if (it == _clients.end()) {
    return;
  }
  Entry& entry = it->second;
  SLUICE_ASSERT(entry.connections > 0, "client released more often than admitted");
  if (--entry.connections > 0) {
    return;
  }
  if (_rate_per_minute_max == 0) {
    _clients.erase(it);  // nothing to remember about an address without connections
    return;
  }
  // Its connections this minute still count toward the rate limit: keep it, reclaimable.
  entry.idle_since = _next_idle++;
  _idle.push_back(Idle{ip, entry.idle_since});
  if (_idle.size() > 2 * _tracked_max) {
    compact_idle();
  }
}

size_t ClientLimits::tracked() const {
  std::lock_guard lock(_mutex);
  return _clients.size();
}

// Removes the entry idle longest. Stale queue items (reconnected, or idle again later) are
// dropped on the way; false when no entry is idle.
bool ClientLimits::reclaim_one() {
  while (!_idle.empty()) {
    const Idle oldest = std::move(_idle.front());
    _idle.pop_front();
    auto it = _clients.find(oldest.ip);
    if (it != _clients.end() && it->second.connections == 0 && it->second.idle_since == oldest.since) {
      _clients.erase(it);
      return true;
    }
  }
  return false;
}

void ClientLimits::compact_idle() {
  std::erase_if(_idle, [this](const Idle& item) {
    const auto it = _clients.find(item.ip);
    return it == _clients.end() || it->second.connections > 0 || it->second.idle_since != item.since;
  });
}

}  // namespace sluice::app
