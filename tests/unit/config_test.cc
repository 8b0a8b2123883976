#include "engine/app/config.h"

#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/strings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sluice::app {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::HasSubstr;

io::SocketAddress address(std::string_view text) {
  auto parsed = io::parse_ip(text);
  EXPECT_TRUE(parsed.ok()) << text;
  return parsed.ok() ? *parsed : io::SocketAddress{};
}

std::vector<std::string> addresses(const std::vector<io::SocketAddress>& list) {
  std::vector<std::string> out;
  for (const auto& a : list) {
    out.push_back(a.to_string());
  }
  return out;
}

// Writes TOML files into a private temp directory, removed at the end.
class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "sluice_config_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    _dir = pattern;
  }
  void TearDown() override {
    for (const std::string& path : _files) {
      unlink(path.c_str());
    }
    rmdir(_dir.c_str());
  }

  std::string write(std::string_view name, std::string_view text) {
    const std::string path = _dir + "/" + std::string(name);
    std::ofstream(path, std::ios::binary) << text;
    _files.push_back(path);
    return path;
  }

  std::string _dir;
  std::vector<std::string> _files;
};

// The errors for `text` as "line: message" strings, for compact expectations.
std::vector<std::string> errors_of(std::string_view text) {
  std::vector<std::string> out;
  for (const ConfigError& error : check_config_text(text, "t.toml")) {
    EXPECT_EQ(error.file, "t.toml");
    out.push_back(std::to_string(error.line) + ": " + error.message);
  }
  return out;
}

// Expects exactly one error, on `line`, containing `fragment`.
void expect_one_error(std::string_view text, uint32_t line, std::string_view fragment) {
  const ConfigErrors errors = check_config_text(text, "t.toml");
  ASSERT_EQ(errors.size(), 1u) << text << "\n" << ::testing::PrintToString(errors_of(text));
  EXPECT_EQ(errors[0].line, line) << text << "\n" << errors[0].message;
  EXPECT_THAT(errors[0].message, HasSubstr(std::string(fragment))) << text;
  EXPECT_FALSE(load_config_text(text, "t.toml").ok());
}

Config load_ok(std::string_view text) {
  auto config = load_config_text(text, "t.toml");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : Config{};
}

TEST(ConfigDefaults, MatchTheDesign) {
  const Config config = default_config();
  EXPECT_EQ(addresses(config.server.listen), std::vector<std::string>{"127.0.0.1:2525"});
  EXPECT_EQ(config.spool.dir, "./var/spool");
  EXPECT_EQ(config.admin.listen.to_string(), "127.0.0.1:9025");
  EXPECT_EQ(config.relay.networks.to_string(), "127.0.0.0/8, ::1/128");
  EXPECT_TRUE(config.relay.networks.contains(address("127.0.0.1")));
  EXPECT_TRUE(config.relay.networks.contains(address("::1")));
  EXPECT_FALSE(config.relay.networks.contains(address("10.0.0.1")));
  EXPECT_TRUE(config.relay.domains.empty());
  EXPECT_TRUE(config.proxy_protocol.trusted.empty());
  EXPECT_TRUE(config.dns.servers.empty());
  EXPECT_TRUE(config.routes.empty());
  EXPECT_EQ(config.server.threads, 0u);
  std::array<char, 256> host{};
  ASSERT_EQ(gethostname(host.data(), host.size() - 1), 0);
  EXPECT_EQ(config.server.hostname, host.data());

  EXPECT_EQ(config.server.max_message_size, 52428800u);
  EXPECT_EQ(config.server.max_recipients, 1000u);
  EXPECT_EQ(config.server.max_sessions, 0u);
  EXPECT_EQ(config.server.max_sessions_per_client, 50u);
  EXPECT_EQ(config.server.max_connection_rate_per_client, 0u);
  EXPECT_EQ(config.server.max_errors, 20u);
  EXPECT_EQ(config.server.command_timeout, minutes(5));
  EXPECT_EQ(config.server.data_timeout, minutes(10));
  EXPECT_EQ(config.server.data_phase_timeout, hours(1));
  EXPECT_EQ(config.server.drain_timeout, seconds(30));
  EXPECT_EQ(config.server.max_received_headers, 100u);
  EXPECT_EQ(config.server.max_command_line, 512u);
  EXPECT_EQ(config.server.max_param_command_line, 2048u);
  EXPECT_EQ(config.server.body_memory_per_shard, 268435456u);
  EXPECT_EQ(config.spool.commit_interval_us, 500u);
  EXPECT_EQ(config.spool.commit_batch_bytes, 1048576u);
  EXPECT_EQ(config.spool.min_free_bytes, 1073741824u);
  EXPECT_EQ(config.spool.segment_bytes, 75497472u);
  EXPECT_GE(config.spool.segment_bytes,
            segment_bytes_needed(config.server.max_message_size, config.server.max_recipients));
  EXPECT_EQ(config.proxy_protocol.timeout, seconds(5));
  EXPECT_EQ(config.delivery.port, 25);
  EXPECT_EQ(config.delivery.retry_initial, minutes(5));
  EXPECT_EQ(config.delivery.retry_max, hours(1));
  EXPECT_EQ(config.delivery.lifetime, hours(24 * 5));
  EXPECT_EQ(config.delivery.connections_per_host, 20u);
}

