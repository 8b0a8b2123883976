// The CRLF line reader: see line_reader.h for the rules. It looks for the LF with find() (memchr)
// and for CRs only in the octets before it, so a line that arrives whole is not copied and is
// scanned twice at most; only a line split across reads is kept in _partial. Every decision
// depends on the octets and their order alone, never on where a read ends.
#include "engine/smtp/line_reader.h"

#include "engine/io/assert.h"

namespace sluice::smtp {
namespace {

constexpr size_t npos = std::string_view::npos;

bool has_cr(std::string_view octets) {
  return octets.find('\r') != npos;
}

}  // namespace

std::string_view line_event_name(LineEvent event) {
  switch (event) {
    case LineEvent::need_more:
      return "need_more";
    case LineEvent::line:
      return "line";
    case LineEvent::too_long:
      return "too_long";
    case LineEvent::skipped_end:
      return "skipped_end";
    case LineEvent::bare_cr:
      return "bare_cr";
    case LineEvent::bare_lf:
      return "bare_lf";
  }
  return "unknown";
}

LineReader::LineReader(const LineReaderSettings& settings) : _settings(settings) {
  // Room for at least a CRLF: the limit is ours (config), not the peer's.
  SLUICE_ASSERT(settings.line_octets_max >= 2, "line_octets_max below a CRLF");
}

void LineReader::start_line() {
  // _partial stays: the line just returned may point into it; read() clears it.
  _line_octets = 0;
  _skipping = false;
  _cr_last = false;
  _bare_cr_seen = false;
}

LineStep LineReader::fail(LineEvent event, size_t consumed, bool line_ended) {
  SLUICE_ASSERT(event == LineEvent::bare_cr || event == LineEvent::bare_lf);
  _failed = event;
  start_line();
  return LineStep{consumed, event, line_ended, {}};
}

LineStep LineReader::read(std::string_view input) {
  if (_failed != LineEvent::need_more) {
    return LineStep{0, _failed, false, {}};
  }
  if (input.empty()) {
    return LineStep{0, LineEvent::need_more, false, {}};  // nothing to learn, _cr_last included
  }
  if (_skipping) {
    return read_skipped(input);
  }
  if (_line_octets == 0) {
    _partial.clear();  // the last line returned from it is no longer in use
  }
  SLUICE_ASSERT(_line_octets <= _settings.line_octets_max && _partial.size() == _line_octets);
  const size_t lf = input.find('\n');
  const size_t before_lf = lf == npos ? input.size() : lf;  // this line's octets in `input`, LF excluded
  // Index in `input` of the octet that passes the limit, when it belongs to this line.
  const size_t room = _settings.line_octets_max - _line_octets;
  const bool overflow = room < before_lf + (lf == npos ? 0 : 1);
  if (_settings.bare_cr == BareCr::error_at_once) {
    // The octet after a bare CR proves it; on the same octet a bare CR is reported before the length.
    size_t proof = npos;
    if (_cr_last && before_lf > 0) {
      proof = 0;
    } else if (const size_t cr = input.substr(0, before_lf).find('\r'); cr != npos && cr + 1 < before_lf) {
      proof = cr + 1;
    }
    if (proof != npos && (!overflow || proof <= room)) {
      return fail(LineEvent::bare_cr, proof + 1, false);
    }
  }
  if (overflow && room < before_lf) {
    _skipping = true;
    _cr_last = input[room] == '\r';
    _line_octets = 0;
    _bare_cr_seen = false;
    return LineStep{room + 1, LineEvent::too_long, false, {}};
  }
  if (lf == npos) {
    _bare_cr_seen |= _cr_last || has_cr(input.substr(0, input.size() - 1));
    _cr_last = input.back() == '\r';
    _partial.append(input);
    _line_octets += input.size();
    return LineStep{input.size(), LineEvent::need_more, false, {}};
  }
  return end_line(input, lf);
}

// `input[lf]` is the LF that ends the current line; a line that reaches it is judged by its line
// end and CRs first, and by its length (only the LF itself can pass the limit here) after.
LineStep LineReader::end_line(std::string_view input, size_t lf) {
  const bool crlf = lf > 0 ? input[lf - 1] == '\r' : _cr_last;
  if (!crlf && _settings.bare_lf == BareLf::error) {
    return fail(LineEvent::bare_lf, lf + 1, true);
  }
  // Every CR of the line but the one just before the LF is followed by something else: bare.
  const bool bare_cr = _bare_cr_seen || (_cr_last && lf > 0) || has_cr(input.substr(0, lf > 0 ? lf - 1 : 0));
  if (bare_cr) {
    return fail(LineEvent::bare_cr, lf + 1, true);
  }
  if (_line_octets + lf + 1 > _settings.line_octets_max) {
    start_line();
    return LineStep{lf + 1, LineEvent::too_long, true, {}};
  }
  std::string_view line;
  if (_line_octets == 0) {
    line = input.substr(0, crlf ? lf - 1 : lf);  // the whole line in this read: no copy
  } else {
    _partial.append(input.substr(0, lf));
    if (crlf) {
      _partial.pop_back();
    }
    line = _partial;
  }
  start_line();
  return LineStep{lf + 1, LineEvent::line, true, line};
}

LineStep LineReader::read_skipped(std::string_view input) {
  const size_t lf = input.find('\n');
  if (lf == npos) {
    _cr_last = input.back() == '\r';
    return LineStep{input.size(), LineEvent::need_more, false, {}};
  }
  // Even a line we drop must end the way lines end: a bare LF here is as final as anywhere.
  const bool crlf = lf > 0 ? input[lf - 1] == '\r' : _cr_last;
  if (!crlf && _settings.bare_lf == BareLf::error) {
    return fail(LineEvent::bare_lf, lf + 1, true);
  }
  start_line();
  return LineStep{lf + 1, LineEvent::skipped_end, true, {}};
}

}  // namespace sluice::smtp
