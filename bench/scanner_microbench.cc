// Microbenchmark of the DATA scanner (DESIGN.md section 1: ">= 1.2x a memchr line loop, >= 10x a
// byte loop", in cache, per core). Every benchmark runs over the same 1 MiB corpus: a realistic
// message in wire form (headers, 60-80 column text, 76-column base64, a few long lines, CRLF
// everywhere, ending with "\r\n.\r\n"). The two baselines are honest implementations of the same
// job, built with the same flags, in the same binary, so ratios are read within one run.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <string_view>

#include "engine/smtp/data_scanner.h"

namespace {

using sluice::smtp::DataScanState;
using sluice::smtp::kTextLineOctetsMax;
using sluice::smtp::ScanResult;
using sluice::smtp::ScanStop;

constexpr size_t kCorpusOctets = size_t{1} << 20;
constexpr size_t kRecvBufferOctets = 16 * 1024;  // a typical provided-buffer size

std::string build_corpus() {
  std::mt19937_64 rng(20240601);
  const auto below = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  static constexpr std::string_view kWords[] = {"the",   "relay", "message", "queue",  "delivery", "host",
                                                "of",    "to",    "and",     "a",      "server",   "retry",
                                                "spool", "is",    "for",     "sender", "domain",   "Grüße"};
  static constexpr std::string_view kB64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string s =
      "Received: from client.example.test (client.example.test [192.0.2.10])\r\n"
      "\tby relay.example.test (Sluice) with ESMTP id 0123456789ABCDEF\r\n"
      "From: Sender <sender@example.test>\r\n"
      "To: Recipient <rcpt@example.org>\r\n"
      "Subject: Quarterly numbers and the attachment you asked for\r\n"
      "Date: Sat, 1 Jun 2024 12:00:00 +0000\r\n"
      "Message-ID: <20240601120000.0123456789@example.test>\r\n"
      "MIME-Version: 1.0\r\n"
      "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
      "\r\n";
  const auto text_line = [&](size_t columns) {
    std::string line;
    while (line.size() < columns) {
      line += kWords[below(std::size(kWords))];
      line += ' ';
    }
    line.resize(columns);
    return line + "\r\n";
  };
  // Parts until the next one might not fit, then short text lines, then one last line sized so
  // that the corpus, terminator included, is exactly kCorpusOctets.
  constexpr size_t kPartOctetsMax = 20 * 1024;
  while (s.size() + kPartOctetsMax < kCorpusOctets) {
    const size_t kind = below(10);
    if (kind < 5) {
      s += "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
      for (size_t l = 8 + below(40); l > 0; --l) {
        s += text_line(60 + below(21));
      }
    } else if (kind < 9) {
      s += "--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n";
      for (size_t l = 20 + below(200); l > 0; --l) {
        for (int k = 0; k < 76; ++k) {
          s += kB64[below(kB64.size())];
        }
        s += "\r\n";
      }
    } else {
      s += text_line(300 + below(600));  // e.g. an HTML part without line breaks
    }
  }
  constexpr size_t kTailOctets = 2 + 3;  // the last line's CRLF, then ".\r\n"
  while (s.size() + 100 + kTailOctets < kCorpusOctets) {
    s += text_line(60 + below(21));
  }
  s += text_line(kCorpusOctets - s.size() - kTailOctets);
  s += ".\r\n";
  return s;
}

const std::string& corpus() {
  static const std::string c = build_corpus();
  return c;
}

// Baseline 1: the obvious byte-at-a-time state machine doing the same job.
struct BaselineResult {
  size_t end = 0;
  bool ok = false;
  bool line_too_long = false;
  bool has_8bit = false;
};

BaselineResult byte_loop(const char* p, size_t n) {
  BaselineResult r;
  size_t line_start = 0;
  bool previous_cr = false;
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(p[i]);
    const bool lf = c == '\n';
    if (previous_cr != lf) {
      r.end = i;  // bare CR or bare LF
      return r;
    }
    if (lf) {
      const size_t content = i - 1 - line_start;
      const bool dot = p[line_start] == '.';
      if (dot && content == 1) {
        r.end = i + 1;
        r.ok = true;
        return r;
      }
      if (content > kTextLineOctetsMax + (dot ? 1 : 0)) {
        r.line_too_long = true;
      }
      line_start = i + 1;
    }
    previous_cr = c == '\r';
    r.has_8bit |= c >= 0x80;
  }
  r.end = n;
  return r;
}

