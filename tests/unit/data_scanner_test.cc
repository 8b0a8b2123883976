// Tests for the DATA scanner and the BDAT encoder: the rules one by one, every split point of the
// terminator, smuggling sequences, and the property that the scalar, SSE2 and AVX2 scanners agree
// exactly (results and full state) on random and adversarial input split in every way. A second,
// line-oriented reference written independently checks the scalar scanner itself.
#include "engine/smtp/data_scanner.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::smtp {
namespace {

using ScanFn = ScanResult (*)(DataScanState&, const char*, size_t);

// "." + line, spelled so that GCC 12's -Wrestrict false positive on `"." + std::string` stays away.
std::string dotted(std::string line) {
  line.insert(line.begin(), '.');
  return line;
}

struct Variant {
  const char* name;
  ScanFn fn;
};

void PrintTo(const Variant& v, std::ostream* os) {
  *os << v.name;
}

// Every scanner this CPU can run; the dispatched one too.
std::vector<Variant> variants() {
  std::vector<Variant> all = {{"scalar", &scan_data_scalar}, {"sse2", &scan_data_sse2}};
  if (cpu_has_avx2()) {
    all.push_back({"avx2", &scan_data_avx2});
  }
  all.push_back({"dispatch", static_cast<ScanFn>(&scan_data)});
  return all;
}

// What a whole stream scanned in one or more calls adds up to.
struct Outcome {
  size_t consumed = 0;
  ScanStop stop = ScanStop::need_more;
  DataScanState state;
};

Outcome scan_pieces(ScanFn fn, std::string_view input, const std::vector<size_t>& cuts) {
  Outcome out;
  size_t from = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t to = i < cuts.size() ? cuts[i] : input.size();
    const ScanResult r = fn(out.state, input.data() + from, to - from);
    out.consumed += r.consumed;
    out.stop = r.stop;
    if (r.stop != ScanStop::need_more) {
      return out;
    }
    EXPECT_EQ(r.consumed, to - from);
    from = to;
  }
  return out;
}

Outcome scan_whole(ScanFn fn, std::string_view input) {
  return scan_pieces(fn, input, {});
}

// An independent reference: walks the input line by line with find_first_of.
struct Reference {
  size_t consumed = 0;
  ScanStop stop = ScanStop::need_more;
  uint64_t body_octets = 0;
  uint64_t stuffed_dots = 0;
  int64_t header_end_octets = -1;
  bool has_8bit = false;
  bool line_too_long = false;
};

Reference reference(std::string_view in) {
  Reference ref;
  size_t pos = 0;
  const auto content = [&](size_t from, size_t to) {
    for (size_t k = from; k < to; ++k) {
      if (static_cast<unsigned char>(in[k]) >= 0x80) {
        ref.has_8bit = true;
      }
    }
    const bool dot = to > from && in[from] == '.';
    if (to - from > kTextLineOctetsMax + (dot ? 1u : 0u)) {
      ref.line_too_long = true;
    }
    return dot;
  };
  while (true) {
    const size_t k = in.find_first_of("\r\n", pos);
    if (k == std::string_view::npos) {
      content(pos, in.size());
      ref.consumed = in.size();
      return ref;
    }
    if (in[k] == '\n') {
      content(pos, k);
      ref.consumed = k;
      ref.stop = ScanStop::bare_newline;
      return ref;
    }
    if (k + 1 == in.size()) {
      content(pos, k);
      ref.consumed = in.size();
      return ref;
    }
    if (in[k + 1] != '\n') {
      content(pos, k);
      ref.consumed = k + 1;
      ref.stop = ScanStop::bare_newline;
      return ref;
    }
    if (in.substr(pos, k - pos) == ".") {
      ref.body_octets = pos;
      ref.consumed = k + 2;
      ref.stop = ScanStop::end_of_data;
      return ref;
    }
    if (content(pos, k)) {
      ++ref.stuffed_dots;
    }
    if (k == pos && ref.header_end_octets < 0) {
      ref.header_end_octets = static_cast<int64_t>(k + 2);
    }
    pos = k + 2;
  }
}

