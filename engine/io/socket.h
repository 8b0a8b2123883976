#pragma once
// Listening sockets and the few socket calls made outside the ring (at start-up and on accept).
#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::io {

inline constexpr int kListenBacklog = 4096;

enum class PortSharing : uint8_t {
  exclusive,  // no SO_REUSEPORT: nobody else may listen on the address (the admin endpoint)
  shards,     // SO_REUSEPORT: one listener per shard on the same address
};

// A non-blocking TCP listener with TCP_NODELAY, which accepted sockets inherit: pipelined
// replies must not wait for Nagle.
absl::StatusOr<int> open_listener(const SocketAddress& address, PortSharing sharing = PortSharing::exclusive);
// Whether another process listens on `address`: binds a socket without SO_REUSEPORT (which a
// SO_REUSEPORT group of another process refuses with EADDRINUSE) and closes it. A port-0 address
// is never in use. Returns the bind error other than EADDRINUSE as a status.
absl::StatusOr<bool> address_in_use(const SocketAddress& address);
// The address a socket is bound to (to learn the port chosen for port 0).
absl::StatusOr<SocketAddress> local_address(int fd);
SocketAddress peer_address(int fd);
// Raises the open-file soft limit to the hard limit; returns the new soft limit.
uint64_t raise_open_file_limit();

}  // namespace sluice::io
