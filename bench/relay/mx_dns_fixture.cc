#include "bench/relay/mx_dns_fixture.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "engine/io/strings.h"
#include "resolver/dns_testing.h"

namespace sluice::bench {
namespace {

constexpr uint32_t kTtlS = 3600;
constexpr uint16_t kPreference = 10;
constexpr size_t kHeaderOctets = 12;
constexpr int kPollMs = 100;  // how soon the thread sees a stop
// QR, RD copied from the query, RA; rcode in the low bits.
constexpr uint16_t kFlagResponse = 0x8000;
constexpr uint16_t kFlagRecursionDesired = 0x0100;
constexpr uint16_t kFlagRecursionAvailable = 0x0080;
constexpr uint16_t kRcodeNxdomain = 3;

uint16_t read_u16(std::string_view wire, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(wire[at]) << 8 | static_cast<uint8_t>(wire[at + 1]));
}

// The question's name (lower case, dot-separated) and the offset just past its QTYPE and QCLASS;
// nullopt when the question is cut short or uses compression (a query never does).
struct Question {
  std::string name;
  uint16_t type = 0;
  size_t end = 0;
};
std::optional<Question> read_question(std::string_view wire) {
  Question question;
  size_t at = kHeaderOctets;
  while (at < wire.size()) {
    const size_t length = static_cast<uint8_t>(wire[at]);
    if (length == 0) {
      break;
    }
    if (length > 63 || at + 1 + length > wire.size()) {
      return std::nullopt;
    }
    if (!question.name.empty()) {
      question.name += '.';
    }
    question.name += to_lower(wire.substr(at + 1, length));
    at += 1 + length;
  }
  if (at + 5 > wire.size()) {
    return std::nullopt;
  }
  question.type = read_u16(wire, at + 1);
  question.end = at + 5;
  return question;
}

// "mxK.D" with 1 <= K <= count: K; otherwise 0.
size_t mx_host_number(std::string_view name, size_t count) {
  if (!name.starts_with("mx")) {
    return 0;
  }
  const size_t dot = name.find('.');
  uint32_t number = 0;
  if (dot == std::string_view::npos || !absl::SimpleAtoi(to_absl(name.substr(2, dot - 2)), &number)) {
    return 0;
  }
  return number >= 1 && number <= count ? number : 0;
}

}  // namespace

std::string mx_fixture_response(std::string_view wire, const std::vector<io::SocketAddress>& mx_addresses) {
  if (wire.size() < kHeaderOctets || (read_u16(wire, 2) & kFlagResponse) != 0 || read_u16(wire, 4) != 1) {
    return "";
  }
  const std::optional<Question> question = read_question(wire);
  if (!question) {
    return "";
  }
  using resolver::DnsType;
  const size_t host = mx_host_number(question->name, mx_addresses.size());
  const bool is_mx = question->type == static_cast<uint16_t>(DnsType::mx) && host == 0;
  const bool is_a = question->type == static_cast<uint16_t>(DnsType::a) && host != 0;
  const bool is_aaaa = question->type == static_cast<uint16_t>(DnsType::aaaa) && host != 0;
  const uint16_t answers = is_mx ? static_cast<uint16_t>(mx_addresses.size()) : is_a ? 1 : 0;
  const uint16_t rcode = is_mx || is_a || is_aaaa ? 0 : kRcodeNxdomain;
  resolver::testing::DnsWireWriter out;
  const auto flags = static_cast<uint16_t>(kFlagResponse | (read_u16(wire, 2) & kFlagRecursionDesired) |
                                           kFlagRecursionAvailable | rcode);
  out.header(read_u16(wire, 0), flags, 1, answers, 0, 0);
  out.raw(wire.substr(kHeaderOctets, question->end - kHeaderOctets));  // the question as asked
  if (is_mx) {
    for (size_t k = 1; k <= mx_addresses.size(); ++k) {
      out.mx(question->name, kTtlS, kPreference, str_cat("mx", k, ".", question->name), /*compress=*/false);
    }
  } else if (is_a) {
    out.address(question->name, kTtlS, mx_addresses[host - 1], /*compress=*/false);
  }
  return out.wire();
}

absl::StatusOr<std::unique_ptr<MxDnsFixture>> MxDnsFixture::start(std::vector<io::SocketAddress> mx_addresses) {
  for (const io::SocketAddress& address : mx_addresses) {
    if (address.family() != AF_INET) {
      return absl::InvalidArgumentError("the MX fixture serves IPv4 sink addresses only");
    }
  }
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(str_cat("DNS fixture socket: ", std::strerror(errno)));
  }
  sockaddr_in bind_to{};
  bind_to.sin_family = AF_INET;
  bind_to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sockaddr_in bound{};
  socklen_t length = sizeof(bound);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&bind_to), sizeof(bind_to)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::InternalError(str_cat("DNS fixture bind on 127.0.0.1: ", std::strerror(error)));
  }
  return std::unique_ptr<MxDnsFixture>(new MxDnsFixture(
      fd, io::SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&bound), length), std::move(mx_addresses)));
}

MxDnsFixture::MxDnsFixture(int fd, io::SocketAddress address, std::vector<io::SocketAddress> mx_addresses)
    : _fd(fd), _address(address), _mx_addresses(std::move(mx_addresses)), _thread([this] { serve(); }) {}

MxDnsFixture::~MxDnsFixture() {
  _stop.store(true, std::memory_order_relaxed);
  _thread.join();
  ::close(_fd);
}

void MxDnsFixture::serve() {
  char buffer[4096];
  while (!_stop.load(std::memory_order_relaxed)) {
    pollfd ready{_fd, POLLIN, 0};
    if (::poll(&ready, 1, kPollMs) <= 0) {
      continue;
    }
    sockaddr_storage from{};
    socklen_t from_length = sizeof(from);
    const ssize_t n = ::recvfrom(_fd, buffer, sizeof(buffer), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from),
                                 &from_length);
    if (n <= 0) {
      continue;
    }
    const std::string response = mx_fixture_response(std::string_view(buffer, static_cast<size_t>(n)), _mx_addresses);
    if (!response.empty()) {
      // A lost response is the resolver's to retry, as with any UDP server.
      (void)::sendto(_fd, response.data(), response.size(), 0, reinterpret_cast<const sockaddr*>(&from), from_length);
    }
  }
}

}  // namespace sluice::bench