void expect_matches_reference(const Outcome& got, std::string_view input, const std::string& label) {
  const Reference ref = reference(input);
  EXPECT_EQ(got.consumed, ref.consumed) << label;
  EXPECT_EQ(got.stop, ref.stop) << label;
  EXPECT_EQ(got.state.wire_octets, ref.consumed) << label;
  if (ref.stop == ScanStop::end_of_data) {
    EXPECT_EQ(got.state.body_octets, ref.body_octets) << label;
  }
  EXPECT_EQ(got.state.stuffed_dots, ref.stuffed_dots) << label;
  EXPECT_EQ(got.state.header_end_octets, ref.header_end_octets) << label;
  EXPECT_EQ(got.state.has_8bit, ref.has_8bit) << label;
  EXPECT_EQ(got.state.line_too_long, ref.line_too_long) << label;
}

std::string describe(const DataScanState& s) {
  return "wire=" + std::to_string(s.wire_octets) + " body=" + std::to_string(s.body_octets) +
         " stuffed=" + std::to_string(s.stuffed_dots) + " header_end=" + std::to_string(s.header_end_octets) +
         " 8bit=" + std::to_string(s.has_8bit) + " too_long=" + std::to_string(s.line_too_long);
}

// Runs every variant over `input` cut at `cuts`; they must agree call by call, state included.
// Returns the number of mismatches (so property loops can stop at the first).
int check_agreement(std::string_view input, const std::vector<size_t>& cuts) {
  int mismatches = 0;
  const std::vector<Variant> all = variants();
  std::vector<DataScanState> states(all.size());
  size_t from = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t to = i < cuts.size() ? cuts[i] : input.size();
    const ScanResult expected = all[0].fn(states[0], input.data() + from, to - from);
    for (size_t v = 1; v < all.size(); ++v) {
      const ScanResult got = all[v].fn(states[v], input.data() + from, to - from);
      if (!(got == expected) || !(states[v] == states[0])) {
        ADD_FAILURE() << all[v].name << " differs from scalar on piece " << i << " [" << from << ", " << to << ") of "
                      << input.size() << " octets; consumed " << got.consumed << " vs " << expected.consumed << "; "
                      << describe(states[v]) << " vs " << describe(states[0]);
        ++mismatches;
      }
    }
    if (expected.stop != ScanStop::need_more) {
      break;
    }
    from = to;
  }
  return mismatches;
}

// ------------------------------------------------------------------------------------------
// The rules, on every variant.

class ScannerRules : public ::testing::TestWithParam<Variant> {};

TEST_P(ScannerRules, EmptyBodyIsTheTerminatorAlone) {
  const std::string input = ".\r\nQUIT\r\n";
  const Outcome o = scan_whole(GetParam().fn, input);
  EXPECT_EQ(o.stop, ScanStop::end_of_data);
  EXPECT_EQ(o.consumed, 3u);
  EXPECT_EQ(o.state.body_octets, 0u);
  EXPECT_EQ(o.state.stuffed_dots, 0u);
  EXPECT_EQ(o.state.header_end_octets, -1);
}

TEST_P(ScannerRules, SimpleMessageWithPipelinedCommand) {
  const std::string message = "Subject: hi\r\n\r\nbody line\r\n";
  const std::string input = message + ".\r\nMAIL FROM:<a@b>\r\n";
  const Outcome o = scan_whole(GetParam().fn, input);
  EXPECT_EQ(o.stop, ScanStop::end_of_data);
  EXPECT_EQ(o.consumed, message.size() + 3);
  EXPECT_EQ(o.state.wire_octets, message.size() + 3);
  EXPECT_EQ(o.state.body_octets, message.size());
  EXPECT_EQ(o.state.header_end_octets, 15);
  EXPECT_FALSE(o.state.has_8bit);
  EXPECT_FALSE(o.state.line_too_long);
}

