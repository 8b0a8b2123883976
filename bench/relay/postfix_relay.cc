#include "bench/relay/postfix_relay.h"

#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <vector>

#include "engine/io/clock.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

constexpr const char* kHost = "127.0.0.1";
constexpr uint64_t kStartTimeoutMs = 30'000;
constexpr uint64_t kStopTimeoutMs = 60'000;
constexpr const char* kQueueDirs[] = {"maildrop", "incoming", "active", "deferred", "hold"};

absl::Status write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  return out ? absl::OkStatus() : absl::InternalError(str_cat(path, ": cannot be written"));
}

bool alive(pid_t pid) { return kill(pid, 0) == 0 || errno != ESRCH; }

// Postfix's services run as mail_owner and must reach the queue: every directory above the
// working directory must be searchable by others (a 0700 temp directory is not).
absl::Status check_reachable(const std::string& workdir) {
  for (std::filesystem::path dir = std::filesystem::path(workdir).parent_path(); !dir.empty();
       dir = dir.parent_path()) {
    struct stat info {};
    if (stat(dir.c_str(), &info) != 0) {
      return absl::InternalError(str_cat(dir.string(), ": cannot be read"));
    }
    if ((info.st_mode & S_IXOTH) == 0) {
      return absl::FailedPreconditionError(str_cat(
          "postfix (mail_owner) cannot reach its queue: ", dir.string(),
          " is not searchable by others (chmod o+x it, or give --tmpdir /var/tmp)"));
    }
    if (dir == dir.root_path()) {
      break;
    }
  }
  return absl::OkStatus();
}

class PostfixRelay : public RelayUnderTest {
 public:
  explicit PostfixRelay(std::string binary) : _binary(std::move(binary)) {}
  ~PostfixRelay() override { (void)stop(); }

  std::string_view name() const override { return "postfix"; }

  absl::StatusOr<io::SocketAddress> start(const RelayStart& start) override {
    if (start.sinks.empty()) {
      return absl::InvalidArgumentError("no sink address");
    }
    if (geteuid() != 0 || access(_binary.c_str(), X_OK) != 0) {
      return absl::FailedPreconditionError(str_cat(
          "--peer postfix needs root and ", _binary, " (apt-get install postfix, debconf \"No configuration\")"));
    }
    const passwd* mail_owner = getpwnam("postfix");
    if (mail_owner == nullptr) {
      return absl::FailedPreconditionError("no user 'postfix' (apt-get install postfix)");
    }
    if (absl::Status status = check_not_tmpfs(start.workdir); !status.ok()) {
      return status;
    }
    if (absl::Status status = check_reachable(start.workdir); !status.ok()) {
      return status;
    }
    _workdir = start.workdir;
    _conf = _workdir + "/conf";
    _queue = _workdir + "/queue";
    const std::string data = _workdir + "/data";
    std::error_code error;
    for (const std::string& dir : {_conf, _queue, data}) {
      std::filesystem::create_directories(dir, error);
      if (error) {
        return absl::InternalError(str_cat(dir, ": ", error.message()));
      }
    }
    // mail_owner must reach its queue below the working directory, and owns data/ (master.lock).
    if (chmod(_workdir.c_str(), 0755) != 0 || chown(data.c_str(), mail_owner->pw_uid, mail_owner->pw_gid) != 0) {
      return absl::InternalError(str_cat(_workdir, ": cannot set permissions for postfix"));
    }
    absl::StatusOr<uint16_t> port = free_port(kHost);
    if (!port.ok()) {
      return port.status();
    }
    absl::StatusOr<io::SocketAddress> listen = io::parse_ip(kHost, *port);
    if (!listen.ok()) {
      return listen.status();
    }
    if (absl::Status status = write_file(_conf + "/main.cf", postfix_main_cf(_workdir, start.sinks.front()));
        !status.ok()) {
      return status;
    }
    if (absl::Status status = write_file(_conf + "/master.cf", postfix_master_cf(*port)); !status.ok()) {
      return status;
    }
    const std::string log = _workdir + "/postfix-commands.log";
    if (absl::Status status = run_command({_binary, "-c", _conf, "check"}, log); !status.ok()) {
      return status;
    }
    _started = true;  // from here on, stop() runs "postfix stop"
    if (absl::Status status = run_command({_binary, "-c", _conf, "start"}, log); !status.ok()) {
      return status;
    }
    if (absl::Status status = read_master_pid(); !status.ok()) {
      return status;
    }
    if (absl::Status status = wait_for_greeting(*listen, kStartTimeoutMs, nullptr); !status.ok()) {
      return absl::Status(status.code(), to_absl(str_cat(to_std(status.message()), " (see ", _workdir, "/maillog)")));
    }
    return *listen;
  }

