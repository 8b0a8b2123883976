#pragma once
// A shard: one thread, one core, one io_uring. It owns its listener sockets, its SMTP sessions,
// its spool and its timers; nothing in it is touched by another thread except through the
// control ring (admin requests) and the relaxed-atomic metrics it publishes.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/app/client_limits.h"
#include "engine/app/metrics.h"
#include "engine/io/address.h"
#include "engine/io/mailbox.h"
#include "engine/io/spsc_ring.h"
#include "engine/relay/scheduler.h"
#include "engine/smtp/client_session.h"
#include "engine/smtp/server_session.h"
#include "resolver/mx_plan.h"
#include "spool/spool.h"

namespace sluice::app {

class Shard;

// The seam under the shard's spool I/O. By default the shard submits the spool's requests on its
// own ring; a test can take them instead (to perform them, hold them or fail them) and give each
// result back with Shard::complete_spool_io on the shard's thread (e.g. from a ControlRequest),
// so that the real shard logic runs with injected results.
class SpoolIoPort {
 public:
  virtual ~SpoolIoPort() = default;
  // On the shard's thread. The request's buffers stay valid until its completion is given back.
  // A request with link_next is followed by the one it links to, which must then run only if
  // this one completed in full, else complete with -ECANCELED (io_uring's IOSQE_IO_LINK).
  virtual void submit(const spool::IoRequest& request) = 0;
};

// Delivery across shards (DESIGN.md "Ownership"): a recipient domain belongs to one shard, by
// hash. The receiving shard makes a message's jobs and sends each to its domain's shard; that
// shard delivers it (reading the body from the receiving shard's segment file) and sends the
// outcomes back, which the receiving shard journals. Records are fixed-size; a job or a batch of
// outcomes travels as a pointer whose ownership passes with it (the receiver deletes it).
struct DeliveryMail {
  enum class Kind : uint8_t {
    job,       // payload: relay::Handoff*, to the shard that owns the job's site
    outcomes,  // payload: OutcomeBatch*, to the origin shard
    drop,      // queue_id: the origin held or deleted the message: forget its jobs
  };
  Kind kind = Kind::job;
  void* payload = nullptr;
  char queue_id[16] = {};
};
struct DeliveryAck {
  uint8_t unused = 0;
};
using DeliveryMailbox = io::Mailbox<DeliveryMail, DeliveryAck>;
inline constexpr size_t kDeliveryMailboxCapacity = 4096;  // per ordered pair of shards
struct OutcomeBatch {
  std::vector<relay::Outcome> outcomes;
  uint32_t jobs_ended = 0;  // jobs of the origin's that the sender let go of
};

// Read-only settings shared by every shard, plus the few process-wide cells they share.
struct ShardContext {
  smtp::ServerSettings settings;
  io::NetworkList proxy_trusted;
  uint64_t command_timeout_ms = 300'000;
  uint64_t data_timeout_ms = 600'000;
  uint64_t data_phase_timeout_ms = 3'600'000;  // a whole message body (DATA, or BDAT to LAST)
  uint64_t proxy_timeout_ms = 5'000;
  uint64_t drain_timeout_ms = 30'000;
  int64_t sessions_max = 10'000;  // over all shards; above it: 421 4.7.0
  uint32_t buffer_count = 1024;   // provided recv buffers per shard (power of two)
  uint32_t buffer_bytes = 16384;
  uint64_t body_memory_octets = 256 << 20;  // message bodies in memory per shard (BodyBudget)
  ClientLimits* client_limits = nullptr;
  std::atomic<bool>* draining = nullptr;
  std::atomic<int64_t>* sessions_open = nullptr;
  SpoolIoPort* spool_io = nullptr;  // null: the shard's ring (tests only set it)
  // Delivery ([delivery], [[route]], [dns]).
  bool delivery_enabled = true;  // false: accepted mail stays queued (tests of the inbound side)
  smtp::ClientSettings client;
  relay::SchedulerSettings scheduler;  // scheduler.routes points at `routes`
  resolver::RouteTable routes;
  std::vector<io::SocketAddress> dns_servers;
  uint16_t mx_port = 25;
  uint64_t dns_ttl_floor_ms = 5'000;
  uint64_t dns_ttl_ceiling_ms = 3'600'000;
  uint32_t dns_cache_entries = 100'000;
  uint64_t dns_timeout_ms = 5'000;
  uint64_t connect_timeout_ms = 30'000;
  uint64_t idle_timeout_ms = 2'000;
  uint32_t messages_per_connection = 100;
  uint32_t outbound_connections_max = 1000;  // this shard's share of [delivery] max_connections
  uint32_t shards = 1;
  DeliveryMailbox* mailbox = nullptr;              // null: one shard, nothing crosses
  std::atomic<uint32_t>* shards_draining = nullptr;  // shards that have seen the drain (with mailbox)
};

// Work the admin thread asks a shard to do on the shard's own thread.
struct ControlRequest {
  std::function<void(Shard&)> run;
};

class Shard {
 public:
  static constexpr uint32_t kControlRingEntries = 64;

