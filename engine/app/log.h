#pragma once
// Structured log lines (logfmt), one per SMTP transaction and per notable event. A shard gathers
// its lines in memory and writes them to stderr once per loop iteration through its ring, so
// logging costs no syscall per message and never blocks the shard.
#include <liburing.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::io {
class Ring;
}

namespace sluice::app {

class LogBuffer {
 public:
  static constexpr size_t kPendingOctetsMax = 4 << 20;  // beyond this, lines are dropped and counted

  void set_shard(uint32_t shard) { _shard = shard; }
  // Appends "ts=... shard=N " + fields + "\n".
  void line(std::string_view fields);
  // Submits one write of gathered lines, if no write is in flight. A write is at most PIPE_BUF
  // octets and ends at a line end, so lines from several shards never interleave in a pipe.
  void flush(io::Ring& ring, uint64_t user_data);
  void on_write_done(int32_t result);
  bool in_flight() const { return _in_flight; }
  // Lines dropped so far (each line beyond kPendingOctetsMax; each line of a failed write).
  uint64_t dropped() const { return _dropped; }
  // At exit, after the last ring write completed: writes what is left with plain write(2).
  void flush_blocking();

 private:
  uint32_t _shard = 0;
  bool _in_flight = false;
  uint64_t _dropped = 0;
  std::string _writing;
  size_t _written = 0;
  std::string _next;
};

// logfmt values. A value is written bare when it is a plain token, else in double quotes with
// `"` and `\` escaped and control octets as \xNN, so a client's HELO or address can never
// forge a field or a line.
void append_log_value(std::string& out, std::string_view value);
// " key=value" (value escaped as above).
void append_log_field(std::string& out, std::string_view key, std::string_view value);
// A transaction's recipients for a log line, bounded: " rcpts=N to=\"<a>,<b>,... +K more\"".
inline constexpr size_t kLogRecipientsMax = 10;
void append_log_recipients(std::string& out, const std::vector<std::string>& recipients);

// Makes stderr append-only when it is a file, so that writes from several threads at the file
// position never overwrite each other. Called once at start.
void prepare_log_output();

// Points stderr at its file again (SIGHUP after logrotate moved it). Returns what was done:
// "reopened PATH", "not a file", or an error; never fails the process.
std::string reopen_log_output();

// For threads without a ring (main, admin): one line straight to stderr.
void log_line(std::string_view fields);
std::string log_timestamp();
// Appends the RFC 3339 UTC time of `unix_ms` with milliseconds ("2026-12-02T03:04:05.678Z").
void append_log_timestamp(std::string& out, uint64_t unix_ms);

}  // namespace sluice::app
