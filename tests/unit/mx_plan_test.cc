// Tests for MX selection and routes: the order (preference, then rotation among equals, every
// address of a host before the next host), fairness over many rotations, implicit MX, null MX, our
// own hostname in the list, hosts that do not resolve, how each DNS outcome maps to a permanent or
// temporary failure and its status code, the limits, routes (most specific wins), and one
// lookup from parsed DNS messages to the plan.
#include "resolver/mx_plan.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "engine/io/strings.h"
#include "resolver/dns_testing.h"

namespace sluice::resolver {
namespace {

using testing::ip;

constexpr uint16_t kPort = 2525;

MxLookup mx_set(std::vector<MxHost> hosts) {
  return MxLookup{LookupStatus::ok, std::move(hosts)};
}

AddressLookup found(std::vector<std::string> texts) {
  AddressLookup lookup{LookupStatus::ok, {}};
  for (const std::string& text : texts) {
    lookup.addresses.push_back(ip(text));
  }
  return lookup;
}

AddressLookup failed(LookupStatus status) {
  return AddressLookup{status, {}};
}

std::vector<std::string> hosts_of(const HostSelection& selection) {
  std::vector<std::string> out;
  for (const MxHost& host : selection.hosts) {
    out.push_back(host.host);
  }
  return out;
}

std::vector<std::string> addresses_of(const DeliveryPlan& plan) {
  std::vector<std::string> out;
  for (const PlanTarget& target : plan.targets) {
    out.push_back(str_cat(target.host, "=", target.address.to_string()));
  }
  return out;
}

const MxLookup kTwoPrimariesAndABackup =
    mx_set({{20, "backup.example.com"}, {10, "mx-b.example.com"}, {10, "mx-a.example.com"}});

TEST(MxPlan, LowestPreferenceFirstEqualOnesRotated) {
  EXPECT_EQ(hosts_of(select_mx_hosts(kTwoPrimariesAndABackup, "example.com", "relay.test", 0)),
            (std::vector<std::string>{"mx-a.example.com", "mx-b.example.com", "backup.example.com"}));
  EXPECT_EQ(hosts_of(select_mx_hosts(kTwoPrimariesAndABackup, "example.com", "relay.test", 1)),
            (std::vector<std::string>{"mx-b.example.com", "mx-a.example.com", "backup.example.com"}));
  EXPECT_EQ(hosts_of(select_mx_hosts(kTwoPrimariesAndABackup, "example.com", "relay.test", 2)),
            hosts_of(select_mx_hosts(kTwoPrimariesAndABackup, "example.com", "relay.test", 0)));
}

TEST(MxPlan, FairOverManyRotations) {
  // Two equal primaries each come first half of the time, the backup never; from any start.
  for (const uint64_t start : {uint64_t{0}, uint64_t{0x9e3779b97f4a7c15}, ~uint64_t{0} - 500}) {
    std::map<std::string, int> first;
    for (uint64_t i = 0; i < 1000; ++i) {
      const HostSelection s = select_mx_hosts(kTwoPrimariesAndABackup, "example.com", "relay.test", start + i);
      ASSERT_EQ(s.hosts.size(), 3u);
      ++first[s.hosts[0].host];
      EXPECT_EQ(s.hosts[2].host, "backup.example.com");
    }
    EXPECT_EQ(first["mx-a.example.com"], 500);
    EXPECT_EQ(first["mx-b.example.com"], 500);
    EXPECT_EQ(first.count("backup.example.com"), 0u);
  }
  // Three equal hosts: each in each place a third of the time, and the order of the answer does
  // not matter.
  const MxLookup three = mx_set({{5, "c.test"}, {5, "a.test"}, {5, "b.test"}});
  const MxLookup three_reordered = mx_set({{5, "b.test"}, {5, "c.test"}, {5, "a.test"}});
  std::map<std::pair<size_t, std::string>, int> places;
  for (uint64_t i = 0; i < 999; ++i) {
    const HostSelection s = select_mx_hosts(three, "test", "", 12345 + i);
    EXPECT_EQ(hosts_of(s), hosts_of(select_mx_hosts(three_reordered, "test", "", 12345 + i)));
    for (size_t place = 0; place < s.hosts.size(); ++place) {
      ++places[{place, s.hosts[place].host}];
    }
  }
  ASSERT_EQ(places.size(), 9u);
  for (const auto& [key, count] : places) {
    EXPECT_EQ(count, 333) << key.first << " " << key.second;
  }
}

TEST(MxPlan, EveryAddressOfAHostBeforeTheNextHost) {
  const HostSelection s = select_mx_hosts(kTwoPrimariesAndABackup, "example.com", "relay.test", 0);
  absl::flat_hash_map<std::string, HostAddresses> addresses;
  addresses["mx-a.example.com"] = HostAddresses{found({"192.0.2.1", "192.0.2.2"}), found({"2001:db8::1"})};
  addresses["mx-b.example.com"] = HostAddresses{found({"192.0.2.3"}), failed(LookupStatus::no_records)};
  addresses["backup.example.com"] = HostAddresses{found({"198.51.100.9"}), found({"2001:db8::9"})};
  const DeliveryPlan plan = plan_delivery(s, addresses, kPort);
  ASSERT_FALSE(plan.failure.has_value());
  EXPECT_FALSE(plan.implicit_mx);
  EXPECT_EQ(addresses_of(plan), (std::vector<std::string>{
                                    "mx-a.example.com=192.0.2.1:2525",
                                    "mx-a.example.com=192.0.2.2:2525",
                                    "mx-a.example.com=[2001:db8::1]:2525",
                                    "mx-b.example.com=192.0.2.3:2525",
                                    "backup.example.com=198.51.100.9:2525",
                                    "backup.example.com=[2001:db8::9]:2525",
                                }));
  EXPECT_EQ(plan.targets[0].preference, 10);
  EXPECT_EQ(plan.targets[5].preference, 20);
}

TEST(MxPlan, ImplicitMxIsTheDomainItself) {
  for (const MxLookup& mx : {MxLookup{LookupStatus::no_records, {}}, mx_set({})}) {
    const HostSelection s = select_mx_hosts(mx, "Example.ORG.", "relay.test", 7);
    ASSERT_FALSE(s.failure.has_value());
    EXPECT_TRUE(s.implicit_mx);
    EXPECT_EQ(hosts_of(s), (std::vector<std::string>{"example.org"}));
    absl::flat_hash_map<std::string, HostAddresses> addresses;
    addresses["example.org"] = HostAddresses{found({"203.0.113.5"}), found({})};
    const DeliveryPlan plan = plan_delivery(s, addresses, 25);
    EXPECT_TRUE(plan.implicit_mx);
    EXPECT_EQ(addresses_of(plan), (std::vector<std::string>{"example.org=203.0.113.5:25"}));
  }
  // The implicit MX without an address: nowhere to deliver, permanently.
  const HostSelection s = select_mx_hosts(MxLookup{LookupStatus::no_records, {}}, "example.org", "", 0);
  absl::flat_hash_map<std::string, HostAddresses> none;
  none["example.org"] = HostAddresses{failed(LookupStatus::no_records), failed(LookupStatus::no_records)};
  const DeliveryPlan plan = plan_delivery(s, none, 25);
  ASSERT_TRUE(plan.failure.has_value());
  EXPECT_EQ(*plan.failure, PlanFailure::no_mail_host);
  EXPECT_TRUE(plan.targets.empty());
}

TEST(MxPlan, NullMxFailsAtOncePermanently) {
  for (const MxLookup& mx : {mx_set({{0, "."}}), mx_set({{10, "."}}), mx_set({{0, "."}, {0, "."}})}) {
    const HostSelection s = select_mx_hosts(mx, "example.com", "relay.test", 0);
    ASSERT_TRUE(s.failure.has_value());
    EXPECT_EQ(*s.failure, PlanFailure::null_mx);
    EXPECT_TRUE(s.hosts.empty());
    const DeliveryPlan plan = plan_delivery(s, {}, kPort);  // nothing to look up
    EXPECT_EQ(plan.failure, PlanFailure::null_mx);
  }
  EXPECT_TRUE(plan_failure_permanent(PlanFailure::null_mx));
  EXPECT_EQ(plan_failure_status(PlanFailure::null_mx), "5.1.10");
  // A "." among real hosts is skipped.
  EXPECT_EQ(hosts_of(select_mx_hosts(mx_set({{0, "."}, {10, "mx.example.com"}}), "example.com", "", 0)),
            (std::vector<std::string>{"mx.example.com"}));
}

TEST(MxPlan, OwnHostnameCutsTheList) {
  const MxLookup mx =
      mx_set({{30, "c.example.com"}, {10, "a.example.com"}, {20, "relay.example.com"}, {20, "b.example.com"}});
  EXPECT_EQ(hosts_of(select_mx_hosts(mx, "example.com", "Relay.Example.COM.", 0)),
            (std::vector<std::string>{"a.example.com"}));
  EXPECT_EQ(hosts_of(select_mx_hosts(mx, "example.com", "other.example.com", 0)),
            (std::vector<std::string>{"a.example.com", "b.example.com", "relay.example.com", "c.example.com"}));
  // We are the best (or tie with the best): a routing loop, permanently.
  for (const MxLookup& looping : {mx_set({{10, "relay.example.com"}, {20, "b.example.com"}}),
                                  mx_set({{10, "a.example.com"}, {10, "relay.example.com"}})}) {
    const HostSelection s = select_mx_hosts(looping, "example.com", "relay.example.com", 0);
    ASSERT_TRUE(s.failure.has_value());
    EXPECT_EQ(*s.failure, PlanFailure::routing_loop);
  }
  EXPECT_EQ(plan_failure_status(PlanFailure::routing_loop), "5.4.6");
  EXPECT_TRUE(plan_failure_permanent(PlanFailure::routing_loop));
  // The implicit MX is ourselves.
  EXPECT_EQ(
      select_mx_hosts(MxLookup{LookupStatus::no_records, {}}, "relay.example.com", "relay.example.com", 0).failure,
      PlanFailure::routing_loop);
}

TEST(MxPlan, UnresolvableHostsAreSkipped) {
  const MxLookup mx = mx_set({{10, "gone.example.com"}, {20, "empty.example.com"}, {30, "ok.example.com"}});
  const HostSelection s = select_mx_hosts(mx, "example.com", "relay.test", 0);
  absl::flat_hash_map<std::string, HostAddresses> addresses;
  addresses["gone.example.com"] = HostAddresses{failed(LookupStatus::nxdomain), failed(LookupStatus::nxdomain)};
  addresses["empty.example.com"] = HostAddresses{failed(LookupStatus::no_records), failed(LookupStatus::no_records)};
  addresses["ok.example.com"] = HostAddresses{found({"192.0.2.30"}), failed(LookupStatus::temporary)};
  EXPECT_EQ(addresses_of(plan_delivery(s, addresses, kPort)),
            (std::vector<std::string>{"ok.example.com=192.0.2.30:2525"}));
  // None resolves: permanent 5.4.4; one of them failed temporarily: temporary 4.4.3.
  addresses["ok.example.com"] = HostAddresses{failed(LookupStatus::nxdomain), failed(LookupStatus::no_records)};
  DeliveryPlan plan = plan_delivery(s, addresses, kPort);
  EXPECT_EQ(plan.failure, PlanFailure::no_mail_host);
  EXPECT_EQ(plan_failure_status(PlanFailure::no_mail_host), "5.4.4");
  EXPECT_TRUE(plan_failure_permanent(PlanFailure::no_mail_host));
  addresses["ok.example.com"] = HostAddresses{failed(LookupStatus::temporary), failed(LookupStatus::no_records)};
  plan = plan_delivery(s, addresses, kPort);
  EXPECT_EQ(plan.failure, PlanFailure::dns_temporary);
  EXPECT_FALSE(plan_failure_permanent(PlanFailure::dns_temporary));
}

TEST(MxPlan, DomainLookupFailures) {
  const HostSelection nx = select_mx_hosts(MxLookup{LookupStatus::nxdomain, {}}, "nosuch.test", "relay.test", 0);
  EXPECT_EQ(nx.failure, PlanFailure::no_such_domain);
  EXPECT_EQ(plan_failure_status(PlanFailure::no_such_domain), "5.1.2");
  EXPECT_TRUE(plan_failure_permanent(PlanFailure::no_such_domain));
  const HostSelection later = select_mx_hosts(MxLookup{LookupStatus::temporary, {}}, "slow.test", "relay.test", 0);
  EXPECT_EQ(later.failure, PlanFailure::dns_temporary);
  EXPECT_EQ(plan_failure_status(PlanFailure::dns_temporary), "4.4.3");
  for (const PlanFailure f : {PlanFailure::null_mx, PlanFailure::no_such_domain, PlanFailure::routing_loop,
                              PlanFailure::no_mail_host, PlanFailure::dns_temporary}) {
    EXPECT_EQ(plan_failure_status(f)[0], plan_failure_permanent(f) ? '5' : '4');
    EXPECT_FALSE(plan_failure_text(f).empty());
  }
}

TEST(MxPlan, DuplicatesAndLimits) {
  // A host listed twice keeps its lowest preference; an address shared by two hosts is tried once.
  const HostSelection s = select_mx_hosts(mx_set({{20, "a.test"}, {10, "b.test"}, {5, "a.test"}}), "test", "", 0);
  EXPECT_EQ(hosts_of(s), (std::vector<std::string>{"a.test", "b.test"}));
  EXPECT_EQ(s.hosts[0].preference, 5);
  absl::flat_hash_map<std::string, HostAddresses> addresses;
  addresses["a.test"] = HostAddresses{found({"192.0.2.1"}), found({})};
  addresses["b.test"] = HostAddresses{found({"192.0.2.1", "192.0.2.2"}), found({})};
  EXPECT_EQ(addresses_of(plan_delivery(s, addresses, kPort)),
            (std::vector<std::string>{"a.test=192.0.2.1:2525", "b.test=192.0.2.2:2525"}));
  // Many hosts and addresses: the limits, the best ones kept.
  std::vector<MxHost> many;
  absl::flat_hash_map<std::string, HostAddresses> many_addresses;
  for (uint16_t i = 0; i < 100; ++i) {
    many.push_back({i, str_cat("h", 1000 + i, ".test")});
    many_addresses[str_cat("h", 1000 + i, ".test")] = HostAddresses{
        found({str_cat("10.0.", i, ".1"), str_cat("10.0.", i, ".2"), str_cat("10.0.", i, ".3")}), found({})};
  }
  const HostSelection big = select_mx_hosts(mx_set(many), "test", "", 0);
  ASSERT_EQ(big.hosts.size(), kMxHostsMax);
  EXPECT_EQ(big.hosts.front().host, "h1000.test");
  EXPECT_EQ(big.hosts.back().preference, kMxHostsMax - 1);
  const DeliveryPlan plan = plan_delivery(big, many_addresses, kPort);
  ASSERT_EQ(plan.targets.size(), kPlanAddressesMax);
  EXPECT_EQ(plan.targets.front().address.to_string(), "10.0.0.1:2525");
}

TEST(MxPlan, LookupsFromDnsMessages) {
  using testing::DnsWireWriter;
  // example.com is an alias of mail-domain.example.net, whose MX set has two hosts; mx1 is itself
  // an alias (tolerated).
  DnsWireWriter mx;
  mx.header(1, 0x8180, 1, 3, 0, 0);
  mx.question("example.com", DnsType::mx);
  mx.cname("example.com", 60, "mail-domain.example.net");
  mx.mx("mail-domain.example.net", 300, 10, "mx1.example.net");
  mx.mx("mail-domain.example.net", 300, 20, "mx2.example.net");
  const MxLookup lookup = mx_lookup_from(*parse_dns_message(mx.wire()), "EXAMPLE.com");
  ASSERT_EQ(lookup.status, LookupStatus::ok);
  EXPECT_EQ(lookup.hosts, (std::vector<MxHost>{{10, "mx1.example.net"}, {20, "mx2.example.net"}}));

  DnsWireWriter a1;
  a1.header(2, 0x8180, 1, 2, 0, 0);
  a1.question("mx1.example.net", DnsType::a);
  a1.cname("mx1.example.net", 60, "edge.example.org");
  a1.address("edge.example.org", 60, ip("192.0.2.11"));
  DnsWireWriter a2;
  a2.header(3, 0x8180 | 2, 1, 0, 0, 0);  // SERVFAIL
  a2.question("mx2.example.net", DnsType::a);
  const HostSelection s = select_mx_hosts(lookup, "example.com", "relay.test", 0);
  absl::flat_hash_map<std::string, HostAddresses> addresses;
  addresses["mx1.example.net"].a = address_lookup_from(*parse_dns_message(a1.wire()), "mx1.example.net");
  addresses["mx2.example.net"].a = address_lookup_from(*parse_dns_message(a2.wire()), "mx2.example.net");
  EXPECT_EQ(addresses["mx2.example.net"].a.status, LookupStatus::temporary);
  EXPECT_EQ(addresses_of(plan_delivery(s, addresses, kPort)),
            (std::vector<std::string>{"mx1.example.net=192.0.2.11:2525"}));
}

TEST(MxPlan, LookupStatusFromTheResponse) {
  const auto status_of = [](uint16_t flags, bool with_mx) {
    testing::DnsWireWriter w;
    w.header(1, flags, 1, with_mx ? 1 : 0, 0, 0);
    w.question("example.com", DnsType::mx);
    if (with_mx) {
      w.mx("example.com", 60, 10, "mx.example.com");
    }
    return mx_lookup_from(*parse_dns_message(w.wire()), "example.com").status;
  };
  EXPECT_EQ(status_of(0x8180, true), LookupStatus::ok);
  EXPECT_EQ(status_of(0x8180, false), LookupStatus::no_records);
  EXPECT_EQ(status_of(0x8183, false), LookupStatus::nxdomain);
  EXPECT_EQ(status_of(0x8182, false), LookupStatus::temporary);          // SERVFAIL
  EXPECT_EQ(status_of(0x8185, false), LookupStatus::temporary);          // REFUSED
  EXPECT_EQ(status_of(0x8181, false), LookupStatus::temporary);          // FORMERR
  EXPECT_EQ(status_of(0x8180 | 0x0200, true), LookupStatus::temporary);  // TC: ask again over TCP
  // MX records of another name do not count; a CNAME loop is temporary.
  DnsMessage other;
  other.header.response = true;
  other.mx = {{"example.net", 60, 10, "mx.example.net"}};
  EXPECT_EQ(mx_lookup_from(other, "example.com").status, LookupStatus::no_records);
  other.cnames = {{"example.com", 60, "loop.example.com"}, {"loop.example.com", 60, "example.com"}};
  EXPECT_EQ(mx_lookup_from(other, "example.com").status, LookupStatus::temporary);
}

RouteTable routes(std::vector<std::pair<std::string, std::string>> entries) {
  std::vector<Route> list;
  for (const auto& [domain, hop] : entries) {
    list.push_back(Route{domain, *io::parse_host_port(hop)});
  }
  absl::StatusOr<RouteTable> table = RouteTable::build(std::move(list));
  EXPECT_TRUE(table.ok()) << table.status();
  return table.ok() ? *std::move(table) : RouteTable();
}

std::string hop(const RouteTable& table, std::string_view domain) {
  const Route* route = table.find(domain);
  return route == nullptr ? "none" : route->next_hop.to_string();
}

TEST(MxPlan, MostSpecificRouteWins) {
  const RouteTable table = routes({{"*", "127.0.0.9:25"},
                                   {".example.com", "127.0.0.2:2526"},
                                   {"example.com", "127.0.0.3:2527"},
                                   {".sub.example.com", "127.0.0.4:2528"},
                                   {"host.sub.example.com", "[::1]:2529"}});
  EXPECT_EQ(hop(table, "example.com"), "127.0.0.3:2527");
  EXPECT_EQ(hop(table, "Example.COM."), "127.0.0.3:2527");
  EXPECT_EQ(hop(table, "a.example.com"), "127.0.0.2:2526");
  EXPECT_EQ(hop(table, "sub.example.com"), "127.0.0.2:2526");  // ".sub" is for its subdomains only
  EXPECT_EQ(hop(table, "deep.x.sub.example.com"), "127.0.0.4:2528");
  EXPECT_EQ(hop(table, "host.sub.example.com"), "[::1]:2529");
  EXPECT_EQ(hop(table, "example.org"), "127.0.0.9:25");
  EXPECT_EQ(hop(table, "notexample.com"), "127.0.0.9:25");
  const RouteTable no_wildcard = routes({{"example.com", "127.0.0.3:2527"}});
  EXPECT_EQ(hop(no_wildcard, "example.org"), "none");
  EXPECT_EQ(hop(no_wildcard, "a.example.com"), "none");
  EXPECT_EQ(hop(RouteTable(), "example.com"), "none");
  const DeliveryPlan plan = plan_route(*table.find("example.com"));
  EXPECT_FALSE(plan.failure.has_value());
  EXPECT_EQ(addresses_of(plan), (std::vector<std::string>{"127.0.0.3:2527=127.0.0.3:2527"}));
}

TEST(MxPlan, BadRoutesAreRefused) {
  const io::SocketAddress next = *io::parse_host_port("127.0.0.2:25");
  for (const std::string& bad : {std::string(""), std::string("."), std::string("*.example.com"), std::string("a..b"),
                                 std::string("..a"), std::string("a b")}) {
    EXPECT_FALSE(RouteTable::build({Route{bad, next}}).ok()) << bad;
  }
  EXPECT_FALSE(RouteTable::build({Route{"Example.com", next}, Route{"example.COM.", next}}).ok());
  EXPECT_FALSE(RouteTable::build({Route{"*", next}, Route{"*", next}}).ok());
  EXPECT_TRUE(RouteTable::build({Route{"example.com", next}, Route{".example.com", next}}).ok());
}

}  // namespace
}  // namespace sluice::resolver
