// sluice-bench relay: the accounting of a cell (lost, duplicated, corrupt from send's accepted
// messages and the sink's ids), the /metrics reader, the Sluice config, the /proc memory reader
// and the matrix's cells.
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bench/relay/cell.h"
#include "bench/relay/mx_dns_fixture.h"
#include "bench/relay/matrix.h"
#include "bench/relay/plot.h"
#include "bench/relay/postfix_relay.h"
#include "bench/relay/proc_stats.h"
#include "bench/relay/sluice_relay.h"
#include "bench/sink/ids.h"
#include "engine/io/strings.h"
#include "resolver/dns_message.h"
#include "resolver/dns_testing.h"
#include "resolver/mx_plan.h"

namespace sluice::bench {
namespace {

TEST(BenchRelayAccounting, EveryAcceptedMessageArrivesOnce) {
  IdSet received;
  for (uint64_t n = 0; n < 5; ++n) {
    received.insert("run-" + std::to_string(n));
  }
  const Accounting accounting = account("run", {0, 1, 2, 3, 4}, received, {}, {});
  EXPECT_TRUE(accounting.clean());
  EXPECT_EQ(accounting.lost, 0u);
  EXPECT_EQ(accounting.unaccepted_arrivals, 0u);
}

TEST(BenchRelayAccounting, LostDuplicatedCorruptAndUnaccepted) {
  IdSet received;
  for (const char* id : {"run-0", "run-2", "run-3", "run-9", "other-1"}) {
    received.insert(id);
  }
  // 1 and 4 were accepted and never arrived; 2 arrived twice more, 3 once corrupt; 9 arrived
  // though send did not get 250 for it (not a loss); ids of another run do not count.
  const Accounting accounting = account("run", {0, 1, 2, 3, 4}, received, {"run-2", "run-2", "other-1"},
                                        {"run-3", "other-1"});
  EXPECT_FALSE(accounting.clean());
  EXPECT_EQ(accounting.lost, 2u);
  EXPECT_EQ(accounting.lost_examples, (std::vector<uint64_t>{1, 4}));
  EXPECT_EQ(accounting.duplicated, 2u);
  EXPECT_EQ(accounting.corrupt, 1u);
  EXPECT_EQ(accounting.unaccepted_arrivals, 1u);
}

TEST(BenchRelayAccounting, NothingArrived) {
  const Accounting accounting = account("run", {7, 8}, IdSet{}, {}, {});
  EXPECT_EQ(accounting.lost, 2u);
}

TEST(BenchRelayMetrics, ReadsOneSeriesExactly) {
  const std::string text =
      "# HELP sluice_spool_fsyncs_total Spool fdatasyncs completed.\n"
      "# TYPE sluice_spool_fsyncs_total counter\n"
      "sluice_spool_fsyncs_total 1234\n"
      "sluice_spool_fsyncs_total_other 5\n"
      "sluice_delivery_recipients_total{outcome=\"delivered\"} 7 1700000000\n"
      "sluice_queue_messages 0\n";
  EXPECT_EQ(prometheus_value(text, "sluice_spool_fsyncs_total"), 1234.0);
  EXPECT_EQ(prometheus_value(text, "sluice_queue_messages"), 0.0);
  EXPECT_EQ(prometheus_value(text, "sluice_delivery_recipients_total{outcome=\"delivered\"}"), 7.0);
  EXPECT_FALSE(prometheus_value(text, "sluice_spool").has_value());
}

SluiceNextHop route_to(std::string_view address) {
  SluiceNextHop next_hop;
  next_hop.route = *io::parse_host_port(address);
  return next_hop;
}

TEST(BenchRelayConfig, RoutesEverythingToTheSink) {
  const std::string config = sluice_relay_config("/var/tmp/x/spool", *io::parse_host_port("127.0.0.1:2525"),
                                                 *io::parse_host_port("127.0.0.1:9025"),
                                                 route_to("127.0.0.3:2526"), 2);
  EXPECT_NE(config.find("listen = [\"127.0.0.1:2525\"]"), std::string::npos);
  EXPECT_NE(config.find("threads = 2"), std::string::npos);
  EXPECT_NE(config.find("dir = \"/var/tmp/x/spool\""), std::string::npos);
  EXPECT_NE(config.find("[[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.3:2526\""), std::string::npos);
  EXPECT_NE(config.find("[admin]\nlisten = \"127.0.0.1:9025\""), std::string::npos);
  EXPECT_EQ(sluice_relay_config("/s", *io::parse_host_port("127.0.0.1:1"), *io::parse_host_port("127.0.0.1:2"),
                                route_to("127.0.0.3:3"), 0)
                .find("threads"),
            std::string::npos);
}

TEST(BenchRelayConfig, ResolvesThroughTheFixtureWithSeveralSinks) {
  SluiceNextHop next_hop;
  next_hop.dns_server = *io::parse_host_port("127.0.0.1:5353");
  next_hop.mx_port = 2526;
  const std::string config = sluice_relay_config("/s", *io::parse_host_port("127.0.0.1:1"),
                                                 *io::parse_host_port("127.0.0.1:2"), next_hop, 0);
  EXPECT_NE(config.find("[dns]\nservers = [\"127.0.0.1:5353\"]"), std::string::npos);
  EXPECT_NE(config.find("[delivery]\nport = 2526"), std::string::npos);
  EXPECT_EQ(config.find("[[route]]"), std::string::npos);
}

std::string dns_query(uint16_t id, std::string_view name, resolver::DnsType type) {
  resolver::testing::DnsWireWriter query;
  query.header(id, 0x0100, 1, 0, 0, 0);  // RD
  query.question(name, type);
  return query.wire();
}

TEST(BenchRelayMxFixture, NamesOneEqualPreferenceHostPerSink) {
  const std::vector<io::SocketAddress> sinks = {*io::parse_host_port("127.0.0.3:2526"),
                                                *io::parse_host_port("127.0.0.4:2526"),
                                                *io::parse_host_port("127.0.0.5:2526")};
  absl::StatusOr<resolver::DnsMessage> mx =
      resolver::parse_dns_message(mx_fixture_response(dns_query(7, "Example.TEST", resolver::DnsType::mx), sinks));
  ASSERT_TRUE(mx.ok()) << mx.status();
  EXPECT_EQ(mx->header.id, 7);
  EXPECT_TRUE(mx->header.response);
  const resolver::MxLookup lookup = resolver::mx_lookup_from(*mx, "example.test");
  ASSERT_EQ(lookup.status, resolver::LookupStatus::ok);
  ASSERT_EQ(lookup.hosts.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(lookup.hosts[i].preference, 10);
    EXPECT_EQ(lookup.hosts[i].host, str_cat("mx", i + 1, ".example.test"));
  }
  absl::StatusOr<resolver::DnsMessage> a =
      resolver::parse_dns_message(mx_fixture_response(dns_query(8, "mx2.example.test", resolver::DnsType::a), sinks));
  ASSERT_TRUE(a.ok()) << a.status();
  const resolver::AddressLookup address = resolver::address_lookup_from(*a, "mx2.example.test");
  ASSERT_EQ(address.status, resolver::LookupStatus::ok);
  ASSERT_EQ(address.addresses.size(), 1u);
  EXPECT_EQ(address.addresses[0].to_string().substr(0, 9), "127.0.0.4");
  absl::StatusOr<resolver::DnsMessage> aaaa = resolver::parse_dns_message(
      mx_fixture_response(dns_query(9, "mx2.example.test", resolver::DnsType::aaaa), sinks));
  ASSERT_TRUE(aaaa.ok()) << aaaa.status();
  EXPECT_EQ(resolver::address_lookup_from(*aaaa, "mx2.example.test").status, resolver::LookupStatus::no_records);
  absl::StatusOr<resolver::DnsMessage> other = resolver::parse_dns_message(
      mx_fixture_response(dns_query(10, "mx9.example.test", resolver::DnsType::a), sinks));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(resolver::address_lookup_from(*other, "mx9.example.test").status, resolver::LookupStatus::nxdomain);
  EXPECT_EQ(mx_fixture_response("short", sinks), "");
}

// /proc/PID/status writes "VmRSS:\t   1234 kB": a tab before the padding.
TEST(BenchRelayProc, MemoryOfThisProcessIsNotZero) {
  absl::StatusOr<Memory> memory = process_memory(getpid());
  ASSERT_TRUE(memory.ok());
  EXPECT_GT(memory->rss_octets, 0u);
  EXPECT_GE(memory->peak_rss_octets, memory->rss_octets);
  EXPECT_GT(tree_memory(getpid()).rss_octets, 0u);
}

TEST(BenchRelayMatrix, CellsAreTheProductOfTheLists) {
  MatrixOptions options;
  options.sizes = {1024, 100 * 1024};
  options.rcpts = {1, 10};
  options.sessions = {50};
  options.messages_per_connection = {1, 0};
  options.messages = 10;
  const std::vector<CellSpec> specs = matrix_specs(options);
  ASSERT_EQ(specs.size(), 8u);
  EXPECT_EQ(specs.front().label(), "1k x1 rcpt, 1/conn");
  EXPECT_EQ(specs.back().label(), "100k x10 rcpt, all/conn");
  EXPECT_EQ(specs.back().messages, 10u);
}

TEST(BenchRelayMatrix, PlotCellsHaveOneSeriesPerRelay) {
  MatrixCell cell;
  cell.spec = CellSpec{1024, 1, 4, 0, 10};
  CellResult limit;
  limit.relay = "limit";
  limit.msg_per_s = 1000;
  limit.e2e_p50_us = 1500;
  CellResult sluice;
  sluice.relay = "sluice";
  sluice.error = "stalled";
  cell.results = {limit, sluice};
  const std::vector<PlotCell> plot = plot_cells({cell});
  ASSERT_EQ(plot.size(), 1u);
  ASSERT_EQ(plot[0].series.size(), 2u);
  EXPECT_EQ(plot[0].series[0].name, "limit");
  EXPECT_DOUBLE_EQ(plot[0].series[0].latency_p50_ms, 1.5);
  EXPECT_TRUE(plot[0].series[1].failed);
  EXPECT_FALSE(matrix_clean({cell}));
}

// Open and close tags balance (self-closing ones aside): a well-formed document's shape.
bool tags_balance(const std::string& svg) {
  std::vector<std::string> open;
  for (size_t at = svg.find('<'); at != std::string::npos; at = svg.find('<', at + 1)) {
    if (svg.compare(at, 2, "<?") == 0) {
      continue;
    }
    const size_t end = svg.find('>', at);
    if (end == std::string::npos) {
      return false;
    }
    const std::string tag = svg.substr(at + 1, end - at - 1);
    if (tag.back() == '/') {
      continue;
    }
    if (tag.front() == '/') {
      if (open.empty() || open.back() != tag.substr(1)) {
        return false;
      }
      open.pop_back();
    } else {
      open.push_back(tag.substr(0, tag.find(' ')));
    }
  }
  return open.empty();
}

TEST(BenchRelayPlot, OneWellFormedDocumentWithEveryCellAndSeries) {
  std::vector<PlotCell> cells(2);
  cells[0].label = "1k <x1> & more";
  cells[0].series = {{"limit", 9000, 0.2, 0.6}, {"sluice", 4000, 2.5, 25}, {"postfix", 600, 140, 1000}};
  cells[1].label = "100k x10 rcpt, 1/conn";
  cells[1].series = {{"limit", 900, 1, 3}, {"sluice", 400, 5, 40}, {"postfix", 0, 0, 0, true}};
  const std::string svg = plot_svg("a & b", cells);
  EXPECT_TRUE(svg.starts_with("<?xml"));
  EXPECT_TRUE(tags_balance(svg)) << svg;
  EXPECT_NE(svg.find("1k &lt;x1&gt; &amp; more"), std::string::npos);
  EXPECT_EQ(svg.find("<x1>"), std::string::npos);
  EXPECT_NE(svg.find("a &amp; b"), std::string::npos);
  EXPECT_NE(svg.find(">failed<"), std::string::npos);
  for (const char* name : {"limit", "sluice", "postfix", "100k x10 rcpt, 1/conn", "9.0k", "4.0k"}) {
    EXPECT_NE(svg.find(name), std::string::npos) << name;
  }
  EXPECT_TRUE(tags_balance(plot_svg("empty", {})));
}

TEST(BenchRelayPostfix, PrivateInstanceConfig) {
  const io::SocketAddress sink = *io::parse_host_port("127.0.0.3:2525");
  const std::string main_cf = postfix_main_cf("/var/tmp/cell", sink);
  EXPECT_NE(main_cf.find("queue_directory = /var/tmp/cell/queue\n"), std::string::npos);
  EXPECT_NE(main_cf.find("data_directory = /var/tmp/cell/data\n"), std::string::npos);
  EXPECT_NE(main_cf.find("relayhost = [127.0.0.3]:2525\n"), std::string::npos);
  EXPECT_NE(main_cf.find("mydestination =\n"), std::string::npos);
  EXPECT_EQ(main_cf.find("/etc/postfix"), std::string::npos);
  const std::string master_cf = postfix_master_cf(40025);
  EXPECT_TRUE(master_cf.starts_with("127.0.0.1:40025 inet"));
  EXPECT_NE(master_cf.find("\nqmgr "), std::string::npos);
  EXPECT_EQ(master_cf.find("local "), std::string::npos);  // no local delivery service
}

}  // namespace
}  // namespace sluice::bench
