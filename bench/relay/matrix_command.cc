// The command lines of `sluice-bench relay` and `sluice-bench compare` (see matrix.h).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>

#include "absl/strings/str_split.h"
#include "bench/common/options.h"
#include "bench/relay/matrix.h"
#include "bench/relay/plot.h"
#include "bench/relay/postfix_relay.h"
#include "bench/relay/sluice_relay.h"
#include "bench/send.h"
#include "engine/io/strings.h"
#include "engine/smtp/client_session.h"

namespace sluice::bench {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

absl::StatusOr<RelayFactory> peer_factory(const std::string& peer) {
  if (peer == "postfix") {
    return RelayFactory{"postfix", [] { return make_postfix_relay(); }};
  }
  return absl::InvalidArgumentError(str_cat("--peer: '", peer, "' is not postfix or none"));
}

absl::Status write_plot(const std::string& path, const std::string& title, const std::vector<PlotCell>& cells) {
  std::ofstream out(path, std::ios::trunc);
  out << plot_svg(title, cells);
  out.close();
  if (!out) {
    return absl::InternalError(str_cat(path, ": cannot be written"));
  }
  return absl::OkStatus();
}

constexpr std::string_view kHelp =
    "usage: sluice-bench relay   [OPTIONS]\n"
    "       sluice-bench compare [--peer postfix|none] [OPTIONS]\n"
    "relay: starts a sink and Sluice (its own spool and config under --tmpdir, [[route]] \"*\" to the\n"
    "sink), drives them with send, and reports per cell: end-to-end msg/s, Sluice's CPU per message\n"
    "(its threads and io_uring workers, from /proc) beside the whole box's, peak RSS, fdatasyncs per\n"
    "message, the end-to-end latency (send's X-Sluice-Bench-Sent to arrival at the sink) and the\n"
    "accounting: every message send got 250 for must arrive once, intact.\n"
    "compare: each cell through no relay (send straight into the sink: the limit), Sluice and the\n"
    "peer, in one run, with the ratios.\n"
    "  --sluice PATH                the sluice binary (default: beside sluice-bench)\n"
    "  --sizes 1k,100k              body sizes (k = 1024, m = 1024k)\n"
    "  --rcpts 1,10                 recipients per message\n"
    "  --sessions 50                concurrent connections of send (a list: more cells)\n"
    "  --messages-per-connection 1,100   then QUIT and reconnect; 0: no limit\n"
    "  --messages N                 messages per cell (default 1000)\n"
    "  --threads N                  Sluice's threads (default: its own)\n"
    "  --send-threads N             send's threads (default 1)\n"
    "  --mx-hosts N                 N sink addresses (127.0.0.3 up, one port): Sluice resolves them as\n"
    "                               equal-preference MX hosts through a DNS fixture on loopback (no\n"
    "                               [[route]]); Postfix and the limit use the first (default 1)\n"
    "  --tmpdir DIR                 where the cells' working directories go (default /var/tmp; not tmpfs)\n"
    "  --keep                       keep the working directories (a failed cell's is always kept)\n"
    "  --json FILE                  every figure as JSON\n"
    "  --plot FILE.svg              msg/s and latency per cell\n"
    "exit codes: 0 every cell completed and nothing was lost, duplicated or corrupt; 1 otherwise;\n"
    "2 usage error\n";

template <typename T>
std::string parse_list(std::string_view flag, std::string_view text, uint64_t min, uint64_t max, bool octets,
                       std::vector<T>& out) {
  out.clear();
  for (const absl::string_view part : absl::StrSplit(to_absl(text), ',')) {
    uint64_t value = 0;
    const bool parsed = octets ? parse_octets(to_std(part), value) : parse_count(to_std(part), value);
    if (!parsed || value < min || value > max) {
      return str_cat(flag, ": '", to_std(part), "' is not ", octets ? "a size" : "a number", " from ", min, " to ",
                     max);
    }
    out.push_back(static_cast<T>(value));
  }
  return "";
}

std::string apply_option(std::string_view flag, const std::string& value, MatrixOptions& options, bool compare) {
  uint64_t n = 0;
  const auto count = [&](uint64_t min, uint64_t max) { return parse_count_option(flag, value, min, max, n); };
  std::string error;
  if (flag == "--sluice") {
    options.sluice_binary = value;
  } else if (flag == "--sizes") {
    return parse_list(flag, value, 2, uint64_t{1} << 30, true, options.sizes);
  } else if (flag == "--rcpts") {
    return parse_list(flag, value, 1, smtp::kClientRecipientsMax, false, options.rcpts);
  } else if (flag == "--sessions") {
    return parse_list(flag, value, 1, 100'000, false, options.sessions);
  } else if (flag == "--messages-per-connection") {
    return parse_list(flag, value, 0, UINT32_MAX, false, options.messages_per_connection);
  } else if (flag == "--messages") {
    if ((error = count(1, IdSet::kNumberMax - 1)).empty()) options.messages = n;
  } else if (flag == "--threads") {
    if ((error = count(1, 1024)).empty()) options.cell.relay_threads = static_cast<uint32_t>(n);
  } else if (flag == "--send-threads") {
    if ((error = count(1, 1024)).empty()) options.cell.send_threads = static_cast<uint32_t>(n);
  } else if (flag == "--mx-hosts") {
    if ((error = count(1, kMxHostsMax)).empty()) options.cell.mx_hosts = static_cast<uint32_t>(n);
  } else if (flag == "--tmpdir") {
    options.cell.tmpdir = value;
  } else if (flag == "--json") {
    options.json_path = value;
  } else if (flag == "--plot") {
    options.plot_path = value;
  } else if (flag == "--peer" && compare) {
    options.peer = value;
  } else {
    return str_cat("unknown option ", flag);
  }
  return error;
}

std::string parse_matrix(int argc, char** argv, MatrixOptions& options, bool compare, bool& help) {
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      help = true;
      return "";
    }
    if (flag == "--keep") {
      options.cell.keep = true;
      continue;
    }
    if (!flag.starts_with("--")) {
      return str_cat("unexpected argument '", flag, "'");
    }
    std::string value;
    if (std::string error = take_option_value(flag, argc, argv, i, value); !error.empty()) {
      return error;
    }
    if (std::string error = apply_option(flag, value, options, compare); !error.empty()) {
      return error;
    }
  }
  if (options.sluice_binary.empty()) {
    options.sluice_binary = default_sluice_binary();
  }
  return "";
}

