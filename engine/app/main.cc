// The `sluice` command: serve, check-config, queue, version. Start-up order matters for
// durability: the spool is locked and recovered before any listener accepts a connection.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/app/admin_server.h"
#include "engine/app/config.h"
#include "engine/app/descriptors.h"
#include "engine/app/http.h"
#include "engine/app/log.h"
#include "engine/app/shard.h"
#include "engine/io/clock.h"
#include "engine/io/socket.h"
#include "engine/io/strings.h"
#include "spool/spool.h"

namespace sluice::app {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr auto kFirstSegmentWait = std::chrono::seconds(30);

const char* kUsage =
    "usage:\n"
    "  sluice serve [--config FILE] [--listen ADDR:PORT] [--spool DIR] [--threads N] [--admin ADDR:PORT]\n"
    "  sluice check-config --config FILE\n"
    "  sluice queue [--admin ADDR:PORT] [--json] list|summary|show ID|flush [DOMAIN]|delete ID|hold ID|release ID\n"
    "  sluice version\n";

struct Arguments {
  std::string command;
  std::optional<std::string> config_path;
  CliOverrides overrides;
  bool json = false;
  std::vector<std::string> positional;
};

std::optional<Arguments> parse_arguments(int argc, char** argv) {
  if (argc < 2) {
    return std::nullopt;
  }
  Arguments arguments;
  arguments.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) {
        return std::nullopt;
      }
      return std::string(argv[++i]);
    };
    std::optional<std::string> taken;
    if (flag == "--json") {
      arguments.json = true;
      continue;
    }
    if (!flag.starts_with("--")) {
      arguments.positional.push_back(flag);
      continue;
    }
    taken = value();
    if (!taken) {
      std::cerr << "sluice: " << flag << " needs a value\n";
      return std::nullopt;
    }
    if (flag == "--config") {
      arguments.config_path = *taken;
    } else if (flag == "--listen") {
      arguments.overrides.listen.push_back(*taken);
    } else if (flag == "--spool") {
      arguments.overrides.spool = *taken;
    } else if (flag == "--threads") {
      arguments.overrides.threads = *taken;
    } else if (flag == "--admin") {
      arguments.overrides.admin = *taken;
    } else {
      std::cerr << "sluice: unknown option " << flag << "\n";
      return std::nullopt;
    }
  }
  return arguments;
}

absl::StatusOr<Config> load_config(const Arguments& arguments) {
  Config config = default_config();
  if (arguments.config_path) {
    auto loaded = load_config_file(*arguments.config_path);
    if (!loaded.ok()) {
      return loaded.status();
    }
    config = std::move(*loaded);
  }
  if (absl::Status status = apply_cli_overrides(config, arguments.overrides); !status.ok()) {
    return status;
  }
  return config;
}

int check_config(const Arguments& arguments) {
  if (!arguments.config_path) {
    std::cerr << "sluice check-config: --config FILE is required\n";
    return kExitUsage;
  }
  const ConfigErrors errors = check_config_file(*arguments.config_path);
  for (const ConfigError& error : errors) {
    std::cerr << error.to_string() << "\n";
  }
  if (!errors.empty()) {
    return kExitUsage;
  }
  std::cout << *arguments.config_path << ": ok\n";
  return kExitOk;
}

// ---- queue ---------------------------------------------------------------------------------
int queue_command(const Arguments& arguments) {
  auto config = load_config(arguments);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return kExitUsage;
  }
  const io::SocketAddress admin = config->admin.listen;
  if (arguments.positional.empty()) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  const std::string& action = arguments.positional[0];
  const std::string id = arguments.positional.size() > 1 ? arguments.positional[1] : "";
  std::string method = "GET";
  std::string path;
  if (action == "list") {
    path = arguments.json ? "/api/queue" : "/api/queue?format=text";
  } else if (action == "summary") {
    path = "/api/queue/summary";
  } else if (action == "flush") {
    method = "POST";
    path = id.empty() ? "/api/queue/flush" : str_cat("/api/queue/flush?domain=", id);
  } else if ((action == "show" || action == "delete" || action == "hold" || action == "release") && !id.empty()) {
    method = action == "show" ? "GET" : action == "delete" ? "DELETE" : "POST";
    path = str_cat("/api/queue/", id, action == "hold" || action == "release" ? "/" + action : "");
  } else {
    std::cerr << kUsage;
    return kExitUsage;
  }
  auto response = http_call(admin, method, path);
  if (!response.ok()) {
    std::cerr << "sluice queue: " << response.status().message() << "\n";
    return kExitRuntime;
  }
  std::cout << response->body;
  if (!response->body.empty() && response->body.back() != '\n') {
    std::cout << "\n";
  }
  return response->status / 100 == 2 ? kExitOk : kExitRuntime;
}

