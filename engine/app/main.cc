// The `sluice` command: serve, check-config, queue, version. Start-up order matters for
// durability: the spool is locked and recovered before any listener accepts a connection.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
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
#include "engine/app/queue_report.h"
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
    "  sluice serve [--config FILE] [--listen ADDR:PORT] [--spool DIR] [--threads N] [--admin ADDR:PORT|unix:PATH]\n"
    "  sluice check-config --config FILE\n"
    "  sluice queue [--admin ADDR:PORT|unix:PATH] [--token-file FILE] [--config FILE] [--json]\n"
    "               list|summary|show ID...|flush [DOMAIN]|delete ID...|hold ID...|release ID...\n"
    "  sluice version\n"
    "  sluice COMMAND --help     (help on one command)\n"
    "exit codes: 0 ok, 1 runtime failure, 2 usage or config error\n";

const char* kServeHelp =
    "usage: sluice serve [--config FILE] [--listen ADDR:PORT]... [--spool DIR] [--threads N]\n"
    "                    [--admin ADDR:PORT|unix:PATH]\n"
    "Runs the relay in the foreground. Without --config: the embedded defaults (SMTP on 127.0.0.1:2525,\n"
    "admin HTTP on 127.0.0.1:9025, spool in ./var/spool). The options override the config file.\n"
    "The admin token is read from [admin] token_file (default <spool dir>/admin.token), which is\n"
    "created with a random token (mode 0600) if it does not exist.\n"
    "SIGTERM or SIGINT drains and exits 0.\n";

const char* kCheckConfigHelp =
    "usage: sluice check-config --config FILE\n"
    "Validates FILE: exit 0 (warnings, if any, on stderr), or exit 2 with every problem as\n"
    "FILE:LINE: message.\n";

const char* kQueueHelp =
    "usage: sluice queue [OPTIONS] ACTION [ARGS]\n"
    "Talks to the admin endpoint of a running `sluice serve`.\n"
    "actions:\n"
    "  list                  one message per line (like postqueue -p); --json: the API's JSON;\n"
    "                        --limit N and --after ID page through a large queue\n"
    "  summary [QUEUE]       queued recipients by domain and message age (like qshape); QUEUE:\n"
    "                        all (default), active (not tried yet or being tried) or deferred;\n"
    "                        --json: as JSON\n"
    "  show ID...            a message with its envelope (JSON); --raw: the message itself\n"
    "  delete ID...          remove messages (each answered once its journal record is durable)\n"
    "  hold ID...            keep messages from delivery\n"
    "  release ID...         undo hold\n"
    "  flush [DOMAIN]        retry deferred mail now\n"
    "options:\n"
    "  --admin ADDR:PORT|unix:PATH   the admin endpoint (default: the config's [admin] listen)\n"
    "  --config FILE                 take the endpoint and the token file from FILE\n"
    "  --token-file FILE             the bearer token; otherwise $SLUICE_ADMIN_TOKEN_FILE, the token\n"
    "                                file of --config FILE, then ./var/spool/admin.token\n"
    "  --json, --raw, --limit N, --after ID   as above\n"
    "Exit 1 if any action failed (each failure is reported on stderr).\n";

const char* kVersionHelp = "usage: sluice version\nPrints the version.\n";

struct Arguments {
  std::string command;
  std::optional<std::string> config_path;
  CliOverrides overrides;
  bool json = false;
  bool raw = false;
  std::optional<std::string> token_file;
  std::optional<std::string> limit;
  std::optional<std::string> after;
  std::vector<std::string> positional;
};

// What parsing decided: run the command, or exit at once (help: 0, usage error: 2).
struct Parsed {
  std::optional<Arguments> arguments;
  int exit_code = kExitOk;
};

struct CommandSpec {
  std::string_view name;
  const char* help;
  std::vector<std::string_view> value_options;
  std::vector<std::string_view> flags;
  bool positional;
};

const std::vector<CommandSpec>& commands() {
  static const std::vector<CommandSpec> kCommands = {
      {"serve", kServeHelp, {"--config", "--listen", "--spool", "--threads", "--admin"}, {}, false},
      {"check-config", kCheckConfigHelp, {"--config"}, {}, false},
      {"queue", kQueueHelp, {"--config", "--admin", "--token-file", "--limit", "--after"}, {"--json", "--raw"}, true},
      {"version", kVersionHelp, {}, {}, false},
  };
  return kCommands;
}