TEST(ConfigDefaults, EmptyFileIsTheDefaults) {
  EXPECT_EQ(load_ok(""), default_config());
  EXPECT_EQ(load_ok("# nothing but a comment\n\n[server]\n[spool]\n"), default_config());
  EXPECT_TRUE(check_config_text("", "t.toml").empty());
}

// The example of DESIGN.md section 4, verbatim, plus every other key.
constexpr std::string_view kEveryKey = R"([server]
hostname = "relay.example.test"    # EHLO name, Received:, Message-ID
listen = ["127.0.0.1:2525"]
threads = 2
max_message_size = 52428800         # advertised in SIZE
max_recipients = 1000
[spool]
dir = "/var/spool/sluice"
commit_interval_us = 500               # group commit pacing
commit_batch_bytes = 1048576           # commit at once when this much is waiting
min_free_bytes = 1073741824            # below this, MAIL gets 452 4.3.1
[relay]
networks = ["127.0.0.0/8", "::1/128"]  # clients allowed to relay anywhere
domains = []                           # recipient domains accepted from anyone
[proxy_protocol]
trusted = []                           # LB networks allowed to send PROXY v1/v2
[dns]
servers = []                           # e.g. ["127.0.0.1:8053"]; empty = /etc/resolv.conf
[delivery]
port = 25                              # port used for MX hosts (tests use another)
retry_initial = "5m"
retry_max = "1h"
lifetime = "5d"
connections_per_host = 20
[[route]]                              # static next hop, bypasses MX lookup
domain = "*"                           # or a domain; most specific wins
next_hop = "127.0.0.2:2526"
[admin]
listen = "127.0.0.1:9025"
)";

TEST_F(ConfigFileTest, DesignExampleLoads) {
  const std::string path = write("design.toml", kEveryKey);
  EXPECT_TRUE(check_config_file(path).empty());
  auto config = load_config_file(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server.hostname, "relay.example.test");
  EXPECT_EQ(config->server.threads, 2u);
  EXPECT_EQ(config->spool.dir, "/var/spool/sluice");
  ASSERT_EQ(config->routes.size(), 1u);
  EXPECT_EQ(config->routes[0].domain, "*");
  EXPECT_EQ(config->routes[0].next_hop.to_string(), "127.0.0.2:2526");
}

