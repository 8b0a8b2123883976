// Registers and refills the provided-buffer ring that multishot recv draws from.
#include "engine/io/buffer_ring.h"

#include <sys/mman.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/io/assert.h"
#include "engine/io/strings.h"

namespace sluice::io {

absl::StatusOr<BufferRing*> BufferRing::create(io_uring* ring, uint16_t group_id, uint32_t entries,
                                               uint32_t buffer_bytes) {
  if (entries == 0 || entries > kEntriesMax || (entries & (entries - 1)) != 0) {
    return absl::InvalidArgumentError("buffer ring entries must be a power of two <= 32768");
  }
  auto* self = new BufferRing();
  self->_ring = ring;
  self->_count = entries;
  self->_buffer_bytes = buffer_bytes;
  self->_group_id = group_id;
  self->_entries_bytes = entries * sizeof(io_uring_buf);
  void* entries_memory =
      mmap(nullptr, self->_entries_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  self->_buffers_bytes = static_cast<size_t>(entries) * buffer_bytes;
  void* buffer_memory = mmap(nullptr, self->_buffers_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (entries_memory == MAP_FAILED || buffer_memory == MAP_FAILED) {
    delete self;
    return absl::ResourceExhaustedError("mmap for buffer ring failed");
  }
  self->_entries = static_cast<io_uring_buf_ring*>(entries_memory);
  self->_buffers = static_cast<char*>(buffer_memory);
  io_uring_buf_ring_init(self->_entries);
  io_uring_buf_reg registration{};
  registration.ring_addr = reinterpret_cast<uint64_t>(self->_entries);
  registration.ring_entries = entries;
  registration.bgid = group_id;
  const int rc = io_uring_register_buf_ring(ring, &registration, 0);
  if (rc < 0) {
    delete self;
    return absl::InternalError(str_cat("io_uring_register_buf_ring: ", std::strerror(-rc)));
  }
  for (uint32_t id = 0; id < entries; ++id) {
    self->recycle(static_cast<uint16_t>(id));
  }
  self->publish();
  return self;
}

BufferRing::~BufferRing() {
  if (_ring != nullptr && _entries != nullptr) {
    io_uring_unregister_buf_ring(_ring, _group_id);
  }
  if (_entries != nullptr) {
    munmap(_entries, _entries_bytes);
  }
  if (_buffers != nullptr) {
    munmap(_buffers, _buffers_bytes);
  }
}

void BufferRing::recycle(uint16_t buffer_id) {
  SLUICE_ASSERT(buffer_id < _count);
  io_uring_buf_ring_add(_entries, _buffers + static_cast<size_t>(buffer_id) * _buffer_bytes, _buffer_bytes, buffer_id,
                        io_uring_buf_ring_mask(_count), static_cast<int>(_unpublished));
  ++_unpublished;
}

void BufferRing::publish() {
  if (_unpublished > 0) {
    io_uring_buf_ring_advance(_entries, static_cast<int>(_unpublished));
    _unpublished = 0;
  }
}

}  // namespace sluice::io
