// The matrix of `sluice-bench relay` and `compare`: cells, runs, the table and the JSON.
#include "bench/relay/matrix.h"

#include <cstdio>
#include <optional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/app/http.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

std::atomic<bool> g_matrix_stop{false};

std::optional<double> ratio(double a, double b) {
  if (!(a > 0) || !(b > 0)) {
    return std::nullopt;
  }
  return a / b;
}

std::string ratio_text(std::optional<double> value) {
  return value ? absl::StrFormat("%.2f", *value) : std::string("-");
}

std::string ms_text(uint64_t us) {
  return absl::StrFormat("%.1f", static_cast<double>(us) / 1000.0);
}

std::string json_number(const std::optional<double>& value) {
  return value ? absl::StrFormat("%.3f", *value) : std::string("null");
}

// The peer of a compare cell: the relay that is neither the limit nor Sluice.
const CellResult* peer_of(const MatrixCell& cell) {
  for (const CellResult& result : cell.results) {
    if (result.relay != "limit" && result.relay != "sluice") {
      return &result;
    }
  }
  return nullptr;
}

struct Ratios {
  std::optional<double> sluice_over_limit_rate;
  std::optional<double> sluice_over_peer_rate;
  std::optional<double> sluice_over_peer_cpu;
};

Ratios ratios_of(const MatrixCell& cell) {
  Ratios ratios;
  const CellResult* sluice = cell.find("sluice");
  const CellResult* limit = cell.find("limit");
  const CellResult* peer = peer_of(cell);
  if (sluice == nullptr || !sluice->error.empty()) {
    return ratios;
  }
  if (limit != nullptr && limit->error.empty()) {
    ratios.sluice_over_limit_rate = ratio(sluice->msg_per_s, limit->msg_per_s);
  }
  if (peer != nullptr && peer->error.empty()) {
    ratios.sluice_over_peer_rate = ratio(sluice->msg_per_s, peer->msg_per_s);
    if (sluice->relay_cpu_us_per_msg && peer->relay_cpu_us_per_msg) {
      ratios.sluice_over_peer_cpu = ratio(*sluice->relay_cpu_us_per_msg, *peer->relay_cpu_us_per_msg);
    }
  }
  return ratios;
}

void append_result_json(std::string& out, const CellResult& r) {
  str_append(&out, "{\"relay\":\"", app::json_escape(r.relay), "\",\"ok\":", r.clean() ? "true" : "false",
             ",\"error\":");
  if (r.error.empty()) {
    out += "null";
  } else {
    str_append(&out, "\"", app::json_escape(r.error), "\"");
  }
  if (!r.workdir.empty()) {
    str_append(&out, ",\"workdir\":\"", app::json_escape(r.workdir), "\"");
  }
  str_append(&out, ",\"sent\":", r.sent, ",\"accepted\":", r.accepted, ",\"arrived\":", r.arrived,
             ",\"arrived_per_sink\":[", absl::StrJoin(r.arrived_per_sink, ","), "]",
             absl::StrFormat(",\"send_s\":%.3f,\"e2e_s\":%.3f,\"msg_per_s\":%.1f", r.send_s, r.e2e_s, r.msg_per_s),
             ",\"relay_cpu_us_per_msg\":", json_number(r.relay_cpu_us_per_msg),
             absl::StrFormat(",\"box_cpu_us_per_msg\":%.3f,\"box_cpus\":%.2f", r.box_cpu_us_per_msg, r.box_cpus),
             ",\"relay_peak_rss_octets\":", r.relay_peak_rss_octets,
             ",\"fsyncs_per_msg\":", json_number(r.fsyncs_per_msg),
             ",\"e2e_latency_us\":{\"p50\":", r.e2e_p50_us, ",\"p99\":", r.e2e_p99_us, ",\"max\":", r.e2e_max_us, "}",
             ",\"send_latency_us\":{\"p50\":", r.send_p50_us, ",\"p99\":", r.send_p99_us, "}",
             ",\"lost\":", r.accounting.lost, ",\"duplicated\":", r.accounting.duplicated,
             ",\"corrupt\":", r.accounting.corrupt, ",\"unaccepted_arrivals\":", r.accounting.unaccepted_arrivals,
             ",\"lost_examples\":[");
  for (size_t i = 0; i < r.accounting.lost_examples.size(); ++i) {
    str_append(&out, i == 0 ? "" : ",", r.accounting.lost_examples[i]);
  }
  out += "]}";
}

}  // namespace

const CellResult* MatrixCell::find(std::string_view relay) const {
  for (const CellResult& result : results) {
    if (result.relay == relay) {
      return &result;
    }
  }
  return nullptr;
}

std::vector<CellSpec> matrix_specs(const MatrixOptions& options) {
  std::vector<CellSpec> specs;
  for (const uint64_t size : options.sizes) {
    for (const uint32_t rcpts : options.rcpts) {
      for (const uint32_t sessions : options.sessions) {
        for (const uint32_t per_connection : options.messages_per_connection) {
          specs.push_back(CellSpec{size, rcpts, sessions, per_connection, options.messages});
        }
      }
    }
  }
  return specs;
}

void request_matrix_stop() {
  g_matrix_stop.store(true, std::memory_order_relaxed);
}

