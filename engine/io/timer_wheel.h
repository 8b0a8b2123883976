// A hierarchical timer wheel, one per shard: command, idle and data timeouts and delivery retries.
//
// Timers are intrusive (a TimerNode lives inside its session or queue entry), so the wheel never
// allocates: its slots are arrays inside the object. The wheel calls no user callback of its own;
// advance() hands each expired node to the caller, who dispatches on TimerNode::cookie.
//
// Semantics: a timer scheduled for deadline_ms fires on the first advance(now_ms) with
// now_ms >= deadline_ms rounded up to a whole tick, so never early and at most one tick late.
// A deadline at or before the wheel's current tick fires on the next advance(), before any other,
// in scheduling order; the rest come in order of deadline tick (within one tick, unspecified).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "engine/io/assert.h"

namespace sluice::io {

inline constexpr uint64_t kTimerTickMsDefault = 10;

struct TimerLink {
  TimerLink* prev = nullptr;
  TimerLink* next = nullptr;
};

// Embed one per timer in the owning object. Owned by the wheel while scheduled: do not move,
// copy or destroy a scheduled node (cancel it first).
struct TimerNode : TimerLink {
  uint64_t deadline_tick = 0;
  // The owner's dispatch key for an expired node (e.g. session slot and generation).
  uint64_t cookie = 0;
  // Where the node is, so that cancel() is O(1) including the slot's occupancy bit.
  uint8_t level = 0;
  uint8_t slot = 0;
};

class TimerWheel {
 public:
  static constexpr unsigned kLevels = 4;
  static constexpr unsigned kSlotBits = 6;
  static constexpr unsigned kSlots = 1u << kSlotBits;  // 64: one occupancy bit per slot
  // Deadlines at least this many ticks ahead wait in the overflow list (46.6 h at 10 ms).
  static constexpr uint64_t kWheelSpanTicks = uint64_t{1} << (kSlotBits * kLevels);

  // `start_ms` is the current time on the clock the caller will pass to advance().
  explicit TimerWheel(uint64_t start_ms = 0, uint64_t tick_ms = kTimerTickMsDefault);
  TimerWheel(const TimerWheel&) = delete;
  TimerWheel& operator=(const TimerWheel&) = delete;
  // Leaves every node still scheduled unscheduled, so those nodes must outlive the wheel.
  ~TimerWheel();

  // Schedules `node` to fire at `deadline_ms`; a node already scheduled is moved (reschedule).
  void schedule(TimerNode& node, uint64_t deadline_ms);
  // O(1). Returns whether the node was scheduled. Safe on an unscheduled node, and from inside
  // an advance() callback on any node, including ones expiring in the same advance().
  bool cancel(TimerNode& node);
  static bool scheduled(const TimerNode& node) { return node.next != nullptr; }

  // Expires every node due at `now_ms`, calling on_expired(TimerNode&) for each after unlinking
  // it (so the callback may reschedule it). Returns how many expired. Time never goes back: an
  // older `now_ms` only delivers deadlines already due.
  template <typename OnExpired>
  size_t advance(uint64_t now_ms, OnExpired&& on_expired);

  // No later than the earliest expiry (it may be earlier: a cascade point), in ms; nullopt when
  // nothing is scheduled. For sizing the ring wait: waiting until then loses no deadline.
  std::optional<uint64_t> next_deadline_ms() const;

  size_t size() const { return _size; }
  uint64_t tick_ms() const { return _tick_ms; }
  // The time up to which the wheel has expired everything, in ms (a tick boundary).
  uint64_t now_ms() const { return _now_tick * _tick_ms; }

 private:
  // Node::level values beyond the wheel's own levels.
  static constexpr uint8_t kLevelOverflow = kLevels;
  static constexpr uint8_t kLevelDue = kLevels + 1;

  static uint64_t ticks_ceil(uint64_t ms, uint64_t tick_ms);
  void place(TimerNode& node);
  void link_into(TimerLink& head, TimerNode& node, uint8_t level, uint8_t slot);
  static void unlink(TimerLink& link);
  static void splice_all(TimerLink& from, TimerLink& to);
  std::optional<uint64_t> next_event_tick() const;
  // Moves every node that expires at _now_tick, after cascading, to _expiring.
  void process_tick();
  void cascade(unsigned level, unsigned slot);
  void recascade_overflow();
  // Pops the first node of _expiring, unlinked, or nullptr.
  TimerNode* pop_expiring();

  const uint64_t _tick_ms;
  uint64_t _now_tick;
  size_t _size = 0;
  bool _advancing = false;
  std::array<uint64_t, kLevels> _occupied{};
  std::array<std::array<TimerLink, kSlots>, kLevels> _slots;
  TimerLink _overflow;
  TimerLink _due;       // deadlines already passed when scheduled: fire on the next advance()
  TimerLink _expiring;  // the batch being handed to the caller
};

template <typename OnExpired>
size_t TimerWheel::advance(uint64_t now_ms, OnExpired&& on_expired) {
  SLUICE_ASSERT(!_advancing, "advance() is not reentrant");
  _advancing = true;
  size_t expired = 0;
  const auto drain = [&] {
    while (TimerNode* node = pop_expiring()) {
      ++expired;
      on_expired(*node);
    }
  };
  splice_all(_due, _expiring);
  drain();
  const uint64_t target_tick = now_ms / _tick_ms;
  while (true) {
    const std::optional<uint64_t> event = next_event_tick();
    if (!event || *event > target_tick) {
      break;
    }
    _now_tick = *event;
    process_tick();
    drain();
  }
  if (target_tick > _now_tick) {
    _now_tick = target_tick;
  }
  _advancing = false;
  return expired;
}

}  // namespace sluice::io
