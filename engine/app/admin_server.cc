// Admin endpoint: health, readiness, Prometheus metrics and the queue API (list, summary, show,
// delete, hold, release, flush). Never touches shard state directly: every query runs on the
// shard's own thread through its control ring, and only what is cheap runs there (an index
// visit bounded by ?limit=, a dup() of a segment descriptor); bodies are read here.
//
// Security (DESIGN.md section 4): every endpoint but /healthz, /readyz and /metrics needs
// "Authorization: Bearer <token>" (401 otherwise). On TCP the Host header must name the
// listen address (or localhost:PORT on loopback), else 421 Misdirected Request: a page on
// another site that a browser resolves to 127.0.0.1 (DNS rebinding) sends its own host name.
// /healthz and /readyz are exempt from the Host check (they reveal nothing).
// A cross-site POST from a browser cannot carry the bearer token, so it gets 401.
#include "engine/app/admin_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <queue>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/app/descriptors.h"
#include "engine/app/log.h"
#include "engine/app/queue_report.h"
#include "engine/io/assert.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/socket.h"
#include "engine/io/strings.h"
#include "engine/smtp/command.h"
#include "spool/message_id.h"

namespace sluice::app {
namespace {

constexpr int kPollIntervalMs = 200;
constexpr uint64_t kRequestTimeoutMs = 5'000;  // a whole request head must arrive within this
constexpr uint64_t kLingerMs = 1'000;          // after an answer from the poll thread (see linger)
constexpr int kListenBacklog = 64;
constexpr int kReadsPerRound = 8;           // recv calls per connection per poll round (4 KiB each)
constexpr timeval kSocketTimeout = {5, 0};  // workers, per send: a client that stops reading
constexpr auto kShardAnswerTimeout = std::chrono::seconds(5);
constexpr auto kReadyAnswerTimeout = std::chrono::seconds(1);
// A request a shard has started (e.g. a delete waiting for its journal fdatasync) is waited for
// this much longer before the client is told the outcome is unknown.
constexpr auto kStartedRequestWaitMax = std::chrono::seconds(30);
constexpr size_t kListLimitDefault = 1000;
constexpr size_t kListLimitMax = 10000;
constexpr size_t kTokenBytes = 32;
constexpr size_t kTokenFileOctetsMax = 4096;
constexpr char kNextAfterHeader[] = "X-Sluice-Next-After";
constexpr io::RingOptions kDoorbellRing{64, 256};
// The endpoint lives in the descriptor reserve: its connections, the listener, a doorbell ring
// and a dup()'d segment per worker, with room to spare for the log and start-up files.
static_assert(AdminServer::kConnectionsMax + 1 + 2 * AdminServer::kWorkerThreads < kDescriptorReserve / 2);

uint64_t now_ms() {
  return io::monotonic_us() / 1000;
}

std::string trim_token(std::string_view text) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!text.empty() && space(text.front())) {
    text.remove_prefix(1);
  }
  while (!text.empty() && space(text.back())) {
    text.remove_suffix(1);
  }
  return std::string(text);
}

// Compares in time independent of where the first difference is (the length is no secret).
bool same_secret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return difference == 0;
}

absl::Status fsync_parent(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) {
    dir = ".";
  }
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(str_cat("open ", dir, ": ", std::strerror(errno)));
  }
  const int synced = fsync(fd);
  const int error = errno;
  close(fd);
  if (synced < 0) {
    return absl::InternalError(str_cat("fsync ", dir, ": ", std::strerror(error)));
  }
  return absl::OkStatus();
}

