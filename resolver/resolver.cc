// The per-shard resolver: see resolver.h for the contract with the shard. Here: the c-ares
// channel and its sockets, the queries in flight, and the plans being made.
//
// c-ares calls back from inside ares_query, ares_process_fd and ares_destroy. The callbacks only
// record (a socket's wanted events; a query's parsed answer in _arrived); the answers are acted
// on by drain() once c-ares has returned, so nothing here re-enters c-ares from its own callback.
#include "resolver/resolver.h"

#include <ares.h>
#include <poll.h>

#include <cstring>
#include <random>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "engine/io/assert.h"
#include "engine/io/strings.h"
#include "resolver/dns_cache.h"
#include "resolver/dns_message.h"

namespace sluice::resolver {
namespace {

// ares_library_init is not thread-safe; a function-local static runs it once for every shard.
int ares_library_once() {
  static const int status = ares_library_init(ARES_LIB_INIT_ALL);
  return status;
}

// A name we can give ares_query: valid (encode_dns_name), not the root, and without the escapes
// that its encoder reads differently from ours (it knows \. but not \DDD) or a NUL that
// would end its C string. A domain from SMTP has none of these.
bool askable(const std::string& name) {
  return !name.empty() && name != "." && name.find('\\') == std::string::npos && name.find('\0') == std::string::npos &&
         encode_dns_name(name).ok();
}

}  // namespace

struct Resolver::Impl {
  // One socket c-ares told us about, and our polls on it (0 = none armed).
  struct Socket {
    bool want_read = false;
    bool want_write = false;
    uint32_t read_generation = 0;
    uint32_t write_generation = 0;
  };

  // One query given to c-ares; owned by c-ares until its callback, which runs exactly once.
  struct Query {
    Impl* impl;
    std::string name;  // normalized
    DnsType type;
    uint64_t sent_ms;
  };

  // A query's end, recorded by the callback for drain().
  struct Arrival {
    std::string name;
    DnsType type;
    uint64_t sent_ms;
    int ares_status;
    InterpretedAnswer interpreted;
    bool sent;  // false: not asked for (the name cannot be), answered no_records at once
  };

  // One plan being made. `pending` counts its lookups not yet answered.
  struct Request {
    uint64_t request_id = 0;
    std::string domain;
    uint64_t started_ms = 0;
    bool mx_answered = false;
    HostSelection selection;
    absl::flat_hash_map<std::string, HostAddresses> addresses;
    size_t pending = 0;
  };

  explicit Impl(const ResolverOptions& o)
      : options(o),
        cache(DnsCacheOptions{o.ttl_floor_ms, o.ttl_ceiling_ms, o.negative_ttl_ms_default, o.cache_entries_max}) {}

  ~Impl() {
    if (channel != nullptr) {
      destroying = true;
      ares_destroy(channel);  // every query's callback runs, with ARES_EDESTRUCTION
    }
  }

  absl::Status init() {
    if (const int status = ares_library_once(); status != ARES_SUCCESS) {
      return absl::InternalError(str_cat("c-ares: library init: ", ares_strerror(status)));
    }
    ares_options ares{};
    ares.flags = 0;  // UDP first, TCP when truncated (no IGNTC), a SERVFAIL or REFUSED tries the next server
    ares.timeout = static_cast<int>(options.query_timeout_ms);
    ares.tries = static_cast<int>(options.query_tries);
    ares.sock_state_cb = &Impl::on_socket_state;
    ares.sock_state_cb_data = this;
    const int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
    if (const int status = ares_init_options(&channel, &ares, mask); status != ARES_SUCCESS) {
      channel = nullptr;
      return absl::InternalError(str_cat("c-ares: init: ", ares_strerror(status)));
    }
    if (!options.servers.empty()) {
      std::vector<ares_addr_port_node> nodes(options.servers.size());
      for (size_t i = 0; i < nodes.size(); ++i) {
        const io::SocketAddress& server = options.servers[i];
        ares_addr_port_node& node = nodes[i];
        node.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
        node.family = server.family();
        if (node.family == AF_INET) {
          node.addr.addr4 = reinterpret_cast<const sockaddr_in*>(server.get())->sin_addr;
        } else if (node.family == AF_INET6) {
          std::memcpy(&node.addr.addr6, &reinterpret_cast<const sockaddr_in6*>(server.get())->sin6_addr, 16);
        } else {
          return absl::InvalidArgumentError("dns server: not an IP address");
        }
        node.udp_port = server.port();
        node.tcp_port = server.port();
      }
      if (const int status = ares_set_servers_ports(channel, nodes.data()); status != ARES_SUCCESS) {
        return absl::InvalidArgumentError(str_cat("c-ares: servers: ", ares_strerror(status)));
      }
    }
    if (options.rotation_start) {
      rotation = *options.rotation_start;
    } else {
      // All 64 bits random: the rotation is taken modulo small counts (2, 3 hosts).
      std::random_device random;
      rotation = uint64_t{random()} << 32 | random();
    }
    return absl::OkStatus();
  }