// ---- serve ---------------------------------------------------------------------------------
void pin_to_core(std::thread& thread, uint32_t index) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(index % cores, &set);
  pthread_setaffinity_np(thread.native_handle(), sizeof(set), &set);
}

absl::StatusOr<std::vector<std::vector<int>>> open_listeners(const Config& config, uint32_t shards,
                                                             std::vector<io::SocketAddress>& bound) {
  std::vector<std::vector<int>> per_shard(shards);
  for (io::SocketAddress address : config.server.listen) {
    for (uint32_t shard = 0; shard < shards; ++shard) {
      auto fd = io::open_listener(address, io::PortSharing::shards);
      if (!fd.ok()) {
        return fd.status();
      }
      if (shard == 0) {
        // Port 0: every other shard joins the port the kernel chose for the first.
        auto local = io::local_address(*fd);
        if (local.ok()) {
          address = *local;
        }
        bound.push_back(address);
      }
      per_shard[shard].push_back(*fd);
    }
  }
  return per_shard;
}

// SO_REUSEPORT lets a second `sluice serve` (same user, another spool) join our listeners and
// take half the mail; a listener of the admin endpoint would be shared the same way. Refuse to
// start when another process listens on any of our addresses. (Between this check and our own
// bind another process could still start: that one then fails this check against us.)
absl::Status check_addresses_free(const Config& config) {
  std::vector<io::SocketAddress> addresses = config.server.listen;
  addresses.push_back(config.admin.listen);
  for (const io::SocketAddress& address : addresses) {
    auto in_use = io::address_in_use(address);
    if (!in_use.ok()) {
      return in_use.status();
    }
    if (*in_use) {
      return absl::UnavailableError(str_cat(address.to_string(), " is in use by another process"));
    }
  }
  return absl::OkStatus();
}

const char* signal_name(int signal_number) {
  switch (signal_number) {
    case SIGTERM:
      return "TERM";
    case SIGINT:
      return "INT";
    case SIGHUP:
      return "HUP";
    case SIGUSR1:
      return "USR1";
    case SIGUSR2:
      return "USR2";
    default:
      return "other";
  }
}

// Signals that do not stop the relay. SIGHUP (logrotate, `systemctl reload`): reopen the log
// file; reloading the config comes later. SIGUSR1/2: logged and ignored (their default action
// would kill the process). Returns true if `signal_number` was one of these.
bool handle_non_stopping_signal(int signal_number) {
  if (signal_number == SIGHUP) {
    log_line(str_cat("event=sighup action=reopen_log result=\"", reopen_log_output(), "\""));
    return true;
  }
  if (signal_number == SIGUSR1 || signal_number == SIGUSR2) {
    log_line(str_cat("event=signal signal=", signal_name(signal_number), " action=ignored"));
    return true;
  }
  return false;
}

uint32_t shard_dirs_on_disk(const std::string& dir) {
  uint32_t count = 0;
  while (std::filesystem::exists(std::filesystem::path(dir) / str_cat("shard-", count))) {
    ++count;
  }
  return count;
}

