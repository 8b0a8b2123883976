// CRC32C for spool records: hardware (SSE4.2 crc32 instruction) with a table fallback, chosen
// once at start-up. Owns nothing; must never give a different answer on different CPUs.
#include "spool/crc32c.h"

#include <nmmintrin.h>

#include <array>
#include <cstring>

namespace sluice::spool {
namespace {

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 1u) ? (crc >> 1) ^ kCastagnoliReflected : crc >> 1;
    }
    table[i] = crc;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kTable = make_table();

using ExtendFn = uint32_t (*)(uint32_t, const void*, size_t);

ExtendFn choose_implementation() {
  return crc32c_hw_available() ? &crc32c_extend_hw : &crc32c_extend_table;
}

const ExtendFn kExtend = choose_implementation();

}  // namespace

bool crc32c_hw_available() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}

uint32_t crc32c_extend_table(uint32_t crc, const void* data, size_t size) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) {
    crc = kTable[(crc ^ bytes[i]) & 0xFFu] ^ (crc >> 8);
  }
  return ~crc;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_extend_hw(uint32_t crc, const void* data, size_t size) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  uint64_t state = ~crc;
  while (size >= 8) {
    uint64_t word;
    std::memcpy(&word, bytes, sizeof(word));  // unaligned-safe; compiles to one load
    state = _mm_crc32_u64(state, word);
    bytes += 8;
    size -= 8;
  }
  auto state32 = static_cast<uint32_t>(state);
  while (size > 0) {
    state32 = _mm_crc32_u8(state32, *bytes);
    ++bytes;
    --size;
  }
  return ~state32;
}

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size) {
  // kExtend may still be null if called from another translation unit's static initialiser.
  if (kExtend == nullptr) {
    return choose_implementation()(crc, data, size);
  }
  return kExtend(crc, data, size);
}

}  // namespace sluice::spool
