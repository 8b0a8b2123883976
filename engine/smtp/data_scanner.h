#pragma once
// The DATA scanner (DESIGN.md "The hot loop") and the BDAT wire encoder.
//
// scan_data() runs once over every buffer received during DATA: it finds the end of data
// ("\r\n.\r\n", or ".\r\n" as the very first line), rejects bare CR and bare LF (SMTP smuggling,
// CVE-2023-51764/5/6), enforces the 998-octet text line limit and notes 8-bit octets and the end
// of the header block. The body stays in wire form (dot-stuffed, CRLF): the caller appends the
// consumed bytes to the spool as they are and truncates to `body_octets` at the end.
//
// bdat_encode() turns raw BDAT (RFC 3030) chunk content into the same wire form, with the same
// statistics, so that everything downstream sees one format.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::smtp {

// RFC 5321 4.5.3.1.6: a text line is at most 998 octets, not counting its CRLF (and not counting
// the dot added by dot-stuffing).
inline constexpr uint32_t kTextLineOctetsMax = 998;

enum class ScanStop : uint8_t {
  need_more,     // every byte was consumed; the end of data has not been seen yet
  end_of_data,   // consumed ends just after the terminating ".\r\n"
  bare_newline,  // a bare CR or bare LF: the end of data can no longer be trusted
};

// Carry for one DATA transaction. A default-constructed state is "start of data, at the start of
// a line". All answers are the same however the stream is split into calls.
struct DataScanState {
  uint64_t wire_octets = 0;        // octets consumed so far, over all calls
  uint64_t body_octets = 0;        // once end_of_data: wire octets before the final ".\r\n"
                                   // (the CRLF that ends the last body line belongs to the body)
  uint64_t stuffed_dots = 0;       // body lines that start with '.': stuffing octets to remove
  int64_t header_end_octets = -1;  // wire offset just past the first empty line; -1: none yet
  bool has_8bit = false;           // an octet >= 0x80 was consumed
  bool line_too_long = false;      // a line exceeded kTextLineOctetsMax after unstuffing. Set as
                                   // soon as the consumed part of a line exceeds it (so it is
                                   // already true at need_more); scanning goes on to the end.

  // Everything, private carry included: the SIMD scanners must agree with the scalar one exactly.
  friend bool operator==(const DataScanState&, const DataScanState&) = default;

 private:
  friend struct DataScanAccess;  // the scanner implementations (data_scanner.cc)

  uint64_t _line_start_octets = 0;        // wire offset of the first octet of the current line
  bool _pending_cr = false;               // the last octet consumed was a CR (not yet bare)
  bool _line_dot = false;                 // the current line starts with '.'
  ScanStop _final = ScanStop::need_more;  // sticky once end_of_data or bare_newline was returned
};

struct ScanResult {
  size_t consumed = 0;
  ScanStop stop = ScanStop::need_more;
  friend bool operator==(const ScanResult&, const ScanResult&) = default;
};

// Scans the next piece of the DATA stream.
// * end_of_data: `consumed` includes the terminating ".\r\n"; bytes after it are the next
//   (pipelined) command.
// * bare_newline: a CR not followed by LF or an LF not preceded by CR (also across calls).
//   `consumed` stops before the octet that proved it: the bare LF itself, or the octet after a
//   bare CR (the CR is consumed). A CR at the very end of a buffer is pending, not yet bare.
// * need_more: consumed == size.
// After end_of_data or bare_newline the state is final: later calls consume nothing and return
// the same stop.
ScanResult scan_data(DataScanState& state, const char* data, size_t size);  // runtime dispatch
// The readable specification and the test oracle.
ScanResult scan_data_scalar(DataScanState& state, const char* data, size_t size);
// SIMD forms, identical answers. On CPUs without SSE2 / AVX2 (or non-x86 builds) they fall back to
// the scalar form; scan_data_avx2 must only be called when cpu_has_avx2() is true.
ScanResult scan_data_sse2(DataScanState& state, const char* data, size_t size);
ScanResult scan_data_avx2(DataScanState& state, const char* data, size_t size);

bool cpu_has_avx2();
// "avx2", "sse2" or "scalar": what scan_data() dispatches to on this machine.
const char* scan_data_dispatch_name();

inline ScanResult scan_data(DataScanState& state, std::string_view data) {
  return scan_data(state, data.data(), data.size());
}

// Carry for encoding one BDAT transaction's chunks. Its statistics mean what DataScanState's
// mean, measured on the wire form produced so far, so that scanning the output followed by
// ".\r\n" gives the same answers.
struct BdatEncodeState {
  uint64_t body_octets = 0;        // wire octets appended to `out` so far (stuffing included)
  uint64_t stuffed_dots = 0;       // dots added by stuffing
  int64_t header_end_octets = -1;  // wire offset just past the first empty line; -1: none yet
  bool has_8bit = false;
  bool line_too_long = false;  // a raw line longer than kTextLineOctetsMax (before its CRLF)

  friend bool operator==(const BdatEncodeState&, const BdatEncodeState&) = default;

 private:
  friend struct BdatEncodeAccess;

  uint64_t _line_octets = 0;   // raw octets of the current line so far, CR excluded
  bool _at_line_start = true;  // nothing of the current line has been seen yet
  bool _pending_cr = false;    // the last octet seen was a CR (already written to `out`)
  bool _failed = false;        // sticky once bare_newline was returned
};

enum class BdatStop : uint8_t { ok, bare_newline };

// Appends the wire form of `chunk` to `out`: CRLF lines with a '.' doubled at the start of every
// line. A bare CR or bare LF (also across chunks) returns bare_newline; `out` then holds an
// unspecified prefix and the transaction must be refused. Sticky, like the scanner.
BdatStop bdat_encode(BdatEncodeState& state, std::string_view chunk, std::string& out);

// At BDAT LAST. If the content did not end with CRLF, appends CRLF: the wire form needs every
// line terminated (and the terminating ".\r\n" of a relayed DATA must follow a CRLF). A CR left
// pending at the very end had no LF after it: that is a bare CR and returns bare_newline (nothing
// is appended). Empty content stays empty.
BdatStop bdat_finish(BdatEncodeState& state, std::string& out);

}  // namespace sluice::smtp
