// The ring layer against the real kernel: MSG_RING doorbells between threads wake a sleeping
// shard, and multishot recv through the provided-buffer ring survives running dry (ENOBUFS).
#include "engine/io/ring.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "engine/io/buffer_ring.h"
#include "engine/io/spsc_ring.h"

namespace sluice::io {
namespace {

constexpr uint64_t kDoorbell = 0xD00Dull;
constexpr uint64_t kLongWaitUs = 60'000'000;  // a missed doorbell shows up as a hang, not a flake

// While the kernel takes no submission (here: a ring not yet enabled, so every submit fails),
// sqe() neither spins nor returns null: entries wait in order and all complete once it can.
// Before the backlog, the third call on a full SQ spun forever in io_uring_submit.
TEST(RingTest, SqeNeverSpinsWhenSubmitFailsAndNothingIsLost) {
  RingOptions options{4, 64};
  options.start_disabled = true;
  auto created = Ring::create_for_this_thread(options);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Ring> ring(*created);
  constexpr uint64_t kEntries = 40;  // ten times the SQ
  for (uint64_t i = 1; i <= kEntries; ++i) {
    io_uring_sqe* sqe = ring->sqe();
    ASSERT_NE(sqe, nullptr);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, i);
  }
  EXPECT_GT(ring->submit_errors(), 0u);
  EXPECT_EQ(ring->last_submit_error(), EBADFD);
  EXPECT_GE(ring->backlog(), kEntries - 4);
  // liburing 2.3 declares io_uring_enable_rings but does not export it: the register call itself.
  ASSERT_EQ(::syscall(__NR_io_uring_register, ring->fd(), IORING_REGISTER_ENABLE_RINGS, nullptr, 0), 0);
  std::vector<uint64_t> seen;
  for (int round = 0; round < 100 && seen.size() < kEntries; ++round) {
    ring->submit_wait_and_reap(1000, [&](const io_uring_cqe& cqe) { seen.push_back(cqe.user_data); });
  }
  ASSERT_EQ(seen.size(), kEntries);
  for (uint64_t i = 0; i < kEntries; ++i) {
    EXPECT_EQ(seen[i], i + 1) << "in the order they were prepared";
  }
  EXPECT_EQ(ring->backlog(), 0u);
}

TEST(RingTest, DoorbellWakesASleepingThreadAndCarriesSpscWork) {
  constexpr uint64_t kItems = 20'000;
  SpscRing<uint64_t> queue(256);
  std::atomic<int> consumer_ring_fd{-1};
  std::atomic<bool> consumer_sleeping{false};
  uint64_t received = 0;
  uint64_t expected_next = 0;
  bool in_order = true;
  int empty_wakeups = 0;

  std::thread consumer([&] {
    auto ring = Ring::create_for_this_thread(RingOptions{64, 256});
    ASSERT_TRUE(ring.ok());
    std::unique_ptr<Ring> owned(*ring);
    consumer_ring_fd.store(owned->fd());
    while (received < kItems) {
      consumer_sleeping.store(true, std::memory_order_relaxed);
      // Store-buffer pattern with the producer's "push; fence; load flag": without a full fence
      // between our flag store and our queue load on this side and between its tail store and its
      // flag load on that side, both loads can miss the other's store (on x86 too) and the wake-up
      // is lost. With both fences one of us sees the other (io::Mailbox does the same).
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const bool work_waiting = !queue.empty();
      unsigned doorbells = 0;
      if (!work_waiting) {
        doorbells = owned->submit_wait_and_reap(kLongWaitUs,
                                                [&](const io_uring_cqe& cqe) { EXPECT_EQ(cqe.user_data, kDoorbell); });
        if (doorbells == 0) {
          ++empty_wakeups;
        }
      }
      consumer_sleeping.store(false, std::memory_order_relaxed);
      uint64_t value;
      while (queue.try_pop(value)) {
        in_order &= value == expected_next;
        ++expected_next;
        ++received;
      }
    }
  });

  while (consumer_ring_fd.load() < 0) {
    std::this_thread::yield();
  }
  auto ring = Ring::create_for_this_thread(RingOptions{64, 256});
  ASSERT_TRUE(ring.ok());
  std::unique_ptr<Ring> producer(*ring);
  for (uint64_t i = 0; i < kItems; ++i) {
    while (!queue.try_push(i)) {
      std::this_thread::yield();  // bounded: the consumer drains it
    }
    // The other half of the consumer's fence: the tail store before the flag load. No final
    // "just in case" doorbell after the loop: it would hide exactly the lost wake-up tested here.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (consumer_sleeping.load(std::memory_order_relaxed)) {
      prep_doorbell(producer->sqe(), consumer_ring_fd.load(), kDoorbell);
      producer->submit();
    }
  }
  consumer.join();
  EXPECT_EQ(received, kItems);
  EXPECT_TRUE(in_order);
  EXPECT_EQ(empty_wakeups, 0) << "a wait ended by its timeout: a doorbell was lost";
}