TEST(ConfigKeys, EveryKeyIsRead) {
  const Config config = load_ok(R"(
[server]
hostname = "MX1.Example.TEST"
listen = ["127.0.0.1:2525", "[::1]:2526", "0.0.0.0:0"]
threads = 7
max_message_size = 1000000
max_recipients = 50
max_sessions = 30000
max_sessions_per_client = 5
max_connection_rate_per_client = 60
max_errors = 3
command_timeout = "2m"
data_timeout = "3m"
data_phase_timeout = "20m"
drain_timeout = "0s"
max_received_headers = 30
max_command_line = 1000
max_param_command_line = 4000
body_memory_per_shard = 33554432
[spool]
dir = "/tmp/spool dir"
commit_interval_us = 0
commit_batch_bytes = 4096
min_free_bytes = 0
segment_bytes = 2097152
max_open_segments = 7
[relay]
networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
domains = ["Example.TEST", ".sub.example.test"]
[proxy_protocol]
trusted = ["10.1.0.0/16"]
timeout = "10s"
[dns]
servers = ["127.0.0.1:8053", "127.0.0.2", "::1", "[::2]:5353"]
[delivery]
port = 2526
retry_initial = "1s"
retry_max = "2h"
lifetime = "1d"
connections_per_host = 3
[[route]]
domain = "*"
next_hop = "127.0.0.2:2526"
[[route]]
domain = "Example.ORG"
next_hop = "[::1]:25"
[admin]
listen = "[::1]:9026"
token_file = "/etc/sluice/admin.token"
)");
  const ServerConfig& server = config.server;
  EXPECT_EQ(server.hostname, "mx1.example.test");
  EXPECT_EQ(addresses(server.listen), (std::vector<std::string>{"127.0.0.1:2525", "[::1]:2526", "0.0.0.0:0"}));
  EXPECT_EQ(server.threads, 7u);
  EXPECT_EQ(server.max_message_size, 1000000u);
  EXPECT_EQ(server.max_recipients, 50u);
  EXPECT_EQ(server.max_sessions, 30000u);
  EXPECT_EQ(server.max_sessions_per_client, 5u);
  EXPECT_EQ(server.max_connection_rate_per_client, 60u);
  EXPECT_EQ(server.max_errors, 3u);
  EXPECT_EQ(server.command_timeout, minutes(2));
  EXPECT_EQ(server.data_timeout, minutes(3));
  EXPECT_EQ(server.data_phase_timeout, minutes(20));
  EXPECT_EQ(server.drain_timeout, milliseconds(0));
  EXPECT_EQ(server.max_received_headers, 30u);
  EXPECT_EQ(server.max_command_line, 1000u);
  EXPECT_EQ(server.max_param_command_line, 4000u);
  EXPECT_EQ(server.body_memory_per_shard, 33554432u);
  EXPECT_EQ(config.spool.dir, "/tmp/spool dir");
  EXPECT_EQ(config.spool.commit_interval_us, 0u);
  EXPECT_EQ(config.spool.commit_batch_bytes, 4096u);
  EXPECT_EQ(config.spool.min_free_bytes, 0u);
  EXPECT_EQ(config.spool.segment_bytes, 2097152u);
  EXPECT_EQ(config.spool.max_open_segments, 7u);
  EXPECT_EQ(config.relay.networks.to_string(), "10.0.0.0/8, 2001:db8::/32, 192.0.2.7/32");
  EXPECT_EQ(config.relay.domains, (std::vector<std::string>{"example.test", ".sub.example.test"}));
  EXPECT_EQ(config.proxy_protocol.trusted.to_string(), "10.1.0.0/16");
  EXPECT_EQ(config.proxy_protocol.timeout, seconds(10));
  EXPECT_EQ(addresses(config.dns.servers),
            (std::vector<std::string>{"127.0.0.1:8053", "127.0.0.2:53", "[::1]:53", "[::2]:5353"}));
  EXPECT_EQ(config.delivery.port, 2526);
  EXPECT_EQ(config.delivery.retry_initial, seconds(1));
  EXPECT_EQ(config.delivery.retry_max, hours(2));
  EXPECT_EQ(config.delivery.lifetime, hours(24));
  EXPECT_EQ(config.delivery.connections_per_host, 3u);
  ASSERT_EQ(config.routes.size(), 2u);
  EXPECT_EQ(config.routes[0].domain, "*");
  EXPECT_EQ(config.routes[0].next_hop.to_string(), "127.0.0.2:2526");
  EXPECT_EQ(config.routes[1].domain, "example.org");
  EXPECT_EQ(config.routes[1].next_hop.to_string(), "[::1]:25");
  EXPECT_EQ(config.admin.listen.to_string(), "[::1]:9026");
  EXPECT_EQ(config.admin.token_file, "/etc/sluice/admin.token");
  EXPECT_EQ(admin_token_path(config), "/etc/sluice/admin.token");
}

TEST(ConfigAdmin, UnixSocketTokenDefaultAndWarnings) {
  Config config = load_ok("[spool]\ndir = \"/var/spool/x\"\n[admin]\nlisten = \"unix:/run/sluice/admin.sock\"\n");
  EXPECT_EQ(config.admin.unix_socket, "/run/sluice/admin.sock");
  EXPECT_EQ(admin_listen_text(config.admin), "unix:/run/sluice/admin.sock");
  EXPECT_EQ(admin_token_path(config), "/var/spool/x/admin.token");
  EXPECT_TRUE(config_warnings(config).empty());
  EXPECT_EQ(admin_token_path(default_config()), "./var/spool/admin.token");
  EXPECT_TRUE(config_warnings(default_config()).empty());
  const Config open = load_ok("[admin]\nlisten = \"0.0.0.0:9025\"\n");
  ASSERT_EQ(config_warnings(open).size(), 1u);
  EXPECT_THAT(config_warnings(open)[0], HasSubstr("outside loopback"));
  EXPECT_TRUE(config_warnings(load_ok("[admin]\nlisten = \"[::1]:9025\"\n")).empty());
  const Config small_budget = load_ok("[server]\nbody_memory_per_shard = 8388608\n");
  ASSERT_EQ(config_warnings(small_budget).size(), 1u);
  EXPECT_THAT(config_warnings(small_budget)[0], HasSubstr("below server.max_message_size"));
  // Back to the file form and read again: the same config.
  EXPECT_EQ(load_ok(config_to_string(config)), config);
  CliOverrides overrides;
  overrides.admin = "unix:/tmp/a.sock";
  ASSERT_TRUE(apply_cli_overrides(config, overrides).ok());
  EXPECT_EQ(config.admin.unix_socket, "/tmp/a.sock");
  overrides.admin = "127.0.0.1:9100";
  ASSERT_TRUE(apply_cli_overrides(config, overrides).ok());
  EXPECT_TRUE(config.admin.unix_socket.empty());
  EXPECT_EQ(config.admin.listen.to_string(), "127.0.0.1:9100");
}

