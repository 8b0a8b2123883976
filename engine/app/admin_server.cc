// Admin endpoint: health, readiness, Prometheus metrics and the queue API (list, show, delete,
// hold, release, flush). Never touches shard state directly: every query runs on the shard's
// own thread through its control ring.
#include "engine/app/admin_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <future>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/app/http.h"
#include "engine/app/log.h"
#include "engine/app/queue_report.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/socket.h"
#include "engine/io/strings.h"
#include "engine/smtp/command.h"

namespace sluice::app {
namespace {

constexpr int kPollIntervalMs = 200;
constexpr int kRequestTimeoutMs = 5'000;    // a whole request must arrive within this
constexpr timeval kSocketTimeout = {5, 0};  // per send/recv: a client that stops reading
constexpr auto kShardAnswerTimeout = std::chrono::seconds(5);

std::string rfc3339(uint64_t unix_ms) {
  const time_t seconds = static_cast<time_t>(unix_ms / 1000);
  tm parts{};
  gmtime_r(&seconds, &parts);
  return absl::StrFormat("%04d-%02d-%02dT%02d:%02d:%02dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                         parts.tm_hour, parts.tm_min, parts.tm_sec);
}

std::string message_json(const spool::MessageInfo& message) {
  std::string recipients;
  for (const std::string& rcpt : message.recipients) {
    str_append(&recipients, recipients.empty() ? "" : ", ", "\"", json_escape(rcpt), "\"");
  }
  const uint64_t next_attempt = message.next_attempt_ms != 0 ? message.next_attempt_ms : message.arrival_ms;
  return str_cat("{\"id\": \"", message.id, "\", \"from\": \"", json_escape(message.sender), "\", \"recipients\": [",
                 recipients, "], \"size\": ", message.rfc_size, ", \"arrived\": \"", rfc3339(message.arrival_ms),
                 "\", \"next_attempt\": \"", rfc3339(next_attempt), "\", \"attempts\": ", message.attempts,
                 ", \"status\": \"", message.status == spool::MessageStatus::held ? "held" : "queued",
                 "\", \"last_reply\": \"", json_escape(message.last_reply), "\"}");
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
  return HttpResponse{status, "application/json", std::move(body)};
}

HttpResponse error_response(int status, std::string_view message) {
  return json_response(status, str_cat("{\"error\": \"", json_escape(message), "\"}"));
}

// Runs `work` on every shard's thread, in shard order, and returns each answer.
template <typename T>
class ShardCaller {
 public:
  explicit ShardCaller(const std::vector<Shard*>& shards) : _shards(shards) {}

  std::optional<std::vector<T>> call(std::function<T(Shard&)> work) {
    if (!_ring) {
      auto created = io::Ring::create_for_this_thread(io::RingOptions{64, 256});
      if (!created.ok()) {
        return std::nullopt;
      }
      _ring.reset(*created);
    }
    std::vector<std::future<T>> answers;
    for (Shard* shard : _shards) {
      if (!shard->ready()) {
        return std::nullopt;
      }
      auto promise = std::make_shared<std::promise<T>>();
      answers.push_back(promise->get_future());
      auto* request = new ControlRequest{[promise, work](Shard& target) { promise->set_value(work(target)); }};
      if (!shard->post(request)) {
        delete request;
        return std::nullopt;
      }
      io::prep_doorbell(_ring->sqe(), shard->ring_fd(), Shard::doorbell_user_data());
    }
    _ring->submit_wait_and_reap(0, [](const io_uring_cqe&) {});
    std::vector<T> results;
    for (auto& answer : answers) {
      if (answer.wait_for(kShardAnswerTimeout) != std::future_status::ready) {
        return std::nullopt;
      }
      results.push_back(answer.get());
    }
    return results;
  }

 private:
  const std::vector<Shard*>& _shards;
  std::unique_ptr<io::Ring> _ring;
};

}  // namespace

AdminServer::AdminServer(std::vector<Shard*> shards, const std::atomic<bool>* ready)
    : _shards(std::move(shards)), _ready(ready) {}

AdminServer::~AdminServer() {
  stop();
}

absl::StatusOr<io::SocketAddress> AdminServer::start(const io::SocketAddress& listen) {
  auto fd = io::open_listener(listen);
  if (!fd.ok()) {
    return fd.status();
  }
  _listen_fd = *fd;
  auto bound = io::local_address(_listen_fd);
  _thread = std::thread([this] { serve(); });
  pthread_setname_np(_thread.native_handle(), "sluice-admin");
  return bound;
}

void AdminServer::stop() {
  _stopping.store(true);
  if (_thread.joinable()) {
    _thread.join();
  }
  if (_listen_fd >= 0) {
    close(_listen_fd);
    _listen_fd = -1;
  }
}

void AdminServer::serve() {
  while (!_stopping.load()) {
    pollfd waiting{_listen_fd, POLLIN, 0};
    if (poll(&waiting, 1, kPollIntervalMs) <= 0) {
      continue;
    }
    const int fd = accept4(_listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      continue;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &kSocketTimeout, sizeof(kSocketTimeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &kSocketTimeout, sizeof(kSocketTimeout));
    handle_connection(fd);
    close(fd);
  }
}

namespace {

// The admin thread serves one connection at a time, so every request is bounded in time as a
// whole: a client trickling bytes cannot hold the endpoint (or a drain) hostage.
std::optional<std::string> read_request_head(int fd) {
  std::string head;
  char buffer[4096];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kRequestTimeoutMs);
  while (head.find("\r\n\r\n") == std::string::npos) {
    if (head.size() > kHttpRequestOctetsMax) {
      return std::nullopt;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd waiting{fd, POLLIN, 0};
    if (left.count() <= 0 || poll(&waiting, 1, static_cast<int>(left.count())) <= 0) {
      return std::nullopt;
    }
    const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
    if (got <= 0) {
      return std::nullopt;
    }
    head.append(buffer, static_cast<size_t>(got));
  }
  return head;
}

void send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t sent = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (sent <= 0) {
      return;
    }
    data.remove_prefix(static_cast<size_t>(sent));
  }
}

}  // namespace

void AdminServer::handle_connection(int fd) {
  const std::optional<std::string> head = read_request_head(fd);
  if (!head) {
    return;
  }
  const auto request = parse_http_request(*head);
  HttpResponse response;
  if (!request.ok()) {
    response = error_response(400, to_std(request.status().message()));
    send_all(fd, format_http_response(response));
    return;
  }
  const std::string& path = request->path;
  const std::string& method = request->method;
  ShardCaller<std::vector<spool::MessageInfo>> list_caller(_shards);
  if (path == "/healthz") {
    response = json_response(200, "{\"status\": \"ok\"}");
  } else if (path == "/readyz") {
    const bool ready = _ready->load();
    response = json_response(ready ? 200 : 503, ready ? "{\"ready\": true}" : "{\"ready\": false}");
  } else if (path == "/metrics") {
    ShardCaller<spool::SpoolMetrics> caller(_shards);
    auto spools = caller.call([](Shard& shard) { return shard.spool().metrics(); });
    std::vector<const ShardMetrics*> metrics;
    for (Shard* shard : _shards) {
      metrics.push_back(&shard->metrics());
    }
    response = HttpResponse{200, "text/plain; version=0.0.4",
                            render_prometheus(metrics, spools.value_or(std::vector<spool::SpoolMetrics>{}))};
  } else if ((path == "/api/queue" || path == "/api/queue/summary") && method == "GET") {
    auto lists = list_caller.call([](Shard& shard) { return shard.spool().list(); });
    if (!lists) {
      response = error_response(503, "the shards did not answer (starting or stopping)");
    } else {
      std::vector<spool::MessageInfo> all;
      for (auto& list : *lists) {
        for (auto& message : list) {
          all.push_back(std::move(message));
        }
      }
      std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
      const auto domain = request->query.find("domain");
      size_t limit = SIZE_MAX;
      if (const auto it = request->query.find("limit"); it != request->query.end()) {
        parse_decimal(std::string_view(it->second), limit);
      }
      if (path == "/api/queue/summary") {
        send_all(fd, format_http_response(HttpResponse{200, "text/plain", format_queue_summary(all, io::wall_ms())}));
        return;
      }
      std::vector<spool::MessageInfo> selected;
      std::string items;
      size_t count = 0;
      for (const auto& message : all) {
        if (count >= limit) {
          break;
        }
        if (domain != request->query.end() && !has_recipient_domain(message, domain->second)) {
          continue;
        }
        str_append(&items, count == 0 ? "" : ",\n  ", message_json(message));
        selected.push_back(message);
        ++count;
      }
      if (const auto format = request->query.find("format");
          format != request->query.end() && format->second == "text") {
        send_all(fd, format_http_response(HttpResponse{200, "text/plain", format_queue_list(selected)}));
        return;
      }
      response = json_response(200, str_cat("{\"count\": ", count, ", \"messages\": [", items, "]}"));
    }
  } else if (path == "/api/queue/flush" && method == "POST") {
    // Delivery is a later issue: nothing is scheduled yet, so there is nothing to hurry.
    response = json_response(202, "{\"flushed\": 0, \"note\": \"delivery is not running in this version\"}");
  } else if (path.starts_with("/api/queue/")) {
    std::vector<std::string> parts = absl::StrSplit(path.substr(strlen("/api/queue/")), '/');
    const std::string id = parts[0];
    const std::string action = parts.size() > 1 ? parts[1] : "";
    ShardCaller<std::pair<int, std::string>> caller(_shards);
    auto answers = caller.call([id, action, method](Shard& shard) -> std::pair<int, std::string> {
      spool::ShardSpool& spool = shard.spool();
      const auto found = spool.find(id);
      if (!found) {
        return {404, ""};
      }
      if (method == "GET" && action.empty()) {
        auto body = spool.read_message(id);
        std::string json = message_json(*found);
        json.pop_back();
        str_append(&json, ", \"message\": \"", json_escape(body.ok() ? *body : ""), "\"}");
        return {200, json};
      }
      absl::StatusOr<uint64_t> done = absl::InvalidArgumentError("unknown action");
      if (method == "DELETE" && action.empty()) {
        done = spool.remove(id);
      } else if (method == "POST" && action == "hold") {
        done = spool.hold(id);
      } else if (method == "POST" && action == "release") {
        done = spool.release(id);
      } else {
        return {405, ""};
      }
      if (!done.ok()) {
        return {400, std::string(done.status().message())};
      }
      return {200, str_cat("{\"id\": \"", id, "\", \"done\": \"", method == "DELETE" ? "delete" : action, "\"}")};
    });
    if (!answers) {
      response = error_response(503, "the shards did not answer (starting or stopping)");
    } else {
      response = error_response(404, "no such message");
      for (auto& [status, body] : *answers) {
        if (status == 200) {
          response = json_response(200, body);
        } else if (status != 404) {
          response = error_response(status, body.empty() ? "method not allowed" : body);
        }
      }
    }
  } else {
    response = error_response(404, "not found");
  }
  send_all(fd, format_http_response(response));
}

}  // namespace sluice::app
