#include "engine/smtp/proxy_protocol.h"

#include <arpa/inet.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sluice::smtp {
namespace {

using namespace std::string_literals;

constexpr std::string_view kSmtp = "EHLO client.example\r\n";
const std::string kSignature("\r\n\r\n\0\r\nQUIT\n", 12);

std::string be16(size_t value) {
  return std::string{static_cast<char>((value >> 8) & 0xff), static_cast<char>(value & 0xff)};
}

std::string v2(uint8_t version_command, uint8_t family, const std::string& payload) {
  return kSignature + static_cast<char>(version_command) + static_cast<char>(family) + be16(payload.size()) + payload;
}

std::string ipv4_bytes(const char* text) {
  in_addr address{};
  EXPECT_EQ(inet_pton(AF_INET, text, &address), 1);
  return std::string(reinterpret_cast<const char*>(&address.s_addr), 4);
}

std::string ipv6_bytes(const char* text) {
  in6_addr address{};
  EXPECT_EQ(inet_pton(AF_INET6, text, &address), 1);
  return std::string(reinterpret_cast<const char*>(address.s6_addr), 16);
}

std::string tlv(uint8_t type, const std::string& value) {
  return static_cast<char>(type) + be16(value.size()) + value;
}

std::string v2_inet4(const std::string& tlvs = "") {
  return v2(0x21, 0x11, ipv4_bytes("192.0.2.1") + ipv4_bytes("198.51.100.2") + be16(56324) + be16(25) + tlvs);
}

std::string v2_inet6(const std::string& tlvs = "") {
  return v2(0x21, 0x21, ipv6_bytes("2001:db8::1") + ipv6_bytes("2001:db8::2") + be16(65535) + be16(0) + tlvs);
}

struct ValidCase {
  std::string name;
  std::string header;
  bool use_socket_address;
  std::string source;
  std::string destination;
};

std::vector<ValidCase> valid_cases() {
  const std::string kSomeTlvs =
      tlv(0x01, "h2") + tlv(0x02, "relay.example.test") + tlv(0x04, std::string(5, '\0')) + tlv(0xe0, "");
  return {
      {"v1 tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", false, "192.0.2.1:56324", "198.51.100.2:25"},
      {"v1 tcp4 port limits", "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", false, "0.0.0.0:0",
       "255.255.255.255:65535"},
      {"v1 tcp6", "PROXY TCP6 2001:db8::1 ::1 1 25\r\n", false, "[2001:db8::1]:1", "[::1]:25"},
      {"v1 tcp6 longest",
       "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
       "65535 65535\r\n",
       false, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"},
      {"v1 tcp6 mapped", "PROXY TCP6 ::ffff:10.0.0.1 ::1 1000 25\r\n", false, "[::ffff:10.0.0.1]:1000", "[::1]:25"},
      {"v1 unknown bare", "PROXY UNKNOWN\r\n", true, "unspecified", "unspecified"},
      {"v1 unknown with addresses", "PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n", true, "unspecified",
       "unspecified"},
      {"v1 unknown longest", "PROXY UNKNOWN " + std::string(kProxyV1OctetsMax - 16, 'x') + "\r\n", true, "unspecified",
       "unspecified"},
      {"v2 inet4", v2_inet4(), false, "192.0.2.1:56324", "198.51.100.2:25"},
      {"v2 inet4 tlvs", v2_inet4(kSomeTlvs), false, "192.0.2.1:56324", "198.51.100.2:25"},
      {"v2 inet6", v2_inet6(), false, "[2001:db8::1]:65535", "[2001:db8::2]:0"},
      {"v2 inet6 tlvs", v2_inet6(kSomeTlvs), false, "[2001:db8::1]:65535", "[2001:db8::2]:0"},
      {"v2 inet4 longest", v2_inet4(tlv(0x04, std::string(1024 - 12 - 3, 'p'))), false, "192.0.2.1:56324",
       "198.51.100.2:25"},
      {"v2 local empty", v2(0x20, 0x00, ""), true, "unspecified", "unspecified"},
      {"v2 local with block", v2(0x20, 0x11, std::string(12, '\x7f') + "junk"), true, "unspecified", "unspecified"},
      {"v2 local unix family", v2(0x20, 0x31, std::string(216, 'u')), true, "unspecified", "unspecified"},
      {"v2 unspec", v2(0x21, 0x00, "ignored block"), true, "unspecified", "unspecified"},
      {"v2 unspec stream", v2(0x21, 0x01, ""), true, "unspecified", "unspecified"},
  };
}

void expect_done(const ValidCase& c, const ProxyParseResult& result) {
  ASSERT_EQ(result.status, ProxyParseStatus::done) << c.name << ": " << result.error;
  EXPECT_EQ(result.header_octets, c.header.size()) << c.name;
  EXPECT_EQ(result.use_socket_address, c.use_socket_address) << c.name;
  EXPECT_EQ(result.source.to_string(), c.source) << c.name;
  EXPECT_EQ(result.destination.to_string(), c.destination) << c.name;
  EXPECT_TRUE(result.error.empty()) << c.name;
}

TEST(ProxyProtocol, ValidHeadersAlone) {
  for (const ValidCase& c : valid_cases()) {
    expect_done(c, parse_proxy_header(c.header));
  }
}

TEST(ProxyProtocol, HeaderOctetsMarkWhereSmtpStarts) {
  for (const ValidCase& c : valid_cases()) {
    const std::string received = c.header + std::string(kSmtp);
    const ProxyParseResult result = parse_proxy_header(received);
    expect_done(c, result);
    EXPECT_EQ(received.substr(result.header_octets), kSmtp) << c.name;
  }
}

TEST(ProxyProtocol, EveryByteSplitNeedsMoreThenDone) {
  for (const ValidCase& c : valid_cases()) {
    const std::string received = c.header + std::string(kSmtp);
    for (size_t length = 0; length < c.header.size(); ++length) {
      const ProxyParseResult partial = parse_proxy_header(std::string_view(received).substr(0, length));
      ASSERT_EQ(partial.status, ProxyParseStatus::need_more) << c.name << " at " << length << ": " << partial.error;
    }
    for (size_t length = c.header.size(); length <= received.size(); ++length) {
      expect_done(c, parse_proxy_header(std::string_view(received).substr(0, length)));
    }
  }
}

TEST(ProxyProtocol, LimitsMatchTheSpec) {
  EXPECT_EQ(kProxyV1OctetsMax, 107u);
  EXPECT_EQ(kProxyV2OctetsMax, 1040u);
  const ValidCase longest_v1 = valid_cases()[7];
  ASSERT_EQ(longest_v1.header.size(), kProxyV1OctetsMax);
  const ValidCase longest_v2 = valid_cases()[12];
  ASSERT_EQ(longest_v2.header.size(), kProxyV2OctetsMax);
}

struct InvalidCase {
  std::string name;
  std::string input;
};

std::vector<InvalidCase> invalid_cases() {
  const std::string ok4 = "192.0.2.1 198.51.100.2 56324 25\r\n";
  std::vector<InvalidCase> cases = {
      // Bytes that cannot begin a PROXY header.
      {"smtp", "EHLO client.example\r\n"},
      {"http", "GET / HTTP/1.0\r\n"},
      {"lowercase", "proxy TCP4 " + ok4},
      {"proxz", "PROXZ TCP4 " + ok4},
      {"nul", "\0"s},
      {"crlf crlf then junk", "\r\n\r\nQUIT\n"},
      // v1 structure.
      {"no protocol", "PROXY \r\n"},
      {"unknown protocol", "PROXY UDP4 " + ok4},
      {"tcp lowercase", "PROXY tcp4 " + ok4},
      {"tcp5", "PROXY TCP5 " + ok4},
      {"unknownx", "PROXY UNKNOWNX\r\n"},
      {"double space after PROXY", "PROXY  TCP4 " + ok4},
      {"double space between addresses", "PROXY TCP4 192.0.2.1  198.51.100.2 56324 25\r\n"},
      {"tab separator", "PROXY TCP4\t" + ok4},
      {"trailing space", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 \r\n"},
      {"missing port", "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"},
      {"extra field", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 26\r\n"},
      {"bare lf", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\n"},
      {"cr without lf", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\rX"},
      {"cr cr lf", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\r\n"},
      {"unknown bare lf", "PROXY UNKNOWN junk\njunk\r\n"},
      {"unknown cr without lf", "PROXY UNKNOWN junk\rjunk\r\n"},
      // v1 addresses.
      {"tcp4 with ipv6", "PROXY TCP4 ::1 ::2 1 2\r\n"},
      {"tcp6 with ipv4", "PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n"},
      {"tcp4 octet 256", "PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n"},
      {"tcp4 leading zero", "PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n"},
      {"tcp4 three octets", "PROXY TCP4 192.0.2 198.51.100.2 1 2\r\n"},
      {"tcp4 name", "PROXY TCP4 localhost 198.51.100.2 1 2\r\n"},
      {"tcp6 zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"},
      {"tcp6 bad", "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"},
      {"tcp6 bracketed", "PROXY TCP6 [::1] ::1 1 2\r\n"},
      {"nul in address", "PROXY TCP4 192.0.2.1\0 198.51.100.2 1 2\r\n"s},
      {"address too long", "PROXY TCP6 " + std::string(46, '1') + " ::1 1 2\r\n"},
      // v1 ports.
      {"port 65536", "PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n"},
      {"port leading zero", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 025\r\n"},
      {"port 00", "PROXY TCP4 192.0.2.1 198.51.100.2 00 25\r\n"},
      {"port six digits", "PROXY TCP4 192.0.2.1 198.51.100.2 100000 25\r\n"},
      {"port negative", "PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n"},
      {"port plus", "PROXY TCP4 192.0.2.1 198.51.100.2 +1 25\r\n"},
      {"port hex", "PROXY TCP4 192.0.2.1 198.51.100.2 0x10 25\r\n"},
      // v1 too long: no CRLF within 107 octets.
      {"v1 108 octets", "PROXY UNKNOWN " + std::string(kProxyV1OctetsMax - 15, 'x') + "\r\n"},
      {"v1 endless", "PROXY UNKNOWN " + std::string(4096, 'x')},
      // v2 signature, version and command.
      {"v2 bad signature", "\r\n\r\n\0\r\nQUIT\r"s + std::string(20, '\0')},
      {"v2 version 1", v2(0x11, 0x11, std::string(12, '\0'))},
      {"v2 version 3", v2(0x31, 0x11, std::string(12, '\0'))},
      {"v2 command 2", v2(0x22, 0x11, std::string(12, '\0'))},
      {"v2 command f", v2(0x2f, 0x11, std::string(12, '\0'))},
      // v2 family and transport.
      {"v2 unix", v2(0x21, 0x31, std::string(216, '\0'))},
      {"v2 inet dgram", v2(0x21, 0x12, std::string(12, '\0'))},
      {"v2 inet6 dgram", v2(0x21, 0x22, std::string(36, '\0'))},
      {"v2 inet unspec transport", v2(0x21, 0x10, std::string(12, '\0'))},
      {"v2 family 4", v2(0x21, 0x41, std::string(12, '\0'))},
      {"v2 unspec dgram", v2(0x21, 0x02, "")},
      // v2 lengths.
      {"v2 inet4 short", v2(0x21, 0x11, std::string(11, '\0'))},
      {"v2 inet6 short", v2(0x21, 0x21, std::string(35, '\0'))},
      {"v2 inet6 with inet4 block", v2(0x21, 0x21, std::string(12, '\0'))},
      {"v2 1025", v2(0x21, 0x11, std::string(12, '\0') + tlv(0x04, std::string(1010, '\0')))},
      {"v2 length ffff", kSignature + "\x21\x11\xff\xff"},
      {"v2 local 1025", v2(0x20, 0x00, std::string(1025, '\0'))},
      // v2 TLVs.
      {"v2 tlv truncated header", v2_inet4("\x01\x00"s)},
      {"v2 tlv one byte", v2_inet4("\x04")},
      {"v2 tlv value overruns", v2_inet4(tlv(0x01, "h2").substr(0, 4))},
      {"v2 tlv length too big", v2_inet4("\x01\x00\x05"
                                         "ab"s)},
      {"v2 second tlv truncated", v2_inet4(tlv(0x01, "h2") + "\x02\x00\x09"
                                                             "short"s)},
  };
  return cases;
}

TEST(ProxyProtocol, MalformedIsInvalid) {
  for (const InvalidCase& c : invalid_cases()) {
    const ProxyParseResult result = parse_proxy_header(c.input);
    EXPECT_EQ(result.status, ProxyParseStatus::invalid) << c.name;
    EXPECT_FALSE(result.error.empty()) << c.name;
    EXPECT_EQ(result.header_octets, 0u) << c.name;
  }
}

// Once a prefix is invalid, every longer input is too, and no prefix is ever done: the caller can
// close the connection at the first invalid answer without waiting for more.
TEST(ProxyProtocol, InvalidIsFinalAndPrefixesNeverDone) {
  for (const InvalidCase& c : invalid_cases()) {
    bool seen_invalid = false;
    for (size_t length = 0; length <= c.input.size(); ++length) {
      const ProxyParseResult result = parse_proxy_header(std::string_view(c.input).substr(0, length));
      ASSERT_NE(result.status, ProxyParseStatus::done) << c.name << " at " << length;
      if (seen_invalid) {
        ASSERT_EQ(result.status, ProxyParseStatus::invalid) << c.name << " at " << length;
      }
      seen_invalid = result.status == ProxyParseStatus::invalid;
    }
    EXPECT_TRUE(seen_invalid) << c.name;
  }
}

TEST(ProxyProtocol, GarbageIsRejectedEarly) {
  // No need to wait for a CRLF or a whole v2 block to see these are wrong.
  EXPECT_EQ(parse_proxy_header("E").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("PROXX").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("PROXY X").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("PROXY TCP4 1.2.3.4x").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("PROXY TCP4 1.2.3.4 5.6.7.8 1a").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("PROXY TCP4 1.2.3.4 5.6.7.8 123456").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("\r\n\r\n\0\r\nQUIX"s).status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header(kSignature + "\x11").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header(kSignature + "\x21\x31").status, ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header(kSignature + "\x21\x11\x04\x01").status, ProxyParseStatus::invalid);
}

TEST(ProxyProtocol, PartialInputsNeedMore) {
  EXPECT_EQ(parse_proxy_header("").status, ProxyParseStatus::need_more);
  EXPECT_EQ(parse_proxy_header("P").status, ProxyParseStatus::need_more);
  EXPECT_EQ(parse_proxy_header("PROXY TCP").status, ProxyParseStatus::need_more);
  EXPECT_EQ(parse_proxy_header("PROXY UNKNOWN " + std::string(kProxyV1OctetsMax - 15, 'x')).status,
            ProxyParseStatus::need_more);
  // 107 octets without the CRLF can no longer become a valid v1 header.
  EXPECT_EQ(parse_proxy_header("PROXY UNKNOWN " + std::string(kProxyV1OctetsMax - 14, 'x')).status,
            ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("PROXY UNKNOWN " + std::string(kProxyV1OctetsMax - 15, 'x') + "\r").status,
            ProxyParseStatus::invalid);
  EXPECT_EQ(parse_proxy_header("\r").status, ProxyParseStatus::need_more);
  EXPECT_EQ(parse_proxy_header(kSignature).status, ProxyParseStatus::need_more);
  // A v2 header declaring 1024 octets waits for all of them.
  const std::string header = v2(0x21, 0x11, std::string(12, '\0') + tlv(0x04, std::string(1009, 'z')));
  ASSERT_EQ(header.size(), kProxyV2OctetsMax);
  EXPECT_EQ(parse_proxy_header(header.substr(0, 1039)).status, ProxyParseStatus::need_more);
  EXPECT_EQ(parse_proxy_header(header).status, ProxyParseStatus::done);
}

TEST(ProxyProtocol, V2AddressesAreByteExact) {
  const ProxyParseResult result = parse_proxy_header(v2_inet4());
  ASSERT_EQ(result.status, ProxyParseStatus::done);
  ASSERT_EQ(result.source.family(), AF_INET);
  const auto* source = reinterpret_cast<const sockaddr_in*>(result.source.get());
  EXPECT_EQ(ntohl(source->sin_addr.s_addr), 0xc0000201u);
  EXPECT_EQ(ntohs(source->sin_port), 56324);
  EXPECT_EQ(result.source.length, sizeof(sockaddr_in));
}

}  // namespace
}  // namespace sluice::smtp
