// sluice-bench sink's pieces without sockets: the message check (id, checksum, dot-stuffing),
// the id set and its ranges, the JSON reader, and the fault options.
#include <gtest/gtest.h>

#include <string>

#include "bench/sink/faults.h"
#include "bench/sink/ids.h"
#include "bench/sink/json_reader.h"
#include "spool/crc32c.h"

namespace sluice::bench {
namespace {

std::string message(std::string_view id, std::string_view sum, std::string_view wire_body) {
  return "Subject: x\r\nX-Sluice-Bench-Id: " + std::string(id) + "\r\nx-sluice-bench-sum:  " + std::string(sum) +
         "\r\n\r\n" + std::string(wire_body);
}

std::string sum_of(std::string_view body) {
  char text[32];
  std::snprintf(text, sizeof(text), "crc32c:%08x", spool::crc32c(body));
  return text;
}

TEST(BenchSinkCheck, TheSumIsOfTheBodyWithoutDotStuffing) {
  const std::string body = "a\r\n.b\r\n.\r\nc\r\n";
  const std::string stuffed = "a\r\n..b\r\n..\r\nc\r\n";
  EXPECT_EQ(unstuffed_crc32c(stuffed), spool::crc32c(body));
  EXPECT_EQ(unstuffed_crc32c("..x\r\n"), spool::crc32c(".x\r\n"));  // the first line too
  EXPECT_EQ(unstuffed_crc32c(""), spool::crc32c(""));
  const MessageCheck check = check_message(message("run-7", sum_of(body), stuffed));
  EXPECT_EQ(check.result, BodyCheck::intact);
  EXPECT_EQ(check.id, "run-7");
}

TEST(BenchSinkCheck, CorruptMissingAndForeign) {
  EXPECT_EQ(check_message(message("r-1", sum_of("sent\r\n"), "got\r\n")).result, BodyCheck::corrupt);
  EXPECT_EQ(check_message(message("r-1", "crc32c:xyz", "got\r\n")).result, BodyCheck::corrupt);
  EXPECT_EQ(check_message("X-Sluice-Bench-Id: r-1\r\n\r\nbody\r\n").result, BodyCheck::corrupt);  // no sum
  EXPECT_EQ(check_message("X-Sluice-Bench-Id: r-1\r\n").result, BodyCheck::corrupt);  // no body at all
  EXPECT_EQ(check_message("Subject: hi\r\n\r\nX-Sluice-Bench-Id: r-1\r\n").result, BodyCheck::no_id);  // in the body
  EXPECT_EQ(check_message("").result, BodyCheck::no_id);
  // Without the prefix, upper-case hex: accepted.
  std::string bare = sum_of("b\r\n").substr(7);
  for (char& c : bare) {
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  EXPECT_EQ(check_message(message("r-2", bare, "b\r\n")).result, BodyCheck::intact);
}

// The sender's wall-clock start, for the end-to-end latency; a relay adds headers above it.
TEST(BenchSinkCheck, SentTime) {
  const std::string body = "b\r\n";
  const std::string with_sent = "Received: from x\r\nX-Sluice-Bench-Sent: 1700000000123456\r\n" +
                                message("r-3", sum_of(body), body);
  EXPECT_EQ(check_message(with_sent).sent_us, 1700000000123456u);
  EXPECT_EQ(check_message(message("r-3", sum_of(body), body)).sent_us, 0u);
  EXPECT_EQ(check_message("X-Sluice-Bench-Sent: soon\r\n" + message("r-3", sum_of(body), body)).sent_us, 0u);
}

TEST(BenchSinkIds, NumberedIdsAreBitsAndRanges) {
  IdSet ids;
  for (int n : {1, 2, 3, 5, 64, 65, 200}) {
    EXPECT_TRUE(ids.insert("run-a-" + std::to_string(n)));
  }
  EXPECT_FALSE(ids.insert("run-a-3"));
  EXPECT_TRUE(ids.insert("b-0"));
  EXPECT_TRUE(ids.insert("no-number-x"));
  EXPECT_TRUE(ids.insert("plain"));
  EXPECT_FALSE(ids.insert("plain"));
  EXPECT_EQ(ids.size(), 10u);
  EXPECT_TRUE(ids.contains("run-a-64"));
  EXPECT_TRUE(ids.contains("run-a", 200));
  EXPECT_FALSE(ids.contains("run-a-4"));
  EXPECT_FALSE(ids.contains("run-b-1"));
  EXPECT_TRUE(ids.contains("no-number-x"));
  IdSet only_a;
  for (int n : {1, 2, 3, 5, 64, 65, 200}) {
    only_a.insert("run-a-" + std::to_string(n));
  }
  std::string json;
  only_a.append_ranges_json(json);
  EXPECT_EQ(json, R"({"run-a":[[1,3],[5,5],[64,65],[200,200]]})");
  IdSet ranged;
  EXPECT_TRUE(ranged.insert_range("run-a", 1, 3));
  EXPECT_FALSE(ranged.insert_range("run-a", 5, 4));
  EXPECT_FALSE(ranged.insert_range("run-a", 0, IdSet::kNumberMax));
  EXPECT_EQ(ranged.size(), 3u);
  std::string past_max = "r-" + std::to_string(IdSet::kNumberMax);
  EXPECT_TRUE(ranged.insert(past_max));  // kept as a string
  EXPECT_TRUE(ranged.contains(past_max));
}

TEST(BenchSinkJson, ReadsWhatTheToolsWrite) {
  auto doc = parse_json(R"( {"a": [1, 18446744073709551615, -2.5e3], "s": "x\"\\\u00e9\ud83d\ude00", "t": true,
                           "n": null, "o": {}} )");
  ASSERT_TRUE(doc.ok()) << doc.status();
  const JsonValue* a = doc->get("a");
  ASSERT_NE(a, nullptr);
  uint64_t big = 0;
  EXPECT_TRUE(a->items[1].as_uint(big));
  EXPECT_EQ(big, UINT64_MAX);
  EXPECT_FALSE(a->items[2].as_uint(big));
  EXPECT_EQ(doc->get("s")->text, "x\"\\\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_TRUE(doc->get("t")->boolean);
  EXPECT_TRUE(doc->get("o")->is(JsonValue::Type::object));
  EXPECT_EQ(doc->get("missing"), nullptr);
  for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "\"\x01\"", "[1] 2", "tru", "\"\\x\""}) {
    EXPECT_FALSE(parse_json(bad).ok()) << bad;
  }
  EXPECT_FALSE(parse_json(std::string(100, '[') + std::string(100, ']')).ok());  // nested too deep
}

TEST(BenchSinkFaults, OptionsAndFractions) {
  Faults faults;
  EXPECT_TRUE(set_fault(faults, "rcpt-5xx", "0.25").ok());
  EXPECT_TRUE(set_fault(faults, "rcpt_4xx", "1").ok());
  EXPECT_TRUE(set_fault(faults, "no_size", "true").ok());
  EXPECT_TRUE(set_fault(faults, "delay-ms", "30").ok());
  EXPECT_EQ(faults.rcpt_5xx, 0.25);
  EXPECT_EQ(faults.rcpt_4xx, 1.0);
  EXPECT_TRUE(faults.no_size);
  EXPECT_EQ(faults.delay_ms, 30u);
  EXPECT_FALSE(set_fault(faults, "rcpt-5xx", "1.5").ok());
  EXPECT_FALSE(set_fault(faults, "rcpt-5xx", "half").ok());
  EXPECT_FALSE(set_fault(faults, "delay-ms", "-1").ok());
  EXPECT_FALSE(set_fault(faults, "no-size", "yes").ok());
  EXPECT_FALSE(set_fault(faults, "no-such-fault", "1").ok());
  EXPECT_TRUE(is_fault_flag("helo_only"));
  EXPECT_FALSE(is_fault_flag("delay-ms"));
  // The same address (in any case) always lands at the same place.
  EXPECT_EQ(address_fraction("User@Example.com"), address_fraction("user@example.com"));
  int below_half = 0;
  for (int n = 0; n < 1000; ++n) {
    const double place = address_fraction("user" + std::to_string(n) + "@example.com");
    EXPECT_GE(place, 0.0);
    EXPECT_LT(place, 1.0);
    below_half += place < 0.5 ? 1 : 0;
  }
  EXPECT_GT(below_half, 400);  // spread, not clustered
  EXPECT_LT(below_half, 600);
  FractionCounter counter;
  int hits = 0;
  for (int n = 0; n < 30; ++n) {
    hits += counter.hit(0.1) ? 1 : 0;
  }
  EXPECT_EQ(hits, 3);
  FractionCounter never;
  EXPECT_FALSE(never.hit(0));
}

TEST(BenchSinkFaults, RecipientPatternsComeBeforeFractions) {
  Faults faults;
  EXPECT_EQ(recipient_fault(faults, "a@example.com"), RecipientFault::none);
  ASSERT_TRUE(set_fault(faults, "rcpt-5xx-pattern", "*@gone.example").ok());
  ASSERT_TRUE(set_fault(faults, "rcpt_4xx_pattern", "full-?@*").ok());
  EXPECT_EQ(recipient_fault(faults, "Someone@GONE.example"), RecipientFault::permanent);
  EXPECT_EQ(recipient_fault(faults, "full-1@gone.example"), RecipientFault::permanent);  // 5xx first
  EXPECT_EQ(recipient_fault(faults, "full-1@example.com"), RecipientFault::temporary);
  EXPECT_EQ(recipient_fault(faults, "full-10@example.com"), RecipientFault::none);
  EXPECT_FALSE(set_fault(faults, "rcpt-5xx-pattern", "").ok());
  // With every address under the 5xx fraction, a 4xx pattern still wins over it.
  ASSERT_TRUE(set_fault(faults, "rcpt-5xx", "1").ok());
  EXPECT_EQ(recipient_fault(faults, "full-2@example.com"), RecipientFault::temporary);
  EXPECT_EQ(recipient_fault(faults, "other@example.com"), RecipientFault::permanent);
}

TEST(BenchSinkFaults, PerMinuteWindowResetsAtTheMinute) {
  Faults faults;
  ASSERT_TRUE(set_fault(faults, "defer-after-per-minute", "2").ok());
  EXPECT_EQ(faults.defer_after_per_minute, 2u);
  MinuteWindow window;
  const uint64_t minute = 29'000'000ull * 60'000;
  EXPECT_FALSE(window.over(2, minute + 1));
  EXPECT_FALSE(window.over(2, minute + 30'000));
  EXPECT_TRUE(window.over(2, minute + 59'999));
  EXPECT_TRUE(window.over(2, minute + 59'999));  // refused ones do not count, and stay refused
  EXPECT_FALSE(window.over(2, minute + 60'000));  // the next minute
  EXPECT_FALSE(window.over(2, minute + 60'001));
  EXPECT_TRUE(window.over(2, minute + 61'000));
}

}  // namespace
}  // namespace sluice::bench
