// Concurrent-connection and connection-rate limits per client address (Postfix's
// smtpd_client_connection_count_limit and smtpd_client_connection_rate_limit).
#include "engine/app/client_limits.h"

namespace sluice::app {

ClientAdmission ClientLimits::admit(const std::string& ip, uint64_t now_ms) {
  std::lock_guard lock(_mutex);
  auto it = _clients.find(ip);
  if (it == _clients.end()) {
    if (_clients.size() >= kTrackedClientsMax) {
      return ClientAdmission::admitted;
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
  if (it->second.connections > 0) {
    --it->second.connections;
  }
  if (it->second.connections == 0 && it->second.connections_this_minute == 0) {
    _clients.erase(it);
  }
}

}  // namespace sluice::app