TEST(ConfigAdmin, ListenMustNotBeAnSmtpAddress) {
  expect_one_error("[server]\nlisten = [\"127.0.0.1:2525\"]\n[admin]\nlisten = \"127.0.0.1:2525\"\n", 4,
                   "admin.listen: 127.0.0.1:2525 is an SMTP listen address");
  expect_one_error("[server]\nlisten = [\"0.0.0.0:2525\"]\n[admin]\n\nlisten = \"127.0.0.1:2525\"\n", 5,
                   "is an SMTP listen address");
  expect_one_error("[server]\nlisten = [\"127.0.0.1:9025\"]\n", 2, "is an SMTP listen address");
  expect_one_error("[admin]\nlisten = \"unix:\"\n", 2, "admin.listen: unix: needs a socket path");
  expect_one_error(str_cat("[admin]\nlisten = \"unix:/", std::string(200, 'a'), "\"\n"), 2, "longer than 107");
  expect_one_error("[admin]\ntoken = \"x\"\n", 2, "unknown key 'token' in [admin]");
  Config config = default_config();
  CliOverrides overrides;
  overrides.admin = "127.0.0.1:2525";
  const absl::Status status = apply_cli_overrides(config, overrides);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--admin: admin.listen: 127.0.0.1:2525 is an SMTP"));
}

TEST(ConfigKeys, KeysNotInTheFileKeepTheirDefaults) {
  const Config config = load_ok("[server]\nthreads = 3\n");
  Config expected = default_config();
  expected.server.threads = 3;
  EXPECT_EQ(config, expected);
}

TEST(ConfigKeys, InlineTablesAndDottedKeysWork) {
  const Config config = load_ok("server = { threads = 4 }\nspool.dir = \"/x\"\n");
  EXPECT_EQ(config.server.threads, 4u);
  EXPECT_EQ(config.spool.dir, "/x");
}

TEST(ConfigErrors, UnknownKeysAndTables) {
  expect_one_error("[server]\nthreads = 1\nmax_recipient = 5\n", 3,
                   "unknown key 'max_recipient' in [server] (did you mean 'max_recipients'?)");
  expect_one_error("\n[servre]\nthreads = 1\n", 2, "unknown table [servre] (did you mean 'server'?)");
  expect_one_error("[server]\n\n[server.tls]\ncert = \"x\"\n", 3, "unknown table [server.tls]");
  expect_one_error("colour = 1\n", 1, "unknown key 'colour'");
  expect_one_error("[[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:25\"\nweight = 1\n", 4,
                   "unknown key 'weight' in [[route]]");
  expect_one_error("[spool]\nsegment_size = 1\n", 2, "(did you mean 'segment_bytes'?)");
  // No suggestion when nothing is close.
  const ConfigErrors far = check_config_text("[dns]\nzzzzzzzzzz = 1\n", "t.toml");
  ASSERT_EQ(far.size(), 1u);
  EXPECT_EQ(far[0].message, "unknown key 'zzzzzzzzzz' in [dns]");
}

TEST(ConfigErrors, WrongTypes) {
  expect_one_error("[server]\nthreads = \"2\"\n", 2, "server.threads: expected an integer, got a string");
  expect_one_error("[server]\nthreads = 2.0\n", 2, "got a floating-point number");
  expect_one_error("[server]\nhostname = 5\n", 2, "server.hostname: expected a string, got an integer");
  expect_one_error("[server]\nlisten = \"127.0.0.1:25\"\n", 2, "server.listen: expected an array, got a string");
  expect_one_error("[server]\nlisten = [\n\"127.0.0.1:25\",\n25]\n", 4,
                   "server.listen[1]: expected a string, got an integer");
  expect_one_error("[delivery]\nretry_max = 3600\n", 2,
                   "delivery.retry_max: expected a string: an integer with s, m, h or d");
  expect_one_error("server = 5\n", 1, "server: expected a table ([server]), got an integer");
  expect_one_error("[route]\ndomain = \"*\"\n", 1, "route: expected an array of tables ([[route]]), got a table");
  expect_one_error("[relay]\nnetworks = [true]\n", 2, "relay.networks[0]: expected a string, got a boolean");
  expect_one_error("[spool]\ndir = 1979-05-27\n", 2, "got a date");
}

TEST(ConfigErrors, OutOfRange) {
  expect_one_error("[server]\nthreads = -1\n", 2, "server.threads: -1 is out of range (0 to 1024)");
  expect_one_error("[server]\nthreads = 1025\n", 2, "out of range");
  expect_one_error("[server]\nmax_recipients = 0\n", 2, "out of range (1 to");
  expect_one_error("[server]\nmax_command_line = 511\n", 2, "out of range (512 to");
  expect_one_error("[delivery]\nport = 0\n", 2, "delivery.port: 0 is out of range (1 to 65535)");
  expect_one_error("[delivery]\nport = 65536\n", 2, "out of range");
  expect_one_error("[spool]\nmin_free_bytes = -5\n", 2, "out of range");
  expect_one_error("[spool]\ncommit_interval_us = 1000001\n", 2, "out of range");
  expect_one_error("[server]\nmax_message_size = 0\n", 2, "out of range");
  expect_one_error("[server]\nmax_message_size = 4294967296\n[spool]\nsegment_bytes = 8589934592\n", 2, "out of range");
  // The largest values are accepted.
  EXPECT_EQ(load_ok("[delivery]\nport = 65535\n").delivery.port, 65535);
  EXPECT_EQ(load_ok("[server]\nthreads = 1024\n").server.threads, 1024u);
  EXPECT_EQ(load_ok("[spool]\nmin_free_bytes = 9223372036854775807\n").spool.min_free_bytes, 9223372036854775807u);
}

