#pragma once
// Listening sockets and the few socket calls made outside the ring (at start-up and on accept).
#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::io {

inline constexpr int kListenBacklog = 4096;

// A non-blocking TCP listener with SO_REUSEPORT (one per shard on the same address) and
// TCP_NODELAY, which accepted sockets inherit: pipelined replies must not wait for Nagle.
absl::StatusOr<int> open_listener(const SocketAddress& address);
// The address a socket is bound to (to learn the port chosen for port 0).
absl::StatusOr<SocketAddress> local_address(int fd);
SocketAddress peer_address(int fd);
// Raises the open-file soft limit to the hard limit; returns the new soft limit.
uint64_t raise_open_file_limit();

}  // namespace sluice::io