TEST_P(ScannerRules, TerminatorAtEverySplitPoint) {
  const std::string message = "From: a\r\n\r\n.. stuffed\r\nlast";
  const std::string input = message + "\r\n.\r\nRSET\r\n";
  const size_t end = message.size() + 5;
  for (size_t cut = 0; cut <= input.size(); ++cut) {
    const Outcome o = scan_pieces(GetParam().fn, input, {cut});
    EXPECT_EQ(o.stop, ScanStop::end_of_data) << cut;
    EXPECT_EQ(o.consumed, end) << cut;
    EXPECT_EQ(o.state.body_octets, message.size() + 2) << cut;
    EXPECT_EQ(o.state.stuffed_dots, 1u) << cut;
    EXPECT_EQ(o.state.header_end_octets, 11) << cut;
  }
  // And one octet per call.
  std::vector<size_t> every;
  for (size_t cut = 1; cut < input.size(); ++cut) {
    every.push_back(cut);
  }
  const Outcome o = scan_pieces(GetParam().fn, input, every);
  EXPECT_EQ(o.stop, ScanStop::end_of_data);
  EXPECT_EQ(o.consumed, end);
  EXPECT_EQ(o.state.body_octets, message.size() + 2);
}

TEST_P(ScannerRules, TerminatorAtEveryBlockAlignment) {
  // The SIMD scanners work in 64-octet blocks: put each octet of "\r\n.\r\n" on each block edge,
  // with plenty after it so that the blocks are full, and a stuffed line just before.
  for (size_t pad = 0; pad < 200; ++pad) {
    const std::string body = "\r\n" + std::string(pad, 'a') + "\r\n.." + std::string(pad % 7, 'b') + "\r\n";
    const std::string input = body + ".\r\n" + std::string(200, 'Q');
    const Outcome o = scan_whole(GetParam().fn, input);
    EXPECT_EQ(o.stop, ScanStop::end_of_data) << pad;
    EXPECT_EQ(o.consumed, body.size() + 3) << pad;
    EXPECT_EQ(o.state.body_octets, body.size()) << pad;
    EXPECT_EQ(o.state.stuffed_dots, 1u) << pad;
    // A line "." followed by more octets is a stuffed line, not the end.
    const std::string not_end = body + ".x\r\n" + std::string(200, 'Q');
    EXPECT_EQ(scan_whole(GetParam().fn, not_end).stop, ScanStop::need_more) << pad;
  }
}

TEST_P(ScannerRules, TerminatorSplitAsDotThenCrlf) {
  DataScanState state;
  const std::string first = "line\r\n.";
  const ScanResult a = GetParam().fn(state, first.data(), first.size());
  EXPECT_EQ(a, (ScanResult{first.size(), ScanStop::need_more}));
  const ScanResult b = GetParam().fn(state, "\r\nX", 3);
  EXPECT_EQ(b, (ScanResult{2, ScanStop::end_of_data}));
  EXPECT_EQ(state.body_octets, 6u);
  EXPECT_EQ(state.wire_octets, 9u);
}

TEST_P(ScannerRules, StateIsFinalAfterTheEnd) {
  DataScanState state;
  EXPECT_EQ(GetParam().fn(state, ".\r\n", 3), (ScanResult{3, ScanStop::end_of_data}));
  EXPECT_EQ(GetParam().fn(state, "abc\r\n", 5), (ScanResult{0, ScanStop::end_of_data}));
  DataScanState bad;
  EXPECT_EQ(GetParam().fn(bad, "a\nb", 3), (ScanResult{1, ScanStop::bare_newline}));
  EXPECT_EQ(GetParam().fn(bad, "abc\r\n", 5), (ScanResult{0, ScanStop::bare_newline}));
  EXPECT_EQ(bad.wire_octets, 1u);
}

TEST_P(ScannerRules, SmugglingSequencesAreBareNewlines) {
  // Each of these has been taken as the end of data by some MTA (CVE-2023-51764/5/6).
  const std::vector<std::string> tails = {"\n.\n",   "\n.\r\n", "\r.\r",    "\r\n.\n", "\r\n.\r",
                                          "\r.\r\n", ".\n",     "\r\n.\rX", "\r\r\n",  "\n\r\n.\r\n"};
  for (const std::string& tail : tails) {
    const std::string input = "Subject: x\r\n\r\nbody" + tail + "MAIL FROM:<evil@x>\r\n\r\n.\r\n";
    const Outcome o = scan_whole(GetParam().fn, input);
    EXPECT_EQ(o.stop, ScanStop::bare_newline) << testing::PrintToString(tail);
    EXPECT_LE(o.consumed, 20u + tail.size()) << testing::PrintToString(tail);
    for (size_t cut = 0; cut <= input.size(); ++cut) {
      EXPECT_EQ(scan_pieces(GetParam().fn, input, {cut}).stop, ScanStop::bare_newline);
    }
  }
}

