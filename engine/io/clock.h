#pragma once
// The one clock (DESIGN.md section 6): monotonic time for timers, pacing and latencies, wall
// time for queue ids, arrival stamps and per-minute rate windows.
#include <time.h>

#include <cstdint>

namespace sluice::io {

inline uint64_t monotonic_us() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000 + static_cast<uint64_t>(now.tv_nsec) / 1'000;
}

inline uint64_t monotonic_ms() {
  return monotonic_us() / 1'000;
}

inline uint64_t wall_us() {
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000 + static_cast<uint64_t>(now.tv_nsec) / 1'000;
}

inline uint64_t wall_ms() {
  return wall_us() / 1'000;
}

}  // namespace sluice::io
