// Tests for the Resolver against a real DNS server: a thread in the test answers UDP and TCP on
// 127.0.0.1 (one ephemeral port for both) from a small zone, and the test plays the shard with
// poll(2): it arms what poll_requests() asks, gives every readiness to on_poll_ready and calls
// on_tick at next_deadline_ms. Covered: MX order and rotation across plans, implicit MX, null MX
// (no address lookup), NXDOMAIN, SERVFAIL, a silent server (timeout), an alias domain, an
// AAAA-only host, a truncated UDP answer retried over TCP, the cache (no second query), merged
// concurrent plans (one query), stale poll completions ignored, and no poll left on a closed socket.
#include "resolver/resolver.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/strings.h"
#include "resolver/dns_testing.h"

namespace sluice::resolver {
namespace {

using testing::ip;

constexpr uint16_t kPort = 2525;

// What the server answers to (name, type).
struct ZoneAnswer {
  Rcode rcode = Rcode::no_error;
  std::vector<CnameRecord> cnames;
  std::vector<MxRecord> mx;
  std::vector<AddressRecord> addresses;
  bool silent = false;        // no answer at all
  bool truncate_udp = false;  // over UDP only the header with TC; over TCP the whole answer
  bool overcount = false;     // ANCOUNT one more than the records sent: malformed for our parser
};

// A DNS server on 127.0.0.1 in its own thread. A name in the zone without records of the type
// asked for gets NODATA with an SOA; a name not in the zone NXDOMAIN with an SOA.
class FakeDnsServer {
 public:
  FakeDnsServer() {
    for (int attempt = 0; attempt < 20 && !bind_both(); ++attempt) {
    }
    if (_udp < 0 || _tcp < 0) {
      ADD_FAILURE() << "no port for both UDP and TCP";
      return;
    }
    _stop = eventfd(0, EFD_CLOEXEC);
    _thread = std::thread([this] { run(); });
  }
  ~FakeDnsServer() {
    if (_thread.joinable()) {
      const uint64_t one = 1;
      EXPECT_EQ(write(_stop, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
      _thread.join();
    }
    for (const auto& [fd, buffer] : _connections) {
      close(fd);
    }
    for (const int fd : {_udp, _tcp, _stop}) {
      if (fd >= 0) {
        close(fd);
      }
    }
  }

  io::SocketAddress address() const { return ip("127.0.0.1", _port); }

  void set(const std::string& name, DnsType type, ZoneAnswer answer) {
    std::lock_guard lock(_mutex);
    _names.insert(name);
    _zone[{name, type}] = std::move(answer);
  }
  // A name that exists, with no records (NODATA for every type not set).
  void add_name(const std::string& name) {
    std::lock_guard lock(_mutex);
    _names.insert(name);
  }
  size_t queries(const std::string& name, DnsType type) const {
    std::lock_guard lock(_mutex);
    const auto it = _counts.find({name, type});
    return it == _counts.end() ? 0 : it->second;
  }
  size_t queries_total() const {
    std::lock_guard lock(_mutex);
    size_t total = 0;
    for (const auto& [key, count] : _counts) {
      total += count;
    }
    return total;
  }
  // Every query unanswered, whatever the zone says.
  void set_silent() {
    std::lock_guard lock(_mutex);
    _silent = true;
  }
  // The query ids seen, each once.
  std::set<uint16_t> ids() const {
    std::lock_guard lock(_mutex);
    return _ids;
  }
  size_t tcp_queries() const {
    std::lock_guard lock(_mutex);
    return _tcp_count;
  }

 private:
  static io::SocketAddress ip(std::string_view text, uint16_t port) {
    io::SocketAddress address = testing::ip(text);
    address.set_port(port);
    return address;
  }

  bool bind_both() {
    if (_udp >= 0) {
      close(_udp);
    }
    if (_tcp >= 0) {
      close(_tcp);
    }
    _udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const io::SocketAddress any = ip("127.0.0.1", 0);
    if (bind(_udp, any.get(), any.length) != 0) {
      return false;
    }
    io::SocketAddress bound;
    bound.length = sizeof(bound.storage);
    getsockname(_udp, bound.get_mutable(), &bound.length);
    _port = bound.port();
    _tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int on = 1;
    setsockopt(_tcp, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    const io::SocketAddress same = ip("127.0.0.1", _port);
    return bind(_tcp, same.get(), same.length) == 0 && listen(_tcp, 16) == 0;
  }

  // The response to `query`, or "" for none.
  std::string answer(std::string_view query_wire, bool over_tcp) {
    const absl::StatusOr<DnsMessage> query = parse_dns_message(query_wire);
    if (!query.ok() || !query->question) {
      ADD_FAILURE() << "the resolver sent a bad query";
      return "";
    }
    std::lock_guard lock(_mutex);
    const std::pair<std::string, DnsType> key{query->question->name, query->question->type};
    ++_counts[key];
    _ids.insert(query->header.id);
    _tcp_count += over_tcp ? 1 : 0;
    if (_silent) {
      return "";
    }
    DnsMessage response;
    const auto it = _zone.find(key);
    if (it != _zone.end()) {
      const ZoneAnswer& zone = it->second;
      if (zone.silent) {
        return "";
      }
      response.header.rcode = zone.rcode;
      response.cnames = zone.cnames;
      response.mx = zone.mx;
      response.addresses = zone.addresses;
      if (zone.truncate_udp && !over_tcp) {
        response = DnsMessage{};
        response.header.truncated = true;
      }
    } else {
      response.header.rcode = _names.contains(key.first) ? Rcode::no_error : Rcode::name_error;
      response.soa = SoaRecord{"test", 3600, "ns.test", "hostmaster.test", 1, 3600, 600, 86400, 300};
    }
    response.header.id = query->header.id;
    response.header.response = true;
    response.header.recursion_desired = query->header.recursion_desired;
    response.header.recursion_available = true;
    response.question = query->question;
    std::string wire = testing::encode_dns_response(response);
    if (it != _zone.end() && it->second.overcount) {
      wire[7] = static_cast<char>(wire[7] + 1);  // ANCOUNT's low octet (c-ares checks only the question)
    }
    return wire;
  }

  void run() {
    for (;;) {
      std::vector<pollfd> fds = {{_stop, POLLIN, 0}, {_udp, POLLIN, 0}, {_tcp, POLLIN, 0}};
      for (const auto& [fd, buffer] : _connections) {
        fds.push_back({fd, POLLIN, 0});
      }
      if (poll(fds.data(), fds.size(), -1) < 0) {
        continue;
      }
      if (fds[0].revents != 0) {
        return;
      }
      if (fds[1].revents & POLLIN) {
        serve_udp();
      }
      if (fds[2].revents & POLLIN) {
        const int fd = accept4(_tcp, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          _connections[fd];
        }
      }
      for (size_t i = 3; i < fds.size(); ++i) {
        if (fds[i].revents != 0) {
          serve_tcp(fds[i].fd);
        }
      }
    }
  }

  void serve_udp() {
    char datagram[4096];
    sockaddr_storage peer{};
    socklen_t peer_length = sizeof(peer);
    const ssize_t n = recvfrom(_udp, datagram, sizeof(datagram), 0, reinterpret_cast<sockaddr*>(&peer), &peer_length);
    if (n <= 0) {
      return;
    }
    const std::string reply = answer(std::string_view(datagram, static_cast<size_t>(n)), false);
    if (!reply.empty()) {
      sendto(_udp, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&peer), peer_length);
    }
  }

  void serve_tcp(int fd) {
    char chunk[4096];
    const ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n <= 0) {
      close(fd);
      _connections.erase(fd);
      return;
    }
    std::string& buffer = _connections[fd];
    buffer.append(chunk, static_cast<size_t>(n));
    while (buffer.size() >= 2) {
      const size_t length = static_cast<uint8_t>(buffer[0]) << 8 | static_cast<uint8_t>(buffer[1]);
      if (buffer.size() < 2 + length) {
        break;
      }
      const std::string reply = answer(std::string_view(buffer).substr(2, length), true);
      buffer.erase(0, 2 + length);
      if (!reply.empty()) {
        std::string framed;
        framed += static_cast<char>(reply.size() >> 8);
        framed += static_cast<char>(reply.size());
        framed += reply;
        EXPECT_EQ(write(fd, framed.data(), framed.size()), static_cast<ssize_t>(framed.size()));
      }
    }
  }

  int _udp = -1;
  int _tcp = -1;
  int _stop = -1;
  uint16_t _port = 0;
  std::thread _thread;
  std::map<int, std::string> _connections;  // server thread only

  mutable std::mutex _mutex;
  std::map<std::pair<std::string, DnsType>, ZoneAnswer> _zone;
  std::set<std::string> _names;
  std::map<std::pair<std::string, DnsType>, size_t> _counts;
  size_t _tcp_count = 0;
  std::set<uint16_t> _ids;
  bool _silent = false;
};

// The shard's part, with poll(2) instead of the ring: one-shot polls as the resolver asks.
class Shard {
 public:
  explicit Shard(Resolver& resolver) : _resolver(resolver) {}

