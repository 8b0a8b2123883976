// The DNS message parser and query encoder: see dns_message.h for the rules and the decisions
// behind them. Every read goes through Reader, which knows the message's end; "ran out of octets"
// (absl::OutOfRange) is kept apart from every other malformation (absl::InvalidArgument) because a
// message with TC set may end early and is then returned incomplete instead of refused. Nothing
// here asserts on the message's bytes.
#include "resolver/dns_message.h"

#include <arpa/inet.h>

#include <array>
#include <cstring>

#include "absl/status/status.h"
#include "engine/io/strings.h"

namespace sluice::resolver {
namespace {

constexpr uint16_t kFlagResponse = 0x8000;
constexpr uint16_t kFlagAuthoritative = 0x0400;
constexpr uint16_t kFlagTruncated = 0x0200;
constexpr uint16_t kFlagRecursionDesired = 0x0100;
constexpr uint16_t kFlagRecursionAvailable = 0x0080;
constexpr size_t kQuestionOctetsMin = 5;  // root name, type, class
constexpr size_t kRecordOctetsMin = 11;   // root name, type, class, TTL, RDLENGTH
constexpr size_t kSoaNumbersOctets = 20;  // serial, refresh, retry, expire, minimum

absl::Status malformed(std::string_view what, size_t offset) {
  return absl::InvalidArgumentError(str_cat("dns: ", what, " at octet ", offset));
}

absl::Status ran_out(std::string_view what, size_t offset) {
  return absl::OutOfRangeError(str_cat("dns: message ends inside ", what, " at octet ", offset));
}

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

// One label in presentation form (see the header): lower case, \DDD for what would be ambiguous.
void append_label(std::string& out, std::string_view label) {
  for (const char c : label) {
    const auto octet = static_cast<uint8_t>(c);
    if (c == '.' || c == '\\' || octet < 0x21 || octet > 0x7e) {
      out += '\\';
      out += static_cast<char>('0' + octet / 100);
      out += static_cast<char>('0' + octet / 10 % 10);
      out += static_cast<char>('0' + octet % 10);
    } else {
      out += lower(c);
    }
  }
}

class Reader {
 public:
  explicit Reader(std::string_view wire) : _wire(wire) {}

  size_t offset() const { return _at; }
  size_t size() const { return _wire.size(); }
  std::string_view wire() const { return _wire; }
  void skip_to(size_t offset) { _at = offset; }

  absl::StatusOr<uint16_t> u16(std::string_view what) {
    if (_wire.size() - _at < 2) {
      return ran_out(what, _at);
    }
    const auto value = static_cast<uint16_t>(octet(_at) << 8 | octet(_at + 1));
    _at += 2;
    return value;
  }

  absl::StatusOr<uint32_t> u32(std::string_view what) {
    if (_wire.size() - _at < 4) {
      return ran_out(what, _at);
    }
    const uint32_t value = uint32_t{octet(_at)} << 24 | uint32_t{octet(_at + 1)} << 16 | uint32_t{octet(_at + 2)} << 8 |
                           uint32_t{octet(_at + 3)};
    _at += 4;
    return value;
  }

