#pragma once
// The admin HTTP endpoint: /healthz, /readyz, /metrics and the queue API. It runs on its own
// thread with blocking sockets (control plane only) and reaches shard state only by posting
// requests to each shard's control ring and waiting for the answer.
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/app/shard.h"
#include "engine/io/address.h"

namespace sluice::app {

class AdminServer {
 public:
  AdminServer(std::vector<Shard*> shards, const std::atomic<bool>* ready);
  ~AdminServer();
  absl::StatusOr<io::SocketAddress> start(const io::SocketAddress& listen);
  void stop();

 private:
  void serve();
  void handle_connection(int fd);

  std::vector<Shard*> _shards;
  const std::atomic<bool>* _ready;
  int _listen_fd = -1;
  std::atomic<bool> _stopping{false};
  std::thread _thread;
};

}  // namespace sluice::app