  // ---- c-ares callbacks: record only ----

  static void on_socket_state(void* data, ares_socket_t fd, int readable, int writable) {
    Impl* self = static_cast<Impl*>(data);
    if (readable == 0 && writable == 0) {
      // c-ares closes `fd` right after this: the shard must drop our polls on it.
      const auto it = self->sockets.find(fd);
      if (it == self->sockets.end()) {
        return;
      }
      for (const uint32_t generation : {it->second.read_generation, it->second.write_generation}) {
        if (generation != 0) {
          self->cancels.push_back(PollRequest{PollRequest::Op::cancel, fd, generation, 0});
        }
      }
      self->sockets.erase(it);
      return;
    }
    Socket& socket = self->sockets[fd];
    socket.want_read = readable != 0;
    socket.want_write = writable != 0;
  }

  static void on_answer(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
    std::unique_ptr<Query> query(static_cast<Query*>(arg));
    if (status == ARES_EDESTRUCTION || query->impl->destroying) {
      return;
    }
    Arrival arrival{std::move(query->name), query->type, query->sent_ms, status, {}, true};
    arrival.interpreted.answer.status = LookupStatus::temporary;
    // ares_query hands over the answer whatever its rcode (NXDOMAIN is ARES_ENOTFOUND, NODATA
    // ARES_ENODATA); our parser reads the rcode and the SOA itself. The buffer is valid only
    // during this call: parse it now.
    if (abuf != nullptr && alen > 0) {
      const absl::StatusOr<DnsMessage> message =
          parse_dns_message(std::string_view(reinterpret_cast<const char*>(abuf), static_cast<size_t>(alen)));
      if (message.ok()) {
        arrival.interpreted = interpret_dns_response(*message, arrival.name, arrival.type);
      }
    }
    query->impl->arrived.push_back(std::move(arrival));
  }

  // ---- lookups and plans ----

  void request_plan(uint64_t request_id, std::string domain, uint64_t now_ms) {
    std::string name = normalize_dns_name(domain);
    if (requests.size() >= options.requests_in_flight_max) {
      finish_failed(request_id, PlanFailure::dns_temporary, now_ms, now_ms);
      return;
    }
    if (!askable(name)) {
      finish_failed(request_id, PlanFailure::no_such_domain, now_ms, now_ms);  // no such name can exist
      return;
    }
    const uint64_t serial = ++next_serial;
    Request& request = requests[serial];
    request.request_id = request_id;
    request.domain = name;
    request.started_ms = now_ms;
    start_lookup(serial, name, DnsType::mx, now_ms);
    drain(now_ms);
  }

  Request& request_of(uint64_t serial) {
    const auto it = requests.find(serial);
    SLUICE_ASSERT(it != requests.end(), "a lookup's waiter is a plan in flight");
    return it->second;
  }

  // Asks the cache for (name, type) on behalf of request `serial`: a hit is delivered at once, a
  // miss waits for the query in flight or sends one.
  void start_lookup(uint64_t serial, const std::string& name, DnsType type, uint64_t now_ms) {
    request_of(serial).pending += 1;
    DnsCache::Lookup lookup = cache.lookup(name, type, serial, now_ms);
    switch (lookup.found) {
      case DnsCache::Found::hit:
        ++metrics.cache_hits;
        deliver(serial, name, type, lookup.answer, now_ms);
        return;
      case DnsCache::Found::wait:
        ++metrics.cache_misses;
        ++metrics.lookups_merged;
        return;
      case DnsCache::Found::query:
        ++metrics.cache_misses;
        send_query(name, type, now_ms);
        return;
    }
  }

  void send_query(const std::string& name, DnsType type, uint64_t now_ms) {
    if (!askable(name)) {
      // A name from an MX answer that cannot be asked for (the domain was checked): no address.
      Arrival arrival{name, type, now_ms, ARES_EBADNAME, {}, false};
      arrival.interpreted.answer.status = LookupStatus::no_records;
      arrived.push_back(std::move(arrival));
      return;
    }
    ++metrics.queries_sent;
    // ares_query, not ares_send of our own encoding: c-ares 1.18's ares_send keeps the id it is
    // given, and only ares_query draws a random one, unique among the queries in flight
    // (spoofed answers must guess it).
    auto* query = new Query{this, name, type, now_ms};
    ares_query(channel, name.c_str(), kDnsClassIn, static_cast<int>(type), &Impl::on_answer, query);
  }

