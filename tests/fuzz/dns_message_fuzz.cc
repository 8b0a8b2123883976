// Fuzz target for the DNS message parser. Properties, not only "no crash":
// 1. Any input parses to an error or to a message whose names all encode again, whose record
//    lists fit the header's counts, and which is incomplete only with TC set; parsing it twice
//    gives the same result.
// 2. A message that parsed complete, written back with the test encoder (compressed or not, by
//    the first octet), parses to the same message.
// 3. From the input (as a recipe), a response is built with the encoder: it parses to exactly the
//    records it was built from; with TC set, every cut of it parses, to a prefix of those records;
//    without TC, every cut is an error. Then it is mutated at places taken from the input (bit
//    flips, octets from the input, a cut) and property 1 and 2 hold for the result, so unguided
//    random input reaches deep into real-shaped messages (compression pointers included).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "engine/io/strings.h"
#include "resolver/dns_message.h"
#include "resolver/dns_testing.h"

namespace {

using namespace sluice::resolver;

void require(bool ok) {
  if (!ok) {
    __builtin_trap();
  }
}

uint16_t wire_u16(std::string_view wire, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(wire[at]) << 8 | static_cast<uint8_t>(wire[at + 1]));
}

bool encodes(const std::string& name) {
  return encode_dns_name(name).ok();
}

template <typename T>
bool is_prefix(const std::vector<T>& part, const std::vector<T>& whole) {
  if (part.size() > whole.size()) {
    return false;
  }
  for (size_t i = 0; i < part.size(); ++i) {
    if (!(part[i] == whole[i])) {
      return false;
    }
  }
  return true;
}

// Properties 1 and 2.
void check_any(std::string_view wire, bool compress) {
  const absl::StatusOr<DnsMessage> parsed = parse_dns_message(wire);
  const absl::StatusOr<DnsMessage> again = parse_dns_message(wire);
  require(parsed.ok() == again.ok());
  if (!parsed.ok()) {
    require(!parsed.status().message().empty());
    return;
  }
  const DnsMessage& m = *parsed;
  require(m == *again);
  require(wire.size() >= kDnsHeaderOctets);
  require(m.complete || m.header.truncated);
  require(m.mx.size() + m.addresses.size() + m.cnames.size() <= wire_u16(wire, 6));
  require(!m.soa || wire_u16(wire, 8) >= 1);
  require(m.question.has_value() == (wire_u16(wire, 4) == 1) || !m.complete);
  if (m.question) {
    require(encodes(m.question->name));
  }
  for (const MxRecord& r : m.mx) {
    require(encodes(r.owner) && encodes(r.exchange));
  }
  for (const AddressRecord& r : m.addresses) {
    require(encodes(r.owner));
    require(r.address.family() == AF_INET || r.address.family() == AF_INET6);
  }
  for (const CnameRecord& r : m.cnames) {
    require(encodes(r.owner) && encodes(r.target));
  }
  if (m.soa) {
    require(encodes(m.soa->owner) && encodes(m.soa->mname) && encodes(m.soa->rname));
    require(m.soa->negative_ttl_s() <= m.soa->ttl_s && m.soa->negative_ttl_s() <= m.soa->minimum_s);
  }
  if (m.complete) {
    const std::string written = testing::encode_dns_response(m, compress);
    if (written.size() <= kDnsMessageOctetsMax) {
      const absl::StatusOr<DnsMessage> back = parse_dns_message(written);
      require(back.ok() && *back == m);
    }
  }
}

// Reads the recipe; past its end, zeros.
class Recipe {
 public:
  Recipe(const uint8_t* data, size_t size) : _data(data), _size(size) {}
  uint8_t next() { return _at < _size ? _data[_at++] : 0; }
  uint16_t next16() { return static_cast<uint16_t>(next() << 8 | next()); }
  uint32_t next32() { return uint32_t{next16()} << 16 | next16(); }

 private:
  const uint8_t* _data;
  size_t _size;
  size_t _at = 0;
};

// Names from a few labels, so that compression finds shared suffixes; in the parser's form.
std::string make_name(Recipe& r) {
  static const std::string kLabels[] = {"mx",
                                        "mail",
                                        "example",
                                        "com",
                                        "net",
                                        "a",
                                        "b-c",
                                        "www",
                                        "alt1",
                                        "l",
                                        "x\\046y",
                                        "\\032sp",
                                        "xn--bcher-kva",
                                        std::string(63, 'q'),
                                        "\\000",
                                        "_tcp"};
  const uint8_t shape = r.next();
  if (shape == 0) {
    return ".";
  }
  std::string name;
  for (size_t i = 0; i <= shape % 5u; ++i) {
    std::string candidate = name.empty() ? kLabels[r.next() % std::size(kLabels)]
                                         : sluice::str_cat(kLabels[r.next() % std::size(kLabels)], ".", name);
    if (!encodes(candidate)) {
      break;
    }
    name = std::move(candidate);
  }
  return name;
}