TEST(ConfigErrors, BadValues) {
  expect_one_error("[server]\nlisten = [\"127.0.0.1\"]\n", 2, "server.listen[0]: '127.0.0.1': missing port");
  expect_one_error("[server]\nlisten = [\"::1:25\"]\n", 2, "must be in brackets");
  expect_one_error("[server]\nlisten = [\"localhost:25\"]\n", 2, "not a numeric IP address");
  expect_one_error("[server]\nlisten = []\n", 2, "needs at least one address");
  expect_one_error("[server]\nlisten = [\"127.0.0.1:25\", \"127.0.0.1:25\"]\n", 2, "listed twice");
  expect_one_error("[server]\nhostname = \"bad_host\"\n", 2, "not a valid host name");
  expect_one_error("[server]\nhostname = \"relay.example.test.\"\n", 2, "not a valid host name");
  expect_one_error("[server]\nmax_command_line = 2048\nmax_param_command_line = 1024\n", 3,
                   "must be at least server.max_command_line");
  expect_one_error("[spool]\ndir = \"\"\n", 2, "spool.dir: must be a non-empty path");
  expect_one_error("[server]\nbody_memory_per_shard = 1000\n", 2, "body_memory_per_shard");
  expect_one_error("[spool]\ndir = \"a\\u0000b\"\n", 2, "without NUL");
  expect_one_error("[admin]\nlisten = \"127.0.0.1\"\n", 2, "admin.listen: '127.0.0.1': missing port");
  expect_one_error("[dns]\nservers = [\"127.0.0.1:\"]\n", 2, "dns.servers[0]");
  expect_one_error("[dns]\nservers = [\"resolver.example\"]\n", 2, "not a numeric IP address");
  expect_one_error("[delivery]\nretry_initial = \"2h\"\nretry_max = \"1h\"\n", 3,
                   "delivery.retry_max (1h) must be at least delivery.retry_initial (2h)");
}

TEST(ConfigErrors, SyntaxErrorHasItsLine) {
  // toml++ places an unterminated array on its last line.
  expect_one_error("[server]\nthreads = 2\nlisten = [\"127.0.0.1:25\"\n", 3, "syntax error");
  expect_one_error("[server]\nthreads = 2\n\nthreads = 3\n", 4, "syntax error");
  expect_one_error("[server]\nthreads = = 2\n", 2, "syntax error");
  expect_one_error("[server\n", 1, "syntax error");
  // Invalid UTF-8 is a syntax error too, not a crash.
  EXPECT_FALSE(check_config_text("a = \"\xff\xfe\"\n", "t.toml").empty());
}

TEST(ConfigErrors, EveryProblemIsReportedInFileOrder) {
  const std::vector<std::string> errors = errors_of(R"([server]
threads = "many"
max_recipients = -3
bogus = 1
[relay]
networks = ["10.0.0.0/8", "10.1.2.3/8", "300.0.0.0/8"]
domains = ["ok.test", "bad..test"]
[wat]
[delivery]
lifetime = "5 days"
[[route]]
domain = "*"
[[route]]
domain = "*"
next_hop = "1.2.3.4"
)");
  ASSERT_EQ(errors.size(), 11u) << ::testing::PrintToString(errors);
  EXPECT_THAT(errors[0], HasSubstr("2: server.threads: expected an integer"));
  EXPECT_THAT(errors[1], HasSubstr("3: server.max_recipients: -3 is out of range"));
  EXPECT_THAT(errors[2], HasSubstr("4: unknown key 'bogus' in [server]"));
  EXPECT_THAT(errors[3], HasSubstr("6: relay.networks[1]: '10.1.2.3/8': host bits are set"));
  EXPECT_THAT(errors[3], HasSubstr("did you mean 10.0.0.0/8?"));
  EXPECT_THAT(errors[4], HasSubstr("6: relay.networks[2]: '300.0.0.0/8'"));
  EXPECT_THAT(errors[5], HasSubstr("7: relay.domains[1]: 'bad..test' is not a domain"));
  EXPECT_THAT(errors[6], HasSubstr("8: unknown table [wat]"));
  EXPECT_THAT(errors[7], HasSubstr("10: delivery.lifetime: '5 days' is not a duration"));
  EXPECT_THAT(errors[8], HasSubstr("11: [[route]]: missing key 'next_hop'"));
  // The second route: duplicate domain and a bad next hop, both at their own lines.
  EXPECT_THAT(errors[9], HasSubstr("14: route.domain: '*' has more than one route"));
  EXPECT_THAT(errors[10], HasSubstr("15: route.next_hop: '1.2.3.4': missing port"));
}

