// Tests for the DNS cache: TTLs from answers (the smallest of the chain, RFC 2308 negative TTLs
// from the SOA, the default without one), the floor and the ceiling, temporary failures never
// cached, names compared without case or trailing dot, the entry bound (expired first, then the
// least recently used), and lookups in flight merged: one query, every waiter answered in order.
#include "resolver/dns_cache.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "resolver/dns_testing.h"

namespace sluice::resolver {
namespace {

using testing::ip;

constexpr uint64_t kStart = 1'000'000;

DnsCacheOptions options(size_t entries_max = 100) {
  DnsCacheOptions o;
  o.ttl_floor_ms = 5'000;
  o.ttl_ceiling_ms = 3'600'000;
  o.negative_ttl_ms_default = 30'000;
  o.cache_entries_max = entries_max;
  return o;
}

DnsAnswer mx_answer(std::string host) {
  return DnsAnswer{LookupStatus::ok, "example.test", {MxHost{10, std::move(host)}}, {}};
}

DnsAnswer negative(LookupStatus status) {
  return DnsAnswer{status, "example.test", {}, {}};
}

DnsMessage response(Rcode rcode) {
  DnsMessage message;
  message.header.response = true;
  message.header.rcode = rcode;
  message.question = DnsQuestion{"example.test", DnsType::mx, kDnsClassIn};
  return message;
}

SoaRecord soa(uint32_t ttl_s, uint32_t minimum_s) {
  return SoaRecord{"test", ttl_s, "ns.test", "hostmaster.test", 1, 3600, 600, 86400, minimum_s};
}

// Stores `answer` for (name, MX) with `ttl_s` and checks that it is a hit until, and only until,
// `expected_ms` later (the hit first: a hit changes only the LRU order, a miss drops the entry).
void expect_lifetime(DnsCache& cache, const std::string& name, const DnsAnswer& answer, std::optional<uint32_t> ttl_s,
                     uint64_t expected_ms) {
  EXPECT_EQ(cache.lookup(name, DnsType::mx, 1, kStart).found, DnsCache::Found::query);
  cache.complete(name, DnsType::mx, answer, ttl_s, kStart);
  EXPECT_EQ(cache.lookup(name, DnsType::mx, 2, kStart + expected_ms - 1).found, DnsCache::Found::hit) << name;
  EXPECT_EQ(cache.lookup(name, DnsType::mx, 3, kStart + expected_ms).found, DnsCache::Found::query) << name;
}

TEST(DnsCache, PositiveTtlIsClampedToTheFloorAndTheCeiling) {
  DnsCache cache(options());
  expect_lifetime(cache, "a.test", mx_answer("mx.a.test"), 0, 5'000);
  expect_lifetime(cache, "b.test", mx_answer("mx.b.test"), 1, 5'000);
  expect_lifetime(cache, "c.test", mx_answer("mx.c.test"), 300, 300'000);
  expect_lifetime(cache, "d.test", mx_answer("mx.d.test"), 86'400, 3'600'000);
  expect_lifetime(cache, "e.test", mx_answer("mx.e.test"), 0xffffffffu, 3'600'000);
}

TEST(DnsCache, NegativeTtlComesFromTheSoaOrTheDefault) {
  DnsCache cache(options());
  expect_lifetime(cache, "a.test", negative(LookupStatus::nxdomain), 600, 600'000);
  expect_lifetime(cache, "b.test", negative(LookupStatus::no_records), 2, 5'000);
  expect_lifetime(cache, "c.test", negative(LookupStatus::nxdomain), std::nullopt, 30'000);
  expect_lifetime(cache, "d.test", negative(LookupStatus::no_records), 7 * 86'400, 3'600'000);
}

TEST(DnsCache, TemporaryFailuresAreNotCached) {
  DnsCache cache(options());
  ASSERT_EQ(cache.lookup("a.test", DnsType::mx, 1, kStart).found, DnsCache::Found::query);
  EXPECT_EQ(cache.complete("a.test", DnsType::mx, negative(LookupStatus::temporary), 300, kStart),
            std::vector<uint64_t>{1});
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.lookup("a.test", DnsType::mx, 2, kStart + 1).found, DnsCache::Found::query);
}

TEST(DnsCache, NamesCompareWithoutCaseOrTrailingDotAndTypesApart) {
  DnsCache cache(options());
  ASSERT_EQ(cache.lookup("Example.TEST.", DnsType::mx, 1, kStart).found, DnsCache::Found::query);
  cache.complete("example.test", DnsType::mx, mx_answer("mx.example.test"), 300, kStart);
  const DnsCache::Lookup hit = cache.lookup("EXAMPLE.test", DnsType::mx, 2, kStart + 1);
  EXPECT_EQ(hit.found, DnsCache::Found::hit);
  EXPECT_EQ(hit.answer, mx_answer("mx.example.test"));
  EXPECT_EQ(cache.lookup("example.test", DnsType::a, 3, kStart + 1).found, DnsCache::Found::query);
}

TEST(DnsCache, LookupsInFlightAreMergedAndEveryWaiterGetsTheAnswer) {
  DnsCache cache(options());
  EXPECT_EQ(cache.lookup("a.test", DnsType::mx, 7, kStart).found, DnsCache::Found::query);
  EXPECT_EQ(cache.lookup("A.test", DnsType::mx, 3, kStart).found, DnsCache::Found::wait);
  EXPECT_EQ(cache.lookup("a.test.", DnsType::mx, 9, kStart).found, DnsCache::Found::wait);
  EXPECT_EQ(cache.lookup("a.test", DnsType::aaaa, 4, kStart).found, DnsCache::Found::query);
  EXPECT_EQ(cache.keys_in_flight(), 2u);
  EXPECT_EQ(cache.complete("a.test", DnsType::mx, mx_answer("mx.a.test"), 300, kStart),
            (std::vector<uint64_t>{7, 3, 9}));
  EXPECT_EQ(cache.keys_in_flight(), 1u);
  EXPECT_EQ(cache.lookup("a.test", DnsType::mx, 5, kStart).found, DnsCache::Found::hit);
  // A failure answers its waiters too, and the next lookup asks again.
  EXPECT_EQ(cache.lookup("a.test", DnsType::aaaa, 6, kStart).found, DnsCache::Found::wait);
  EXPECT_EQ(cache.complete("a.test", DnsType::aaaa, negative(LookupStatus::temporary), std::nullopt, kStart),
            (std::vector<uint64_t>{4, 6}));
  EXPECT_EQ(cache.lookup("a.test", DnsType::aaaa, 8, kStart).found, DnsCache::Found::query);
}

TEST(DnsCache, TheEntryBoundEvictsTheLeastRecentlyUsed) {
  DnsCache cache(options(3));
  for (const char* name : {"a.test", "b.test", "c.test"}) {
    cache.lookup(name, DnsType::mx, 1, kStart);
    cache.complete(name, DnsType::mx, mx_answer("mx"), 300, kStart);
  }
  ASSERT_EQ(cache.lookup("a.test", DnsType::mx, 1, kStart + 1).found, DnsCache::Found::hit);  // b is now the oldest
  cache.lookup("d.test", DnsType::mx, 1, kStart + 2);
  cache.complete("d.test", DnsType::mx, mx_answer("mx"), 300, kStart + 2);
  EXPECT_EQ(cache.entries(), 3u);
  EXPECT_EQ(cache.evictions(), 1u);
  EXPECT_EQ(cache.lookup("a.test", DnsType::mx, 1, kStart + 3).found, DnsCache::Found::hit);
  EXPECT_EQ(cache.lookup("c.test", DnsType::mx, 1, kStart + 3).found, DnsCache::Found::hit);
  EXPECT_EQ(cache.lookup("d.test", DnsType::mx, 1, kStart + 3).found, DnsCache::Found::hit);
  EXPECT_EQ(cache.lookup("b.test", DnsType::mx, 1, kStart + 3).found, DnsCache::Found::query);
}

TEST(DnsCache, TheEntryBoundEvictsAnExpiredEntryFirst) {
  DnsCache cache(options(3));
  cache.lookup("short.test", DnsType::mx, 1, kStart);
  cache.complete("short.test", DnsType::mx, mx_answer("mx"), 10, kStart);  // expires at kStart + 10 s
  for (const char* name : {"b.test", "c.test"}) {
    cache.lookup(name, DnsType::mx, 1, kStart);
    cache.complete(name, DnsType::mx, mx_answer("mx"), 300, kStart);
  }
  // short.test is the most recently used, and expired by the time d.test comes.
  ASSERT_EQ(cache.lookup("short.test", DnsType::mx, 1, kStart + 9'000).found, DnsCache::Found::hit);
  cache.lookup("d.test", DnsType::mx, 1, kStart + 20'000);
  cache.complete("d.test", DnsType::mx, mx_answer("mx"), 300, kStart + 20'000);
  EXPECT_EQ(cache.entries(), 3u);
  EXPECT_EQ(cache.lookup("b.test", DnsType::mx, 1, kStart + 20'001).found, DnsCache::Found::hit);
  EXPECT_EQ(cache.lookup("c.test", DnsType::mx, 1, kStart + 20'001).found, DnsCache::Found::hit);
  EXPECT_EQ(cache.lookup("d.test", DnsType::mx, 1, kStart + 20'001).found, DnsCache::Found::hit);
}

TEST(DnsCache, ManyInsertionsStayWithinTheBound) {
  DnsCache cache(options(50));
  for (int i = 0; i < 1000; ++i) {
    const std::string name = "host" + std::to_string(i) + ".test";
    cache.lookup(name, DnsType::a, 1, kStart + i);
    cache.complete(name, DnsType::a, DnsAnswer{LookupStatus::ok, name, {}, {ip("192.0.2.1")}}, (i % 7) * 3,
                   kStart + i * 1000);
    ASSERT_LE(cache.entries(), 50u);
  }
  EXPECT_EQ(cache.entries(), 50u);
}

TEST(DnsCache, AnswerReplacesTheOneCachedBefore) {
  DnsCache cache(options());
  cache.complete("a.test", DnsType::mx, mx_answer("old"), 300, kStart);
  cache.complete("a.test", DnsType::mx, mx_answer("new"), 300, kStart + 1);
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.lookup("a.test", DnsType::mx, 1, kStart + 2).answer, mx_answer("new"));
}

TEST(InterpretDnsResponse, PositiveTtlIsTheSmallestOfTheChainAndTheRecords) {
  DnsMessage message = response(Rcode::no_error);
  message.question->name = "alias.test";
  message.cnames = {CnameRecord{"alias.test", 120, "example.test"}};
  message.mx = {MxRecord{"example.test", 600, 10, "mx1.example.test"},
                MxRecord{"example.test", 300, 20, "mx2.example.test"}};
  InterpretedAnswer got = interpret_dns_response(message, "Alias.Test.", DnsType::mx);
  EXPECT_EQ(got.answer.status, LookupStatus::ok);
  EXPECT_EQ(got.answer.canonical_name, "example.test");
  EXPECT_EQ(got.answer.mx, (std::vector<MxHost>{{10, "mx1.example.test"}, {20, "mx2.example.test"}}));
  EXPECT_EQ(got.ttl_s, 120u);
  message.cnames[0].ttl_s = 3600;
  EXPECT_EQ(interpret_dns_response(message, "alias.test", DnsType::mx).ttl_s, 300u);
}

TEST(InterpretDnsResponse, NegativeTtlIsTheSoaMinimumOrItsTtl) {
  DnsMessage nx = response(Rcode::name_error);
  nx.soa = soa(3600, 900);
  InterpretedAnswer got = interpret_dns_response(nx, "example.test", DnsType::mx);
  EXPECT_EQ(got.answer.status, LookupStatus::nxdomain);
  EXPECT_EQ(got.ttl_s, 900u);
  nx.soa = soa(60, 900);
  EXPECT_EQ(interpret_dns_response(nx, "example.test", DnsType::mx).ttl_s, 60u);
  DnsMessage nodata = response(Rcode::no_error);
  nodata.soa = soa(3600, 120);
  got = interpret_dns_response(nodata, "example.test", DnsType::mx);
  EXPECT_EQ(got.answer.status, LookupStatus::no_records);
  EXPECT_EQ(got.ttl_s, 120u);
  nodata.soa.reset();
  got = interpret_dns_response(nodata, "example.test", DnsType::mx);
  EXPECT_EQ(got.answer.status, LookupStatus::no_records);
  EXPECT_EQ(got.ttl_s, std::nullopt);
}

TEST(InterpretDnsResponse, FailuresHaveNoTtl) {
  for (const Rcode rcode : {Rcode::server_failure, Rcode::refused, Rcode::not_implemented}) {
    DnsMessage message = response(rcode);
    message.soa = soa(3600, 300);
    const InterpretedAnswer got = interpret_dns_response(message, "example.test", DnsType::mx);
    EXPECT_EQ(got.answer.status, LookupStatus::temporary);
    EXPECT_EQ(got.ttl_s, std::nullopt);
  }
  DnsMessage truncated = response(Rcode::no_error);
  truncated.header.truncated = true;
  EXPECT_EQ(interpret_dns_response(truncated, "example.test", DnsType::mx).answer.status, LookupStatus::temporary);
}

TEST(InterpretDnsResponse, AddressesOfTheTypeAskedForOnly) {
  DnsMessage message = response(Rcode::no_error);
  message.question = DnsQuestion{"host.test", DnsType::a, kDnsClassIn};
  message.addresses = {AddressRecord{"host.test", 50, ip("192.0.2.1")},
                       AddressRecord{"host.test", 10, ip("2001:db8::1")}};
  InterpretedAnswer got = interpret_dns_response(message, "host.test", DnsType::a);
  EXPECT_EQ(got.answer.status, LookupStatus::ok);
  EXPECT_EQ(got.answer.addresses, std::vector<io::SocketAddress>{ip("192.0.2.1")});
  EXPECT_EQ(got.ttl_s, 50u);
  message.addresses.erase(message.addresses.begin());
  got = interpret_dns_response(message, "host.test", DnsType::a);
  EXPECT_EQ(got.answer.status, LookupStatus::no_records);  // only an AAAA in an A answer
}

}  // namespace
}  // namespace sluice::resolver
