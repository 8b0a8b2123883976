// Fuzz target for the PROXY protocol parser: it must never crash or read out of bounds, and its
// answers must be consistent across the ways the same bytes can arrive.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/smtp/proxy_protocol.h"

namespace {

using sluice::smtp::parse_proxy_header;
using sluice::smtp::ProxyParseResult;
using sluice::smtp::ProxyParseStatus;

void check(bool condition) {
  if (!condition) {
    std::abort();
  }
}

// Prefixes that make random bytes reach the deeper parts of the parser (the replay driver feeds
// mostly random text, which rarely begins with a PROXY signature by chance).
std::string with_prefix(uint8_t selector, std::string_view rest) {
  static const std::string kV2Signature("\r\n\r\n\0\r\nQUIT\n", 12);
  switch (selector % 8) {
    case 0:
      return std::string(rest);
    case 1:
      return "PROXY " + std::string(rest);
    case 2:
      return "PROXY TCP4 " + std::string(rest);
    case 3:
      return "PROXY TCP6 " + std::string(rest);
    case 4:
      return "PROXY TCP4 192.0.2.1 198.51.100.2 " + std::string(rest);
    case 5:
      return kV2Signature + std::string(rest);
    case 6: {
      // PROXY v4/v6 with a plausible length, so the TLV walk runs.
      std::string header = kV2Signature + (rest.size() % 2 == 0 ? "\x21\x11" : "\x21\x21");
      const size_t length = rest.size() % 1100;
      header.push_back(static_cast<char>(length >> 8));
      header.push_back(static_cast<char>(length & 0xff));
      return header + std::string(rest);
    }
    default:
      return kV2Signature + "\x20" + std::string(rest);
  }
}

void check_consistent(std::string_view input) {
  const ProxyParseResult whole = parse_proxy_header(input);
  switch (whole.status) {
    case ProxyParseStatus::done:
      check(whole.header_octets > 0 && whole.header_octets <= input.size());
      check(whole.header_octets <= sluice::smtp::kProxyV2OctetsMax);
      check(whole.error.empty());
      // The header alone gives the same answer, and every shorter prefix needs more.
      {
        const ProxyParseResult alone = parse_proxy_header(input.substr(0, whole.header_octets));
        check(alone.status == ProxyParseStatus::done);
        check(alone.header_octets == whole.header_octets);
        check(alone.source == whole.source && alone.destination == whole.destination);
        for (size_t length = 0; length < whole.header_octets; ++length) {
          check(parse_proxy_header(input.substr(0, length)).status == ProxyParseStatus::need_more);
        }
      }
      break;
    case ProxyParseStatus::need_more:
      check(input.size() < sluice::smtp::kProxyV2OctetsMax);
      check(whole.header_octets == 0);
      // Nothing shorter may be invalid: invalid is final.
      for (size_t length = 0; length < input.size(); length += 1 + length / 8) {
        check(parse_proxy_header(input.substr(0, length)).status == ProxyParseStatus::need_more);
      }
      break;
    case ProxyParseStatus::invalid:
      check(!whole.error.empty());
      check(whole.header_octets == 0);
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  check_consistent(raw);
  if (size > 0) {
    check_consistent(with_prefix(data[0], raw.substr(1)));
  }
  return 0;
}
