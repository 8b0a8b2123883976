// The DATA scanner and the BDAT wire encoder (see data_scanner.h).
//
// Owns: the rules for the end of data, bare CR / bare LF, the text line limit, 8-bit detection
// and the end of the header block, for both DATA (wire form in) and BDAT (raw in, wire form out).
// Must never: take anything but "\r\n.\r\n" (or ".\r\n" first) as the end of data, let a bare CR
// or LF through, or give an answer that depends on how the stream was split into buffers.
//
// The scalar scanner is the specification. The SIMD scanners look at 64-octet blocks through
// bitmasks and handle the common block (paired CRLFs, no line starting with '.', no empty line
// while the header end is unknown) in a few instructions; any other block is handed to the scalar
// scanner, which shares the same carry state, so the two can never disagree on the rare cases.
#include "engine/smtp/data_scanner.h"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#define SLUICE_SCANNER_X86 1
#else
#define SLUICE_SCANNER_X86 0
#endif

namespace sluice::smtp {

struct DataScanAccess {
  // Octets the SIMD scanners look at per step: one bit per octet in a uint64_t mask.
  static constexpr size_t kBlockOctets = 64;

  static uint64_t line_octets_limit(bool line_dot) { return kTextLineOctetsMax + (line_dot ? 1 : 0); }

  // Content octets (CR excluded) of the current, unfinished line seen so far. Called at every
  // return, so line_too_long is set as soon as a line has exceeded the limit, whatever the split.
  static void check_partial_line(DataScanState& s) {
    const uint64_t content = s.wire_octets - s._line_start_octets - (s._pending_cr ? 1 : 0);
    if (content > line_octets_limit(s._line_dot)) {
      s.line_too_long = true;
    }
  }

  // The LF at wire offset `lf_at` (after a CR) ends the current line. Returns true if the line
  // was the terminating ".".
  static bool end_line(DataScanState& s, uint64_t lf_at) {
    const uint64_t content = lf_at - 1 - s._line_start_octets;
    if (s._line_dot) {
      if (content == 1) {
        s.body_octets = s._line_start_octets;
        return true;
      }
      ++s.stuffed_dots;
    }
    if (content > line_octets_limit(s._line_dot)) {
      s.line_too_long = true;
    }
    if (content == 0 && s.header_end_octets < 0) {
      s.header_end_octets = static_cast<int64_t>(lf_at + 1);
    }
    s._line_start_octets = lf_at + 1;
    s._line_dot = false;
    return false;
  }

  static ScanResult stop(DataScanState& s, uint64_t base, size_t consumed, ScanStop why) {
    s.wire_octets = base + consumed;
    if (why == ScanStop::end_of_data) {
      s._line_start_octets = s.wire_octets;
      s._line_dot = false;
    }
    check_partial_line(s);
    s._final = why;
    return ScanResult{consumed, why};
  }

  // The specification: one octet at a time.
  static ScanResult scalar(DataScanState& s, const char* data, size_t size) {
    const uint64_t base = s.wire_octets;
    for (size_t i = 0; i < size; ++i) {
      const auto c = static_cast<unsigned char>(data[i]);
      const uint64_t at = base + i;
      if (s._pending_cr) {
        if (c != '\n') {
          return stop(s, base, i, ScanStop::bare_newline);  // the CR before this octet is bare
        }
        s._pending_cr = false;
        if (end_line(s, at)) {
          return stop(s, base, i + 1, ScanStop::end_of_data);
        }
        continue;
      }
      if (c == '\r') {
        s._pending_cr = true;  // not bare until we see what follows, maybe in the next buffer
        continue;
      }
      if (c == '\n') {
        return stop(s, base, i, ScanStop::bare_newline);  // an LF with no CR before it
      }
      if (c >= 0x80) {
        s.has_8bit = true;
      }
      if (c == '.' && at == s._line_start_octets) {
        s._line_dot = true;
      }
    }
    s.wire_octets = base + size;
    check_partial_line(s);
    return ScanResult{size, ScanStop::need_more};
  }

  static ScanResult scalar_entry(DataScanState& s, const char* data, size_t size) {
    if (s._final != ScanStop::need_more) {
      return ScanResult{0, s._final};
    }
    return scalar(s, data, size);
  }

