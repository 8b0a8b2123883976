// Log line formatting and the per-shard batched writer.
#include "engine/app/log.h"

#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/strings.h"

namespace sluice::app {

std::string log_timestamp() {
  const uint64_t ms = io::wall_ms();
  const time_t seconds = static_cast<time_t>(ms / 1000);
  tm parts{};
  gmtime_r(&seconds, &parts);
  return absl::StrFormat("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                         parts.tm_hour, parts.tm_min, parts.tm_sec, static_cast<int>(ms % 1000));
}

void LogBuffer::line(std::string_view fields) {
  if (_next.size() > kPendingOctetsMax) {
    ++_dropped;
    return;
  }
  str_append(&_next, "ts=", log_timestamp(), " shard=", _shard, " ", fields, "\n");
}

void LogBuffer::flush(io::Ring& ring, uint64_t user_data) {
  if (_in_flight) {
    return;
  }
  if (_written >= _writing.size()) {
    if (_next.empty()) {
      return;
    }
    _writing.swap(_next);
    _next.clear();
    _written = 0;
  }
  size_t length = std::min(_writing.size() - _written, static_cast<size_t>(PIPE_BUF));
  const size_t line_end = _writing.rfind('\n', _written + length - 1);
  if (line_end != std::string::npos && line_end >= _written) {
    length = line_end + 1 - _written;  // a line longer than PIPE_BUF goes out whole-ish: rare
  }
  io_uring_sqe* sqe = ring.sqe();
  io_uring_prep_write(sqe, STDERR_FILENO, _writing.data() + _written, static_cast<unsigned>(length),
                      static_cast<uint64_t>(-1));
  io_uring_sqe_set_data64(sqe, user_data);
  _in_flight = true;
}

void LogBuffer::on_write_done(int32_t result) {
  _in_flight = false;
  if (result <= 0) {
    const std::string_view lost = std::string_view(_writing).substr(std::min(_written, _writing.size()));
    _dropped += std::max<uint64_t>(1, static_cast<uint64_t>(std::count(lost.begin(), lost.end(), '\n')));
    _written = _writing.size();  // stderr is broken: drop this batch rather than spin on it
    return;
  }
  _written += static_cast<size_t>(result);
}

void prepare_log_output() {
  const int flags = fcntl(STDERR_FILENO, F_GETFL);
  if (flags >= 0) {
    fcntl(STDERR_FILENO, F_SETFL, flags | O_APPEND);
  }
}

void LogBuffer::flush_blocking() {
  if (_written < _writing.size()) {
    [[maybe_unused]] ssize_t written = write(STDERR_FILENO, _writing.data() + _written, _writing.size() - _written);
    _written = _writing.size();
  }
  if (!_next.empty()) {
    [[maybe_unused]] ssize_t written = write(STDERR_FILENO, _next.data(), _next.size());
    _next.clear();
  }
}

void log_line(std::string_view fields) {
  const std::string text = str_cat("ts=", log_timestamp(), " ", fields, "\n");
  [[maybe_unused]] ssize_t written = write(STDERR_FILENO, text.data(), text.size());
}

}  // namespace sluice::app