  Shard(uint32_t index, const ShardContext* context, std::vector<int> listener_fds,
        std::unique_ptr<spool::ShardSpool> spool, uint64_t id_floor_ms);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // The thread body. Returns when a drain has finished (or the ring could not be set up: false).
  bool run();
  // From another thread: queue a request (the shard deletes it after running it). The caller
  // then rings the doorbell: MSG_RING to ring_fd() with doorbell_user_data(), always, whether
  // or not the shard sleeps. That is why this pair needs no sleeping flag and has no lost
  // wake-up: the doorbell's CQE waits in the shard's CQ (or wakes its wait) whatever the shard
  // was doing, and it is posted by the kernel after our push (the push, then io_uring_enter, then
  // the kernel's release of the CQ tail; the shard acquires the CQ tail before it drains the
  // ring), besides the drain on every loop iteration. Safe from several threads at once (the
  // admin workers): producers are serialised here, the ring itself has one producer.
  bool post(ControlRequest* request);
  int ring_fd() const { return _ring_fd.load(std::memory_order_acquire); }
  static uint64_t doorbell_user_data();
  bool ready() const { return _ready.load(std::memory_order_acquire); }

  // On this shard's own thread only (from a ControlRequest): `done` runs, on this thread, with
  // the outcome of spool ticket `ticket` (a journal record) once it is durable or has failed.
  void await_ticket(uint64_t ticket, std::function<void(const absl::Status&)> done);
  // On this shard's own thread only: the result of a spool request taken by ShardContext::spool_io.
  void complete_spool_io(uint64_t op_id, int32_t result);

  // On this shard's own thread only: a message's queue state changed durably (deleted, held,
  // released): delivery drops its work, or takes it up.
  void queue_changed(std::string_view id);
  // On this shard's own thread only: deferred mail (of `domain`, or all with "") is due now.
  uint64_t flush_queue(std::string_view domain);
  // On this shard's own thread only: the delivery figures of /metrics.
  void delivery_snapshot(SpoolSnapshot& snapshot) const;

  uint32_t index() const { return _index; }
  const ShardMetrics& metrics() const { return _metrics; }
  spool::ShardSpool& spool() { return *_spool; }

 private:
  struct Impl;
  uint32_t _index;
  ShardMetrics _metrics;
  std::unique_ptr<spool::ShardSpool> _spool;
  std::unique_ptr<Impl> _impl;
  std::mutex _post_mutex;  // the admin workers (AdminServer::kWorkerThreads) all post
  io::SpscRing<ControlRequest*> _control{kControlRingEntries};
  std::atomic<int> _ring_fd{-1};
  std::atomic<bool> _ready{false};
};

}  // namespace sluice::app