TEST_P(ScannerRules, BareNewlinePositions) {
  EXPECT_EQ(scan_whole(GetParam().fn, "\n").consumed, 0u);
  EXPECT_EQ(scan_whole(GetParam().fn, "ab\ncd").consumed, 2u);    // stops at the LF
  EXPECT_EQ(scan_whole(GetParam().fn, "ab\rcd").consumed, 3u);    // stops after the bare CR
  EXPECT_EQ(scan_whole(GetParam().fn, "ab\r\rcd").consumed, 3u);  // the second CR proves the first bare
  EXPECT_EQ(scan_whole(GetParam().fn, ".\r.").consumed, 2u);
}

TEST_P(ScannerRules, PendingCrAtTheEndIsNotYetBare) {
  DataScanState state;
  EXPECT_EQ(GetParam().fn(state, "abc\r", 4), (ScanResult{4, ScanStop::need_more}));
  EXPECT_EQ(GetParam().fn(state, "\n", 1), (ScanResult{1, ScanStop::need_more}));
  EXPECT_EQ(GetParam().fn(state, "x\r", 2), (ScanResult{2, ScanStop::need_more}));
  EXPECT_EQ(GetParam().fn(state, "y", 1), (ScanResult{0, ScanStop::bare_newline}));
  EXPECT_EQ(state.wire_octets, 7u);
}

TEST_P(ScannerRules, DotStuffedLines) {
  const std::string body = "..leading\r\n. space\r\n..\r\nmid.dle\r\n...\r\n";
  const Outcome o = scan_whole(GetParam().fn, body + ".\r\n");
  EXPECT_EQ(o.stop, ScanStop::end_of_data);
  EXPECT_EQ(o.state.body_octets, body.size());
  EXPECT_EQ(o.state.stuffed_dots, 4u);
}

TEST_P(ScannerRules, LineLengthLimit) {
  const auto run = [&](const std::string& line) {
    return scan_whole(GetParam().fn, "h: v\r\n\r\n" + line + "\r\n.\r\n");
  };
  const std::string l998(998, 'a');
  EXPECT_FALSE(run(l998).state.line_too_long);
  EXPECT_TRUE(run(l998 + "a").state.line_too_long);
  EXPECT_FALSE(run(dotted(l998)).state.line_too_long);  // 999 on the wire, 998 unstuffed
  EXPECT_TRUE(run(dotted(l998 + "a")).state.line_too_long);
  EXPECT_TRUE(run(std::string(5000, 'b')).state.line_too_long);
  EXPECT_EQ(run(l998 + "a").stop, ScanStop::end_of_data);  // scanning goes on to the end
  // Exactly at the limit as the first line, and as a header line (no empty line).
  EXPECT_FALSE(scan_whole(GetParam().fn, l998 + "\r\n.\r\n").state.line_too_long);
  EXPECT_TRUE(scan_whole(GetParam().fn, l998 + "x\r\n.\r\n").state.line_too_long);
}

TEST_P(ScannerRules, LongLineIsSeenBeforeItsEnd) {
  DataScanState state;
  const std::string part(999, 'z');
  EXPECT_EQ(GetParam().fn(state, part.data(), 998).stop, ScanStop::need_more);
  EXPECT_FALSE(state.line_too_long);
  EXPECT_EQ(GetParam().fn(state, part.data(), 1).stop, ScanStop::need_more);
  EXPECT_TRUE(state.line_too_long);
}

TEST_P(ScannerRules, HeaderEnd) {
  EXPECT_EQ(scan_whole(GetParam().fn, "\r\nbody\r\n.\r\n").state.header_end_octets, 2);
  EXPECT_EQ(scan_whole(GetParam().fn, "a: b\r\nc: d\r\n\r\nx\r\n\r\n.\r\n").state.header_end_octets, 14);
  EXPECT_EQ(scan_whole(GetParam().fn, "a: b\r\nno empty line\r\n.\r\n").state.header_end_octets, -1);
  // Header end found in the middle of a long stream, past the first 64-octet blocks.
  const std::string headers = std::string(300, 'h') + "\r\n" + std::string(70, 'i') + "\r\n";
  EXPECT_EQ(scan_whole(GetParam().fn, headers + "\r\n" + std::string(200, 'b') + "\r\n.\r\n").state.header_end_octets,
            static_cast<int64_t>(headers.size() + 2));
}