const CommandSpec* find_command(std::string_view name) {
  for (const CommandSpec& spec : commands()) {
    if (spec.name == name) {
      return &spec;
    }
  }
  return nullptr;
}

Parsed usage_error(std::string_view command, std::string_view message) {
  std::cerr << "sluice" << (command.empty() ? "" : " ") << command << ": " << message << "\n"
            << "try: sluice " << command << (command.empty() ? "" : " ") << "--help\n";
  return Parsed{std::nullopt, kExitUsage};
}

Parsed help(const char* text) {
  std::cout << text;
  return Parsed{std::nullopt, kExitOk};
}

bool is_help(std::string_view arg) {
  return arg == "--help" || arg == "-h";
}

Parsed parse_arguments(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return Parsed{std::nullopt, kExitUsage};
  }
  const std::string_view first = argv[1];
  if (is_help(first) || first == "help") {
    if (argc > 2) {
      if (const CommandSpec* spec = find_command(argv[2])) {
        return help(spec->help);
      }
      return usage_error("", str_cat("unknown command '", argv[2], "'"));
    }
    return help(kUsage);
  }
  if (first == "--version") {
    Arguments arguments;
    arguments.command = "version";
    return Parsed{arguments, kExitOk};
  }
  const CommandSpec* spec = find_command(first);
  if (spec == nullptr) {
    std::cerr << "sluice: unknown command '" << first << "'\n" << kUsage;
    return Parsed{std::nullopt, kExitUsage};
  }
  Arguments arguments;
  arguments.command = std::string(first);
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    if (is_help(flag)) {
      return help(spec->help);
    }
    if (!flag.starts_with("-") || flag == "-") {
      if (!spec->positional) {
        return usage_error(spec->name, str_cat("unexpected argument '", flag, "'"));
      }
      arguments.positional.push_back(flag);
      continue;
    }
    std::optional<std::string> value;
    if (const size_t equals = flag.find('='); flag.starts_with("--") && equals != std::string::npos) {
      value = flag.substr(equals + 1);
      flag.resize(equals);
    }
    const auto& flags = spec->flags;
    if (std::find(flags.begin(), flags.end(), flag) != flags.end() && !value) {
      (flag == "--json" ? arguments.json : arguments.raw) = true;
      continue;
    }
    const auto& options = spec->value_options;
    if (std::find(options.begin(), options.end(), flag) == options.end()) {
      return usage_error(spec->name, str_cat("unknown option ", flag));
    }
    if (!value) {
      if (i + 1 >= argc) {
        return usage_error(spec->name, str_cat(flag, " needs a value"));
      }
      value = argv[++i];
    }
    if (flag == "--config") {
      arguments.config_path = *value;
    } else if (flag == "--listen") {
      arguments.overrides.listen.push_back(*value);
    } else if (flag == "--spool") {
      arguments.overrides.spool = *value;
    } else if (flag == "--threads") {
      arguments.overrides.threads = *value;
    } else if (flag == "--admin") {
      arguments.overrides.admin = *value;
    } else if (flag == "--token-file") {
      arguments.token_file = *value;
    } else if (flag == "--limit") {
      arguments.limit = *value;
    } else if (flag == "--after") {
      arguments.after = *value;
    }
  }
  return Parsed{arguments, kExitOk};
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

