// Tests for the hierarchical timer wheel: exact firing tick, order, cancel and reschedule,
// cascades at every level boundary, overflow (days ahead), large jumps, callbacks that change
// the wheel, no allocation, and a randomized comparison with a std::multimap model.
#include "engine/io/timer_wheel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <new>
#include <random>
#include <vector>

// Counts heap allocations so that a test can prove the wheel makes none.
namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

// GCC sees the inlined new/delete pair as malloc vs delete; here they are malloc/free on purpose.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) {
    return p;
  }
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace sluice::io {
namespace {

constexpr uint64_t kTick = kTimerTickMsDefault;
constexpr uint64_t kSecondMs = 1000;
constexpr uint64_t kMinuteMs = 60 * kSecondMs;
constexpr uint64_t kHourMs = 60 * kMinuteMs;
constexpr uint64_t kDayMs = 24 * kHourMs;

// Advances and returns the cookies of the expired nodes, in the order the wheel gave them.
std::vector<uint64_t> advance_to(TimerWheel& wheel, uint64_t now_ms) {
  std::vector<uint64_t> fired;
  wheel.advance(now_ms, [&](TimerNode& node) {
    EXPECT_FALSE(TimerWheel::scheduled(node));
    fired.push_back(node.cookie);
  });
  return fired;
}

TEST(TimerWheelTest, EmptyWheel) {
  TimerWheel wheel(1000);
  EXPECT_EQ(wheel.size(), 0u);
  EXPECT_FALSE(wheel.next_deadline_ms());
  EXPECT_TRUE(advance_to(wheel, 5000).empty());
  EXPECT_EQ(wheel.now_ms(), 5000u);
}

TEST(TimerWheelTest, FiresAtDeadlineNeverBefore) {
  TimerWheel wheel(0);
  TimerNode node;
  node.cookie = 7;
  wheel.schedule(node, 100);
  EXPECT_TRUE(TimerWheel::scheduled(node));
  EXPECT_EQ(wheel.size(), 1u);
  EXPECT_TRUE(advance_to(wheel, 99).empty());
  EXPECT_EQ(advance_to(wheel, 100), std::vector<uint64_t>{7});
  EXPECT_FALSE(TimerWheel::scheduled(node));
  EXPECT_EQ(wheel.size(), 0u);
  EXPECT_TRUE(advance_to(wheel, 1000).empty());
}

TEST(TimerWheelTest, DeadlineBetweenTicksRoundsUp) {
  TimerWheel wheel(0);
  TimerNode node;
  wheel.schedule(node, 105);
  EXPECT_TRUE(advance_to(wheel, 105).empty());  // would be early by the tick's fraction
  EXPECT_TRUE(advance_to(wheel, 109).empty());
  EXPECT_EQ(advance_to(wheel, 110).size(), 1u);
}

TEST(TimerWheelTest, PastDeadlineFiresOnNextAdvance) {
  TimerWheel wheel(10 * kSecondMs);
  TimerNode past;
  TimerNode now;
  past.cookie = 1;
  now.cookie = 2;
  wheel.schedule(past, 5 * kSecondMs);
  wheel.schedule(now, 10 * kSecondMs);
  EXPECT_EQ(wheel.next_deadline_ms(), 10 * kSecondMs);
  EXPECT_EQ(advance_to(wheel, 10 * kSecondMs), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(wheel.size(), 0u);
}

TEST(TimerWheelTest, ClockGoingBackDoesNotMoveTheWheel) {
  TimerWheel wheel(kSecondMs);
  TimerNode node;
  wheel.schedule(node, 2 * kSecondMs);
  EXPECT_TRUE(advance_to(wheel, 500).empty());
  EXPECT_EQ(wheel.now_ms(), kSecondMs);
  EXPECT_EQ(advance_to(wheel, 2 * kSecondMs).size(), 1u);
}

TEST(TimerWheelTest, OrderingByDeadline) {
  TimerWheel wheel(0);
  std::mt19937_64 rng(1);
  std::vector<TimerNode> nodes(500);
  std::vector<uint64_t> deadline(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    deadline[i] = rng() % (2 * kHourMs);
    nodes[i].cookie = i;
    wheel.schedule(nodes[i], deadline[i]);
  }
  const std::vector<uint64_t> fired = advance_to(wheel, 3 * kHourMs);
  ASSERT_EQ(fired.size(), nodes.size());
  for (size_t i = 1; i < fired.size(); ++i) {
    const uint64_t previous_tick = (deadline[fired[i - 1]] + kTick - 1) / kTick;
    EXPECT_LE(previous_tick, (deadline[fired[i]] + kTick - 1) / kTick) << "position " << i;
  }
}

TEST(TimerWheelTest, Cancel) {
  TimerWheel wheel(0);
  TimerNode a;
  TimerNode b;
  a.cookie = 1;
  b.cookie = 2;
  wheel.schedule(a, 100);
  wheel.schedule(b, 100);
  EXPECT_TRUE(wheel.cancel(a));
  EXPECT_FALSE(TimerWheel::scheduled(a));
  EXPECT_FALSE(wheel.cancel(a));
  EXPECT_EQ(wheel.size(), 1u);
  EXPECT_EQ(advance_to(wheel, 200), std::vector<uint64_t>{2});
  EXPECT_FALSE(wheel.cancel(b));  // already fired
  EXPECT_FALSE(wheel.next_deadline_ms());
}

TEST(TimerWheelTest, CancelLastNodeOfSlotClearsNextDeadline) {
  TimerWheel wheel(0);
  TimerNode near;
  TimerNode far;
  wheel.schedule(near, 50);
  wheel.schedule(far, 3 * kDayMs);
  EXPECT_EQ(wheel.next_deadline_ms(), 50u);
  wheel.cancel(near);
  ASSERT_TRUE(wheel.next_deadline_ms());
  EXPECT_GT(*wheel.next_deadline_ms(), 50u);
  wheel.cancel(far);
  EXPECT_FALSE(wheel.next_deadline_ms());
}

TEST(TimerWheelTest, Reschedule) {
  TimerWheel wheel(0);
  TimerNode node;
  node.cookie = 3;
  wheel.schedule(node, 10 * kSecondMs);
  wheel.schedule(node, 50);  // earlier
  EXPECT_EQ(wheel.size(), 1u);
  EXPECT_EQ(advance_to(wheel, 50), std::vector<uint64_t>{3});
  wheel.schedule(node, 1000);
  wheel.schedule(node, 5 * kDayMs);  // later, into overflow
  EXPECT_EQ(wheel.size(), 1u);
  EXPECT_TRUE(advance_to(wheel, 4 * kDayMs).empty());
  EXPECT_EQ(advance_to(wheel, 5 * kDayMs), std::vector<uint64_t>{3});
}

// A timer placed at every level boundary, from an unaligned start, fires exactly on its tick:
// not one tick early, and on the tick itself. Approached both by one jump and by a final step.
TEST(TimerWheelTest, CascadeAcrossLevelBoundaries) {
  const uint64_t span = TimerWheel::kWheelSpanTicks;
  const uint64_t offsets[] = {1,    2,    63,     64,     65,     127,      128,  4095,     4096,
                              4097, 8191, 262143, 262144, 262145, span - 1, span, span + 1, 3 * span + 12345};
  for (const uint64_t start_tick : {uint64_t{0}, uint64_t{12345}, uint64_t{4095}, span - 3}) {
    for (const uint64_t offset : offsets) {
      TimerWheel wheel(start_tick * kTick);
      TimerNode node;
      wheel.schedule(node, (start_tick + offset) * kTick);
      EXPECT_TRUE(advance_to(wheel, (start_tick + offset - 1) * kTick).empty()) << start_tick << "+" << offset;
      EXPECT_EQ(advance_to(wheel, (start_tick + offset) * kTick).size(), 1u) << start_tick << "+" << offset;
    }
  }
}

TEST(TimerWheelTest, TickByTickThroughTwoLevelTwoSpans) {
  // Step through 2 * 4096 + 100 ticks one at a time, with a timer on every 37th tick.
  TimerWheel wheel(0);
  constexpr uint64_t kTicks = 2 * 4096 + 100;
  std::vector<TimerNode> nodes(kTicks / 37 + 1);
  for (size_t i = 0; i < nodes.size(); ++i) {
    nodes[i].cookie = (i + 1) * 37;
    wheel.schedule(nodes[i], nodes[i].cookie * kTick);
  }
  size_t fired_total = 0;
  for (uint64_t tick = 1; tick <= kTicks + 37; ++tick) {
    for (const uint64_t cookie : advance_to(wheel, tick * kTick)) {
      EXPECT_EQ(cookie, tick);
      ++fired_total;
    }
  }
  EXPECT_EQ(fired_total, nodes.size());
}

TEST(TimerWheelTest, FarDeadlinesForRetries) {
  TimerWheel wheel(1'000'000);
  const uint64_t start = 1'000'000;
  const uint64_t deadlines[] = {5 * kMinuteMs, kHourMs, 2 * kDayMs, 5 * kDayMs, 30 * kDayMs, 365 * kDayMs};
  std::vector<TimerNode> nodes(std::size(deadlines));
  for (size_t i = 0; i < nodes.size(); ++i) {
    nodes[i].cookie = i;
    wheel.schedule(nodes[i], start + deadlines[i]);
  }
  // Advance minute by minute for 6 days: each fires at its minute, not before.
  std::vector<uint64_t> fired;
  for (uint64_t t = start; t <= start + 6 * kDayMs; t += kMinuteMs) {
    for (const uint64_t cookie : advance_to(wheel, t)) {
      EXPECT_GE(t, start + deadlines[cookie]);
      EXPECT_LT(t, start + deadlines[cookie] + kMinuteMs);
      fired.push_back(cookie);
    }
  }
  EXPECT_EQ(fired, (std::vector<uint64_t>{0, 1, 2, 3}));
  // Then one jump over a month and one over a year.
  EXPECT_TRUE(advance_to(wheel, start + 30 * kDayMs - 1).empty());
  EXPECT_EQ(advance_to(wheel, start + 30 * kDayMs), std::vector<uint64_t>{4});
  EXPECT_EQ(advance_to(wheel, start + 400 * kDayMs), std::vector<uint64_t>{5});
  EXPECT_EQ(wheel.size(), 0u);
}

TEST(TimerWheelTest, FollowingNextDeadlineNeverMissesAndWakesRarely) {
  // The shard loop sleeps until next_deadline_ms(); doing that must land on each expiry exactly.
  TimerWheel wheel(0);
  const uint64_t deadlines[] = {30, 700, 45 * kSecondMs, 20 * kMinuteMs, 3 * kDayMs};
  std::vector<TimerNode> nodes(std::size(deadlines));
  for (size_t i = 0; i < nodes.size(); ++i) {
    nodes[i].cookie = i;
    wheel.schedule(nodes[i], deadlines[i]);
  }
  size_t wakeups = 0;
  size_t fired = 0;
  while (const std::optional<uint64_t> next = wheel.next_deadline_ms()) {
    ASSERT_GT(*next, wheel.now_ms());
    ++wakeups;
    for (const uint64_t cookie : advance_to(wheel, *next)) {
      EXPECT_EQ(*next, deadlines[cookie]) << "fired late or early";
      ++fired;
    }
    ASSERT_LT(wakeups, 1000u);
  }
  EXPECT_EQ(fired, nodes.size());
  // Cascade points cost a few extra wakeups per level, not one per tick.
  EXPECT_LT(wakeups, 60u);
}

TEST(TimerWheelTest, ManyTimers) {
  TimerWheel wheel(0);
  std::mt19937_64 rng(2);
  constexpr size_t kCount = 100'000;
  std::vector<TimerNode> nodes(kCount);
  std::vector<uint64_t> deadline(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    deadline[i] = rng() % kHourMs;
    nodes[i].cookie = i;
    wheel.schedule(nodes[i], deadline[i]);
  }
  EXPECT_EQ(wheel.size(), kCount);
  std::vector<int> fired_count(kCount, 0);
  uint64_t now = 0;
  while (wheel.size() > 0) {
    now += 1 + rng() % 2000;
    wheel.advance(now, [&](TimerNode& node) {
      ++fired_count[node.cookie];
      EXPECT_LE(deadline[node.cookie], now);
    });
  }
  for (size_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(fired_count[i], 1) << i;
  }
}

TEST(TimerWheelTest, OneLargeJump) {
  TimerWheel wheel(0);
  std::mt19937_64 rng(3);
  std::vector<TimerNode> nodes(2000);
  for (size_t i = 0; i < nodes.size(); ++i) {
    nodes[i].cookie = i;
    wheel.schedule(nodes[i], rng() % (10 * kDayMs));
  }
  EXPECT_EQ(advance_to(wheel, 10 * kDayMs).size(), nodes.size());
  EXPECT_EQ(wheel.size(), 0u);
}

TEST(TimerWheelTest, CallbackMayRescheduleAndCancel) {
  TimerWheel wheel(0);
  TimerNode periodic;
  TimerNode victim;  // expires in the same advance, but is cancelled first
  TimerNode later;
  periodic.cookie = 1;
  victim.cookie = 2;
  later.cookie = 3;
  wheel.schedule(periodic, 100);
  wheel.schedule(victim, 100);
  wheel.schedule(later, 150);
  std::vector<uint64_t> fired;
  wheel.advance(1000, [&](TimerNode& node) {
    fired.push_back(node.cookie);
    if (node.cookie == 1) {
      wheel.cancel(victim);
      wheel.cancel(later);
      if (fired.size() < 4) {
        wheel.schedule(node, wheel.now_ms() + 200);  // again within this advance
      }
    }
  });
  EXPECT_EQ(fired, (std::vector<uint64_t>{1, 1, 1, 1}));
  EXPECT_EQ(wheel.size(), 0u);
  EXPECT_FALSE(TimerWheel::scheduled(victim));
}

TEST(TimerWheelTest, CallbackSchedulingIntoThePastWaitsForNextAdvance) {
  TimerWheel wheel(0);
  TimerNode node;
  size_t calls = 0;
  const auto rearm_now = [&](TimerNode& expired) {
    ++calls;
    wheel.schedule(expired, 0);
  };
  wheel.schedule(node, 10);
  EXPECT_EQ(wheel.advance(100, rearm_now), 1u);
  EXPECT_EQ(calls, 1u);
  EXPECT_EQ(wheel.advance(100, rearm_now), 1u);
  EXPECT_EQ(calls, 2u);
  wheel.cancel(node);
}

TEST(TimerWheelTest, CustomTick) {
  TimerWheel wheel(0, 1);
  EXPECT_EQ(wheel.tick_ms(), 1u);
  TimerNode node;
  wheel.schedule(node, 3);
  EXPECT_TRUE(advance_to(wheel, 2).empty());
  EXPECT_EQ(advance_to(wheel, 3).size(), 1u);
}

TEST(TimerWheelTest, DestructorDetachesNodes) {
  TimerNode node;
  {
    TimerWheel wheel(0);
    wheel.schedule(node, 5 * kDayMs);
  }
  EXPECT_FALSE(TimerWheel::scheduled(node));
}

TEST(TimerWheelTest, NoAllocationAfterConstruction) {
  std::vector<TimerNode> nodes(1000);
  std::mt19937_64 rng(4);
  std::vector<uint64_t> deadlines(nodes.size());
  for (auto& d : deadlines) {
    d = rng() % (7 * kDayMs);
  }
  TimerWheel wheel(0);
  size_t fired = 0;
  const uint64_t before = g_allocations.load();
  for (size_t i = 0; i < nodes.size(); ++i) {
    wheel.schedule(nodes[i], deadlines[i]);
  }
  for (size_t i = 0; i < nodes.size(); i += 3) {
    wheel.cancel(nodes[i]);
  }
  for (uint64_t t = 0; t <= 8 * kDayMs; t += kHourMs) {
    fired += wheel.advance(t, [](TimerNode&) {});
  }
  const uint64_t after = g_allocations.load();
  EXPECT_EQ(after, before);
  EXPECT_EQ(fired, nodes.size() - (nodes.size() + 2) / 3);
}

// The wheel against a model that knows nothing of levels: a multimap from deadline tick to id.
TEST(TimerWheelTest, RandomizedAgainstMultimapModel) {
  for (const uint64_t seed : {11u, 12u, 13u, 14u}) {
    std::mt19937_64 rng(seed);
    const uint64_t start = rng() % (100 * kDayMs);
    constexpr size_t kNodes = 3000;
    std::vector<TimerNode> nodes(kNodes);  // declared first: outlives the wheel
    TimerWheel wheel(start);
    std::vector<uint64_t> deadline_ms(kNodes);
    std::multimap<uint64_t, size_t> model;
    std::vector<std::multimap<uint64_t, size_t>::iterator> where(kNodes, model.end());
    for (size_t i = 0; i < kNodes; ++i) {
      nodes[i].cookie = i;
    }
    const auto model_erase = [&](size_t id) {
      if (where[id] != model.end()) {
        model.erase(where[id]);
        where[id] = model.end();
      }
    };
    uint64_t now = start;
    for (int op = 0; op < 200'000; ++op) {
      const size_t id = rng() % kNodes;
      const unsigned choice = rng() % 100;
      if (choice < 45) {
        // Schedule or reschedule: near, mid, far, very far, or already past.
        static constexpr uint64_t kRanges[] = {100, 5 * kSecondMs, 2 * kHourMs, 10 * kDayMs};
        uint64_t deadline = now + rng() % kRanges[rng() % std::size(kRanges)];
        if (rng() % 20 == 0) {
          deadline = now - std::min<uint64_t>(now, rng() % 1000);
        }
        wheel.schedule(nodes[id], deadline);
        model_erase(id);
        deadline_ms[id] = deadline;
        where[id] = model.emplace((deadline + kTick - 1) / kTick, id);
      } else if (choice < 60) {
        EXPECT_EQ(wheel.cancel(nodes[id]), where[id] != model.end());
        model_erase(id);
      } else {
        const unsigned jump = rng() % 100;
        now += jump < 90 ? rng() % 200 : jump < 98 ? rng() % kHourMs : rng() % (3 * kDayMs);
        std::vector<size_t> expected;
        while (!model.empty() && model.begin()->first <= now / kTick) {
          expected.push_back(model.begin()->second);
          where[model.begin()->second] = model.end();
          model.erase(model.begin());
        }
        std::vector<size_t> fired;
        // Nodes that were already due when scheduled come first in scheduling order; the rest
        // in deadline order.
        const uint64_t wheel_tick_before = wheel.now_ms() / kTick;
        uint64_t last_tick = wheel_tick_before;
        wheel.advance(now, [&](TimerNode& node) {
          fired.push_back(node.cookie);
          EXPECT_LE(deadline_ms[node.cookie], now) << "fired early";
          const uint64_t tick = (deadline_ms[node.cookie] + kTick - 1) / kTick;
          if (tick > wheel_tick_before) {
            EXPECT_GE(tick, last_tick) << "out of order";
            last_tick = tick;
          } else {
            EXPECT_EQ(last_tick, wheel_tick_before) << "a past-due node after a wheel node";
          }
        });
        std::sort(expected.begin(), expected.end());
        std::sort(fired.begin(), fired.end());
        ASSERT_EQ(fired, expected) << "seed " << seed << " op " << op;
      }
      ASSERT_EQ(wheel.size(), model.size());
      if (const std::optional<uint64_t> next = wheel.next_deadline_ms()) {
        ASSERT_FALSE(model.empty());
        // A node scheduled in the past expires "now", at the wheel's current time.
        const uint64_t true_next = std::max(model.begin()->first * kTick, wheel.now_ms());
        ASSERT_LE(*next, true_next) << "next deadline later than an expiry";
        ASSERT_GE(*next, wheel.now_ms());
      } else {
        ASSERT_TRUE(model.empty());
      }
    }
  }
}

}  // namespace
}  // namespace sluice::io
