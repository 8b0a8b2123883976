// Listener set-up and socket queries; called at start-up and once per accepted connection.
#include "engine/io/socket.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/io/strings.h"

namespace sluice::io {

absl::StatusOr<int> open_listener(const SocketAddress& address, PortSharing sharing) {
  const int fd = socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(str_cat("socket: ", std::strerror(errno)));
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (sharing == PortSharing::shards) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (address.family() == AF_INET6) {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  if (bind(fd, address.get(), address.length) < 0 || listen(fd, kListenBacklog) < 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(str_cat("cannot listen on ", address.to_string(), ": ", std::strerror(error)));
  }
  return fd;
}

absl::StatusOr<bool> address_in_use(const SocketAddress& address) {
  if (address.port() == 0) {
    return false;
  }
  const int fd = socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(str_cat("socket: ", std::strerror(errno)));
  }
  // SO_REUSEADDR as the real listeners have it: a connection of ours in TIME_WAIT is not "in use".
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (address.family() == AF_INET6) {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  const int result = bind(fd, address.get(), address.length);
  const int error = errno;
  close(fd);
  if (result == 0) {
    return false;
  }
  if (error == EADDRINUSE) {
    return true;
  }
  return absl::UnavailableError(str_cat("cannot listen on ", address.to_string(), ": ", std::strerror(error)));
}

absl::StatusOr<SocketAddress> local_address(int fd) {
  SocketAddress address;
  address.length = sizeof(address.storage);
  if (getsockname(fd, address.get_mutable(), &address.length) < 0) {
    return absl::InternalError(str_cat("getsockname: ", std::strerror(errno)));
  }
  return address;
}

SocketAddress peer_address(int fd) {
  SocketAddress address;
  address.length = sizeof(address.storage);
  if (getpeername(fd, address.get_mutable(), &address.length) < 0) {
    address.length = 0;
  }
  return address.unmapped();
}

uint64_t raise_open_file_limit() {
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

}  // namespace sluice::io