// [delivery], [dns] and [[route]] as the shards use them.
absl::Status configure_delivery(const Config& config, ShardContext& context) {
  const auto ms = [](std::chrono::milliseconds value) { return static_cast<uint64_t>(value.count()); };
  context.client.hostname = config.server.hostname;
  relay::SchedulerSettings& scheduler = context.scheduler;
  scheduler.retry.initial_ms = ms(config.delivery.retry_initial);
  scheduler.retry.max_ms = ms(config.delivery.retry_max);
  scheduler.retry.lifetime_ms = ms(config.delivery.lifetime);
  scheduler.connections_per_site = config.delivery.connections_per_host;
  scheduler.recipients_per_transaction = config.delivery.recipients_per_transaction;
  scheduler.site_backoff_initial_ms = ms(config.delivery.site_backoff);
  context.connect_timeout_ms = ms(config.delivery.connect_timeout);
  context.idle_timeout_ms = ms(config.delivery.idle_timeout);
  context.messages_per_connection = config.delivery.messages_per_connection;
  context.mx_port = config.delivery.port;
  context.dns_servers = config.dns.servers;
  context.dns_ttl_floor_ms = ms(config.dns.ttl_floor);
  context.dns_ttl_ceiling_ms = ms(config.dns.ttl_ceiling);
  context.dns_cache_entries = config.dns.cache_entries;
  context.dns_timeout_ms = ms(config.dns.timeout);
  std::vector<resolver::Route> routes;
  for (const RouteConfig& route : config.routes) {
    routes.push_back(resolver::Route{route.domain, route.next_hop});
  }
  absl::StatusOr<resolver::RouteTable> table = resolver::RouteTable::build(std::move(routes));
  if (!table.ok()) {
    return table.status();
  }
  context.routes = std::move(*table);
  return absl::OkStatus();
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
  if (auto config = load_config_file(*arguments.config_path); config.ok()) {
    for (const std::string& warning : config_warnings(*config)) {
      std::cerr << *arguments.config_path << ": warning: " << warning << "\n";
    }
  }
  std::cout << *arguments.config_path << ": ok\n";
  return kExitOk;
}

// ---- queue ---------------------------------------------------------------------------------
// The token file, in DESIGN.md section 4's order: --token-file, $SLUICE_ADMIN_TOKEN_FILE, the
// token file of --config FILE, then the embedded default (./var/spool/admin.token).
std::string token_file_for(const Arguments& arguments, const Config& config) {
  if (arguments.token_file) {
    return *arguments.token_file;
  }
  if (const char* env = std::getenv("SLUICE_ADMIN_TOKEN_FILE"); env != nullptr && *env != '\0') {
    return env;
  }
  return admin_token_path(arguments.config_path ? config : default_config());
}

void print_body(std::ostream& out, const std::string& body) {
  out << body;
  if (!body.empty() && body.back() != '\n') {
    out << "\n";
  }
}

using AdminRequest =
    std::function<std::optional<HttpResponse>(std::string_view method, const std::string& path, std::string_view what)>;

std::optional<std::string> header_of(const HttpResponse& response, std::string_view name) {
  for (const auto& [field, value] : response.headers) {
    if (field == name) {
      return value;
    }
  }
  return std::nullopt;
}

// `sluice queue list`: every page of the queue (the API answers at most one page a request),
// printed as one table, or as one JSON object of the API's shape; with --limit or --after, the
// one page asked for.
int queue_list(const Arguments& arguments, const AdminRequest& request) {
  std::string base = arguments.json ? "/api/queue?" : "/api/queue?format=text&";
  if (arguments.limit) {
    str_append(&base, "limit=", *arguments.limit, "&");
  }
  const bool one_page = arguments.limit || arguments.after;
  std::optional<std::string> after = arguments.after;
  uint64_t count = 0;
  std::string items;
  while (true) {
    auto response = request("GET", after ? str_cat(base, "after=", *after) : base.substr(0, base.size() - 1), "list");
    if (!response) {
      return kExitRuntime;
    }
    const std::optional<std::string> next = header_of(*response, "x-sluice-next-after");
    if (!arguments.json || one_page) {
      print_body(std::cout, response->body);
    } else {
      // Our own format: {"count": N, "messages": [ITEMS]}. Splice the pages' items together.
      const std::string& body = response->body;
      constexpr std::string_view kCount = "{\"count\": ";
      constexpr std::string_view kItems = "\"messages\": [";
      const size_t begin = body.find(kItems);
      const size_t end = body.rfind("]}");
      uint64_t page_count = 0;
      if (!body.starts_with(kCount) || begin == std::string::npos || end == std::string::npos || end < begin ||
          !parse_decimal(std::string_view(body).substr(kCount.size(), body.find(',') - kCount.size()), page_count)) {
        std::cerr << "sluice queue list: malformed answer from the admin endpoint\n";
        return kExitRuntime;
      }
      const std::string_view page_items =
          std::string_view(body).substr(begin + kItems.size(), end - begin - kItems.size());
      if (!page_items.empty()) {
        str_append(&items, items.empty() ? "" : ",\n  ", page_items);
      }
      count += page_count;
    }
    if (one_page) {
      if (next) {
        std::cerr << "(more messages follow: sluice queue list --after " << *next << ")\n";
      }
      return kExitOk;
    }
    if (!next) {
      break;
    }
    after = next;
  }
  if (arguments.json) {
    std::cout << "{\"count\": " << count << ", \"messages\": [" << items << "]}\n";
  }
  return kExitOk;
}