sluice::io::SocketAddress make_address(Recipe& r) {
  if ((r.next() & 1) == 0) {
    in_addr a;
    const uint32_t value = r.next32();
    std::memcpy(&a, &value, 4);
    return sluice::io::SocketAddress::ipv4(a, 0);
  }
  in6_addr a;
  for (uint8_t& octet : a.s6_addr) {
    octet = r.next();
  }
  return sluice::io::SocketAddress::ipv6(a, 0);
}

DnsMessage make_message(Recipe& r) {
  DnsMessage m;
  const uint8_t flags = r.next();
  m.header = DnsHeader{r.next16(),
                       true,
                       static_cast<uint8_t>(flags >> 4 & 3),
                       (flags & 1) != 0,
                       (flags & 2) != 0,
                       true,
                       (flags & 4) != 0,
                       static_cast<Rcode>(r.next() % 6)};
  if ((flags & 8) == 0) {
    m.question = DnsQuestion{make_name(r), (r.next() & 1) != 0 ? DnsType::mx : DnsType::aaaa, kDnsClassIn};
  }
  const uint8_t counts = r.next();
  for (size_t i = 0; i < counts % 3u; ++i) {
    m.cnames.push_back(CnameRecord{make_name(r), r.next32(), make_name(r)});
  }
  for (size_t i = 0; i < (counts >> 2) % 8u; ++i) {
    m.mx.push_back(MxRecord{make_name(r), r.next32(), r.next16(), make_name(r)});
  }
  for (size_t i = 0; i < (counts >> 5) % 8u; ++i) {
    m.addresses.push_back(AddressRecord{make_name(r), r.next32(), make_address(r)});
  }
  if ((r.next() & 1) != 0) {
    m.soa = SoaRecord{make_name(r), r.next32(), make_name(r), make_name(r), r.next32(),
                      r.next32(),   r.next32(), r.next32(),   r.next32()};
  }
  // TTLs as the parser reports them (RFC 2181 section 8).
  const auto clamp = [](uint32_t& ttl) { ttl = (ttl & 0x80000000u) != 0 ? 0 : ttl; };
  for (CnameRecord& c : m.cnames) {
    clamp(c.ttl_s);
  }
  for (MxRecord& x : m.mx) {
    clamp(x.ttl_s);
  }
  for (AddressRecord& a : m.addresses) {
    clamp(a.ttl_s);
  }
  if (m.soa) {
    clamp(m.soa->ttl_s);
  }
  return m;
}

void check_cuts(const std::string& wire, const DnsMessage& full) {
  const size_t step = wire.size() / 16 + 1;
  for (size_t cut = 0; cut < wire.size(); cut += (cut < 16 || wire.size() - cut < 16) ? 1 : step) {
    const absl::StatusOr<DnsMessage> part = parse_dns_message(std::string_view(wire).substr(0, cut));
    if (!full.header.truncated || cut < kDnsHeaderOctets) {
      require(!part.ok());
      continue;
    }
    require(part.ok());
    require(part->header == full.header && !part->complete);
    require(is_prefix(part->mx, full.mx) && is_prefix(part->addresses, full.addresses) &&
            is_prefix(part->cnames, full.cnames));
    require(!part->soa || part->soa == full.soa);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool compress = size == 0 || (data[0] & 1) == 0;
  check_any(std::string_view(reinterpret_cast<const char*>(data), size), compress);

  Recipe recipe(data, size);
  const DnsMessage built = make_message(recipe);
  std::string wire = testing::encode_dns_response(built, compress);
  const absl::StatusOr<DnsMessage> parsed = parse_dns_message(wire);
  require(parsed.ok() && *parsed == built);
  check_cuts(wire, built);

  const uint8_t mutations = recipe.next() % 5u;
  for (uint8_t i = 0; i < mutations && !wire.empty(); ++i) {
    const size_t at = recipe.next16() % wire.size();
    const uint8_t how = recipe.next();
    switch (how % 3u) {
      case 0:
        wire[at] = static_cast<char>(wire[at] ^ (1u << (how >> 5)));
        break;
      case 1:
        wire[at] = static_cast<char>(recipe.next());
        break;
      default:
        wire.resize(at);
        break;
    }
  }
  check_any(wire, compress);
  return 0;
}
