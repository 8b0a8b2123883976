// The shard's timer wheel: four levels of 64 slots (tick, 64 ticks, 4096 ticks, 262144 ticks per
// slot) plus an overflow list for deadlines beyond the top level (retries days away).
// It owns only list heads and occupancy bitmaps; nodes belong to their sessions and queues.
// It must never allocate, never call into its owner except through advance()'s callback, and
// never fire a timer before its deadline.
//
// A node in level L sits in the slot of bits [6L, 6L+6) of its deadline tick and moves down
// (cascades) when the wheel reaches the start of that slot's span; one occupancy bit per slot
// lets advance() jump straight to the next tick where anything happens, so a jump of days costs
// a few steps, not millions.
#include "engine/io/timer_wheel.h"

#include <bit>

namespace sluice::io {
namespace {

constexpr uint64_t kSlotMask = TimerWheel::kSlots - 1;

constexpr uint64_t level_span_ticks(unsigned level) {
  return uint64_t{1} << (TimerWheel::kSlotBits * level);
}

bool list_empty(const TimerLink& head) {
  return head.next == &head;
}

void make_empty(TimerLink& head) {
  head.prev = &head;
  head.next = &head;
}

}  // namespace

TimerWheel::TimerWheel(uint64_t start_ms, uint64_t tick_ms) : _tick_ms(tick_ms), _now_tick(start_ms / tick_ms) {
  SLUICE_ASSERT(tick_ms > 0);
  for (auto& level : _slots) {
    for (TimerLink& head : level) {
      make_empty(head);
    }
  }
  make_empty(_overflow);
  make_empty(_due);
  make_empty(_expiring);
}

TimerWheel::~TimerWheel() {
  // Leave nodes that outlive the wheel unscheduled rather than pointing into freed memory.
  const auto detach = [](TimerLink& head) {
    TimerLink* link = head.next;
    while (link != &head) {
      TimerLink* next = link->next;
      link->prev = nullptr;
      link->next = nullptr;
      link = next;
    }
    make_empty(head);
  };
  for (auto& level : _slots) {
    for (TimerLink& head : level) {
      detach(head);
    }
  }
  detach(_overflow);
  detach(_due);
  detach(_expiring);
}

uint64_t TimerWheel::ticks_ceil(uint64_t ms, uint64_t tick_ms) {
  return ms / tick_ms + (ms % tick_ms != 0 ? 1 : 0);
}

void TimerWheel::schedule(TimerNode& node, uint64_t deadline_ms) {
  cancel(node);
  node.deadline_tick = ticks_ceil(deadline_ms, _tick_ms);
  ++_size;
  if (node.deadline_tick <= _now_tick) {
    link_into(_due, node, kLevelDue, 0);
    return;
  }
  place(node);
}

bool TimerWheel::cancel(TimerNode& node) {
  if (!scheduled(node)) {
    return false;
  }
  unlink(node);
  // The recorded slot may already have been emptied (the node was on its way out in an expiry
  // batch); the bit follows the slot's real state either way.
  if (node.level < kLevels && list_empty(_slots[node.level][node.slot])) {
    _occupied[node.level] &= ~(uint64_t{1} << node.slot);
  }
  SLUICE_ASSERT(_size > 0);
  --_size;
  return true;
}

std::optional<uint64_t> TimerWheel::next_deadline_ms() const {
  if (!list_empty(_due)) {
    return _now_tick * _tick_ms;
  }
  const std::optional<uint64_t> event = next_event_tick();
  if (!event) {
    return std::nullopt;
  }
  return *event * _tick_ms;
}

void TimerWheel::place(TimerNode& node) {
  SLUICE_ASSERT(node.deadline_tick >= _now_tick);
  const uint64_t delta = node.deadline_tick - _now_tick;
  for (unsigned level = 0; level < kLevels; ++level) {
    if (delta < level_span_ticks(level + 1)) {
      const auto slot = static_cast<uint8_t>((node.deadline_tick >> (kSlotBits * level)) & kSlotMask);
      link_into(_slots[level][slot], node, static_cast<uint8_t>(level), slot);
      _occupied[level] |= uint64_t{1} << slot;
      return;
    }
  }
  link_into(_overflow, node, kLevelOverflow, 0);
}

void TimerWheel::link_into(TimerLink& head, TimerNode& node, uint8_t level, uint8_t slot) {
  node.level = level;
  node.slot = slot;
  node.prev = head.prev;
  node.next = &head;
  head.prev->next = &node;
  head.prev = &node;
}

void TimerWheel::unlink(TimerLink& link) {
  link.prev->next = link.next;
  link.next->prev = link.prev;
  link.prev = nullptr;
  link.next = nullptr;
}

void TimerWheel::splice_all(TimerLink& from, TimerLink& to) {
  if (list_empty(from)) {
    return;
  }
  TimerLink* first = from.next;
  TimerLink* last = from.prev;
  first->prev = to.prev;
  to.prev->next = first;
  last->next = &to;
  to.prev = last;
  make_empty(from);
}

// The first tick after _now_tick at which process_tick() has work: an occupied level-0 slot, the
// start of an occupied higher slot's span, or the top level wrapping while overflow waits.
std::optional<uint64_t> TimerWheel::next_event_tick() const {
  std::optional<uint64_t> best;
  const auto consider = [&best](uint64_t tick) {
    if (!best || tick < *best) {
      best = tick;
    }
  };
  for (unsigned level = 0; level < kLevels; ++level) {
    if (_occupied[level] == 0) {
      continue;
    }
    const unsigned shift = kSlotBits * level;
    // Spans of this level start at multiples of its span; the slot of span m is m mod 64.
    const uint64_t first_span = (_now_tick >> shift) + 1;
    const auto rotation = static_cast<int>(first_span & kSlotMask);
    const uint64_t rotated = std::rotr(_occupied[level], rotation);
    const auto spans_ahead = static_cast<uint64_t>(std::countr_zero(rotated));
    consider((first_span + spans_ahead) << shift);
  }
  if (!list_empty(_overflow)) {
    consider(((_now_tick / kWheelSpanTicks) + 1) * kWheelSpanTicks);
  }
  return best;
}

void TimerWheel::process_tick() {
  const uint64_t tick = _now_tick;
  // Cascade from level 1 up: a node cascaded from a higher level lands in a lower slot that is
  // still ahead, never in one already processed this tick.
  for (unsigned level = 1; level < kLevels; ++level) {
    const unsigned shift = kSlotBits * level;
    if ((tick & (level_span_ticks(level) - 1)) != 0) {
      break;
    }
    cascade(level, static_cast<unsigned>((tick >> shift) & kSlotMask));
  }
  if (tick % kWheelSpanTicks == 0 && !list_empty(_overflow)) {
    recascade_overflow();
  }
  const auto slot = static_cast<unsigned>(tick & kSlotMask);
  splice_all(_slots[0][slot], _expiring);
  _occupied[0] &= ~(uint64_t{1} << slot);
}

void TimerWheel::cascade(unsigned level, unsigned slot) {
  TimerLink& head = _slots[level][slot];
  _occupied[level] &= ~(uint64_t{1} << slot);
  if (list_empty(head)) {
    return;
  }
  TimerLink batch;
  make_empty(batch);
  splice_all(head, batch);
  while (!list_empty(batch)) {
    auto* node = static_cast<TimerNode*>(batch.next);
    unlink(*node);
    place(*node);
  }
}

void TimerWheel::recascade_overflow() {
  TimerLink* link = _overflow.next;
  while (link != &_overflow) {
    TimerLink* next = link->next;
    auto* node = static_cast<TimerNode*>(link);
    if (node->deadline_tick - _now_tick < kWheelSpanTicks) {
      unlink(*node);
      place(*node);
    }
    link = next;
  }
}

TimerNode* TimerWheel::pop_expiring() {
  if (list_empty(_expiring)) {
    return nullptr;
  }
  auto* node = static_cast<TimerNode*>(_expiring.next);
  unlink(*node);
  SLUICE_ASSERT(_size > 0);
  --_size;
  return node;
}

}  // namespace sluice::io
