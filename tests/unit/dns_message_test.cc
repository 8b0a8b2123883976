// Tests for the DNS message parser and encoder: real-world shaped responses (a compressed MX set
// like a large provider's, a CNAME chain, NXDOMAIN and NODATA with their SOA, a truncated UDP
// answer), one response written byte by byte (so the parser is not only checked against our own
// writer), and the attacks: pointer loops, forward and out-of-bounds pointers, long pointer
// chains, names and labels over their limits, counts that do not match, RDATA of the wrong size.
#include "resolver/dns_message.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "engine/io/strings.h"
#include "resolver/dns_testing.h"

namespace sluice::resolver {
namespace {

using testing::DnsWireWriter;
using testing::ip;

constexpr uint16_t kResponseFlags = 0x8180;  // QR, RD, RA, NOERROR

// "12 34 ab" -> those octets; quoted text ('mail') is copied as is.
std::string bytes(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == ' ') {
      ++i;
    } else if (text[i] == '\'') {
      const size_t end = text.find('\'', i + 1);
      out += text.substr(i + 1, end - i - 1);
      i = end + 1;
    } else {
      out += static_cast<char>(std::stoi(std::string(text.substr(i, 2)), nullptr, 16));
      i += 2;
    }
  }
  return out;
}

DnsMessage parse_ok(std::string_view wire) {
  absl::StatusOr<DnsMessage> message = parse_dns_message(wire);
  EXPECT_TRUE(message.ok()) << message.status();
  return message.ok() ? *message : DnsMessage{};
}

std::string parse_error(std::string_view wire) {
  absl::StatusOr<DnsMessage> message = parse_dns_message(wire);
  EXPECT_FALSE(message.ok());
  return message.ok() ? "" : std::string(message.status().message());
}

// gmail.com's MX set as its servers send it: five hosts, compressed against the question and
// against each other.
std::string gmail_mx(bool compress) {
  DnsWireWriter w;
  w.header(0x4a21, kResponseFlags, 1, 5, 0, 0);
  w.question("gmail.com", DnsType::mx, compress);
  w.mx("gmail.com", 3600, 5, "gmail-smtp-in.l.google.com", compress);
  w.mx("gmail.com", 3600, 10, "alt1.gmail-smtp-in.l.google.com", compress);
  w.mx("gmail.com", 3600, 20, "alt2.gmail-smtp-in.l.google.com", compress);
  w.mx("gmail.com", 3600, 30, "alt3.gmail-smtp-in.l.google.com", compress);
  w.mx("gmail.com", 3600, 40, "alt4.gmail-smtp-in.l.google.com", compress);
  return w.wire();
}

TEST(DnsMessage, CompressedMxSet) {
  const std::string wire = gmail_mx(true);
  ASSERT_LT(wire.size(), gmail_mx(false).size());  // compression was used
  const DnsMessage m = parse_ok(wire);
  EXPECT_EQ(m.header.id, 0x4a21);
  EXPECT_TRUE(m.header.response);
  EXPECT_TRUE(m.header.recursion_desired);
  EXPECT_TRUE(m.header.recursion_available);
  EXPECT_FALSE(m.header.truncated);
  EXPECT_EQ(m.header.rcode, Rcode::no_error);
  ASSERT_TRUE(m.question.has_value());
  EXPECT_EQ(*m.question, (DnsQuestion{"gmail.com", DnsType::mx, kDnsClassIn}));
  ASSERT_EQ(m.mx.size(), 5u);
  EXPECT_EQ(m.mx[0], (MxRecord{"gmail.com", 3600, 5, "gmail-smtp-in.l.google.com"}));
  EXPECT_EQ(m.mx[4], (MxRecord{"gmail.com", 3600, 40, "alt4.gmail-smtp-in.l.google.com"}));
  EXPECT_TRUE(m.complete);
  EXPECT_FALSE(m.soa.has_value());
  // The same records without compression.
  DnsMessage plain = parse_ok(gmail_mx(false));
  EXPECT_EQ(plain, m);
}

