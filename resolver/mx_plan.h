#pragma once
// MX selection (RFC 5321 section 5.1, RFC 7505) and static routes: from what DNS said about a
// recipient domain, the ordered list of addresses to try, or the reason there is none and whether
// it is permanent (bounce) or temporary (retry). DESIGN.md section 2, "Resolver". Pure: no
// sockets, no clock, no randomness of its own (the caller passes the rotation, so tests are
// deterministic), no DNS queries: the caller does the lookups in two steps,
//   1. select_mx_hosts(MX lookup)        -> the hosts to resolve, in the order to try them;
//   2. plan_delivery(selection, addresses of each host) -> the addresses to try, in order.
// It must never plan a delivery back to ourselves (our own hostname cuts the MX list), never
// plan past a null MX, and never assert on what DNS said (only on its caller's promises).
//
// Decisions:
// * Order: lowest preference first; hosts of equal preference are sorted by name and then
//   rotated by `rotation` (a per-shard counter from a random start), so consecutive plans start
//   at each host in turn and load spreads evenly; every address of a host (the A lookup's, then
//   the AAAA lookup's, as DNS gave them) comes before the next host. An address already in the
//   plan is not added again; a host listed twice keeps its lowest preference.
// * No MX (NODATA, or an empty answer): the implicit MX, the domain itself at preference 0.
// * Null MX: an MX set whose every exchange is "." (RFC 7505: "0 ."; any preference) fails at
//   once, permanently, 5.1.10 (RFC 7505 section 4.2). A "." among real MX hosts is skipped.
// * Our own hostname among the MX hosts: every host at its preference or above is dropped (RFC
//   5321 section 5.1); if none is left, or the implicit MX is ourselves, it is a routing loop:
//   permanent 5.4.6 (RFC 3463 X.4.6 "Routing loop detected", as Postfix's "mail for ... loops
//   back to myself").
// * NXDOMAIN for the domain: permanent 5.1.2 (RFC 3463 X.1.2, "bad destination system address").
//   SERVFAIL, REFUSED, any other rcode, a timeout, a truncated or a CNAME-looping answer:
//   temporary 4.4.3 (X.4.3 "directory server failure").
// * A host without addresses is skipped. No host with an address: temporary 4.4.3 if some
//   host's lookup failed temporarily, else permanent 5.4.4 (X.4.4 "unable to route", as Postfix).
// * Limits: kMxHostsMax hosts and kPlanAddressesMax addresses, the rest dropped from the end
//   (an attempt could not try more within its time anyway).
// * Routes ([[route]]): "example.com" matches that domain only, ".example.com" every subdomain
//   of it (not itself, as relay domains), "*" everything; the exact domain wins over the longest
//   matching ".suffix", which wins over "*". A route bypasses MX lookup entirely.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/io/address.h"
#include "resolver/dns_message.h"

namespace sluice::resolver {

inline constexpr size_t kMxHostsMax = 32;
inline constexpr size_t kPlanAddressesMax = 64;

// What one DNS lookup said.
enum class LookupStatus : uint8_t {
  ok,          // records of the type asked for
  no_records,  // the name exists, without records of that type (NODATA)
  nxdomain,    // the name does not exist (rcode 3)
  temporary,   // SERVFAIL, REFUSED, other rcodes, timeout, truncated answer, CNAME loop: ask later
};

struct MxHost {
  uint16_t preference = 0;
  std::string host;  // lower case, no trailing dot; "." for a null MX
  friend bool operator==(const MxHost&, const MxHost&) = default;
};

struct MxLookup {
  LookupStatus status = LookupStatus::temporary;
  std::vector<MxHost> hosts;  // with ok: the MX set, in answer order
};

struct AddressLookup {
  LookupStatus status = LookupStatus::temporary;
  std::vector<io::SocketAddress> addresses;  // with ok, in answer order; ports are ignored
};

// The MX set of `domain` (or of the name it is an alias of) in a response to its MX query.
MxLookup mx_lookup_from(const DnsMessage& response, std::string_view domain);
// The addresses of `host` (or of the name it is an alias of) in a response to its A or AAAA query.
AddressLookup address_lookup_from(const DnsMessage& response, std::string_view host);

enum class PlanFailure : uint8_t {
  null_mx,         // 5.1.10
  no_such_domain,  // 5.1.2
  routing_loop,    // 5.4.6
  no_mail_host,    // 5.4.4
  dns_temporary,   // 4.4.3
};
bool plan_failure_permanent(PlanFailure failure);
// "5.1.10", ...: the enhanced status code for the DSN and the log.
std::string_view plan_failure_status(PlanFailure failure);
// "null MX: the domain accepts no mail", ...
std::string_view plan_failure_text(PlanFailure failure);

// Step 1: the hosts to resolve, in the order to try them, or a failure.
struct HostSelection {
  std::optional<PlanFailure> failure;
  std::vector<MxHost> hosts;  // empty if and only if failure
  bool implicit_mx = false;   // hosts is the domain itself
};
// `own_hostname` may be empty (no cut); names compare without regard to case or a trailing dot.
HostSelection select_mx_hosts(const MxLookup& mx, std::string_view domain, std::string_view own_hostname,
                              uint64_t rotation);

// A host's two address lookups. A relay that does not use IPv6 leaves aaaa at no_records.
struct HostAddresses {
  AddressLookup a{LookupStatus::no_records, {}};
  AddressLookup aaaa{LookupStatus::no_records, {}};
};

struct PlanTarget {
  std::string host;  // the MX host, the domain for an implicit MX, the next hop for a route
  uint16_t preference = 0;
  io::SocketAddress address;  // with the port to connect to
  friend bool operator==(const PlanTarget&, const PlanTarget&) = default;
};

struct DeliveryPlan {
  std::optional<PlanFailure> failure;
  std::vector<PlanTarget> targets;  // in the order to try; empty if and only if failure
  bool implicit_mx = false;
};

// Step 2. `addresses` must hold every host of `selection` (keyed by MxHost::host): asserted,
// since the caller looked them up from this very selection. Each address gets `port`.
DeliveryPlan plan_delivery(const HostSelection& selection,
                           const absl::flat_hash_map<std::string, HostAddresses>& addresses, uint16_t port);

// A static next hop ([[route]] in the config; engine/app converts its RouteConfig, which lives
// above this module).
struct Route {
  std::string domain;  // "*", "example.com" or ".example.com"
  io::SocketAddress next_hop;
  friend bool operator==(const Route&, const Route&) = default;
};

class RouteTable {
 public:
  RouteTable() = default;
  // An empty, malformed or duplicate domain is an error.
  static absl::StatusOr<RouteTable> build(std::vector<Route> routes);

  // The most specific route for `domain` (any case, trailing dot allowed), or nullptr.
  const Route* find(std::string_view domain) const;
  bool empty() const { return _routes.empty(); }

 private:
  std::vector<Route> _routes;
  absl::flat_hash_map<std::string, size_t> _by_domain;  // exact and ".suffix" entries
  std::optional<size_t> _wildcard;
};

// The plan for a route: its next hop alone.
DeliveryPlan plan_route(const Route& route);

}  // namespace sluice::resolver