  // Runs until `count` plans came out (or, as a guard against a hang, 60 s passed: a failure).
  std::vector<PlanResult> run_until(size_t count) {
    const uint64_t give_up_ms = io::monotonic_ms() + 60'000;
    collect();
    while (_results.size() < count) {
      if (io::monotonic_ms() > give_up_ms) {
        ADD_FAILURE() << "no plan after 60 s";
        break;
      }
      turn();
    }
    std::vector<PlanResult> out;
    out.swap(_results);
    return out;
  }

  // Plans that came out without waiting (answered from the cache).
  std::vector<PlanResult> ready() {
    collect();
    std::vector<PlanResult> out;
    out.swap(_results);
    return out;
  }

  void take_poll_requests() {
    for (const PollRequest& request : _resolver.poll_requests()) {
      const std::pair<int, uint32_t> key{request.fd, request.generation};
      if (request.op == PollRequest::Op::arm) {
        EXPECT_TRUE(request.events == POLLIN || request.events == POLLOUT);
        EXPECT_TRUE(_armed.emplace(key, request.events).second) << "a generation armed twice";
        last_armed = key;
      } else {
        EXPECT_EQ(_armed.erase(key), 1u) << "a cancel of a poll not armed";
        ++cancels;
      }
    }
  }

  size_t armed() const { return _armed.size(); }
  std::pair<int, uint32_t> last_armed{-1, 0};
  size_t cancels = 0;

