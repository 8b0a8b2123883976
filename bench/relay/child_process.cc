#include "bench/relay/child_process.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/io/strings.h"
#include "absl/strings/str_join.h"
#include "engine/io/clock.h"

namespace sluice::bench {
namespace {

absl::Status errno_error(std::string_view what) {
  return absl::InternalError(str_cat(what, ": ", std::strerror(errno)));
}

// One poll step of at most `ms` for a child to exit; true when it has (status set).
bool reap_within(pid_t pid, uint64_t ms, int& status) {
  const uint64_t deadline = io::monotonic_us() + ms * 1000;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid || (done < 0 && errno == ECHILD)) {
      return true;
    }
    if (io::monotonic_us() >= deadline) {
      return false;
    }
    usleep(10'000);
  }
}

}  // namespace

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : _pid(other._pid), _reaped(other._reaped), _status(other._status) {
  other._pid = -1;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    (void)stop();
    _pid = other._pid;
    _reaped = other._reaped;
    _status = other._status;
    other._pid = -1;
  }
  return *this;
}

ChildProcess::~ChildProcess() { (void)stop(); }

absl::StatusOr<ChildProcess> ChildProcess::spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  if (argv.empty()) {
    return absl::InvalidArgumentError("no command");
  }
  const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) {
    return errno_error(log_path);
  }
  std::vector<char*> args;
  for (const std::string& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log);
    return errno_error("fork");
  }
  if (pid == 0) {
    // The child: only async-signal-safe calls until exec. SIGTERM when the harness dies without
    // stopping it (killed), so that no relay outlives it; the parent may have died already.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) {
      _exit(127);
    }
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
    const int null = open("/dev/null", O_RDONLY);
    if (null >= 0) {
      dup2(null, STDIN_FILENO);
    }
    execv(args[0], args.data());
    _exit(127);
  }
  close(log);
  ChildProcess child;
  child._pid = pid;
  return child;
}

bool ChildProcess::running() {
  if (_pid < 0 || _reaped) {
    return false;
  }
  const pid_t done = waitpid(_pid, &_status, WNOHANG);
  if (done == _pid) {
    _reaped = true;
  }
  return !_reaped;
}

int ChildProcess::wait() {
  while (_pid >= 0 && !_reaped) {
    const pid_t done = waitpid(_pid, &_status, 0);
    if (done == _pid || (done < 0 && errno != EINTR)) {
      _reaped = true;
    }
  }
  return _status;
}

absl::StatusOr<int> ChildProcess::stop(uint64_t grace_ms) {
  if (_pid < 0) {
    return absl::FailedPreconditionError("no process");
  }
  if (!_reaped) {
    kill(_pid, SIGTERM);
    if (!reap_within(_pid, grace_ms, _status)) {
      kill(_pid, SIGKILL);
      reap_within(_pid, 5'000, _status);
      _reaped = true;
      return absl::DeadlineExceededError(str_cat("pid ", _pid, " did not stop on SIGTERM: killed"));
    }
    _reaped = true;
  }
  return _status;
}

absl::Status run_command(const std::vector<std::string>& argv, const std::string& log_path) {
  absl::StatusOr<ChildProcess> child = ChildProcess::spawn(argv, log_path);
  if (!child.ok()) {
    return child.status();
  }
  const int status = child->wait();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(str_cat(absl::StrJoin(argv, " "), ": exit status ", status, " (see ", log_path, ")"));
  }
  return absl::OkStatus();
}

absl::Status wait_for_greeting(const io::SocketAddress& address, uint64_t timeout_ms, ChildProcess* child) {
  const uint64_t deadline = io::monotonic_us() + timeout_ms * 1000;
  std::string last_error = "no answer";
  while (io::monotonic_us() < deadline) {
    if (child != nullptr && !child->running()) {
      return absl::UnavailableError(str_cat("pid ", child->pid(), " exited before ", address.to_string(),
                                                 " greeted"));
    }
    const int fd = socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      return errno_error("socket");
    }
    if (connect(fd, address.get(), address.length) == 0) {
      pollfd readable{fd, POLLIN, 0};
      char banner[512];
      ssize_t got = 0;
      if (poll(&readable, 1, 2'000) == 1) {
        got = read(fd, banner, sizeof banner);
      }
      close(fd);
      if (got >= 3 && std::string_view(banner, 3) == "220") {
        return absl::OkStatus();
      }
      last_error = got > 0 ? std::string(banner, static_cast<size_t>(got)) : "connected, no greeting";
    } else {
      last_error = std::strerror(errno);
      close(fd);
    }
    usleep(20'000);
  }
  return absl::DeadlineExceededError(str_cat(address.to_string(), " did not greet within ", timeout_ms,
                                                  " ms: ", last_error));
}

absl::StatusOr<uint16_t> free_port(const std::string& host) {
  absl::StatusOr<io::SocketAddress> address = io::parse_ip(host, 0);
  if (!address.ok()) {
    return address.status();
  }
  const int fd = socket(address->family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return errno_error("socket");
  }
  io::SocketAddress bound = *address;
  if (bind(fd, address->get(), address->length) != 0 ||
      getsockname(fd, bound.get_mutable(), &bound.length) != 0) {
    const absl::Status error = errno_error(str_cat("bind ", host));
    close(fd);
    return error;
  }
  close(fd);
  return bound.port();
}

absl::Status check_not_tmpfs(const std::string& dir) {
  struct statfs fs {};
  if (statfs(dir.c_str(), &fs) != 0) {
    return errno_error(dir);
  }
  if (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC) {
    return absl::FailedPreconditionError(str_cat(
        dir, " is on tmpfs or ramfs, where fsync costs nothing: choose a directory on a disk (--tmpdir)"));
  }
  return absl::OkStatus();
}

}  // namespace sluice::bench