std::string rfc3339(uint64_t unix_ms) {
  const time_t seconds = static_cast<time_t>(unix_ms / 1000);
  tm parts{};
  gmtime_r(&seconds, &parts);
  return absl::StrFormat("%04d-%02d-%02dT%02d:%02d:%02dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                         parts.tm_hour, parts.tm_min, parts.tm_sec);
}

// NOTIFY= as the client could have written it: "", "NEVER" or "SUCCESS,FAILURE,DELAY" (a subset).
std::string notify_text(uint8_t notify) {
  if ((notify & spool::kNotifyNever) != 0) {
    return "NEVER";
  }
  std::string text;
  const std::pair<uint8_t, std::string_view> conditions[] = {
      {spool::kNotifySuccess, "SUCCESS"}, {spool::kNotifyFailure, "FAILURE"}, {spool::kNotifyDelay, "DELAY"}};
  for (const auto& [bit, name] : conditions) {
    if ((notify & bit) != 0) {
      str_append(&text, text.empty() ? "" : ",", name);
    }
  }
  return text;
}

// The DSN parameters (RFC 3461) as sent, "" when not given: {"ret", "envid", "recipients":
// [{"notify", "orcpt"}]}, the recipients parallel to the message's "recipients".
std::string dsn_json(const spool::MessageInfo& message) {
  const std::string_view ret = message.dsn_ret == spool::DsnRet::full   ? "FULL"
                               : message.dsn_ret == spool::DsnRet::hdrs ? "HDRS"
                                                                        : "";
  std::string recipients;
  for (size_t i = 0; i < message.recipients.size(); ++i) {
    const spool::RecipientDsn none;
    const spool::RecipientDsn& dsn = i < message.recipient_dsn.size() ? message.recipient_dsn[i] : none;
    str_append(&recipients, i == 0 ? "" : ", ", "{\"notify\": \"", notify_text(dsn.notify), "\", \"orcpt\": \"",
               json_escape(dsn.orcpt), "\"}");
  }
  return str_cat("{\"ret\": \"", ret, "\", \"envid\": \"", json_escape(message.dsn_envid), "\", \"recipients\": [",
                 recipients, "]}");
}

std::string message_json(const spool::MessageInfo& message) {
  std::string recipients;
  for (const std::string& rcpt : message.recipients) {
    str_append(&recipients, recipients.empty() ? "" : ", ", "\"", json_escape(rcpt), "\"");
  }
  const uint64_t next_attempt = message.next_attempt_ms != 0 ? message.next_attempt_ms : message.arrival_ms;
  const std::string dsn = dsn_json(message);
  return str_cat("{\"id\": \"", message.id, "\", \"from\": \"", json_escape(message.sender), "\", \"recipients\": [",
                 recipients, "], \"size\": ", message.rfc_size, ", \"arrived\": \"", rfc3339(message.arrival_ms),
                 "\", \"next_attempt\": \"", rfc3339(next_attempt), "\", \"attempts\": ", message.attempts,
                 ", \"status\": \"", message.status == spool::MessageStatus::held ? "held" : "queued",
                 "\", \"last_reply\": \"", json_escape(message.last_reply), "\", \"dsn\": ", dsn,
                 ", \"recipient_states\": ", recipient_states_json(message), "}");
}

bool has_recipient_domain(const spool::MessageInfo& message, std::string_view domain) {
  for (const std::string& rcpt : message.recipients) {
    if (equals_ignore_case(smtp::domain_of(rcpt), domain)) {
      return true;
    }
  }
  return false;
}

HttpResponse json_response(int status, std::string body) {
  return HttpResponse{status, "application/json", std::move(body), {}};
}

HttpResponse error_response(int status, std::string_view message) {
  return json_response(status, str_cat("{\"error\": \"", json_escape(message), "\"}"));
}

HttpResponse method_not_allowed(std::string_view allowed) {
  HttpResponse response = error_response(405, str_cat("method not allowed (allowed: ", allowed, ")"));
  response.headers.emplace_back("Allow", std::string(allowed));
  return response;
}

// A descriptor that closes itself: an answer the caller no longer waits for leaks nothing.
class OwnedFd {
 public:
  OwnedFd() = default;
  explicit OwnedFd(int fd) : _fd(fd) {}
  OwnedFd(OwnedFd&& other) noexcept : _fd(std::exchange(other._fd, -1)) {}
  OwnedFd& operator=(OwnedFd&& other) noexcept {
    reset();
    _fd = std::exchange(other._fd, -1);
    return *this;
  }
  ~OwnedFd() { reset(); }
  int get() const { return _fd; }

 private:
  void reset() {
    if (_fd >= 0) {
      close(_fd);
      _fd = -1;
    }
  }
  int _fd = -1;
};

// ---- calls into the shards ------------------------------------------------------------------

// One shard's answer to one request. The caller and the shard race only through `state`: a
// request the caller gave up on before the shard started it is never run (cancelled), and one
// the shard has started is always waited for (up to kStartedRequestWaitMax), so "503, nothing
// was done" is never a lie.
template <typename T>
struct ShardAnswer {
  enum class State : uint8_t { waiting, running, done, cancelled };
  std::mutex mutex;
  std::condition_variable changed;
  State state = State::waiting;
  std::optional<T> value;
};

// Runs on the shard's thread; calls `reply` exactly once, at once or later (e.g. from the
// shard's spool completion, once a journal record is durable).
template <typename T>
using ShardWork = std::function<void(Shard&, std::function<void(T)> reply)>;

enum class CallOutcome : uint8_t {
  answered,      // every shard answered
  not_answered,  // some shard never started the request (not running, busy, too slow): nothing done there
  unfinished,    // some shard started it and has not finished within the extra wait
};

template <typename T>
struct CallResult {
  CallOutcome outcome = CallOutcome::not_answered;
  std::vector<T> values;  // the answers of the shards that answered, in shard order (all when answered)
};

class ShardCaller {
 public:
  ShardCaller(const std::vector<Shard*>& shards, io::Ring* ring) : _shards(shards), _ring(ring) {}

  template <typename T>
  CallResult<T> call(ShardWork<T> work, std::chrono::steady_clock::duration timeout) {
    CallResult<T> result;
    if (_ring == nullptr) {
      return result;
    }
    for (Shard* shard : _shards) {
      if (!shard->ready()) {
        return result;
      }
    }
    using Answer = ShardAnswer<T>;
    std::vector<std::shared_ptr<Answer>> answers;
    bool all_posted = true;
    for (Shard* shard : _shards) {
      auto answer = std::make_shared<Answer>();
      answers.push_back(answer);
      auto* request = new ControlRequest{[answer, work](Shard& target) {
        {
          std::lock_guard lock(answer->mutex);
          if (answer->state == Answer::State::cancelled) {
            return;  // the caller gave up (timed out): never act on a request nobody waits for
          }
          answer->state = Answer::State::running;
        }
        work(target, [answer](T value) {
          std::lock_guard lock(answer->mutex);
          SLUICE_ASSERT(answer->state == Answer::State::running);  // answered exactly once
          answer->value.emplace(std::move(value));
          answer->state = Answer::State::done;
          answer->changed.notify_all();
        });
      }};
      if (!shard->post(request)) {
        delete request;
        answer->state = Answer::State::cancelled;
        all_posted = false;
        continue;
      }
      io::prep_doorbell(_ring->sqe(), shard->ring_fd(), Shard::doorbell_user_data());
    }
    _ring->submit_wait_and_reap(0, [](const io_uring_cqe&) {});
    // A shard whose control ring was full: give the request up everywhere it has not started.
    const auto deadline = all_posted ? std::chrono::steady_clock::now() + timeout : std::chrono::steady_clock::now();
    result.outcome = all_posted ? CallOutcome::answered : CallOutcome::not_answered;
    for (auto& answer : answers) {
      std::unique_lock lock(answer->mutex);
      if (answer->state == Answer::State::cancelled) {
        continue;
      }
      answer->changed.wait_until(lock, deadline, [&] { return answer->state == Answer::State::done; });
      if (answer->state == Answer::State::waiting) {
        answer->state = Answer::State::cancelled;
        result.outcome = CallOutcome::not_answered;
        continue;
      }
      if (answer->state == Answer::State::running && !answer->changed.wait_for(lock, kStartedRequestWaitMax, [&] {
            return answer->state == Answer::State::done;
          })) {
        if (result.outcome == CallOutcome::answered) {
          result.outcome = CallOutcome::unfinished;
        }
        continue;
      }
    }
    for (auto& answer : answers) {
      std::lock_guard lock(answer->mutex);
      if (answer->state == Answer::State::done) {
        result.values.push_back(std::move(*answer->value));
      }
    }
    return result;
  }

  // For work that answers at once, on the shard thread.
  template <typename T>
  CallResult<T> query(std::function<T(Shard&)> work, std::chrono::steady_clock::duration timeout) {
    return call<T>([work](Shard& shard, std::function<void(T)> reply) { reply(work(shard)); }, timeout);
  }

 private:
  const std::vector<Shard*>& _shards;
  io::Ring* _ring;
};

HttpResponse shards_did_not_answer(CallOutcome outcome) {
  if (outcome == CallOutcome::unfinished) {
    return error_response(504, "a shard started the request but did not finish in time: the outcome is unknown");
  }
  return error_response(503, "the shards did not answer (starting, stopping or overloaded); nothing was done");
}

// ---- the queue list: one page, selected on each shard without copying the index --------------

struct ListQuery {
  size_t limit = kListLimitDefault;
  std::string after;  // ids strictly greater than this
  std::optional<std::string> domain;
};

struct PageAnswer {
  std::vector<spool::MessageInfo> messages;
  uint64_t matching = 0;  // every message that matches the filter, on this shard
  uint64_t matching_bytes = 0;
};

PageAnswer select_page(const spool::ShardSpool& spool, const ListQuery& query) {
  // A max-heap of the `limit` smallest matching ids: O(index) time, O(limit) memory.
  auto greater_id = [](const spool::MessageInfo* a, const spool::MessageInfo* b) { return a->id < b->id; };
  std::priority_queue<const spool::MessageInfo*, std::vector<const spool::MessageInfo*>, decltype(greater_id)> best(
      greater_id);
  PageAnswer answer;
  spool.for_each_message([&](const spool::MessageInfo& message) {
    if (query.domain && !has_recipient_domain(message, *query.domain)) {
      return;
    }
    ++answer.matching;
    answer.matching_bytes += message.rfc_size;
    if (message.id <= query.after) {
      return;
    }
    if (best.size() < query.limit) {
      best.push(&message);
    } else if (message.id < best.top()->id) {
      best.pop();
      best.push(&message);
    }
  });
  answer.messages.resize(best.size());
  for (size_t i = answer.messages.size(); i-- > 0;) {
    answer.messages[i] = *best.top();
    best.pop();
  }
  return answer;
}

std::optional<std::string> parse_list_query(const HttpRequest& request, ListQuery& query) {
  if (const auto it = request.query.find("limit"); it != request.query.end()) {
    size_t limit = 0;
    if (!parse_decimal(std::string_view(it->second), limit) || limit == 0 || limit > kListLimitMax) {
      return str_cat("limit must be a number from 1 to ", kListLimitMax);
    }
    query.limit = limit;
  }
  if (const auto it = request.query.find("after"); it != request.query.end()) {
    if (!spool::id_ms(it->second)) {
      return "after must be a queue id (16 characters of 0-9 and A-Z)";
    }
    query.after = it->second;
  }
  if (const auto it = request.query.find("domain"); it != request.query.end()) {
    query.domain = it->second;
  }
  return std::nullopt;
}

// ---- one message: located on the shard, read here ------------------------------------------

struct ShowAnswer {
  bool found = false;
  spool::MessageInfo info;
  OwnedFd segment;  // dup() of the segment file, closed when this answer goes
  std::string error;
};

absl::StatusOr<std::string> read_wire(int fd, const spool::MessageLocation& location) {
  std::string bytes(location.wire_length, '\0');
  uint64_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(location.wire_offset + done));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return absl::InternalError(str_cat("reading the spool: ", n < 0 ? std::strerror(errno) : "short file"));
    }
    done += static_cast<uint64_t>(n);
  }
  return bytes;
}

