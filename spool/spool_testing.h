#pragma once
// Test support (header only, not part of the library): a synchronous executor that performs the
// spool's IoRequests with pwritev / fdatasync / unlink / fallocate, so tests run the real format
// end to end without a ring. Never used by the relay itself.
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "spool/spool.h"

namespace sluice::spool::testing {

// Performs one request the way io_uring would and returns the CQE result.
// max_write_bytes limits a write, to produce short writes.
inline int32_t perform(const IoRequest& request, size_t max_write_bytes = SIZE_MAX) {
  switch (request.kind) {
    case IoRequest::Kind::write: {
      std::vector<iovec> iov(request.iov, request.iov + request.iov_count);
      size_t allowed = max_write_bytes;
      size_t count = 0;
      for (; count < iov.size() && allowed > 0; ++count) {
        if (iov[count].iov_len > allowed) {
          iov[count].iov_len = allowed;
        }
        allowed -= iov[count].iov_len;
      }
      const ssize_t n = ::pwritev(request.fd, iov.data(), static_cast<int>(count), static_cast<off_t>(request.offset));
      return n < 0 ? -errno : static_cast<int32_t>(n);
    }
    case IoRequest::Kind::fdatasync:
      return ::fdatasync(request.fd) == 0 ? 0 : -errno;
    case IoRequest::Kind::unlink:
      return ::unlink(request.path) == 0 ? 0 : -errno;
    case IoRequest::Kind::open: {
      const int fd = ::open(request.path, request.open_flags, request.open_mode);
      return fd < 0 ? -errno : fd;
    }
    case IoRequest::Kind::fsync:
      return ::fsync(request.fd) == 0 ? 0 : -errno;
    case IoRequest::Kind::fallocate:
      return ::fallocate(request.fd, 0, static_cast<off_t>(request.offset), static_cast<off_t>(request.length)) == 0
                 ? 0
                 : -errno;
  }
  return -EINVAL;
}

// Runs the spool until it is idle, jumping the clock to each deadline; `complete(request)` gives
// each request's result (performing it, or injecting a fault). Returns what completed.
template <typename Complete>
std::vector<Completed> drain_with(ShardSpool& spool, uint64_t& now_us, Complete&& complete, int rounds = 1000000) {
  std::vector<Completed> done;
  std::vector<IoRequest> requests;
  for (int round = 0; round < rounds && !spool.idle(); ++round) {
    requests.clear();
    spool.collect_io(now_us, requests);
    if (requests.empty()) {
      const uint64_t deadline = spool.next_deadline_us();
      if (deadline == UINT64_MAX) {
        break;
      }
      now_us = std::max(now_us + 1, deadline);
      continue;
    }
    for (const auto& request : requests) {
      spool.on_io_complete(request.op_id, complete(request), done);
    }
  }
  return done;
}

inline std::vector<Completed> drain(ShardSpool& spool, uint64_t& now_us, size_t max_write_bytes = SIZE_MAX) {
  return drain_with(spool, now_us,
                    [max_write_bytes](const IoRequest& request) { return perform(request, max_write_bytes); });
}

// The preallocator works on its own thread: wait until it has `count` segments ready.
inline bool wait_for_ready_segments(const ShardSpool& spool, uint64_t count = kReadySegmentsTarget) {
  for (int i = 0; i < 2000; ++i) {
    if (spool.ready_segments() >= count) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace sluice::spool::testing
