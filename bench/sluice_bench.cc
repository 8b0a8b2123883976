// The `sluice-bench` command: load tools for SMTP servers (DESIGN.md section 4). `send` is the
// load generator (bench/send.h), `sink` the receiving server (bench/sink/sink.h), `relay` and
// `compare` the end-to-end harness around a relay under test (bench/relay/matrix.h).
#include <arpa/inet.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "bench/common/options.h"
#include "bench/relay/matrix.h"
#include "bench/send.h"
#include "bench/sink/sink.h"
#include "engine/io/strings.h"
#include "engine/smtp/client_session.h"

namespace sluice::bench {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

const char* kUsage =
    "usage:\n"
    "  sluice-bench send --target HOST:PORT [OPTIONS]   (sluice-bench send --help)\n"
    "  sluice-bench sink --listen HOST:PORT [OPTIONS]   (sluice-bench sink --help)\n"
    "  sluice-bench relay [OPTIONS]                     (sluice-bench relay --help)\n"
    "  sluice-bench compare [--peer postfix|none] [OPTIONS]   (sluice-bench compare --help)\n"
    "exit codes: 0 ok (whatever the server answered), 1 runtime failure, 2 usage error\n";

const char* kSendHelp =
    "usage: sluice-bench send --target ADDR:PORT [--target ...] [OPTIONS]\n"
    "Sends generated mail over SMTP on io_uring (one ring per thread) and reports what the server\n"
    "answered and how long each step took.\n"
    "  --target ADDR:PORT        a server (numeric address); several: connections alternate\n"
    "  --sessions N              concurrent connections (default 1)\n"
    "  --messages N              messages to send (default 100 unless --duration)\n"
    "  --duration 30s            send for this long (ms, s, m); with --messages: whichever ends first\n"
    "  --rate N                  open loop: N messages per second offered, latency counted from each\n"
    "                            message's scheduled time (default: closed loop)\n"
    "  --size BYTES | --size 1k:70,10k:25,100k:5   body octets, or weighted sizes (k = 1024, m = 1024k)\n"
    "  --rcpts N                 recipients per message (default 1)\n"
    "  --messages-per-connection N   then QUIT and reconnect (default 0: no limit)\n"
    "  --pipelining on|off       use PIPELINING when offered (default on)\n"
    "  --chunking                send each message as one BDAT LAST chunk when CHUNKING is offered\n"
    "  --from ADDR, --to ADDR    envelope addresses; {n} is replaced by the message number (from)\n"
    "                            or the recipient number in the run (to); default\n"
    "                            bench@sluice-bench.test and rcpt{n}@example.test\n"
    "  --helo NAME               the EHLO name (default sluice-bench.test)\n"
    "  --threads N               threads, each with its own ring and share of the sessions (default 1)\n"
    "  --source A[-B]            local addresses to connect from, e.g. 127.0.0.2-127.0.0.9 (IPv4 range)\n"
    "  --timeout 60s             connect and per-reply timeout\n"
    "  --run-id ID               the run's id in X-Sluice-Bench-Id (default from the time and pid)\n"
    "  --json FILE               write every figure as JSON\n"
    "Each message has Message-ID, X-Sluice-Bench-Id: RUN-N and X-Sluice-Bench-Sum: crc32c:HEX (the\n"
    "CRC32C of the body). A progress line is shown while stdout is a terminal.\n";

struct Usage {
  std::string error;  // empty: fine
};

// "127.0.0.2-127.0.0.9" (IPv4, inclusive), or one address of either family.
std::string parse_sources(std::string_view text, std::vector<io::SocketAddress>& sources) {
  const size_t dash = text.find('-');
  if (dash == std::string_view::npos) {
    auto address = io::parse_ip(text);
    if (!address.ok()) {
      return str_cat("--source: ", to_std(address.status().message()));
    }
    sources.push_back(*address);
    return "";
  }
  auto first = io::parse_ip(text.substr(0, dash));
  auto last = io::parse_ip(text.substr(dash + 1));
  if (!first.ok() || !last.ok() || first->family() != AF_INET || last->family() != AF_INET) {
    return str_cat("--source: '", text, "' is not an IPv4 range A-B");
  }
  const uint32_t from = ntohl(reinterpret_cast<const sockaddr_in*>(first->get())->sin_addr.s_addr);
  const uint32_t to = ntohl(reinterpret_cast<const sockaddr_in*>(last->get())->sin_addr.s_addr);
  if (to < from || to - from >= 65536) {
    return str_cat("--source: '", text, "' is empty or longer than 65536 addresses");
  }
  for (uint64_t a = from; a <= to; ++a) {
    in_addr address{};
    address.s_addr = htonl(static_cast<uint32_t>(a));
    sources.push_back(io::SocketAddress::ipv4(address, 0));
  }
  return "";
}

// One option and its value into `options`; the error text, or empty.
std::string apply_option(std::string_view flag, const std::string& value, SendOptions& options) {
  uint64_t n = 0;
  const auto count = [&](uint64_t min, uint64_t max) { return parse_count_option(flag, value, min, max, n); };
  std::string error;
  if (flag == "--target") {
    auto address = io::parse_host_port(value);
    if (!address.ok()) {
      return str_cat("--target: ", to_std(address.status().message()));
    }
    options.targets.push_back(*address);
  } else if (flag == "--sessions") {
    if ((error = count(1, 1'000'000)).empty()) options.sessions = static_cast<uint32_t>(n);
  } else if (flag == "--messages") {
    if ((error = count(1, UINT64_MAX / 2)).empty()) options.messages = n;
  } else if (flag == "--duration") {
    if (!parse_duration_ms(value, options.duration_ms) || options.duration_ms == 0) {
      return str_cat("--duration: '", value, "' is not a duration such as 30s");
    }
  } else if (flag == "--rate") {
    std::string_view text = value;
    if (text.ends_with("/s")) {
      text.remove_suffix(2);
    }
    if (!absl::SimpleAtod(to_absl(text), &options.rate) || !(options.rate > 0) || options.rate > 1e9) {
      return str_cat("--rate: '", value, "' is not a positive rate such as 1000/s");
    }
  } else if (flag == "--size") {
    return parse_sizes(value, options.sizes);
  } else if (flag == "--rcpts") {
    if ((error = count(1, smtp::kClientRecipientsMax)).empty()) options.rcpts = static_cast<uint32_t>(n);
  } else if (flag == "--messages-per-connection") {
    if ((error = count(0, UINT32_MAX)).empty()) options.messages_per_connection = static_cast<uint32_t>(n);
  } else if (flag == "--pipelining") {
    if (value != "on" && value != "off") {
      return "--pipelining: on or off";
    }
    options.pipelining = value == "on";
  } else if (flag == "--from") {
    options.from = value;
  } else if (flag == "--to") {
    options.to = value;
  } else if (flag == "--helo") {
    options.helo = value;
  } else if (flag == "--threads") {
    if ((error = count(1, 1024)).empty()) options.threads = static_cast<uint32_t>(n);
  } else if (flag == "--source") {
    return parse_sources(value, options.sources);
  } else if (flag == "--timeout") {
    if (!parse_duration_ms(value, options.timeout_ms) || options.timeout_ms == 0) {
      return str_cat("--timeout: '", value, "' is not a duration such as 30s");
    }
  } else if (flag == "--run-id") {
    options.run_id = value;
  } else if (flag == "--json") {
    options.json_path = value;
  } else {
    return str_cat("unknown option ", flag);
  }
  return error;
}

std::string parse_send(int argc, char** argv, SendOptions& options, bool& help) {
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      help = true;
      return "";
    }
    if (!flag.starts_with("--")) {
      return str_cat("unexpected argument '", flag, "'");
    }
    if (flag == "--chunking") {
      options.chunking = true;  // a switch: no value
      continue;
    }
    std::string value;
    if (std::string error = take_option_value(flag, argc, argv, i, value); !error.empty()) {
      return error;
    }
    if (std::string error = apply_option(flag, value, options); !error.empty()) {
      return error;
    }
  }
  if (options.targets.empty()) {
    return "--target is required";
  }
  if (options.messages == 0 && options.duration_ms == 0) {
    options.messages = 100;
  }
  for (const io::SocketAddress& source : options.sources) {
    for (const io::SocketAddress& target : options.targets) {
      if (source.family() != target.family()) {
        return "--source and --target addresses must be of the same family";
      }
    }
  }
  return "";
}

