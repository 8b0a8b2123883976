#include "engine/io/address.h"

#include <arpa/inet.h>

#include <string>

#include "gtest/gtest.h"

namespace sluice::io {
namespace {

SocketAddress ip(std::string_view text, uint16_t port = 0) {
  auto address = parse_ip(text, port);
  EXPECT_TRUE(address.ok()) << text << ": " << address.status();
  return address.ok() ? *address : SocketAddress{};
}

TEST(ParseHostPort, Ipv4) {
  auto address = parse_host_port("1.2.3.4:25");
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->family(), AF_INET);
  EXPECT_EQ(address->port(), 25);
  EXPECT_EQ(address->length, sizeof(sockaddr_in));
  EXPECT_EQ(address->to_string(), "1.2.3.4:25");
  EXPECT_EQ(address->ip_string(), "1.2.3.4");
  const auto* sin = reinterpret_cast<const sockaddr_in*>(address->get());
  EXPECT_EQ(ntohl(sin->sin_addr.s_addr), 0x01020304u);
  EXPECT_EQ(ntohs(sin->sin_port), 25);
}

TEST(ParseHostPort, Ipv6) {
  auto address = parse_host_port("[::1]:2525");
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->family(), AF_INET6);
  EXPECT_EQ(address->port(), 2525);
  EXPECT_EQ(address->length, sizeof(sockaddr_in6));
  EXPECT_EQ(address->to_string(), "[::1]:2525");
  EXPECT_EQ(address->ip_string(), "::1");
  EXPECT_EQ(parse_host_port("[2001:DB8::A]:0")->to_string(), "[2001:db8::a]:0");
}

TEST(ParseHostPort, PortRange) {
  EXPECT_EQ(parse_host_port("0.0.0.0:0")->port(), 0);
  EXPECT_EQ(parse_host_port("0.0.0.0:65535")->port(), 65535);
  EXPECT_FALSE(parse_host_port("0.0.0.0:65536").ok());
  EXPECT_FALSE(parse_host_port("0.0.0.0:99999999999").ok());
  EXPECT_FALSE(parse_host_port("0.0.0.0:025").ok());
  EXPECT_FALSE(parse_host_port("0.0.0.0:-1").ok());
  EXPECT_FALSE(parse_host_port("0.0.0.0:+1").ok());
  EXPECT_FALSE(parse_host_port("0.0.0.0: 25").ok());
  EXPECT_FALSE(parse_host_port("0.0.0.0:25 ").ok());
}

TEST(ParseHostPort, ErrorsSayWhatIsWrong) {
  struct Case {
    std::string_view text;
    std::string_view expected_in_message;
  };
  const Case cases[] = {
      {"", "empty"},
      {"1.2.3.4", "missing port"},
      {"1.2.3.4:", "missing port"},
      {"::1:25", "brackets"},
      {"[::1]", "missing ':PORT'"},
      {"[::1]25", "missing ':PORT'"},
      {"[::1:25", "missing ']'"},
      {"[1.2.3.4]:25", "only for IPv6"},
      {"localhost:25", "not a numeric IP address"},
      {"[fe80::1%eth0]:25", "not a numeric IP address"},
      {"1.2.3:25", "not a valid IPv4"},
      {"1.2.3.256:25", "not a valid IPv4"},
      {"01.2.3.4:25", "not a valid IPv4"},
      {"[1:2:3:4:5:6:7:8:9]:25", "not a valid IPv6"},
      {"1.2.3.4:http", "port must be"},
  };
  for (const Case& c : cases) {
    auto address = parse_host_port(c.text);
    ASSERT_FALSE(address.ok()) << c.text;
    EXPECT_NE(std::string(address.status().message()).find(c.expected_in_message), std::string::npos)
        << c.text << " -> " << address.status().message();
  }
}

TEST(ParseHostPort, EmbeddedNulIsRejected) {
  using namespace std::string_view_literals;
  EXPECT_FALSE(parse_host_port("127.0.0.1\0junk:25"sv).ok());
  EXPECT_FALSE(parse_ip("127.0.0.1\0"sv).ok());
  EXPECT_FALSE(parse_ip("::1\0"sv).ok());
}

