// Segment preallocation thread (see preallocator.h). Owns segment files until it hands them to
// the shard. Must never hand out a segment before its zero fill, header, fsync, rename and the
// directory fsync have all returned, and must never take a lock the shard thread could wait on.
#include "spool/preallocator.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <ctime>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/io/assert.h"
#include "engine/io/clock.h"
#include "engine/io/strings.h"
#include "spool/file_util.h"
#include "spool/format.h"
#include "spool/spool.h"

namespace sluice::spool {
namespace {

constexpr size_t kZeroChunkBytes = 1 << 20;

using io::monotonic_ms;
using io::wall_ms;

}  // namespace

SegmentPreallocator::SegmentPreallocator(std::string shard_dir, uint32_t shard, uint32_t generation,
                                         uint64_t segment_bytes, uint64_t next_segment_id, int idfloor_fd)
    : _shard_dir(std::move(shard_dir)),
      _shard(shard),
      _generation(generation),
      _segment_bytes(segment_bytes),
      _next_segment_id(next_segment_id),
      _idfloor_fd(idfloor_fd) {
  SLUICE_ASSERT(segment_bytes >= kMinSegmentBytes);
  refresh_free_bytes();
  _thread = std::thread([this] { run(); });
  // Named so that `top -H` tells the preallocators from the shards.
  pthread_setname_np(_thread.native_handle(), str_cat("sluice-prealloc", _shard).substr(0, 15).c_str());
}

SegmentPreallocator::~SegmentPreallocator() {
  _stop.store(true, std::memory_order_release);
  wake();
  _thread.join();
  persist_id_floor();
  if (_idfloor_fd >= 0) {
    ::close(_idfloor_fd);
  }
  while (auto segment = take()) {
    ::close(segment->fd);
    ::unlink(segment->path.c_str());  // never used: nothing refers to it
  }
}

std::optional<ReadySegment> SegmentPreallocator::take() {
  const uint64_t head = _head.load(std::memory_order_relaxed);
  if (head == _tail.load(std::memory_order_acquire)) {
    return std::nullopt;
  }
  ReadySegment segment = std::move(_slots[head % kSlots]);
  _head.store(head + 1, std::memory_order_release);
  wake();
  return segment;
}

void SegmentPreallocator::note_id_ms(uint64_t ms) {
  if (ms > _id_ms.load(std::memory_order_relaxed)) {
    _id_ms.store(ms, std::memory_order_relaxed);
  }
}

void SegmentPreallocator::wake() {
  _wake.fetch_add(1, std::memory_order_release);
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&_wake), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

void SegmentPreallocator::wait_ms(uint64_t ms) {
  const uint32_t seen = _wake.load(std::memory_order_acquire);
  if (_stop.load(std::memory_order_acquire)) {
    return;
  }
  timespec timeout{static_cast<time_t>(ms / 1000), static_cast<long>((ms % 1000) * 1000000)};
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&_wake), FUTEX_WAIT_PRIVATE, seen, &timeout, nullptr, 0);
}

void SegmentPreallocator::run() {
  uint64_t last_refresh_ms = monotonic_ms();
  uint64_t last_floor_ms = last_refresh_ms;
  uint64_t retry_at_ms = 0;
  while (!_stop.load(std::memory_order_acquire)) {
    const uint64_t now = monotonic_ms();
    const uint64_t ready = _tail.load(std::memory_order_relaxed) - _head.load(std::memory_order_acquire);
    bool created = false;
    if (ready < kReadySegmentsTarget && now >= retry_at_ms) {
      created = create_one();
      if (!created) {
        retry_at_ms = now + kPreallocRetryMs;  // ENOSPC and friends: try again, recover by itself
      }
      refresh_free_bytes();
      last_refresh_ms = now;
    }
    if (now - last_refresh_ms >= kFreeBytesRefreshMs) {
      refresh_free_bytes();
      last_refresh_ms = now;
    }
    if (now - last_floor_ms >= kIdFloorPersistMs) {
      persist_id_floor();
      last_floor_ms = now;
    }
    if (!created) {
      wait_ms(ready < kReadySegmentsTarget ? std::min(kPreallocRetryMs, kFreeBytesRefreshMs) : kFreeBytesRefreshMs);
    }
  }
}

bool SegmentPreallocator::create_one() {
  const uint64_t id = _next_segment_id;
  const std::string name = absl::StrFormat("seg-%016x", id);
  const std::string final_path = absl::StrCat(_shard_dir, "/", name);
  const std::string temporary = final_path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    return false;
  }
  FileHeaderPayload payload;
  payload.segment_bytes = _segment_bytes;
  payload.shard = _shard;
  payload.created_ms = wall_ms();
  const std::string header = encode_file_header_record(id, _generation, payload);
  // Real zero writes, not fallocate: unwritten extents would cost a journal commit on first use.
  static const std::vector<uint8_t> zeros(kZeroChunkBytes, 0);
  absl::Status status = write_all(fd, header.data(), header.size());
  for (uint64_t left = _segment_bytes - header.size(); status.ok() && left > 0;) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(left, zeros.size()));
    status = write_all(fd, zeros.data(), chunk);
    left -= chunk;
  }
  if (status.ok() && ::fsync(fd) != 0) {
    status = errno_status(errno, "fsync segment");
  }
  if (status.ok() && ::rename(temporary.c_str(), final_path.c_str()) != 0) {
    status = errno_status(errno, "rename segment");
  }
  if (status.ok()) {
    status = fsync_directory(_shard_dir);
  }
  if (!status.ok()) {
    ::close(fd);
    ::unlink(temporary.c_str());
    ::unlink(final_path.c_str());
    return false;
  }
  ++_next_segment_id;
  const uint64_t tail = _tail.load(std::memory_order_relaxed);
  SLUICE_ASSERT(tail - _head.load(std::memory_order_acquire) < kSlots);
  _slots[tail % kSlots] = ReadySegment{fd, id, final_path};
  _tail.store(tail + 1, std::memory_order_release);
  return true;
}

void SegmentPreallocator::refresh_free_bytes() {
  struct statvfs info;
  if (::statvfs(_shard_dir.c_str(), &info) == 0) {
    _free_bytes.store(static_cast<uint64_t>(info.f_bavail) * info.f_frsize, std::memory_order_relaxed);
  }
}

void SegmentPreallocator::persist_id_floor() {
  const uint64_t ms = _id_ms.load(std::memory_order_relaxed);
  if (_idfloor_fd >= 0 && ms > _persisted_id_ms) {
    if (overwrite_floor_file(_idfloor_fd, ms).ok()) {
      _persisted_id_ms = ms;
    }
  }
}

}  // namespace sluice::spool
