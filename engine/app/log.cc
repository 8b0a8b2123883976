// Log line formatting and the per-shard batched writer.
#include "engine/app/log.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/strings.h"

namespace sluice::app {

namespace {
// The path stderr had at start: logrotate renames the file, and after the rename
// /proc/self/fd/2 names the rotated file, so the path must be taken before.
std::string& log_path() {
  static std::string path;
  return path;
}
}  // namespace

void append_log_timestamp(std::string& out, uint64_t unix_ms) {
  // Every log line has one: the calendar part is formatted once per second per thread, not
  // once per line (it was a visible share of a line's cost with a line per session event).
  thread_local uint64_t cached_second = UINT64_MAX;
  thread_local char cached[80];  // 21 in practice; room for what snprintf could write for any tm
  const uint64_t second = unix_ms / 1000;
  if (second != cached_second) {
    const time_t seconds = static_cast<time_t>(second);
    tm parts{};
    gmtime_r(&seconds, &parts);
    std::snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d.", parts.tm_year + 1900, parts.tm_mon + 1,
                  parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec);
    cached_second = second;
  }
  const unsigned millis = static_cast<unsigned>(unix_ms % 1000);
  const char tail[5] = {static_cast<char>('0' + millis / 100), static_cast<char>('0' + millis / 10 % 10),
                        static_cast<char>('0' + millis % 10), 'Z', '\0'};
  out.append(cached);
  out.append(tail, 4);
}

std::string log_timestamp() {
  std::string out;
  append_log_timestamp(out, io::wall_ms());
  return out;
}

void LogBuffer::line(std::string_view fields) {
  if (_next.size() > kPendingOctetsMax) {
    ++_dropped;
    return;
  }
  _next.append("ts=");
  append_log_timestamp(_next, io::wall_ms());
  str_append(&_next, " shard=", _shard, " ", fields, "\n");
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
  struct stat current {};
  if (fstat(STDERR_FILENO, &current) == 0 && S_ISREG(current.st_mode)) {
    std::error_code error;
    const std::string path = std::filesystem::read_symlink("/proc/self/fd/2", error).string();
    if (!error && path.starts_with('/') && !path.ends_with(" (deleted)")) {
      log_path() = path;
    }
  }
}

void append_log_value(std::string& out, std::string_view value) {
  bool plain = !value.empty();
  for (const char c : value) {
    const auto octet = static_cast<unsigned char>(c);
    if (octet <= ' ' || octet == '"' || octet == '\\' || octet == '=' || octet == 0x7f) {
      plain = false;
      break;
    }
  }
  if (plain) {
    out.append(value);
    return;
  }
  out.push_back('"');
  for (const char c : value) {
    const auto octet = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (octet < ' ' || octet == 0x7f) {
      out.append(absl::StrFormat("\\x%02x", octet));
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
}

void append_log_field(std::string& out, std::string_view key, std::string_view value) {
  str_append(&out, " ", key, "=");
  append_log_value(out, value);
}

void append_log_recipients(std::string& out, const std::vector<std::string>& recipients) {
  str_append(&out, " rcpts=", recipients.size());
  if (recipients.empty()) {
    return;
  }
  std::string list;
  const size_t shown = std::min(recipients.size(), kLogRecipientsMax);
  for (size_t i = 0; i < shown; ++i) {
    str_append(&list, i == 0 ? "" : ",", "<", recipients[i], ">");
  }
  if (recipients.size() > shown) {
    str_append(&list, " +", recipients.size() - shown, " more");
  }
  append_log_field(out, "to", list);
}

std::string reopen_log_output() {
  const std::string& path = log_path();
  if (path.empty()) {
    return "not a file";
  }
  const int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    return str_cat("cannot open ", path, ": ", std::strerror(errno));
  }
  // dup2 swaps the descriptor atomically: a shard's write in flight goes to one file or the other.
  const int result = dup2(fd, STDERR_FILENO);
  const int saved = errno;
  close(fd);
  if (result < 0) {
    return str_cat("dup2: ", std::strerror(saved));
  }
  return str_cat("reopened ", path);
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