std::vector<MatrixCell> run_matrix(const MatrixOptions& options, const std::vector<RelayFactory>& relays) {
  std::vector<MatrixCell> cells;
  uint32_t index = 0;
  for (const CellSpec& spec : matrix_specs(options)) {
    if (g_matrix_stop.load(std::memory_order_relaxed)) {
      std::fprintf(stderr, "sluice-bench: interrupted: the cells left are not run\n");
      break;
    }
    MatrixCell& cell = cells.emplace_back();
    cell.spec = spec;
    for (const RelayFactory& factory : relays) {
      std::fprintf(stderr, "sluice-bench: cell %s through %s...\n", spec.label().c_str(), factory.name.c_str());
      std::unique_ptr<RelayUnderTest> relay = factory.make();
      cell.results.push_back(run_cell(*relay, spec, options.cell, index++));
      const CellResult& result = cell.results.back();
      if (!result.error.empty()) {
        std::fprintf(stderr, "sluice-bench: %s %s failed: %s\n", result.relay.c_str(), spec.label().c_str(),
                     result.error.c_str());
      }
    }
  }
  return cells;
}

std::string matrix_table(const std::vector<MatrixCell>& cells, bool with_ratios) {
  std::string out = absl::StrFormat("%-24s %-8s %8s %9s %9s %9s %8s %7s %8s %8s %8s %8s %8s %5s %4s %4s\n", "cell",
                                    "relay", "accepted", "msg/s", "cpu_us/m", "box_us/m", "rss_MiB", "fsync/m",
                                    "e2e_p50", "e2e_p99", "e2e_max", "send_p50", "send_p99", "lost", "dup", "bad");
  for (const MatrixCell& cell : cells) {
    for (const CellResult& r : cell.results) {
      str_append(&out, absl::StrFormat(
                           "%-24s %-8s %8d %9.0f %9s %9.0f %8.1f %7s %8s %8s %8s %8s %8s %5d %4d %4d\n",
                           cell.spec.label(), r.relay, r.accepted, r.msg_per_s,
                           r.relay_cpu_us_per_msg ? absl::StrFormat("%.0f", *r.relay_cpu_us_per_msg) : "-",
                           r.box_cpu_us_per_msg, static_cast<double>(r.relay_peak_rss_octets) / (1 << 20),
                           r.fsyncs_per_msg ? absl::StrFormat("%.3f", *r.fsyncs_per_msg) : "-", ms_text(r.e2e_p50_us),
                           ms_text(r.e2e_p99_us), ms_text(r.e2e_max_us), ms_text(r.send_p50_us),
                           ms_text(r.send_p99_us), r.accounting.lost, r.accounting.duplicated,
                           r.accounting.corrupt));
      if (r.arrived_per_sink.size() > 1) {
        str_append(&out, "    arrived per sink address (MX host): ", absl::StrJoin(r.arrived_per_sink, " "), "\n");
      }
      if (!r.error.empty()) {
        str_append(&out, "    FAILED: ", r.error, "\n");
      }
    }
    if (with_ratios) {
      const Ratios ratios = ratios_of(cell);
      const CellResult* peer = peer_of(cell);
      const std::string peer_name = peer != nullptr ? peer->relay : "peer";
      str_append(&out, "    ratios: sluice/limit rate ", ratio_text(ratios.sluice_over_limit_rate), ", sluice/",
                 peer_name, " rate ", ratio_text(ratios.sluice_over_peer_rate), ", sluice/", peer_name,
                 " cpu per msg ", ratio_text(ratios.sluice_over_peer_cpu), "\n");
    }
  }
  str_append(&out, "latencies in ms: e2e = the transaction's start at send (X-Sluice-Bench-Sent) to the arrival at "
                   "the sink; send = the transaction's start to its final reply\n");
  return out;
}

std::string matrix_json(std::string_view command, const MatrixOptions& options, const std::vector<MatrixCell>& cells) {
  std::string out = str_cat("{\"command\":\"", command, "\",\"ok\":", matrix_clean(cells) ? "true" : "false",
                            ",\"messages_per_cell\":", options.messages, ",\"tmpdir\":\"",
                            app::json_escape(options.cell.tmpdir), "\",\"cells\":[");
  for (size_t i = 0; i < cells.size(); ++i) {
    const MatrixCell& cell = cells[i];
    str_append(&out, i == 0 ? "{" : ",{", "\"label\":\"", app::json_escape(cell.spec.label()),
               "\",\"size\":", cell.spec.size_octets, ",\"rcpts\":", cell.spec.rcpts,
               ",\"sessions\":", cell.spec.sessions, ",\"messages_per_connection\":", cell.spec.messages_per_connection,
               ",\"messages\":", cell.spec.messages, ",\"results\":[");
    for (size_t j = 0; j < cell.results.size(); ++j) {
      if (j > 0) {
        out += ",";
      }
      append_result_json(out, cell.results[j]);
    }
    const Ratios ratios = ratios_of(cell);
    str_append(&out, "],\"ratios\":{\"sluice_over_limit_rate\":", json_number(ratios.sluice_over_limit_rate),
               ",\"sluice_over_peer_rate\":", json_number(ratios.sluice_over_peer_rate),
               ",\"sluice_over_peer_cpu_per_msg\":", json_number(ratios.sluice_over_peer_cpu), "}}");
  }
  out += "]}\n";
  return out;
}

std::vector<PlotCell> plot_cells(const std::vector<MatrixCell>& cells) {
  std::vector<PlotCell> plot;
  for (const MatrixCell& cell : cells) {
    PlotCell& out = plot.emplace_back();
    out.label = cell.spec.label();
    for (const CellResult& r : cell.results) {
      out.series.push_back(PlotSeries{r.relay, r.msg_per_s, static_cast<double>(r.e2e_p50_us) / 1000.0,
                                      static_cast<double>(r.e2e_p99_us) / 1000.0, !r.error.empty()});
    }
  }
  return plot;
}

bool matrix_clean(const std::vector<MatrixCell>& cells) {
  for (const MatrixCell& cell : cells) {
    for (const CellResult& result : cell.results) {
      if (!result.clean()) {
        return false;
      }
    }
  }
  return true;
}

}  // namespace sluice::bench