TEST(ConfigErrors, RouteProblems) {
  expect_one_error("[[route]]\nnext_hop = \"127.0.0.1:25\"\n", 1, "[[route]]: missing key 'domain'");
  expect_one_error("[[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1\"\n", 3,
                   "route.next_hop: '127.0.0.1': missing port");
  expect_one_error("[[route]]\ndomain = \"*.example.test\"\nnext_hop = \"127.0.0.1:25\"\n", 2,
                   "is not \"*\", a domain or .domain");
  expect_one_error("[[route]]\ndomain = 5\nnext_hop = \"127.0.0.1:25\"\n", 2,
                   "route.domain: expected a string, got an integer");
  expect_one_error(
      "[[route]]\ndomain = \"a.test\"\nnext_hop = \"127.0.0.1:25\"\n"
      "[[route]]\ndomain = \"A.TEST\"\nnext_hop = \"127.0.0.1:26\"\n",
      5, "has more than one route");
  EXPECT_TRUE(load_ok("route = []\n").routes.empty());
}

TEST(ConfigErrors, SegmentMustHoldTheLargestMessage) {
  // Reported on max_message_size's line when segment_bytes is the default...
  // 104857600 + 34952534 (a third, rounded up) + 1000 * 264 + 65536 = 140139670.
  expect_one_error("[server]\n\nmax_message_size = 104857600\n", 3,
                   "spool.segment_bytes (75497472) must be at least 4/3 of server.max_message_size plus the "
                   "envelope and headers (140139670)");
  // ...and on segment_bytes's line when the file sets it.
  expect_one_error("[spool]\nsegment_bytes = 2097152\n[server]\nmax_message_size = 2097152\n", 2, "must be at least");
  expect_one_error("[spool]\nsegment_bytes = 1048575\n", 2, "out of range");
  const Config exact = load_ok("[server]\nmax_message_size = 104857600\n[spool]\nsegment_bytes = 140139670\n");
  EXPECT_EQ(exact.spool.segment_bytes, 140139670u);
  expect_one_error("[server]\nmax_message_size = 104857600\n[spool]\nsegment_bytes = 140139669\n", 4,
                   "must be at least");
}

// A message is one spool record (at most 1 GiB of payload): a larger max_message_size would be
// accepted from clients and then refused with 451 forever. Before this check it loaded fine.
TEST(ConfigErrors, MaxMessageSizeMustFitASpoolRecord) {
  expect_one_error("[server]\nmax_message_size = 1073741824\n[spool]\nsegment_bytes = 2147483648\n", 2,
                   "is more than a spool record can hold");
  expect_one_error("[server]\nmax_message_size = 805306368\n[spool]\nsegment_bytes = 2147483648\n", 2,
                   "the limit is 1073741824");
  // 3/4 of the record limit, less the recipients' envelope and our headers, fits.
  const Config fits = load_ok("[server]\nmax_message_size = 800000000\n[spool]\nsegment_bytes = 2147483648\n");
  EXPECT_EQ(fits.server.max_message_size, 800000000u);
}

TEST(ConfigDurations, UnitsAndStrictness) {
  struct Good {
    std::string_view text;
    milliseconds value;
  };
  for (const Good& good :
       {Good{"1s", seconds(1)}, Good{"30s", seconds(30)}, Good{"5m", minutes(5)}, Good{"1h", hours(1)},
        Good{"5d", hours(120)}, Good{"3650d", hours(24 * 3650)}, Good{"0090s", seconds(90)}}) {
    const Config config = load_ok("[server]\ncommand_timeout = \"" + std::string(good.text) + "\"\n");
    EXPECT_EQ(config.server.command_timeout, good.value) << good.text;
  }
  for (std::string_view bad : {"5", "", "m", "5 m", " 5m", "5m ", "-5m", "+5m", "5M", "5ms", "1.5h", "5mm", "1h30m",
                               "5w", "0x10s", "5\u00b5s"}) {
    expect_one_error("[server]\n\ncommand_timeout = \"" + std::string(bad) + "\"\n", 3,
                     "is not a duration: an integer with s, m, h or d");
  }
  expect_one_error("[server]\ncommand_timeout = \"3651d\"\n", 2, "is out of range (1s to 3650d)");
  expect_one_error("[server]\ncommand_timeout = \"99999999999999999999999d\"\n", 2, "out of range");
  expect_one_error("[server]\ncommand_timeout = \"0s\"\n", 2, "out of range");
  expect_one_error("[proxy_protocol]\ntimeout = \"0m\"\n", 2, "out of range");
  EXPECT_EQ(load_ok("[server]\ndrain_timeout = \"0s\"\n").server.drain_timeout, milliseconds(0));
  EXPECT_EQ(load_ok("[delivery]\nlifetime = \"0d\"\n").delivery.lifetime, milliseconds(0));
}