TEST_P(ScannerRules, EightBit) {
  EXPECT_FALSE(scan_whole(GetParam().fn, std::string(200, 'a') + "\r\n.\r\n").state.has_8bit);
  std::string input = std::string(200, 'a') + "\r\n.\r\n";
  input[130] = static_cast<char>(0xC3);
  EXPECT_TRUE(scan_whole(GetParam().fn, input).state.has_8bit);
  // After the terminator does not count: that is the next command.
  EXPECT_FALSE(scan_whole(GetParam().fn, "a\r\n.\r\n\xff").state.has_8bit);
}

INSTANTIATE_TEST_SUITE_P(AllScanners, ScannerRules, ::testing::ValuesIn(variants()),
                         [](const testing::TestParamInfo<Variant>& info) { return std::string(info.param.name); });

// ------------------------------------------------------------------------------------------
// Property tests: scalar == SSE2 == AVX2, and scalar == the line reference.

class Generator {
 public:
  explicit Generator(uint64_t seed) : _rng(seed) {}

  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(_rng() % n); }
  bool chance(unsigned percent) { return below(100) < percent; }

  // Octets drawn from an alphabet heavy in the characters that matter.
  std::string noise(size_t length) {
    static constexpr std::string_view kAlphabet = "\r\n.\r\n.\r\n..\x80\xff a\r\n\xc3";
    std::string s(length, ' ');
    for (char& c : s) {
      c = kAlphabet[below(kAlphabet.size())];
    }
    return s;
  }

  std::string line_of(size_t length) {
    std::string s(length, 'x');
    for (char& c : s) {
      const size_t r = below(100);
      c = r < 3 ? '.' : r < 5 ? static_cast<char>(0x80 + below(128)) : static_cast<char>('a' + below(26));
    }
    if (length > 0 && chance(15)) {
      s[0] = '.';
    }
    return s;
  }

  std::string base64_block(size_t lines) {
    static constexpr std::string_view kB64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string s;
    for (size_t l = 0; l < lines; ++l) {
      for (int k = 0; k < 76; ++k) {
        s += kB64[below(kB64.size())];
      }
      s += "\r\n";
    }
    return s;
  }

  // A mostly well-formed DATA stream: headers, an empty line, body lines of many kinds, the
  // terminator and a pipelined command, with a few faults sprinkled in.
  std::string message() {
    std::string s;
    const size_t headers = below(6);
    for (size_t h = 0; h < headers; ++h) {
      s += "X-H" + std::to_string(h) + ": " + line_of(below(90)) + "\r\n";
    }
    if (chance(80)) {
      s += "\r\n";
    }
    const size_t parts = below(12);
    for (size_t p = 0; p < parts; ++p) {
      switch (below(7)) {
        case 0:
          s += base64_block(1 + below(8));
          break;
        case 1:
          s += line_of(kTextLineOctetsMax - 2 + below(5)) + "\r\n";  // 996..1000
          break;
        case 2:
          s += '.';
          s += line_of(kTextLineOctetsMax - 2 + below(5)) + "\r\n";
          break;
        case 3:
          s += "\r\n";
          break;
        case 4:
          s += '.';
          s += line_of(below(4)) + "\r\n";
          break;
        case 5:
          s += noise(below(6)) + "\r\n";  // usually a fault
          break;
        default:
          s += line_of(below(120)) + "\r\n";
          break;
      }
    }
    if (chance(90)) {
      s += ".\r\n";
    }
    if (chance(50)) {
      s += "QUIT\r\n";
    }
    if (chance(10) && !s.empty()) {
      s[below(s.size())] = chance(50) ? '\n' : '\r';  // a single injected bare newline
    }
    return s;
  }

  std::vector<size_t> random_cuts(size_t size) {
    std::vector<size_t> cuts;
    size_t at = 0;
    while (true) {
      at += chance(30) ? below(4) : below(200);
      if (at >= size) {
        return cuts;
      }
      cuts.push_back(at);
    }
  }

 private:
  std::mt19937_64 _rng;
};

