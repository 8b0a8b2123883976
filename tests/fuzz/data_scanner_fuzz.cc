// Fuzz target for the DATA scanner and the BDAT encoder.
// 1. The input (after its first octet) is split in two at a point taken from the first octet and
//    scanned by the scalar scanner and by every SIMD scanner the CPU has: any difference in a
//    result or in the state (private carry included) traps. The same input is also scanned in
//    one piece, which must give the same totals.
// 2. The same bytes as BDAT content, in the same two chunks: if the encoder accepts them, its
//    output followed by ".\r\n" must scan as exactly one message with the same numbers, and
//    undoing the stuffing must give back the content (plus the CRLF that LAST may add).
// 3. When the first octet is odd, both again on a copy whose bare CRs and LFs were made CRLF, so
//    that unguided random input reaches the end of data and the encoder too.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/smtp/data_scanner.h"

namespace {

using sluice::smtp::BdatEncodeState;
using sluice::smtp::BdatStop;
using sluice::smtp::DataScanState;
using sluice::smtp::ScanResult;
using sluice::smtp::ScanStop;

using ScanFn = ScanResult (*)(DataScanState&, const char*, size_t);

void require(bool ok) {
  if (!ok) {
    __builtin_trap();
  }
}

struct Run {
  ScanResult first;
  ScanResult second;
  DataScanState state;
};

Run scan_two(ScanFn fn, std::string_view input, size_t cut) {
  Run run;
  run.first = fn(run.state, input.data(), cut);
  run.second = fn(run.state, input.data() + cut, input.size() - cut);
  if (run.first.stop != ScanStop::need_more) {
    require(run.second == (ScanResult{0, run.first.stop}));  // the state is final
  }
  return run;
}

void check_scanners(std::string_view input, size_t cut) {
  const Run scalar = scan_two(&sluice::smtp::scan_data_scalar, input, cut);
  const auto same = [&](const Run& other) {
    require(other.first == scalar.first && other.second == scalar.second && other.state == scalar.state);
  };
  same(scan_two(&sluice::smtp::scan_data_sse2, input, cut));
  if (sluice::smtp::cpu_has_avx2()) {
    same(scan_two(&sluice::smtp::scan_data_avx2, input, cut));
  }
  same(scan_two(static_cast<ScanFn>(&sluice::smtp::scan_data), input, cut));

  DataScanState whole;
  const ScanResult once = sluice::smtp::scan_data_scalar(whole, input.data(), input.size());
  const size_t total = scalar.first.consumed + scalar.second.consumed;
  require(once.consumed == total && whole.wire_octets == total);
  require(once.stop == (scalar.first.stop != ScanStop::need_more ? scalar.first.stop : scalar.second.stop));
  if (once.stop == ScanStop::end_of_data) {
    require(whole.body_octets == scalar.state.body_octets && whole.body_octets + 3 <= total);
    require(input.substr(whole.body_octets, 3) == ".\r\n");
    require(whole.body_octets == 0 || input.substr(whole.body_octets - 2, 2) == "\r\n");
  }
}

std::string unstuff(std::string_view wire) {
  std::string raw;
  bool at_start = true;
  for (size_t i = 0; i < wire.size(); ++i) {
    if (at_start && wire[i] == '.') {
      ++i;
    }
    raw += wire[i];
    at_start = wire[i] == '\n';
  }
  return raw;
}

void check_bdat(std::string_view content, size_t cut) {
  BdatEncodeState state;
  std::string out;
  if (sluice::smtp::bdat_encode(state, content.substr(0, cut), out) != BdatStop::ok ||
      sluice::smtp::bdat_encode(state, content.substr(cut), out) != BdatStop::ok ||
      sluice::smtp::bdat_finish(state, out) != BdatStop::ok) {
    return;  // bare CR or LF in the content: refused, nothing to compare
  }
  require(state.body_octets == out.size());
  const std::string wire = out + ".\r\n";
  DataScanState scan;
  const ScanResult r = sluice::smtp::scan_data(scan, wire.data(), wire.size());
  require(r.stop == ScanStop::end_of_data && r.consumed == wire.size());
  require(scan.body_octets == out.size());
  require(scan.stuffed_dots == state.stuffed_dots);
  require(scan.header_end_octets == state.header_end_octets);
  require(scan.has_8bit == state.has_8bit);
  require(scan.line_too_long == state.line_too_long);
  std::string expected(content);
  if (!expected.empty() && expected.back() != '\n') {
    expected += "\r\n";
  }
  require(unstuff(out) == expected);
}

// Turns every bare CR and bare LF into CRLF, so that random input also reaches the end of data
// and the BDAT path instead of stopping at the first stray newline.
std::string repair_newlines(std::string_view in) {
  std::string out;
  out.reserve(in.size() + in.size() / 8);
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\r' || in[i] == '\n') {
      out += "\r\n";
      if (in[i] == '\r' && i + 1 < in.size() && in[i + 1] == '\n') {
        ++i;
      }
    } else {
      out += in[i];
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  // The first octet picks the cut: spread over the input, with the small cuts (where the
  // terminator or a CRLF is split near the start) reached directly.
  const size_t cut = input.empty() ? 0 : (size_t{data[0]} * 257u) % (input.size() + 1);
  check_scanners(input, cut);
  check_bdat(input, cut);
  if ((data[0] & 1) != 0) {
    const std::string repaired = repair_newlines(input);
    const size_t repaired_cut = std::min(repaired.size(), cut);
    check_scanners(repaired, repaired_cut);
    check_bdat(repaired, repaired_cut);
  }
  return 0;
}
