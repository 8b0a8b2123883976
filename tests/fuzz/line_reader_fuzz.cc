// Fuzz target for the CRLF line reader (engine/smtp/line_reader.h). Properties, not only "no
// crash":
// 1. The input (after its first two octets) read in one piece and read in pieces of random sizes
//    (seeded from the input) gives the same sequence of results, the same octets consumed and the
//    same in_line() at the end; so does one octet at a time when the input is short.
// 2. Every line keeps the rules: no LF in it, no CR in it on the server's rules, at most the limit
//    with its line end; a final result (bare CR, bare LF) stays final and consumes nothing more.
// The first octet picks the rules (server or client) and the second the limit (2 to 257), so that
// short random inputs reach the limit as well as the line ends.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "engine/smtp/line_reader.h"

namespace {

using namespace sluice::smtp;

void require(bool ok) {
  if (!ok) {
    __builtin_trap();
  }
}

struct Result {
  LineEvent event;
  std::string line;
  bool line_ended;
  friend bool operator==(const Result&, const Result&) = default;
};

struct Outcome {
  std::vector<Result> results;
  size_t consumed = 0;
  bool in_line = false;
  friend bool operator==(const Outcome&, const Outcome&) = default;
};

bool is_final(LineEvent event) {
  return event == LineEvent::bare_cr || event == LineEvent::bare_lf;
}

void check_line(const LineReaderSettings& settings, std::string_view line) {
  require(line.find('\n') == std::string_view::npos);
  const bool crlf_only = settings.bare_lf == BareLf::error;
  require(!crlf_only || line.find('\r') == std::string_view::npos);
  // With LF alone a line may have one octet more than with CRLF.
  require(line.size() + (crlf_only ? 2 : 1) <= settings.line_octets_max);
}

// Reads `input` in pieces whose sizes come from `next_size` (0 means the rest).
template <typename NextSize>
Outcome read_in_pieces(const LineReaderSettings& settings, std::string_view input, NextSize next_size) {
  LineReader reader(settings);
  Outcome out;
  while (true) {
    const size_t size = next_size();
    std::string_view piece = input.substr(0, size == 0 ? input.size() : size);
    input.remove_prefix(piece.size());
    while (true) {
      const LineStep step = reader.read(piece);
      require(step.consumed <= piece.size());
      piece.remove_prefix(step.consumed);
      out.consumed += step.consumed;
      if (step.event == LineEvent::need_more) {
        require(piece.empty() && !step.line_ended);
        break;
      }
      if (step.event == LineEvent::line) {
        require(step.line_ended);
        check_line(settings, step.line);
      } else {
        require(step.line.empty());
      }
      require(step.event != LineEvent::skipped_end || step.line_ended);
      require(!step.line_ended || reader.in_line() == false);
      out.results.push_back(Result{step.event, std::string(step.line), step.line_ended});
      if (is_final(step.event)) {
        require(reader.read("NOOP\r\n") == (LineStep{0, step.event, false, {}}));
        out.in_line = reader.in_line();
        return out;
      }
    }
    if (input.empty()) {
      break;
    }
  }
  out.in_line = reader.in_line();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) {
    return 0;
  }
  const bool server = (data[0] & 1) == 0;
  LineReaderSettings settings;
  settings.line_octets_max = 2 + data[1];
  settings.bare_lf = server ? BareLf::error : BareLf::ends_line;
  settings.bare_cr = server ? BareCr::error_at_line_end : BareCr::error_at_once;
  const std::string_view input(reinterpret_cast<const char*>(data) + 2, size - 2);

  const Outcome whole = read_in_pieces(settings, input, [] { return size_t{0}; });
  std::mt19937 rng(static_cast<uint32_t>(data[0]) * 2654435761u + static_cast<uint32_t>(size));
  // Small pieces most of the time (every CR/LF boundary), sometimes large ones.
  const size_t piece_max = (data[0] & 2) != 0 ? 4 : 64;
  const Outcome random = read_in_pieces(settings, input, [&] { return size_t{1} + rng() % piece_max; });
  require(random == whole);
  if (input.size() <= 512) {
    require(read_in_pieces(settings, input, [] { return size_t{1}; }) == whole);
  }
  // Without a final result every octet is read.
  require((!whole.results.empty() && is_final(whole.results.back().event)) || whole.consumed == input.size());
  return 0;
}
