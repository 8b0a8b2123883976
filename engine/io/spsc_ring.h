// A bounded single-producer single-consumer ring: the only way shards pass work to each other
// (tickets to the destination's shard, results back to the segment's owner).
//
// One thread may push and one other thread may pop, concurrently; nothing else is safe. It never
// blocks and never grows: try_push() on a full ring returns false and the caller decides (keep
// the item for the next loop iteration, or answer the client with 421 / 451). Storage is
// allocated once, at construction; the waking of a sleeping consumer (MSG_RING doorbell) is the
// shard loop's business, not the ring's.
//
// Layout: the producer's index and its cached copy of the consumer's index share one cache line;
// the consumer's index and its cached copy of the producer's share another. Each side reads the
// other's line only when its cached copy says the ring looks full (producer) or empty (consumer),
// so in steady state the lines do not bounce between cores.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

#include "engine/io/assert.h"

namespace sluice::io {

// Two lines, not one: x86's adjacent-line prefetcher pulls cache lines in pairs, so 64-byte
// separation still lets the two sides disturb each other.
inline constexpr size_t kFalseSharingBytes = 128;

template <typename T>
class SpscRing {
 public:
  static_assert(std::is_nothrow_move_constructible_v<T> && std::is_nothrow_destructible_v<T>,
                "items move through the ring without exceptions");

  // `capacity` must be a power of two, at least 1.
  explicit SpscRing(size_t capacity) : _mask(capacity - 1), _slots(std::make_unique<Slot[]>(capacity)) {
    SLUICE_ASSERT(capacity > 0 && (capacity & (capacity - 1)) == 0, "capacity is a power of two");
  }
  SpscRing(const SpscRing&) = delete;
  SpscRing& operator=(const SpscRing&) = delete;

  ~SpscRing() {
    // Both threads are done by now: destroy what was pushed and never popped.
    const uint64_t tail = _producer.tail.load(std::memory_order_acquire);
    for (uint64_t head = _consumer.head.load(std::memory_order_acquire); head != tail; ++head) {
      item(head)->~T();
    }
  }

  // Producer side. Returns false, leaving `value` untouched, when the ring is full.
  bool try_push(T&& value) { return try_emplace(std::move(value)); }
  bool try_push(const T& value) { return try_emplace(value); }

  template <typename... Args>
  bool try_emplace(Args&&... args) {
    const uint64_t tail = _producer.tail.load(std::memory_order_relaxed);
    if (tail - _producer.head_cached > _mask) {
      // Looks full: learn how far the consumer has come. Acquire pairs with the consumer's
      // release of `head`, so its reads of the slot we are about to reuse are finished.
      _producer.head_cached = _consumer.head.load(std::memory_order_acquire);
      if (tail - _producer.head_cached > _mask) {
        return false;
      }
    }
    ::new (static_cast<void*>(_slots[tail & _mask].bytes)) T(std::forward<Args>(args)...);
    // Release publishes the constructed item with the new tail.
    _producer.tail.store(tail + 1, std::memory_order_release);
    return true;
  }

  // Consumer side. nullopt when the ring is empty.
  std::optional<T> try_pop() {
    std::optional<T> out;
    const uint64_t head = _consumer.head.load(std::memory_order_relaxed);
    if (!readable(head)) {
      return out;
    }
    T* slot = item(head);
    out.emplace(std::move(*slot));
    slot->~T();
    // Release hands the slot back only after the item was moved out and destroyed.
    _consumer.head.store(head + 1, std::memory_order_release);
    return out;
  }

  // Consumer side, for callers that keep a T around. Returns false when empty.
  bool try_pop(T& out) {
    const uint64_t head = _consumer.head.load(std::memory_order_relaxed);
    if (!readable(head)) {
      return false;
    }
    T* slot = item(head);
    out = std::move(*slot);
    slot->~T();
    _consumer.head.store(head + 1, std::memory_order_release);
    return true;
  }

  // Approximate when the other side is active: exact only from a thread that is the only one
  // touching the ring at that moment.
  size_t size_approx() const {
    // head first: the tail read after it can only be newer, so tail >= head.
    const uint64_t head = _consumer.head.load(std::memory_order_acquire);
    const uint64_t tail = _producer.tail.load(std::memory_order_acquire);
    const uint64_t used = tail - head;
    return used > capacity() ? capacity() : static_cast<size_t>(used);
  }
  bool empty() const { return size_approx() == 0; }
  size_t capacity() const { return static_cast<size_t>(_mask) + 1; }

 private:
  struct Slot {
    alignas(T) std::byte bytes[sizeof(T)];
  };

  // Whether the item at `head` has been published; refreshes the cached tail when needed.
  bool readable(uint64_t head) {
    if (head == _consumer.tail_cached) {
      // Acquire pairs with the producer's release of `tail`: the item is fully constructed.
      _consumer.tail_cached = _producer.tail.load(std::memory_order_acquire);
      if (head == _consumer.tail_cached) {
        return false;
      }
    }
    return true;
  }

  T* item(uint64_t index) { return std::launder(reinterpret_cast<T*>(_slots[index & _mask].bytes)); }

  // Indices count pushes and pops since construction; 64 bits never wrap in practice (2^64 items
  // at a billion per second is 584 years), so full is tail - head == capacity.
  struct alignas(kFalseSharingBytes) Producer {
    std::atomic<uint64_t> tail{0};
    uint64_t head_cached = 0;
  };
  struct alignas(kFalseSharingBytes) Consumer {
    std::atomic<uint64_t> head{0};
    uint64_t tail_cached = 0;
  };

  Producer _producer;
  Consumer _consumer;
  // Read by both sides, written by neither after construction: its own line.
  alignas(kFalseSharingBytes) const uint64_t _mask;
  const std::unique_ptr<Slot[]> _slots;
};

}  // namespace sluice::io
