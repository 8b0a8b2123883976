#pragma once
// Internal to the spool. The thread that creates segments ahead of need, off the shard thread:
// zero-filled with real writes, fsync'd, renamed into place, directory fsync'd, and only then
// handed to the shard through a single-producer single-consumer slot ring (no mutex on the shard
// side). Also publishes the file system's free bytes and persists the shard's id floor.
#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>

namespace sluice::spool {

struct ReadySegment {
  int fd = -1;
  uint64_t id = 0;
  std::string path;
};

class SegmentPreallocator {
 public:
  SegmentPreallocator(std::string shard_dir, uint32_t shard, uint32_t generation, uint64_t segment_bytes,
                      uint64_t next_segment_id, int idfloor_fd);
  ~SegmentPreallocator();  // stops the thread, unlinks segments never handed out
  SegmentPreallocator(const SegmentPreallocator&) = delete;
  SegmentPreallocator& operator=(const SegmentPreallocator&) = delete;

  // Shard side, lock-free.
  std::optional<ReadySegment> take();
  uint64_t free_bytes() const { return _free_bytes.load(std::memory_order_relaxed); }
  uint64_t ready() const { return _tail.load(std::memory_order_acquire) - _head.load(std::memory_order_relaxed); }
  void note_id_ms(uint64_t ms);

 private:
  static constexpr size_t kSlots = 4;  // > kReadySegmentsTarget
  void run();
  bool create_one();
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