struct ChangeAnswer {
  int status = 404;  // 200 done and durable, 404 not on this shard, 500 failed
  std::string error;
};

std::string logfmt_quote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    out.push_back(c == '"' || c == '\n' || c == '\r' ? '\'' : c);
  }
  out.push_back('"');
  return out;
}

// ---- connections ------------------------------------------------------------------------------

struct Reading {
  int fd = -1;
  std::string buffer;
  uint64_t deadline_ms = 0;
  bool lingering = false;  // answered; reading what is left so that close() does not reset it
  std::string peer;
  io::SocketAddress local;
};

void send_now(int fd, std::string_view text) {
  // Answers from the poll thread are small and the socket is fresh: they fit its send buffer.
  (void)send(fd, text.data(), text.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

void send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t sent = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) {
      continue;
    }
    if (sent <= 0) {
      return;
    }
    data.remove_prefix(static_cast<size_t>(sent));
  }
}

bool is_loopback(const io::SocketAddress& address) {
  static const io::Network v4 = *io::Network::parse("127.0.0.0/8");
  static const io::Network v6 = *io::Network::parse("::1/128");
  return v4.contains(address) || v6.contains(address);
}

bool host_allowed(std::string_view host, const io::SocketAddress& local) {
  if (equals_ignore_case(host, local.to_string())) {
    return true;
  }
  return is_loopback(local) && equals_ignore_case(host, str_cat("localhost:", local.port()));
}