  // Acts on the queries' ends, until no more come (acting may send queries, and c-ares may end
  // one inside ares_query).
  void drain(uint64_t now_ms) {
    while (!arrived.empty()) {
      std::vector<Arrival> batch;
      batch.swap(arrived);
      for (Arrival& arrival : batch) {
        if (arrival.sent) {
          metrics.query_latency_ms_sum += now_ms >= arrival.sent_ms ? now_ms - arrival.sent_ms : 0;
          ++metrics.queries_ended;
        }
        const DnsAnswer& answer = arrival.interpreted.answer;
        if (answer.status == LookupStatus::temporary) {
          ++metrics.query_failures;
          metrics.query_timeouts += arrival.ares_status == ARES_ETIMEOUT ? 1 : 0;
        }
        const std::vector<uint64_t> waiters =
            cache.complete(arrival.name, arrival.type, answer, arrival.interpreted.ttl_s, now_ms);
        for (const uint64_t serial : waiters) {
          deliver(serial, arrival.name, arrival.type, answer, now_ms);
        }
      }
    }
    metrics.cache_evictions = cache.evictions();
  }

  // Request `serial`'s lookup of (name, type) answered.
  void deliver(uint64_t serial, const std::string& name, DnsType type, const DnsAnswer& answer, uint64_t now_ms) {
    Request& request = request_of(serial);
    SLUICE_ASSERT(request.pending > 0);
    request.pending -= 1;
    if (type == DnsType::mx) {
      SLUICE_ASSERT(!request.mx_answered, "one MX lookup per plan");
      request.mx_answered = true;
      const std::string& domain = answer.canonical_name.empty() ? request.domain : answer.canonical_name;
      request.selection = select_mx_hosts(MxLookup{answer.status, answer.mx}, domain, options.own_hostname, rotation++);
      if (request.selection.failure) {
        finish(serial, now_ms);
        return;
      }
      // One more than the lookups until they have all started, so that hits among them cannot
      // finish the plan before the last one is asked for.
      request.pending += 1;
      const std::vector<MxHost> hosts = request.selection.hosts;
      for (const MxHost& host : hosts) {
        request_of(serial).addresses.try_emplace(host.host);
        start_lookup(serial, host.host, DnsType::a, now_ms);
        if (options.use_ipv6) {
          start_lookup(serial, host.host, DnsType::aaaa, now_ms);
        }
      }
      Request& started = request_of(serial);
      started.pending -= 1;
      if (started.pending == 0) {
        finish(serial, now_ms);
      }
      return;
    }
    const auto host = request.addresses.find(name);
    SLUICE_ASSERT(host != request.addresses.end(), "an address lookup is for a selected host");
    AddressLookup& lookup = type == DnsType::a ? host->second.a : host->second.aaaa;
    lookup = AddressLookup{answer.status, answer.addresses};
    if (request.pending == 0) {
      finish(serial, now_ms);
    }
  }

  void finish(uint64_t serial, uint64_t now_ms) {
    const auto it = requests.find(serial);
    SLUICE_ASSERT(it != requests.end() && it->second.pending == 0);
    Request& request = it->second;
    DeliveryPlan plan = plan_delivery(request.selection, request.addresses, options.port);
    record(request.request_id, std::move(plan), request.started_ms, now_ms);
    requests.erase(it);
  }

  void finish_failed(uint64_t request_id, PlanFailure failure, uint64_t started_ms, uint64_t now_ms) {
    record(request_id, DeliveryPlan{failure, {}, false}, started_ms, now_ms);
  }

  void record(uint64_t request_id, DeliveryPlan plan, uint64_t started_ms, uint64_t now_ms) {
    ++metrics.plans;
    metrics.plan_latency_ms_sum += now_ms >= started_ms ? now_ms - started_ms : 0;
    if (plan.failure) {
      ++(plan_failure_permanent(*plan.failure) ? metrics.plans_failed_permanent : metrics.plans_failed_temporary);
    }
    completed.push_back(PlanResult{request_id, std::move(plan)});
  }

  // ---- the shard's side ----

  uint32_t new_generation() {
    if (++generation == 0) {
      generation = 1;
    }
    return generation;
  }