int queue_command(const Arguments& arguments) {
  auto config = load_config(arguments);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return kExitUsage;
  }
  if (arguments.positional.empty()) {
    std::cerr << "sluice queue: which action? (list, summary, show, flush, delete, hold, release)\n" << kQueueHelp;
    return kExitUsage;
  }
  const std::string& action = arguments.positional[0];
  const std::vector<std::string> ids(arguments.positional.begin() + 1, arguments.positional.end());
  const bool takes_ids = action == "show" || action == "delete" || action == "hold" || action == "release";
  const bool known = takes_ids || action == "list" || action == "summary" || action == "flush";
  if (!known) {
    std::cerr << "sluice queue: unknown action '" << action << "'\n" << kQueueHelp;
    return kExitUsage;
  }
  if (takes_ids && ids.empty()) {
    std::cerr << "sluice queue " << action << ": needs at least one queue id\n";
    return kExitUsage;
  }
  if (action == "summary" && ids.size() == 1 && parse_summary_queue(ids[0])) {
    // summary [all|active|deferred]: qshape's queue selection
  } else if ((action == "list" || action == "summary") && !ids.empty()) {
    std::cerr << "sluice queue " << action << ": takes no arguments\n";
    return kExitUsage;
  }
  if (action == "flush" && ids.size() > 1) {
    std::cerr << "sluice queue flush: takes at most one domain\n";
    return kExitUsage;
  }
  const std::string token_path = token_file_for(arguments, *config);
  auto token = read_admin_token(token_path);
  if (!token.ok()) {
    std::cerr << "sluice queue: " << token.status().message()
              << " (give --token-file FILE, or set SLUICE_ADMIN_TOKEN_FILE)\n";
    return kExitRuntime;
  }
  const HttpEndpoint admin{config->admin.listen, config->admin.unix_socket};
  // One request; a failure is reported on stderr, the answer printed on stdout.
  const AdminRequest request = [&](std::string_view method, const std::string& path,
                                   std::string_view what) -> std::optional<HttpResponse> {
    auto response = http_call(admin, method, path, *token);
    if (!response.ok()) {
      std::cerr << "sluice queue: " << response.status().message() << "\n";
      return std::nullopt;
    }
    if (response->status / 100 != 2) {
      std::cerr << "sluice queue " << what << ": HTTP " << response->status << ": " << response->body
                << (response->body.ends_with("\n") ? "" : "\n");
      return std::nullopt;
    }
    return std::move(*response);
  };
  if (action == "list") {
    return queue_list(arguments, request);
  }
  if (action == "summary" || action == "flush") {
    const std::string path =
        action == "summary"
            ? str_cat("/api/queue/summary?queue=", ids.empty() ? std::string("all") : ids[0],
                      arguments.json ? "&format=json" : "")
        : ids.empty() ? "/api/queue/flush"
                      : str_cat("/api/queue/flush?domain=", ids[0]);
    auto response = request(action == "flush" ? "POST" : "GET", path, action);
    if (!response) {
      return kExitRuntime;
    }
    print_body(std::cout, response->body);
    return kExitOk;
  }
  int exit_code = kExitOk;
  for (const std::string& id : ids) {
    const std::string method = action == "show" ? "GET" : action == "delete" ? "DELETE" : "POST";
    std::string path = str_cat("/api/queue/", id);
    if (action == "hold" || action == "release") {
      str_append(&path, "/", action);
    } else if (action == "show" && arguments.raw) {
      path += "?raw=1";
    }
    auto response = request(method, path, str_cat(action, " ", id));
    if (!response) {
      exit_code = kExitRuntime;
      continue;
    }
    if (arguments.raw && action == "show") {
      std::cout.write(response->body.data(), static_cast<std::streamsize>(response->body.size()));
    } else {
      print_body(std::cout, response->body);
    }
  }
  return exit_code;
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
  // Creates a missing spool directory durably (its parent fsync'd), unlike create_directories.
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
                     " torn_tails=", recovered->torn_tails, " segments_deleted=", recovered->segments_deleted,
                     " old_format_segments=", recovered->old_format_segments));
    const spool::SpoolOptions options{
        .dir = config.spool.dir,
        .shard = shard,
        .commit_interval_us = config.spool.commit_interval_us,
        .commit_batch_bytes = config.spool.commit_batch_bytes,
        .segment_bytes = config.spool.segment_bytes,
        .min_free_bytes = config.spool.min_free_bytes,
        .open_sealed_segments_max = config.spool.max_open_segments,
        // The preallocator's failures, from its own thread: log_line is one write(2).
        .background_log = [](std::string_view fields) { log_line(fields); },
        .clock_us = {},  // io::monotonic_us
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
      .body_memory_octets_max = config.server.body_memory_per_shard,
  };
  context.body_memory_octets = config.server.body_memory_per_shard;
  context.settings.relay_networks = config.relay.networks;
  context.settings.relay_domains = config.relay.domains;
  context.proxy_trusted = config.proxy_protocol.trusted;
  context.command_timeout_ms = static_cast<uint64_t>(config.server.command_timeout.count());
  context.data_timeout_ms = static_cast<uint64_t>(config.server.data_timeout.count());
  context.data_phase_timeout_ms = static_cast<uint64_t>(config.server.data_phase_timeout.count());
  context.proxy_timeout_ms = static_cast<uint64_t>(config.proxy_protocol.timeout.count());
  context.drain_timeout_ms = static_cast<uint64_t>(config.server.drain_timeout.count());
  if (absl::Status delivery = configure_delivery(config, context); !delivery.ok()) {
    std::cerr << "sluice: " << delivery.message() << "\n";
    return kExitUsage;
  }
  DescriptorDemand demand;
  demand.limit = fd_limit;
  demand.shards = shards;
  spool::SpoolOptions spool_shape;
  spool_shape.open_sealed_segments_max = config.spool.max_open_segments;
  demand.spool_per_shard = spool::spool_descriptors_max(spool_shape);
  demand.listeners_per_shard = config.server.listen.size();
  demand.sessions_configured = config.server.max_sessions;
  static_assert(kDnsDescriptorsPerShard >= 2 * kDnsServersMax, "a UDP and a TCP socket per DNS server");
  demand.outbound = config.delivery.max_connections;
  context.outbound_connections_max = std::max<uint32_t>(1, config.delivery.max_connections / shards);
  // Jobs and outcomes between shards (a domain belongs to one shard); none with one shard.
  std::unique_ptr<DeliveryMailbox> mailbox;
  std::atomic<uint32_t> shards_draining{0};
  context.shards = shards;
  if (shards > 1) {
    mailbox = std::make_unique<DeliveryMailbox>(shards, kDeliveryMailboxCapacity, Shard::doorbell_user_data());
    context.mailbox = mailbox.get();
    context.shards_draining = &shards_draining;
  }
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
  auto token = load_or_create_admin_token(admin_token_path(config));
  if (!token.ok()) {
    std::cerr << "sluice: admin token: " << token.status().message() << "\n";
    return kExitRuntime;
  }
  for (const std::string& warning : config_warnings(config)) {
    log_line(str_cat("event=warning message=\"", warning, "\""));
  }
  AdminServer admin(shard_pointers, &ready, *token);
  auto admin_bound = admin.start(HttpEndpoint{config.admin.listen, config.admin.unix_socket});
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
  const Parsed parsed = parse_arguments(argc, argv);
  if (!parsed.arguments) {
    return parsed.exit_code;
  }
  const Arguments& arguments = *parsed.arguments;
  if (arguments.command == "serve") {
    return serve(arguments);
  }
  if (arguments.command == "check-config") {
    return check_config(arguments);
  }
  if (arguments.command == "queue") {
    return queue_command(arguments);
  }
  std::cout << "sluice " << SLUICE_VERSION << "\n";
  return kExitOk;
}
