#pragma once
// The per-shard DNS cache (DESIGN.md section 2, "Resolver"): what one lookup of (name, type)
// said, kept for its TTL, and the lookups in flight, so that a name asked for while its query is
// out waits for that query instead of sending a second one. Pure: no sockets, no clock of its own
// (every call takes now_ms, monotonic), no randomness. The Resolver (resolver.h) owns one.
//
// Decisions:
// * Keyed by (name, type), the name compared without regard to case or a trailing dot. The key
//   is the name asked for, not its canonical name: an alias's answer carries the CNAME chain's
//   TTLs (answer_ttl_s), so it expires when the first link of the chain does.
// * Positive TTL: the smallest TTL of the answer section's records (the CNAME chain and the
//   records of the type asked for). Negative answers (NXDOMAIN, NODATA): RFC 2308 section 5,
//   min(SOA TTL, SOA MINIMUM), also no longer than a CNAME in the answer; without an SOA,
//   negative_ttl_ms_default. Both are clamped to [ttl_floor_ms, ttl_ceiling_ms]: the floor keeps
//   a TTL of 0 or 1 s from making every message a query; the ceiling bounds how long a changed
//   MX set goes unseen.
// * Temporary failures (SERVFAIL, REFUSED, timeouts, truncated or malformed answers) are not
//   cached. RFC 2308 section 7 allows up to 5 minutes, but every delivery that sees one is
//   deferred and retried with backoff (engine/relay/retry_schedule.h), a burst of lookups of one
//   name while it fails is one query (the waiters), and a cached failure would hold back the
//   deliveries due after the server recovered.
// * At most entries_max answers. To make room, an expired entry goes first (the one that expired
//   earliest), else the least recently used. Lookups in flight are not entries: they are bounded
//   by the Resolver's request limit.
// * Waiters are the caller's numbers; the cache only gives them back, in the order they came.
#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/io/address.h"
#include "resolver/dns_message.h"
#include "resolver/mx_plan.h"

namespace sluice::resolver {

// What a lookup of one (name, type) said, as the MX plan wants it.
struct DnsAnswer {
  LookupStatus status = LookupStatus::temporary;
  // The name the answer is for after CNAMEs (RFC 5321 section 5.1: an alias domain is processed
  // as its canonical name); empty when status is temporary.
  std::string canonical_name;
  std::vector<MxHost> mx;                    // type MX, status ok
  std::vector<io::SocketAddress> addresses;  // type A (IPv4 only) or AAAA (IPv6 only), status ok
  friend bool operator==(const DnsAnswer&, const DnsAnswer&) = default;
};

// The answer to a query of (name, type) in `response`, and its TTL before clamping: nullopt for a
// negative answer without SOA (the cache uses its default) and for a temporary failure (never
// cached). Types other than MX, A and AAAA give a temporary failure.
struct InterpretedAnswer {
  DnsAnswer answer;
  std::optional<uint32_t> ttl_s;
};
InterpretedAnswer interpret_dns_response(const DnsMessage& response, std::string_view name, DnsType type);

struct DnsCacheOptions {
  uint64_t ttl_floor_ms = 5'000;
  uint64_t ttl_ceiling_ms = 3'600'000;
  uint64_t negative_ttl_ms_default = 30'000;  // NXDOMAIN or NODATA without an SOA
  size_t cache_entries_max = 10'000;          // at least 1
};

class DnsCache {
 public:
  explicit DnsCache(const DnsCacheOptions& options);
  // Its index holds iterators into its own lists.
  DnsCache(const DnsCache&) = delete;
  DnsCache& operator=(const DnsCache&) = delete;

  enum class Found : uint8_t {
    hit,    // `answer` holds the cached answer
    wait,   // a query of this key is in flight: `waiter` gets its answer from complete()
    query,  // nothing cached or in flight: the caller sends the query and calls complete()
  };
  struct Lookup {
    Found found = Found::query;
    DnsAnswer answer;  // with hit
  };
  // A hit refreshes the entry's place in the LRU order; an expired entry is dropped and counts as
  // nothing cached. With wait and query, `waiter` is added to the key's waiters.
  Lookup lookup(std::string_view name, DnsType type, uint64_t waiter, uint64_t now_ms);

  // The query of (name, type) ended with `answer`: stored unless temporary, with the TTL
  // `ttl_s` clamped (see the decisions above); returns the key's waiters, in the order they came,
  // and forgets them. A key without waiters returns none (and still caches the answer).
  std::vector<uint64_t> complete(std::string_view name, DnsType type, const DnsAnswer& answer,
                                 std::optional<uint32_t> ttl_s, uint64_t now_ms);

  // The TTL an answer gets, ms: `ttl_s` (or the negative default) clamped to the floor and ceiling.
  uint64_t clamped_ttl_ms(LookupStatus status, std::optional<uint32_t> ttl_s) const;

  size_t entries() const { return _entries.size(); }
  size_t keys_in_flight() const { return _in_flight.size(); }
  uint64_t evictions() const { return _evictions; }

 private:
  struct Key {
    std::string name;  // normalize_dns_name
    DnsType type = DnsType::a;
    friend bool operator==(const Key&, const Key&) = default;
    template <typename H>
    friend H AbslHashValue(H state, const Key& key) {
      return H::combine(std::move(state), key.name, static_cast<uint16_t>(key.type));
    }
  };
  using LruList = std::list<Key>;  // most recently used first; its nodes do not move
  // (expires_ms, the key in its LRU node), earliest first.
  struct ByExpiry {
    bool operator()(const std::pair<uint64_t, const Key*>& x, const std::pair<uint64_t, const Key*>& y) const {
      return x.first != y.first ? x.first < y.first : std::less<const Key*>()(x.second, y.second);
    }
  };
  using ExpirySet = std::set<std::pair<uint64_t, const Key*>, ByExpiry>;
  struct Entry {
    DnsAnswer answer;
    uint64_t expires_ms = 0;
    LruList::iterator lru;
    ExpirySet::iterator expiry;
  };

  void erase(absl::flat_hash_map<Key, Entry>::iterator it);
  void make_room(uint64_t now_ms);

  DnsCacheOptions _options;
  absl::flat_hash_map<Key, Entry> _entries;
  LruList _lru;
  ExpirySet _expiry;
  absl::flat_hash_map<Key, std::vector<uint64_t>> _in_flight;  // key -> its waiters
  uint64_t _evictions = 0;
};

}  // namespace sluice::resolver