TEST(ParseHostOptionalPort, DefaultPortWhenBare) {
  EXPECT_EQ(parse_host_optional_port("1.2.3.4", 53)->to_string(), "1.2.3.4:53");
  EXPECT_EQ(parse_host_optional_port("1.2.3.4:8053", 53)->to_string(), "1.2.3.4:8053");
  EXPECT_EQ(parse_host_optional_port("::1", 53)->to_string(), "[::1]:53");
  EXPECT_EQ(parse_host_optional_port("[::1]", 53)->to_string(), "[::1]:53");
  EXPECT_EQ(parse_host_optional_port("[::1]:8053", 53)->to_string(), "[::1]:8053");
  EXPECT_FALSE(parse_host_optional_port("", 53).ok());
  EXPECT_FALSE(parse_host_optional_port("[1.2.3.4]", 53).ok());
  EXPECT_FALSE(parse_host_optional_port("1.2.3.4:", 53).ok());
  EXPECT_FALSE(parse_host_optional_port("example.test", 53).ok());
}

TEST(SocketAddress, EmptyIsUnspecified) {
  SocketAddress empty;
  EXPECT_EQ(empty.family(), AF_UNSPEC);
  EXPECT_EQ(empty.port(), 0);
  EXPECT_EQ(empty.to_string(), "unspecified");
}

TEST(SocketAddress, FromSockaddrAndEquality) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(4242);
  sin.sin_addr.s_addr = htonl(0x7f000001);
  const SocketAddress a = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
  EXPECT_EQ(a.to_string(), "127.0.0.1:4242");
  EXPECT_EQ(a, ip("127.0.0.1", 4242));
  EXPECT_FALSE(a == ip("127.0.0.1", 4243));
  EXPECT_FALSE(a == ip("127.0.0.2", 4242));
  EXPECT_FALSE(a == ip("::ffff:127.0.0.1", 4242));
  SocketAddress b = a;
  b.set_port(25);
  EXPECT_EQ(b.port(), 25);
}

TEST(SocketAddress, Ipv4MappedUnmaps) {
  const SocketAddress mapped = ip("::ffff:10.1.2.3", 25);
  EXPECT_TRUE(mapped.is_ipv4_mapped());
  const SocketAddress plain = mapped.unmapped();
  EXPECT_EQ(plain.family(), AF_INET);
  EXPECT_EQ(plain.to_string(), "10.1.2.3:25");
  EXPECT_FALSE(ip("::1").is_ipv4_mapped());
  EXPECT_FALSE(ip("10.1.2.3").is_ipv4_mapped());
  EXPECT_EQ(ip("::1", 7).unmapped(), ip("::1", 7));
}

TEST(Network, ParseAndToString) {
  EXPECT_EQ(Network::parse("127.0.0.0/8")->to_string(), "127.0.0.0/8");
  EXPECT_EQ(Network::parse("::1/128")->to_string(), "::1/128");
  EXPECT_EQ(Network::parse("::1")->to_string(), "::1/128");
  EXPECT_EQ(Network::parse("10.0.0.1")->to_string(), "10.0.0.1/32");
  EXPECT_EQ(Network::parse("0.0.0.0/0")->to_string(), "0.0.0.0/0");
  EXPECT_EQ(Network::parse("2001:db8::/32")->to_string(), "2001:db8::/32");
  // A mapped prefix is stored as its IPv4 form.
  auto mapped = Network::parse("::ffff:192.168.0.0/112");
  ASSERT_TRUE(mapped.ok());
  EXPECT_EQ(mapped->family(), AF_INET);
  EXPECT_EQ(mapped->to_string(), "192.168.0.0/16");
}

TEST(Network, ParseErrors) {
  for (std::string_view bad : {"", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/08", "10.0.0.0/-1",
                               "10.0.0.0/8/8", "host.example/8", "10.0.0.0 /8", "10.0.0.0/ 8"}) {
    EXPECT_FALSE(Network::parse(bad).ok()) << bad;
  }
  auto host_bits = Network::parse("10.1.2.3/8");
  ASSERT_FALSE(host_bits.ok());
  EXPECT_NE(host_bits.status().message().find("did you mean 10.0.0.0/8?"), std::string::npos)
      << host_bits.status().message();
  EXPECT_FALSE(Network::parse("2001:db8::1/64").ok());
  EXPECT_TRUE(Network::parse("10.0.0.128/25").ok());
  EXPECT_FALSE(Network::parse("10.0.0.129/25").ok());
}