 private:
  void collect() {
    for (PlanResult& result : _resolver.take_completed()) {
      _results.push_back(std::move(result));
    }
  }

  void turn() {
    take_poll_requests();
    uint64_t now = io::monotonic_ms();
    const std::optional<uint64_t> deadline = _resolver.next_deadline_ms(now);
    int timeout_ms = 1000;
    if (deadline) {
      timeout_ms = *deadline > now ? static_cast<int>(std::min<uint64_t>(*deadline - now, 1000)) : 0;
    }
    std::vector<pollfd> fds;
    std::vector<std::pair<int, uint32_t>> keys;
    for (const auto& [key, events] : _armed) {
      fds.push_back({key.first, static_cast<short>(events), 0});
      keys.push_back(key);
    }
    poll(fds.data(), fds.size(), timeout_ms);
    now = io::monotonic_ms();
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents != 0) {
        EXPECT_EQ(fds[i].revents & POLLNVAL, 0) << "a poll armed on a closed descriptor";
        _armed.erase(keys[i]);  // one-shot
        _resolver.on_poll_ready(keys[i].first, keys[i].second, fds[i].revents, now);
      }
    }
    if (deadline && now >= *deadline) {
      _resolver.on_tick(now);
    }
    collect();
  }

  Resolver& _resolver;
  std::map<std::pair<int, uint32_t>, uint32_t> _armed;  // (fd, generation) -> events
  std::vector<PlanResult> _results;
};

// The shard's part as the shard will do it: on an io_uring, one-shot POLL_ADD per arm with the
// (fd, generation) in its user_data, POLL_REMOVE by that user_data per cancel.
class RingShard {
 public:
  static constexpr uint8_t kTagPoll = 1;
  static constexpr uint8_t kTagPollRemove = 2;

  RingShard(Resolver& resolver, io::Ring& ring) : _resolver(resolver), _ring(ring) {}

  std::vector<PlanResult> run_until(size_t count) {
    const uint64_t give_up_ms = io::monotonic_ms() + 60'000;
    collect();
    while (_results.size() < count) {
      if (io::monotonic_ms() > give_up_ms) {
        ADD_FAILURE() << "no plan after 60 s";
        break;
      }
      turn(1'000'000);
    }
    std::vector<PlanResult> out;
    out.swap(_results);
    return out;
  }

