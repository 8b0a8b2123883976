#pragma once
// A private Postfix as the peer of `sluice-bench compare --peer postfix`: its own main.cf and
// master.cf (conf/), queue (queue/) and data directory (data/) in the cell's working directory,
// started with `postfix -c DIR start` and stopped with `postfix -c DIR stop`, then by PID. It
// never reads or touches /etc/postfix or the system's queue. Its smtpd listens on 127.0.0.1 on a
// free port; everything goes to relayhost = the sink (Postfix's relayhost takes one host: with
// several sink addresses only the first is used). Needs root (postfix start) and the postfix
// package (Debian: apt-get install postfix, debconf "No configuration").
//
// The figures: CPU is master's whole tree (every live smtpd, cleanup, qmgr, smtp...) plus what
// master reaped (services that exited during the cell); queued counts the queue files in
// maildrop, incoming, active, deferred and hold. Postfix has no fsync counter (fsyncs: none).
// RelayStart::threads is ignored: Postfix scales by processes (default_process_limit 100).
#include <memory>
#include <string>

#include "bench/relay/child_process.h"
#include "bench/relay/relay_under_test.h"

namespace sluice::bench {

inline constexpr const char* kPostfixBinary = "/usr/sbin/postfix";

// main.cf and master.cf of the private instance (exposed for the unit test).
std::string postfix_main_cf(const std::string& workdir, const io::SocketAddress& relayhost);
std::string postfix_master_cf(uint16_t smtpd_port);

std::unique_ptr<RelayUnderTest> make_postfix_relay(std::string postfix_binary = kPostfixBinary);

}  // namespace sluice::bench
