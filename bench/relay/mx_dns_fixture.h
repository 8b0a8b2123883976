#pragma once
// A DNS server on loopback for `sluice-bench relay --mx-hosts N`: Sluice resolves the recipients'
// domain through it, as it would on the Internet, and finds N MX hosts of equal preference, one
// per sink address, so the run shows its MX rotation and per-host pools under load.
//
// Over UDP on 127.0.0.1 (port chosen at start), on a thread of its own (set-up, not the measured
// path: Sluice caches the answers, so it asks a handful of times per cell). Answers, for any
// name D: MX D -> "mx1.D" ... "mxN.D", all preference 10; A "mxK.D" -> the K-th sink address;
// AAAA of those: no records; anything else: NXDOMAIN. Each answer has TTL 3600.
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::bench {

class MxDnsFixture {
 public:
  // `mx_addresses`: IPv4, one per MX host, in host order.
  static absl::StatusOr<std::unique_ptr<MxDnsFixture>> start(std::vector<io::SocketAddress> mx_addresses);
  MxDnsFixture(const MxDnsFixture&) = delete;
  MxDnsFixture& operator=(const MxDnsFixture&) = delete;
  ~MxDnsFixture();  // stops the thread and closes the socket

  const io::SocketAddress& address() const { return _address; }  // where Sluice sends its queries

 private:
  MxDnsFixture(int fd, io::SocketAddress address, std::vector<io::SocketAddress> mx_addresses);
  void serve();

  int _fd;
  io::SocketAddress _address;
  std::vector<io::SocketAddress> _mx_addresses;
  std::atomic<bool> _stop{false};
  std::thread _thread;
};

// The response to one query `wire` (exposed for the unit test); empty when `wire` is not a query
// worth answering (too short, a response, no question).
std::string mx_fixture_response(std::string_view wire, const std::vector<io::SocketAddress>& mx_addresses);

}  // namespace sluice::bench