  // Submits what the resolver asked and reaps until every poll it cancelled has completed.
  void settle() {
    for (int round = 0; round < 100 && (_polls_out > 0 || _removes_out > 0); ++round) {
      turn(100'000);
    }
  }

  size_t polls_out() const { return _polls_out; }
  size_t cancels() const { return _cancels; }

 private:
  void submit_poll_requests() {
    for (const PollRequest& request : _resolver.poll_requests()) {
      const uint64_t user_data = io::UserData{kTagPoll, static_cast<uint32_t>(request.fd), request.generation}.encode();
      io_uring_sqe* sqe = _ring.sqe();
      if (request.op == PollRequest::Op::arm) {
        io_uring_prep_poll_add(sqe, request.fd, request.events);
        io_uring_sqe_set_data64(sqe, user_data);
        ++_polls_out;
      } else {
        io_uring_prep_poll_remove(sqe, user_data);
        io_uring_sqe_set_data64(sqe, io::UserData{kTagPollRemove, 0, 0}.encode());
        ++_removes_out;
        ++_cancels;
      }
    }
  }

  void turn(uint64_t wait_us_max) {
    submit_poll_requests();
    uint64_t now = io::monotonic_ms();
    const std::optional<uint64_t> deadline = _resolver.next_deadline_ms(now);
    uint64_t wait_us = wait_us_max;
    if (deadline) {
      wait_us = *deadline > now ? std::min<uint64_t>((*deadline - now) * 1000, wait_us_max) : 0;
    }
    _ring.submit_wait_and_reap(std::max<uint64_t>(wait_us, 1), [&](const io_uring_cqe& cqe) {
      const io::UserData tag = io::UserData::decode(cqe.user_data);
      if (tag.tag == kTagPollRemove) {
        --_removes_out;
        return;
      }
      ASSERT_EQ(tag.tag, kTagPoll);
      --_polls_out;
      _resolver.on_poll_ready(static_cast<int>(tag.index), tag.generation, cqe.res, io::monotonic_ms());
    });
    now = io::monotonic_ms();
    if (deadline && now >= *deadline) {
      _resolver.on_tick(now);
    }
    collect();
  }

  void collect() {
    for (PlanResult& result : _resolver.take_completed()) {
      _results.push_back(std::move(result));
    }
  }

  Resolver& _resolver;
  io::Ring& _ring;
  size_t _polls_out = 0;  // POLL_ADDs whose CQE has not come
  size_t _removes_out = 0;
  size_t _cancels = 0;
  std::vector<PlanResult> _results;
};

MxRecord mx(const std::string& owner, uint16_t preference, const std::string& exchange) {
  return MxRecord{owner, 300, preference, exchange};
}

ZoneAnswer mx_answer(std::vector<MxRecord> records) {
  ZoneAnswer answer;
  answer.mx = std::move(records);
  return answer;
}

ZoneAnswer address_answer(const std::string& owner, const std::vector<std::string>& addresses) {
  ZoneAnswer answer;
  for (const std::string& text : addresses) {
    answer.addresses.push_back(AddressRecord{owner, 300, ip(text)});
  }
  return answer;
}

ZoneAnswer rcode_answer(Rcode rcode) {
  ZoneAnswer answer;
  answer.rcode = rcode;
  return answer;
}

ZoneAnswer silent_answer() {
  ZoneAnswer answer;
  answer.silent = true;
  return answer;
}

std::vector<std::string> targets_of(const DeliveryPlan& plan) {
  std::vector<std::string> out;
  for (const PlanTarget& target : plan.targets) {
    out.push_back(str_cat(target.host, "=", target.address.to_string()));
  }
  return out;
}

class ResolverTest : public ::testing::Test {
 protected:
  ResolverOptions options() {
    ResolverOptions o;
    o.servers = {server.address()};
    o.own_hostname = "relay.test";
    o.port = kPort;
    o.query_timeout_ms = 100;  // the silent server's test waits 100 + 200 ms
    o.query_tries = 2;
    o.rotation_start = 0;
    return o;
  }

  std::unique_ptr<Resolver> make(const ResolverOptions& o) {
    absl::StatusOr<std::unique_ptr<Resolver>> resolver = Resolver::create(o);
    EXPECT_TRUE(resolver.ok()) << resolver.status();
    return resolver.ok() ? *std::move(resolver) : nullptr;
  }

  // One plan for `domain`, driven to its end; `cancels` counts the polls the resolver cancelled.
  DeliveryPlan plan(Resolver& resolver, const std::string& domain, size_t* cancels = nullptr) {
    Shard shard(resolver);
    resolver.request_plan(42, domain, io::monotonic_ms());
    std::vector<PlanResult> results = shard.run_until(1);
    EXPECT_EQ(results.size(), 1u);
    if (results.empty()) {
      return DeliveryPlan{};
    }
    EXPECT_EQ(results[0].request_id, 42u);
    // c-ares closes its sockets when no query is left: no poll may be left on one.
    shard.take_poll_requests();
    EXPECT_EQ(shard.armed(), 0u);
    EXPECT_TRUE(resolver.idle());
    if (cancels != nullptr) {
      *cancels = shard.cancels;
    }
    return results[0].plan;
  }

  void set_two_primaries_and_a_backup() {
    server.set("example.test", DnsType::mx,
               mx_answer({mx("example.test", 20, "backup.example.test"), mx("example.test", 10, "mx-b.example.test"),
                          mx("example.test", 10, "mx-a.example.test")}));
    server.set("mx-a.example.test", DnsType::a, address_answer("mx-a.example.test", {"192.0.2.1", "192.0.2.2"}));
    server.set("mx-b.example.test", DnsType::a, address_answer("mx-b.example.test", {"192.0.2.3"}));
    server.set("mx-b.example.test", DnsType::aaaa, address_answer("mx-b.example.test", {"2001:db8::3"}));
    server.set("backup.example.test", DnsType::a, address_answer("backup.example.test", {"198.51.100.1"}));
  }

