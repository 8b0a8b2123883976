// MX selection and static routes: see mx_plan.h for the rules and the decisions behind them.
// Nothing here looks anything up or keeps state between calls; the only assertion is on the
// caller's promise that every selected host was looked up.
#include "resolver/mx_plan.h"

#include <algorithm>

#include "engine/io/assert.h"
#include "engine/io/strings.h"

namespace sluice::resolver {
namespace {

constexpr std::string_view kRoot = ".";

// Status of a lookup from its response's header; ok means "look at the records".
LookupStatus header_status(const DnsMessage& response) {
  if (response.header.truncated || !response.complete) {
    return LookupStatus::temporary;  // c-ares retries over TCP; a cut answer is not the answer
  }
  switch (response.header.rcode) {
    case Rcode::no_error:
      return LookupStatus::ok;
    case Rcode::name_error:
      return LookupStatus::nxdomain;
    default:
      return LookupStatus::temporary;
  }
}

HostSelection fail(PlanFailure failure) {
  return HostSelection{failure, {}, false};
}

// Sorted by preference, then name; each name once, at its lowest preference. O(n log n): the
// MX set is as large as a hostile answer makes it.
std::vector<MxHost> sorted_unique(std::vector<MxHost> hosts) {
  std::sort(hosts.begin(), hosts.end(), [](const MxHost& x, const MxHost& y) {
    return x.host != y.host ? x.host < y.host : x.preference < y.preference;
  });
  hosts.erase(
      std::unique(hosts.begin(), hosts.end(), [](const MxHost& x, const MxHost& y) { return x.host == y.host; }),
      hosts.end());
  std::sort(hosts.begin(), hosts.end(), [](const MxHost& x, const MxHost& y) {
    return x.preference != y.preference ? x.preference < y.preference : x.host < y.host;
  });
  return hosts;
}

// Rotates each run of equal preference by `rotation`.
void rotate_equal_preferences(std::vector<MxHost>& hosts, uint64_t rotation) {
  size_t begin = 0;
  while (begin < hosts.size()) {
    size_t end = begin + 1;
    while (end < hosts.size() && hosts[end].preference == hosts[begin].preference) {
      ++end;
    }
    const size_t count = end - begin;
    std::rotate(hosts.begin() + begin, hosts.begin() + begin + static_cast<size_t>(rotation % count),
                hosts.begin() + end);
    begin = end;
  }
}

void add_addresses(const AddressLookup& lookup, const MxHost& host, uint16_t port, std::vector<PlanTarget>& targets) {
  if (lookup.status != LookupStatus::ok) {
    return;
  }
  for (io::SocketAddress address : lookup.addresses) {
    if (targets.size() == kPlanAddressesMax) {
      return;
    }
    address.set_port(port);
    const bool seen =
        std::any_of(targets.begin(), targets.end(), [&](const PlanTarget& t) { return t.address == address; });
    if (!seen) {
      targets.push_back(PlanTarget{host.host, host.preference, address});
    }
  }
}

// A route's domain: "*", or a domain name with an optional leading dot, lower case.
bool valid_route_domain(std::string_view domain) {
  if (domain == "*") {
    return true;
  }
  if (!domain.empty() && domain.front() == '.') {
    domain.remove_prefix(1);
  }
  if (domain.empty() || domain.size() > kDnsNameOctetsMax - 2) {
    return false;
  }
  size_t label = 0;
  for (const char c : domain) {
    if (c == '.') {
      if (label == 0) {
        return false;
      }
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
      if (++label > kDnsLabelOctetsMax) {
        return false;
      }
    } else {
      return false;
    }
  }
  return label != 0;
}

}  // namespace

MxLookup mx_lookup_from(const DnsMessage& response, std::string_view domain) {
  MxLookup lookup{header_status(response), {}};
  if (lookup.status != LookupStatus::ok) {
    return lookup;
  }
  const absl::StatusOr<std::string> name = canonical_name(response, domain);
  if (!name.ok()) {
    return MxLookup{LookupStatus::temporary, {}};
  }
  for (const MxRecord& mx : response.mx) {
    if (mx.owner == *name) {
      lookup.hosts.push_back(MxHost{mx.preference, mx.exchange});
    }
  }
  lookup.status = lookup.hosts.empty() ? LookupStatus::no_records : LookupStatus::ok;
  return lookup;
}

AddressLookup address_lookup_from(const DnsMessage& response, std::string_view host) {
  AddressLookup lookup{header_status(response), {}};
  if (lookup.status != LookupStatus::ok) {
    return lookup;
  }
  const absl::StatusOr<std::string> name = canonical_name(response, host);
  if (!name.ok()) {
    return AddressLookup{LookupStatus::temporary, {}};
  }
  for (const AddressRecord& record : response.addresses) {
    if (record.owner == *name) {
      lookup.addresses.push_back(record.address);
    }
  }
  lookup.status = lookup.addresses.empty() ? LookupStatus::no_records : LookupStatus::ok;
  return lookup;
}

bool plan_failure_permanent(PlanFailure failure) {
  return failure != PlanFailure::dns_temporary;
}

std::string_view plan_failure_status(PlanFailure failure) {
  switch (failure) {
    case PlanFailure::null_mx:
      return "5.1.10";
    case PlanFailure::no_such_domain:
      return "5.1.2";
    case PlanFailure::routing_loop:
      return "5.4.6";
    case PlanFailure::no_mail_host:
      return "5.4.4";
    case PlanFailure::dns_temporary:
      return "4.4.3";
  }
  return "4.4.3";
}

std::string_view plan_failure_text(PlanFailure failure) {
  switch (failure) {
    case PlanFailure::null_mx:
      return "null MX: the domain accepts no mail";
    case PlanFailure::no_such_domain:
      return "the recipient domain does not exist";
    case PlanFailure::routing_loop:
      return "mail for the domain loops back to this host";
    case PlanFailure::no_mail_host:
      return "no mail host of the domain has an address";
    case PlanFailure::dns_temporary:
      return "DNS lookup failed temporarily";
  }
  return "DNS lookup failed temporarily";
}

HostSelection select_mx_hosts(const MxLookup& mx, std::string_view domain, std::string_view own_hostname,
                              uint64_t rotation) {
  const std::string own = own_hostname.empty() ? std::string() : normalize_dns_name(own_hostname);
  switch (mx.status) {
    case LookupStatus::nxdomain:
      return fail(PlanFailure::no_such_domain);
    case LookupStatus::temporary:
      return fail(PlanFailure::dns_temporary);
    case LookupStatus::ok:
    case LookupStatus::no_records:
      break;
  }
  if (mx.status == LookupStatus::no_records || mx.hosts.empty()) {
    std::string self = normalize_dns_name(domain);
    if (self == own) {
      return fail(PlanFailure::routing_loop);
    }
    return HostSelection{std::nullopt, {MxHost{0, std::move(self)}}, true};
  }
  std::vector<MxHost> hosts;
  for (const MxHost& host : mx.hosts) {
    std::string name = normalize_dns_name(host.host);
    if (name != kRoot) {
      hosts.push_back(MxHost{host.preference, std::move(name)});
    }
  }
  if (hosts.empty()) {
    return fail(PlanFailure::null_mx);
  }
  hosts = sorted_unique(std::move(hosts));
  if (!own.empty()) {
    const auto self = std::find_if(hosts.begin(), hosts.end(), [&](const MxHost& h) { return h.host == own; });
    if (self != hosts.end()) {
      const uint16_t cut = self->preference;
      hosts.erase(std::find_if(hosts.begin(), hosts.end(), [&](const MxHost& h) { return h.preference >= cut; }),
                  hosts.end());
      if (hosts.empty()) {
        return fail(PlanFailure::routing_loop);
      }
    }
  }
  rotate_equal_preferences(hosts, rotation);
  if (hosts.size() > kMxHostsMax) {
    hosts.resize(kMxHostsMax);
  }
  return HostSelection{std::nullopt, std::move(hosts), false};
}

DeliveryPlan plan_delivery(const HostSelection& selection,
                           const absl::flat_hash_map<std::string, HostAddresses>& addresses, uint16_t port) {
  if (selection.failure) {
    return DeliveryPlan{selection.failure, {}, false};
  }
  SLUICE_ASSERT(!selection.hosts.empty(), "a selection without failure has hosts");
  DeliveryPlan plan{std::nullopt, {}, selection.implicit_mx};
  bool temporary = false;
  for (const MxHost& host : selection.hosts) {
    const auto it = addresses.find(host.host);
    SLUICE_ASSERT(it != addresses.end(), "every selected host was looked up");
    add_addresses(it->second.a, host, port, plan.targets);
    add_addresses(it->second.aaaa, host, port, plan.targets);
    temporary = temporary || it->second.a.status == LookupStatus::temporary ||
                it->second.aaaa.status == LookupStatus::temporary;
  }
  if (plan.targets.empty()) {
    plan.failure = temporary ? PlanFailure::dns_temporary : PlanFailure::no_mail_host;
  }
  return plan;
}

absl::StatusOr<RouteTable> RouteTable::build(std::vector<Route> routes) {
  RouteTable table;
  for (size_t i = 0; i < routes.size(); ++i) {
    Route& route = routes[i];
    route.domain = normalize_dns_name(route.domain);
    if (!valid_route_domain(route.domain)) {
      return absl::InvalidArgumentError(str_cat("route: \"", route.domain, "\" is not \"*\", a domain or .domain"));
    }
    const bool fresh =
        route.domain == "*" ? !table._wildcard.has_value() : table._by_domain.emplace(route.domain, i).second;
    if (!fresh) {
      return absl::InvalidArgumentError(str_cat("route: \"", route.domain, "\" has more than one route"));
    }
    if (route.domain == "*") {
      table._wildcard = i;
    }
  }
  table._routes = std::move(routes);
  return table;
}

const Route* RouteTable::find(std::string_view domain) const {
  if (_routes.empty()) {
    return nullptr;
  }
  const std::string name = normalize_dns_name(domain);
  if (const auto it = _by_domain.find(name); it != _by_domain.end()) {
    return &_routes[it->second];
  }
  // ".b.example" then ".example" for "a.b.example": the longest suffix first.
  for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
    if (const auto it = _by_domain.find(to_absl(std::string_view(name).substr(dot))); it != _by_domain.end()) {
      return &_routes[it->second];
    }
  }
  return _wildcard ? &_routes[*_wildcard] : nullptr;
}

DeliveryPlan plan_route(const Route& route) {
  return DeliveryPlan{std::nullopt, {PlanTarget{route.next_hop.to_string(), 0, route.next_hop}}, false};
}

}  // namespace sluice::resolver
