// Microbenchmarks of the engine's cross-shard and timing structures (issue 9 section 4):
//   - io::SpscRing: the cost of a push and a pop on one thread (the instructions), and its
//     throughput between two threads (what the cache lines cost when they do move);
//   - io::Mailbox: request -> reply round trips between two shard threads, a window of
//     requests in flight, as a shard asks the owner of a segment or a destination;
//   - io::TimerWheel: re-arming a session's timeout among many armed ones (every command does
//     it), and expiring a burst of deadlines.
// Two-thread benchmarks spin (no doorbells, no sleeping): they measure the structures, not the
// wake-ups, which cost a MSG_RING each and are counted by the shard's metrics instead.
// Each checks after its loop that every item arrived exactly once (count and sum).
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "engine/io/mailbox.h"
#include "engine/io/spsc_ring.h"
#include "engine/io/timer_wheel.h"

namespace {

namespace io = sluice::io;

constexpr size_t kRingCapacity = 1024;

void BM_SpscRingPushPopOneThread(benchmark::State& state) {
  io::SpscRing<uint64_t> ring(kRingCapacity);
  uint64_t pushed = 0;
  uint64_t popped_sum = 0;
  for (auto _ : state) {
    if (!ring.try_push(pushed)) {
      state.SkipWithError("push into an empty ring failed");
      return;
    }
    ++pushed;
    uint64_t value = 0;
    if (!ring.try_pop(value)) {
      state.SkipWithError("pop after a push failed");
      return;
    }
    popped_sum += value;
  }
  if (popped_sum != pushed * (pushed - 1) / 2) {
    state.SkipWithError("the values popped are not the values pushed");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_SpscRingPushPopOneThread);

// The benchmark thread pushes 0, 1, 2, ...; a consumer thread pops and sums. Real time: the work
// is on two cores.
void BM_SpscRingTwoThreads(benchmark::State& state) {
  io::SpscRing<uint64_t> ring(kRingCapacity);
  std::atomic<bool> producer_done{false};
  uint64_t consumed = 0;
  uint64_t consumed_sum = 0;
  std::thread consumer([&] {
    uint64_t value = 0;
    for (;;) {
      if (ring.try_pop(value)) {
        ++consumed;
        consumed_sum += value;
      } else if (producer_done.load(std::memory_order_acquire)) {
        // Everything pushed before the flag was set is visible now: take it, then stop.
        while (ring.try_pop(value)) {
          ++consumed;
          consumed_sum += value;
        }
        return;
      }
    }
  });
  uint64_t pushed = 0;
  for (auto _ : state) {
    while (!ring.try_push(pushed)) {
    }
    ++pushed;
  }
  producer_done.store(true, std::memory_order_release);
  consumer.join();
  if (consumed != pushed || consumed_sum != pushed * (pushed - 1) / 2) {
    state.SkipWithError("the consumer did not get every value exactly once");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_SpscRingTwoThreads)->UseRealTime();

struct Ask {
  uint64_t sequence;
  uint64_t operand;
};
struct Answer {
  uint64_t sequence;
  uint64_t result;
};

// Shard 0 (the benchmark thread) keeps up to `window` requests in flight toward shard 1 (a
// thread that answers each with operand + 1); an iteration is one reply received.
void BM_MailboxRoundTrip(benchmark::State& state) {
  const size_t window = static_cast<size_t>(state.range(0));
  io::Mailbox<Ask, Answer> mailbox(2, window, /*doorbell_user_data=*/0);
  std::atomic<bool> stop{false};
  std::thread target([&] {
    while (!stop.load(std::memory_order_acquire)) {
      mailbox.drain_requests(1, [&](uint32_t source, const Ask& ask) {
        mailbox.reply(1, source, Answer{ask.sequence, ask.operand + 1});
      });
    }
  });
  uint64_t next_sequence = 0;
  uint64_t replies = 0;
  uint64_t result_sum = 0;
  bool in_order = true;
  for (auto _ : state) {
    // Top up the window, then wait for at least one reply.
    while (mailbox.try_request(0, 1, Ask{next_sequence, next_sequence})) {
      ++next_sequence;
    }
    size_t got = 0;
    while (got == 0) {
      got = mailbox.drain_replies(0, [&](uint32_t, const Answer& answer) {
        in_order = in_order && answer.sequence == replies;
        ++replies;
        result_sum += answer.result;
      });
    }
  }
  // Collect the replies still in flight, so that every request is accounted for.
  while (mailbox.credits(0, 1) != window) {
    mailbox.drain_replies(0, [&](uint32_t, const Answer& answer) {
      in_order = in_order && answer.sequence == replies;
      ++replies;
      result_sum += answer.result;
    });
  }
  stop.store(true, std::memory_order_release);
  target.join();
  // Requests 0..n-1 answered with operand + 1: the sum of 1..n.
  if (replies != next_sequence || result_sum != next_sequence * (next_sequence + 1) / 2 || !in_order) {
    state.SkipWithError("a request was not answered exactly once, or out of order");
  }
  state.SetItemsProcessed(static_cast<int64_t>(replies));  // round trips
}
BENCHMARK(BM_MailboxRoundTrip)->Arg(1)->Arg(64)->UseRealTime();

// `armed` session timeouts (300 s ahead) in the wheel; each iteration re-arms one of them, as a
// session does on every command, and advances the clock by a millisecond.
void BM_TimerWheelRearm(benchmark::State& state) {
  const size_t armed = static_cast<size_t>(state.range(0));
  constexpr uint64_t kTimeoutMs = 300'000;
  io::TimerWheel wheel(0);
  std::vector<io::TimerNode> nodes(armed);
  uint64_t now_ms = 0;
  for (size_t i = 0; i < armed; ++i) {
    nodes[i].cookie = i;
    wheel.schedule(nodes[i], kTimeoutMs + i % 1000);
  }
  size_t expired = 0;
  size_t next = 0;
  for (auto _ : state) {
    ++now_ms;
    wheel.schedule(nodes[next], now_ms + kTimeoutMs);
    next = next + 1 == armed ? 0 : next + 1;
    expired += wheel.advance(now_ms, [](io::TimerNode&) {});
  }
  // Every node is re-armed 300 s ahead well before its deadline, unless the run was longer than
  // 300 s of simulated time per node: then some did fire, which is also correct.
  if (wheel.size() + expired != armed) {
    state.SkipWithError("the wheel lost or duplicated a timer");
  }
  for (auto& node : nodes) {
    wheel.cancel(node);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_TimerWheelRearm)->Arg(1000)->Arg(100000);

// `count` deadlines spread over the next second, then the wheel advanced through it one tick at a
// time: schedule + expire, per timer.
void BM_TimerWheelScheduleExpire(benchmark::State& state) {
  const size_t count = static_cast<size_t>(state.range(0));
  std::vector<io::TimerNode> nodes(count);
  uint64_t start_ms = 0;
  for (auto _ : state) {
    io::TimerWheel wheel(start_ms);
    for (size_t i = 0; i < count; ++i) {
      nodes[i].cookie = i;
      wheel.schedule(nodes[i], start_ms + 1 + (i * 7919) % 1000);
    }
    size_t expired = 0;
    uint64_t cookie_sum = 0;
    for (uint64_t now = start_ms; now <= start_ms + 1000 + wheel.tick_ms(); now += wheel.tick_ms()) {
      expired += wheel.advance(now, [&](io::TimerNode& node) { cookie_sum += node.cookie; });
    }
    if (expired != count || cookie_sum != count * (count - 1) / 2 || wheel.size() != 0) {
      state.SkipWithError("not every timer expired exactly once");
      return;
    }
    start_ms += 2000;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * count));
}
BENCHMARK(BM_TimerWheelScheduleExpire)->Arg(10000);

}  // namespace
