// Checking sluice-bench messages as they arrive, and the compact set of ids seen.
#include "bench/sink/ids.h"

#include <algorithm>

#include "engine/app/http.h"
#include "engine/io/strings.h"
#include "engine/smtp/header_lines.h"
#include "spool/crc32c.h"

namespace sluice::bench {
namespace {

// The value of header field `name` in the header block `block`, stripped; empty when absent.
// Folded (continued) values are not needed: sluice-bench send writes each on one line.
std::string_view header_value(std::string_view block, std::string_view name) {
  std::string_view value;
  smtp::for_each_header_line(block, [&](std::string_view line) {
    if (smtp::header_name_is(line, name)) {
      value = strip_whitespace(line.substr(name.size() + 1));
      return false;
    }
    return true;
  });
  return value;
}

bool parse_sum(std::string_view text, uint32_t& sum) {
  if (text.size() > 7 && equals_ignore_case(text.substr(0, 7), "crc32c:")) {
    text.remove_prefix(7);
  }
  if (text.size() != 8) {
    return false;
  }
  const auto result = std::from_chars(text.data(), text.data() + text.size(), sum, 16);
  return result.ec == std::errc() && result.ptr == text.data() + text.size();
}

}  // namespace

uint32_t unstuffed_crc32c(std::string_view wire) {
  uint32_t crc = 0;
  size_t pos = 0;
  while (pos < wire.size()) {
    if (wire[pos] == '.') {
      ++pos;  // pos is always at a line start here: a stuffed dot
    }
    const size_t found = wire.find("\r\n.", pos);
    const size_t end = found == std::string_view::npos ? wire.size() : found + 2;
    crc = spool::crc32c_extend(crc, wire.data() + pos, end - pos);
    pos = end;
  }
  return crc;
}

MessageCheck check_message(std::string_view message) {
  MessageCheck check;
  const size_t header_end = message.starts_with("\r\n") ? 0 : message.find("\r\n\r\n");
  const std::string_view header =
      header_end == std::string_view::npos ? message : message.substr(0, header_end == 0 ? 0 : header_end + 2);
  check.id = header_value(header, kIdHeader);
  if (check.id.empty()) {
    return check;  // no_id
  }
  const std::string_view sent = header_value(header, kSentHeader);
  if (!parse_decimal(sent, check.sent_us)) {
    check.sent_us = 0;
  }
  uint32_t sum = 0;
  if (header_end == std::string_view::npos || !parse_sum(header_value(header, kSumHeader), sum)) {
    check.result = BodyCheck::corrupt;
    return check;
  }
  const size_t body_start = header_end == 0 ? 2 : header_end + 4;
  check.result = unstuffed_crc32c(message.substr(body_start)) == sum ? BodyCheck::intact : BodyCheck::corrupt;
  return check;
}

bool split_numbered_id(std::string_view id, std::string_view& run, uint64_t& n) {
  const size_t dash = id.rfind('-');
  if (dash == std::string_view::npos || dash == 0 || dash + 1 == id.size() || id.size() - dash - 1 > 12) {
    return false;
  }
  const std::string_view digits = id.substr(dash + 1);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  std::from_chars(digits.data(), digits.data() + digits.size(), n);
  run = id.substr(0, dash);
  return n < IdSet::kNumberMax;
}

std::vector<uint64_t>* IdSet::bits_of(std::string_view run) {
  if (_last_bits != nullptr && run == _last_run) {
    return _last_bits;
  }
  _last_run.assign(run);
  // Valid until the next insert of a run into _runs, which happens only here and re-takes it.
  _last_bits = &_runs[_last_run];
  return _last_bits;
}

const std::vector<uint64_t>* IdSet::find_bits(std::string_view run) const {
  const auto it = _runs.find(std::string(run));
  return it == _runs.end() ? nullptr : &it->second;
}

bool IdSet::insert(std::string_view id) {
  std::string_view run;
  uint64_t n = 0;
  if (!split_numbered_id(id, run, n)) {
    const bool added = _others.emplace(id).second;
    _size += added ? 1 : 0;
    return added;
  }
  std::vector<uint64_t>* bits = bits_of(run);
  if (bits->size() <= n / 64) {
    bits->resize(std::max<size_t>(n / 64 + 1, bits->size() * 2));
  }
  uint64_t& word = (*bits)[n / 64];
  const uint64_t bit = uint64_t{1} << (n % 64);
  if (word & bit) {
    return false;
  }
  word |= bit;
  ++_size;
  return true;
}

bool IdSet::insert_range(std::string_view run, uint64_t lo, uint64_t hi) {
  if (lo > hi || hi >= kNumberMax) {
    return false;
  }
  for (uint64_t n = lo; n <= hi; ++n) {
    insert(str_cat(run, "-", n));
  }
  return true;
}

bool IdSet::contains(std::string_view run, uint64_t n) const {
  const std::vector<uint64_t>* bits = find_bits(run);
  return bits != nullptr && n / 64 < bits->size() && ((*bits)[n / 64] >> (n % 64) & 1) != 0;
}

bool IdSet::contains(std::string_view id) const {
  std::string_view run;
  uint64_t n = 0;
  if (!split_numbered_id(id, run, n)) {
    return _others.contains(std::string(id));
  }
  return contains(run, n);
}

void IdSet::append_ranges_json(std::string& out) const {
  out += "{";
  bool first_run = true;
  for (const auto& [run, bits] : _runs) {
    str_append(&out, first_run ? "\"" : ",\"", app::json_escape(run), "\":[");
    first_run = false;
    bool first = true;
    int64_t lo = -1;
    int64_t previous = -2;
    const auto close_range = [&] {
      if (lo >= 0) {
        str_append(&out, first ? "[" : ",[", lo, ",", previous, "]");
        first = false;
      }
    };
    for (size_t word = 0; word < bits.size(); ++word) {
      for (uint64_t w = bits[word]; w != 0; w &= w - 1) {
        const int64_t n = static_cast<int64_t>(word * 64 + static_cast<uint64_t>(__builtin_ctzll(w)));
        if (n != previous + 1) {
          close_range();
          lo = n;
        }
        previous = n;
      }
    }
    close_range();
    out += "]";
  }
  out += "}";
}

void IdSet::append_others_json(std::string& out) const {
  out += "[";
  bool first = true;
  for (const std::string& id : _others) {
    str_append(&out, first ? "\"" : ",\"", app::json_escape(id), "\"");
    first = false;
  }
  out += "]";
}

}  // namespace sluice::bench