// Written octet by octet from RFC 1035 section 4, not with DnsWireWriter.
TEST(DnsMessage, HandWrittenResponse) {
  const std::string wire = bytes(
      "12 34 85 80 00 01 00 02 00 00 00 00"                          // id, QR AA RD RA, 1 question, 2 answers
      "07 'EXAMPLE' 03 'com' 00 00 0f 00 01"                         // example.com MX IN, at octet 12
      "c0 0c 00 0f 00 01 00 00 0e 10 00 09 00 0a 04 'mail' c0 0c"    // MX 10 mail.example.com, TTL 3600
      "04 'mail' c0 0c 00 01 00 01 00 00 01 2c 00 04 c0 00 02 19");  // mail.example.com A 192.0.2.25, TTL 300
  const DnsMessage m = parse_ok(wire);
  EXPECT_EQ(m.header.id, 0x1234);
  EXPECT_TRUE(m.header.authoritative);
  EXPECT_EQ(m.question->name, "example.com");  // lower case
  ASSERT_EQ(m.mx.size(), 1u);
  EXPECT_EQ(m.mx[0], (MxRecord{"example.com", 3600, 10, "mail.example.com"}));
  ASSERT_EQ(m.addresses.size(), 1u);
  EXPECT_EQ(m.addresses[0], (AddressRecord{"mail.example.com", 300, ip("192.0.2.25")}));
}

TEST(DnsMessage, CnameChainInTheAnswer) {
  DnsWireWriter w;
  w.header(7, kResponseFlags, 1, 6, 0, 0);
  w.question("WWW.Example.COM", DnsType::a);
  w.cname("WWW.Example.COM", 300, "web.example.net");
  w.cname("web.example.net", 60, "lb.example.org");
  w.address("lb.example.org", 20, ip("192.0.2.10"));
  w.address("lb.example.org", 20, ip("192.0.2.11"));
  w.address("lb.example.org", 20, ip("2001:db8::10"));
  w.address("other.example.org", 20, ip("192.0.2.99"));
  const DnsMessage m = parse_ok(w.wire());
  ASSERT_EQ(m.cnames.size(), 2u);
  EXPECT_EQ(m.cnames[0], (CnameRecord{"www.example.com", 300, "web.example.net"}));
  ASSERT_EQ(m.addresses.size(), 4u);
  EXPECT_EQ(m.addresses[2].address, ip("2001:db8::10"));
  EXPECT_EQ(m.addresses[2].address.family(), AF_INET6);
  EXPECT_EQ(*canonical_name(m, "www.example.com."), "lb.example.org");
  EXPECT_EQ(*canonical_name(m, "Web.Example.Net"), "lb.example.org");
  EXPECT_EQ(*canonical_name(m, "lb.example.org"), "lb.example.org");
  EXPECT_EQ(*canonical_name(m, "unrelated.test"), "unrelated.test");
}

TEST(DnsMessage, CnameLoopsAndLongChainsAreErrors) {
  DnsMessage m;
  m.cnames = {{"a.test", 1, "b.test"}, {"b.test", 1, "a.test"}};
  EXPECT_FALSE(canonical_name(m, "a.test").ok());
  m.cnames.clear();
  for (size_t i = 0; i < kCnameChainMax; ++i) {
    m.cnames.push_back({str_cat("n", i, ".test"), 1, str_cat("n", i + 1, ".test")});
  }
  EXPECT_EQ(*canonical_name(m, "n0.test"), str_cat("n", kCnameChainMax, ".test"));
  m.cnames.push_back({str_cat("n", kCnameChainMax, ".test"), 1, "end.test"});
  EXPECT_FALSE(canonical_name(m, "n0.test").ok());
}

SoaRecord example_soa(uint32_t ttl, uint32_t minimum) {
  return SoaRecord{"example.com", ttl,    "ns1.example.com", "hostmaster.example.com", 2026120201, 7200, 900,
                   1209600,       minimum};
}

TEST(DnsMessage, NxdomainWithSoa) {
  DnsWireWriter w;
  w.header(9, kResponseFlags | 3, 1, 0, 1, 0);
  w.question("nosuch.example.com", DnsType::mx);
  w.soa(example_soa(900, 300));
  const DnsMessage m = parse_ok(w.wire());
  EXPECT_EQ(m.header.rcode, Rcode::name_error);
  ASSERT_TRUE(m.soa.has_value());
  EXPECT_EQ(*m.soa, example_soa(900, 300));
  EXPECT_EQ(m.soa->negative_ttl_s(), 300u);  // min(TTL, minimum), RFC 2308 section 5
  EXPECT_TRUE(m.mx.empty());
}