// Baseline 2: memchr to each LF; checks the CR before it, the line length and the terminator.
// (It does less than the scanner: no bare CR inside a line, no 8-bit.)
BaselineResult memchr_lines(const char* p, size_t n) {
  BaselineResult r;
  size_t pos = 0;
  while (true) {
    const auto* lf = static_cast<const char*>(std::memchr(p + pos, '\n', n - pos));
    if (lf == nullptr) {
      r.end = n;
      return r;
    }
    const auto k = static_cast<size_t>(lf - p);
    if (k == pos || p[k - 1] != '\r') {
      r.end = k;  // bare LF
      return r;
    }
    const size_t content = k - 1 - pos;
    const bool dot = p[pos] == '.';
    if (dot && content == 1) {
      r.end = k + 1;
      r.ok = true;
      return r;
    }
    if (content > kTextLineOctetsMax + (dot ? 1 : 0)) {
      r.line_too_long = true;
    }
    pos = k + 1;
  }
}

using ScanFn = ScanResult (*)(DataScanState&, const char*, size_t);

void run_scanner(benchmark::State& state, ScanFn fn, size_t piece_octets) {
  const std::string& c = corpus();
  for (auto _ : state) {
    DataScanState scan;
    ScanResult r;
    for (size_t at = 0; at < c.size(); at += piece_octets) {
      r = fn(scan, c.data() + at, std::min(piece_octets, c.size() - at));
      if (r.stop != ScanStop::need_more) {
        break;
      }
    }
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(scan);
    if (r.stop != ScanStop::end_of_data || scan.wire_octets != c.size()) {
      state.SkipWithError("scanner did not find the end of data at the end of the corpus");
      break;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * c.size()));
}

void run_baseline(benchmark::State& state, BaselineResult (*fn)(const char*, size_t)) {
  const std::string& c = corpus();
  for (auto _ : state) {
    BaselineResult r = fn(c.data(), c.size());
    benchmark::DoNotOptimize(r);
    if (!r.ok || r.end != c.size()) {
      state.SkipWithError("baseline did not find the end of data at the end of the corpus");
      break;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * c.size()));
}

void BM_DataScanner(benchmark::State& state) {
  state.SetLabel(sluice::smtp::scan_data_dispatch_name());
  run_scanner(state, static_cast<ScanFn>(&sluice::smtp::scan_data), kCorpusOctets);
}
void BM_DataScannerScalar(benchmark::State& state) {
  run_scanner(state, &sluice::smtp::scan_data_scalar, kCorpusOctets);
}
void BM_DataScannerSse2(benchmark::State& state) {
  run_scanner(state, &sluice::smtp::scan_data_sse2, kCorpusOctets);
}
void BM_DataScannerAvx2(benchmark::State& state) {
  if (!sluice::smtp::cpu_has_avx2()) {
    state.SkipWithError("no AVX2 on this CPU");
    return;
  }
  run_scanner(state, &sluice::smtp::scan_data_avx2, kCorpusOctets);
}
// The same corpus delivered in receive-buffer-sized pieces, as the session sees it.
void BM_DataScannerRecvPieces(benchmark::State& state) {
  run_scanner(state, static_cast<ScanFn>(&sluice::smtp::scan_data), kRecvBufferOctets);
}
void BM_ByteLoop(benchmark::State& state) {
  run_baseline(state, &byte_loop);
}
void BM_MemchrLines(benchmark::State& state) {
  run_baseline(state, &memchr_lines);
}

BENCHMARK(BM_DataScanner);
BENCHMARK(BM_DataScannerScalar);
BENCHMARK(BM_DataScannerSse2);
BENCHMARK(BM_DataScannerAvx2);
BENCHMARK(BM_DataScannerRecvPieces);
BENCHMARK(BM_ByteLoop);
BENCHMARK(BM_MemchrLines);

}  // namespace
