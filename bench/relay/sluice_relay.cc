#include "bench/relay/sluice_relay.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

constexpr std::string_view kHost = "127.0.0.1";
constexpr uint64_t kStartTimeoutMs = 30'000;
constexpr uint64_t kStopGraceMs = 20'000;  // a clean stop flushes the spool's last commit

absl::Status write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    return absl::InternalError(str_cat(path, ": cannot be written"));
  }
  return absl::OkStatus();
}

// Two distinct free ports on kHost (free_port releases each at once, so the same one may come
// back).
absl::Status two_ports(uint16_t& first, uint16_t& second) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    absl::StatusOr<uint16_t> a = free_port(std::string(kHost));
    absl::StatusOr<uint16_t> b = free_port(std::string(kHost));
    if (!a.ok()) {
      return a.status();
    }
    if (!b.ok()) {
      return b.status();
    }
    if (*a != *b) {
      first = *a;
      second = *b;
      return absl::OkStatus();
    }
  }
  return absl::UnavailableError("no two distinct free ports");
}

}  // namespace

std::string default_sluice_binary() {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) {
    return "sluice";
  }
  return (self.parent_path() / "sluice").string();
}

std::optional<double> prometheus_value(std::string_view text, std::string_view series) {
  for (const absl::string_view piece : absl::StrSplit(to_absl(text), '\n')) {
    const std::string_view line = to_std(piece);
    if (line.size() <= series.size() || line.substr(0, series.size()) != series || line[series.size()] != ' ') {
      continue;
    }
    std::string_view value = strip_whitespace(line.substr(series.size() + 1));
    value = value.substr(0, value.find(' '));  // a timestamp may follow
    double number = 0;
    if (absl::SimpleAtod(to_absl(value), &number)) {
      return number;
    }
  }
  return std::nullopt;
}

std::string sluice_relay_config(const std::string& spool_dir, const io::SocketAddress& listen,
                                const io::SocketAddress& admin, const SluiceNextHop& next_hop, uint32_t threads) {
  std::string config = str_cat("[server]\nhostname = \"sluice-bench.invalid\"\nlisten = [\"", listen.to_string(),
                               "\"]\n");
  if (threads > 0) {
    str_append(&config, "threads = ", threads, "\n");
  }
  // fsync is always on; min_free_bytes 0: a small test disk does not refuse mail.
  str_append(&config, "[spool]\ndir = \"", spool_dir, "\"\nmin_free_bytes = 0\n");
  if (next_hop.dns_server) {
    str_append(&config, "[dns]\nservers = [\"", next_hop.dns_server->to_string(), "\"]\n", "[delivery]\nport = ",
               next_hop.mx_port, "\n");
  } else {
    // Never the machine's resolver: with the route no lookup is made anyway.
    str_append(&config, "[dns]\nservers = [\"127.0.0.1:9\"]\n");
  }
  if (next_hop.route) {
    str_append(&config, "[[route]]\ndomain = \"*\"\nnext_hop = \"", next_hop.route->to_string(), "\"\n");
  }
  str_append(&config, "[admin]\nlisten = \"", admin.to_string(), "\"\n");
  return config;
}

absl::StatusOr<io::SocketAddress> SluiceRelay::start(const RelayStart& start) {
  if (start.sinks.empty()) {
    return absl::InvalidArgumentError("no sink address");
  }
  SluiceNextHop next_hop;
  if (start.sinks.size() == 1) {
    next_hop.route = start.sinks.front();
  } else {
    for (const io::SocketAddress& sink : start.sinks) {
      if (sink.port() != start.sinks.front().port()) {
        return absl::InvalidArgumentError("MX hosts of the DNS fixture must share one port");
      }
    }
    absl::StatusOr<std::unique_ptr<MxDnsFixture>> dns = MxDnsFixture::start(start.sinks);
    if (!dns.ok()) {
      return dns.status();
    }
    _dns = *std::move(dns);
    next_hop.dns_server = _dns->address();
    next_hop.mx_port = start.sinks.front().port();
  }
  uint16_t port = 0;
  uint16_t admin_port = 0;
  if (absl::Status status = two_ports(port, admin_port); !status.ok()) {
    return status;
  }
  absl::StatusOr<io::SocketAddress> listen = io::parse_ip(kHost, port);
  absl::StatusOr<io::SocketAddress> admin = io::parse_ip(kHost, admin_port);
  if (!listen.ok() || !admin.ok()) {
    return absl::InternalError("cannot form the loopback addresses");
  }
  const std::string spool = start.workdir + "/spool";
  std::error_code error;
  std::filesystem::create_directories(spool, error);
  if (error) {
    return absl::InternalError(str_cat(spool, ": ", error.message()));
  }
  const std::string config_path = start.workdir + "/sluice.toml";
  if (absl::Status status = write_text(config_path, sluice_relay_config(spool, *listen, *admin, next_hop, start.threads));
      !status.ok()) {
    return status;
  }
  _log_path = start.workdir + "/sluice.log";
  absl::StatusOr<ChildProcess> child = ChildProcess::spawn({_binary, "serve", "--config", config_path}, _log_path);
  if (!child.ok()) {
    return child.status();
  }
  _process = std::move(*child);
  if (absl::Status status = wait_for_greeting(*listen, kStartTimeoutMs, &_process); !status.ok()) {
    (void)_process.stop();
    return absl::Status(status.code(), to_absl(str_cat(to_std(status.message()), " (see ", _log_path, ")")));
  }
  _admin.tcp = *admin;
  return *listen;
}

absl::StatusOr<RelaySample> SluiceRelay::sample() {
  if (!_process.running()) {
    return absl::UnavailableError(str_cat("sluice exited (see ", _log_path, ")"));
  }
  RelaySample sample;
  sample.cpu = tree_cpu(_process.pid());
  sample.memory = tree_memory(_process.pid());
  absl::StatusOr<app::HttpResponse> metrics = app::http_call(_admin, "GET", "/metrics");
  if (!metrics.ok()) {
    return absl::Status(metrics.status().code(),
                        to_absl(str_cat("sluice /metrics: ", to_std(metrics.status().message()))));
  }
  if (metrics->status != 200) {
    return absl::InternalError(str_cat("sluice /metrics: HTTP ", metrics->status));
  }
  if (const std::optional<double> fsyncs = prometheus_value(metrics->body, "sluice_spool_fsyncs_total")) {
    sample.fsyncs = static_cast<uint64_t>(*fsyncs);
  }
  if (const std::optional<double> queued = prometheus_value(metrics->body, "sluice_queue_messages")) {
    sample.queued = static_cast<uint64_t>(*queued);
  }
  return sample;
}

absl::Status SluiceRelay::stop() {
  if (_process.pid() < 0) {
    return absl::OkStatus();
  }
  absl::StatusOr<int> status = _process.stop(kStopGraceMs);
  _dns.reset();  // nothing asks it any more
  if (!status.ok()) {
    return status.status();
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(str_cat("sluice exited with status ", *status, " (see ", _log_path, ")"));
  }
  return absl::OkStatus();
}

}  // namespace sluice::bench