TEST(DnsMessage, NodataWithSoaWhoseTtlIsSmaller) {
  DnsWireWriter w;
  w.header(9, kResponseFlags, 1, 0, 2, 0);
  w.question("example.com", DnsType::mx);
  w.soa(example_soa(60, 3600));
  w.soa(example_soa(5, 5));  // a second SOA: the first counts
  const DnsMessage m = parse_ok(w.wire());
  EXPECT_EQ(m.header.rcode, Rcode::no_error);
  EXPECT_EQ(m.soa->negative_ttl_s(), 60u);
}

// 12 MX records make a UDP answer of over 512 octets: the server sends what fits and sets TC.
std::string twelve_mx(uint16_t flags, size_t cut_octets) {
  DnsWireWriter w;
  w.header(3, flags, 1, 12, 0, 0);
  w.question("big.example", DnsType::mx);
  for (uint16_t i = 0; i < 12; ++i) {
    w.mx("big.example", 300, i, str_cat("mx", i, "-a-rather-long-host-name-for-the-test.big.example"));
  }
  std::string wire = w.wire();
  if (cut_octets < wire.size()) {
    wire.resize(cut_octets);
  }
  return wire;
}

TEST(DnsMessage, TruncatedAnswerIsIncomplete) {
  const size_t full = twelve_mx(kResponseFlags, SIZE_MAX >> 1).size();
  ASSERT_GT(full, 512u);
  const DnsMessage m = parse_ok(twelve_mx(kResponseFlags | 0x0200, 512));
  EXPECT_TRUE(m.header.truncated);
  EXPECT_FALSE(m.complete);
  EXPECT_FALSE(m.mx.empty());
  EXPECT_LT(m.mx.size(), 12u);
  // Only the header and the question are left.
  const DnsMessage bare = parse_ok(twelve_mx(kResponseFlags | 0x0200, 29));
  EXPECT_FALSE(bare.complete);
  EXPECT_TRUE(bare.question.has_value());
  EXPECT_TRUE(bare.mx.empty());
  // TC on a complete message: complete.
  const DnsMessage whole = parse_ok(twelve_mx(kResponseFlags | 0x0200, full));
  EXPECT_TRUE(whole.header.truncated);
  EXPECT_TRUE(whole.complete);
  EXPECT_EQ(whole.mx.size(), 12u);
  // The same cut without TC is an error.
  EXPECT_NE(parse_error(twelve_mx(kResponseFlags, 512)), "");
}

TEST(DnsMessage, TruncatedMessageStillRefusesMalformations) {
  DnsWireWriter w;
  w.header(3, kResponseFlags | 0x0200, 1, 2, 0, 0);
  w.question("example.com", DnsType::mx);
  w.raw(bytes("c0 0c 00 01 00 01 00 00 00 3c 00 05 01 02 03 04 05"));  // A of 5 octets
  EXPECT_NE(parse_error(w.wire()), "");
}

TEST(DnsMessage, PointerToItselfIsRefused) {
  const std::string wire = bytes("00 01 81 80 00 01 00 00 00 00 00 00 c0 0c 00 0f 00 01");
  EXPECT_NE(parse_error(wire).find("backward"), std::string::npos);
}

TEST(DnsMessage, PointerIntoItsOwnNameIsRefused) {
  // "a" then a pointer back to the "a": a.a.a.a... without end.
  const std::string wire = bytes("00 01 81 80 00 01 00 00 00 00 00 00 01 'a' c0 0c 00 0f 00 01");
  EXPECT_NE(parse_error(wire).find("backward"), std::string::npos);
}

TEST(DnsMessage, TwoPointerLoopIsRefused) {
  // A record of an unknown type carries "b" + a pointer to the "b" (octet 23); the next record's
  // owner points at it: each pointer points before itself, but the second one not before the
  // first one's target.
  const std::string wire = bytes(
      "00 01 81 80 00 00 00 02 00 00 00 00"
      "00 00 63 00 01 00 00 00 3c 00 04 01 'b' c0 17"
      "c0 17 00 01 00 01 00 00 00 3c 00 04 c0 00 02 01");
  EXPECT_NE(parse_error(wire).find("backward"), std::string::npos);
}

