#pragma once
// CRC32C (Castagnoli), the checksum of every spool record. The SSE4.2 instruction when the CPU
// has it, a table otherwise; both give the same answers (the table one is the test oracle).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sluice::spool {

// Extends `crc` (the result of an earlier call, 0 to start) over `size` bytes. The usual
// pre/post inversion is inside, so crc32c_extend(crc32c(a), b) == crc32c(a + b).
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size);
inline uint32_t crc32c(const void* data, size_t size) {
  return crc32c_extend(0, data, size);
}
inline uint32_t crc32c(std::string_view bytes) {
  return crc32c_extend(0, bytes.data(), bytes.size());
}

// The two implementations, exposed so tests can hold them against each other.
uint32_t crc32c_extend_table(uint32_t crc, const void* data, size_t size);
uint32_t crc32c_extend_hw(uint32_t crc, const void* data, size_t size);  // only if crc32c_hw_available()
bool crc32c_hw_available();

}  // namespace sluice::spool
