// Tests for the SPSC ring: FIFO order, the full and empty bounds, wraparound, move-only items,
// item lifetimes, and two threads passing ten million sequence numbers.
#include "engine/io/spsc_ring.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

namespace sluice::io {
namespace {

TEST(SpscRingTest, StartsEmpty) {
  SpscRing<int> ring(8);
  EXPECT_EQ(ring.capacity(), 8u);
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.size_approx(), 0u);
  EXPECT_FALSE(ring.try_pop());
  int out = -1;
  EXPECT_FALSE(ring.try_pop(out));
  EXPECT_EQ(out, -1);
}

TEST(SpscRingTest, FifoOrder) {
  SpscRing<int> ring(8);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(ring.try_push(i));
  }
  EXPECT_EQ(ring.size_approx(), 5u);
  for (int i = 0; i < 5; ++i) {
    const std::optional<int> value = ring.try_pop();
    ASSERT_TRUE(value);
    EXPECT_EQ(*value, i);
  }
  EXPECT_TRUE(ring.empty());
}

TEST(SpscRingTest, FullBoundIsExactlyCapacity) {
  SpscRing<int> ring(4);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(ring.try_push(i)) << i;
  }
  EXPECT_FALSE(ring.try_push(99));
  EXPECT_EQ(ring.size_approx(), 4u);
  EXPECT_EQ(ring.try_pop(), 0);
  EXPECT_TRUE(ring.try_push(4));  // one slot freed, one push fits
  EXPECT_FALSE(ring.try_push(5));
  for (int expected = 1; expected <= 4; ++expected) {
    EXPECT_EQ(ring.try_pop(), expected);
  }
  EXPECT_FALSE(ring.try_pop());
}

TEST(SpscRingTest, CapacityOne) {
  SpscRing<int> ring(1);
  EXPECT_TRUE(ring.try_push(1));
  EXPECT_FALSE(ring.try_push(2));
  EXPECT_EQ(ring.try_pop(), 1);
  EXPECT_FALSE(ring.try_pop());
  EXPECT_TRUE(ring.try_push(3));
  EXPECT_EQ(ring.try_pop(), 3);
}

TEST(SpscRingTest, WrapsAroundManyTimes) {
  SpscRing<uint64_t> ring(8);
  uint64_t pushed = 0;
  uint64_t popped = 0;
  // Uneven batches so that the full and empty points land on every slot index.
  for (int round = 0; round < 1000; ++round) {
    const int pushes = 1 + round % 8;
    for (int i = 0; i < pushes; ++i) {
      if (ring.try_push(pushed)) {
        ++pushed;
      }
    }
    const int pops = 1 + (round * 5) % 8;
    for (int i = 0; i < pops; ++i) {
      if (const std::optional<uint64_t> value = ring.try_pop()) {
        ASSERT_EQ(*value, popped);
        ++popped;
      }
    }
    ASSERT_EQ(ring.size_approx(), pushed - popped);
    ASSERT_LE(pushed - popped, ring.capacity());
  }
  EXPECT_GT(pushed, 8u * 100);
}

TEST(SpscRingTest, FailedPushLeavesValueUntouched) {
  SpscRing<std::unique_ptr<int>> ring(1);
  ASSERT_TRUE(ring.try_push(std::make_unique<int>(1)));
  auto value = std::make_unique<int>(2);
  EXPECT_FALSE(ring.try_push(std::move(value)));
  ASSERT_NE(value, nullptr);  // not moved from: the caller still owns it
  EXPECT_EQ(*value, 2);
}

TEST(SpscRingTest, MoveOnlyItems) {
  SpscRing<std::unique_ptr<std::string>> ring(4);
  ASSERT_TRUE(ring.try_push(std::make_unique<std::string>("alpha")));
  ASSERT_TRUE(ring.try_emplace(new std::string("beta")));
  std::optional<std::unique_ptr<std::string>> first = ring.try_pop();
  ASSERT_TRUE(first && *first);
  EXPECT_EQ(**first, "alpha");
  std::unique_ptr<std::string> second;
  ASSERT_TRUE(ring.try_pop(second));
  EXPECT_EQ(*second, "beta");
}

// Counts live instances, to check that every pushed item is destroyed exactly once.
struct Tracked {
  static inline int live = 0;
  int value;
  explicit Tracked(int v) : value(v) { ++live; }
  Tracked(Tracked&& other) noexcept : value(other.value) { ++live; }
  Tracked& operator=(Tracked&& other) noexcept {
    value = other.value;
    return *this;
  }
  ~Tracked() { --live; }
};

TEST(SpscRingTest, ItemLifetimes) {
  Tracked::live = 0;
  {
    SpscRing<Tracked> ring(8);
    for (int i = 0; i < 6; ++i) {
      ASSERT_TRUE(ring.try_emplace(i));
    }
    EXPECT_EQ(Tracked::live, 6);
    {
      std::optional<Tracked> popped = ring.try_pop();
      ASSERT_TRUE(popped);
      EXPECT_EQ(popped->value, 0);
      EXPECT_EQ(Tracked::live, 6);  // 5 in the ring, 1 in `popped`
    }
    EXPECT_EQ(Tracked::live, 5);
    Tracked out(-1);
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out.value, 1);
    EXPECT_EQ(Tracked::live, 5);  // 4 in the ring, `out`
  }
  // The ring destroyed the four items still in it.
  EXPECT_EQ(Tracked::live, 0);
}

TEST(SpscRingTest, IndicesLiveOnSeparateCacheLines) {
  // The layout is the point of the design: check it did not collapse.
  EXPECT_GE(sizeof(SpscRing<int>), 3 * kFalseSharingBytes);
  EXPECT_EQ(alignof(SpscRing<int>), kFalseSharingBytes);
}

// Two threads, ten million sequence numbers through a small ring: every number arrives, once,
// in order. A small ring makes both the full and the empty paths hot.
TEST(SpscRingTest, TwoThreadStress) {
  constexpr uint64_t kCount = 10'000'000;
  SpscRing<uint64_t> ring(1024);
  std::thread producer([&] {
    for (uint64_t i = 0; i < kCount; ++i) {
      while (!ring.try_push(i)) {
        std::this_thread::yield();
      }
    }
  });
  uint64_t expected = 0;
  uint64_t mismatches = 0;
  while (expected < kCount) {
    if (const std::optional<uint64_t> value = ring.try_pop()) {
      if (*value != expected) {
        ++mismatches;
      }
      ++expected;
    } else {
      std::this_thread::yield();
    }
  }
  producer.join();
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(expected, kCount);
  EXPECT_FALSE(ring.try_pop());
  EXPECT_TRUE(ring.empty());
}

// The same with items that own memory, so that ASan / TSan see every hand-over of heap data.
TEST(SpscRingTest, TwoThreadStressOwningItems) {
  constexpr int kCount = 200'000;
  SpscRing<std::unique_ptr<int>> ring(64);
  std::thread producer([&] {
    for (int i = 0; i < kCount; ++i) {
      auto item = std::make_unique<int>(i);
      while (!ring.try_push(std::move(item))) {
        std::this_thread::yield();
      }
    }
  });
  int expected = 0;
  bool in_order = true;
  while (expected < kCount) {
    std::unique_ptr<int> item;
    if (ring.try_pop(item)) {
      in_order = in_order && item && *item == expected;
      ++expected;
    } else {
      std::this_thread::yield();
    }
  }
  producer.join();
  EXPECT_TRUE(in_order);
}

}  // namespace
}  // namespace sluice::io
