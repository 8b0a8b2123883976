#pragma once

// The configuration: every key of the TOML file in one struct, with the embedded defaults
// (DESIGN.md section 4). Field names are the TOML key names; units are in the types (durations
// as std::chrono::milliseconds) or in the comments (bytes, microseconds, per minute).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::app {

// Limits on the values themselves, so that a typo cannot ask for absurd resources.
inline constexpr uint32_t kThreadsMax = 1024;
inline constexpr uint64_t kMessageSizeMax = 4294967295;       // 4 GiB - 1
inline constexpr uint64_t kSegmentOverheadBytes = 65536;      // Received: + record headers + sender
inline constexpr uint64_t kRecordOverheadBytes = 8192;        // of that, what one record needs beside the body
inline constexpr uint64_t kEnvelopeOctetsPerRecipient = 264;  // a 256-octet path + framing
inline constexpr uint64_t kSegmentBytesMin = 1048576;
inline constexpr uint64_t kSegmentBytesMax = 68719476736;  // 64 GiB
inline constexpr uint32_t kRecipientsMax = 100000;
inline constexpr uint32_t kOpenSegmentsMax = 65536;
inline constexpr uint64_t kBodyMemoryMin = 1048576;      // body_memory_per_shard
inline constexpr uint64_t kBodyMemoryMax = 68719476736;  // 64 GiB
inline constexpr uint32_t kSessionsMax = 10000000;
inline constexpr uint32_t kCommandLineMin = 512;  // RFC 5321 4.5.3.1.4
inline constexpr uint32_t kCommandLineMax = 65536;
inline constexpr uint32_t kReceivedHeadersMax = 10000;
inline constexpr uint32_t kErrorsMax = 100000;
inline constexpr uint32_t kCommitIntervalUsMax = 1000000;
inline constexpr uint64_t kCommitBatchBytesMax = 1073741824;
inline constexpr uint32_t kConnectionsPerHostMax = 100000;
inline constexpr size_t kListenAddressesMax = 64;
inline constexpr size_t kNetworksMax = 4096;
inline constexpr size_t kRelayDomainsMax = 100000;
inline constexpr size_t kDnsServersMax = 16;
inline constexpr size_t kRoutesMax = 100000;
inline constexpr size_t kConfigFileBytesMax = 16 * 1024 * 1024;
inline constexpr std::chrono::milliseconds kDurationMax = std::chrono::hours(24 * 3650);
inline constexpr uint16_t kDnsDefaultPort = 53;

struct ServerConfig {
  std::string hostname;  // EHLO name, Received:, Message-ID; default gethostname()
  std::vector<io::SocketAddress> listen;
  uint32_t threads = 0;                         // 0 = one per usable core but one (default_threads)
  uint64_t max_message_size = 52428800;         // bytes, advertised in SIZE
  uint32_t max_recipients = 1000;               // per transaction
  uint32_t max_sessions = 0;                    // 0 = derived from the open-file limit
  uint32_t max_sessions_per_client = 50;        // concurrent, per client address; 0 = off
  uint32_t max_connection_rate_per_client = 0;  // connections per minute; 0 = off
  uint32_t max_errors = 20;                     // errors before disconnect
  std::chrono::milliseconds command_timeout = std::chrono::minutes(5);
  std::chrono::milliseconds data_timeout = std::chrono::minutes(10);  // RFC 5321 4.5.3.2
  // A whole message body (DATA to its end, or a transaction's BDAT chunks to LAST) from its
  // start, however the client paces its octets (data_timeout restarts on every read).
  // command_timeout bounds a whole command line likewise.
  std::chrono::milliseconds data_phase_timeout = std::chrono::hours(1);
  std::chrono::milliseconds drain_timeout = std::chrono::seconds(30);
  uint32_t max_received_headers = 100;     // loop detection
  uint32_t max_command_line = 512;         // octets, CRLF included
  uint32_t max_param_command_line = 2048;  // MAIL/RCPT with ESMTP parameters
  // Message bodies in memory per shard (being received, or not yet committed); when full,
  // sessions in DATA/BDAT are not read until it frees. MAIL SIZE= above it: 452 4.3.1.
  uint64_t body_memory_per_shard = 268435456;

  friend bool operator==(const ServerConfig&, const ServerConfig&) = default;
};

struct SpoolConfig {
  std::string dir = "./var/spool";
  uint32_t commit_interval_us = 500;      // group commit: longest wait between batches when syncs are costly
  uint64_t commit_batch_bytes = 1048576;  // commit at once when this much is waiting
  uint64_t min_free_bytes = 1073741824;   // below this, MAIL gets 452 4.3.1
  uint64_t segment_bytes = 75497472;      // >= segment_bytes_needed(): 72 MiB for the defaults
  uint32_t max_open_segments = 64;        // per shard: sealed segments with an open descriptor

  friend bool operator==(const SpoolConfig&, const SpoolConfig&) = default;
};

struct RelayConfig {
  io::NetworkList networks;  // clients allowed to relay anywhere
  // Recipient domains accepted from anyone, lower case; ".example.test" = every subdomain.
  std::vector<std::string> domains;

  friend bool operator==(const RelayConfig&, const RelayConfig&) = default;
};

struct ProxyProtocolConfig {
  io::NetworkList trusted;  // load balancers that must send a PROXY v1/v2 header
  std::chrono::milliseconds timeout = std::chrono::seconds(5);

  friend bool operator==(const ProxyProtocolConfig&, const ProxyProtocolConfig&) = default;
};

