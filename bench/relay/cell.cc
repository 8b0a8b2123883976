#include "bench/relay/cell.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/str_format.h"
#include "bench/relay/child_process.h"
#include "bench/relay/proc_stats.h"
#include "bench/send.h"
#include "bench/sink/sink.h"
#include "engine/io/assert.h"
#include "engine/io/clock.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

// The sink's address: not Sluice's 127.0.0.1, so that the relay's own listener and the next hop
// are told apart at a glance in its logs (and a loop check never mistakes one for the other).
constexpr std::string_view kSinkHost = "127.0.0.3";
constexpr uint64_t kPollMs = 20;
constexpr uint64_t kRelayCheckMs = 1000;  // how often the wait asks the relay whether it still runs
constexpr size_t kLostExamplesMax = 10;

// `count` sink addresses from kSinkHost up; with more than one, all on one free port (MX hosts
// share the port Sluice delivers on).
absl::Status sink_addresses(uint32_t count, std::vector<io::SocketAddress>& out) {
  if (count < 1 || count > kMxHostsMax) {
    return absl::InvalidArgumentError(str_cat("--mx-hosts must be from 1 to ", kMxHostsMax));
  }
  uint16_t port = 0;
  if (count > 1) {
    absl::StatusOr<uint16_t> free = free_port(std::string(kSinkHost));
    if (!free.ok()) {
      return free.status();
    }
    port = *free;
  }
  absl::StatusOr<io::SocketAddress> first = io::parse_ip(kSinkHost, port);
  SLUICE_ASSERT(first.ok() && first->family() == AF_INET);
  const auto* sin = reinterpret_cast<const sockaddr_in*>(first->get());
  for (uint32_t i = 0; i < count; ++i) {
    in_addr address{};
    address.s_addr = htonl(ntohl(sin->sin_addr.s_addr) + i);
    out.push_back(io::SocketAddress::ipv4(address, port));
  }
  return absl::OkStatus();
}

std::string size_text(uint64_t octets) {
  if (octets % (1024 * 1024) == 0) {
    return str_cat(octets / (1024 * 1024), "m");
  }
  if (octets % 1024 == 0) {
    return str_cat(octets / 1024, "k");
  }
  return str_cat(octets);
}

double cpu_us(uint64_t ticks) {
  return ticks_to_seconds(ticks) * 1e6;
}

void sleep_ms(uint64_t ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

absl::StatusOr<std::string> make_workdir(const std::string& tmpdir) {
  std::string pattern = tmpdir + "/sluice-bench-relay-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(str_cat("mkdtemp under ", tmpdir, " failed"));
  }
  return pattern;
}

// Until the sink has `accepted` distinct ids, the stall timeout passes without a new arrival, or
// the relay stops answering.
absl::Status wait_for_arrivals(const SinkServer& sink, RelayUnderTest& relay, uint64_t accepted,
                               uint64_t stall_timeout_ms) {
  uint64_t seen = 0;
  uint64_t progress_ms = io::monotonic_ms();
  uint64_t relay_checked_ms = progress_ms;
  for (;;) {
    const uint64_t distinct = sink.live().distinct_ids.load(std::memory_order_acquire);
    const uint64_t now_ms = io::monotonic_ms();
    if (distinct >= accepted) {
      return absl::OkStatus();
    }
    if (distinct != seen) {
      seen = distinct;
      progress_ms = now_ms;
    } else if (now_ms - progress_ms >= stall_timeout_ms) {
      return absl::DeadlineExceededError(str_cat("stalled: ", distinct, " of ", accepted,
                                                 " accepted messages arrived, none for ", stall_timeout_ms / 1000,
                                                 " s"));
    }
    if (now_ms - relay_checked_ms >= kRelayCheckMs) {
      relay_checked_ms = now_ms;
      if (absl::StatusOr<RelaySample> sample = relay.sample(); !sample.ok()) {
        return absl::Status(sample.status().code(),
                            to_absl(str_cat("while waiting for arrivals: ", to_std(sample.status().message()))));
      }
    }
    sleep_ms(kPollMs);
  }
}