  FakeDnsServer server;
};

TEST_F(ResolverTest, MxHostsInPreferenceOrderEqualOnesRotatedAcrossPlans) {
  set_two_primaries_and_a_backup();
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  const DeliveryPlan first = plan(*resolver, "example.test");
  EXPECT_FALSE(first.failure);
  EXPECT_FALSE(first.implicit_mx);
  EXPECT_EQ(targets_of(first), (std::vector<std::string>{
                                   "mx-a.example.test=192.0.2.1:2525",
                                   "mx-a.example.test=192.0.2.2:2525",
                                   "mx-b.example.test=192.0.2.3:2525",
                                   "mx-b.example.test=[2001:db8::3]:2525",
                                   "backup.example.test=198.51.100.1:2525",
                               }));
  // The next plan (from the cache) starts at the other primary.
  const DeliveryPlan second = plan(*resolver, "Example.TEST.");
  EXPECT_EQ(targets_of(second), (std::vector<std::string>{
                                    "mx-b.example.test=192.0.2.3:2525",
                                    "mx-b.example.test=[2001:db8::3]:2525",
                                    "mx-a.example.test=192.0.2.1:2525",
                                    "mx-a.example.test=192.0.2.2:2525",
                                    "backup.example.test=198.51.100.1:2525",
                                }));
  EXPECT_EQ(targets_of(plan(*resolver, "example.test")), targets_of(first));
  EXPECT_EQ(server.queries("example.test", DnsType::mx), 1u);
  EXPECT_EQ(server.queries("mx-a.example.test", DnsType::a), 1u);
  EXPECT_EQ(server.queries("mx-a.example.test", DnsType::aaaa), 1u);
  EXPECT_EQ(resolver->metrics().plans, 3u);
  EXPECT_EQ(resolver->metrics().queries_sent, 7u);  // MX, then A and AAAA of three hosts
}

TEST_F(ResolverTest, NoMxMeansTheDomainItself) {
  server.set("plain.test", DnsType::a, address_answer("plain.test", {"192.0.2.9"}));
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  const DeliveryPlan got = plan(*resolver, "plain.test");
  EXPECT_FALSE(got.failure);
  EXPECT_TRUE(got.implicit_mx);
  EXPECT_EQ(targets_of(got), std::vector<std::string>{"plain.test=192.0.2.9:2525"});
}

TEST_F(ResolverTest, NullMxFailsPermanentlyWithoutAddressLookups) {
  server.set("nomail.test", DnsType::mx, mx_answer({mx("nomail.test", 0, ".")}));
  server.set("nomail.test", DnsType::a, address_answer("nomail.test", {"192.0.2.9"}));
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  const DeliveryPlan got = plan(*resolver, "nomail.test");
  ASSERT_TRUE(got.failure);
  EXPECT_EQ(*got.failure, PlanFailure::null_mx);
  EXPECT_EQ(plan_failure_status(*got.failure), "5.1.10");
  EXPECT_EQ(server.queries_total(), 1u);
  EXPECT_EQ(resolver->metrics().plans_failed_permanent, 1u);
}

TEST_F(ResolverTest, NxdomainFailsPermanently) {
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  const DeliveryPlan got = plan(*resolver, "nowhere.test");
  ASSERT_TRUE(got.failure);
  EXPECT_EQ(*got.failure, PlanFailure::no_such_domain);
  EXPECT_EQ(plan_failure_status(*got.failure), "5.1.2");
  EXPECT_TRUE(plan_failure_permanent(*got.failure));
  // Cached for the SOA's minimum: asked once.
  EXPECT_EQ(plan(*resolver, "nowhere.test").failure, PlanFailure::no_such_domain);
  EXPECT_EQ(server.queries("nowhere.test", DnsType::mx), 1u);
}

TEST_F(ResolverTest, ServfailAndRefusedAreTemporaryAndNotCached) {
  server.set("broken.test", DnsType::mx, rcode_answer(Rcode::server_failure));
  server.set("refusing.test", DnsType::mx, rcode_answer(Rcode::refused));
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  for (const char* domain : {"broken.test", "refusing.test"}) {
    const DeliveryPlan got = plan(*resolver, domain);
    ASSERT_TRUE(got.failure) << domain;
    EXPECT_EQ(*got.failure, PlanFailure::dns_temporary) << domain;
    EXPECT_EQ(plan_failure_status(*got.failure), "4.4.3");
  }
  const size_t asked = server.queries("broken.test", DnsType::mx);
  EXPECT_GE(asked, 1u);
  EXPECT_EQ(plan(*resolver, "broken.test").failure, PlanFailure::dns_temporary);
  EXPECT_GT(server.queries("broken.test", DnsType::mx), asked);  // asked again: not cached
  EXPECT_EQ(resolver->metrics().plans_failed_temporary, 3u);
}

TEST_F(ResolverTest, SilentServerIsTemporaryAfterTheTimeout) {
  server.set("silent.test", DnsType::mx, silent_answer());
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  const DeliveryPlan got = plan(*resolver, "silent.test");
  ASSERT_TRUE(got.failure);
  EXPECT_EQ(*got.failure, PlanFailure::dns_temporary);
  EXPECT_EQ(server.queries("silent.test", DnsType::mx), 2u);  // query_tries
  EXPECT_EQ(resolver->metrics().query_timeouts, 1u);
}

TEST_F(ResolverTest, MalformedAnswerIsTemporary) {
  ZoneAnswer bad = mx_answer({mx("bad.test", 10, "mx.bad.test")});
  bad.overcount = true;
  server.set("bad.test", DnsType::mx, bad);
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  EXPECT_EQ(plan(*resolver, "bad.test").failure, PlanFailure::dns_temporary);
  EXPECT_EQ(server.queries_total(), 1u);
  EXPECT_EQ(resolver->metrics().query_failures, 1u);
}

TEST_F(ResolverTest, TtlsReachTheCache) {
  // TTL 0 and no floor: expired at once, so the next plan asks again; TTL 300: it does not.
  ZoneAnswer zero;
  zero.mx = {MxRecord{"zero.test", 0, 10, "mx.zero.test"}};
  server.set("zero.test", DnsType::mx, zero);
  server.set("mx.zero.test", DnsType::a, address_answer("mx.zero.test", {"192.0.2.50"}));
  ResolverOptions o = options();
  o.ttl_floor_ms = 0;
  std::unique_ptr<Resolver> resolver = make(o);
  ASSERT_NE(resolver, nullptr);
  EXPECT_FALSE(plan(*resolver, "zero.test").failure);
  EXPECT_FALSE(plan(*resolver, "zero.test").failure);
  EXPECT_EQ(server.queries("zero.test", DnsType::mx), 2u);
  EXPECT_EQ(server.queries("mx.zero.test", DnsType::a), 1u);
}

TEST_F(ResolverTest, AliasDomainIsFollowedToItsCanonicalName) {
  // An alias with an MX at its target: the MX answer carries the chain.
  ZoneAnswer alias = mx_answer({mx("real.test", 10, "mx.real.test")});
  alias.cnames = {CnameRecord{"alias.test", 300, "real.test"}};
  server.set("alias.test", DnsType::mx, alias);
  server.set("mx.real.test", DnsType::a, address_answer("mx.real.test", {"192.0.2.20"}));
  // An alias without MX at its target: the implicit MX is the canonical name.
  ZoneAnswer bare;
  bare.cnames = {CnameRecord{"bare-alias.test", 300, "bare.test"}};
  server.set("bare-alias.test", DnsType::mx, bare);
  server.set("bare.test", DnsType::a, address_answer("bare.test", {"192.0.2.21"}));
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  EXPECT_EQ(targets_of(plan(*resolver, "alias.test")), std::vector<std::string>{"mx.real.test=192.0.2.20:2525"});
  const DeliveryPlan implicit = plan(*resolver, "bare-alias.test");
  EXPECT_TRUE(implicit.implicit_mx);
  EXPECT_EQ(targets_of(implicit), std::vector<std::string>{"bare.test=192.0.2.21:2525"});
}

TEST_F(ResolverTest, AaaaOnlyHost) {
  server.set("six.test", DnsType::mx, mx_answer({mx("six.test", 10, "mx.six.test")}));
  server.set("mx.six.test", DnsType::aaaa, address_answer("mx.six.test", {"::1"}));
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  EXPECT_EQ(targets_of(plan(*resolver, "six.test")), std::vector<std::string>{"mx.six.test=[::1]:2525"});
  // Without IPv6 the same host has no address.
  ResolverOptions v4 = options();
  v4.use_ipv6 = false;
  std::unique_ptr<Resolver> v4_resolver = make(v4);
  ASSERT_NE(v4_resolver, nullptr);
  EXPECT_EQ(plan(*v4_resolver, "six.test").failure, PlanFailure::no_mail_host);
}

TEST_F(ResolverTest, TruncatedUdpAnswerIsAskedAgainOverTcp) {
  ZoneAnswer big = mx_answer({mx("big.test", 10, "mx.big.test")});
  big.truncate_udp = true;
  server.set("big.test", DnsType::mx, big);
  server.set("mx.big.test", DnsType::a, address_answer("mx.big.test", {"192.0.2.30"}));
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  size_t cancels = 0;
  EXPECT_EQ(targets_of(plan(*resolver, "big.test", &cancels)), std::vector<std::string>{"mx.big.test=192.0.2.30:2525"});
  EXPECT_EQ(server.queries("big.test", DnsType::mx), 2u);
  EXPECT_EQ(server.tcp_queries(), 1u);
  // The UDP socket's poll was armed again after the truncated answer; c-ares closed the socket
  // when the TCP answer ended the query, so that poll was cancelled.
  EXPECT_GE(cancels, 1u);
}

TEST_F(ResolverTest, SecondPlanIsServedFromTheCache) {
  set_two_primaries_and_a_backup();
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  plan(*resolver, "example.test");
  const size_t queries = server.queries_total();
  const uint64_t hits = resolver->metrics().cache_hits;
  // Answered inside request_plan: out of take_completed() with no poll.
  resolver->request_plan(7, "example.test", io::monotonic_ms());
  Shard shard(*resolver);
  const std::vector<PlanResult> results = shard.ready();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].request_id, 7u);
  EXPECT_EQ(results[0].plan.targets.size(), 5u);
  EXPECT_EQ(server.queries_total(), queries);
  EXPECT_EQ(resolver->metrics().cache_hits, hits + 7);  // MX, then A and AAAA of three hosts
  shard.take_poll_requests();
  EXPECT_EQ(shard.armed(), 0u);
}