inline constexpr uint32_t kDnsCacheEntriesMax = 1 << 22;
inline constexpr uint32_t kMessagesPerConnectionMax = 1'000'000;
inline constexpr uint32_t kOutboundConnectionsMax = 1'000'000;
inline constexpr uint32_t kRecipientsPerTransactionMax = 1000;  // smtp::kClientRecipientsMax

struct DnsConfig {
  std::vector<io::SocketAddress> servers;  // empty = /etc/resolv.conf
  // Answers are kept at least ttl_floor (a TTL of 0 would mean a query per message) and at most
  // ttl_ceiling (a changed MX is followed within it), negative answers too (RFC 2308).
  std::chrono::milliseconds ttl_floor = std::chrono::seconds(5);
  std::chrono::milliseconds ttl_ceiling = std::chrono::hours(1);
  uint32_t cache_entries = 100'000;
  std::chrono::milliseconds timeout = std::chrono::seconds(5);  // per query, over every try

  friend bool operator==(const DnsConfig&, const DnsConfig&) = default;
};

struct DeliveryConfig {
  uint16_t port = 25;  // port used for MX hosts
  std::chrono::milliseconds retry_initial = std::chrono::minutes(5);
  std::chrono::milliseconds retry_max = std::chrono::hours(1);
  std::chrono::milliseconds lifetime = std::chrono::hours(24 * 5);
  uint32_t connections_per_host = 20;  // per site: the domains that share a set of MX hosts
  uint32_t max_connections = 1000;     // outbound connections over all shards (descriptors are planned for them)
  uint32_t messages_per_connection = 100;
  uint32_t recipients_per_transaction = 100;
  std::chrono::milliseconds connect_timeout = std::chrono::seconds(30);
  std::chrono::milliseconds idle_timeout = std::chrono::seconds(2);  // an idle connection is closed then
  // A site whose every connection fails waits this long before the next try, doubling to retry_max.
  std::chrono::milliseconds site_backoff = std::chrono::seconds(60);

  friend bool operator==(const DeliveryConfig&, const DeliveryConfig&) = default;
};

struct RouteConfig {
  std::string domain;  // "*" or a domain, lower case
  io::SocketAddress next_hop;

  friend bool operator==(const RouteConfig&, const RouteConfig&) = default;
};

inline constexpr std::string_view kUnixSocketPrefix = "unix:";
inline constexpr size_t kUnixSocketPathMax = 107;  // sizeof(sockaddr_un::sun_path) - 1 (the NUL)
inline constexpr std::string_view kAdminTokenFileName = "admin.token";

struct AdminConfig {
  io::SocketAddress listen;  // TCP; unused when unix_socket is set
  std::string unix_socket;   // listen = "unix:/path": the socket's path, and no TCP listener
  std::string token_file;    // "" = <spool dir>/admin.token

  friend bool operator==(const AdminConfig&, const AdminConfig&) = default;
};

struct Config {
  ServerConfig server;
  SpoolConfig spool;
  RelayConfig relay;
  ProxyProtocolConfig proxy_protocol;
  DnsConfig dns;
  DeliveryConfig delivery;
  std::vector<RouteConfig> routes;  // [[route]], in file order
  AdminConfig admin;

  friend bool operator==(const Config&, const Config&) = default;
};

// The smallest segment that holds the largest message the config allows, as stored: dot-stuffing
// can grow a message by a third (a body of "." lines), plus the envelope and our headers.
uint64_t segment_bytes_needed(uint64_t max_message_size, uint32_t max_recipients);

// One problem found in a config file. line is 1-based; 0 when no line applies (unreadable file).
struct ConfigError {
  std::string file;
  uint32_t line = 0;
  std::string message;

  std::string to_string() const;  // "file:line: message" ("file: message" without a line)
};
using ConfigErrors = std::vector<ConfigError>;

// The embedded defaults (used by `sluice serve` without --config).
Config default_config();

// Every problem in the file (syntax, unknown key or table, wrong type, bad value, out of range),
// in file order; empty = valid.
ConfigErrors check_config_file(const std::string& path);
ConfigErrors check_config_text(std::string_view text, std::string_view file_name);

// The defaults overlaid with the file; on any problem, InvalidArgument listing every
// "file:line: message", one per line.
absl::StatusOr<Config> load_config_file(const std::string& path);
absl::StatusOr<Config> load_config_text(std::string_view text, std::string_view file_name);

// Command-line overrides of `sluice serve`, as given on the command line.
struct CliOverrides {
  std::vector<std::string> listen;     // --listen ADDR:PORT (repeatable); replaces the list
  std::optional<std::string> spool;    // --spool DIR
  std::optional<std::string> threads;  // --threads N
  std::optional<std::string> admin;    // --admin ADDR:PORT or unix:PATH
};
// Error messages name the option, e.g. "--threads: ...".
absl::Status apply_cli_overrides(Config& config, const CliOverrides& overrides);

// "ADDR:PORT" or "unix:PATH", as written in the file.
std::string admin_listen_text(const AdminConfig& admin);
// [admin] token_file, or <spool dir>/admin.token.
std::string admin_token_path(const Config& config);
// Things that do not stop Sluice but that an operator must hear of (e.g. the admin endpoint,
// which can read and delete mail, bound outside loopback). check-config prints them, serve logs them.
std::vector<std::string> config_warnings(const Config& config);

// Worker threads to start: server.threads, or default_threads(the cores this process may use)
// when it is 0.
uint32_t effective_threads(const Config& config);
// One shard per usable core but one (at least one, at most kThreadsMax).
uint32_t default_threads(uint32_t usable_cores);

// The config as TOML that load_config_text reads back to an equal Config.
std::string config_to_string(const Config& config);

}  // namespace sluice::app