bool is_public_path(std::string_view path) {
  return path == "/healthz" || path == "/readyz" || path == "/metrics";
}

bool authorized(const HttpRequest& request, std::string_view token) {
  const std::string* value = request.header("authorization");
  constexpr std::string_view kScheme = "bearer ";
  if (value == nullptr || value->size() <= kScheme.size() ||
      !equals_ignore_case(std::string_view(*value).substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  return same_secret(std::string_view(*value).substr(kScheme.size()), token);
}

}  // namespace

struct AdminServer::Pending {
  int fd = -1;
  HttpRequest request;
  std::string peer;
};

// ---- token file ------------------------------------------------------------------------------

absl::StatusOr<std::string> read_admin_token(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(str_cat("cannot read the admin token file ", path, ": ", std::strerror(errno)));
  }
  std::string text(kTokenFileOctetsMax + 1, '\0');
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(file.gcount()));
  if (text.size() > kTokenFileOctetsMax) {
    return absl::InvalidArgumentError(
        str_cat("the admin token file ", path, " is larger than ", kTokenFileOctetsMax, " octets"));
  }
  std::string token = trim_token(text);
  if (token.empty()) {
    return absl::InvalidArgumentError(str_cat("the admin token file ", path, " is empty"));
  }
  return token;
}

absl::StatusOr<std::string> load_or_create_admin_token(const std::string& path) {
  if (struct stat existing{}; stat(path.c_str(), &existing) == 0) {
    if ((existing.st_mode & 077) != 0) {
      log_line(str_cat("event=warning message=\"the admin token file ", path,
                       " can be read by other users: chmod 600 it\""));
    }
    return read_admin_token(path);
  }
  unsigned char random[kTokenBytes];
  size_t got = 0;
  while (got < sizeof(random)) {
    const ssize_t n = getrandom(random + got, sizeof(random) - got, 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return absl::InternalError(str_cat("getrandom: ", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  std::string token;
  for (const unsigned char byte : random) {
    token += absl::StrFormat("%02x", byte);
  }
  // Written under a temporary name and linked into place, so the token file is either absent
  // or complete (a crash never leaves an empty one), and never replaces one made meanwhile.
  const std::string temporary = str_cat(path, ".tmp.", getpid());
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InternalError(str_cat("cannot create the admin token file ", temporary, ": ", std::strerror(errno)));
  }
  const std::string content = token + "\n";
  const bool written = write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  const bool synced = written && fsync(fd) == 0;
  const int error = errno;
  close(fd);
  if (!synced) {
    unlink(temporary.c_str());
    return absl::InternalError(str_cat("cannot write the admin token file ", temporary, ": ", std::strerror(error)));
  }
  const int linked = link(temporary.c_str(), path.c_str());
  const int link_error = errno;
  unlink(temporary.c_str());
  if (linked < 0 && link_error != EEXIST) {
    return absl::InternalError(str_cat("cannot create the admin token file ", path, ": ", std::strerror(link_error)));
  }
  if (absl::Status status = fsync_parent(path); !status.ok()) {
    return status;
  }
  if (linked < 0) {
    return read_admin_token(path);  // created by someone else meanwhile: theirs holds
  }
  log_line(str_cat("event=admin_token_created path=", logfmt_quote(path)));
  return token;
}

// ---- the server --------------------------------------------------------------------------------

AdminServer::AdminServer(std::vector<Shard*> shards, const std::atomic<bool>* ready, std::string token)
    : _shards(std::move(shards)), _ready(ready), _token(std::move(token)) {
  SLUICE_ASSERT(!_token.empty());
}

AdminServer::~AdminServer() {
  stop();
}

namespace {

absl::StatusOr<int> listen_unix(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(str_cat("unix socket path too long: ", path));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(str_cat("socket: ", std::strerror(errno)));
  }
  struct stat existing {};
  if (lstat(path.c_str(), &existing) == 0) {
    if (!S_ISSOCK(existing.st_mode)) {
      close(fd);
      return absl::AlreadyExistsError(str_cat(path, " exists and is not a socket"));
    }
    // A live socket means another instance: refuse. A dead one was left by a crash: remove it.
    if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0 || errno == EAGAIN) {
      close(fd);
      return absl::UnavailableError(str_cat("cannot listen on unix:", path, ": another process is listening there"));
    }
    close(fd);
    unlink(path.c_str());
    return listen_unix(path);
  }
  // Before listen() nobody can connect, so the socket is private before anyone could use it.
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) < 0 || chmod(path.c_str(), 0600) < 0 ||
      listen(fd, kListenBacklog) < 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(str_cat("cannot listen on unix:", path, ": ", std::strerror(error)));
  }
  return fd;
}

}  // namespace

