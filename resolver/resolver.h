#pragma once
// The per-shard resolver (DESIGN.md section 2, "Resolver"): a recipient domain in, its delivery
// plan out (the addresses to try, in order, or why there are none: resolver/mx_plan.h). One per
// shard thread, used only by it. c-ares does the DNS transport (UDP, TCP when an answer is
// truncated, retries over the servers); this class owns the c-ares channel, the cache
// (dns_cache.h), and the plans being made.
//
// It never blocks, never creates a thread and never waits: like the spool it is sans-I/O toward
// the ring. The shard
//   * arms what poll_requests() asks for: a one-shot IORING_OP_POLL_ADD per `arm` (one direction
//     each, so a socket may have a POLLIN and a POLLOUT poll out at once), and removes the poll
//     named by each `cancel` (IORING_OP_POLL_REMOVE): c-ares closed that socket, and an armed
//     poll would keep it open;
//   * gives every poll's CQE back to on_poll_ready(fd, generation, res), cancelled ones included:
//     the generation is new for every arm, so a CQE of a poll that was cancelled, or armed on a
//     descriptor c-ares has since closed and reopened, is recognised and ignored;
//   * calls on_tick(now) once next_deadline_ms() has passed (c-ares's query timeouts);
//   * after any of these calls and request_plan(), asks poll_requests(), next_deadline_ms() and
//     take_completed() again (each call can open or close sockets and finish plans).
// Every plan comes out of take_completed(), even one answered from the cache inside
// request_plan(): the caller has a single path for results and is never called back.
//
// How a plan is made: MX lookup of the domain (cached; an alias domain is followed through the
// CNAMEs of the MX answer, and its canonical name is the implicit MX), select_mx_hosts with our
// own hostname and a per-shard rotation (counter from a random start), A and, with use_ipv6,
// AAAA of every selected host at once (each cached; a lookup of a name already asked for waits
// for that query), then plan_delivery with the port. Routes ([[route]]) and address literals are
// the caller's: it asks only for domains that need DNS.
// Failures: NXDOMAIN 5.1.2; SERVFAIL, REFUSED, timeouts, malformed answers 4.4.3 (temporary);
// the rest as in mx_plan.h. More than requests_in_flight_max plans at once: 4.4.3 at once.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/io/address.h"
#include "resolver/mx_plan.h"

namespace sluice::resolver {

struct ResolverOptions {
  std::vector<io::SocketAddress> servers;  // UDP and TCP at each one's port; empty = /etc/resolv.conf
  std::string own_hostname;                // the MX list is cut at it (mx_plan.h); "" = no cut
  uint16_t port = 25;                      // every planned address gets it
  uint64_t ttl_floor_ms = 5'000;
  uint64_t ttl_ceiling_ms = 3'600'000;
  uint64_t negative_ttl_ms_default = 30'000;  // NXDOMAIN or NODATA without an SOA
  size_t cache_entries_max = 10'000;
  // c-ares: the first try's timeout; each round over all servers doubles it. With one server,
  // 2 s and 3 tries give up after 2 + 4 + 8 = 14 s.
  uint32_t query_timeout_ms = 2'000;
  uint32_t query_tries = 3;
  bool use_ipv6 = true;  // AAAA lookups
  size_t requests_in_flight_max = 4096;
  std::optional<uint64_t> rotation_start;  // nullopt = random; tests fix it
};

// What the shard does on the ring for the resolver.
struct PollRequest {
  enum class Op : uint8_t {
    arm,     // POLL_ADD `events` on `fd`, one-shot; its CQE goes to on_poll_ready(fd, generation)
    cancel,  // POLL_REMOVE the poll armed as (fd, generation)
  };
  Op op = Op::arm;
  int fd = -1;
  uint32_t generation = 0;  // never 0
  uint32_t events = 0;      // arm: POLLIN or POLLOUT
  friend bool operator==(const PollRequest&, const PollRequest&) = default;
};

struct PlanResult {
  uint64_t request_id = 0;
  DeliveryPlan plan;
};

struct ResolverMetrics {
  uint64_t plans = 0;  // completed, whatever the outcome
  uint64_t plans_failed_temporary = 0;
  uint64_t plans_failed_permanent = 0;
  uint64_t plan_latency_ms_sum = 0;  // request_plan to completion, over `plans`
  uint64_t queries_sent = 0;
  uint64_t query_failures = 0;  // answers that were temporary failures, timeouts included
  uint64_t query_timeouts = 0;
  uint64_t queries_ended = 0;         // answered or given up
  uint64_t query_latency_ms_sum = 0;  // sent to ended, over queries_ended
  uint64_t cache_hits = 0;            // lookups (MX, A, AAAA) answered from the cache
  uint64_t cache_misses = 0;          // the others: a query sent, or a wait for one in flight
  uint64_t lookups_merged = 0;        // misses that waited for a query in flight
  uint64_t cache_evictions = 0;
  uint64_t stale_polls = 0;  // CQEs of cancelled polls or closed sockets, ignored
};

class Resolver {
 public:
  // Creates the c-ares channel (reads /etc/resolv.conf when servers is empty). An error when
  // c-ares cannot be set up or refuses the servers.
  static absl::StatusOr<std::unique_ptr<Resolver>> create(const ResolverOptions& options);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Starts the plan for `domain` (any case, trailing dot allowed); its result comes out of
  // take_completed() with `request_id`, which the resolver does not interpret.
  void request_plan(uint64_t request_id, std::string domain, uint64_t now_ms);

  // Arms and cancels since the last call.
  std::vector<PollRequest> poll_requests();
  // A poll's CQE: `result` is its res (the revents, or a negative errno).
  void on_poll_ready(int fd, uint32_t generation, int32_t result, uint64_t now_ms);
  // When on_tick is due (c-ares's next query timeout); nullopt: no query in flight.
  std::optional<uint64_t> next_deadline_ms(uint64_t now_ms) const;
  void on_tick(uint64_t now_ms);

  std::vector<PlanResult> take_completed();
  // No plan in flight (and none waiting in take_completed).
  bool idle() const;
  const ResolverMetrics& metrics() const;

 private:
  struct Impl;
  explicit Resolver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> _impl;
};

}  // namespace sluice::resolver
