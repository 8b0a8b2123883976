#pragma once
// Test support (header only, not part of the library): writes DNS messages, so unit tests and the
// fuzz target's seeds can build real-world shaped responses (compressed the way servers compress)
// and hand-made broken ones (loops, bad counts, cut records); sluice-bench's MX fixture
// (bench/relay/mx_dns_fixture.h) answers Sluice's queries with it. Never used by the relay
// itself: c-ares does the wire protocol there.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "resolver/dns_message.h"

namespace sluice::resolver::testing {

// Appends big-endian fields, names with or without compression, and raw octets.
class DnsWireWriter {
 public:
  void u8(uint8_t value) { _wire += static_cast<char>(value); }
  void u16(uint16_t value) {
    u8(static_cast<uint8_t>(value >> 8));
    u8(static_cast<uint8_t>(value));
  }
  void u32(uint32_t value) {
    u16(static_cast<uint16_t>(value >> 16));
    u16(static_cast<uint16_t>(value));
  }
  void raw(std::string_view octets) { _wire += octets; }
  // A compression pointer to `offset`.
  void pointer(uint16_t offset) { u16(static_cast<uint16_t>(0xc000 | offset)); }

  // The header, flags as on the wire.
  void header(uint16_t id, uint16_t flags, uint16_t qd, uint16_t an, uint16_t ns, uint16_t ar) {
    for (const uint16_t field : {id, flags, qd, an, ns, ar}) {
      u16(field);
    }
  }

  // `name` (presentation form); with `compress`, its longest suffix already written (with
  // compress) becomes a pointer, as servers do. The name must be valid.
  void name(std::string_view name, bool compress = true) {
    const absl::StatusOr<std::string> wire = encode_dns_name(name);
    if (!wire.ok()) {
      __builtin_trap();  // a test wrote a bad name: the test is wrong
    }
    size_t at = 0;
    while ((*wire)[at] != 0) {
      std::string suffix = wire->substr(at);
      for (char& c : suffix) {
        c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
      }
      if (compress) {
        if (const auto it = _suffixes.find(suffix); it != _suffixes.end()) {
          pointer(it->second);
          return;
        }
        if (_wire.size() < 0x4000) {
          _suffixes.emplace(std::move(suffix), static_cast<uint16_t>(_wire.size()));
        }
      }
      const size_t length = static_cast<uint8_t>((*wire)[at]);
      _wire.append(*wire, at, 1 + length);
      at += 1 + length;
    }
    u8(0);
  }

  // A record's fixed part; `rdata_octets` is patched later when 0xffff is passed and
  // end_rdata() is called.
  void record(std::string_view owner, uint16_t type, uint32_t ttl, bool compress = true, uint16_t klass = kDnsClassIn) {
    name(owner, compress);
    u16(type);
    u16(klass);
    u32(ttl);
    _rdlength_at = _wire.size();
    u16(0);
  }
  // Sets the RDLENGTH of the last record() to the octets written since.
  void end_rdata() {
    const size_t length = _wire.size() - _rdlength_at - 2;
    _wire[_rdlength_at] = static_cast<char>(length >> 8);
    _wire[_rdlength_at + 1] = static_cast<char>(length);
  }

  void question(std::string_view qname, DnsType type, bool compress = true) {
    name(qname, compress);
    u16(static_cast<uint16_t>(type));
    u16(kDnsClassIn);
  }
  void mx(std::string_view owner, uint32_t ttl, uint16_t preference, std::string_view exchange, bool compress = true) {
    record(owner, static_cast<uint16_t>(DnsType::mx), ttl, compress);
    u16(preference);
    name(exchange, compress);
    end_rdata();
  }
  void cname(std::string_view owner, uint32_t ttl, std::string_view target, bool compress = true) {
    record(owner, static_cast<uint16_t>(DnsType::cname), ttl, compress);
    name(target, compress);
    end_rdata();
  }
  void address(std::string_view owner, uint32_t ttl, const io::SocketAddress& address, bool compress = true) {
    const bool v6 = address.family() == AF_INET6;
    record(owner, static_cast<uint16_t>(v6 ? DnsType::aaaa : DnsType::a), ttl, compress);
    if (v6) {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(address.get());
      raw(std::string_view(reinterpret_cast<const char*>(&sin6->sin6_addr), 16));
    } else {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(address.get());
      raw(std::string_view(reinterpret_cast<const char*>(&sin->sin_addr), 4));
    }
    end_rdata();
  }
  void soa(const SoaRecord& soa, bool compress = true) {
    record(soa.owner, static_cast<uint16_t>(DnsType::soa), soa.ttl_s, compress);
    name(soa.mname, compress);
    name(soa.rname, compress);
    for (const uint32_t number : {soa.serial, soa.refresh_s, soa.retry_s, soa.expire_s, soa.minimum_s}) {
      u32(number);
    }
    end_rdata();
  }

  const std::string& wire() const { return _wire; }
  std::string& mutable_wire() { return _wire; }

 private:
  std::string _wire;
  absl::flat_hash_map<std::string, uint16_t> _suffixes;  // lower-case wire suffix -> its offset
  size_t _rdlength_at = 0;
};

inline uint16_t header_flags(const DnsHeader& header) {
  return static_cast<uint16_t>((header.response ? 0x8000 : 0) | (header.opcode & 0xf) << 11 |
                               (header.authoritative ? 0x0400 : 0) | (header.truncated ? 0x0200 : 0) |
                               (header.recursion_desired ? 0x0100 : 0) | (header.recursion_available ? 0x0080 : 0) |
                               (static_cast<uint8_t>(header.rcode) & 0xf));
}

// A response carrying `message`'s header (counts computed), question, answer records (CNAMEs
// first, as servers order a chain, then MX, then addresses) and SOA in the authority section.
inline std::string encode_dns_response(const DnsMessage& message, bool compress = true) {
  DnsWireWriter w;
  const size_t answers = message.cnames.size() + message.mx.size() + message.addresses.size();
  w.header(message.header.id, header_flags(message.header), message.question ? 1 : 0, static_cast<uint16_t>(answers),
           message.soa ? 1 : 0, 0);
  if (message.question) {
    w.name(message.question->name, compress);
    w.u16(static_cast<uint16_t>(message.question->type));
    w.u16(message.question->klass);
  }
  for (const CnameRecord& r : message.cnames) {
    w.cname(r.owner, r.ttl_s, r.target, compress);
  }
  for (const MxRecord& r : message.mx) {
    w.mx(r.owner, r.ttl_s, r.preference, r.exchange, compress);
  }
  for (const AddressRecord& r : message.addresses) {
    w.address(r.owner, r.ttl_s, r.address, compress);
  }
  if (message.soa) {
    w.soa(*message.soa, compress);
  }
  return w.wire();
}

// "192.0.2.1" or "2001:db8::1" with port 0; the text must be valid.
inline io::SocketAddress ip(std::string_view text) {
  absl::StatusOr<io::SocketAddress> address = io::parse_ip(text);
  if (!address.ok()) {
    __builtin_trap();
  }
  return *address;
}

}  // namespace sluice::resolver::testing
