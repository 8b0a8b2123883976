#pragma once
// Queue ids: 16 characters of [0-9A-Z] = 9 base36 digits of the millisecond, 2 of the shard,
// 5 of a per-millisecond counter. Byte order is time order; ids never repeat across shards and
// never go backwards, even when the clock does (the generator never uses a millisecond older than
// the last one it used, nor older than the floor it started from).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sluice::spool {

inline constexpr size_t kIdMsDigits = 9;
inline constexpr size_t kIdShardDigits = 2;
inline constexpr size_t kIdCounterDigits = 5;
inline constexpr uint32_t kIdMaxShards = 36 * 36;
inline constexpr uint64_t kIdCountersPerMs = 36ull * 36 * 36 * 36 * 36;

class IdGenerator {
 public:
  // floor_ms: the smallest millisecond an id may carry (see load_and_bump_floor).
  IdGenerator(uint32_t shard, uint64_t floor_ms);
  std::string next(uint64_t now_ms);
  uint64_t last_ms() const { return _last_ms; }

 private:
  uint32_t _shard;
  uint64_t _last_ms;
  uint64_t _counter = 0;
  bool _started = false;
};

// The millisecond encoded in a queue id, or nullopt if it is not one.
std::optional<uint64_t> id_ms(std::string_view id);

// Reads DIR/meta (and every DIR/shard-*/idfloor a running spool keeps up to date), returns a
// floor larger than every millisecond any earlier run may have used in an id, and no smaller
// than now_ms, and writes it back durably. Call once at start; pass
// max(result, RecoveredShard::max_id_ms + 1) to each shard's IdGenerator.
absl::StatusOr<uint64_t> load_and_bump_floor(const std::string& dir, uint64_t now_ms);

}  // namespace sluice::spool