  // One 64-octet block at s.wire_octets, given one bit per octet for LF, CR and '.'. (Octets
  // >= 0x80 of the fast blocks are gathered in a vector register and noted at the end.)
  // Returns false, with the state untouched, if the block needs the scalar scanner: an unpaired CR
  // or LF, a line starting with '.' (stuffing or the terminator), or possibly the first empty line.
  static inline bool fast_block(DataScanState& s, uint64_t lf, uint64_t cr, uint64_t dot) {
    const uint64_t block_at = s.wire_octets;
    const uint64_t cr_carry = s._pending_cr ? 1 : 0;
    // Every LF must sit right after a CR and every CR right before an LF. The last CR of the
    // block carries into the next one.
    if (lf != ((cr << 1) | cr_carry)) {
      return false;
    }
    const uint64_t line_starts = (lf << 1) | (block_at == s._line_start_octets ? 1 : 0);
    if ((line_starts & dot) != 0) {
      return false;
    }
    if (s.header_end_octets < 0) {
      // An empty line is a CR at the start of a line; its LF follows (pairing checked above).
      const bool empty_line_ends_here = cr_carry != 0 && s._line_start_octets + 1 == block_at;
      if ((line_starts & cr) != 0 || empty_line_ends_here) {
        return false;
      }
    }
    if (lf != 0) {
      // The line that began before this block ends at the first LF. Only it can be long (the
      // others fit in the block), and only it can start with '.' (checked above for the others).
      const uint64_t first_lf_at = block_at + static_cast<uint64_t>(__builtin_ctzll(lf));
      const uint64_t first_content = first_lf_at - 1 - s._line_start_octets;
      if (s._line_dot) {
        if (first_content == 1) {
          return false;  // "." then CRLF: the terminator, split across blocks
        }
        ++s.stuffed_dots;
      }
      if (first_content > line_octets_limit(s._line_dot)) {
        s.line_too_long = true;
      }
      s._line_start_octets = block_at + kBlockOctets - static_cast<uint64_t>(__builtin_clzll(lf));
      s._line_dot = false;
    }
    s._pending_cr = (cr >> 63) != 0;
    s.wire_octets = block_at + kBlockOctets;
    return true;
  }

  // The block loop shared by the SIMD forms. `Block` loads 64 octets, gives their masks and
  // ORs the fast blocks together so that 8-bit octets cost one test per call. Inlined into each
  // target function so that the loads are compiled for that instruction set.
  template <typename Block>
  static inline __attribute__((always_inline)) ScanResult blocks(DataScanState& state, const char* data, size_t size) {
    if (state._final != ScanStop::need_more) {
      return ScanResult{0, state._final};
    }
    DataScanState s = state;  // a local copy stays in registers: `data` is char and may alias
    Block block;
    size_t offset = 0;
    ScanResult r{0, ScanStop::need_more};
    while (size - offset >= kBlockOctets) {
      block.load(data + offset);
      if (fast_block(s, block.eq('\n'), block.eq('\r'), block.eq('.'))) {
        block.keep_high();
      } else {
        // Not ORed into `block`: octets after the terminator belong to the next command, so the
        // scalar scanner notes 8-bit for exactly the octets it consumes.
        r = scalar(s, data + offset, kBlockOctets);
        if (r.stop != ScanStop::need_more) {
          break;
        }
      }
      offset += kBlockOctets;
    }
    if (r.stop == ScanStop::need_more) {
      r = scalar(s, data + offset, size - offset);
    }
    if (block.any_high()) {
      s.has_8bit = true;
    }
    state = s;
    return ScanResult{offset + r.consumed, r.stop};
  }
};

ScanResult scan_data_scalar(DataScanState& state, const char* data, size_t size) {
  return DataScanAccess::scalar_entry(state, data, size);
}

#if SLUICE_SCANNER_X86

namespace {

// Block loaders for DataScanAccess::blocks: masks with one bit per octet of a 64-octet block.
class Sse2Block {
 public:
  __attribute__((target("sse2"))) Sse2Block() : _high(_mm_setzero_si128()) {}

  __attribute__((target("sse2"))) void load(const char* p) {
    for (int k = 0; k < 4; ++k) {
      _v[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * k));
    }
  }

  __attribute__((target("sse2"))) uint64_t eq(char needle) const {
    const __m128i n = _mm_set1_epi8(needle);
    uint64_t mask = 0;
    for (int k = 0; k < 4; ++k) {
      const auto bits = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(_v[k], n)));
      mask |= static_cast<uint64_t>(bits) << (16 * k);
    }
    return mask;
  }

  __attribute__((target("sse2"))) void keep_high() {
    _high = _mm_or_si128(_high, _mm_or_si128(_mm_or_si128(_v[0], _v[1]), _mm_or_si128(_v[2], _v[3])));
  }

  __attribute__((target("sse2"))) bool any_high() const { return _mm_movemask_epi8(_high) != 0; }

 private:
  __m128i _v[4];
  __m128i _high;
};

class Avx2Block {
 public:
  __attribute__((target("avx2"))) Avx2Block() : _high(_mm256_setzero_si256()) {}

  __attribute__((target("avx2"))) void load(const char* p) {
    _lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    _hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
  }

  __attribute__((target("avx2"))) uint64_t eq(char needle) const {
    const __m256i n = _mm256_set1_epi8(needle);
    const auto lo = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_lo, n)));
    const auto hi = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_hi, n)));
    return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);
  }

  __attribute__((target("avx2"))) void keep_high() { _high = _mm256_or_si256(_high, _mm256_or_si256(_lo, _hi)); }

  __attribute__((target("avx2"))) bool any_high() const { return _mm256_movemask_epi8(_high) != 0; }

 private:
  __m256i _lo;
  __m256i _hi;
  __m256i _high;
};

}  // namespace

__attribute__((target("sse2"))) ScanResult scan_data_sse2(DataScanState& state, const char* data, size_t size) {
  return DataScanAccess::blocks<Sse2Block>(state, data, size);
}

