// Tests for the shard's input-path decisions: a paused connection's recv is never re-armed
// (whatever ended it), parked input is copied a bounded number of times however it is sliced,
// and the body budget both bounds memory and always lets the oldest body finish.
#include "engine/app/input_path.h"
#include "engine/io/stream.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

namespace sluice::app {
namespace {

using io::ParkedInput;
using io::recv_end_action;
using io::RecvEnd;

// Issue 6 section 3: a multishot recv that ended with -ENOBUFS while its cancel for a pause was
// pending used to be re-armed, so a paused connection kept being read.
TEST(RecvEndTest, EnobufsWhileCancelPendingStaysPaused) {
  EXPECT_EQ(recv_end_action(-ENOBUFS, /*cancel_pending=*/true, /*reading_paused=*/true, false), RecvEnd::stay_paused);
}

TEST(RecvEndTest, PausedConnectionIsNeverRearmed) {
  for (const int32_t res : {-ENOBUFS, -ECANCELED, 1, 16384}) {
    for (const bool cancel_pending : {false, true}) {
      const RecvEnd action = recv_end_action(res, cancel_pending, true, false);
      if (res == -ECANCELED && !cancel_pending) {
        EXPECT_EQ(action, RecvEnd::close);  // not our pause's cancel: a close in progress
      } else {
        EXPECT_EQ(action, RecvEnd::stay_paused) << "res=" << res << " cancel_pending=" << cancel_pending;
      }
    }
  }
}

TEST(RecvEndTest, UnpausedConnectionIsRearmed) {
  EXPECT_EQ(recv_end_action(-ENOBUFS, false, false, false), RecvEnd::rearm);
  EXPECT_EQ(recv_end_action(-ENOBUFS, true, false, false), RecvEnd::rearm);
  EXPECT_EQ(recv_end_action(-ECANCELED, true, false, false), RecvEnd::rearm);  // resumed meanwhile
  EXPECT_EQ(recv_end_action(512, false, false, false), RecvEnd::rearm);
}

TEST(RecvEndTest, EndOfStreamAndErrors) {
  EXPECT_EQ(recv_end_action(0, false, false, false), RecvEnd::half_close);
  EXPECT_EQ(recv_end_action(0, true, true, false), RecvEnd::half_close);
  EXPECT_EQ(recv_end_action(-ECONNRESET, false, false, false), RecvEnd::close);
  EXPECT_EQ(recv_end_action(-ECANCELED, false, false, false), RecvEnd::close);
  for (const int32_t res : {-ENOBUFS, -ECANCELED, 0, 100}) {
    EXPECT_EQ(recv_end_action(res, true, false, /*closing=*/true), RecvEnd::close);
  }
}

TEST(ParkedInputTest, SlicesComeOutInOrder) {
  ParkedInput parked;
  std::string expected;
  for (int i = 0; i < 1000; ++i) {
    const std::string piece = std::to_string(i) + ",";
    parked.append(piece);
    expected += piece;
  }
  std::string out;
  while (!parked.empty()) {
    const std::string_view front = parked.view().substr(0, 7);
    out += front;
    parked.consume(front.size());
    if (out.size() % 70 == 0) {
      parked.append("x");  // input arriving meanwhile goes to the back
      expected += "x";
    }
  }
  EXPECT_EQ(out, expected);
  EXPECT_EQ(parked.size(), 0u);
}

// The quadratic version copied the whole rest of the parked input for every 16 KiB slice: for
// 4 MiB that is ~256 copies of ~2 MiB on average. Here every octet is copied at most ~twice.
TEST(ParkedInputTest, SlicingCopiesLinearly) {
  constexpr size_t kTotal = 4 << 20;
  constexpr size_t kSlice = 16 << 10;
  ParkedInput parked;
  parked.append(std::string(kTotal, 'a'));
  size_t taken = 0;
  while (!parked.empty()) {
    const size_t slice = std::min(parked.size(), kSlice);
    taken += slice;
    parked.consume(slice);
    if (taken % (kSlice * 4) == 0 && taken < kTotal / 2) {
      parked.append(std::string(100, 'b'));  // appends compact the front
    }
  }
  EXPECT_LE(parked.copied_octets(), 3 * kTotal);
}

TEST(ParkedInputTest, ReleaseIfLargeOnlyWhenEmpty) {
  ParkedInput parked;
  parked.append(std::string(100'000, 'a'));
  parked.release_if_large(1024);
  EXPECT_EQ(parked.size(), 100'000u);
  parked.consume(100'000);
  parked.release_if_large(1024);
  EXPECT_TRUE(parked.empty());
  parked.append("abc");
  EXPECT_EQ(parked.view(), "abc");
}

TEST(BodyBudgetTest, HeadMayUseTheWholeBudget) {
  BodyBudget budget(100, 40);
  EXPECT_TRUE(budget.may_grow(true, 0, 0, 100));
  EXPECT_FALSE(budget.may_grow(true, 0, 0, 101));
  EXPECT_FALSE(budget.can_ever_fit(101));
  budget.add(90);
  budget.to_spool(20);  // a commit in flight: it will free, so the total bounds the head
  EXPECT_TRUE(budget.may_grow(true, 30, 30, 10));
  EXPECT_FALSE(budget.may_grow(true, 30, 30, 11));
  budget.spool_done(20);
  EXPECT_EQ(budget.used_octets(), 70u);
}

// With nothing committing, nothing will free by itself: the head is then bound only by its own
// size, so small overshoots of the others can never stall it.
TEST(BodyBudgetTest, HeadIsNeverStalledWhenNothingCommits) {
  BodyBudget budget(100, 40);
  budget.add(105);  // the others overshot a little (BDAT dot-stuffing)
  EXPECT_TRUE(budget.may_grow(true, 30, 30, 10));
  EXPECT_FALSE(budget.may_grow(false, 30, 30, 1));
  budget.to_spool(5);
  EXPECT_FALSE(budget.may_grow(true, 30, 30, 10));
}

// A body's buffer doubles as it grows: its capacity may pass the budget while the message
// itself fits. Only the message's own size can make the head's message never fit.
TEST(BodyBudgetTest, HeadBufferDoublingDoesNotStallIt) {
  BodyBudget budget(100, 80);
  budget.add(128);  // the head's buffer: 128 for a 70-octet body
  EXPECT_TRUE(budget.may_grow(true, 128, 70, 10));
  EXPECT_FALSE(budget.may_grow(true, 128, 70, 31));
  EXPECT_TRUE(budget.can_ever_fit(100));
}

TEST(BodyBudgetTest, OthersLeaveRoomForTheHeadToFinish) {
  BodyBudget budget(100, 40);
  budget.add(10);  // the head holds 10 of its up to 40
  // The others may fill 100 - 30 (the head's remaining need) - 10 (held) = 60.
  EXPECT_TRUE(budget.may_grow(false, 10, 10, 60));
  EXPECT_FALSE(budget.may_grow(false, 10, 10, 61));
  budget.add(60);
  // The head can still finish its whole message.
  EXPECT_TRUE(budget.may_grow(true, 10, 10, 30));
}

// Simulated: many sessions each with a 40-octet message, fed in small steps by the same rule
// the shard uses; the total never exceeds the budget and every message finishes.
TEST(BodyBudgetTest, ManySessionsAllFinishWithinBudget) {
  constexpr uint64_t kBudget = 100;
  constexpr uint64_t kMessage = 40;
  constexpr int kSessions = 50;
  BodyBudget budget(kBudget, kMessage);
  std::vector<uint64_t> held(kSessions, 0);
  std::vector<bool> done(kSessions, false);
  int finished = 0;
  int head = 0;  // sessions become head in index order (the order they started their bodies)
  for (int round = 0; round < 100'000 && finished < kSessions; ++round) {
    for (int s = 0; s < kSessions; ++s) {
      if (done[s]) {
        continue;
      }
      while (head < kSessions && done[head]) {
        ++head;
      }
      const uint64_t step = 3;
      const uint64_t more = std::min(step, kMessage - held[s]);
      if (budget.may_grow(s == head, held[head], held[head], more)) {
        budget.add(more);
        held[s] += more;
        EXPECT_LE(budget.used_octets(), kBudget);
      }
      if (held[s] == kMessage) {
        done[s] = true;  // committed: the spool frees it
        budget.remove(held[s]);
        ++finished;
      }
    }
  }
  EXPECT_EQ(finished, kSessions);
  EXPECT_EQ(budget.used_octets(), 0u);
}

}  // namespace
}  // namespace sluice::app
