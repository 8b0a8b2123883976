// The control-plane helpers: HTTP request parsing, JSON escaping, queue reports, per-client
// limits and the Prometheus rendering.
#include <gtest/gtest.h>

#include "engine/app/client_limits.h"
#include "engine/app/http.h"
#include "engine/app/log.h"
#include "engine/app/metrics.h"
#include "engine/app/queue_report.h"
#include "engine/smtp/command.h"

namespace sluice::app {
namespace {

TEST(HttpTest, ParsesRequestLineAndQuery) {
  auto request = parse_http_request("GET /api/queue?limit=5&domain=ex%41mple.test HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->method, "GET");
  EXPECT_EQ(request->path, "/api/queue");
  EXPECT_EQ(request->query["limit"], "5");
  EXPECT_EQ(request->query["domain"], "exAmple.test");
  EXPECT_FALSE(parse_http_request("GET /\r\n\r\n").ok());
  EXPECT_FALSE(parse_http_request("garbage").ok());
  EXPECT_FALSE(parse_http_request("GET / SPDY/3\r\n\r\n").ok());
}

TEST(HttpTest, AcceptsBareLfAndReadsHeaders) {
  const std::string head = "GET /healthz HTTP/1.1\nHost: 127.0.0.1:9025\nAuthorization:  Bearer abc \n\nrest";
  const size_t end = find_http_head_end(head);
  ASSERT_EQ(end, head.size() - 4);
  auto request = parse_http_request(std::string_view(head).substr(0, end));
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->path, "/healthz");
  ASSERT_NE(request->header("host"), nullptr);
  EXPECT_EQ(*request->header("host"), "127.0.0.1:9025");
  EXPECT_EQ(*request->header("authorization"), "Bearer abc");
  EXPECT_EQ(find_http_head_end("GET / HTTP/1.1\r\nHost: x\r\n"), std::string::npos);
  EXPECT_EQ(find_http_head_end("GET / HTTP/1.1\r\n\r\n"), 18u);
}

TEST(HttpTest, RefusesAmbiguousHeads) {
  EXPECT_FALSE(parse_http_request("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").ok());
  EXPECT_FALSE(parse_http_request("GET / HTTP/1.1\r\nno colon\r\n\r\n").ok());
  EXPECT_FALSE(parse_http_request("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").ok());
}

TEST(HttpTest, HeadAnswerHasLengthButNoBody) {
  const std::string text = format_http_response(HttpResponse{200, "application/json", "{\"a\": 1}", {}}, false);
  EXPECT_NE(text.find("Content-Length: 8\r\n"), std::string::npos);
  EXPECT_EQ(text.substr(text.size() - 4), "\r\n\r\n");
}

TEST(QueueReportTest, Utf8CheckDecidesMessageOrBase64) {
  EXPECT_TRUE(smtp::valid_utf8("plain ascii\r\n"));
  EXPECT_TRUE(smtp::valid_utf8("caf\xc3\xa9 \xf0\x9f\x93\xa7"));
  EXPECT_FALSE(smtp::valid_utf8("caf\xe9"));       // Latin-1
  EXPECT_FALSE(smtp::valid_utf8("\xc0\xaf"));      // overlong
  EXPECT_FALSE(smtp::valid_utf8("\xed\xa0\x80"));  // surrogate
  EXPECT_FALSE(smtp::valid_utf8("\xe2\x82"));      // truncated
}

TEST(QueueReportTest, RemovesDotStuffingOnly) {
  EXPECT_EQ(remove_dot_stuffing("a\r\n..b\r\n.c\r\nd.e\r\n"), "a\r\n.b\r\nc\r\nd.e\r\n");
  EXPECT_EQ(remove_dot_stuffing("..\r\n"), ".\r\n");
  EXPECT_EQ(remove_dot_stuffing(""), "");
}

TEST(HttpTest, UrlDecodeLeavesBrokenEscapesAlone) {
  EXPECT_EQ(url_decode("a%2Fb+c"), "a/b c");
  EXPECT_EQ(url_decode("%"), "%");
  EXPECT_EQ(url_decode("%4"), "%4");
  EXPECT_EQ(url_decode("%zz"), "%zz");
}

TEST(HttpTest, JsonEscapeQuotesControlsAndKeepsUtf8) {
  EXPECT_EQ(json_escape("a\"b\\c\r\n\t\x01"), "a\\\"b\\\\c\\r\\n\\t\\u0001");
  EXPECT_EQ(json_escape("caf\xc3\xa9"), "caf\xc3\xa9");
}

TEST(HttpTest, ResponseHasLengthAndStatus) {
  const std::string text = format_http_response(HttpResponse{404, "application/json", "{}", {}});
  EXPECT_EQ(text.rfind("HTTP/1.1 404 Not Found\r\n", 0), 0u);
  EXPECT_NE(text.find("Content-Length: 2\r\n"), std::string::npos);
  EXPECT_EQ(text.substr(text.size() - 2), "{}");
}

spool::MessageInfo message(std::string id, uint64_t arrival_ms, std::vector<std::string> recipients) {
  spool::MessageInfo info;
  info.id = std::move(id);
  info.sender = "sender@example.test";
  info.recipients = std::move(recipients);
  info.rfc_size = 2048;
  info.arrival_ms = arrival_ms;
  return info;
}

TEST(QueueReportTest, ListHasOneLinePerMessageAndATotal) {
  const std::string text =
      format_queue_list({message("0MWY62MQU0100000", 1'764'000'000'000, {"a@x.test", "b@y.test"})});
  EXPECT_NE(text.find("0MWY62MQU0100000"), std::string::npos);
  EXPECT_NE(text.find("<sender@example.test> -> a@x.test, b@y.test"), std::string::npos);
  EXPECT_NE(text.find("-- 2 Kbytes in 1 Requests."), std::string::npos);
}

TEST(QueueReportTest, SummaryBucketsRecipientDomainsByAge) {
  const uint64_t now = 10'000'000'000;
  const std::string text = format_queue_summary(
      {message("A", now - 60'000, {"a@x.test", "b@X.TEST"}), message("B", now - 30 * 60'000, {"c@y.test"}),
       message("C", now - 3'000 * 60'000, {"d@x.test"})},
      now);
  // x.test: 2 recipients in the first bucket (age < 5 min) and 1 beyond 1280 min.
  const size_t x = text.find("x.test");
  ASSERT_NE(x, std::string::npos);
  const std::string row = text.substr(x, text.find('\n', x) - x);
  EXPECT_EQ(row.substr(0, 6), "x.test");
  EXPECT_NE(row.find("     3      2"), std::string::npos) << row;
  EXPECT_EQ(row.substr(row.size() - 7), "      1") << row;
  EXPECT_NE(text.find("TOTAL"), std::string::npos);
}

TEST(QueueReportTest, SummaryJsonMergesShards) {
  QueueSummary a;
  QueueSummary b;
  a.add(message("A", 1000, {"x@one.test"}), 1000);
  b.add(message("B", 1000, {"y@one.test", "z@two.test"}), 1000);
  a.merge(b);
  const std::string json = queue_summary_json(a);
  EXPECT_NE(json.find("{\"domain\": \"one.test\", \"total\": 2, \"counts\": [2, 0,"), std::string::npos) << json;
  EXPECT_NE(json.find("\"total\": {\"total\": 3,"), std::string::npos) << json;
}

TEST(QueueReportTest, SummaryCountsQueuedRecipientsOfTheQueueAsked) {
  // a@ deferred, b@ delivered (no longer queued), c@ not tried yet.
  spool::MessageInfo info = message("A", 1000, {"a@one.test", "b@one.test", "c@one.test"});
  info.recipient_states.resize(3);
  info.recipient_states[0].state = spool::DeliveryState::deferred;
  info.recipient_states[1].state = spool::DeliveryState::delivered;
  const auto total = [&](SummaryQueue queue) {
    QueueSummary summary;
    summary.queue = queue;
    summary.add(info, 1000);
    return summary.totals[0];
  };
  EXPECT_EQ(total(SummaryQueue::all), 2u);
  EXPECT_EQ(total(SummaryQueue::active), 1u);
  EXPECT_EQ(total(SummaryQueue::deferred), 1u);
  EXPECT_EQ(parse_summary_queue("deferred"), SummaryQueue::deferred);
  EXPECT_EQ(parse_summary_queue("incoming"), std::nullopt);
}

TEST(QueueReportTest, RecipientStatesJsonHasOneEntryPerRecipient) {
  spool::MessageInfo info = message("A", 1000, {"a@x.test", "b\"q@y.test", "c@z.test"});
  info.recipient_states.resize(2);  // shorter than the recipients: the rest read as pending
  info.recipient_states[0] = spool::RecipientDelivery{spool::DeliveryState::deferred, 2, 1700000000123, "451 \"busy\"\r\n",
                                                      0, false, "", false};
  info.recipient_states[1] = spool::RecipientDelivery{spool::DeliveryState::bounced, 1, 0, "550 no", 0, false,
                                                      "mx.y.test", false};
  EXPECT_EQ(recipient_states_json(info),
            "[{\"address\": \"a@x.test\", \"state\": \"deferred\", \"attempts\": 2, \"next_attempt_ms\": "
            "1700000000123, \"last_reply\": \"451 \\\"busy\\\"\\r\\n\", \"remote_mta\": \"\", \"relayed\": false}, "
            "{\"address\": \"b\\\"q@y.test\", \"state\": \"bounced\", \"attempts\": 1, \"next_attempt_ms\": 0, "
            "\"last_reply\": \"550 no\", \"remote_mta\": \"mx.y.test\", \"relayed\": false}, "
            "{\"address\": \"c@z.test\", \"state\": \"pending\", \"attempts\": 0, \"next_attempt_ms\": 0, "
            "\"last_reply\": \"\", \"remote_mta\": \"\", \"relayed\": false}]");
  info.recipient_states[1].state = spool::DeliveryState::delivered;
  info.recipient_states[1].relayed = true;
  EXPECT_NE(recipient_states_json(info).find("\"state\": \"delivered\""), std::string::npos);
  EXPECT_NE(recipient_states_json(info).find("\"relayed\": true"), std::string::npos);
  EXPECT_EQ(recipient_states_json(message("B", 1, {})), "[]");
}

TEST(ClientLimitsTest, ConcurrentConnectionsPerAddress) {
  ClientLimits limits(2, 0);
  EXPECT_EQ(limits.admit("192.0.2.1", 0), ClientAdmission::admitted);
  EXPECT_EQ(limits.admit("192.0.2.1", 0), ClientAdmission::admitted);
  EXPECT_EQ(limits.admit("192.0.2.1", 0), ClientAdmission::too_many_connections);
  EXPECT_EQ(limits.admit("192.0.2.2", 0), ClientAdmission::admitted);
  limits.release("192.0.2.1");
  EXPECT_EQ(limits.admit("192.0.2.1", 0), ClientAdmission::admitted);
}

TEST(ClientLimitsTest, RatePerMinute) {
  ClientLimits limits(0, 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(limits.admit("192.0.2.1", 1000), ClientAdmission::admitted);
    limits.release("192.0.2.1");
  }
  EXPECT_EQ(limits.admit("192.0.2.1", 2000), ClientAdmission::rate_exceeded);
  EXPECT_EQ(limits.admit("192.0.2.1", 61'000), ClientAdmission::admitted) << "a new minute";
}

TEST(MetricsTest, PrometheusTextSumsShards) {
  ShardMetrics a;
  ShardMetrics b;
  a.add(a.messages_accepted, 3);
  b.add(b.messages_accepted, 4);
  b.reject(Rejection::relay_denied);
  SpoolSnapshot spool;
  spool.metrics.fsyncs = 5;
  spool.metrics.fsync_latency_bucket[0] = 5;
  spool.messages = 2;
  spool.free_bytes = 1000;
  SpoolSnapshot low = spool;
  low.messages = 3;
  low.below_min_free = true;
  const std::string text = render_prometheus({&a, &b}, {spool, low});
  EXPECT_NE(text.find("sluice_messages_accepted_total 7\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_rejections_total{reason=\"relay_denied\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_spool_fsyncs_total 10\n"), std::string::npos);
  // Gauges from the spool snapshots taken when rendering (never a stale counter).
  EXPECT_NE(text.find("sluice_queue_messages 5\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_spool_free_bytes{shard=\"1\"} 1000\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_spool_below_min_free{shard=\"0\"} 0\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_spool_below_min_free{shard=\"1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_spool_fsync_seconds_bucket{le=\"+Inf\"} 10\n"), std::string::npos);
}

// Issue 6: log lines dropped under pressure are counted, and the count is in /metrics.
TEST(MetricsTest, DroppedLogLinesAreCounted) {
  LogBuffer log;
  const std::string fields(1000, 'x');
  for (size_t i = 0; i < LogBuffer::kPendingOctetsMax / 1000 + 100; ++i) {
    log.line(fields);
  }
  EXPECT_GT(log.dropped(), 0u);
  ShardMetrics a;
  ShardMetrics b;
  a.log_lines_dropped.store(log.dropped());
  b.log_lines_dropped.store(2);
  const std::string text = render_prometheus({&a, &b}, {});
  EXPECT_NE(text.find("# TYPE sluice_log_lines_dropped_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_log_lines_dropped_total " + std::to_string(log.dropped() + 2) + "\n"), std::string::npos);
}

}  // namespace
}  // namespace sluice::app