  // A name at the current offset; the octets before its first pointer (or its end) must lie
  // before `limit` (a record's RDATA end, or the message's end). Leaves the offset after them.
  absl::StatusOr<std::string> name(size_t limit) {
    std::string out;
    size_t pos = _at;
    size_t end = limit;       // where the octets being read must stop
    bool jumped = false;      // after a pointer, reading past the message's end is malformed
    size_t label_octets = 0;  // wire octets of the labels so far, length octets included
    size_t hops = 0;
    size_t bound = pos;  // every pointer must point before this: see below
    while (true) {
      if (pos >= end) {
        if (!jumped && end == _wire.size()) {
          return ran_out("a name", pos);
        }
        return malformed(jumped ? "name runs past the end" : "name runs past its record", pos);
      }
      const uint8_t length = octet(pos);
      if (length == 0) {
        if (!jumped) {
          _at = pos + 1;
        }
        if (out.empty()) {
          out.push_back('.');  // the root
        }
        return out;
      }
      switch (length & 0xc0) {
        case 0x00: {
          if (end - pos - 1 < length) {
            if (!jumped && end == _wire.size()) {
              return ran_out("a label", pos);
            }
            return malformed(jumped ? "label runs past the end" : "label runs past its record", pos);
          }
          label_octets += 1 + size_t{length};
          if (label_octets + 1 > kDnsNameOctetsMax) {
            return malformed("name longer than 255 octets", pos);
          }
          if (!out.empty()) {
            out += '.';
          }
          append_label(out, _wire.substr(pos + 1, length));
          pos += 1 + size_t{length};
          break;
        }
        case 0xc0: {
          if (end - pos < 2) {
            if (!jumped && end == _wire.size()) {
              return ran_out("a pointer", pos);
            }
            return malformed(jumped ? "pointer runs past the end" : "pointer runs past its record", pos);
          }
          // Before the name's start, and then before the previous pointer's target: a compressor
          // can only point at a name it wrote earlier, so real pointers always do, and the
          // targets strictly decrease, so no loop is possible.
          const size_t target = size_t{length & 0x3fu} << 8 | octet(pos + 1);
          if (target >= bound) {
            return malformed("compression pointer not pointing backward", pos);
          }
          bound = target;
          if (++hops > kDnsPointerHopsMax) {
            return malformed("too many compression pointers in one name", pos);
          }
          if (!jumped) {
            _at = pos + 2;
            jumped = true;
          }
          end = _wire.size();
          pos = target;
          break;
        }
        default:
          return malformed("label of an unknown type", pos);
      }
    }
  }

 private:
  uint8_t octet(size_t at) const { return static_cast<uint8_t>(_wire[at]); }