TEST_F(ResolverTest, ConcurrentPlansOfOneDomainShareTheirQueries) {
  set_two_primaries_and_a_backup();
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  Shard shard(*resolver);
  for (uint64_t id = 1; id <= 3; ++id) {
    resolver->request_plan(id, "example.test", io::monotonic_ms());
  }
  const std::vector<PlanResult> results = shard.run_until(3);
  ASSERT_EQ(results.size(), 3u);
  std::set<uint64_t> ids;
  for (const PlanResult& result : results) {
    ids.insert(result.request_id);
    EXPECT_FALSE(result.plan.failure);
    EXPECT_EQ(result.plan.targets.size(), 5u);
  }
  EXPECT_EQ(ids, (std::set<uint64_t>{1, 2, 3}));
  EXPECT_EQ(server.queries("example.test", DnsType::mx), 1u);
  EXPECT_EQ(server.queries_total(), 7u);
  EXPECT_EQ(server.ids().size(), 7u);  // c-ares gave each query its own id
  EXPECT_EQ(resolver->metrics().queries_sent, 7u);
  EXPECT_EQ(resolver->metrics().queries_ended, 7u);
  EXPECT_EQ(resolver->metrics().lookups_merged, 14u);  // two plans' MX and six address lookups
}

TEST_F(ResolverTest, StalePollCompletionsAreIgnored) {
  set_two_primaries_and_a_backup();
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  Shard shard(*resolver);
  resolver->request_plan(1, "example.test", io::monotonic_ms());
  shard.take_poll_requests();
  const std::pair<int, uint32_t> first = shard.last_armed;
  ASSERT_GE(first.first, 0);
  ASSERT_EQ(shard.run_until(1).size(), 1u);
  // The socket is closed now (and its number may be reused): its old poll's CQE does nothing.
  const uint64_t stale = resolver->metrics().stale_polls;
  resolver->on_poll_ready(first.first, first.second, POLLIN, io::monotonic_ms());
  resolver->on_poll_ready(first.first, first.second, -ECANCELED, io::monotonic_ms());
  EXPECT_EQ(resolver->metrics().stale_polls, stale + 2);
  EXPECT_TRUE(resolver->idle());
}

