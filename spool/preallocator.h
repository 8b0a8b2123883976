#pragma once
// Internal to the spool. The thread that creates segments ahead of need, off the shard thread:
// zero-filled with real writes, fsync'd, renamed into place, directory fsync'd, and only then
// handed to the shard through a single-producer single-consumer slot ring (no mutex on the shard
// side). Also publishes the file system's free bytes and persists the shard's id floor.
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace sluice::spool {

// Where this thread reports its failures: one logfmt line's fields, called on this thread (so
// it must be thread-safe, e.g. app::log_line). Empty: not reported.
using BackgroundLog = std::function<void(std::string_view fields)>;

// At most one line per kind of failure per interval, with the count of those suppressed, so an
// operator can tell ENOSPC from EMFILE from EACCES without a line per retry.
inline constexpr uint64_t kErrorLogIntervalMs = 10'000;

struct ReadySegment {
  int fd = -1;
  uint64_t id = 0;
  std::string path;
};

class SegmentPreallocator {
 public:
  SegmentPreallocator(std::string shard_dir, uint32_t shard, uint32_t generation, uint64_t segment_bytes,
                      uint64_t next_segment_id, int idfloor_fd, BackgroundLog log = {});
  ~SegmentPreallocator();  // stops the thread, unlinks segments never handed out
  SegmentPreallocator(const SegmentPreallocator&) = delete;
  SegmentPreallocator& operator=(const SegmentPreallocator&) = delete;

  // Shard side, lock-free.
  std::optional<ReadySegment> take();
  uint64_t free_bytes() const { return _free_bytes.load(std::memory_order_relaxed); }
  uint64_t ready() const { return _tail.load(std::memory_order_acquire) - _head.load(std::memory_order_relaxed); }
  void note_id_ms(uint64_t ms);
  // Failures so far (any thread; for tests and the log).
  uint64_t failures() const { return _failures.load(std::memory_order_relaxed); }

 private:
  static constexpr size_t kSlots = 4;  // > kReadySegmentsTarget
  enum class FailureKind : uint8_t { preallocate, id_floor, count_ };
  struct FailureLog {
    uint64_t last_ms = 0;
    uint64_t suppressed = 0;
    bool logged = false;
  };
  void run();
  bool create_one();
  void report(FailureKind kind, std::string_view what, int error);
  void refresh_free_bytes();
  void persist_id_floor();
  void wait_ms(uint64_t ms);
  void wake();

  std::string _shard_dir;
  uint32_t _shard;
  uint32_t _generation;
  uint64_t _segment_bytes;
  uint64_t _next_segment_id;
  int _idfloor_fd;
  uint64_t _persisted_id_ms = 0;
  BackgroundLog _log;
  std::array<FailureLog, static_cast<size_t>(FailureKind::count_)> _failure_logs{};
  std::atomic<uint64_t> _failures{0};

  std::array<ReadySegment, kSlots> _slots;
  alignas(64) std::atomic<uint64_t> _head{0};  // consumer (shard)
  alignas(64) std::atomic<uint64_t> _tail{0};  // producer (this thread)
  alignas(64) std::atomic<uint32_t> _wake{0};  // futex word
  std::atomic<bool> _stop{false};
  std::atomic<uint64_t> _free_bytes{UINT64_MAX};
  std::atomic<uint64_t> _id_ms{0};
  std::thread _thread;
};

}  // namespace sluice::spool