  std::string_view _wire;
  size_t _at = 0;
};

uint32_t clamp_ttl(uint32_t ttl) {
  return (ttl & 0x80000000u) != 0 ? 0 : ttl;  // RFC 2181 section 8
}

enum class Section : uint8_t { answer, authority, additional };

absl::StatusOr<DnsHeader> read_header(Reader& reader) {
  DnsHeader header;
  absl::StatusOr<uint16_t> id = reader.u16("the header");
  absl::StatusOr<uint16_t> flags = reader.u16("the header");
  if (!id.ok() || !flags.ok()) {
    return malformed("message shorter than its header", reader.offset());
  }
  header.id = *id;
  header.response = (*flags & kFlagResponse) != 0;
  header.opcode = static_cast<uint8_t>(*flags >> 11 & 0xf);
  header.authoritative = (*flags & kFlagAuthoritative) != 0;
  header.truncated = (*flags & kFlagTruncated) != 0;
  header.recursion_desired = (*flags & kFlagRecursionDesired) != 0;
  header.recursion_available = (*flags & kFlagRecursionAvailable) != 0;
  header.rcode = static_cast<Rcode>(*flags & 0xf);
  return header;
}

// The RDATA of an extracted record must be exactly `octets` long.
absl::Status check_rdata_length(size_t rdata_octets, size_t octets, std::string_view type, size_t at) {
  if (rdata_octets != octets) {
    return malformed(str_cat(type, " record of ", rdata_octets, " octets"), at);
  }
  return absl::OkStatus();
}

// A name inside RDATA that ends at `rdata_end`, or (not `fills`) before it.
absl::StatusOr<std::string> rdata_name(Reader& reader, size_t rdata_end, std::string_view type, bool fills = true) {
  absl::StatusOr<std::string> name = reader.name(rdata_end);
  if (name.ok() && fills && reader.offset() != rdata_end) {
    return malformed(str_cat(type, " record with octets after its name"), reader.offset());
  }
  return name;
}

absl::Status read_address(Reader& reader, size_t rdata_octets, bool v6, std::string owner, uint32_t ttl,
                          DnsMessage& message) {
  const size_t at = reader.offset();
  if (absl::Status s = check_rdata_length(rdata_octets, v6 ? 16 : 4, v6 ? "AAAA" : "A", at); !s.ok()) {
    return s;
  }
  AddressRecord record{std::move(owner), ttl, {}};
  if (v6) {
    in6_addr address;
    std::memcpy(&address, reader.wire().data() + at, 16);
    record.address = io::SocketAddress::ipv6(address, 0);
  } else {
    in_addr address;
    std::memcpy(&address, reader.wire().data() + at, 4);
    record.address = io::SocketAddress::ipv4(address, 0);
  }
  message.addresses.push_back(std::move(record));
  return absl::OkStatus();
}

absl::Status read_soa(Reader& reader, size_t rdata_end, std::string owner, uint32_t ttl, DnsMessage& message) {
  SoaRecord soa;
  soa.owner = std::move(owner);
  soa.ttl_s = ttl;
  absl::StatusOr<std::string> mname = rdata_name(reader, rdata_end, "SOA", false);
  if (!mname.ok()) {
    return mname.status();
  }
  absl::StatusOr<std::string> rname = rdata_name(reader, rdata_end, "SOA", false);
  if (!rname.ok()) {
    return rname.status();
  }
  if (rdata_end < reader.offset() || rdata_end - reader.offset() != kSoaNumbersOctets) {
    return malformed("SOA record of the wrong length", reader.offset());
  }
  std::array<uint32_t, 5> numbers{};
  for (uint32_t& number : numbers) {
    number = *reader.u32("SOA");  // in bounds: rdata_end is within the message
  }
  soa.mname = *std::move(mname);
  soa.rname = *std::move(rname);
  soa.serial = numbers[0];
  soa.refresh_s = numbers[1];
  soa.retry_s = numbers[2];
  soa.expire_s = numbers[3];
  soa.minimum_s = numbers[4];
  if (!message.soa) {
    message.soa = std::move(soa);
  }
  return absl::OkStatus();
}

// One resource record; the ones the resolver needs go into `message`.
absl::Status read_record(Reader& reader, Section section, DnsMessage& message) {
  absl::StatusOr<std::string> owner = reader.name(reader.size());
  if (!owner.ok()) {
    return owner.status();
  }
  absl::StatusOr<uint16_t> type = reader.u16("a record");
  absl::StatusOr<uint16_t> klass = type.ok() ? reader.u16("a record") : type;
  absl::StatusOr<uint32_t> ttl = klass.ok() ? reader.u32("a record") : klass.status();
  absl::StatusOr<uint16_t> rdata_octets = ttl.ok() ? reader.u16("a record") : ttl.status();
  if (!rdata_octets.ok()) {
    return rdata_octets.status();
  }
  const size_t rdata_at = reader.offset();
  if (reader.size() - rdata_at < *rdata_octets) {
    return ran_out("a record's data", rdata_at);
  }
  const size_t rdata_end = rdata_at + *rdata_octets;
  const uint32_t ttl_s = clamp_ttl(*ttl);
  absl::Status status = absl::OkStatus();
  if (*klass == kDnsClassIn && section == Section::answer) {
    switch (static_cast<DnsType>(*type)) {
      case DnsType::a:
      case DnsType::aaaa:
        status =
            read_address(reader, *rdata_octets, *type == uint16_t(DnsType::aaaa), *std::move(owner), ttl_s, message);
        break;
      case DnsType::mx: {
        absl::StatusOr<uint16_t> preference =
            *rdata_octets >= 2 ? reader.u16("MX")
                               : absl::StatusOr<uint16_t>(malformed("MX record too short", rdata_at));
        absl::StatusOr<std::string> exchange =
            preference.ok() ? rdata_name(reader, rdata_end, "MX") : preference.status();
        if (exchange.ok()) {
          message.mx.push_back(MxRecord{*std::move(owner), ttl_s, *preference, *std::move(exchange)});
        }
        status = exchange.status();
        break;
      }
      case DnsType::cname: {
        absl::StatusOr<std::string> target = rdata_name(reader, rdata_end, "CNAME");
        if (target.ok()) {
          message.cnames.push_back(CnameRecord{*std::move(owner), ttl_s, *std::move(target)});
        }
        status = target.status();
        break;
      }
      default:
        break;
    }
  } else if (*klass == kDnsClassIn && section == Section::authority && *type == uint16_t(DnsType::soa)) {
    status = read_soa(reader, rdata_end, *std::move(owner), ttl_s, message);
  }
  // Inside RDATA, running out of octets means the RDATA is wrong, not that the message was cut.
  if (status.code() == absl::StatusCode::kOutOfRange) {
    return malformed(to_std(status.message()), rdata_at);
  }
  reader.skip_to(rdata_end);
  return status;
}

// The question, then every record of the three sections.
absl::Status read_body(Reader& reader, const std::array<uint16_t, 4>& counts, DnsMessage& message) {
  if (counts[0] == 1) {
    absl::StatusOr<std::string> name = reader.name(reader.size());
    if (!name.ok()) {
      return name.status();
    }
    absl::StatusOr<uint16_t> type = reader.u16("the question");
    absl::StatusOr<uint16_t> klass = type.ok() ? reader.u16("the question") : type;
    if (!klass.ok()) {
      return klass.status();
    }
    message.question = DnsQuestion{*std::move(name), static_cast<DnsType>(*type), *klass};
  }
  constexpr std::array<Section, 3> kSections = {Section::answer, Section::authority, Section::additional};
  for (size_t s = 0; s < kSections.size(); ++s) {
    for (uint16_t i = 0; i < counts[s + 1]; ++i) {
      if (absl::Status status = read_record(reader, kSections[s], message); !status.ok()) {
        return status;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DnsMessage> parse_dns_message(std::string_view wire) {
  if (wire.size() > kDnsMessageOctetsMax) {
    return malformed("message longer than 65535 octets", kDnsMessageOctetsMax);
  }
  Reader reader(wire);
  DnsMessage message;
  absl::StatusOr<DnsHeader> header = read_header(reader);
  if (!header.ok()) {
    return header.status();
  }
  message.header = *header;
  std::array<uint16_t, 4> counts{};
  for (uint16_t& count : counts) {
    absl::StatusOr<uint16_t> value = reader.u16("the header");
    if (!value.ok()) {
      return malformed("message shorter than its header", reader.offset());
    }
    count = *value;
  }
  if (counts[0] > 1) {
    return malformed(str_cat("question count ", counts[0]), 4);
  }
  // Counts that cannot fit are refused before any record is read; with TC the parse below
  // stops where the octets end.
  const size_t octets_min =
      counts[0] * kQuestionOctetsMin + (size_t{counts[1]} + counts[2] + counts[3]) * kRecordOctetsMin;
  if (!message.header.truncated && octets_min > wire.size() - kDnsHeaderOctets) {
    return malformed(str_cat("counts need at least ", octets_min, " octets after the header but ",
                             wire.size() - kDnsHeaderOctets, " are there"),
                     4);
  }
  absl::Status status = read_body(reader, counts, message);
  if (status.code() == absl::StatusCode::kOutOfRange && message.header.truncated) {
    message.complete = false;
    return message;
  }
  if (!status.ok()) {
    return absl::InvalidArgumentError(status.message());
  }
  return message;
}

std::string normalize_dns_name(std::string_view name) {
  std::string out(name);
  for (char& c : out) {
    c = lower(c);
  }
  if (out.size() > 1 && out.back() == '.') {
    size_t backslashes = 0;  // before the dot: an odd number escapes it
    while (backslashes + 2 <= out.size() && out[out.size() - 2 - backslashes] == '\\') {
      ++backslashes;
    }
    if (backslashes % 2 == 0) {
      out.pop_back();
    }
  }
  return out;
}

absl::StatusOr<std::string> canonical_name(const DnsMessage& message, std::string_view name) {
  std::string current = normalize_dns_name(name);
  for (size_t links = 0;; ++links) {
    const CnameRecord* next = nullptr;
    for (const CnameRecord& cname : message.cnames) {
      if (cname.owner == current) {
        next = &cname;
        break;
      }
    }
    if (next == nullptr) {
      return current;
    }
    if (links == kCnameChainMax) {
      return absl::InvalidArgumentError(
          str_cat("dns: CNAME chain from ", name, " longer than ", kCnameChainMax, " links or a loop"));
    }
    current = next->target;
  }
}

absl::StatusOr<std::string> encode_dns_name(std::string_view name) {
  if (name.empty()) {
    return absl::InvalidArgumentError("dns: empty name");
  }
  std::string wire;
  if (name == ".") {
    wire += '\0';
    return wire;
  }
  std::string label;
  bool last_dot = false;  // the previous character ended a label
  const auto end_label = [&]() -> absl::Status {
    if (label.empty()) {
      return absl::InvalidArgumentError(str_cat("dns: empty label in ", name));
    }
    if (label.size() > kDnsLabelOctetsMax) {
      return absl::InvalidArgumentError(str_cat("dns: label longer than 63 octets in ", name));
    }
    wire += static_cast<char>(label.size());
    wire += label;
    label.clear();
    return absl::OkStatus();
  };
  for (size_t i = 0; i < name.size(); ++i) {
    last_dot = false;
    char c = name[i];
    if (c == '.') {
      if (absl::Status s = end_label(); !s.ok()) {
        return s;
      }
      last_dot = true;
      continue;
    }
    if (c == '\\') {
      if (i + 1 >= name.size()) {
        return absl::InvalidArgumentError(str_cat("dns: name ends in a backslash: ", name));
      }
      if (i + 3 < name.size() && name[i + 1] >= '0' && name[i + 1] <= '9') {
        unsigned value = 0;
        for (size_t d = 1; d <= 3; ++d) {
          if (name[i + d] < '0' || name[i + d] > '9') {
            return absl::InvalidArgumentError(str_cat("dns: bad \\DDD escape in ", name));
          }
          value = value * 10 + unsigned(name[i + d] - '0');
        }
        if (value > 255) {
          return absl::InvalidArgumentError(str_cat("dns: bad \\DDD escape in ", name));
        }
        c = static_cast<char>(value);
        i += 3;
      } else if (name[i + 1] >= '0' && name[i + 1] <= '9') {
        return absl::InvalidArgumentError(str_cat("dns: bad \\DDD escape in ", name));
      } else {
        c = name[++i];
      }
    }
    label += c;
  }
  if (!last_dot) {
    if (absl::Status s = end_label(); !s.ok()) {
      return s;
    }
  }
  wire += '\0';
  if (wire.size() > kDnsNameOctetsMax) {
    return absl::InvalidArgumentError(str_cat("dns: name longer than 255 octets: ", name));
  }
  return wire;
}

absl::StatusOr<std::string> encode_dns_query(uint16_t id, std::string_view name, DnsType type, bool recursion_desired) {
  absl::StatusOr<std::string> qname = encode_dns_name(name);
  if (!qname.ok()) {
    return qname.status();
  }
  const uint16_t flags = recursion_desired ? kFlagRecursionDesired : 0;
  const uint16_t fields[] = {id, flags, 1, 0, 0, 0};
  std::string wire;
  for (const uint16_t field : fields) {
    wire += static_cast<char>(field >> 8);
    wire += static_cast<char>(field & 0xff);
  }
  wire += *qname;
  for (const uint16_t field : {static_cast<uint16_t>(type), kDnsClassIn}) {
    wire += static_cast<char>(field >> 8);
    wire += static_cast<char>(field & 0xff);
  }
  return wire;
}

}  // namespace sluice::resolver
