#pragma once
// The CRLF line reader of the SMTP server and client, without I/O: octets in (split anywhere,
// any number of lines at once), one result per read() call out: a complete line without its line
// end, a line over the length limit, or a broken line end. It owns at most one partial line
// (bounded by its limit) and nothing else; it never asserts on the peer's octets, and it gives
// the same sequence of results however the stream is split (tests/fuzz/line_reader_fuzz.cc).
//
// The rules it applies, and which of them a side may choose (LineReaderSettings):
// * Length: a line has at most `line_octets_max` octets, its line end included. The octet that
//   passes the limit gives too_long, once; the rest of that line is skipped up to its LF, whose
//   arrival is skipped_end, so the caller can refuse the line (500) and go on. When that octet is
//   the LF itself, the line has ended: its line end and CRs are judged first (a bare LF or CR
//   beats the length), then too_long ends it.
// * A bare LF (not after CR) either ends a line like CRLF (a client reading replies) or is the
//   error bare_lf (the server: an SMTP smuggling defence), also at the end of a skipped line.
// * A bare CR (not followed by LF) is always an error, found either when its line ends (bare_cr
//   at the LF: the server reads the whole command line before it answers) or at the octet after
//   the CR (the reply parser: `consumed` then ends at that octet). CRs in a skipped line are not
//   looked at: the line is dropped whatever it holds.
// bare_cr and bare_lf are final: the stream's framing is no longer known, so every later read()
// consumes nothing and gives the same error again.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::smtp {

enum class BareLf : uint8_t {
  error,      // bare_lf, final (the server)
  ends_line,  // a line end like CRLF (a client: Postfix's smtp client tolerates it too)
};

enum class BareCr : uint8_t {
  error_at_line_end,  // bare_cr when the line's LF arrives (the server)
  error_at_once,      // bare_cr at the octet after the CR (the reply parser)
};

struct LineReaderSettings {
  uint32_t line_octets_max = 0;  // line end included; at least 2
  BareLf bare_lf = BareLf::error;
  BareCr bare_cr = BareCr::error_at_line_end;
};

enum class LineEvent : uint8_t {
  need_more,    // every octet was consumed and no line ended: pass more
  line,         // `line` holds a complete line, without its CRLF (or LF)
  too_long,     // the line passed line_octets_max; unless `line_ended`, the rest of it is skipped
  skipped_end,  // the LF of a line reported too_long (its CRLF was fine)
  bare_cr,      // final
  bare_lf,      // final
};

std::string_view line_event_name(LineEvent event);

struct LineStep {
  size_t consumed = 0;  // octets of the input used; pass the rest again
  LineEvent event = LineEvent::need_more;
  bool line_ended = false;  // `consumed` ends with the LF that ends a line (whatever the event)
  // For `line`: valid until the next read() call (it points into the input or into the reader).
  std::string_view line;

  friend bool operator==(const LineStep&, const LineStep&) = default;
};

class LineReader {
 public:
  explicit LineReader(const LineReaderSettings& settings);

  // Reads `input` up to the end of the first result. need_more consumes all of it.
  LineStep read(std::string_view input);

  // Octets of a line have been read and its end has not (a partial or a skipped line).
  bool in_line() const { return _line_octets != 0 || _skipping; }
  const LineReaderSettings& settings() const { return _settings; }

 private:
  LineStep read_skipped(std::string_view input);
  LineStep end_line(std::string_view input, size_t lf);
  LineStep fail(LineEvent event, size_t consumed, bool line_ended);
  void start_line();

  LineReaderSettings _settings;
  std::string _partial;                      // the current line's octets from earlier reads (not while skipping)
  size_t _line_octets = 0;                   // octets of the current line read so far (not while skipping)
  bool _skipping = false;                    // the current line was reported too_long: dropped to its LF
  bool _cr_last = false;                     // the last octet read of the current line was CR
  bool _bare_cr_seen = false;                // error_at_line_end: the current line holds a bare CR
  LineEvent _failed = LineEvent::need_more;  // bare_cr or bare_lf once final
};

}  // namespace sluice::smtp