// Until the relay's queue is empty, where it can tell; returns the last sample.
absl::StatusOr<RelaySample> wait_for_empty_queue(RelayUnderTest& relay, uint64_t settle_timeout_ms) {
  const uint64_t deadline_ms = io::monotonic_ms() + settle_timeout_ms;
  for (;;) {
    absl::StatusOr<RelaySample> sample = relay.sample();
    if (!sample.ok() || !sample->queued || *sample->queued == 0) {
      return sample;
    }
    if (io::monotonic_ms() >= deadline_ms) {
      return absl::DeadlineExceededError(str_cat("every message arrived, but the relay still queues ",
                                                 *sample->queued, " after ", settle_timeout_ms / 1000, " s"));
    }
    sleep_ms(kPollMs);
  }
}

SendOptions send_options(const CellSpec& spec, const CellOptions& options, const io::SocketAddress& target,
                         std::string run_id) {
  SendOptions send;
  send.targets = {target};
  send.sessions = spec.sessions;
  send.messages = spec.messages;
  send.sizes = {SizeChoice{spec.size_octets, 1}};
  send.rcpts = spec.rcpts;
  send.messages_per_connection = spec.messages_per_connection;
  send.threads = options.send_threads;
  send.run_id = std::move(run_id);
  send.progress = options.progress;
  return send;
}

// The figures from the samples and the sink's results.
void fill_figures(CellResult& result, const SendResults& sent, uint64_t send_start_us, const SinkServer& sink,
                  const RelaySample& before, const RelaySample& after, const BoxCpu& box_before,
                  const BoxCpu& box_after, bool is_limit) {
  const SinkResults& arrived = sink.results();
  result.sent = sent.messages_sent;
  result.accepted = sent.messages_accepted;
  result.arrived = arrived.total.messages;
  for (const SinkCounts& listener : arrived.listeners) {
    result.arrived_per_sink.push_back(listener.messages);
  }
  const uint64_t last_us = sink.live().last_arrival_us.load();
  result.e2e_s = last_us > send_start_us ? static_cast<double>(last_us - send_start_us) / 1e6 : 0;
  const double messages = static_cast<double>(result.accepted);
  result.msg_per_s = result.e2e_s > 0 ? messages / result.e2e_s : 0;
  if (!is_limit && result.accepted > 0) {
    result.relay_cpu_us_per_msg = cpu_us((after.cpu - before.cpu).total()) / messages;
  }
  const uint64_t box_busy = box_after.busy > box_before.busy ? box_after.busy - box_before.busy : 0;
  const uint64_t box_total = box_after.total > box_before.total ? box_after.total - box_before.total : 0;
  result.box_cpu_us_per_msg = result.accepted > 0 ? cpu_us(box_busy) / messages : 0;
  // Busy ticks over all CPUs per tick of one CPU: the total counts every CPU's ticks.
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  result.box_cpus = box_total > 0 ? static_cast<double>(box_busy) / static_cast<double>(box_total) *
                                        static_cast<double>(cpus > 0 ? cpus : 1)
                                  : 0;
  result.relay_peak_rss_octets = after.memory.peak_rss_octets;
  if (after.fsyncs && before.fsyncs && result.accepted > 0) {
    result.fsyncs_per_msg = static_cast<double>(*after.fsyncs - *before.fsyncs) / messages;
  }
  result.e2e_p50_us = arrived.arrival_latency_us.quantile(0.5);
  result.e2e_p99_us = arrived.arrival_latency_us.quantile(0.99);
  result.e2e_max_us = arrived.arrival_latency_us.max();
  result.send_p50_us = sent.latency.message.quantile(0.5);
  result.send_p99_us = sent.latency.message.quantile(0.99);
}

