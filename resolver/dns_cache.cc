// The DNS cache: see dns_cache.h for what is cached, for how long, and what is evicted first.
#include "resolver/dns_cache.h"

#include <algorithm>

#include "engine/io/assert.h"

namespace sluice::resolver {
namespace {

void take_min(std::optional<uint32_t>& ttl, uint32_t candidate) {
  ttl = ttl ? std::min(*ttl, candidate) : candidate;
}

}  // namespace

InterpretedAnswer interpret_dns_response(const DnsMessage& response, std::string_view name, DnsType type) {
  InterpretedAnswer out;
  DnsAnswer& answer = out.answer;
  if (type == DnsType::mx) {
    MxLookup lookup = mx_lookup_from(response, name);
    answer.status = lookup.status;
    answer.mx = std::move(lookup.hosts);
  } else if (type == DnsType::a || type == DnsType::aaaa) {
    AddressLookup lookup = address_lookup_from(response, name);
    answer.status = lookup.status;
    // A hostile or broken server may put AAAA records in an A answer: only the type asked for.
    const int family = type == DnsType::a ? AF_INET : AF_INET6;
    for (const io::SocketAddress& address : lookup.addresses) {
      if (address.family() == family) {
        answer.addresses.push_back(address);
      }
    }
    if (answer.status == LookupStatus::ok && answer.addresses.empty()) {
      answer.status = LookupStatus::no_records;
    }
  } else {
    answer.status = LookupStatus::temporary;
  }
  if (answer.status == LookupStatus::temporary) {
    return out;
  }
  // mx_lookup_from and address_lookup_from found no loop for ok and no_records; an NXDOMAIN's
  // chain is not looked at by them, so it may fail here: then the name itself.
  absl::StatusOr<std::string> canonical = canonical_name(response, name);
  answer.canonical_name = canonical.ok() ? *std::move(canonical) : normalize_dns_name(name);

  // Every CNAME of the answer bounds the TTL: its link may change (taking them all, not only the
  // chain's, errs on the side of asking again sooner).
  std::optional<uint32_t> ttl;
  for (const CnameRecord& cname : response.cnames) {
    take_min(ttl, cname.ttl_s);
  }
  if (answer.status == LookupStatus::ok) {
    if (type == DnsType::mx) {
      for (const MxRecord& mx : response.mx) {
        if (mx.owner == answer.canonical_name) {
          take_min(ttl, mx.ttl_s);
        }
      }
    } else {
      const int family = type == DnsType::a ? AF_INET : AF_INET6;
      for (const AddressRecord& record : response.addresses) {
        if (record.owner == answer.canonical_name && record.address.family() == family) {
          take_min(ttl, record.ttl_s);
        }
      }
    }
    out.ttl_s = ttl;
  } else if (response.soa) {
    take_min(ttl, response.soa->negative_ttl_s());  // RFC 2308 section 5
    out.ttl_s = ttl;
  }
  // A negative answer without SOA: the cache's default (a CNAME's TTL is then not applied).
  return out;
}

DnsCache::DnsCache(const DnsCacheOptions& options) : _options(options) {
  SLUICE_ASSERT(options.cache_entries_max >= 1, "a cache holds at least one entry");
  SLUICE_ASSERT(options.ttl_floor_ms <= options.ttl_ceiling_ms, "the TTL floor is not above the ceiling");
}

uint64_t DnsCache::clamped_ttl_ms(LookupStatus status, std::optional<uint32_t> ttl_s) const {
  uint64_t ms = _options.ttl_floor_ms;
  if (ttl_s) {
    ms = uint64_t{*ttl_s} * 1000;
  } else if (status != LookupStatus::ok) {
    ms = _options.negative_ttl_ms_default;
  }
  return std::clamp(ms, _options.ttl_floor_ms, _options.ttl_ceiling_ms);
}

DnsCache::Lookup DnsCache::lookup(std::string_view name, DnsType type, uint64_t waiter, uint64_t now_ms) {
  Key key{normalize_dns_name(name), type};
  if (const auto it = _entries.find(key); it != _entries.end()) {
    if (it->second.expires_ms > now_ms) {
      _lru.splice(_lru.begin(), _lru, it->second.lru);
      return Lookup{Found::hit, it->second.answer};
    }
    erase(it);
  }
  auto [flight, first] = _in_flight.try_emplace(std::move(key));
  flight->second.push_back(waiter);
  return Lookup{first ? Found::query : Found::wait, {}};
}

std::vector<uint64_t> DnsCache::complete(std::string_view name, DnsType type, const DnsAnswer& answer,
                                         std::optional<uint32_t> ttl_s, uint64_t now_ms) {
  Key key{normalize_dns_name(name), type};
  std::vector<uint64_t> waiters;
  if (const auto it = _in_flight.find(key); it != _in_flight.end()) {
    waiters = std::move(it->second);
    _in_flight.erase(it);
  }
  if (answer.status == LookupStatus::temporary) {
    return waiters;
  }
  if (const auto it = _entries.find(key); it != _entries.end()) {
    erase(it);  // an answer that came back while an older one was cached replaces it
  }
  while (_entries.size() >= _options.cache_entries_max) {
    make_room(now_ms);
  }
  const uint64_t expires_ms = now_ms + clamped_ttl_ms(answer.status, ttl_s);
  _lru.push_front(key);
  Entry entry{answer, expires_ms, _lru.begin(), _expiry.emplace(expires_ms, &_lru.front()).first};
  _entries.emplace(std::move(key), std::move(entry));
  SLUICE_DEBUG_ASSERT(_entries.size() == _lru.size() && _entries.size() == _expiry.size());
  return waiters;
}

void DnsCache::erase(absl::flat_hash_map<Key, Entry>::iterator it) {
  _expiry.erase(it->second.expiry);
  _lru.erase(it->second.lru);
  _entries.erase(it);
}

void DnsCache::make_room(uint64_t now_ms) {
  SLUICE_ASSERT(!_lru.empty(), "room is made only in a full cache");
  const Key* victim = &_lru.back();
  if (_expiry.begin()->first <= now_ms) {
    victim = _expiry.begin()->second;  // expired: useless already, whatever its use
  }
  const auto it = _entries.find(*victim);
  SLUICE_ASSERT(it != _entries.end(), "every LRU node has its entry");
  erase(it);
  ++_evictions;
}

}  // namespace sluice::resolver