// The relays of each cell, in the order they run and are reported.
absl::StatusOr<std::vector<RelayFactory>> relay_factories(const MatrixOptions& options, bool compare) {
  std::vector<RelayFactory> relays;
  const std::string binary = options.sluice_binary;
  if (compare) {
    relays.push_back(RelayFactory{"limit", [] { return std::make_unique<NoRelay>(); }});
  }
  relays.push_back(RelayFactory{"sluice", [binary] { return std::make_unique<SluiceRelay>(binary); }});
  if (compare && options.peer != "none") {
    absl::StatusOr<RelayFactory> peer = peer_factory(options.peer);
    if (!peer.ok()) {
      return peer.status();
    }
    relays.push_back(std::move(*peer));
  }
  return relays;
}

int run_matrix_command(int argc, char** argv, bool compare) {
  const std::string command = compare ? "compare" : "relay";
  MatrixOptions options;
  bool help = false;
  if (const std::string error = parse_matrix(argc, argv, options, compare, help); !error.empty()) {
    std::cerr << "sluice-bench " << command << ": " << error << "\ntry: sluice-bench " << command << " --help\n";
    return kExitUsage;
  }
  if (help) {
    std::cout << kHelp;
    return kExitOk;
  }
  absl::StatusOr<std::vector<RelayFactory>> relays = relay_factories(options, compare);
  if (!relays.ok()) {
    std::cerr << "sluice-bench " << command << ": " << relays.status().message() << "\n";
    return kExitUsage;
  }
  if (absl::Status status = check_not_tmpfs(options.cell.tmpdir); !status.ok()) {
    std::cerr << "sluice-bench " << command << ": " << status.message() << "\n";
    return kExitUsage;
  }
  options.cell.progress = isatty(STDOUT_FILENO) == 1;
  signal(SIGPIPE, SIG_IGN);
  // Ctrl-C or SIGTERM: send starts no new message, the cell completes (its relay stopped by PID:
  // the harness must not die before it) and the matrix ends there, with the table.
  struct sigaction action {};
  action.sa_handler = [](int) {
    request_stop();
    request_matrix_stop();
  };
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  const std::vector<MatrixCell> cells = run_matrix(options, *relays);
  std::cout << matrix_table(cells, compare) << std::flush;
  int exit_code = matrix_clean(cells) ? kExitOk : kExitFailed;
  if (!options.json_path.empty()) {
    std::ofstream file(options.json_path, std::ios::trunc);
    file << matrix_json(command, options, cells);
    file.close();
    if (!file) {
      std::cerr << "sluice-bench " << command << ": cannot write " << options.json_path << "\n";
      exit_code = kExitFailed;
    }
  }
  if (!options.plot_path.empty()) {
    if (absl::Status status = write_plot(options.plot_path, str_cat("sluice-bench ", command), plot_cells(cells));
        !status.ok()) {
      std::cerr << "sluice-bench " << command << ": " << status.message() << "\n";
      exit_code = kExitFailed;
    }
  }
  return exit_code;
}

}  // namespace

int run_relay_command(int argc, char** argv) {
  return run_matrix_command(argc, argv, false);
}

int run_compare_command(int argc, char** argv) {
  return run_matrix_command(argc, argv, true);
}

}  // namespace sluice::bench
