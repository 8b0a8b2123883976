#pragma once
// The processes `sluice-bench relay` starts (Sluice, a private Postfix, `postfix` commands): each
// is started with its output in a log file, and stopped by its PID, never by name.
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::bench {

// A started process. Its destructor stops it (SIGTERM, then SIGKILL after the grace time) and
// reaps it, so that no error path leaves one behind.
class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ~ChildProcess();

  // argv[0] is a path (no PATH search); stdout and stderr go to `log_path` (appended). The child
  // gets SIGTERM if the thread that spawned it ends first (PR_SET_PDEATHSIG: the harness killed),
  // so spawn from a thread that outlives the child.
  static absl::StatusOr<ChildProcess> spawn(const std::vector<std::string>& argv, const std::string& log_path);

  pid_t pid() const { return _pid; }
  bool running();  // not yet exited (reaps it if it has)
  int wait();      // blocks until it exits; waitpid's status
  // SIGTERM, wait up to grace_ms, then SIGKILL; reaps. Returns the exit status (waitpid's) or an
  // error when it had to be killed. Idempotent.
  absl::StatusOr<int> stop(uint64_t grace_ms = 10'000);

 private:
  pid_t _pid = -1;
  bool _reaped = false;
  int _status = 0;
};

// Runs a command to its end (stdout and stderr to `log_path`); an error unless it exits 0.
absl::Status run_command(const std::vector<std::string>& argv, const std::string& log_path);

// Connects to `address` until it answers with a 220 greeting or `timeout_ms` passes (blocking
// sockets: this is set-up, not the measured path). Fails at once when `child` has exited.
absl::Status wait_for_greeting(const io::SocketAddress& address, uint64_t timeout_ms, ChildProcess* child);

// A free TCP port on `host` (bound to port 0 and released: a tiny window for another binder).
absl::StatusOr<uint16_t> free_port(const std::string& host);

// An error when `dir` is on tmpfs or ramfs, where fsync costs nothing and a figure would lie.
absl::Status check_not_tmpfs(const std::string& dir);

}  // namespace sluice::bench