TEST(ConfigNetworks, RelayAndTrustedNetworks) {
  const Config config = load_ok(
      "[relay]\nnetworks = [\"192.0.2.0/24\", \"2001:db8::/48\"]\n"
      "[proxy_protocol]\ntrusted = [\"10.0.0.5\", \"::ffff:10.0.1.0/120\"]\n");
  EXPECT_TRUE(config.relay.networks.contains(address("192.0.2.200")));
  EXPECT_TRUE(config.relay.networks.contains(address("::ffff:192.0.2.200")));
  EXPECT_TRUE(config.relay.networks.contains(address("2001:db8:0:ffff::1")));
  EXPECT_FALSE(config.relay.networks.contains(address("127.0.0.1")));  // replaced, not added
  EXPECT_FALSE(config.relay.networks.contains(address("2001:db8:1::1")));
  EXPECT_TRUE(config.proxy_protocol.trusted.contains(address("10.0.0.5")));
  EXPECT_FALSE(config.proxy_protocol.trusted.contains(address("10.0.0.6")));
  EXPECT_TRUE(config.proxy_protocol.trusted.contains(address("10.0.1.77")));
  EXPECT_TRUE(config.proxy_protocol.trusted.contains(address("::ffff:10.0.1.77")));
  // An empty list relays for nobody.
  EXPECT_TRUE(load_ok("[relay]\nnetworks = []\n").relay.networks.empty());
  expect_one_error("[relay]\nnetworks = [\"10.0.0.0/33\"]\n", 2, "prefix length must be");
  expect_one_error("[proxy_protocol]\ntrusted = [\"lb.example\"]\n", 2, "proxy_protocol.trusted[0]");
}

TEST(ConfigDomains, BothFormsAndValidation) {
  const Config config = load_ok("[relay]\ndomains = [\"example.test\", \".Example.ORG\", \"localdomain\"]\n");
  EXPECT_EQ(config.relay.domains, (std::vector<std::string>{"example.test", ".example.org", "localdomain"}));
  for (std::string_view bad : {"", ".", "..example.test", "example..test", "-a.test", "a-.test", "a_b.test",
                               "*.example.test", "example.test.", "exa mple.test", "@example.test"}) {
    expect_one_error("[relay]\ndomains = [\"" + std::string(bad) + "\"]\n", 2, "is not a domain");
  }
  const std::string label63(63, 'a');
  const std::string label64(64, 'a');
  EXPECT_TRUE(check_config_text("[relay]\ndomains = [\"" + label63 + ".test\"]\n", "t").empty());
  EXPECT_FALSE(check_config_text("[relay]\ndomains = [\"" + label64 + ".test\"]\n", "t").empty());
}

TEST_F(ConfigFileTest, LoadReportsEveryErrorWithFileAndLine) {
  const std::string path = write("bad.toml", "[server]\nthreads = -1\n[nope]\n");
  const ConfigErrors errors = check_config_file(path);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].to_string(), path + ":2: server.threads: -1 is out of range (0 to 1024)");
  EXPECT_EQ(errors[1].to_string(), path + ":3: unknown table [nope]");
  auto config = load_config_file(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(config.status().message()), errors[0].to_string() + "\n" + errors[1].to_string());
}

TEST_F(ConfigFileTest, MissingFile) {
  const std::string path = _dir + "/does-not-exist.toml";
  const ConfigErrors errors = check_config_file(path);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].line, 0u);
  EXPECT_EQ(errors[0].to_string(), path + ": cannot open: No such file or directory");
  EXPECT_FALSE(load_config_file(path).ok());
}

TEST_F(ConfigFileTest, SyntaxErrorInFile) {
  const std::string path = write("syntax.toml", "[server]\n\nthreads = [\n");
  const ConfigErrors errors = check_config_file(path);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].file, path);
  EXPECT_GE(errors[0].line, 3u);
  EXPECT_THAT(errors[0].to_string(), HasSubstr(path + ":"));
}

TEST(ConfigOverrides, EachOption) {
  Config config = default_config();
  CliOverrides overrides;
  overrides.listen = {"127.0.0.1:2600", "[::1]:2601"};
  overrides.spool = "/tmp/other-spool";
  overrides.threads = "3";
  overrides.admin = "[::1]:9100";
  ASSERT_TRUE(apply_cli_overrides(config, overrides).ok());
  EXPECT_EQ(addresses(config.server.listen), (std::vector<std::string>{"127.0.0.1:2600", "[::1]:2601"}));
  EXPECT_EQ(config.spool.dir, "/tmp/other-spool");
  EXPECT_EQ(config.server.threads, 3u);
  EXPECT_EQ(config.admin.listen.to_string(), "[::1]:9100");
  EXPECT_EQ(effective_threads(config), 3u);
}

