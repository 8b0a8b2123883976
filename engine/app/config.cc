// The TOML configuration: defaults, parsing, validation, command-line overrides.
//
// Owns the meaning of every config key and its limits (one config struct, one reader). Runs at
// start-up only and reports EVERY problem of a file at once, each as "file:line: message", so an
// operator fixes a file in one pass. It never half-applies a file: a file with any problem gives
// no Config at all. toml++ throws (TOML_EXCEPTIONS); exceptions are caught here and never leave
// this module.

#include "engine/app/config.h"

#include <sched.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "engine/io/strings.h"
#include "spool/format.h"

namespace sluice::app {
namespace {

using std::chrono::milliseconds;

constexpr size_t kDomainMax = 253;  // RFC 1035 2.3.4, without the trailing dot
constexpr size_t kLabelMax = 63;
constexpr size_t kHostNameBufferBytes = 256;
// Unknown keys longer than this get no "did you mean" (the distance table is bounded).
constexpr size_t kSuggestKeyMax = 64;
constexpr size_t kSuggestDistanceMin = 2;
constexpr size_t kQuotedValueMax = 80;
constexpr std::string_view kDefaultListen = "127.0.0.1:2525";
constexpr std::string_view kDefaultAdmin = "127.0.0.1:9025";
constexpr std::array<std::string_view, 2> kDefaultRelayNetworks = {"127.0.0.0/8", "::1/128"};

constexpr std::array<std::string_view, 8> kSections = {"server", "spool",    "relay", "proxy_protocol",
                                                       "dns",    "delivery", "route", "admin"};
constexpr std::array<std::string_view, 17> kServerKeys = {"hostname",
                                                          "listen",
                                                          "threads",
                                                          "max_message_size",
                                                          "max_recipients",
                                                          "max_sessions",
                                                          "max_sessions_per_client",
                                                          "max_connection_rate_per_client",
                                                          "max_errors",
                                                          "command_timeout",
                                                          "data_timeout",
                                                          "data_phase_timeout",
                                                          "drain_timeout",
                                                          "max_received_headers",
                                                          "max_command_line",
                                                          "max_param_command_line",
                                                          "body_memory_per_shard"};
constexpr std::array<std::string_view, 6> kSpoolKeys = {
    "dir", "commit_interval_us", "commit_batch_bytes", "min_free_bytes", "segment_bytes", "max_open_segments"};
constexpr std::array<std::string_view, 2> kRelayKeys = {"networks", "domains"};
constexpr std::array<std::string_view, 2> kProxyKeys = {"trusted", "timeout"};
constexpr std::array<std::string_view, 5> kDnsKeys = {"servers", "ttl_floor", "ttl_ceiling", "cache_entries",
                                                      "timeout"};
constexpr std::array<std::string_view, 11> kDeliveryKeys = {
    "port",         "retry_initial",           "retry_max",      "lifetime",
    "connections_per_host", "messages_per_connection", "recipients_per_transaction",
    "connect_timeout", "idle_timeout", "site_backoff", "max_connections"};
constexpr std::array<std::string_view, 2> kRouteKeys = {"domain", "next_hop"};
constexpr std::array<std::string_view, 2> kAdminKeys = {"listen", "token_file"};
constexpr std::array<std::string_view, 2> kLoopbackNetworks = {"127.0.0.0/8", "::1/128"};

std::string quote(std::string_view text) {
  if (text.size() > kQuotedValueMax) {
    return absl::StrCat("'", absl::CHexEscape(to_absl(text.substr(0, kQuotedValueMax))), "...'");
  }
  return absl::StrCat("'", absl::CHexEscape(to_absl(text)), "'");
}

std::string_view type_name(toml::node_type type) {
  switch (type) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

uint32_t line_of(const toml::node& node) {
  return node.source().begin.line;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::array<size_t, kSuggestKeyMax + 1> previous{};
  std::array<size_t, kSuggestKeyMax + 1> current{};
  for (size_t j = 0; j <= b.size(); ++j) {
    previous[j] = j;
  }
  for (size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    previous = current;
  }
  return previous[b.size()];
}

std::string suggestion(std::string_view key, absl::Span<const std::string_view> known) {
  if (key.size() > kSuggestKeyMax) {
    return "";
  }
  std::string_view best;
  size_t best_distance = SIZE_MAX;
  for (std::string_view candidate : known) {
    if (candidate.empty() || candidate.size() > kSuggestKeyMax) {
      continue;
    }
    // Long names tolerate more typos ("segment_size" for "segment_bytes").
    const size_t allowed = std::max(kSuggestDistanceMin, candidate.size() / 3);
    const size_t distance = edit_distance(key, candidate);
    if (distance <= allowed && distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best.empty() ? "" : absl::StrCat(" (did you mean '", to_absl(best), "'?)");
}

bool is_label_char(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-';
}

// A host or domain name: dot-separated labels of letters, digits and hyphens, no label empty or
// starting or ending with a hyphen (RFC 1123 2.1), no trailing dot.
bool is_domain_name(std::string_view name) {
  if (name.empty() || name.size() > kDomainMax) {
    return false;
  }
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string_view::npos) {
      end = name.size();
    }
    const std::string_view label = name.substr(start, end - start);
    if (label.empty() || label.size() > kLabelMax || label.front() == '-' || label.back() == '-' ||
        !std::all_of(label.begin(), label.end(), is_label_char)) {
      return false;
    }
    start = end + 1;
  }
  return true;
}

std::string default_hostname() {
  std::array<char, kHostNameBufferBytes> buffer{};
  if (gethostname(buffer.data(), buffer.size() - 1) != 0 || buffer[0] == '\0') {
    return "localhost";
  }
  return buffer.data();
}

// "30s", "5m", "1h", "5d": an unsigned decimal integer and one unit letter.
std::optional<milliseconds> parse_duration(std::string_view text) {
  if (text.size() < 2) {
    return std::nullopt;
  }
  const std::string_view digits = text.substr(0, text.size() - 1);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  int64_t unit_ms = 0;
  switch (text.back()) {
    case 's':
      unit_ms = 1000;
      break;
    case 'm':
      unit_ms = 60 * 1000;
      break;
    case 'h':
      unit_ms = 3600 * 1000;
      break;
    case 'd':
      unit_ms = 86400 * 1000;
      break;
    default:
      return std::nullopt;
  }
  const int64_t max_count = kDurationMax.count() / unit_ms;
  int64_t count = 0;
  for (char c : digits) {
    count = count * 10 + (c - '0');
    if (count > max_count) {
      return kDurationMax + milliseconds(1);  // reported as out of range by the caller
    }
  }
  return milliseconds(count * unit_ms);
}

std::string duration_to_string(milliseconds duration) {
  const int64_t ms = duration.count();
  constexpr std::array<std::pair<int64_t, char>, 4> kUnits = {
      {{86400 * 1000, 'd'}, {3600 * 1000, 'h'}, {60 * 1000, 'm'}, {1000, 's'}}};
  for (const auto& [unit_ms, letter] : kUnits) {
    if (ms != 0 && ms % unit_ms == 0) {
      return absl::StrCat(ms / unit_ms, std::string(1, letter));
    }
  }
  return absl::StrCat(ms / 1000, "s");
}

// [admin] listen / --admin: "ADDR:PORT", "[V6ADDR]:PORT" or "unix:/path".
absl::Status parse_admin_listen(std::string_view text, AdminConfig& admin) {
  if (text.starts_with(kUnixSocketPrefix)) {
    const std::string_view path = text.substr(kUnixSocketPrefix.size());
    if (path.empty() || path.find('\0') != std::string_view::npos) {
      return absl::InvalidArgumentError("unix: needs a socket path (e.g. \"unix:/run/sluice/admin.sock\")");
    }
    if (path.size() > kUnixSocketPathMax) {
      return absl::InvalidArgumentError(
          absl::StrCat("unix socket path is longer than ", kUnixSocketPathMax, " octets"));
    }
    admin.unix_socket = std::string(path);
    return absl::OkStatus();
  }
  auto address = io::parse_host_port(text);
  if (!address.ok()) {
    return address.status();
  }
  admin.listen = *address;
  admin.unix_socket.clear();
  return absl::OkStatus();
}

bool is_unspecified(const io::SocketAddress& address) {
  const std::string ip = address.ip_string();
  return ip == "0.0.0.0" || ip == "::";
}

// Whether the admin listener would take (or share, through SO_REUSEPORT) an SMTP port.
bool same_listen_port(const io::SocketAddress& a, const io::SocketAddress& b) {
  return a.family() == b.family() && a.port() == b.port() && a.port() != 0 &&
         (a == b || is_unspecified(a) || is_unspecified(b));
}

std::optional<io::SocketAddress> admin_conflict(const Config& config) {
  if (!config.admin.unix_socket.empty()) {
    return std::nullopt;
  }
  for (const io::SocketAddress& smtp : config.server.listen) {
    if (same_listen_port(smtp, config.admin.listen)) {
      return smtp;
    }
  }
  return std::nullopt;
}

std::string admin_conflict_message(const io::SocketAddress& smtp) {
  return absl::StrCat("admin.listen: ", smtp.to_string(),
                      " is an SMTP listen address (server.listen); the admin endpoint needs its own");
}

// Reads a parsed document into a Config, collecting every problem.
class Reader {
 public:
  Reader(std::string_view file_name, ConfigErrors& errors) : _file_name(file_name), _errors(errors) {}

  void read(const toml::table& root, Config& config) {
    reject_unknown(root, "", kSections);
    read_server(section(root, "server"), config.server);
    read_spool(section(root, "spool"), config.spool);
    read_relay(section(root, "relay"), config.relay);
    read_proxy_protocol(section(root, "proxy_protocol"), config.proxy_protocol);
    read_dns(section(root, "dns"), config.dns);
    read_delivery(section(root, "delivery"), config.delivery);
    read_routes(root, config.routes);
    read_admin(section(root, "admin"), config.admin);
    check_segment_size(root, config);
    check_admin_listen(root, config);
  }

 private:
  // One [section]: its table, or nullptr when the file does not have it.
  struct Section {
    const toml::table* table = nullptr;
    std::string_view name;
  };

  void error(uint32_t line, std::string message) {
    _errors.push_back(ConfigError{std::string(_file_name), line, std::move(message)});
  }

  void wrong_type(const toml::node& node, std::string_view label, std::string_view expected) {
    error(line_of(node),
          absl::StrCat(to_absl(label), ": expected ", to_absl(expected), ", got ", to_absl(type_name(node.type()))));
  }

  static std::string label(Section section, std::string_view key) {
    return absl::StrCat(to_absl(section.name), ".", to_absl(key));
  }

  Section section(const toml::table& root, std::string_view name) {
    const toml::node* node = root.get(name);
    if (node == nullptr) {
      return Section{nullptr, name};
    }
    if (!node->is_table()) {
      wrong_type(*node, name, absl::StrCat("a table ([", to_absl(name), "])"));
      return Section{nullptr, name};
    }
    reject_unknown(*node->as_table(), name, known_keys(name));
    return Section{node->as_table(), name};
  }

  static absl::Span<const std::string_view> known_keys(std::string_view section) {
    if (section == "server") {
      return kServerKeys;
    }
    if (section == "spool") {
      return kSpoolKeys;
    }
    if (section == "relay") {
      return kRelayKeys;
    }
    if (section == "proxy_protocol") {
      return kProxyKeys;
    }
    if (section == "dns") {
      return kDnsKeys;
    }
    if (section == "delivery") {
      return kDeliveryKeys;
    }
    if (section == "route") {
      return kRouteKeys;
    }
    return kAdminKeys;
  }

  // Reports every key of `table` not in `known`. `section` is "" for the document itself and
  // "route" for a [[route]] element.
  void reject_unknown(const toml::table& table, std::string_view section, absl::Span<const std::string_view> known) {
    for (const auto& [key, node] : table) {
      const std::string_view name = key.str();
      if (std::find(known.begin(), known.end(), name) != known.end()) {
        continue;
      }
      const std::string hint = suggestion(name, known);
      const uint32_t line = key.source().begin.line;
      const std::string escaped = absl::CHexEscape(to_absl(name));
      if (section == "route") {
        error(line, absl::StrCat("unknown key ", quote(name), " in [[route]]", hint));
      } else if (section.empty()) {
        error(line, node.is_table() ? absl::StrCat("unknown table [", escaped, "]", hint)
                                    : absl::StrCat("unknown key ", quote(name), hint));
      } else {
        error(line, node.is_table() ? absl::StrCat("unknown table [", to_absl(section), ".", escaped, "]", hint)
                                    : absl::StrCat("unknown key ", quote(name), " in [", to_absl(section), "]", hint));
      }
    }
  }

  static const toml::node* find(Section section, std::string_view key) {
    return section.table == nullptr ? nullptr : section.table->get(key);
  }

  template <typename T>
  void integer(Section section, std::string_view key, int64_t min, int64_t max, T& out) {
    const toml::node* node = find(section, key);
    if (node == nullptr) {
      return;
    }
    const auto* value = node->as_integer();
    if (value == nullptr) {
      wrong_type(*node, label(section, key), "an integer");
      return;
    }
    if (value->get() < min || value->get() > max) {
      error(line_of(*node),
            absl::StrCat(label(section, key), ": ", value->get(), " is out of range (", min, " to ", max, ")"));
      return;
    }
    out = static_cast<T>(value->get());
  }

  // A string element or value; nullptr (and an error) when it is something else.
  const std::string* string_node(const toml::node& node, std::string_view what) {
    const auto* value = node.as_string();
    if (value == nullptr) {
      wrong_type(node, what, "a string");
      return nullptr;
    }
    return &value->get();
  }

  void duration(Section section, std::string_view key, milliseconds min, milliseconds& out) {
    const toml::node* node = find(section, key);
    if (node == nullptr) {
      return;
    }
    const std::string what = label(section, key);
    const auto* value = node->as_string();
    if (value == nullptr) {
      wrong_type(*node, what, "a string: an integer with s, m, h or d (e.g. \"5m\")");
      return;
    }
    const std::optional<milliseconds> parsed = parse_duration(value->get());
    if (!parsed) {
      error(line_of(*node), absl::StrCat(what, ": ", quote(value->get()),
                                         " is not a duration: an integer with s, m, h or d "
                                         "(e.g. \"30s\", \"5m\", \"1h\", \"5d\")"));
      return;
    }
    if (*parsed < min || *parsed > kDurationMax) {
      error(line_of(*node), absl::StrCat(what, ": ", quote(value->get()), " is out of range (", duration_to_string(min),
                                         " to ", duration_to_string(kDurationMax), ")"));
      return;
    }
    out = *parsed;
  }

  void host_port(Section section, std::string_view key, io::SocketAddress& out) {
    const toml::node* node = find(section, key);
    if (node == nullptr) {
      return;
    }
    const std::string what = label(section, key);
    if (const std::string* text = string_node(*node, what)) {
      auto address = io::parse_host_port(*text);
      if (!address.ok()) {
        error(line_of(*node), absl::StrCat(what, ": ", address.status().message()));
        return;
      }
      out = *address;
    }
  }

  // The elements of an array value, or nullptr (and an error) when it is not an array or is too
  // long.
  const toml::array* array(Section section, std::string_view key, size_t max) {
    const toml::node* node = find(section, key);
    if (node == nullptr) {
      return nullptr;
    }
    const toml::array* elements = node->as_array();
    if (elements == nullptr) {
      wrong_type(*node, label(section, key), "an array");
      return nullptr;
    }
    if (elements->size() > max) {
      error(line_of(*node), absl::StrCat(label(section, key), ": more than ", max, " entries"));
      return nullptr;
    }
    return elements;
  }

  // Calls parse(text) for every string element and reports each failure on its own line.
  template <typename Parse>
  bool for_each_string(const toml::array& elements, std::string_view what, Parse parse) {
    bool all_ok = true;
    for (size_t i = 0; i < elements.size(); ++i) {
      const toml::node& element = elements[i];
      const std::string element_label = absl::StrCat(to_absl(what), "[", i, "]");
      const std::string* text = string_node(element, element_label);
      if (text == nullptr) {
        all_ok = false;
        continue;
      }
      const absl::Status status = parse(*text);
      if (!status.ok()) {
        error(line_of(element), absl::StrCat(element_label, ": ", status.message()));
        all_ok = false;
      }
    }
    return all_ok;
  }

  void networks(Section section, std::string_view key, io::NetworkList& out) {
    const toml::array* elements = array(section, key, kNetworksMax);
    if (elements == nullptr) {
      return;
    }
    io::NetworkList list;
    const bool all_ok = for_each_string(*elements, label(section, key), [&list](std::string_view text) {
      auto network = io::Network::parse(text);
      if (!network.ok()) {
        return network.status();
      }
      list.add(*network);
      return absl::OkStatus();
    });
    if (all_ok) {
      out = std::move(list);
    }
  }

  void read_server(Section section, ServerConfig& server) {
    if (const toml::node* node = find(section, "hostname")) {
      if (const std::string* text = string_node(*node, "server.hostname")) {
        if (is_domain_name(*text)) {
          server.hostname = absl::AsciiStrToLower(*text);
        } else {
          error(line_of(*node), absl::StrCat("server.hostname: ", quote(*text), " is not a valid host name"));
        }
      }
    }
    if (const toml::array* elements = array(section, "listen", kListenAddressesMax)) {
      std::vector<io::SocketAddress> listen;
      const bool all_ok = for_each_string(*elements, "server.listen", [&listen](std::string_view text) {
        auto address = io::parse_host_port(text);
        if (!address.ok()) {
          return address.status();
        }
        if (std::find(listen.begin(), listen.end(), *address) != listen.end()) {
          return absl::InvalidArgumentError(absl::StrCat(address->to_string(), " is listed twice"));
        }
        listen.push_back(*address);
        return absl::OkStatus();
      });
      if (all_ok && listen.empty()) {
        error(line_of(*elements), "server.listen: needs at least one address");
      } else if (all_ok) {
        server.listen = std::move(listen);
      }
    }
    integer(section, "threads", 0, kThreadsMax, server.threads);
    integer(section, "max_message_size", 1, kMessageSizeMax, server.max_message_size);
    integer(section, "max_recipients", 1, kRecipientsMax, server.max_recipients);
    integer(section, "max_sessions", 0, kSessionsMax, server.max_sessions);
    integer(section, "max_sessions_per_client", 0, kSessionsMax, server.max_sessions_per_client);
    integer(section, "max_connection_rate_per_client", 0, kSessionsMax, server.max_connection_rate_per_client);
    integer(section, "max_errors", 1, kErrorsMax, server.max_errors);
    duration(section, "command_timeout", std::chrono::seconds(1), server.command_timeout);
    duration(section, "data_timeout", std::chrono::seconds(1), server.data_timeout);
    duration(section, "data_phase_timeout", std::chrono::seconds(1), server.data_phase_timeout);
    duration(section, "drain_timeout", milliseconds(0), server.drain_timeout);
    integer(section, "max_received_headers", 1, kReceivedHeadersMax, server.max_received_headers);
    integer(section, "max_command_line", kCommandLineMin, kCommandLineMax, server.max_command_line);
    integer(section, "max_param_command_line", kCommandLineMin, kCommandLineMax, server.max_param_command_line);
    integer(section, "body_memory_per_shard", kBodyMemoryMin, kBodyMemoryMax, server.body_memory_per_shard);
    if (server.max_param_command_line < server.max_command_line) {
      const toml::node* node = find(section, "max_param_command_line");
      node = node != nullptr ? node : find(section, "max_command_line");
      error(node != nullptr ? line_of(*node) : 0,
            absl::StrCat("server.max_param_command_line (", server.max_param_command_line,
                         ") must be at least server.max_command_line (", server.max_command_line, ")"));
    }
  }

  void read_spool(Section section, SpoolConfig& spool) {
    if (const toml::node* node = find(section, "dir")) {
      if (const std::string* text = string_node(*node, "spool.dir")) {
        if (text->empty() || text->find('\0') != std::string::npos) {
          error(line_of(*node), "spool.dir: must be a non-empty path without NUL characters");
        } else {
          spool.dir = *text;
        }
      }
    }
    integer(section, "commit_interval_us", 0, kCommitIntervalUsMax, spool.commit_interval_us);
    integer(section, "commit_batch_bytes", 1, kCommitBatchBytesMax, spool.commit_batch_bytes);
    integer(section, "min_free_bytes", 0, INT64_MAX, spool.min_free_bytes);
    integer(section, "segment_bytes", kSegmentBytesMin, kSegmentBytesMax, spool.segment_bytes);
    integer(section, "max_open_segments", 1, kOpenSegmentsMax, spool.max_open_segments);
  }

  // Run after every section is read: the bound involves [server] and [spool].
  void check_segment_size(const toml::table& root, const Config& config) {
    const uint64_t needed = segment_bytes_needed(config.server.max_message_size, config.server.max_recipients);
    // One message is one spool record: beyond the record limit it could never be stored (451 forever).
    if (needed - kSegmentOverheadBytes + kRecordOverheadBytes > spool::kMaxPayloadBytes) {
      const toml::node* size = root.at_path("server.max_message_size").node();
      if (size == nullptr) {
        size = root.at_path("server.max_recipients").node();
      }
      error(size != nullptr ? line_of(*size) : 0,
            absl::StrCat("server.max_message_size (", config.server.max_message_size,
                         ") is more than a spool record can hold: stored dot-stuffed with its envelope a message "
                         "may need ",
                         needed - kSegmentOverheadBytes + kRecordOverheadBytes, " octets, the limit is ",
                         spool::kMaxPayloadBytes));
      return;
    }
    if (config.spool.segment_bytes >= needed) {
      return;
    }
    const toml::node* node = root.at_path("spool.segment_bytes").node();
    if (node == nullptr) {
      node = root.at_path("server.max_message_size").node();
    }
    error(node != nullptr ? line_of(*node) : 0,
          absl::StrCat("spool.segment_bytes (", config.spool.segment_bytes,
                       ") must be at least 4/3 of server.max_message_size plus the envelope and headers (", needed,
                       "): a message is stored dot-stuffed in one segment"));
  }

  void read_relay(Section section, RelayConfig& relay) {
    networks(section, "networks", relay.networks);
    if (const toml::array* elements = array(section, "domains", kRelayDomainsMax)) {
      std::vector<std::string> domains;
      const bool all_ok = for_each_string(*elements, "relay.domains", [&domains](std::string_view text) {
        const std::string_view name = text.empty() || text.front() != '.' ? text : text.substr(1);
        if (!is_domain_name(name)) {
          return absl::InvalidArgumentError(
              absl::StrCat(quote(text),
                           " is not a domain (\"example.test\", or \".example.test\" for its "
                           "subdomains)"));
        }
        domains.push_back(absl::AsciiStrToLower(to_absl(text)));
        return absl::OkStatus();
      });
      if (all_ok) {
        relay.domains = std::move(domains);
      }
    }
  }

  void read_proxy_protocol(Section section, ProxyProtocolConfig& proxy) {
    networks(section, "trusted", proxy.trusted);
    duration(section, "timeout", std::chrono::seconds(1), proxy.timeout);
  }

  void read_dns(Section section, DnsConfig& dns) {
    if (const toml::array* elements = array(section, "servers", kDnsServersMax)) {
      std::vector<io::SocketAddress> servers;
      const bool all_ok = for_each_string(*elements, "dns.servers", [&servers](std::string_view text) {
        auto address = io::parse_host_optional_port(text, kDnsDefaultPort);
        if (!address.ok()) {
          return address.status();
        }
        servers.push_back(*address);
        return absl::OkStatus();
      });
      if (all_ok) {
        dns.servers = std::move(servers);
      }
    }
    duration(section, "ttl_floor", milliseconds(0), dns.ttl_floor);
    duration(section, "ttl_ceiling", std::chrono::seconds(1), dns.ttl_ceiling);
    integer(section, "cache_entries", 16, kDnsCacheEntriesMax, dns.cache_entries);
    duration(section, "timeout", std::chrono::seconds(1), dns.timeout);
    if (dns.ttl_ceiling < dns.ttl_floor) {
      const toml::node* node = find(section, "ttl_ceiling");
      error(node != nullptr ? line_of(*node) : 0, "dns.ttl_ceiling must be at least dns.ttl_floor");
    }
  }

  void read_delivery(Section section, DeliveryConfig& delivery) {
    integer(section, "port", 1, UINT16_MAX, delivery.port);
    duration(section, "retry_initial", std::chrono::seconds(1), delivery.retry_initial);
    duration(section, "retry_max", std::chrono::seconds(1), delivery.retry_max);
    duration(section, "lifetime", milliseconds(0), delivery.lifetime);
    integer(section, "connections_per_host", 1, kConnectionsPerHostMax, delivery.connections_per_host);
    integer(section, "messages_per_connection", 1, kMessagesPerConnectionMax, delivery.messages_per_connection);
    integer(section, "max_connections", 1, kOutboundConnectionsMax, delivery.max_connections);
    integer(section, "recipients_per_transaction", 1, kRecipientsPerTransactionMax,
            delivery.recipients_per_transaction);
    duration(section, "connect_timeout", std::chrono::seconds(1), delivery.connect_timeout);
    duration(section, "idle_timeout", milliseconds(0), delivery.idle_timeout);
    duration(section, "site_backoff", std::chrono::seconds(1), delivery.site_backoff);
    if (delivery.retry_max < delivery.retry_initial) {
      const toml::node* node = find(section, "retry_max");
      node = node != nullptr ? node : find(section, "retry_initial");
      error(
          node != nullptr ? line_of(*node) : 0,
          absl::StrCat("delivery.retry_max (", duration_to_string(delivery.retry_max),
                       ") must be at least delivery.retry_initial (", duration_to_string(delivery.retry_initial), ")"));
    }
  }

  void read_routes(const toml::table& root, std::vector<RouteConfig>& routes) {
    const toml::node* node = root.get("route");
    if (node == nullptr) {
      return;
    }
    const toml::array* elements = node->as_array();
    if (elements != nullptr && elements->empty()) {
      return;
    }
    if (elements == nullptr || !elements->is_array_of_tables()) {
      wrong_type(*node, "route", "an array of tables ([[route]])");
      return;
    }
    if (elements->size() > kRoutesMax) {
      error(line_of(*node), absl::StrCat("route: more than ", kRoutesMax, " routes"));
      return;
    }
    absl::flat_hash_set<std::string> seen;
    std::vector<RouteConfig> parsed;
    bool all_ok = true;
    for (const toml::node& element : *elements) {
      const toml::table& table = *element.as_table();
      reject_unknown(table, "route", kRouteKeys);
      const Section section{&table, "route"};
      RouteConfig route;
      bool route_ok = true;
      if (const toml::node* domain = find(section, "domain")) {
        if (const std::string* text = string_node(*domain, "route.domain")) {
          const std::string name = absl::AsciiStrToLower(*text);
          const bool subdomains = name.size() > 1 && name.front() == '.';
          if (name != "*" && !is_domain_name(subdomains ? std::string_view(name).substr(1) : name)) {
            error(line_of(*domain),
                  absl::StrCat("route.domain: ", quote(*text), " is not \"*\", a domain or .domain"));
            route_ok = false;
          } else if (!seen.insert(name).second) {
            error(line_of(*domain), absl::StrCat("route.domain: ", quote(*text), " has more than one route"));
            route_ok = false;
          }
          route.domain = name;
        } else {
          route_ok = false;
        }
      } else {
        error(line_of(table), "[[route]]: missing key 'domain'");
        route_ok = false;
      }
      if (find(section, "next_hop") == nullptr) {
        error(line_of(table), "[[route]]: missing key 'next_hop'");
        route_ok = false;
      } else {
        const size_t errors_before = _errors.size();
        host_port(section, "next_hop", route.next_hop);
        route_ok = route_ok && _errors.size() == errors_before;
      }
      all_ok = all_ok && route_ok;
      parsed.push_back(std::move(route));
    }
    if (all_ok) {
      routes = std::move(parsed);
    }
  }

  void read_admin(Section section, AdminConfig& admin) {
    if (const toml::node* node = find(section, "listen")) {
      if (const std::string* text = string_node(*node, "admin.listen")) {
        if (absl::Status status = parse_admin_listen(*text, admin); !status.ok()) {
          error(line_of(*node), absl::StrCat("admin.listen: ", status.message()));
        }
      }
    }
    if (const toml::node* node = find(section, "token_file")) {
      if (const std::string* text = string_node(*node, "admin.token_file")) {
        if (text->find('\0') != std::string::npos) {
          error(line_of(*node), "admin.token_file: must be a path without NUL characters");
        } else {
          admin.token_file = *text;
        }
      }
    }
  }

  // Run after every section is read: the conflict involves [server] and [admin].
  void check_admin_listen(const toml::table& root, const Config& config) {
    const std::optional<io::SocketAddress> smtp = admin_conflict(config);
    if (!smtp) {
      return;
    }
    const toml::node* node = root.at_path("admin.listen").node();
    if (node == nullptr) {
      node = root.at_path("server.listen").node();
    }
    error(node != nullptr ? line_of(*node) : 0, admin_conflict_message(*smtp));
  }

  std::string_view _file_name;
  ConfigErrors& _errors;
};

// Parses and reads one document; errors sorted by line (file order).
Config read_text(std::string_view text, std::string_view file_name, ConfigErrors& errors) {
  Config config = default_config();
  try {
    const toml::table root = toml::parse(text, file_name);
    Reader(file_name, errors).read(root, config);
  } catch (const toml::parse_error& e) {
    errors.push_back(ConfigError{std::string(file_name), e.source().begin.line,
                                 absl::StrCat("syntax error: ", to_absl(e.description()))});
  } catch (const std::exception& e) {
    errors.push_back(ConfigError{std::string(file_name), 0, absl::StrCat("cannot read: ", e.what())});
  }
  std::stable_sort(errors.begin(), errors.end(),
                   [](const ConfigError& a, const ConfigError& b) { return a.line < b.line; });
  return config;
}

// The whole file, or an error naming it.
std::optional<std::string> read_file(const std::string& path, ConfigErrors& errors) {
  FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    errors.push_back(ConfigError{path, 0, absl::StrCat("cannot open: ", std::strerror(errno))});
    return std::nullopt;
  }
  std::string text;
  std::array<char, 65536> chunk{};
  size_t got = 0;
  while ((got = std::fread(chunk.data(), 1, chunk.size(), file)) > 0) {
    text.append(chunk.data(), got);
    if (text.size() > kConfigFileBytesMax) {
      std::fclose(file);
      errors.push_back(ConfigError{path, 0, absl::StrCat("larger than ", kConfigFileBytesMax, " bytes")});
      return std::nullopt;
    }
  }
  const bool failed = std::ferror(file) != 0;
  const int saved_errno = errno;
  std::fclose(file);
  if (failed) {
    errors.push_back(ConfigError{path, 0, absl::StrCat("cannot read: ", std::strerror(saved_errno))});
    return std::nullopt;
  }
  return text;
}

absl::Status errors_to_status(const ConfigErrors& errors) {
  return absl::InvalidArgumentError(
      absl::StrJoin(errors, "\n", [](std::string* out, const ConfigError& e) { out->append(e.to_string()); }));
}

bool parse_cli_count(std::string_view text, uint32_t max, uint32_t& out) {
  if (text.empty() || text.size() > 10 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  uint64_t value = 0;
  for (char c : text) {
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  if (value > max) {
    return false;
  }
  out = static_cast<uint32_t>(value);
  return true;
}

}  // namespace

std::string ConfigError::to_string() const {
  if (line == 0) {
    return absl::StrCat(file, ": ", message);
  }
  return absl::StrCat(file, ":", line, ": ", message);
}

uint64_t segment_bytes_needed(uint64_t max_message_size, uint32_t max_recipients) {
  return max_message_size + (max_message_size + 2) / 3 + uint64_t{max_recipients} * kEnvelopeOctetsPerRecipient +
         kSegmentOverheadBytes;
}

Config default_config() {
  Config config;
  config.server.hostname = default_hostname();
  config.server.listen.push_back(*io::parse_host_port(kDefaultListen));
  config.admin.listen = *io::parse_host_port(kDefaultAdmin);
  for (std::string_view cidr : kDefaultRelayNetworks) {
    config.relay.networks.add(*io::Network::parse(cidr));
  }
  return config;
}

ConfigErrors check_config_text(std::string_view text, std::string_view file_name) {
  ConfigErrors errors;
  read_text(text, file_name, errors);
  return errors;
}

ConfigErrors check_config_file(const std::string& path) {
  ConfigErrors errors;
  if (const std::optional<std::string> text = read_file(path, errors)) {
    read_text(*text, path, errors);
  }
  return errors;
}

absl::StatusOr<Config> load_config_text(std::string_view text, std::string_view file_name) {
  ConfigErrors errors;
  Config config = read_text(text, file_name, errors);
  if (!errors.empty()) {
    return errors_to_status(errors);
  }
  return config;
}

absl::StatusOr<Config> load_config_file(const std::string& path) {
  ConfigErrors errors;
  const std::optional<std::string> text = read_file(path, errors);
  if (!text) {
    return errors_to_status(errors);
  }
  return load_config_text(*text, path);
}

absl::Status apply_cli_overrides(Config& config, const CliOverrides& overrides) {
  Config updated = config;
  if (!overrides.listen.empty()) {
    updated.server.listen.clear();
    for (const std::string& text : overrides.listen) {
      auto address = io::parse_host_port(text);
      if (!address.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("--listen: ", address.status().message()));
      }
      if (std::find(updated.server.listen.begin(), updated.server.listen.end(), *address) !=
          updated.server.listen.end()) {
        return absl::InvalidArgumentError(absl::StrCat("--listen: ", address->to_string(), " is given twice"));
      }
      updated.server.listen.push_back(*address);
    }
  }
  if (overrides.spool) {
    if (overrides.spool->empty() || overrides.spool->find('\0') != std::string::npos) {
      return absl::InvalidArgumentError("--spool: must be a non-empty path");
    }
    updated.spool.dir = *overrides.spool;
  }
  if (overrides.threads) {
    if (!parse_cli_count(*overrides.threads, kThreadsMax, updated.server.threads)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--threads: ", quote(*overrides.threads), " is not a number from 0 to ", kThreadsMax, " (0 = one per usable core but one)"));
    }
  }
  if (overrides.admin) {
    if (absl::Status status = parse_admin_listen(*overrides.admin, updated.admin); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--admin: ", status.message()));
    }
  }
  if (const std::optional<io::SocketAddress> smtp = admin_conflict(updated)) {
    return absl::InvalidArgumentError(
        absl::StrCat(overrides.admin ? "--admin: " : "--listen: ", admin_conflict_message(*smtp)));
  }
  config = std::move(updated);
  return absl::OkStatus();
}

std::string admin_listen_text(const AdminConfig& admin) {
  return admin.unix_socket.empty() ? admin.listen.to_string() : str_cat(kUnixSocketPrefix, admin.unix_socket);
}

std::string admin_token_path(const Config& config) {
  if (!config.admin.token_file.empty()) {
    return config.admin.token_file;
  }
  std::string path = config.spool.dir;
  if (!path.empty() && path.back() != '/') {
    path += '/';
  }
  return str_cat(path, kAdminTokenFileName);
}

std::vector<std::string> config_warnings(const Config& config) {
  std::vector<std::string> warnings;
  if (config.admin.unix_socket.empty()) {
    bool loopback = false;
    for (std::string_view cidr : kLoopbackNetworks) {
      loopback = loopback || io::Network::parse(cidr)->contains(config.admin.listen);
    }
    if (!loopback) {
      warnings.push_back(absl::StrCat("admin.listen ", config.admin.listen.to_string(),
                                      " is outside loopback: anyone who can reach it and holds the token can read, "
                                      "hold and delete mail (prefer 127.0.0.1, ::1 or unix:PATH)"));
    }
  }
  if (config.server.body_memory_per_shard < config.server.max_message_size) {
    warnings.push_back(absl::StrCat("server.body_memory_per_shard (", config.server.body_memory_per_shard,
                                    ") is below server.max_message_size (", config.server.max_message_size,
                                    "): larger messages get 452 4.3.1 (with SIZE=) or 421 4.3.1 though SIZE "
                                    "advertises more"));
  }
  return warnings;
}

uint32_t default_threads(uint32_t usable_cores) {
  // One core is left to the work a shard hands to the kernel and to helper threads: io_uring's
  // workers (every spool write and fdatasync), the network stack's softirqs, the preallocators.
  // Shards on every core preempt those and each other: on a 2-core box one shard relays about
  // twice as fast as two (bench/RESULTS.md, issue 7).
  return std::clamp<uint32_t>(usable_cores > 1 ? usable_cores - 1 : 1, 1, kThreadsMax);
}

uint32_t effective_threads(const Config& config) {
  if (config.server.threads != 0) {
    return config.server.threads;
  }
  // The CPUs this process may run on (taskset, cgroup cpusets), not every CPU of the box.
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) > 0) {
    return default_threads(static_cast<uint32_t>(CPU_COUNT(&cpus)));
  }
  return default_threads(std::thread::hardware_concurrency());
}