TEST(ScannerProperty, ScalarMatchesTheLineReference) {
  Generator gen(1);
  for (int i = 0; i < 3000; ++i) {
    const std::string input = i % 4 == 0 ? gen.noise(gen.below(300)) : gen.message();
    expect_matches_reference(scan_whole(&scan_data_scalar, input), input, "input " + std::to_string(i));
    expect_matches_reference(scan_pieces(&scan_data_scalar, input, gen.random_cuts(input.size())), input,
                             "pieces " + std::to_string(i));
    if (HasFailure()) {
      return;
    }
  }
}

TEST(ScannerProperty, SimdMatchesScalarSplitInTwoAtEveryOffset) {
  Generator gen(2);
  int reached_end = 0;
  for (int i = 0; i < 150; ++i) {
    const std::string input = i % 5 == 0 ? gen.noise(gen.below(400)) : gen.message();
    reached_end += scan_whole(&scan_data_scalar, input).stop == ScanStop::end_of_data ? 1 : 0;
    for (size_t cut = 0; cut <= input.size(); ++cut) {
      if (check_agreement(input, {cut}) != 0) {
        return;
      }
    }
  }
  EXPECT_GT(reached_end, 50);  // the generator must exercise the end of data, not only faults
}

TEST(ScannerProperty, SimdMatchesScalarInManyRandomPieces) {
  Generator gen(3);
  for (int i = 0; i < 4000; ++i) {
    const std::string input = i % 5 == 0 ? gen.noise(gen.below(2000)) : gen.message();
    if (check_agreement(input, gen.random_cuts(input.size())) != 0 || check_agreement(input, {}) != 0) {
      return;
    }
  }
}

TEST(ScannerProperty, SimdMatchesScalarOnCleanLongStreams) {
  // Long fault-free streams: mostly fast blocks, with the terminator at every alignment.
  Generator gen(4);
  for (int i = 0; i < 200; ++i) {
    std::string input = "Subject: x\r\n\r\n" + std::string(gen.below(64), 'p') + "\r\n";
    while (input.size() < 20000) {
      input += gen.chance(50) ? gen.base64_block(3) : gen.line_of(gen.below(1100)) + "\r\n";
    }
    input += ".\r\n";
    const Outcome o = scan_whole(&scan_data_scalar, input);
    ASSERT_EQ(o.stop, ScanStop::end_of_data);
    ASSERT_EQ(o.consumed, input.size());
    expect_matches_reference(o, input, "long " + std::to_string(i));
    if (check_agreement(input, {}) != 0 || check_agreement(input, gen.random_cuts(input.size())) != 0) {
      return;
    }
  }
}

// ------------------------------------------------------------------------------------------
// BDAT.

struct Encoded {
  BdatStop stop = BdatStop::ok;
  std::string out;
  BdatEncodeState state;
};

Encoded encode(std::string_view content, const std::vector<size_t>& cuts, bool finish = true) {
  Encoded e;
  size_t from = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t to = i < cuts.size() ? cuts[i] : content.size();
    e.stop = bdat_encode(e.state, content.substr(from, to - from), e.out);
    if (e.stop != BdatStop::ok) {
      return e;
    }
    from = to;
  }
  if (finish) {
    e.stop = bdat_finish(e.state, e.out);
  }
  return e;
}

// Removes dot-stuffing: the inverse of the encoder for well-formed content.
std::string unstuff(std::string_view wire) {
  std::string raw;
  bool at_start = true;
  for (size_t i = 0; i < wire.size(); ++i) {
    if (at_start && wire[i] == '.') {
      ++i;  // the stuffing dot; the next octet is the line's own dot
    }
    raw += wire[i];
    at_start = wire[i] == '\n';
  }
  return raw;
}

// The encoder's output followed by ".\r\n" must scan as exactly one message, same numbers.
void expect_scans_back(const Encoded& e, const std::string& label) {
  ASSERT_EQ(e.stop, BdatStop::ok) << label;
  EXPECT_EQ(e.state.body_octets, e.out.size()) << label;
  const std::string wire = e.out + ".\r\n";
  const Outcome o = scan_whole(&scan_data, wire);
  EXPECT_EQ(o.stop, ScanStop::end_of_data) << label;
  EXPECT_EQ(o.consumed, wire.size()) << label;
  EXPECT_EQ(o.state.body_octets, e.out.size()) << label;
  EXPECT_EQ(o.state.stuffed_dots, e.state.stuffed_dots) << label;
  EXPECT_EQ(o.state.header_end_octets, e.state.header_end_octets) << label;
  EXPECT_EQ(o.state.has_8bit, e.state.has_8bit) << label;
  EXPECT_EQ(o.state.line_too_long, e.state.line_too_long) << label;
}