  std::vector<PollRequest> poll_requests() {
    std::vector<PollRequest> out;
    out.swap(cancels);
    for (auto& [fd, socket] : sockets) {
      if (socket.want_read && socket.read_generation == 0) {
        socket.read_generation = new_generation();
        out.push_back(PollRequest{PollRequest::Op::arm, fd, socket.read_generation, POLLIN});
      }
      if (socket.want_write && socket.write_generation == 0) {
        socket.write_generation = new_generation();
        out.push_back(PollRequest{PollRequest::Op::arm, fd, socket.write_generation, POLLOUT});
      }
    }
    return out;
  }

  void on_poll_ready(int fd, uint32_t poll_generation, int32_t result, uint64_t now_ms) {
    const auto it = sockets.find(fd);
    if (it == sockets.end() || poll_generation == 0) {
      ++metrics.stale_polls;
      return;
    }
    Socket& socket = it->second;
    ares_socket_t read_fd = ARES_SOCKET_BAD;
    ares_socket_t write_fd = ARES_SOCKET_BAD;
    if (poll_generation == socket.read_generation) {
      socket.read_generation = 0;
      read_fd = fd;
    } else if (poll_generation == socket.write_generation) {
      socket.write_generation = 0;
      write_fd = fd;
    } else {
      ++metrics.stale_polls;
      return;
    }
    // A failed poll (negative res) is armed again by the next poll_requests() if c-ares still
    // wants it; an error on the socket itself shows as POLLERR, and c-ares's read or write
    // finds it.
    if (result >= 0) {
      ares_process_fd(channel, read_fd, write_fd);
    }
    drain(now_ms);
  }

  std::optional<uint64_t> next_deadline_ms(uint64_t now_ms) const {
    timeval tv{};
    if (ares_timeout(channel, nullptr, &tv) == nullptr) {
      return std::nullopt;
    }
    // Rounded up, so that a tick is never early (an early one would find nothing to time out
    // and ask for the same deadline again at once).
    const uint64_t ms = static_cast<uint64_t>(tv.tv_sec) * 1000 + (static_cast<uint64_t>(tv.tv_usec) + 999) / 1000;
    return now_ms + ms;
  }

  void on_tick(uint64_t now_ms) {
    ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    drain(now_ms);
  }

  ResolverOptions options;
  DnsCache cache;
  ares_channel channel = nullptr;
  bool destroying = false;
  absl::flat_hash_map<int, Socket> sockets;
  std::vector<PollRequest> cancels;
  uint32_t generation = 0;
  std::vector<Arrival> arrived;
  absl::flat_hash_map<uint64_t, Request> requests;  // by serial
  uint64_t next_serial = 0;
  uint64_t rotation = 0;
  std::vector<PlanResult> completed;
  ResolverMetrics metrics;
};

absl::StatusOr<std::unique_ptr<Resolver>> Resolver::create(const ResolverOptions& options) {
  if (options.ttl_floor_ms > options.ttl_ceiling_ms) {
    return absl::InvalidArgumentError("resolver: the TTL floor is above the ceiling");
  }
  if (options.cache_entries_max == 0 || options.requests_in_flight_max == 0 || options.query_tries == 0 ||
      options.query_timeout_ms == 0) {
    return absl::InvalidArgumentError("resolver: cache size, request limit, tries and timeout must be positive");
  }
  auto impl = std::make_unique<Impl>(options);
  if (absl::Status status = impl->init(); !status.ok()) {
    return status;
  }
  return std::unique_ptr<Resolver>(new Resolver(std::move(impl)));
}

Resolver::Resolver(std::unique_ptr<Impl> impl) : _impl(std::move(impl)) {}
Resolver::~Resolver() = default;

void Resolver::request_plan(uint64_t request_id, std::string domain, uint64_t now_ms) {
  _impl->request_plan(request_id, std::move(domain), now_ms);
}
std::vector<PollRequest> Resolver::poll_requests() {
  return _impl->poll_requests();
}
void Resolver::on_poll_ready(int fd, uint32_t generation, int32_t result, uint64_t now_ms) {
  _impl->on_poll_ready(fd, generation, result, now_ms);
}
std::optional<uint64_t> Resolver::next_deadline_ms(uint64_t now_ms) const {
  return _impl->next_deadline_ms(now_ms);
}
void Resolver::on_tick(uint64_t now_ms) {
  _impl->on_tick(now_ms);
}
std::vector<PlanResult> Resolver::take_completed() {
  std::vector<PlanResult> out;
  out.swap(_impl->completed);
  return out;
}
bool Resolver::idle() const {
  return _impl->requests.empty() && _impl->completed.empty();
}
const ResolverMetrics& Resolver::metrics() const {
  return _impl->metrics;
}

}  // namespace sluice::resolver