// Everything up to the figures; the error that ended the cell, or OK.
absl::Status drive_cell(RelayUnderTest& relay, const CellSpec& spec, const CellOptions& options,
                        uint32_t cell_index, CellResult& result, SinkServer& sink) {
  if (absl::Status status = sink.start(); !status.ok()) {
    return absl::Status(status.code(), to_absl(str_cat("sink: ", to_std(status.message()))));
  }
  absl::StatusOr<io::SocketAddress> target = relay.start(RelayStart{result.workdir, sink.addresses(),
                                                                    options.relay_threads});
  if (!target.ok()) {
    return absl::Status(target.status().code(),
                        to_absl(str_cat(relay.name(), ": ", to_std(target.status().message()))));
  }
  absl::StatusOr<RelaySample> before = relay.sample();
  absl::StatusOr<BoxCpu> box_before = box_cpu();
  if (!before.ok() || !box_before.ok()) {
    return !before.ok() ? before.status() : box_before.status();
  }
  const std::string run_id = absl::StrFormat("r%x%xc%u%s", io::wall_ms(), getpid(), cell_index, relay.name());
  const SendOptions send = send_options(spec, options, *target, run_id);
  SendResults sent;
  double send_s = 0;
  std::string used_run_id;
  const uint64_t send_start_us = io::monotonic_us();
  const absl::Status send_status = run_send(send, sent, send_s, used_run_id);
  result.send_s = send_s;
  absl::Status status = send_status.ok() ? wait_for_arrivals(sink, relay, sent.messages_accepted,
                                                             options.stall_timeout_ms)
                                         : absl::Status(send_status.code(),
                                                        to_absl(str_cat("send: ", to_std(send_status.message()))));
  absl::StatusOr<RelaySample> after = status.ok() ? wait_for_empty_queue(relay, options.settle_timeout_ms)
                                                  : relay.sample();
  absl::StatusOr<BoxCpu> box_after = box_cpu();
  if (status.ok() && !after.ok()) {
    status = after.status();
  }
  if (absl::Status stopped = relay.stop(); status.ok() && !stopped.ok()) {
    status = absl::Status(stopped.code(), to_absl(str_cat(relay.name(), " stop: ", to_std(stopped.message()))));
  }
  sink.stop();
  result.accounting = account(used_run_id, sent.accepted_messages, sink.results().received,
                              sink.results().duplicate_ids, sink.results().corrupt_ids);
  fill_figures(result, sent, send_start_us, sink, *before, after.ok() ? *after : *before, *box_before,
               box_after.ok() ? *box_after : *box_before, relay.name() == "limit");
  return status;
}

}  // namespace

std::string CellSpec::label() const {
  return str_cat(size_text(size_octets), " x", rcpts, " rcpt, ",
                 messages_per_connection == 0 ? std::string("all") : str_cat(messages_per_connection), "/conn");
}

Accounting account(std::string_view run_id, const std::vector<uint64_t>& accepted, const IdSet& received,
                   const std::vector<std::string>& duplicate_ids, const std::vector<std::string>& corrupt_ids) {
  Accounting accounting;
  IdSet accepted_set;
  for (const uint64_t n : accepted) {
    accepted_set.insert(str_cat(run_id, "-", n));
    if (!received.contains(run_id, n)) {
      ++accounting.lost;
      if (accounting.lost_examples.size() < kLostExamplesMax) {
        accounting.lost_examples.push_back(n);
      }
    }
  }
  const auto ours = [&](std::string_view id) {
    std::string_view run;
    uint64_t n = 0;
    return split_numbered_id(id, run, n) && run == run_id;
  };
  for (const std::string& id : duplicate_ids) {
    accounting.duplicated += ours(id) ? 1 : 0;
  }
  for (const std::string& id : corrupt_ids) {
    accounting.corrupt += ours(id) ? 1 : 0;
  }
  received.for_each(
      [&](std::string_view run, uint64_t n) {
        accounting.unaccepted_arrivals += run == run_id && !accepted_set.contains(run, n) ? 1 : 0;
      },
      [](std::string_view) {});
  return accounting;
}

CellResult run_cell(RelayUnderTest& relay, const CellSpec& spec, const CellOptions& options, uint32_t cell_index) {
  CellResult result;
  result.relay = std::string(relay.name());
  result.spec = spec;
  if (absl::Status status = check_not_tmpfs(options.tmpdir); !status.ok()) {
    result.error = std::string(status.message());
    return result;
  }
  absl::StatusOr<std::string> workdir = make_workdir(options.tmpdir);
  if (!workdir.ok()) {
    result.error = std::string(workdir.status().message());
    return result;
  }
  result.workdir = *workdir;
  {
    SinkServerOptions sink_options;
    if (absl::Status status = sink_addresses(options.mx_hosts, sink_options.listen); !status.ok()) {
      result.error = std::string(status.message());
      return result;
    }
    SinkServer sink(sink_options);
    if (absl::Status status = drive_cell(relay, spec, options, cell_index, result, sink); !status.ok()) {
      result.error = std::string(status.message());
    }
    (void)relay.stop();  // idempotent: an early error path has not stopped it yet
  }
  if (options.keep || !result.clean()) {
    std::fprintf(stderr, "sluice-bench relay: %s %s: working directory kept: %s\n", result.relay.c_str(),
                 spec.label().c_str(), result.workdir.c_str());
  } else {
    std::error_code error;
    std::filesystem::remove_all(result.workdir, error);
    result.workdir.clear();
  }
  return result;
}

}  // namespace sluice::bench