int serve(const Arguments& arguments) {
  auto loaded = load_config(arguments);
  if (!loaded.ok()) {
    std::cerr << loaded.status().message() << "\n";
    return kExitUsage;
  }
  const Config config = std::move(*loaded);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR1);
  sigaddset(&signals, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  prepare_log_output();
  const uint64_t fd_limit = io::raise_open_file_limit();
  std::error_code ignored;
  std::filesystem::create_directories(config.spool.dir, ignored);
  auto lock = spool::SpoolLock::acquire(config.spool.dir);
  if (!lock.ok()) {
    std::cerr << "sluice: " << lock.status().message() << "\n";
    return kExitRuntime;
  }
  // Shards own their spool directories: never run fewer shards than there are on disk.
  const uint32_t shards = std::max(effective_threads(config), shard_dirs_on_disk(config.spool.dir));
  auto floor = spool::load_and_bump_floor(config.spool.dir, io::wall_ms());
  if (!floor.ok()) {
    std::cerr << "sluice: " << floor.status().message() << "\n";
    return kExitRuntime;
  }
  std::vector<std::unique_ptr<spool::ShardSpool>> spools;
  std::vector<uint64_t> floors;
  uint64_t recovered_messages = 0;
  for (uint32_t shard = 0; shard < shards; ++shard) {
    auto recovered = spool::recover_shard(config.spool.dir, shard);
    if (!recovered.ok()) {
      std::cerr << "sluice: spool recovery failed: " << recovered.status().message() << "\n";
      return kExitRuntime;
    }
    recovered_messages += recovered->messages.size();
    floors.push_back(std::max(*floor, recovered->max_id_ms + 1));
    log_line(str_cat("event=recovered shard=", shard, " messages=", recovered->messages.size(),
                     " torn_tails=", recovered->torn_tails, " segments_deleted=", recovered->segments_deleted));
    const spool::SpoolOptions options{
        .dir = config.spool.dir,
        .shard = shard,
        .commit_interval_us = config.spool.commit_interval_us,
        .commit_batch_bytes = config.spool.commit_batch_bytes,
        .segment_bytes = config.spool.segment_bytes,
        .min_free_bytes = config.spool.min_free_bytes,
        .open_sealed_segments_max = config.spool.max_open_segments,
    };
    auto opened = spool::ShardSpool::open(options, std::move(*recovered));
    if (!opened.ok()) {
      std::cerr << "sluice: spool: " << opened.status().message() << "\n";
      return kExitRuntime;
    }
    spools.push_back(std::move(*opened));
  }
  // The first messages must find a segment: wait (bounded) for the preallocators' first files.
  const auto segments_deadline = std::chrono::steady_clock::now() + kFirstSegmentWait;
  for (const auto& spool : spools) {
    while (spool->ready_segments() == 0 && std::chrono::steady_clock::now() < segments_deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (spool->ready_segments() == 0) {
      log_line("event=warning message=\"no spool segment ready yet: messages get 451 until one is\"");
    }
  }

  std::atomic<bool> draining{false};
  std::atomic<bool> ready{false};
  std::atomic<int64_t> sessions_open{0};
  ClientLimits client_limits(config.server.max_sessions_per_client, config.server.max_connection_rate_per_client);
  ShardContext context;
  context.settings.hostname = config.server.hostname;
  context.settings.limits = smtp::ServerLimits{
      .message_octets_max = config.server.max_message_size,
      .recipients_max = config.server.max_recipients,
      .errors_max = config.server.max_errors,
      .command_line_octets_max = config.server.max_command_line,
      .param_command_line_octets_max = config.server.max_param_command_line,
      .received_headers_max = config.server.max_received_headers,
  };
  context.settings.relay_networks = config.relay.networks;
  context.settings.relay_domains = config.relay.domains;
  context.proxy_trusted = config.proxy_protocol.trusted;
  context.command_timeout_ms = static_cast<uint64_t>(config.server.command_timeout.count());
  context.data_timeout_ms = static_cast<uint64_t>(config.server.data_timeout.count());
  context.data_phase_timeout_ms = static_cast<uint64_t>(config.server.data_phase_timeout.count());
  context.proxy_timeout_ms = static_cast<uint64_t>(config.proxy_protocol.timeout.count());
  context.drain_timeout_ms = static_cast<uint64_t>(config.server.drain_timeout.count());
  DescriptorDemand demand;
  demand.limit = fd_limit;
  demand.shards = shards;
  spool::SpoolOptions spool_shape;
  spool_shape.open_sealed_segments_max = config.spool.max_open_segments;
  demand.spool_per_shard = spool::spool_descriptors_max(spool_shape);
  demand.listeners_per_shard = config.server.listen.size();
  demand.sessions_configured = config.server.max_sessions;
  const DescriptorBudget descriptors = plan_descriptors(demand);
  if (!descriptors.fits) {
    std::cerr << "sluice: the open-file limit (" << fd_limit << ") is too low for " << shards << " shards: at least "
              << descriptors.needed << " descriptors are needed (raise ulimit -n or LimitNOFILE)\n";
    return kExitRuntime;
  }
  log_line(str_cat("event=descriptors ", descriptors.to_log_fields()));
  context.sessions_max = static_cast<int64_t>(descriptors.inbound);
  context.client_limits = &client_limits;
  context.draining = &draining;
  context.sessions_open = &sessions_open;

  if (absl::Status free = check_addresses_free(config); !free.ok()) {
    std::cerr << "sluice: " << free.message() << "\n";
    return kExitRuntime;
  }
  std::vector<io::SocketAddress> bound;
  auto listeners = open_listeners(config, shards, bound);
  if (!listeners.ok()) {
    std::cerr << "sluice: " << listeners.status().message() << "\n";
    return kExitRuntime;
  }
  std::vector<std::unique_ptr<Shard>> shard_objects;
  std::vector<Shard*> shard_pointers;
  for (uint32_t shard = 0; shard < shards; ++shard) {
    shard_objects.push_back(std::make_unique<Shard>(shard, &context, std::move((*listeners)[shard]),
                                                    std::move(spools[shard]), floors[shard]));
    shard_pointers.push_back(shard_objects.back().get());
  }
  AdminServer admin(shard_pointers, &ready);
  auto admin_bound = admin.start(config.admin.listen);
  if (!admin_bound.ok()) {
    std::cerr << "sluice: admin endpoint: " << admin_bound.status().message() << "\n";
    return kExitRuntime;
  }
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  std::atomic<uint32_t> finished{0};
  for (uint32_t shard = 0; shard < shards; ++shard) {
    threads.emplace_back([&, shard] {
      if (!shard_objects[shard]->run()) {
        failed.fetch_add(1);
      }
      finished.fetch_add(1);
    });
    pin_to_core(threads.back(), shard);
    pthread_setname_np(threads.back().native_handle(), str_cat("sluice-shard", shard).substr(0, 15).c_str());
  }
  while (failed.load() == 0) {
    bool all_ready = true;
    for (const auto& shard : shard_objects) {
      all_ready = all_ready && shard->ready();
    }
    if (all_ready) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  int exit_code = kExitOk;
  if (failed.load() > 0) {
    draining.store(true);
    exit_code = kExitRuntime;
  } else {
    std::vector<std::string> addresses;
    for (const auto& address : bound) {
      addresses.push_back(address.to_string());
    }
    ready.store(true);
    log_line(str_cat("event=ready listen=", absl::StrJoin(addresses, ","), " admin=", admin_bound->to_string(),
                     " shards=", shards, " sessions_max=", context.sessions_max, " recovered=", recovered_messages,
                     " version=", SLUICE_VERSION));
    int received = 0;
    do {
      sigwait(&signals, &received);
    } while (handle_non_stopping_signal(received));
    log_line(str_cat("event=draining signal=", signal_name(received)));
    ready.store(false);  // load balancers stop sending new connections here first
    draining.store(true);
    // A second SIGINT (Ctrl-C twice) during the drain stops at once: every acknowledged message
    // is already durable, so only unacknowledged transactions are cut short. A repeated SIGTERM
    // (service managers resend it) just lets the drain go on.
    const timespec poll_interval{0, 100'000'000};
    while (finished.load() < shards) {
      siginfo_t info;
      const int caught = sigtimedwait(&signals, &info, &poll_interval);
      if (caught == SIGINT) {
        log_line("event=stop_now reason=second_sigint");
        std::_Exit(kExitRuntime);
      }
      handle_non_stopping_signal(caught);
    }
  }
  for (auto& thread : threads) {
    thread.join();
  }
  ready.store(false);
  admin.stop();
  log_line(str_cat("event=stopped exit=", exit_code));
  return exit_code;
}

}  // namespace
}  // namespace sluice::app

int main(int argc, char** argv) {
  using namespace sluice::app;
  const auto arguments = parse_arguments(argc, argv);
  if (!arguments) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  if (arguments->command == "serve") {
    return serve(*arguments);
  }
  if (arguments->command == "check-config") {
    return check_config(*arguments);
  }
  if (arguments->command == "queue") {
    return queue_command(*arguments);
  }
  if (arguments->command == "version" || arguments->command == "--version") {
    std::cout << "sluice " << SLUICE_VERSION << "\n";
    return kExitOk;
  }
  std::cerr << kUsage;
  return kExitUsage;
}