TEST(DnsMessage, ForwardAndOutOfBoundsPointersAreRefused) {
  // To octet 16, after the pointer (a well-formed name is there).
  EXPECT_NE(parse_error(bytes("00 01 81 80 00 01 00 00 00 00 00 00 c0 10 00 0f 00 01")).find("backward"),
            std::string::npos);
  // To 0x3fff, far past the end.
  EXPECT_NE(parse_error(bytes("00 01 81 80 00 01 00 00 00 00 00 00 ff ff 00 0f 00 01")).find("backward"),
            std::string::npos);
  // A pointer cut after its first octet.
  EXPECT_NE(parse_error(bytes("00 01 81 80 00 01 00 00 00 00 00 00 c0")), "");
}

// `hops` pointers, each to the one before it, inside an unknown record's data; the next record's
// owner points at the last one.
std::string pointer_chain(size_t hops) {
  DnsWireWriter w;
  w.header(1, kResponseFlags, 0, 2, 0, 0);
  w.record(".", 99, 60);
  const uint16_t root_at = static_cast<uint16_t>(w.wire().size());
  w.u8(0);
  uint16_t last = root_at;
  for (size_t i = 0; i < hops; ++i) {
    const auto at = static_cast<uint16_t>(w.wire().size());
    w.pointer(last);
    last = at;
  }
  w.end_rdata();
  w.pointer(last);
  w.u16(1);
  w.u16(kDnsClassIn);
  w.u32(60);
  w.u16(4);
  w.raw(bytes("c0 00 02 01"));
  return w.wire();
}

TEST(DnsMessage, PointerChainsAreBounded) {
  const DnsMessage m = parse_ok(pointer_chain(kDnsPointerHopsMax - 1));  // plus the owner's own
  ASSERT_EQ(m.addresses.size(), 1u);
  EXPECT_EQ(m.addresses[0].owner, ".");
  EXPECT_NE(parse_error(pointer_chain(kDnsPointerHopsMax)).find("too many"), std::string::npos);
}

TEST(DnsMessage, NameAndLabelLimits) {
  const std::string l63(63, 'x');
  const std::string l61(61, 'y');
  // 3 x 64 + 62 + the root's 1 = 255 octets: the longest name.
  const std::string longest = str_cat(l63, ".", l63, ".", l63, ".", l61);
  DnsWireWriter ok;
  ok.header(1, kResponseFlags, 1, 0, 0, 0);
  ok.question(longest, DnsType::a);
  EXPECT_EQ(parse_ok(ok.wire()).question->name, longest);
  // One octet more, written by hand (the encoder refuses it).
  std::string wire = bytes("00 01 81 80 00 01 00 00 00 00 00 00");
  for (int i = 0; i < 3; ++i) {
    wire += static_cast<char>(63);
    wire += l63;
  }
  wire += static_cast<char>(62);
  wire += std::string(62, 'y');
  wire += bytes("00 00 01 00 01");
  EXPECT_NE(parse_error(wire).find("255"), std::string::npos);
  // Over the limit through a pointer: a name of 192 octets + a pointer to the 255-octet one.
  DnsWireWriter joined;
  joined.header(1, kResponseFlags, 1, 1, 0, 0);
  joined.question(longest, DnsType::a);
  joined.raw(bytes("01 'z' c0 0c 00 01 00 01 00 00 00 3c 00 04 c0 00 02 01"));
  EXPECT_NE(parse_error(joined.wire()).find("255"), std::string::npos);
  // Label types 01 and 10 (a "length" of 64 or more).
  EXPECT_NE(parse_error(bytes("00 01 81 80 00 01 00 00 00 00 00 00 40 00 00 01 00 01")).find("type"),
            std::string::npos);
  EXPECT_NE(parse_error(bytes("00 01 81 80 00 01 00 00 00 00 00 00 80 00 00 01 00 01")).find("type"),
            std::string::npos);
}

