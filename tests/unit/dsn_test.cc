// The DSN builder (RFC 3464) and the retry schedule: the fields a bounce must carry, RET and
// NOTIFY honoured, nothing a remote server says can add a header field or a MIME boundary, and
// retries back off, spread, and never outlive the message's lifetime.
#include "engine/relay/dsn.h"

#include <gtest/gtest.h>

#include <string>

#include "engine/relay/retry_schedule.h"

namespace sluice::relay {
namespace {

const std::string kOriginal =
    "Received: from client.test by mx.sluice.test; Wed, 02 Dec 2026 06:00:00 +0000\r\n"
    "Subject: hello\r\n"
    "From: <alice@client.test>\r\n"
    "\r\n"
    "first line\r\n"
    "..a dot-stuffed line\r\n";

DsnReport failed_report() {
  DsnReport report;
  report.reporting_mta = "mx.sluice.test";
  report.original_sender = "alice@client.test";
  report.queue_id = "0MX5RA6AC0000000";
  report.envid = "QQ+2B314";
  report.arrival_s = 1'796'000'000;
  report.now_s = 1'796'000'100;
  report.boundary = "0MX5RA6AC0000001/mx.sluice.test";
  report.message_id = "0MX5RA6AC0000001@mx.sluice.test";
  DsnRecipient rcpt;
  rcpt.final_recipient = "bob@example.net";
  rcpt.orcpt = "rfc822;Bob+2BTag@example.net";
  rcpt.action = DsnAction::failed;
  rcpt.status = "5.1.1";
  rcpt.remote_mta = "mx1.example.net";
  rcpt.diagnostic = "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown";
  rcpt.last_attempt_s = 1'796'000'090;
  report.recipients.push_back(rcpt);
  return report;
}

// Whether `text` is a whole line of `wire`.
bool has_line(const std::string& wire, std::string_view text) {
  for (size_t at = wire.find(text); at != std::string::npos; at = wire.find(text, at + 1)) {
    const bool starts = at == 0 || (at >= 2 && wire.compare(at - 2, 2, "\r\n") == 0);
    if (starts && wire.compare(at + text.size(), 2, "\r\n") == 0) {
      return true;
    }
  }
  return false;
}

TEST(DsnTest, FailedRecipientCarriesTheRfc3464Fields) {
  const BuiltDsn dsn = build_dsn(failed_report(), kOriginal);
  const std::string& w = dsn.wire;
  EXPECT_TRUE(has_line(w, "From: Mail Delivery System <MAILER-DAEMON@mx.sluice.test>"));
  EXPECT_TRUE(has_line(w, "To: <alice@client.test>"));
  EXPECT_TRUE(has_line(w, "Subject: Undelivered Mail Returned to Sender"));
  EXPECT_TRUE(has_line(w, "Auto-Submitted: auto-replied"));
  EXPECT_TRUE(has_line(w,
                       "Content-Type: multipart/report; report-type=delivery-status; "
                       "boundary=\"0MX5RA6AC0000001/mx.sluice.test\""));
  EXPECT_TRUE(has_line(w, "Content-Type: message/delivery-status"));
  EXPECT_TRUE(has_line(w, "Reporting-MTA: dns; mx.sluice.test"));
  EXPECT_TRUE(has_line(w, "Original-Envelope-Id: QQ+314")) << "ENVID is xtext-decoded";
  EXPECT_TRUE(has_line(w, "Original-Recipient: rfc822;Bob+Tag@example.net"));
  EXPECT_TRUE(has_line(w, "Final-Recipient: rfc822; bob@example.net"));
  EXPECT_TRUE(has_line(w, "Action: failed"));
  EXPECT_TRUE(has_line(w, "Status: 5.1.1"));
  EXPECT_TRUE(has_line(w, "Remote-MTA: dns; mx1.example.net"));
  EXPECT_TRUE(
      has_line(w, "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"));
  EXPECT_TRUE(has_line(w, "--0MX5RA6AC0000001/mx.sluice.test--"));
  EXPECT_FALSE(dsn.body_8bit);
}

TEST(DsnTest, OurOwnReasonsAreNotCalledSmtpReplies) {
  DsnReport report = failed_report();
  report.recipients[0].status = "5.3.4";
  report.recipients[0].remote_mta.clear();
  report.recipients[0].diagnostic = "5.3.4 message size 2000 exceeds the server's size limit 1000";
  const std::string w = build_dsn(report, kOriginal).wire;
  EXPECT_TRUE(has_line(w, "Diagnostic-Code: X-Sluice; 5.3.4 message size 2000 exceeds the server's size limit 1000"))
      << w;
  report.recipients[0].diagnostic = "421-4.3.2 first line 421 4.3.2 second";
  EXPECT_TRUE(has_line(build_dsn(report, kOriginal).wire, "Diagnostic-Code: smtp; 421-4.3.2 first line 421 4.3.2 second"));
}

TEST(DsnTest, WithoutRetFullOnlyTheHeaderIsReturned) {
  const BuiltDsn dsn = build_dsn(failed_report(), kOriginal);
  EXPECT_TRUE(has_line(dsn.wire, "Content-Type: text/rfc822-headers"));
  EXPECT_TRUE(has_line(dsn.wire, "Subject: hello"));
  EXPECT_EQ(dsn.wire.find("first line"), std::string::npos) << "the body must not be returned";
}

TEST(DsnTest, RetFullReturnsTheWholeMessageStillDotStuffed) {
  DsnReport report = failed_report();
  report.ret = DsnReturn::full;
  const BuiltDsn dsn = build_dsn(report, kOriginal);
  EXPECT_TRUE(has_line(dsn.wire, "Content-Type: message/rfc822"));
  EXPECT_NE(dsn.wire.find("\r\nfirst line\r\n..a dot-stuffed line\r\n"), std::string::npos);
}

// A hostile remote reply cannot start a header field, a line of its own, or end the MIME part.
TEST(DsnTest, RemoteTextCannotInjectLinesOrBoundaries) {
  DsnReport report = failed_report();
  report.recipients[0].diagnostic = "550 no\r\nBcc: victim@example.org\r\n--0MX5RA6AC0000001/mx.sluice.test--\r\n";
  report.recipients[0].final_recipient = "x@y\r\nSubject: pwned";
  report.recipients[0].remote_mta = std::string(5000, 'm');
  const BuiltDsn dsn = build_dsn(report, kOriginal);
  EXPECT_EQ(dsn.wire.find("\r\nBcc:"), std::string::npos);
  EXPECT_EQ(dsn.wire.find("\r\nSubject: pwned"), std::string::npos);
  // The remote text holds the requested boundary: the DSN's boundary becomes another one, which
  // occurs nowhere but on its delimiter lines.
  const size_t at = dsn.wire.find("boundary=\"");
  ASSERT_NE(at, std::string::npos);
  const std::string boundary = dsn.wire.substr(at + 10, dsn.wire.find('"', at + 10) - at - 10);
  EXPECT_NE(boundary, "0MX5RA6AC0000001/mx.sluice.test");
  size_t delimiters = 0;
  for (size_t found = dsn.wire.find(boundary); found != std::string::npos; found = dsn.wire.find(boundary, found + 1)) {
    ++delimiters;
    EXPECT_TRUE(found == at + 10 || dsn.wire.compare(found - 4, 4, "\r\n--") == 0)
        << "the boundary occurs off a delimiter line";
  }
  EXPECT_EQ(delimiters, 5u) << "the header parameter, three delimiters and the closing one";
  size_t start = 0;
  while (start < dsn.wire.size()) {
    const size_t end = dsn.wire.find("\r\n", start);
    ASSERT_NE(end, std::string::npos) << "every line ends in CRLF";
    EXPECT_LE(end - start, 998u);
    EXPECT_EQ(dsn.wire.substr(start, end - start).find('\n'), std::string::npos) << "no bare LF";
    start = end + 2;
  }
}

TEST(DsnTest, BoundaryIsMadeUniqueWhenTheOriginalContainsIt) {
  DsnReport report = failed_report();
  report.boundary = std::string(1, 'b');  // (GCC 12 warns falsely on assigning "b")
  report.ret = DsnReturn::full;
  const BuiltDsn dsn = build_dsn(report, "Subject: b\r\n\r\nb b b\r\n");
  EXPECT_NE(dsn.wire.find("boundary=\"bz\""), std::string::npos);
}

TEST(DsnTest, EightBitOriginalIsDeclared) {
  DsnReport report = failed_report();
  report.ret = DsnReturn::full;
  const BuiltDsn dsn = build_dsn(report, "Subject: caf\xc3\xa9\r\n\r\nbody\r\n");
  EXPECT_TRUE(dsn.body_8bit);
  EXPECT_TRUE(has_line(dsn.wire, "Content-Transfer-Encoding: 8bit"));
}

TEST(DsnTest, DelayedReportsWillRetryUntil) {
  DsnReport report = failed_report();
  report.recipients[0].action = DsnAction::delayed;
  report.recipients[0].status = "4.4.1";
  report.recipients[0].will_retry_until_s = report.arrival_s + 5 * 86400;
  const BuiltDsn dsn = build_dsn(report, kOriginal);
  EXPECT_TRUE(has_line(dsn.wire, "Subject: Delayed Mail (still being retried)"));
  EXPECT_TRUE(has_line(dsn.wire, "Action: delayed"));
  EXPECT_NE(dsn.wire.find("\r\nWill-Retry-Until: "), std::string::npos);
}

TEST(DsnTest, NotifyAndNullSenderDecideWhetherToReport) {
  EXPECT_FALSE(dsn_wanted("", 0, DsnAction::failed)) << "never bounce a bounce";
  EXPECT_TRUE(dsn_wanted("a@b", 0, DsnAction::failed));
  EXPECT_FALSE(dsn_wanted("a@b", 0, DsnAction::delivered));
  EXPECT_FALSE(dsn_wanted("a@b", kDsnNotifyNever, DsnAction::failed));
  EXPECT_TRUE(dsn_wanted("a@b", kDsnNotifySuccess, DsnAction::relayed));
  EXPECT_FALSE(dsn_wanted("a@b", kDsnNotifySuccess, DsnAction::failed));
  EXPECT_TRUE(dsn_wanted("a@b", kDsnNotifyFailure | kDsnNotifyDelay, DsnAction::delayed));
}

TEST(XtextTest, DecodesUpperCaseEscapesOnly) {
  EXPECT_EQ(xtext_decode("a+2Bb+3Dc"), "a+b=c");
  EXPECT_EQ(xtext_decode("+2b+G1+"), "+2b+G1+") << "invalid escapes stay as they are";
}

TEST(RetryScheduleTest, BacksOffDoublingUpToTheMaximum) {
  const RetryPolicy policy;  // 5 min, doubling, 1 h
  EXPECT_EQ(retry_backoff_ms(policy, 1), 5 * 60'000u);
  EXPECT_EQ(retry_backoff_ms(policy, 2), 10 * 60'000u);
  EXPECT_EQ(retry_backoff_ms(policy, 4), 40 * 60'000u);
  EXPECT_EQ(retry_backoff_ms(policy, 5), 60 * 60'000u);
  EXPECT_EQ(retry_backoff_ms(policy, 1000), 60 * 60'000u) << "no overflow after many attempts";
}

TEST(RetryScheduleTest, JitterSpreadsWithinItsBounds) {
  const RetryPolicy policy;
  uint64_t low = UINT64_MAX;
  uint64_t high = 0;
  for (uint64_t r = 0; r < 100'000; r += 7) {
    const uint64_t d = retry_delay_ms(policy, 1, r * 2654435761u);
    low = std::min(low, d);
    high = std::max(high, d);
  }
  EXPECT_GE(low, 270'000u);
  EXPECT_LE(high, 330'000u);
  EXPECT_LT(low, 280'000u) << "the spread is used";
  EXPECT_GT(high, 320'000u);
}

TEST(RetryScheduleTest, NeverPastTheLifetimeAndThenFinal) {
  RetryPolicy policy;
  policy.jitter_percent = 0;
  const uint64_t arrival = 1'000'000;
  const uint64_t end = arrival + policy.lifetime_ms;
  RetryDecision d = after_temporary_failure(policy, arrival, end - 60'000, 50, 0);
  EXPECT_FALSE(d.expired);
  EXPECT_EQ(d.next_attempt_ms, end) << "one last attempt at the end of the lifetime";
  d = after_temporary_failure(policy, arrival, end, 51, 0);
  EXPECT_TRUE(d.expired);
  d = after_temporary_failure(policy, arrival, arrival + 1, 1, 0);
  EXPECT_FALSE(d.expired);
  EXPECT_EQ(d.next_attempt_ms, arrival + 1 + 5 * 60'000);
}

}  // namespace
}  // namespace sluice::relay
