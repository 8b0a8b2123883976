// Tests for the cross-shard mailbox: per-pair order, the credit bound that keeps reply rings from
// filling, one doorbell per target per iteration and only to a sleeping target (real io_urings,
// real MSG_RING), and shards on their own threads trading requests and replies while each sleeps
// with a long wait whenever it has nothing to do, so that a lost wake-up is a hang the watchdog
// turns into a failure.
#include "engine/io/mailbox.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/io/ring.h"

namespace sluice::io {
namespace {

constexpr uint64_t kDoorbell = 0xD00Dull;
constexpr uint64_t kLongWaitUs = 60'000'000;  // a missed doorbell shows up as a hang, not a flake

struct Request {
  uint32_t source = 0;
  uint32_t target = 0;
  uint64_t sequence = 0;
};
struct Reply {
  uint64_t sequence = 0;
  uint64_t answer = 0;
};
using TestMailbox = Mailbox<Request, Reply>;

std::unique_ptr<Ring> make_ring() {
  auto created = Ring::create_for_this_thread(RingOptions{64, 256});
  SLUICE_ASSERT(created.ok());
  return std::unique_ptr<Ring>(*created);
}

// Doorbell CQEs on `ring` now (a short wait: DEFER_TASKRUN shows them only in a wait).
int reap_doorbells(Ring& ring) {
  int doorbells = 0;
  for (int round = 0; round < 3; ++round) {
    ring.submit_wait_and_reap(1000, [&](const io_uring_cqe& cqe) {
      if (cqe.user_data == kDoorbell) {
        ++doorbells;
      }
    });
  }
  return doorbells;
}

TEST(MailboxTest, RequestsAndRepliesKeepOrderPerPair) {
  TestMailbox mailbox(3, 8, kDoorbell);
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_TRUE(mailbox.try_request(0, 2, Request{0, 2, i}));
    ASSERT_TRUE(mailbox.try_request(1, 2, Request{1, 2, 100 + i}));
  }
  EXPECT_TRUE(mailbox.has_incoming(2));
  EXPECT_FALSE(mailbox.has_incoming(0));
  std::vector<uint64_t> from[3];
  const size_t drained = mailbox.drain_requests(2, [&](uint32_t source, const Request& request) {
    EXPECT_EQ(request.source, source);
    from[source].push_back(request.sequence);
    mailbox.reply(2, source, Reply{request.sequence, request.sequence * 2});
  });
  EXPECT_EQ(drained, 10u);
  EXPECT_EQ(from[0], (std::vector<uint64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(from[1], (std::vector<uint64_t>{100, 101, 102, 103, 104}));
  EXPECT_FALSE(mailbox.has_incoming(2));
  EXPECT_EQ(mailbox.credits(0, 2), 3u);
  std::vector<uint64_t> answers;
  EXPECT_EQ(mailbox.drain_replies(0,
                                  [&](uint32_t target, const Reply& reply) {
                                    EXPECT_EQ(target, 2u);
                                    answers.push_back(reply.answer);
                                  }),
            5u);
  EXPECT_EQ(answers, (std::vector<uint64_t>{0, 2, 4, 6, 8}));
  EXPECT_EQ(mailbox.credits(0, 2), 8u);
  EXPECT_EQ(mailbox.credits(1, 2), 3u) << "shard 1 has not read its replies yet";
}

// The flow control: a source runs out of credits at exactly `capacity` outstanding requests,
// whether they sit in the request ring or have been taken and not yet answered; a credit comes
// back only when the reply is consumed. So the reply ring never holds more than `capacity`.
TEST(MailboxTest, CreditsBoundOutstandingRequestsSoAReplyAlwaysHasRoom) {
  constexpr size_t kCapacity = 4;
  TestMailbox mailbox(2, kCapacity, kDoorbell);
  for (uint64_t i = 0; i < kCapacity; ++i) {
    ASSERT_TRUE(mailbox.try_request(0, 1, Request{0, 1, i}));
  }
  EXPECT_FALSE(mailbox.try_request(0, 1, Request{0, 1, 99})) << "no credit left";
  EXPECT_EQ(mailbox.credits(0, 1), 0u);
  // The other direction has its own credits.
  EXPECT_TRUE(mailbox.try_request(1, 0, Request{1, 0, 7}));

  // Taken but not yet answered: still no credit (the reply will need its room).
  std::vector<Request> taken;
  mailbox.drain_requests(1, [&](uint32_t, const Request& request) { taken.push_back(request); });
  ASSERT_EQ(taken.size(), kCapacity);
  EXPECT_FALSE(mailbox.try_request(0, 1, Request{0, 1, 99}));
  // Answered but the reply not yet consumed: still none.
  for (const Request& request : taken) {
    mailbox.reply(1, 0, Reply{request.sequence, 0});
  }
  EXPECT_FALSE(mailbox.try_request(0, 1, Request{0, 1, 99}));
  // Consumed: all credits back, and a full round fits again with every reply.
  EXPECT_EQ(mailbox.drain_replies(0, [](uint32_t, const Reply&) {}), kCapacity);
  EXPECT_EQ(mailbox.credits(0, 1), kCapacity);
  for (int round = 0; round < 3; ++round) {
    for (uint64_t i = 0; i < kCapacity; ++i) {
      ASSERT_TRUE(mailbox.try_request(0, 1, Request{0, 1, i}));
    }
    EXPECT_EQ(mailbox.drain_requests(1,
                                     [&](uint32_t source, const Request& request) {
                                       mailbox.reply(1, source, Reply{request.sequence, 0});
                                     }),
              kCapacity);
    EXPECT_EQ(mailbox.drain_replies(0, [](uint32_t, const Reply&) {}), kCapacity);
  }
}

TEST(MailboxDeathTest, AReplyWithoutARequestIsFatal) {
  TestMailbox mailbox(2, 2, kDoorbell);
  mailbox.reply(1, 0, Reply{});
  mailbox.reply(1, 0, Reply{});
  EXPECT_DEATH(mailbox.reply(1, 0, Reply{}), "a reply ring is full");
  EXPECT_DEATH(mailbox.drain_replies(0, [](uint32_t, const Reply&) {}), "a reply to no outstanding request");
}

// Several pushes to one target in one iteration ring it once; an awake target is not rung; a
// doorbell really arrives on the target's ring.
TEST(MailboxTest, OneDoorbellPerSleepingTargetPerIteration) {
  constexpr uint32_t kShards = 3;
  TestMailbox mailbox(kShards, 16, kDoorbell);
  std::vector<std::unique_ptr<Ring>> rings;
  for (uint32_t i = 0; i < kShards; ++i) {
    rings.push_back(make_ring());
    mailbox.attach(i, rings.back()->fd());
  }
  ASSERT_TRUE(mailbox.prepare_to_sleep(1));
  ASSERT_TRUE(mailbox.prepare_to_sleep(2));
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_TRUE(mailbox.try_request(0, 1, Request{0, 1, i}));
    ASSERT_TRUE(mailbox.try_request(0, 2, Request{0, 2, i}));
  }
  EXPECT_EQ(mailbox.flush_doorbells(0, *rings[0]), 2u) << "one each for shards 1 and 2";
  EXPECT_EQ(mailbox.flush_doorbells(0, *rings[0]), 0u) << "nothing pushed since";
  rings[0]->submit();
  EXPECT_EQ(reap_doorbells(*rings[1]), 1);
  EXPECT_EQ(reap_doorbells(*rings[2]), 1);
  EXPECT_FALSE(mailbox.prepare_to_sleep(1)) << "work is waiting: it must not sleep";

  // Shard 1 awake: its pushes to 1 ring nothing; shard 2 still asleep gets one.
  mailbox.woke(1);
  ASSERT_TRUE(mailbox.try_request(2, 1, Request{2, 1, 0}));
  EXPECT_EQ(mailbox.flush_doorbells(2, *rings[2]), 0u) << "the target is awake";
  mailbox.drain_requests(1, [&](uint32_t source, const Request& request) {
    mailbox.reply(1, source, Reply{request.sequence, 0});
  });
  EXPECT_EQ(mailbox.flush_doorbells(1, *rings[1]), 1u) << "replies to 0 (awake) and 2 (asleep)";
  rings[1]->submit();
  EXPECT_EQ(reap_doorbells(*rings[2]), 1);
  EXPECT_EQ(reap_doorbells(*rings[0]), 0);
}

// Shards on their own threads, each with its own ring made in that thread. Each sends `per_pair`
// requests to every other shard (as fast as its credits allow) and answers every request it gets;
// whenever a shard finds nothing to do it sleeps in the ring wait for up to 60 s. Tiny rings keep
// the shards running out of credits and sleeping all the time, so the sleep/wake race runs
// hundreds of thousands of times. A lost wake-up stalls the exchange (with two shards at once:
// neither has anything to do until the other wakes): the watchdog fails the test.
void exchange(uint32_t shards, size_t capacity, uint64_t per_pair) {
  constexpr auto kWatchdog = std::chrono::seconds(60);
  TestMailbox mailbox(shards, capacity, kDoorbell);

  struct Figures {
    std::vector<uint64_t> requests_received;
    std::vector<uint64_t> replies_received;
    bool requests_in_order = true;
    bool replies_in_order = true;
    uint64_t sleeps = 0;
    uint64_t timed_out_waits = 0;
    uint64_t doorbells_sent = 0;
  };
  std::vector<Figures> figures(shards);
  std::atomic<uint32_t> attached{0};
  std::atomic<uint32_t> finished{0};
  std::mutex watchdog_mutex;
  std::condition_variable watchdog_cv;
  bool all_done = false;

  std::thread watchdog([&] {
    std::unique_lock lock(watchdog_mutex);
    if (!watchdog_cv.wait_for(lock, kWatchdog, [&] { return all_done; })) {
      std::fprintf(stderr, "mailbox exchange: not done after %lld s: a wake-up was lost\n",
                   static_cast<long long>(kWatchdog.count()));
      std::abort();  // the shards are asleep for good; nothing else would end the test
    }
  });

  auto shard = [&](uint32_t self) {
    std::unique_ptr<Ring> ring = make_ring();
    mailbox.attach(self, ring->fd());
    attached.fetch_add(1);
    while (attached.load() < shards) {
      std::this_thread::yield();  // nobody rings a shard whose fd is not known yet
    }
    Figures& mine = figures[self];
    mine.requests_received.assign(shards, 0);
    mine.replies_received.assign(shards, 0);
    std::vector<uint64_t> next_to_send(shards, 0);
    std::vector<uint64_t> next_request_from(shards, 0);
    std::vector<uint64_t> next_reply_from(shards, 0);
    const uint64_t expected = (shards - 1) * per_pair;
    uint64_t requests_total = 0;
    uint64_t replies_total = 0;
    uint64_t random = self + 1;
    while (requests_total < expected || replies_total < expected) {
      size_t work = 0;
      work += mailbox.drain_replies(self, [&](uint32_t target, const Reply& reply) {
        mine.replies_in_order &= reply.sequence == next_reply_from[target]++;
        mine.replies_in_order &= reply.answer == (reply.sequence ^ (uint64_t{target} << 40));
        ++mine.replies_received[target];
        ++replies_total;
      });
      work += mailbox.drain_requests(self, [&](uint32_t source, const Request& request) {
        mine.requests_in_order &= request.source == source && request.target == self;
        mine.requests_in_order &= request.sequence == next_request_from[source]++;
        ++mine.requests_received[source];
        ++requests_total;
        mailbox.reply(self, source, Reply{request.sequence, request.sequence ^ (uint64_t{self} << 40)});
      });
      for (uint32_t target = 0; target < shards; ++target) {
        while (target != self && next_to_send[target] < per_pair &&
               mailbox.try_request(self, target, Request{self, target, next_to_send[target]})) {
          ++next_to_send[target];
          ++work;
        }
      }
      mine.doorbells_sent += mailbox.flush_doorbells(self, *ring);
      if (work > 0) {
        ring->submit_wait_and_reap(0, [](const io_uring_cqe&) {});  // sends the doorbells
        continue;
      }
      // Nothing found: stand for a random moment (a shard would run its timers here) before
      // announcing sleep, so that the other shards' pushes land in every phase of the
      // check-then-sleep window, not only while this shard is already asleep.
      random = random * 6364136223846793005ull + 1442695040888963407ull;
      for (uint64_t spin = random >> 53; spin > 0; --spin) {
        std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps the loop
      }
      if (!mailbox.prepare_to_sleep(self)) {
        continue;
      }
      ++mine.sleeps;
      const unsigned reaped = ring->submit_wait_and_reap(kLongWaitUs, [](const io_uring_cqe&) {});
      mailbox.woke(self);
      if (reaped == 0) {
        ++mine.timed_out_waits;
      }
    }
    // Keep the ring (its fd) until every shard is done: a late doorbell must not hit a reused fd.
    finished.fetch_add(1);
    while (finished.load() < shards) {
      ring->submit_wait_and_reap(1000, [](const io_uring_cqe&) {});
    }
  };

  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < shards; ++i) {
    threads.emplace_back(shard, i);
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  {
    std::lock_guard lock(watchdog_mutex);
    all_done = true;
  }
  watchdog_cv.notify_all();
  watchdog.join();

  uint64_t sleeps = 0;
  uint64_t doorbells = 0;
  for (uint32_t self = 0; self < shards; ++self) {
    const Figures& mine = figures[self];
    EXPECT_TRUE(mine.requests_in_order) << self;
    EXPECT_TRUE(mine.replies_in_order) << self;
    EXPECT_EQ(mine.timed_out_waits, 0u) << "a 60 s wait ended by its timeout: a doorbell was lost";
    for (uint32_t other = 0; other < shards; ++other) {
      const uint64_t expected = other == self ? 0 : per_pair;
      EXPECT_EQ(mine.requests_received[other], expected) << self << " from " << other;
      EXPECT_EQ(mine.replies_received[other], expected) << self << " from " << other;
    }
    EXPECT_FALSE(mailbox.has_incoming(self));
    sleeps += mine.sleeps;
    doorbells += mine.doorbells_sent;
  }
  EXPECT_GT(sleeps, per_pair / 10) << "the shards hardly slept: the test did not exercise the wake-up";
  std::printf("mailbox exchange: %u shards, capacity %zu, %llu requests per pair, %llu sleeps, %llu doorbells\n",
              shards, capacity, static_cast<unsigned long long>(per_pair), static_cast<unsigned long long>(sleeps),
              static_cast<unsigned long long>(doorbells));
}

#if defined(__SANITIZE_ADDRESS__)
constexpr uint64_t kPerPair = 20'000;
#else
constexpr uint64_t kPerPair = 200'000;
#endif

// Two shards: the highest rate of sleep/wake races on two cores, and a single lost wake-up hangs.
TEST(MailboxTest, TwoShardsOnThreadsNeverLoseAWakeUp) {
  exchange(2, 1, kPerPair / 2);
}

// Every pair at once: marks for several targets per iteration, rings drained from several sources.
TEST(MailboxTest, FourShardsOnThreadsNeverLoseAWakeUp) {
  exchange(4, 2, kPerPair / 4);
}

}  // namespace
}  // namespace sluice::io
