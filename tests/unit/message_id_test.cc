// Queue ids: format, time order, uniqueness across shards, monotonic when the clock steps back.
#include "spool/message_id.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace sluice::spool {
namespace {

bool is_id(const std::string& id) {
  if (id.size() != 16) {
    return false;
  }
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'))) {
      return false;
    }
  }
  return true;
}

TEST(MessageIdTest, SixteenCharactersOfDigitsAndCapitals) {
  IdGenerator ids(35, 0);
  const std::string id = ids.next(1700000000123);
  EXPECT_TRUE(is_id(id)) << id;
  EXPECT_EQ(id_ms(id), 1700000000123u);
  EXPECT_EQ(id.substr(9, 2), "0Z");  // shard 35
  EXPECT_EQ(id.substr(11), "00000");
  EXPECT_FALSE(id_ms("short").has_value());
  EXPECT_FALSE(id_ms("0000000000000a00").has_value());
}

TEST(MessageIdTest, ByteOrderFollowsTimeAndCounter) {
  IdGenerator ids(1, 0);
  std::string previous = ids.next(1000);
  for (uint64_t ms = 1000; ms < 1200; ms += 7) {
    for (int i = 0; i < 50; ++i) {
      const std::string id = ids.next(ms);
      EXPECT_LT(previous, id);
      previous = id;
    }
  }
  EXPECT_LT(IdGenerator(0, 0).next(35), IdGenerator(0, 0).next(36));        // across a digit carry
  EXPECT_LT(IdGenerator(1295, 0).next(999), IdGenerator(0, 0).next(1000));  // ms outranks shard
}

TEST(MessageIdTest, UniqueAcrossShards) {
  std::set<std::string> seen;
  for (uint32_t shard = 0; shard < 8; ++shard) {
    IdGenerator ids(shard, 0);
    for (int i = 0; i < 1000; ++i) {
      EXPECT_TRUE(seen.insert(ids.next(5000 + i / 100)).second);
    }
  }
  EXPECT_EQ(seen.size(), 8000u);
}

TEST(MessageIdTest, MonotonicWhenTheClockStepsBack) {
  IdGenerator ids(0, 0);
  const std::string late = ids.next(10000);
  const std::string stepped_back = ids.next(5000);
  EXPECT_LT(late, stepped_back);
  EXPECT_EQ(id_ms(stepped_back), 10000u);
  EXPECT_EQ(ids.last_ms(), 10000u);
  EXPECT_LT(stepped_back, ids.next(10001));
}

TEST(MessageIdTest, FloorIsRespected) {
  IdGenerator ids(3, 777777);
  EXPECT_EQ(id_ms(ids.next(1)), 777777u);
  EXPECT_EQ(id_ms(ids.next(888888)), 888888u);
}

}  // namespace
}  // namespace sluice::spool
