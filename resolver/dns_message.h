#pragma once
// The DNS message parser (RFC 1035 section 4): the raw answer that c-ares's ares_query returns in,
// the records delivery needs out, each with its TTL. It exists because c-ares 1.18's parsed MX
// replies carry no TTL, and the cache needs TTLs and the negative-caching TTL of RFC 2308
// (DESIGN.md section 2, "Resolver"). Pure: no sockets, no clock, no allocation beyond the result.
//
// The bytes come from the network and are hostile: every malformation is an error value
// (absl::StatusOr), nothing is asserted on them, every read is bounds-checked, and every loop is
// bounded (names by kDnsNameOctetsMax and kDnsPointerHopsMax, records by the message's size).
//
// Decisions where the RFCs leave room:
// * Names are returned in presentation form, lower case (DNS names compare case-insensitively,
//   RFC 4343, and the resolver compares them with our hostname and CNAME owners), without the
//   trailing dot; the root is ".". An octet that is '.', '\' or outside 0x21-0x7e is written
//   \DDD (RFC 1035 section 5.1), so that no two wire names share a presentation form.
// * Compression pointers must point strictly backward: before the start of the name, and each
//   further pointer before the previous one's target (RFC 1035 4.1.4 says "a prior occurrence";
//   a compressor can only point at what it already wrote; Knot and hickory refuse forward
//   pointers too). The targets then strictly decrease, so no loop can be built, and
//   kDnsPointerHopsMax bounds the work on a chain of pointers.
//   Label types 01 and 10 (RFC 6891 section 5, obsolete) are errors.
// * The four counts must be met exactly, except in a message with TC set, where records that do
//   not fit are dropped and the message is marked incomplete (RFC 2181 section 9: its data must
//   not be cached; c-ares retries such an answer over TCP). Octets after the last record are
//   ignored, as c-ares and glibc do.
// * Records of type A, AAAA, MX and CNAME in the answer section and SOA in the authority section,
//   of class IN, are extracted; their RDATA must have exactly its type's form (an A of 5 octets is
//   an error for the whole message, as in c-ares). Other types and classes are skipped after
//   their framing is checked.
// * A TTL with the top bit set counts as 0 (RFC 2181 section 8).
// * More than one question is an error (RFC 9619).
// * We send no EDNS OPT, so a server may not send one back (RFC 6891 section 7) and the rcode is
//   the header's 4 bits; an OPT in the additional section is skipped like any other record.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::resolver {

// Wire octets of a name, length octets and the final zero included (RFC 1035 section 2.3.4).
inline constexpr size_t kDnsNameOctetsMax = 255;
inline constexpr size_t kDnsLabelOctetsMax = 63;
// Compression pointers followed while reading one name. Real names take one or two.
inline constexpr size_t kDnsPointerHopsMax = 32;
// A message over TCP has a 16-bit length, so nothing longer is a DNS message.
inline constexpr size_t kDnsMessageOctetsMax = 65535;
inline constexpr size_t kDnsHeaderOctets = 12;

// RR types (RFC 1035 3.2.2, RFC 3596); any other value may appear on the wire.
enum class DnsType : uint16_t { a = 1, ns = 2, cname = 5, soa = 6, mx = 15, txt = 16, aaaa = 28, opt = 41 };
inline constexpr uint16_t kDnsClassIn = 1;

// Response codes (RFC 1035 4.1.1); any other 4-bit value may appear on the wire.
enum class Rcode : uint8_t {
  no_error = 0,
  format_error = 1,
  server_failure = 2,
  name_error = 3,  // NXDOMAIN
  not_implemented = 4,
  refused = 5,
};

struct DnsHeader {
  uint16_t id = 0;
  bool response = false;  // QR
  uint8_t opcode = 0;     // 0 = QUERY
  bool authoritative = false;
  bool truncated = false;  // TC: the answer did not fit (UDP over 512 octets); ask again over TCP
  bool recursion_desired = false;
  bool recursion_available = false;
  Rcode rcode = Rcode::no_error;
  friend bool operator==(const DnsHeader&, const DnsHeader&) = default;
};

struct DnsQuestion {
  std::string name;
  DnsType type = DnsType::a;
  uint16_t klass = kDnsClassIn;
  friend bool operator==(const DnsQuestion&, const DnsQuestion&) = default;
};

struct MxRecord {
  std::string owner;
  uint32_t ttl_s = 0;
  uint16_t preference = 0;
  std::string exchange;  // "." for a null MX (RFC 7505)
  friend bool operator==(const MxRecord&, const MxRecord&) = default;
};

// An A or an AAAA record: the address's family says which; its port is 0.
struct AddressRecord {
  std::string owner;
  uint32_t ttl_s = 0;
  io::SocketAddress address;
  friend bool operator==(const AddressRecord&, const AddressRecord&) = default;
};

struct CnameRecord {
  std::string owner;
  uint32_t ttl_s = 0;
  std::string target;
  friend bool operator==(const CnameRecord&, const CnameRecord&) = default;
};

struct SoaRecord {
  std::string owner;
  uint32_t ttl_s = 0;
  std::string mname;
  std::string rname;
  uint32_t serial = 0;
  uint32_t refresh_s = 0;
  uint32_t retry_s = 0;
  uint32_t expire_s = 0;
  uint32_t minimum_s = 0;
  // How long a negative answer that carries this SOA may be cached (RFC 2308 section 5).
  uint32_t negative_ttl_s() const { return ttl_s < minimum_s ? ttl_s : minimum_s; }
  friend bool operator==(const SoaRecord&, const SoaRecord&) = default;
};

struct DnsMessage {
  DnsHeader header;
  std::optional<DnsQuestion> question;  // a response normally repeats the one question
  // The answer section's records of each kind, each list in wire order.
  std::vector<MxRecord> mx;
  std::vector<AddressRecord> addresses;
  std::vector<CnameRecord> cnames;
  std::optional<SoaRecord> soa;  // the authority section's first SOA of class IN
  // False when TC was set and records were missing: use the header only.
  bool complete = true;
  friend bool operator==(const DnsMessage&, const DnsMessage&) = default;
};

// Parses one message (a UDP datagram, or a TCP message without its length prefix).
absl::StatusOr<DnsMessage> parse_dns_message(std::string_view wire);

// `name` in the form the parser gives names: lower case, without a trailing dot (an escaped
// "\." stays; the root stays ".").
std::string normalize_dns_name(std::string_view name);

// The name that `name` is an alias of, following the answer's CNAME records (RFC 1034 3.6.2),
// at most kCnameChainMax links; `name` itself when it has none. A loop or a longer chain is an
// error. `name` is compared without regard to case or a trailing dot.
inline constexpr size_t kCnameChainMax = 8;
absl::StatusOr<std::string> canonical_name(const DnsMessage& message, std::string_view name);

// A query (RFC 1035 4.1): the header with `id`, QDCOUNT 1 and RD as given, and the question of
// class IN, without compression. `name` is in presentation form (\DDD escapes allowed, a
// trailing dot optional); an empty label, a label over 63 octets or a name over 255 is an error.
absl::StatusOr<std::string> encode_dns_query(uint16_t id, std::string_view name, DnsType type,
                                             bool recursion_desired = true);

// `name` in wire form, uncompressed; the errors of encode_dns_query.
absl::StatusOr<std::string> encode_dns_name(std::string_view name);

}  // namespace sluice::resolver