TEST_F(ResolverTest, AnUnaskableDomainIsNoSuchDomain) {
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  const std::string long_label(64, 'a');
  for (const std::string& domain : {long_label + ".test", std::string("a..test"), std::string("")}) {
    resolver->request_plan(1, domain, io::monotonic_ms());
    const std::vector<PlanResult> results = resolver->take_completed();
    ASSERT_EQ(results.size(), 1u) << domain;
    EXPECT_EQ(results[0].plan.failure, PlanFailure::no_such_domain) << domain;
  }
  EXPECT_EQ(server.queries_total(), 0u);
}

TEST_F(ResolverTest, AnMxHostThatCannotBeAskedForHasNoAddress) {
  // c-ares's encoder does not know \DDD: such a host is skipped, not asked for under another name.
  server.set("odd.test", DnsType::mx,
             mx_answer({mx("odd.test", 10, "bad\\032name.test"), mx("odd.test", 20, "good.test")}));
  server.set("good.test", DnsType::a, address_answer("good.test", {"192.0.2.40"}));
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  EXPECT_EQ(targets_of(plan(*resolver, "odd.test")), std::vector<std::string>{"good.test=192.0.2.40:2525"});
  EXPECT_EQ(server.queries_total(), 3u);  // MX, and good.test's A and AAAA
  EXPECT_EQ(resolver->metrics().queries_sent, 3u);
  EXPECT_EQ(resolver->metrics().queries_ended, 3u);
}

