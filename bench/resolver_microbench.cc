// Microbenchmarks of the resolver's per-message work (issue 9 section 4): a DNS cache hit (every
// message to a known domain asks the cache for its MX and then each host's A), and the MX
// ordering: select_mx_hosts (preference order, rotation among equals, own-hostname cut) and
// plan_delivery (the addresses to try, in order), for a domain with a provider-like MX set.
// Each checks its answer once before timing.
#include <arpa/inet.h>
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/io/address.h"
#include "resolver/dns_cache.h"
#include "resolver/mx_plan.h"

namespace {

namespace io = sluice::io;
namespace resolver = sluice::resolver;

io::SocketAddress ipv4(const char* text) {
  in_addr address{};
  ::inet_pton(AF_INET, text, &address);
  return io::SocketAddress::ipv4(address, 0);
}

// Four MX hosts at preference 10, two at 20, one at 30, answered out of order, as large
// providers publish them; two addresses each.
resolver::MxLookup provider_mx() {
  resolver::MxLookup mx;
  mx.status = resolver::LookupStatus::ok;
  mx.hosts = {{20, "alt1.mx.example.org"}, {10, "mx3.example.org"}, {10, "mx1.example.org"},
              {30, "backup.example.net"},  {10, "mx4.example.org"}, {20, "alt2.mx.example.org"},
              {10, "mx2.example.org"}};
  return mx;
}

absl::flat_hash_map<std::string, resolver::HostAddresses> provider_addresses(const resolver::MxLookup& mx) {
  absl::flat_hash_map<std::string, resolver::HostAddresses> addresses;
  int n = 1;
  for (const resolver::MxHost& host : mx.hosts) {
    resolver::HostAddresses& entry = addresses[host.host];
    entry.a.status = resolver::LookupStatus::ok;
    for (int i = 0; i < 2; ++i, ++n) {
      entry.a.addresses.push_back(ipv4(("192.0.2." + std::to_string(n)).c_str()));
    }
  }
  return addresses;
}

void BM_MxOrdering(benchmark::State& state) {
  const resolver::MxLookup mx = provider_mx();
  const auto addresses = provider_addresses(mx);
  {
    const resolver::DeliveryPlan plan =
        resolver::plan_delivery(resolver::select_mx_hosts(mx, "example.org", "relay.example.test", 1), addresses, 25);
    // Every address of every host, preference 10 first, 30 last.
    if (plan.failure || plan.targets.size() != 14 || plan.targets.front().preference != 10 ||
        plan.targets.back().preference != 30) {
      state.SkipWithError("the plan is not the 14 addresses in preference order");
      return;
    }
  }
  uint64_t rotation = 0;
  for (auto _ : state) {
    const resolver::HostSelection selection =
        resolver::select_mx_hosts(mx, "example.org", "relay.example.test", rotation++);
    resolver::DeliveryPlan plan = resolver::plan_delivery(selection, addresses, 25);
    benchmark::DoNotOptimize(plan.targets.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));  // plans
}
BENCHMARK(BM_MxOrdering);

// `domains` destinations cached (MX plus A of one host each); each iteration looks up one
// domain's MX and its host's A, cycling through them, as deliveries to a spread of domains do.
void BM_DnsCacheHit(benchmark::State& state) {
  const size_t domains = static_cast<size_t>(state.range(0));
  resolver::DnsCacheOptions options;
  options.cache_entries_max = 2 * domains;
  resolver::DnsCache cache(options);
  std::vector<std::string> names;
  std::vector<std::string> hosts;
  constexpr uint64_t kNowMs = 1'000'000;
  for (size_t i = 0; i < domains; ++i) {
    names.push_back("domain" + std::to_string(i) + ".example");
    hosts.push_back("mx.domain" + std::to_string(i) + ".example");
    resolver::DnsAnswer mx;
    mx.status = resolver::LookupStatus::ok;
    mx.canonical_name = names.back();
    mx.mx = {{10, hosts.back()}};
    cache.complete(names.back(), resolver::DnsType::mx, mx, 3600, kNowMs);
    resolver::DnsAnswer a;
    a.status = resolver::LookupStatus::ok;
    a.canonical_name = hosts.back();
    a.addresses = {ipv4("192.0.2.1")};
    cache.complete(hosts.back(), resolver::DnsType::a, a, 3600, kNowMs);
  }
  for (size_t i = 0; i < domains; ++i) {
    if (cache.lookup(names[i], resolver::DnsType::mx, 0, kNowMs).found != resolver::DnsCache::Found::hit ||
        cache.lookup(hosts[i], resolver::DnsType::a, 0, kNowMs).found != resolver::DnsCache::Found::hit) {
      state.SkipWithError("a cached answer was not a hit");
      return;
    }
  }
  size_t next = 0;
  size_t hits = 0;
  for (auto _ : state) {
    auto mx = cache.lookup(names[next], resolver::DnsType::mx, 0, kNowMs);
    auto a = cache.lookup(hosts[next], resolver::DnsType::a, 0, kNowMs);
    hits += (mx.found == resolver::DnsCache::Found::hit) + (a.found == resolver::DnsCache::Found::hit);
    next = next + 1 == domains ? 0 : next + 1;
  }
  if (hits != 2 * static_cast<size_t>(state.iterations())) {
    state.SkipWithError("a lookup missed the cache");
  }
  state.SetItemsProcessed(static_cast<int64_t>(2 * state.iterations()));  // lookups
}
BENCHMARK(BM_DnsCacheHit)->Arg(10)->Arg(10000);

}  // namespace