TEST(RingTest, MultishotRecvThroughBufferRingSurvivesRunningDry) {
  auto created = Ring::create_for_this_thread(RingOptions{64, 1024});
  ASSERT_TRUE(created.ok());
  std::unique_ptr<Ring> ring(*created);
  constexpr uint32_t kBuffers = 4;
  constexpr uint32_t kBufferBytes = 64;
  auto buffer_ring = BufferRing::create(ring->raw(), 7, kBuffers, kBufferBytes);
  ASSERT_TRUE(buffer_ring.ok()) << buffer_ring.status();
  std::unique_ptr<BufferRing> buffers(*buffer_ring);
  EXPECT_FALSE(BufferRing::create(ring->raw(), 8, 3, 64).ok()) << "entries must be a power of two";

  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
  auto arm = [&] {
    io_uring_sqe* sqe = ring->sqe();
    io_uring_prep_recv_multishot(sqe, fds[0], nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 7;
    io_uring_sqe_set_data64(sqe, 1);
  };
  arm();
  std::string sent;
  std::string got;
  int rearms = 0;
  for (int round = 0; round < 50; ++round) {
    // More messages than buffers between reaps: the ring runs dry and the multishot ends.
    for (int i = 0; i < 6; ++i) {
      // One buffer's worth each: six of them need more buffers than the ring has.
      std::string chunk = "round" + std::to_string(round) + "-" + std::to_string(i) + ";";
      chunk.resize(kBufferBytes, static_cast<char>('a' + i));
      ASSERT_EQ(write(fds[1], chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
      sent += chunk;
    }
    for (int spin = 0; spin < 20 && got.size() < sent.size(); ++spin) {
      bool ended = false;
      ring->submit_wait_and_reap(100'000, [&](const io_uring_cqe& cqe) {
        if (cqe.res > 0) {
          ASSERT_TRUE(cqe.flags & IORING_CQE_F_BUFFER);
          const auto id = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
          const auto data = buffers->data(id, static_cast<uint32_t>(cqe.res));
          got.append(data.data(), data.size());
          buffers->recycle(id);
        }
        if (!(cqe.flags & IORING_CQE_F_MORE)) {
          EXPECT_TRUE(cqe.res == -ENOBUFS || cqe.res > 0) << cqe.res;
          ended = true;
        }
      });
      buffers->publish();
      if (ended) {
        ++rearms;
        arm();
      }
    }
  }
  EXPECT_EQ(got, sent);
  EXPECT_GT(rearms, 0) << "the test never ran the buffer ring dry";
  close(fds[0]);
  close(fds[1]);
}

TEST(RingTest, UserDataRoundTrips) {
  const UserData data{9, UserData::kIndexMax, 0xFFFFFFFFu};
  const UserData back = UserData::decode(data.encode());
  EXPECT_EQ(back.tag, 9);
  EXPECT_EQ(back.index, UserData::kIndexMax);
  EXPECT_EQ(back.generation, 0xFFFFFFFFu);
}

}  // namespace
}  // namespace sluice::io