TEST(Network, ContainsIpv4) {
  const Network loopback = *Network::parse("127.0.0.0/8");
  EXPECT_TRUE(loopback.contains(ip("127.0.0.1", 25)));
  EXPECT_TRUE(loopback.contains(ip("127.255.255.255")));
  EXPECT_FALSE(loopback.contains(ip("128.0.0.1")));
  EXPECT_FALSE(loopback.contains(ip("126.255.255.255")));
  EXPECT_FALSE(loopback.contains(ip("::1")));
  EXPECT_FALSE(loopback.contains(SocketAddress{}));

  const Network odd = *Network::parse("192.168.1.128/25");
  EXPECT_TRUE(odd.contains(ip("192.168.1.128")));
  EXPECT_TRUE(odd.contains(ip("192.168.1.255")));
  EXPECT_FALSE(odd.contains(ip("192.168.1.127")));

  const Network host = *Network::parse("10.0.0.7");
  EXPECT_TRUE(host.contains(ip("10.0.0.7")));
  EXPECT_FALSE(host.contains(ip("10.0.0.6")));

  const Network all = *Network::parse("0.0.0.0/0");
  EXPECT_TRUE(all.contains(ip("1.2.3.4")));
  EXPECT_TRUE(all.contains(ip("::ffff:1.2.3.4")));
  EXPECT_FALSE(all.contains(ip("2001:db8::1")));
}

TEST(Network, ContainsIpv6) {
  const Network doc = *Network::parse("2001:db8::/33");
  EXPECT_TRUE(doc.contains(ip("2001:db8::1")));
  EXPECT_TRUE(doc.contains(ip("2001:db8:7fff:ffff::1")));
  EXPECT_FALSE(doc.contains(ip("2001:db8:8000::1")));
  EXPECT_FALSE(doc.contains(ip("10.0.0.1")));

  const Network loopback6 = *Network::parse("::1/128");
  EXPECT_TRUE(loopback6.contains(ip("::1", 25)));
  EXPECT_FALSE(loopback6.contains(ip("::2")));
  EXPECT_FALSE(loopback6.contains(ip("127.0.0.1")));
}

TEST(Network, MappedClientsMatchIpv4Networks) {
  const Network loopback = *Network::parse("127.0.0.0/8");
  EXPECT_TRUE(loopback.contains(ip("::ffff:127.0.0.1", 25)));
  EXPECT_FALSE(loopback.contains(ip("::ffff:128.0.0.1", 25)));
  // A network written in mapped form matches plain IPv4 clients too.
  const Network mapped = *Network::parse("::ffff:10.0.0.0/104");
  EXPECT_TRUE(mapped.contains(ip("10.9.9.9")));
  EXPECT_TRUE(mapped.contains(ip("::ffff:10.9.9.9")));
  EXPECT_FALSE(mapped.contains(ip("11.0.0.0")));
  // ::/0 covers the mapped range, so every client.
  const Network any6 = *Network::parse("::/0");
  EXPECT_TRUE(any6.contains(ip("10.9.9.9")));
  EXPECT_TRUE(any6.contains(ip("2001:db8::1")));
  const Network narrow6 = *Network::parse("2001:db8::/32");
  EXPECT_FALSE(narrow6.contains(ip("32.1.13.184")));  // 2001:0db8 read as IPv4
}

TEST(NetworkList, DefaultRelayNetworks) {
  auto list = NetworkList::parse({"127.0.0.0/8", "::1/128"});
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->size(), 2u);
  EXPECT_EQ(list->to_string(), "127.0.0.0/8, ::1/128");
  EXPECT_TRUE(list->contains(ip("127.0.0.1")));
  EXPECT_TRUE(list->contains(ip("::1")));
  EXPECT_TRUE(list->contains(ip("::ffff:127.0.0.1")));
  EXPECT_FALSE(list->contains(ip("10.0.0.1")));
  EXPECT_FALSE(list->contains(ip("::2")));
  EXPECT_FALSE(list->contains(ip("::ffff:10.0.0.1")));
  EXPECT_FALSE(NetworkList{}.contains(ip("127.0.0.1")));
  EXPECT_TRUE(NetworkList{}.empty());
}

TEST(NetworkList, ParseReportsBadEntry) {
  auto list = NetworkList::parse({"127.0.0.0/8", "10.0.0.0/40"});
  ASSERT_FALSE(list.ok());
  EXPECT_NE(list.status().message().find("10.0.0.0/40"), std::string::npos);
}

}  // namespace
}  // namespace sluice::io
