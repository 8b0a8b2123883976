#pragma once
// A provided-buffer ring for multishot recv. liburing 2.3 has no io_uring_setup_buf_ring, so the
// ring memory is mmap'd (page aligned) and registered here. Every CQE consumes a whole buffer, so
// the owner returns each buffer in the same loop iteration it was received in.
#include <liburing.h>

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"

namespace sluice::io {

class BufferRing {
 public:
  static constexpr uint32_t kEntriesMax = 32768;  // kernel limit for a buffer ring

  // entries must be a power of two <= kEntriesMax.
  static absl::StatusOr<BufferRing*> create(io_uring* ring, uint16_t group_id, uint32_t entries, uint32_t buffer_bytes);
  ~BufferRing();
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  uint16_t group_id() const { return _group_id; }
  uint32_t buffer_bytes() const { return _buffer_bytes; }
  std::span<const char> data(uint16_t buffer_id, uint32_t length) const {
    return {_buffers + static_cast<size_t>(buffer_id) * _buffer_bytes, length};
  }
  // Gives the buffer back to the kernel. Cheap; made visible by the next publish().
  void recycle(uint16_t buffer_id);
  void publish();

 private:
  BufferRing() = default;

  io_uring* _ring = nullptr;
  io_uring_buf_ring* _entries = nullptr;
  char* _buffers = nullptr;
  size_t _entries_bytes = 0;
  size_t _buffers_bytes = 0;
  uint32_t _count = 0;
  uint32_t _buffer_bytes = 0;
  uint16_t _group_id = 0;
  uint32_t _unpublished = 0;
};

}  // namespace sluice::io