TEST(DnsMessage, CountsMustMatch) {
  DnsWireWriter w;
  w.header(1, kResponseFlags, 1, 3, 0, 0);  // says 3, has 2
  w.question("example.com", DnsType::mx);
  w.mx("example.com", 60, 10, "a.example.com");
  w.mx("example.com", 60, 20, "b.example.com");
  EXPECT_NE(parse_error(w.wire()), "");
  // Counts that could never fit are refused before any record is read.
  DnsWireWriter huge;
  huge.header(1, kResponseFlags, 1, 0xffff, 0xffff, 0xffff);
  huge.question("example.com", DnsType::mx);
  EXPECT_NE(parse_error(huge.wire()).find("counts"), std::string::npos);
  // Two questions (RFC 9619).
  DnsWireWriter two;
  two.header(1, kResponseFlags, 2, 0, 0, 0);
  two.question("example.com", DnsType::mx);
  two.question("example.net", DnsType::mx);
  EXPECT_NE(parse_error(two.wire()).find("question"), std::string::npos);
  // Octets after the last record counted are ignored.
  DnsWireWriter extra;
  extra.header(1, kResponseFlags, 1, 1, 0, 0);
  extra.question("example.com", DnsType::mx);
  extra.mx("example.com", 60, 10, "a.example.com");
  extra.mx("example.com", 60, 20, "b.example.com");
  EXPECT_EQ(parse_ok(extra.wire()).mx.size(), 1u);
}

TEST(DnsMessage, ShortAndLongMessages) {
  EXPECT_NE(parse_error(""), "");
  EXPECT_NE(parse_error(bytes("00 01 81 80 00 00 00 00 00 00 00")), "");  // 11 octets
  EXPECT_TRUE(parse_ok(bytes("00 01 81 80 00 00 00 00 00 00 00 00")).mx.empty());
  EXPECT_NE(parse_error(std::string(kDnsMessageOctetsMax + 1, '\0')), "");
}

TEST(DnsMessage, RdataOfTheWrongShapeIsAnError) {
  const auto with_answer = [](std::string_view record) {
    DnsWireWriter w;
    w.header(1, kResponseFlags, 1, 1, 0, 0);
    w.question("example.com", DnsType::mx);
    w.raw(bytes(record));
    return w.wire();
  };
  EXPECT_NE(parse_error(with_answer("c0 0c 00 01 00 01 00 00 00 3c 00 05 01 02 03 04 05")), "");  // A of 5
  EXPECT_NE(parse_error(with_answer("c0 0c 00 1c 00 01 00 00 00 3c 00 04 01 02 03 04")), "");     // AAAA of 4
  EXPECT_NE(parse_error(with_answer("c0 0c 00 0f 00 01 00 00 00 3c 00 01 00")), "");              // MX of 1
  // MX whose name stops before the RDATA's end, and one whose name runs past it.
  EXPECT_NE(parse_error(with_answer("c0 0c 00 0f 00 01 00 00 00 3c 00 06 00 0a c0 0c 00 00")).find("after"),
            std::string::npos);
  EXPECT_NE(parse_error(with_answer("c0 0c 00 0f 00 01 00 00 00 3c 00 04 00 0a 04 'mail' c0 0c")), "");
  // CNAME with octets after its name; RDLENGTH past the message's end.
  EXPECT_NE(parse_error(with_answer("c0 0c 00 05 00 01 00 00 00 3c 00 03 c0 0c 00")), "");
  EXPECT_NE(parse_error(with_answer("c0 0c 00 01 00 01 00 00 00 3c 00 08 01 02 03 04")), "");
  // An SOA in the authority section without its numbers.
  DnsWireWriter soa;
  soa.header(1, kResponseFlags | 3, 1, 0, 1, 0);
  soa.question("example.com", DnsType::mx);
  soa.raw(bytes("c0 0c 00 06 00 01 00 00 00 3c 00 08 c0 0c c0 0c 00 00 00 01"));
  EXPECT_NE(parse_error(soa.wire()).find("SOA"), std::string::npos);
}

TEST(DnsMessage, WhatIsExtractedAndWhatIsSkipped) {
  DnsWireWriter w;
  w.header(1, kResponseFlags, 1, 4, 2, 2);
  w.question("example.com", DnsType::mx);
  w.mx("example.com", 0x80000001, 10, "mx.example.com");  // top bit: TTL 0 (RFC 2181 section 8)
  w.record("example.com", 16, 60);                        // TXT: skipped
  w.raw(bytes("05 'hello'"));
  w.end_rdata();
  w.record("example.com", 15, 60, true, 3);  // MX of class CH: skipped
  w.u16(5);
  w.name("chaos.example.com");
  w.end_rdata();
  w.raw(bytes("00 00 0f 00 01 00 00 00 3c 00 03 00 01 00"));  // the root's MX 1 ".": kept
  w.record("example.com", 2, 60);                             // NS in the authority section
  w.name("ns1.example.com");
  w.end_rdata();
  w.address("example.com", 60, ip("192.0.2.1"));     // an A in the authority section: not an answer
  w.address("mx.example.com", 60, ip("192.0.2.2"));  // glue in the additional section: not an answer
  w.raw(bytes("00 00 29 10 00 00 00 00 00 00 00"));  // EDNS OPT: skipped
  const DnsMessage m = parse_ok(w.wire());
  ASSERT_EQ(m.mx.size(), 2u);
  EXPECT_EQ(m.mx[0], (MxRecord{"example.com", 0, 10, "mx.example.com"}));
  EXPECT_EQ(m.mx[1], (MxRecord{".", 60, 1, "."}));
  EXPECT_TRUE(m.addresses.empty());
  EXPECT_FALSE(m.soa.has_value());
}