  absl::StatusOr<RelaySample> sample() override {
    if (_master <= 0 || !alive(_master)) {
      return absl::UnavailableError(str_cat("postfix master is not running (see ", _workdir, "/maillog)"));
    }
    RelaySample sample;
    sample.cpu = tree_cpu(_master);
    sample.memory = tree_memory(_master);
    uint64_t queued = 0;
    for (const char* dir : kQueueDirs) {
      std::error_code error;
      for (auto it = std::filesystem::recursive_directory_iterator(_queue + "/" + dir, error);
           !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
        queued += it->is_regular_file(error) ? 1 : 0;
      }
    }
    sample.queued = queued;
    return sample;
  }

  absl::Status stop() override {
    if (!_started) {
      return absl::OkStatus();
    }
    _started = false;
    // The tree as it is now: `postfix stop` signals master and returns before the tree is gone.
    const std::vector<pid_t> tree = _master > 0 ? process_tree(_master) : std::vector<pid_t>{};
    const absl::Status stopped = run_command({_binary, "-c", _conf, "stop"}, _workdir + "/postfix-commands.log");
    const uint64_t deadline = io::monotonic_ms() + kStopTimeoutMs;
    bool left = true;
    while (left && io::monotonic_ms() < deadline) {
      left = false;
      for (const pid_t pid : tree) {
        left = left || alive(pid);
      }
      if (left) {
        usleep(50'000);
      }
    }
    if (left) {
      for (const pid_t pid : tree) {
        kill(pid, SIGKILL);
      }
      return absl::DeadlineExceededError("postfix did not stop within 60 s: its processes were killed");
    }
    return stopped;
  }

 private:
  absl::Status read_master_pid() {
    std::ifstream in(_queue + "/pid/master.pid");
    long pid = 0;
    in >> pid;
    if (!in || pid <= 1) {
      return absl::InternalError(str_cat(_queue, "/pid/master.pid: no pid (see ", _workdir, "/maillog)"));
    }
    _master = static_cast<pid_t>(pid);
    return absl::OkStatus();
  }

  std::string _binary;
  std::string _workdir, _conf, _queue;
  pid_t _master = -1;
  bool _started = false;
};

}  // namespace

std::string postfix_main_cf(const std::string& workdir, const io::SocketAddress& relayhost) {
  return str_cat(
      "# Private relay Postfix of sluice-bench compare: smtpd on 127.0.0.1, everything to the sink.\n"
      "compatibility_level = 3.6\n"
      "queue_directory = ", workdir, "/queue\n"
      "data_directory = ", workdir, "/data\n"
      "mail_owner = postfix\n"
      "setgid_group = postdrop\n"
      "inet_interfaces = 127.0.0.1\n"
      "inet_protocols = ipv4\n"
      "myhostname = postfix-bench.invalid\n"
      "mydestination =\n"
      "mynetworks = 127.0.0.0/8\n"
      "relayhost = [", relayhost.ip_string(), "]:", relayhost.port(), "\n"
      "# No local delivery: nothing is local (mydestination is empty), and if it were, it would fail.\n"
      "local_transport = error:5.1.1 no local delivery in this benchmark\n"
      "local_recipient_maps =\n"
      "alias_maps =\n"
      "alias_database =\n"
      "biff = no\n"
      "maillog_file = ", workdir, "/maillog\n");
}

// The Debian master.cf.dist services a relay uses, not chrooted (the queue is in a temp dir),
// without local, virtual, lmtp, tlsmgr, showq and the pipe transports.
std::string postfix_master_cf(uint16_t smtpd_port) {
  return str_cat("127.0.0.1:", smtpd_port,
                 " inet n       -       n       -       -       smtpd\n"
                 "pickup    unix  n       -       n       60      1       pickup\n"
                 "cleanup   unix  n       -       n       -       0       cleanup\n"
                 "qmgr      unix  n       -       n       300     1       qmgr\n"
                 "rewrite   unix  -       -       n       -       -       trivial-rewrite\n"
                 "bounce    unix  -       -       n       -       0       bounce\n"
                 "defer     unix  -       -       n       -       0       bounce\n"
                 "trace     unix  -       -       n       -       0       bounce\n"
                 "verify    unix  -       -       n       -       1       verify\n"
                 "flush     unix  n       -       n       1000?   0       flush\n"
                 "proxymap  unix  -       -       n       -       -       proxymap\n"
                 "smtp      unix  -       -       n       -       -       smtp\n"
                 "relay     unix  -       -       n       -       -       smtp\n"
                 "error     unix  -       -       n       -       -       error\n"
                 "retry     unix  -       -       n       -       -       error\n"
                 "discard   unix  -       -       n       -       -       discard\n"
                 "anvil     unix  -       -       n       -       1       anvil\n"
                 "scache    unix  -       -       n       -       1       scache\n"
                 "postlog   unix-dgram n  -       n       -       1       postlogd\n");
}

std::unique_ptr<RelayUnderTest> make_postfix_relay(std::string postfix_binary) {
  return std::make_unique<PostfixRelay>(std::move(postfix_binary));
}

}  // namespace sluice::bench
