#pragma once
// The admin HTTP endpoint: /healthz, /readyz, /metrics and the queue API. Control plane only.
// One poll thread accepts connections and reads request heads (non-blocking, each within a
// deadline, at most kConnectionsMax at once) and answers /healthz and malformed requests itself,
// so idle or trickling clients never hold the health check; a small fixed pool of workers runs
// the other requests. It reaches shard state only by posting requests to each shard's control
// ring; a shard never does blocking work for it (message bodies are read here, from a dup()'d
// segment descriptor). Every endpoint but /healthz, /readyz and /metrics needs the bearer token.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/app/http.h"
#include "engine/app/shard.h"
#include "engine/io/address.h"

namespace sluice::app {

// Reads the token file (content with surrounding whitespace trimmed); the CLI's side.
absl::StatusOr<std::string> read_admin_token(const std::string& path);
// The server's side: reads the token file, or creates it with a random token (mode 0600,
// fsync'd, directory fsync'd) when it does not exist.
absl::StatusOr<std::string> load_or_create_admin_token(const std::string& path);

class AdminServer {
 public:
  static constexpr size_t kConnectionsMax = 32;  // open admin connections; above it: 503, close
  static constexpr size_t kWorkerThreads = 4;

  AdminServer(std::vector<Shard*> shards, const std::atomic<bool>* ready, std::string token);
  ~AdminServer();
  // Binds (no SO_REUSEPORT: a second instance must fail, not share the port) and starts the
  // threads. Returns the bound endpoint (the port the kernel chose for port 0).
  absl::StatusOr<HttpEndpoint> start(const HttpEndpoint& listen);
  void stop();

  struct Pending;  // a connection whose head was read, waiting for a worker

 private:
  void poll_loop();
  void worker_loop();

  std::vector<Shard*> _shards;
  const std::atomic<bool>* _ready;
  std::string _token;
  HttpEndpoint _bound;
  int _listen_fd = -1;
  std::atomic<bool> _stopping{false};
  std::atomic<size_t> _open{0};  // connections accepted and not yet closed
  std::mutex _mutex;
  std::condition_variable _work_ready;
  std::deque<std::unique_ptr<Pending>> _work;  // at most kConnectionsMax (each is an open one)
  std::thread _poller;
  std::vector<std::thread> _workers;
};

}  // namespace sluice::app
