#pragma once
// Sluice as the relay under test of `sluice-bench relay` and `compare`: `sluice serve` on a
// config of its own in the cell's working directory (spool in workdir/spool, fsync on as always,
// an admin endpoint for /metrics), started and stopped by PID. One sink address: [[route]]
// domain = "*" to it. Several (--mx-hosts): no route; Sluice resolves the recipients' domain
// through an MxDnsFixture of its own that names one equal-preference MX host per sink address,
// and delivers on their port, so its MX rotation and per-host pools are what is measured.
// And NoRelay, the limit: `send` talks to the sink straight.
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "bench/relay/child_process.h"
#include "bench/relay/mx_dns_fixture.h"
#include "bench/relay/relay_under_test.h"
#include "engine/app/http.h"

namespace sluice::bench {

// The `sluice` beside the running executable (the directory of /proc/self/exe).
std::string default_sluice_binary();

// The value of one sample in Prometheus text exposition: `series` is the name with its labels
// exactly as written ("sluice_queue_messages", "x_total{outcome=\"delivered\"}").
std::optional<double> prometheus_value(std::string_view text, std::string_view series);

// Where Sluice delivers: a [[route]] to `next_hop`, or MX lookups through `dns_server` with
// delivery on `mx_port`.
struct SluiceNextHop {
  std::optional<io::SocketAddress> route;
  std::optional<io::SocketAddress> dns_server;
  uint16_t mx_port = 25;
};

// The Sluice config for one run (TOML). `threads` 0: Sluice's default.
std::string sluice_relay_config(const std::string& spool_dir, const io::SocketAddress& listen,
                                const io::SocketAddress& admin, const SluiceNextHop& next_hop, uint32_t threads);

class SluiceRelay : public RelayUnderTest {
 public:
  explicit SluiceRelay(std::string binary) : _binary(std::move(binary)) {}
  std::string_view name() const override { return "sluice"; }
  absl::StatusOr<io::SocketAddress> start(const RelayStart& start) override;
  absl::StatusOr<RelaySample> sample() override;
  absl::Status stop() override;

 private:
  std::string _binary;
  std::string _log_path;
  ChildProcess _process;
  app::HttpEndpoint _admin;
  std::unique_ptr<MxDnsFixture> _dns;  // with several sinks; outlives the process (stop())
};

class NoRelay : public RelayUnderTest {
 public:
  std::string_view name() const override { return "limit"; }
  absl::StatusOr<io::SocketAddress> start(const RelayStart& start) override {
    if (start.sinks.empty()) {
      return absl::InvalidArgumentError("no sink address");
    }
    return start.sinks.front();
  }
  absl::StatusOr<RelaySample> sample() override { return RelaySample{}; }
  absl::Status stop() override { return absl::OkStatus(); }
};

}  // namespace sluice::bench