__attribute__((target("avx2"))) ScanResult scan_data_avx2(DataScanState& state, const char* data, size_t size) {
  return DataScanAccess::blocks<Avx2Block>(state, data, size);
}

bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}

#else  // not x86: the SIMD names are the scalar scanner

ScanResult scan_data_sse2(DataScanState& state, const char* data, size_t size) {
  return scan_data_scalar(state, data, size);
}
ScanResult scan_data_avx2(DataScanState& state, const char* data, size_t size) {
  return scan_data_scalar(state, data, size);
}
bool cpu_has_avx2() {
  return false;
}

#endif

namespace {

using ScanFn = ScanResult (*)(DataScanState&, const char*, size_t);

struct Dispatch {
  ScanFn fn;
  const char* name;
};

const Dispatch& dispatch() {
  // Decided once: the CPU does not change under us.
  static const Dispatch chosen = []() -> Dispatch {
#if SLUICE_SCANNER_X86
    if (cpu_has_avx2()) {
      return Dispatch{&scan_data_avx2, "avx2"};
    }
    return Dispatch{&scan_data_sse2, "sse2"};  // part of x86-64 itself
#else
    return Dispatch{&scan_data_scalar, "scalar"};
#endif
  }();
  return chosen;
}

}  // namespace

ScanResult scan_data(DataScanState& state, const char* data, size_t size) {
  return dispatch().fn(state, data, size);
}

const char* scan_data_dispatch_name() {
  return dispatch().name;
}

// ---------------------------------------------------------------------------------------------
// BDAT: raw content in, wire form out.

struct BdatEncodeAccess {
  static bool any_high_octet(const char* p, size_t n) {
    unsigned char acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc |= static_cast<unsigned char>(p[i]);  // vectorised by the compiler
    }
    return (acc & 0x80) != 0;
  }

  static BdatStop fail(BdatEncodeState& s) {
    s._failed = true;
    return BdatStop::bare_newline;
  }

  static void append(BdatEncodeState& s, std::string& out, const char* p, size_t n) {
    out.append(p, n);
    s.body_octets += n;
  }

  // The CRLF just written ends the current line.
  static void end_line(BdatEncodeState& s) {
    if (s._line_octets == 0 && s.header_end_octets < 0) {
      s.header_end_octets = static_cast<int64_t>(s.body_octets);
    }
    s._line_octets = 0;
    s._at_line_start = true;
  }

  static BdatStop encode(BdatEncodeState& s, std::string_view chunk, std::string& out) {
    if (s._failed) {
      return BdatStop::bare_newline;
    }
    const char* p = chunk.data();
    const size_t n = chunk.size();
    size_t i = 0;
    while (i < n) {
      if (s._pending_cr) {
        if (p[i] != '\n') {
          return fail(s);
        }
        s._pending_cr = false;
        append(s, out, "\n", 1);
        end_line(s);
        ++i;
        continue;
      }
      if (s._at_line_start) {
        s._at_line_start = false;
        if (p[i] == '.') {
          append(s, out, ".", 1);  // the stuffing dot; the line's own dot is copied below
          ++s.stuffed_dots;
        }
      }
      // The rest of this line in this chunk: [i, line_end), then "\r\n" or a CR at the very end.
      const auto* lf = static_cast<const char*>(std::memchr(p + i, '\n', n - i));
      const size_t run_end = lf != nullptr ? static_cast<size_t>(lf - p) : n;
      const auto* cr = static_cast<const char*>(std::memchr(p + i, '\r', run_end - i));
      size_t content_end = run_end;
      if (cr != nullptr) {
        content_end = static_cast<size_t>(cr - p);
        if (content_end + 1 != run_end) {
          return fail(s);  // a CR followed by something other than LF
        }
      } else if (lf != nullptr) {
        return fail(s);  // an LF with no CR before it
      }
      if (any_high_octet(p + i, content_end - i)) {
        s.has_8bit = true;
      }
      s._line_octets += content_end - i;
      if (s._line_octets > kTextLineOctetsMax) {
        s.line_too_long = true;
      }
      if (lf != nullptr) {
        append(s, out, p + i, run_end + 1 - i);
        end_line(s);
        i = run_end + 1;
      } else {
        append(s, out, p + i, n - i);
        s._pending_cr = cr != nullptr;
        i = n;
      }
    }
    return BdatStop::ok;
  }

  static BdatStop finish(BdatEncodeState& s, std::string& out) {
    if (s._failed) {
      return BdatStop::bare_newline;
    }
    if (s._pending_cr) {
      return fail(s);  // the content ended with a CR that no LF followed
    }
    if (!s._at_line_start) {
      append(s, out, "\r\n", 2);
      end_line(s);
    }
    return BdatStop::ok;
  }
};

BdatStop bdat_encode(BdatEncodeState& state, std::string_view chunk, std::string& out) {
  return BdatEncodeAccess::encode(state, chunk, out);
}

BdatStop bdat_finish(BdatEncodeState& state, std::string& out) {
  return BdatEncodeAccess::finish(state, out);
}

}  // namespace sluice::smtp