int run_send_command(int argc, char** argv) {
  SendOptions options;
  bool help = false;
  if (const std::string error = parse_send(argc, argv, options, help); !error.empty()) {
    std::cerr << "sluice-bench send: " << error << "\ntry: sluice-bench send --help\n";
    return kExitUsage;
  }
  if (help) {
    std::cout << kSendHelp;
    return kExitOk;
  }
  options.progress = isatty(STDOUT_FILENO) == 1;
  // Ctrl-C: stop starting messages, finish those in flight, report. A second one kills.
  struct sigaction action {};
  action.sa_handler = [](int) { request_stop(); };
  action.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  SendResults results;
  double elapsed_s = 0;
  std::string run_id;
  const absl::Status status = run_send(options, results, elapsed_s, run_id);
  std::cout << summary_text(options, results, elapsed_s) << std::flush;
  if (!options.json_path.empty()) {
    std::ofstream file(options.json_path, std::ios::trunc);
    file << results_json(options, results, elapsed_s, run_id);
    file.close();
    if (!file) {
      std::cerr << "sluice-bench send: cannot write " << options.json_path << "\n";
      return kExitRuntime;
    }
  }
  if (!status.ok()) {
    std::cerr << "sluice-bench send: " << status.message() << "\n";
    return kExitRuntime;
  }
  return kExitOk;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) {
  using namespace sluice::bench;
  if (argc < 2) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  const std::string_view command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << kUsage;
    return kExitOk;
  }
  if (command == "send") {
    return run_send_command(argc, argv);
  }
  if (command == "sink") {
    return run_sink(argc - 1, argv + 1);
  }
  if (command == "relay") {
    return run_relay_command(argc - 1, argv + 1);
  }
  if (command == "compare") {
    return run_compare_command(argc - 1, argv + 1);
  }
  std::cerr << "sluice-bench: unknown command '" << command << "'\n" << kUsage;
  return kExitUsage;
}