absl::StatusOr<HttpEndpoint> AdminServer::start(const HttpEndpoint& listen) {
  // Never SO_REUSEPORT: a second instance must fail to start rather than answer half of the
  // requests from its own spool.
  auto fd = listen.unix_path.empty() ? io::open_listener(listen.tcp, io::PortSharing::exclusive)
                                     : listen_unix(listen.unix_path);
  if (!fd.ok()) {
    return fd.status();
  }
  _listen_fd = *fd;
  _bound = listen;
  if (listen.unix_path.empty()) {
    auto bound = io::local_address(_listen_fd);
    if (!bound.ok()) {
      return bound.status();
    }
    _bound.tcp = *bound;
  }
  _poller = std::thread([this] { poll_loop(); });
  pthread_setname_np(_poller.native_handle(), "sluice-admin");
  for (size_t i = 0; i < kWorkerThreads; ++i) {
    _workers.emplace_back([this] { worker_loop(); });
    pthread_setname_np(_workers.back().native_handle(), str_cat("sluice-admin", i).c_str());
  }
  return _bound;
}

void AdminServer::stop() {
  {
    std::lock_guard lock(_mutex);
    _stopping.store(true);
  }
  _work_ready.notify_all();
  if (_poller.joinable()) {
    _poller.join();
  }
  for (auto& worker : _workers) {
    worker.join();
  }
  _workers.clear();
  for (auto& pending : _work) {
    close(pending->fd);
  }
  _work.clear();
  if (_listen_fd >= 0) {
    close(_listen_fd);
    _listen_fd = -1;
    if (!_bound.unix_path.empty()) {
      unlink(_bound.unix_path.c_str());
    }
  }
}

void AdminServer::poll_loop() {
  std::vector<Reading> connections;
  std::vector<pollfd> waiting;
  const bool unix_socket = !_bound.unix_path.empty();
  auto finish = [this](Reading& c) {
    close(c.fd);
    c.fd = -1;
    _open.fetch_sub(1);
  };
  // Answers from here (errors, /healthz) are sent at once; then the connection lingers: we shut
  // down our side and read until the client closes (or kLingerMs), since closing a socket with
  // unread input resets it and the client would lose the answer.
  auto answer = [](Reading& c, const HttpResponse& response, bool with_body = true) {
    send_now(c.fd, format_http_response(response, with_body));
    shutdown(c.fd, SHUT_WR);
    c.lingering = true;
    c.buffer.clear();
    c.deadline_ms = now_ms() + kLingerMs;
  };
  while (!_stopping.load()) {
    waiting.clear();
    waiting.push_back(pollfd{_listen_fd, POLLIN, 0});
    uint64_t next_deadline = now_ms() + kPollIntervalMs;
    for (const Reading& c : connections) {
      waiting.push_back(pollfd{c.fd, POLLIN, 0});
      next_deadline = std::min(next_deadline, c.deadline_ms);
    }
    const uint64_t before = now_ms();
    const int timeout = next_deadline > before ? static_cast<int>(next_deadline - before) : 0;
    if (poll(waiting.data(), waiting.size(), timeout) < 0 && errno != EINTR) {
      continue;
    }
    const uint64_t now = now_ms();
    for (size_t i = 0; i < connections.size(); ++i) {
      Reading& c = connections[i];
      const short events = waiting[i + 1].revents;
      if (events != 0) {
        char chunk[4096];
        // Bounded per round, so a client that streams without pause cannot keep this thread.
        for (int reads = 0; c.fd >= 0 && reads < kReadsPerRound; ++reads) {
          const ssize_t got = recv(c.fd, chunk, sizeof(chunk), MSG_DONTWAIT);
          if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
            break;
          }
          if (got <= 0) {
            finish(c);
            break;
          }
          if (c.lingering) {
            continue;
          }
          c.buffer.append(chunk, static_cast<size_t>(got));
          if (c.buffer.size() > kHttpRequestOctetsMax) {
            break;
          }
        }
      }
      if (c.fd < 0) {
        continue;
      }
      if (c.lingering) {
        if (now >= c.deadline_ms) {
          finish(c);
        }
        continue;
      }
      const size_t head_end = find_http_head_end(c.buffer);
      if (head_end == std::string::npos || head_end > kHttpRequestOctetsMax) {
        if (c.buffer.size() > kHttpRequestOctetsMax) {
          answer(c, error_response(431, str_cat("request head larger than ", kHttpRequestOctetsMax, " octets")));
        } else if (now >= c.deadline_ms) {
          answer(c, error_response(408, "the request did not arrive in time"));
        }
        continue;
      }
      auto request = parse_http_request(std::string_view(c.buffer).substr(0, head_end));
      if (!request.ok()) {
        answer(c, error_response(400, to_std(request.status().message())));
        continue;
      }
      // Health checks are exempt: they reveal nothing, and balancers send assorted Host values.
      const bool health_check = request->path == "/healthz" || request->path == "/readyz";
      if (!unix_socket && !health_check) {
        const std::string* host = request->header("host");
        if (host == nullptr && request->version != "HTTP/1.0") {
          answer(c, error_response(400, "a Host header is required"));
          continue;
        }
        // Without Host (HTTP/1.0) it is no browser, so no DNS rebinding.
        if (host != nullptr && !host_allowed(*host, c.local)) {
          answer(c, error_response(421, str_cat("this endpoint answers for ", c.local.to_string(), " only")));
          continue;
        }
      }
      if (request->path == "/healthz") {
        const bool get = request->method == "GET" || request->method == "HEAD";
        answer(c, get ? json_response(200, "{\"status\": \"ok\"}") : method_not_allowed("GET, HEAD"),
               request->method != "HEAD");
        continue;
      }
      if (!is_public_path(request->path) && !authorized(*request, _token)) {
        HttpResponse refused = error_response(401, "missing or wrong bearer token (see [admin] token_file)");
        refused.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"sluice\"");
        answer(c, refused);
        continue;
      }
      auto pending = std::make_unique<Pending>();
      pending->fd = std::exchange(c.fd, -1);
      pending->request = std::move(*request);
      pending->peer = c.peer;
      {
        std::lock_guard lock(_mutex);
        _work.push_back(std::move(pending));
      }
      _work_ready.notify_one();
    }
    std::erase_if(connections, [](const Reading& c) { return c.fd < 0; });
    if (!(waiting[0].revents & POLLIN)) {
      continue;
    }
    while (true) {
      const int fd = accept4(_listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        break;
      }
      if (_open.load() >= kConnectionsMax) {
        send_now(fd, format_http_response(error_response(503, "too many admin connections")));
        close(fd);
        continue;
      }
      _open.fetch_add(1);
      Reading c;
      c.fd = fd;
      c.deadline_ms = now + kRequestTimeoutMs;
      if (!unix_socket) {
        c.peer = io::peer_address(fd).ip_string();
        c.local = io::local_address(fd).value_or(_bound.tcp);
      } else {
        c.peer = "unix";
      }
      connections.push_back(std::move(c));
    }
  }
  for (Reading& c : connections) {
    if (c.fd >= 0) {
      finish(c);
    }
  }
}

