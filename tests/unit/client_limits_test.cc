// Tests for the per-client table's bound (issue 6, section 2): after more distinct addresses
// than the table holds, a new client is still counted; an entry with no live connection is
// reclaimed (oldest first); with every entry live, a new address is refused, never uncounted.
#include "engine/app/client_limits.h"

#include <gtest/gtest.h>

#include <string>

namespace sluice::app {
namespace {

std::string address(uint32_t n) {
  return "10." + std::to_string((n >> 16) & 255) + "." + std::to_string((n >> 8) & 255) + "." + std::to_string(n & 255);
}

// Before the fix entries were never removed: past kTrackedClientsMax addresses, new clients
// were admitted uncounted and the limit was off.
TEST(ClientLimitsTableTest, LimitHoldsAfterMoreAddressesThanTheTable) {
  ClientLimits limits(2, 0);
  for (uint32_t n = 0; n <= ClientLimits::kTrackedClientsMax; ++n) {
    ASSERT_EQ(limits.admit(address(n), 0), ClientAdmission::admitted);
    limits.release(address(n));
  }
  const std::string fresh = "192.0.2.200";
  EXPECT_EQ(limits.admit(fresh, 0), ClientAdmission::admitted);
  EXPECT_EQ(limits.admit(fresh, 0), ClientAdmission::admitted);
  EXPECT_EQ(limits.admit(fresh, 0), ClientAdmission::too_many_connections);
}

TEST(ClientLimitsTableTest, WithRateLimitIdleEntriesAreReclaimedOldestFirst) {
  ClientLimits limits(0, 2, /*tracked_max=*/3);
  for (uint32_t n = 0; n < 3; ++n) {  // each used its 2 connections this minute
    for (int i = 0; i < 2; ++i) {
      ASSERT_EQ(limits.admit(address(n), 0), ClientAdmission::admitted);
      limits.release(address(n));
    }
  }
  EXPECT_EQ(limits.tracked(), 3u);
  EXPECT_EQ(limits.admit(address(1), 0), ClientAdmission::rate_exceeded);
  // A new address takes the place of the entry idle longest (address 0).
  EXPECT_EQ(limits.admit(address(10), 0), ClientAdmission::admitted);
  EXPECT_EQ(limits.tracked(), 3u);
  EXPECT_EQ(limits.admit(address(1), 0), ClientAdmission::rate_exceeded) << "newer entries are kept";
  EXPECT_EQ(limits.admit(address(2), 0), ClientAdmission::rate_exceeded);
  limits.release(address(10));
  // Address 0 was forgotten; it comes back as new (reclaiming address 1, the oldest idle now).
  EXPECT_EQ(limits.admit(address(0), 0), ClientAdmission::admitted);
  EXPECT_EQ(limits.admit(address(2), 0), ClientAdmission::rate_exceeded);
}

TEST(ClientLimitsTableTest, ReconnectedEntryIsNotReclaimed) {
  ClientLimits limits(0, 5, 2);
  ASSERT_EQ(limits.admit(address(0), 0), ClientAdmission::admitted);
  limits.release(address(0));  // idle first...
  ASSERT_EQ(limits.admit(address(1), 0), ClientAdmission::admitted);
  limits.release(address(1));
  ASSERT_EQ(limits.admit(address(0), 0), ClientAdmission::admitted);  // ...but live again
  EXPECT_EQ(limits.admit(address(2), 0), ClientAdmission::admitted);  // reclaims address 1
  EXPECT_EQ(limits.tracked(), 2u);
  // Now both entries are live: no room, and no uncounted admission.
  EXPECT_EQ(limits.admit(address(3), 0), ClientAdmission::table_full);
  limits.release(address(2));
  EXPECT_EQ(limits.admit(address(3), 0), ClientAdmission::admitted);
}

TEST(ClientLimitsTableTest, FullOfLiveConnectionsRefuses) {
  ClientLimits limits(50, 0, 4);
  for (uint32_t n = 0; n < 4; ++n) {
    ASSERT_EQ(limits.admit(address(n), 0), ClientAdmission::admitted);
  }
  EXPECT_EQ(limits.admit(address(9), 0), ClientAdmission::table_full);
  EXPECT_EQ(limits.admit(address(0), 0), ClientAdmission::admitted) << "known addresses are still counted";
  limits.release(address(3));  // without a rate limit an address without connections is dropped
  EXPECT_EQ(limits.tracked(), 3u);
  EXPECT_EQ(limits.admit(address(9), 0), ClientAdmission::admitted);
}

TEST(ClientLimitsTableTest, IdleQueueStaysBounded) {
  ClientLimits limits(0, 1000, 4);
  // One address reconnecting a million times leaves one live idle item, not a million.
  for (int i = 0; i < 1'000'000 / 1000; ++i) {
    for (int j = 0; j < 999; ++j) {
      ASSERT_EQ(limits.admit(address(0), uint64_t(i) * 60'000), ClientAdmission::admitted);
      limits.release(address(0));
    }
  }
  EXPECT_EQ(limits.tracked(), 1u);
  for (uint32_t n = 1; n < 4; ++n) {
    EXPECT_EQ(limits.admit(address(n), 0), ClientAdmission::admitted);
  }
  EXPECT_EQ(limits.admit(address(7), 0), ClientAdmission::admitted);  // reclaims address 0
}

}  // namespace
}  // namespace sluice::app
