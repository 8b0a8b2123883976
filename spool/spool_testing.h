#pragma once
// Test support (header only, not part of the library): a synchronous executor that performs the
// spool's IoRequests with pwritev / fdatasync / unlink / fallocate, so tests run the real format
// end to end without a ring. Never used by the relay itself.
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
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

// The octets a write request asks for (what a linked request's start depends on).
inline uint64_t request_bytes(const IoRequest& request) {
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < request.iov_count; ++i) {
    bytes += request.iov[i].iov_len;
  }
  return bytes;
}

// Runs the spool until it is idle, jumping the clock to each deadline; `complete(request)` gives
// each request's result (performing it, or injecting a fault). A request linked to the one
// before it (link_next) is not performed, and completes with -ECANCELED, when that one failed
// or was short, as io_uring does. Returns what completed.
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
    bool link_broken = false;
    for (size_t i = 0; i < requests.size(); ++i) {
      const IoRequest& request = requests[i];
      const bool linked = i > 0 && requests[i - 1].link_next;
      const int32_t result = linked && link_broken ? -ECANCELED : complete(request);
      link_broken = request.link_next && (result < 0 || (request.kind == IoRequest::Kind::write &&
                                                         static_cast<uint64_t>(result) != request_bytes(request)));
      spool.on_io_complete(request.op_id, result, done);
    }
  }
  return done;
}

inline std::vector<Completed> drain(ShardSpool& spool, uint64_t& now_us, size_t max_write_bytes = SIZE_MAX) {
  return drain_with(spool, now_us,
                    [max_write_bytes](const IoRequest& request) { return perform(request, max_write_bytes); });
}

// The preallocator works on its own thread: wait until it has `count` segments ready.
// A whole file's bytes ("" if it cannot be read), and a file replaced by `bytes`: for tests that
// look at or damage what the spool wrote.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The journal files of shard 0 of spool `dir`, by number.
inline std::vector<std::string> journal_files(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/shard-0")) {
    if (parse_journal_name(entry.path().filename().string()).has_value()) {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

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