namespace {

// Everything a worker answers. Runs on a worker thread; blocking is fine here, never on a shard.
class Handler {
 public:
  Handler(const std::vector<Shard*>& shards, const std::atomic<bool>* ready, io::Ring* ring)
      : _shards(shards), _ready(ready), _caller(shards, ring) {}

  HttpResponse handle(const HttpRequest& request, const std::string& peer) {
    const std::string& path = request.path;
    const std::string& method = request.method;
    const bool get = method == "GET" || method == "HEAD";
    if (path == "/readyz") {
      return get ? readyz() : method_not_allowed("GET, HEAD");
    }
    if (path == "/metrics") {
      return get ? metrics() : method_not_allowed("GET, HEAD");
    }
    if (path == "/api/queue" || path == "/api/queue/summary") {
      if (!get) {
        return method_not_allowed("GET, HEAD");
      }
      return path == "/api/queue" ? list(request) : summary(request);
    }
    if (path == "/api/queue/flush") {
      if (method != "POST") {
        return method_not_allowed("POST");
      }
      return flush(request, peer);
    }
    if (path.starts_with("/api/queue/")) {
      std::vector<std::string> parts = absl::StrSplit(path.substr(strlen("/api/queue/")), '/');
      if (parts.size() > 2 || parts[0].empty()) {
        return error_response(404, "not found");
      }
      const std::string& id = parts[0];
      const std::string action = parts.size() > 1 ? parts[1] : "";
      if (action.empty() && get) {
        return show(id, request);
      }
      if (action.empty() && method == "DELETE") {
        return change(id, "delete", peer);
      }
      if ((action == "hold" || action == "release") && method == "POST") {
        return change(id, action, peer);
      }
      if (action.empty()) {
        return method_not_allowed("GET, HEAD, DELETE");
      }
      if (action == "hold" || action == "release") {
        return method_not_allowed("POST");
      }
      return error_response(404, "not found");
    }
    return error_response(404, "not found");
  }

 private:
  HttpResponse readyz() {
    if (!_ready->load()) {
      return json_response(503, "{\"ready\": false, \"reason\": \"starting or draining\"}");
    }
    auto below = _caller.query<bool>([](Shard& shard) { return shard.spool().below_min_free(); }, kReadyAnswerTimeout);
    if (below.outcome != CallOutcome::answered) {
      return json_response(503, "{\"ready\": false, \"reason\": \"a shard did not answer\"}");
    }
    if (std::find(below.values.begin(), below.values.end(), true) != below.values.end()) {
      return json_response(503, "{\"ready\": false, \"reason\": \"spool below min_free_bytes\"}");
    }
    return json_response(200, "{\"ready\": true}");
  }