std::string config_to_string(const Config& config) {
  auto strings = [](const auto& items, auto to_text) {
    toml::array array;
    for (const auto& item : items) {
      array.push_back(to_text(item));
    }
    return array;
  };
  auto address_text = [](const io::SocketAddress& address) { return address.to_string(); };
  auto network_text = [](const io::Network& network) { return network.to_string(); };
  auto same = [](const std::string& text) { return text; };
  auto integer = [](uint64_t value) { return static_cast<int64_t>(value); };

  const ServerConfig& server = config.server;
  const SpoolConfig& spool = config.spool;
  const DeliveryConfig& delivery = config.delivery;
  toml::array routes;
  for (const RouteConfig& route : config.routes) {
    routes.push_back(toml::table{{"domain", route.domain}, {"next_hop", route.next_hop.to_string()}});
  }
  toml::table root{
      {"server",
       toml::table{
           {"hostname", server.hostname},
           {"listen", strings(server.listen, address_text)},
           {"threads", integer(server.threads)},
           {"max_message_size", integer(server.max_message_size)},
           {"max_recipients", integer(server.max_recipients)},
           {"max_sessions", integer(server.max_sessions)},
           {"max_sessions_per_client", integer(server.max_sessions_per_client)},
           {"max_connection_rate_per_client", integer(server.max_connection_rate_per_client)},
           {"max_errors", integer(server.max_errors)},
           {"command_timeout", duration_to_string(server.command_timeout)},
           {"data_timeout", duration_to_string(server.data_timeout)},
           {"data_phase_timeout", duration_to_string(server.data_phase_timeout)},
           {"drain_timeout", duration_to_string(server.drain_timeout)},
           {"max_received_headers", integer(server.max_received_headers)},
           {"max_command_line", integer(server.max_command_line)},
           {"max_param_command_line", integer(server.max_param_command_line)},
           {"body_memory_per_shard", integer(server.body_memory_per_shard)},
       }},
      {"spool",
       toml::table{
           {"dir", spool.dir},
           {"commit_interval_us", integer(spool.commit_interval_us)},
           {"commit_batch_bytes", integer(spool.commit_batch_bytes)},
           {"min_free_bytes", integer(spool.min_free_bytes)},
           {"segment_bytes", integer(spool.segment_bytes)},
           {"max_open_segments", integer(spool.max_open_segments)},
       }},
      {"relay",
       toml::table{
           {"networks", strings(config.relay.networks.networks(), network_text)},
           {"domains", strings(config.relay.domains, same)},
       }},
      {"proxy_protocol",
       toml::table{
           {"trusted", strings(config.proxy_protocol.trusted.networks(), network_text)},
           {"timeout", duration_to_string(config.proxy_protocol.timeout)},
       }},
      {"dns", toml::table{{"servers", strings(config.dns.servers, address_text)}}},
      {"delivery",
       toml::table{
           {"port", integer(delivery.port)},
           {"retry_initial", duration_to_string(delivery.retry_initial)},
           {"retry_max", duration_to_string(delivery.retry_max)},
           {"lifetime", duration_to_string(delivery.lifetime)},
           {"connections_per_host", integer(delivery.connections_per_host)},
       }},
      {"admin", toml::table{{"listen", admin_listen_text(config.admin)}, {"token_file", config.admin.token_file}}},
  };
  if (!routes.empty()) {
    root.insert("route", std::move(routes));
  }
  std::ostringstream out;
  out << root << "\n";
  return out.str();
}

}  // namespace sluice::app