TEST(ConfigOverrides, NoOverridesChangeNothing) {
  Config config = load_ok("[server]\nthreads = 5\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n");
  const Config before = config;
  ASSERT_TRUE(apply_cli_overrides(config, CliOverrides{}).ok());
  EXPECT_EQ(config, before);
  // --listen replaces the whole list from the file.
  CliOverrides listen;
  listen.listen = {"127.0.0.1:3"};
  ASSERT_TRUE(apply_cli_overrides(config, listen).ok());
  EXPECT_EQ(addresses(config.server.listen), std::vector<std::string>{"127.0.0.1:3"});
}

TEST(ConfigOverrides, BadValuesAreRejectedAndLeaveTheConfigAlone) {
  struct Case {
    CliOverrides overrides;
    std::string_view fragment;
  };
  std::vector<Case> cases(8);
  cases[0].overrides.listen = {"127.0.0.1"};
  cases[0].fragment = "--listen: '127.0.0.1': missing port";
  cases[1].overrides.listen = {"127.0.0.1:25", "::1:25"};
  cases[1].fragment = "--listen:";
  cases[2].overrides.listen = {"127.0.0.1:25", "127.0.0.1:25"};
  cases[2].fragment = "given twice";
  cases[3].overrides.threads = "-1";
  cases[3].fragment = "--threads: '-1' is not a number from 0 to 1024";
  cases[4].overrides.threads = "1025";
  cases[4].fragment = "--threads:";
  cases[5].overrides.threads = "";
  cases[5].fragment = "--threads:";
  cases[6].overrides.admin = "[::1]";
  cases[6].fragment = "--admin:";
  cases[7].overrides.spool = "";
  cases[7].fragment = "--spool:";
  for (const Case& c : cases) {
    Config config = default_config();
    CliOverrides overrides = c.overrides;
    overrides.spool = overrides.spool ? overrides.spool : std::optional<std::string>("/changed");
    const absl::Status status = apply_cli_overrides(config, overrides);
    ASSERT_FALSE(status.ok()) << c.fragment;
    EXPECT_THAT(std::string(status.message()), HasSubstr(std::string(c.fragment)));
    EXPECT_EQ(config, default_config()) << c.fragment;
  }
}

TEST(ConfigThreads, ZeroMeansEveryUsableCoreButOne) {
  Config config = default_config();
  const uint32_t threads = effective_threads(config);
  EXPECT_GE(threads, 1u);
  EXPECT_LE(threads, kThreadsMax);
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  ASSERT_EQ(sched_getaffinity(0, sizeof(cpus), &cpus), 0);
  EXPECT_EQ(threads, default_threads(static_cast<uint32_t>(CPU_COUNT(&cpus))));
  EXPECT_EQ(default_threads(0), 1u);
  EXPECT_EQ(default_threads(1), 1u);
  EXPECT_EQ(default_threads(2), 1u);
  EXPECT_EQ(default_threads(8), 7u);
  EXPECT_EQ(default_threads(100000), kThreadsMax);
}

TEST(ConfigToString, RoundTrips) {
  EXPECT_EQ(load_ok(config_to_string(default_config())), default_config());
  Config config = default_config();
  config.server.hostname = "relay.example.test";
  config.server.listen = {*io::parse_host_port("[::1]:25"), *io::parse_host_port("0.0.0.0:2525")};
  config.server.threads = 4;
  config.server.drain_timeout = milliseconds(0);
  config.server.data_timeout = hours(48);
  config.spool.dir = "/path with \"quotes\" and \\ backslash";
  config.relay.domains = {"example.test", ".example.org"};
  config.proxy_protocol.trusted = *io::NetworkList::parse({"10.0.0.0/8", "2001:db8::/32"});
  config.dns.servers = {*io::parse_host_port("127.0.0.1:8053")};
  config.delivery.retry_initial = seconds(90);
  config.routes = {{"*", *io::parse_host_port("127.0.0.2:2526")}, {"example.test", *io::parse_host_port("[::1]:26")}};
  const std::string text = config_to_string(config);
  auto loaded = load_config_text(text, "round-trip.toml");
  ASSERT_TRUE(loaded.ok()) << loaded.status() << "\n" << text;
  EXPECT_EQ(*loaded, config) << text;
  EXPECT_THAT(text, HasSubstr("retry_initial = '90s'"));
  EXPECT_THAT(text, HasSubstr("data_timeout = '2d'"));
}

TEST(ConfigError, ToString) {
  EXPECT_EQ((ConfigError{"a.toml", 7, "bad"}).to_string(), "a.toml:7: bad");
  EXPECT_EQ((ConfigError{"a.toml", 0, "cannot open"}).to_string(), "a.toml: cannot open");
}

}  // namespace
}  // namespace sluice::app