TEST(Bdat, StuffsLeadingDots) {
  const Encoded e = encode("Subject: x\r\n\r\n.\r\n..two\r\nmid.dot\r\n.", {});
  EXPECT_EQ(e.stop, BdatStop::ok);
  EXPECT_EQ(e.out, "Subject: x\r\n\r\n..\r\n...two\r\nmid.dot\r\n..\r\n");
  EXPECT_EQ(e.state.stuffed_dots, 3u);
  EXPECT_EQ(e.state.header_end_octets, 14);
  expect_scans_back(e, "stuffing");
}

TEST(Bdat, FinishAddsCrlfOnlyWhenMissing) {
  EXPECT_EQ(encode("a\r\n", {}).out, "a\r\n");
  EXPECT_EQ(encode("a", {}).out, "a\r\n");
  EXPECT_EQ(encode("", {}).out, "");
  EXPECT_EQ(encode("", {}).state.body_octets, 0u);
  expect_scans_back(encode("", {}), "empty");
  expect_scans_back(encode("no newline at all", {}), "unterminated");
}

TEST(Bdat, BareNewlines) {
  for (const std::string_view bad : {"a\nb", "a\rb", "\n", "x\r\r\n", "ok\r\n.\n", "a\r\n\n"}) {
    for (size_t cut = 0; cut <= bad.size(); ++cut) {
      EXPECT_EQ(encode(bad, {cut}).stop, BdatStop::bare_newline) << testing::PrintToString(std::string(bad));
    }
  }
  // A CR at the very end of a chunk waits for the next chunk; at LAST it is bare.
  BdatEncodeState state;
  std::string out;
  EXPECT_EQ(bdat_encode(state, "abc\r", out), BdatStop::ok);
  EXPECT_EQ(bdat_finish(state, out), BdatStop::bare_newline);
  EXPECT_EQ(bdat_encode(state, "\n", out), BdatStop::bare_newline);  // sticky
}

TEST(Bdat, LineLimitAndEightBit) {
  EXPECT_FALSE(encode(std::string(998, 'a') + "\r\n", {}).state.line_too_long);
  EXPECT_TRUE(encode(std::string(999, 'a') + "\r\n", {}).state.line_too_long);
  EXPECT_FALSE(encode(dotted(std::string(997, 'a')) + "\r\n", {}).state.line_too_long);
  EXPECT_TRUE(encode(dotted(std::string(998, 'a')) + "\r\n", {}).state.line_too_long);
  EXPECT_TRUE(encode("x\xe9y\r\n", {}).state.has_8bit);
  EXPECT_FALSE(encode("plain\r\n", {}).state.has_8bit);
  expect_scans_back(encode(dotted(std::string(998, 'a')) + "\r\n\xff", {500}), "long stuffed");
}

TEST(Bdat, EveryChunkSplitGivesTheSameWireForm) {
  Generator gen(5);
  for (int i = 0; i < 300; ++i) {
    std::string content = gen.message();
    const Encoded whole = encode(content, {});
    for (size_t cut = 0; cut <= content.size(); ++cut) {
      const Encoded split = encode(content, {cut});
      ASSERT_EQ(split.stop, whole.stop) << i << " " << cut;
      if (whole.stop == BdatStop::ok) {
        ASSERT_EQ(split.out, whole.out) << i << " " << cut;
        ASSERT_EQ(split.state, whole.state) << i << " " << cut;
      }
    }
    const Encoded pieces = encode(content, gen.random_cuts(content.size()));
    ASSERT_EQ(pieces.stop, whole.stop);
    if (whole.stop == BdatStop::ok) {
      expect_scans_back(whole, "message " + std::to_string(i));
      std::string expected_raw = content;
      if (!expected_raw.empty() && expected_raw.back() != '\n') {
        expected_raw += "\r\n";
      }
      EXPECT_EQ(unstuff(whole.out), expected_raw);
    }
  }
}

}  // namespace
}  // namespace sluice::smtp
