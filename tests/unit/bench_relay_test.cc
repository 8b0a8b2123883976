// sluice-bench relay: the accounting of a cell (lost, duplicated, corrupt from send's accepted
// messages and the sink's ids), the /metrics reader, the Sluice config, the /proc memory reader
// and the matrix's cells.
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bench/relay/cell.h"
#include "bench/relay/matrix.h"
#include "bench/relay/proc_stats.h"
#include "bench/relay/sluice_relay.h"
#include "bench/sink/ids.h"

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

TEST(BenchRelayConfig, RoutesEverythingToTheSink) {
  const std::string config = sluice_relay_config("/var/tmp/x/spool", *io::parse_host_port("127.0.0.1:2525"),
                                                 *io::parse_host_port("127.0.0.1:9025"),
                                                 *io::parse_host_port("127.0.0.3:2526"), 2);
  EXPECT_NE(config.find("listen = [\"127.0.0.1:2525\"]"), std::string::npos);
  EXPECT_NE(config.find("threads = 2"), std::string::npos);
  EXPECT_NE(config.find("dir = \"/var/tmp/x/spool\""), std::string::npos);
  EXPECT_NE(config.find("[[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.3:2526\""), std::string::npos);
  EXPECT_NE(config.find("[admin]\nlisten = \"127.0.0.1:9025\""), std::string::npos);
  EXPECT_EQ(sluice_relay_config("/s", *io::parse_host_port("127.0.0.1:1"), *io::parse_host_port("127.0.0.1:2"),
                                *io::parse_host_port("127.0.0.3:3"), 0)
                .find("threads"),
            std::string::npos);
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

}  // namespace
}  // namespace sluice::bench
