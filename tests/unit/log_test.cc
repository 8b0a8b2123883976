// logfmt values and the bounded recipient list of log lines: a client's HELO or address must
// never forge a field or a line, and a transaction's line stays bounded.
#include "engine/app/log.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sluice::app {
namespace {

std::string value(std::string_view text) {
  std::string out;
  append_log_value(out, text);
  return out;
}

TEST(LogValueTest, PlainTokensStayBare) {
  EXPECT_EQ(value("client.example.org"), "client.example.org");
  EXPECT_EQ(value("<a@b.example>"), "<a@b.example>");
  EXPECT_EQ(value("j\xc3\xb6rg@example.org"), "j\xc3\xb6rg@example.org");  // UTF-8 kept as is
}

TEST(LogValueTest, AnythingElseIsQuotedAndEscaped) {
  EXPECT_EQ(value(""), "\"\"");
  EXPECT_EQ(value("a b"), "\"a b\"");
  EXPECT_EQ(value("x reason=spoof"), "\"x reason=spoof\"");
  EXPECT_EQ(value("a=b"), "\"a=b\"");
  EXPECT_EQ(value("say \"hi\""), "\"say \\\"hi\\\"\"");
  EXPECT_EQ(value("back\\slash"), "\"back\\\\slash\"");
  EXPECT_EQ(value("line\nts=forged"), "\"line\\x0ats=forged\"");
  EXPECT_EQ(value(std::string_view("nul\0del\x7f", 8)), "\"nul\\x00del\\x7f\"");
}

TEST(LogRecipientsTest, FirstTenThenHowManyMore) {
  std::string out;
  append_log_recipients(out, {});
  EXPECT_EQ(out, " rcpts=0");
  std::vector<std::string> recipients;
  for (int i = 0; i < 12; ++i) {
    recipients.push_back(absl::StrCat("r", i, "@example.com"));
  }
  out.clear();
  append_log_recipients(out, recipients);
  std::string expected = " rcpts=12 to=\"";
  for (int i = 0; i < 10; ++i) {
    expected.append(i == 0 ? "<" : ",<");
    expected.append(recipients[i]);
    expected.append(">");
  }
  expected += " +2 more\"";
  EXPECT_EQ(out, expected);
  out.clear();
  append_log_recipients(out, {"one@example.com"});
  EXPECT_EQ(out, " rcpts=1 to=<one@example.com>");
}

TEST(LogTimestampTest, RfcThreeThreeNineWithMillisecondsAcrossSeconds) {
  std::string a;
  append_log_timestamp(a, 1764644645678);  // 2025-12-02T03:04:05.678Z
  EXPECT_EQ(a, "2025-12-02T03:04:05.678Z");
  std::string b;
  append_log_timestamp(b, 1764644645009);  // same second, cached calendar part
  EXPECT_EQ(b, "2025-12-02T03:04:05.009Z");
  std::string c;
  append_log_timestamp(c, 1764644646000);  // the next second
  EXPECT_EQ(c, "2025-12-02T03:04:06.000Z");
  std::string d;
  append_log_timestamp(d, 0);
  EXPECT_EQ(d, "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(log_timestamp().size(), a.size());
}

}  // namespace
}  // namespace sluice::app