TEST(DnsMessage, OddOctetsInNamesAreEscaped) {
  DnsWireWriter w;
  w.header(1, kResponseFlags, 1, 0, 0, 0);
  w.raw(bytes("07 'A.b c\\d' 03 'COM' 00 00 0f 00 01"));
  const DnsMessage m = parse_ok(w.wire());
  EXPECT_EQ(m.question->name, "a\\046b\\032c\\092d.com");
  // The escaped form encodes back to the same labels (in lower case).
  EXPECT_EQ(*encode_dns_name(m.question->name), bytes("07 'a.b c\\d' 03 'com' 00"));
  EXPECT_EQ(*encode_dns_name("a\\.b.com."), bytes("03 'a.b' 03 'com' 00"));
  EXPECT_EQ(*encode_dns_name("."), bytes("00"));
}

TEST(DnsMessage, QueryEncoder) {
  EXPECT_EQ(*encode_dns_query(0xbeef, "example.com", DnsType::mx),
            bytes("be ef 01 00 00 01 00 00 00 00 00 00 07 'example' 03 'com' 00 00 0f 00 01"));
  EXPECT_EQ(*encode_dns_query(1, "mx.example.com.", DnsType::aaaa, false),
            bytes("00 01 00 00 00 01 00 00 00 00 00 00 02 'mx' 07 'example' 03 'com' 00 00 1c 00 01"));
  const DnsMessage query = parse_ok(*encode_dns_query(77, "Example.COM", DnsType::a));
  EXPECT_FALSE(query.header.response);
  EXPECT_TRUE(query.header.recursion_desired);
  EXPECT_EQ(query.header.id, 77);
  EXPECT_EQ(*query.question, (DnsQuestion{"example.com", DnsType::a, kDnsClassIn}));
  // Names the encoder refuses.
  for (const std::string& bad :
       {std::string(), std::string("a..b"), std::string(".a"), std::string(".."), std::string(64, 'x') + ".com",
        std::string("a\\"), std::string("a\\25"), std::string("a\\256"),
        str_cat(std::string(63, 'x'), ".", std::string(63, 'x'), ".", std::string(63, 'x'), ".",
                std::string(62, 'x'))}) {
    EXPECT_FALSE(encode_dns_query(1, bad, DnsType::a).ok()) << bad;
  }
}

TEST(DnsMessage, ResponseEncoderRoundTrips) {
  DnsMessage m;
  m.header = DnsHeader{0x77, true, 0, true, false, true, true, Rcode::no_error};
  m.question = DnsQuestion{"example.com", DnsType::mx, kDnsClassIn};
  m.cnames = {{"example.com", 30, "mail-domain.example.net"}};
  m.mx = {{"mail-domain.example.net", 300, 10, "mx1.example.net"},
          {"mail-domain.example.net", 300, 10, "mx2.example.net"}};
  m.addresses = {{"mx1.example.net", 40, ip("198.51.100.7")}, {"mx2.example.net", 40, ip("2001:db8::7")}};
  m.soa = example_soa(100, 200);
  for (const bool compress : {true, false}) {
    EXPECT_EQ(parse_ok(testing::encode_dns_response(m, compress)), m);
  }
}

TEST(DnsMessage, NormalizeName) {
  EXPECT_EQ(normalize_dns_name("MX.Example.COM."), "mx.example.com");
  EXPECT_EQ(normalize_dns_name("."), ".");
  EXPECT_EQ(normalize_dns_name("a\\."), "a\\.");     // an escaped dot stays
  EXPECT_EQ(normalize_dns_name("a\\\\."), "a\\\\");  // an escaped backslash, then the trailing dot
}

}  // namespace
}  // namespace sluice::resolver