TEST_F(ResolverTest, TooManyPlansInFlightAreTemporary) {
  server.set("silent.test", DnsType::mx, silent_answer());
  ResolverOptions o = options();
  o.requests_in_flight_max = 2;
  std::unique_ptr<Resolver> resolver = make(o);
  ASSERT_NE(resolver, nullptr);
  Shard shard(*resolver);
  for (uint64_t id = 1; id <= 3; ++id) {
    resolver->request_plan(id, "silent.test", io::monotonic_ms());
  }
  std::vector<PlanResult> early = resolver->take_completed();
  ASSERT_EQ(early.size(), 1u);
  EXPECT_EQ(early[0].request_id, 3u);
  EXPECT_EQ(early[0].plan.failure, PlanFailure::dns_temporary);
  EXPECT_EQ(shard.run_until(2).size(), 2u);
}

TEST_F(ResolverTest, ASilentFirstServerIsPassedOver) {
  FakeDnsServer dead;
  dead.set_silent();
  server.set("plain.test", DnsType::a, address_answer("plain.test", {"192.0.2.9"}));
  ResolverOptions o = options();
  o.servers = {dead.address(), server.address()};
  std::unique_ptr<Resolver> resolver = make(o);
  ASSERT_NE(resolver, nullptr);
  EXPECT_EQ(targets_of(plan(*resolver, "plain.test")), std::vector<std::string>{"plain.test=192.0.2.9:2525"});
  EXPECT_GE(dead.queries("plain.test", DnsType::mx), 1u);
  EXPECT_EQ(server.queries("plain.test", DnsType::mx), 1u);
}

TEST_F(ResolverTest, DestroyedWithQueriesInFlight) {
  server.set("silent.test", DnsType::mx, silent_answer());
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  Shard shard(*resolver);
  resolver->request_plan(1, "silent.test", io::monotonic_ms());
  shard.take_poll_requests();
  EXPECT_GE(shard.armed(), 1u);
  EXPECT_FALSE(resolver->idle());
  resolver.reset();  // c-ares ends the query: nothing leaks (the sanitizer build checks), nothing runs
}

TEST_F(ResolverTest, NoServersMeansResolvConf) {
  ResolverOptions o = options();
  o.servers.clear();
  EXPECT_TRUE(Resolver::create(o).ok());
}

// The same resolver driven from an io_uring, as the shard will: plans come out, a truncated
// answer goes over TCP, a silent server times out, and once idle no poll is left in the kernel
// (a poll left armed would keep a socket c-ares closed open).
TEST_F(ResolverTest, DrivenFromAnIoUring) {
  set_two_primaries_and_a_backup();
  ZoneAnswer big = mx_answer({mx("big.test", 10, "mx.big.test")});
  big.truncate_udp = true;
  server.set("big.test", DnsType::mx, big);
  server.set("mx.big.test", DnsType::a, address_answer("mx.big.test", {"192.0.2.30"}));
  server.set("silent.test", DnsType::mx, silent_answer());
  absl::StatusOr<io::Ring*> created = io::Ring::create_for_this_thread(io::RingOptions{64, 256});
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<io::Ring> ring(*created);
  std::unique_ptr<Resolver> resolver = make(options());
  ASSERT_NE(resolver, nullptr);
  RingShard shard(*resolver, *ring);

  resolver->request_plan(1, "example.test", io::monotonic_ms());
  resolver->request_plan(2, "example.test", io::monotonic_ms());
  resolver->request_plan(3, "big.test", io::monotonic_ms());
  resolver->request_plan(4, "silent.test", io::monotonic_ms());
  std::map<uint64_t, DeliveryPlan> plans;
  for (PlanResult& result : shard.run_until(4)) {
    plans[result.request_id] = std::move(result.plan);
  }
  ASSERT_EQ(plans.size(), 4u);
  EXPECT_EQ(targets_of(plans[1]).front(), "mx-a.example.test=192.0.2.1:2525");
  EXPECT_EQ(targets_of(plans[2]).front(), "mx-b.example.test=192.0.2.3:2525");
  EXPECT_EQ(targets_of(plans[3]), std::vector<std::string>{"mx.big.test=192.0.2.30:2525"});
  EXPECT_EQ(plans[4].failure, PlanFailure::dns_temporary);
  EXPECT_EQ(server.tcp_queries(), 1u);
  EXPECT_EQ(server.queries("example.test", DnsType::mx), 1u);
  EXPECT_TRUE(resolver->idle());
  shard.settle();
  EXPECT_EQ(shard.polls_out(), 0u);
  EXPECT_GE(shard.cancels(), 1u);
  EXPECT_GE(resolver->metrics().stale_polls, 1u);  // the cancelled polls' own CQEs
}

TEST_F(ResolverTest, RefusesBadOptions) {
  ResolverOptions o = options();
  o.ttl_floor_ms = 10'000;
  o.ttl_ceiling_ms = 1'000;
  EXPECT_FALSE(Resolver::create(o).ok());
  o = options();
  o.cache_entries_max = 0;
  EXPECT_FALSE(Resolver::create(o).ok());
}

}  // namespace
}  // namespace sluice::resolver