  HttpResponse metrics() {
    auto spools = _caller.query<SpoolSnapshot>(
        [](Shard& shard) {
          const spool::ShardSpool& spool = shard.spool();
          SpoolSnapshot snapshot;
          snapshot.metrics = spool.metrics();
          snapshot.messages = spool.size();
          snapshot.free_bytes = spool.free_bytes();
          snapshot.below_min_free = spool.below_min_free();
          shard.delivery_snapshot(snapshot);
          return snapshot;
        },
        kShardAnswerTimeout);
    std::vector<const ShardMetrics*> counters;
    for (Shard* shard : _shards) {
      counters.push_back(&shard->metrics());
    }
    // Only when every shard answered: values are in shard order, and a missing one would shift the
    // others' figures under the wrong shard label (and make totals look like a counter reset).
    const std::vector<SpoolSnapshot> none;
    const std::vector<SpoolSnapshot>& snapshots = spools.outcome == CallOutcome::answered ? spools.values : none;
    return HttpResponse{200, "text/plain; version=0.0.4", render_prometheus(counters, snapshots), {}};
  }

  HttpResponse list(const HttpRequest& request) {
    ListQuery query;
    if (const std::optional<std::string> problem = parse_list_query(request, query)) {
      return error_response(400, *problem);
    }
    auto pages = _caller.query<PageAnswer>([query](Shard& shard) { return select_page(shard.spool(), query); },
                                           kShardAnswerTimeout);
    if (pages.outcome != CallOutcome::answered) {
      return shards_did_not_answer(pages.outcome);
    }
    std::vector<spool::MessageInfo> merged;
    bool more = false;
    QueueListPage totals;
    for (PageAnswer& page : pages.values) {
      more = more || page.messages.size() == query.limit;  // that shard may hold more past its page
      totals.total_messages += page.matching;
      totals.total_bytes += page.matching_bytes;
      std::move(page.messages.begin(), page.messages.end(), std::back_inserter(merged));
    }
    std::sort(merged.begin(), merged.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
    if (merged.size() > query.limit) {
      merged.resize(query.limit);
      more = true;
    }
    more = more && !merged.empty();
    HttpResponse response;
    if (const auto format = request.query.find("format"); format != request.query.end() && format->second == "text") {
      totals.first = query.after.empty();
      totals.last = !more;
      response = HttpResponse{200, "text/plain", format_queue_list(merged, totals), {}};
    } else {
      std::string items;
      for (const auto& message : merged) {
        str_append(&items, items.empty() ? "" : ",\n  ", message_json(message));
      }
      response = json_response(200, str_cat("{\"count\": ", merged.size(), ", \"messages\": [", items, "]}"));
    }
    if (more) {
      response.headers.emplace_back(kNextAfterHeader, merged.back().id);
    }
    return response;
  }

  HttpResponse summary(const HttpRequest& request) {
    const uint64_t now = io::wall_ms();
    std::optional<SummaryQueue> queue = SummaryQueue::all;
    if (const auto it = request.query.find("queue"); it != request.query.end()) {
      queue = parse_summary_queue(it->second);
    }
    if (!queue) {
      return error_response(400, "queue must be all, active or deferred");
    }
    auto parts = _caller.query<QueueSummary>(
        [now, which = *queue](Shard& shard) {
          QueueSummary summary;
          summary.queue = which;
          shard.spool().for_each_message([&](const spool::MessageInfo& message) { summary.add(message, now); });
          return summary;
        },
        kShardAnswerTimeout);
    if (parts.outcome != CallOutcome::answered) {
      return shards_did_not_answer(parts.outcome);
    }
    QueueSummary all;
    for (const QueueSummary& part : parts.values) {
      all.merge(part);
    }
    if (const auto format = request.query.find("format"); format != request.query.end() && format->second == "json") {
      return json_response(200, queue_summary_json(all));
    }
    return HttpResponse{200, "text/plain", format_queue_summary(all), {}};
  }

  HttpResponse show(const std::string& id, const HttpRequest& request) {
    auto answers = _caller.query<ShowAnswer>(
        [id](Shard& shard) {
          ShowAnswer answer;
          const std::optional<spool::MessageInfo> found = shard.spool().find(id);
          if (!found) {
            return answer;
          }
          answer.found = true;
          answer.info = *found;
          const int fd = shard.spool().segment_fd(found->location.segment_id);
          // The admin thread reads the body from its own descriptor: no blocking read here.
          const int copy = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
          if (copy < 0) {
            answer.error = fd < 0 ? "the message's segment is not open" : str_cat("dup: ", std::strerror(errno));
          }
          answer.segment = OwnedFd(copy);
          return answer;
        },
        kShardAnswerTimeout);
    if (answers.outcome != CallOutcome::answered) {
      return shards_did_not_answer(answers.outcome);
    }
    for (ShowAnswer& answer : answers.values) {
      if (!answer.found) {
        continue;
      }
      if (!answer.error.empty()) {
        return error_response(500, answer.error);
      }
      auto wire = read_wire(answer.segment.get(), answer.info.location);
      if (!wire.ok()) {
        return error_response(500, to_std(wire.status().message()));
      }
      std::string message = remove_dot_stuffing(*wire);
      if (const auto raw = request.query.find("raw"); raw != request.query.end() && raw->second == "1") {
        return HttpResponse{200, "message/rfc822", std::move(message), {}};
      }
      std::string json = message_json(answer.info);
      json.pop_back();
      if (smtp::valid_utf8(message)) {
        str_append(&json, ", \"message\": \"", json_escape(message), "\"}");
      } else {
        str_append(&json, ", \"message_base64\": \"", absl::Base64Escape(to_absl(message)), "\"}");
      }
      return json_response(200, std::move(json));
    }
    return error_response(404, "no such message");
  }

  // POST /api/queue/flush[?domain=D]: deferred mail (of D) is tried now; sites backed off are up.
  HttpResponse flush(const HttpRequest& request, const std::string& peer) {
    std::string domain;
    if (const auto it = request.query.find("domain"); it != request.query.end()) {
      domain = absl::AsciiStrToLower(it->second);
    }
    auto answers = _caller.call<uint64_t>(
        [domain](Shard& shard, std::function<void(uint64_t)> reply) { reply(shard.flush_queue(domain)); },
        kShardAnswerTimeout);
    uint64_t flushed = 0;
    for (const uint64_t count : answers.values) {
      flushed += count;
    }
    if (answers.outcome != CallOutcome::answered && answers.values.empty()) {
      return shards_did_not_answer(answers.outcome);
    }
    log_line(str_cat("event=admin action=flush domain=", domain.empty() ? std::string("-") : logfmt_quote(domain),
                     " flushed=", flushed, " client=", peer));
    return json_response(202, str_cat("{\"flushed\": ", flushed, "}"));
  }

  // DELETE, hold, release: answered once the journal record is durable (or failed).
  HttpResponse change(const std::string& id, const std::string& action, const std::string& peer) {
    auto answers = _caller.call<ChangeAnswer>(
        [id, action](Shard& shard, std::function<void(ChangeAnswer)> reply) {
          spool::ShardSpool& spool = shard.spool();
          if (!spool.find(id)) {
            reply(ChangeAnswer{404, ""});
            return;
          }
          absl::StatusOr<uint64_t> ticket = action == "delete" ? spool.remove(id)
                                            : action == "hold" ? spool.hold(id)
                                                               : spool.release(id);
          if (!ticket.ok()) {
            reply(ChangeAnswer{ticket.status().code() == absl::StatusCode::kNotFound ? 404 : 500,
                               std::string(ticket.status().message())});
            return;
          }
          shard.await_ticket(*ticket, [reply, id, &shard](const absl::Status& status) {
            if (status.ok()) {
              shard.queue_changed(id);  // delivery forgets it (delete, hold) or takes it up (release)
            }
            reply(status.ok() ? ChangeAnswer{200, ""} : ChangeAnswer{500, std::string(status.message())});
          });
        },
        kShardAnswerTimeout);
    // One shard holds the message. Its answer counts even when another shard did not answer
    // (that one never ran the request, so it did nothing); without it the outcome is unknown
    // only if a shard started and did not finish.
    HttpResponse response = error_response(404, "no such message");
    std::string result = "not_found";
    std::string error;
    bool found = false;
    for (const ChangeAnswer& answer : answers.values) {
      if (answer.status == 200) {
        response = json_response(200, str_cat("{\"id\": \"", id, "\", \"done\": \"", action, "\"}"));
        result = "ok";
        found = true;
      } else if (answer.status != 404) {
        response = error_response(answer.status, str_cat("the ", action, " was not made durable: ", answer.error));
        result = "error";
        error = answer.error;
        found = true;
      }
    }
    if (!found && answers.outcome != CallOutcome::answered) {
      response = shards_did_not_answer(answers.outcome);
      result = answers.outcome == CallOutcome::unfinished ? "unknown" : "not_done";
    }
    const std::string id_field = spool::id_ms(id) ? id : logfmt_quote(id);  // a URL may hold anything
    log_line(str_cat("event=admin action=", action, " id=", id_field, " result=", result, " client=", peer,
                     error.empty() ? "" : " error=", error.empty() ? std::string() : logfmt_quote(error)));
    return response;
  }

  const std::vector<Shard*>& _shards;
  const std::atomic<bool>* _ready;
  ShardCaller _caller;
};

}  // namespace

void AdminServer::worker_loop() {
  // One doorbell ring per worker (a ring belongs to the thread that made it).
  std::unique_ptr<io::Ring> ring;
  if (auto created = io::Ring::create_for_this_thread(kDoorbellRing); created.ok()) {
    ring.reset(*created);
  } else {
    log_line(str_cat("event=admin_error error=", logfmt_quote(to_std(created.status().message()))));
  }
  Handler handler(_shards, _ready, ring.get());
  while (true) {
    std::unique_ptr<Pending> pending;
    {
      std::unique_lock lock(_mutex);
      _work_ready.wait(lock, [this] { return _stopping.load() || !_work.empty(); });
      if (_work.empty()) {
        return;
      }
      pending = std::move(_work.front());
      _work.pop_front();
    }
    const int fd = pending->fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &kSocketTimeout, sizeof(kSocketTimeout));
    const HttpResponse response = handler.handle(pending->request, pending->peer);
    send_all(fd, format_http_response(response, pending->request.method != "HEAD"));
    shutdown(fd, SHUT_WR);
    close(fd);
    _open.fetch_sub(1);
  }
}

}  // namespace sluice::app
