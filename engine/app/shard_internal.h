#pragma once
// The shard's insides, shared by its two files: shard.cc (the loop, the dispatch of completions,
// spool submission, control requests and the drain) and inbound.cc (accept, PROXY, the SMTP
// server sessions on their streams, the body budget, commits and their answers). Not an
// interface: only those two files include it.
#include <cstdio>
#include <deque>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/app/input_path.h"
#include "engine/app/log.h"
#include "engine/app/segment_reader.h"
#include "engine/app/shard.h"
#include "engine/io/assert.h"
#include "engine/io/buffer_ring.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/socket.h"
#include "engine/io/stream.h"
#include "engine/io/strings.h"
#include "engine/io/timer_wheel.h"
#include "engine/relay/dsn.h"
#include "engine/relay/scheduler.h"
#include "engine/smtp/client_session.h"
#include "engine/smtp/proxy_protocol.h"
#include "resolver/resolver.h"
#include "engine/smtp/replies.h"
#include "engine/smtp/trace_header.h"
#include "spool/message_id.h"

namespace sluice::app {

// What an expired timer is for: a typed cookie with the slot's generation, so that a timer of a
// freed slot could never act on the slot's next connection.
enum class TimerKind : uint8_t { session = 1, outbound = 2 };
struct TimerCookie {
  TimerKind kind = TimerKind::session;
  uint32_t index = 0;
  uint32_t generation = 0;
  uint64_t encode() const { return io::UserData{static_cast<uint8_t>(kind), index, generation}.encode(); }
  static TimerCookie decode(uint64_t value) {
    const io::UserData data = io::UserData::decode(value);
    return TimerCookie{static_cast<TimerKind>(data.tag), data.index, data.generation};
  }
};

inline constexpr uint16_t kBufferGroup = 1;
inline constexpr uint64_t kLoopWaitUsMax = 10'000;     // the timer wheel's tick: sleep while polling
inline constexpr uint64_t kIdleWaitUsMax = 100'000;    // nothing to do: the drain flag is seen within this
inline constexpr size_t kOutputOctetsMax = 256 << 10;  // replies queued for a client that does not read
inline constexpr size_t kIdleBufferCapacity = io::Stream::kIdleBufferCapacity;
inline constexpr size_t kInputSliceOctets = 16 << 10;  // parked input handed to a session at once
inline constexpr uint64_t kCloseLingerMs = 10'000;     // a closing client that reads nothing is cut off
inline constexpr uint64_t kDrainForceGraceMs = 1'000;  // after the drain deadline, before cutting off
inline constexpr uint32_t kSlotsPerChunk = 256;        // session slots are allocated this many at a time
inline constexpr uint64_t kAcceptRetryMs = 50;         // after EMFILE/ENFILE ended a multishot accept
inline constexpr uint64_t kSpoolFullWaitMs = 2'000;    // a message may wait this long for a full disk
inline constexpr uint64_t kSubmitErrorLogMs = 1'000;   // failed submits are logged at most this often
inline constexpr uint64_t kTraceOctetsMax = 1024;      // our Received:, Message-ID:, Date: (HELO cut at 255)

// An inbound connection: the transport (io::Stream: recv, send, close protocol, parked input)
// and what the shard adds on top (PROXY header, the SMTP session, deadlines, the body budget).
struct Connection {
  uint32_t generation = 0;
  bool in_use = false;
  bool awaiting_proxy = false;
  bool dirty = false;  // has output to flush this loop iteration
  bool counted_as_client = false;
  bool budget_paused = false;  // backpressure: its body may not grow until the body budget frees
  uint64_t budget_paused_since_ms = 0;
  uint64_t body_held = 0;  // octets of message body it holds, counted in the shard's budget
  uint64_t body_seq = 0;   // its place among the bodies in memory, oldest first; 0: none held
  uint64_t started_ms = 0;
  uint64_t serial = 0;            // this shard's number for the session: session=S<shard>-<serial>
  uint64_t line_deadline_ms = 0;  // a command line has begun: it must end by then (0 = none)
  uint64_t data_deadline_ms = 0;  // DATA or a BDAT chunk has begun: it must end by then (0 = none)
  uint32_t line_commands = 0;     // the session's command count when line_deadline_ms was set
  bool connect_logged = false;    // a disconnect line is owed
  std::string_view end_reason;    // why it ended, for the disconnect line (static text)
  io::TimerNode timer;
  io::Stream stream;
  io::SocketAddress peer;  // after PROXY: the real client
  std::optional<smtp::ServerSession> session;
};

// Outbound connections live in their own slot table; their stream CQEs carry an index from
// kOutboundIndexBase up, so one dispatch tells them from inbound ones.
inline constexpr uint32_t kOutboundIndexBase = 1u << 23;
inline constexpr uint32_t kInboundSlotsMax = kOutboundIndexBase;

// A delivery connection: the stream, the SMTP client session on it, the targets it tries in
// order (every address of a host, then the next host), and the job in flight.
struct OutboundConnection {
  uint32_t generation = 0;
  bool in_use = false;
  bool dirty = false;
  uint32_t site = 0;
  std::string site_name;
  std::vector<resolver::PlanTarget> targets;
  size_t target = 0;         // the one being tried, or connected to
  bool reported_up = false;  // the scheduler was told connection_up
  bool idle = false;         // in the scheduler's idle list
  bool left = false;         // told connection_leaves / connection_closed: no more work
  bool session_over = false;  // on_close given to the session, in-flight results taken
  bool body_sending = false;  // end of data queued, not yet all sent
  std::string pinned_segment;  // the segment file a body send is queued from ("": none)
  uint64_t serial = 0;
  uint64_t started_ms = 0;
  uint64_t idle_since_ms = 0;
  uint64_t job_started_ms = 0;
  std::optional<relay::Job> job;
  std::optional<smtp::ClientSession> session;
  smtp::RecipientResult last_failure;  // why the last target did not work out
  io::TimerNode timer;
  io::Stream stream;
};

struct Shard::Impl : public smtp::SessionHost {
  // A finished message waits here while the spool has no segment to put it in; it is stored as
  // soon as one is ready. Preallocation behind a burst is no reason to fail it: while the disk
  // has room for a segment it waits up to data_timeout (the client waits for our answer that
  // long anyway); only with the disk full is it refused with 451 after kSpoolFullWaitMs.
  struct WaitingForSpace {
    uint32_t index;
    uint32_t generation;
    uint64_t since_ms;
  };

  Shard* shard;
  const ShardContext* context;
  std::vector<int> listeners;
  std::unique_ptr<io::Ring> ring;
  std::unique_ptr<io::BufferRing> buffers;
  std::unique_ptr<io::TimerWheel> timers;
  std::unique_ptr<spool::IdGenerator> ids;
  std::vector<std::unique_ptr<Connection[]>> chunks;
  std::vector<uint32_t> free_slots;
  uint32_t slots_used = 0;
  uint32_t open_connections = 0;
  std::vector<uint32_t> dirty;
  // A message handed to the spool and not yet answered: who waits for it, and what to log.
  struct PendingCommit {
    io::UserData owner;
    uint64_t rfc_size = 0;
    uint32_t recipients = 0;
    uint64_t started_us = 0;
    uint64_t body_octets = 0;             // counted in the body budget until the commit completes
    uint64_t transaction_started_ms = 0;  // MAIL
    std::string fields;                   // session, client, HELO, sender, recipients, size
  };
  absl::flat_hash_map<uint64_t, PendingCommit> tickets;  // spool ticket -> waiting session
  // Spool tickets of admin requests (hold, release, delete) -> who answers the HTTP request.
  absl::flat_hash_map<uint64_t, std::function<void(const absl::Status&)>> control_tickets;
  std::vector<spool::IoRequest> io_requests;
  std::vector<spool::Completed> completed;
  std::vector<io::TimerNode*> expired;
  bool draining = false;
  bool drain_deadline_passed = false;
  std::vector<uint32_t> accepts_to_rearm;
  std::deque<WaitingForSpace> waiting_for_space;
  uint64_t accept_retry_ms = 0;
  bool accepts_cancelled = false;
  uint64_t drain_deadline_ms = 0;
  uint64_t loop_now_ms = 0;
  uint64_t next_serial = 0;
  uint64_t submit_errors_logged = 0;
  uint64_t submit_error_logged_ms = 0;
  LogBuffer log;
  // Message bodies in memory (issue 6): the budget, the sessions holding a body in the order
  // they started it (the front is the head, see BodyBudget), and the sessions paused for it.
  struct BodyHolder {
    uint32_t index;
    uint32_t generation;
    uint64_t seq;
  };
  BodyBudget budget{0, 0};
  std::deque<BodyHolder> bodies;
  std::deque<BodyHolder> budget_waiters;
  uint64_t next_body_seq = 1;
  bool budget_freed = false;  // since the waiters were last looked at

  // smtp::SessionHost
  bool spool_space_low() const override { return shard->_spool->below_min_free(); }
  uint64_t now_ms() const override { return loop_now_ms; }
  void on_reject(const smtp::RejectEvent& event, const smtp::ClientInfo& client) override;

  Connection& slot(uint32_t index) { return chunks[index / kSlotsPerChunk][index % kSlotsPerChunk]; }

  // ---- shard.cc: the loop -------------------------------------------------------------------
  bool start();
  void arm_accept(uint32_t listener);
  void submit_spool_io();
  void on_spool(const io_uring_cqe& cqe) { on_spool_result(cqe.user_data & ((uint64_t{1} << 56) - 1), cqe.res); }
  void run_control_requests();
  void start_drain();
  void force_close_all();
  void cancel_accepts();
  void log_submit_errors();
  void dispatch(const io_uring_cqe& cqe);
  void flush_dirty();
  uint64_t wait_us() const;
  void loop();

  // ---- outbound.cc: delivery ------------------------------------------------------------------
  std::unique_ptr<relay::Scheduler> scheduler;
  std::unique_ptr<resolver::Resolver> dns;  // null when delivery is off or c-ares failed to start
  absl::flat_hash_map<uint64_t, std::string> dns_requests;  // request id -> domain
  uint64_t next_dns_request = 1;
  uint64_t dns_deadline_ms = 0;  // monotonic; 0: none
  std::vector<std::unique_ptr<OutboundConnection[]>> outbound_chunks;
  std::vector<uint32_t> outbound_free;
  uint32_t outbound_used = 0;
  uint32_t outbound_open = 0;
  std::deque<relay::ConnectRequest> connects_waiting;  // over outbound_connections_max: opened as others close
  std::vector<uint32_t> outbound_dirty;
  // Messages whose bounce or removal is on its way. (What a DSN says of each recipient, its
  // Remote-MTA and whether it is owed a "relayed" notice, is in the spool with the outcome:
  // spool::RecipientDelivery.)
  absl::flat_hash_set<std::string> finalizing;
  uint64_t random_state = 0;
  uint64_t next_outbound_serial = 0;
  uint64_t scheduler_deadline_ms = 0;  // wall clock; 0: none
  // A DSN waiting for its original's octets, read on the ring through `segments` (RET=FULL
  // wants all of them, up to the message size limit: never a blocking pread on this thread).
  struct BounceRead {
    bool in_use = false;
    uint32_t generation = 0;
    spool::MessageInfo info;  // the original, as it was found final
    relay::DsnReport report;
    std::string segment_path;  // pinned in `segments` while the read is on
    int fd = -1;               // its descriptor there
    std::string octets;        // info.location.wire_length of them
    uint64_t done = 0;
  };
  static constexpr uint64_t kBounceReadChunk = 1 << 20;
  // Slots: index and generation in the read's user data. A deque, so that a new slot never moves
  // the buffer of a read the kernel is filling (a short original lives inside its std::string).
  std::deque<BounceRead> bounce_reads;
  std::vector<uint32_t> bounce_reads_free;
  uint32_t bounce_reads_in_flight = 0;  // the drain waits for them
  // A job ended or a connection closed: run_scheduler is owed, once per loop iteration however
  // many did (its tick walks every site).
  bool scheduler_pending = false;
  SegmentReader segments;              // bodies are read through it, whichever shard holds them
  // Jobs this shard made (its messages) that a scheduler, here or on another shard, still
  // holds: the drain waits for them to end (results journaled here).
  uint64_t jobs_outstanding = 0;
  std::vector<std::deque<DeliveryMail>> outbox;  // per target: mail waiting for a credit
  std::vector<OutcomeBatch> outcome_batches;     // per origin: this iteration's outcomes for it
  bool counted_draining = false;

  OutboundConnection& outbound(uint32_t index) {
    return outbound_chunks[index / kSlotsPerChunk][index % kSlotsPerChunk];
  }
  uint64_t random();
  void start_delivery();
  void delivery_message_stored(std::string_view queue_id);
  void route_jobs(const spool::MessageInfo& info);
  void hand_off(relay::Handoff handoff);
  void job_let_go(uint32_t origin);
  void send_mail(uint32_t target, const DeliveryMail& mail);
  void on_mail(const DeliveryMail& mail);
  void exchange_mail();
  bool mail_idle() const;
  void record_outcome_here(relay::Outcome out);
  void jobs_ended(uint32_t count);
  void run_scheduler();
  void start_bounce_read(const spool::MessageInfo& info, relay::DsnReport report);
  void submit_bounce_read(uint32_t index);
  void on_bounce_read(const io_uring_cqe& cqe);
  void store_bounce(const spool::MessageInfo& info, relay::DsnReport report, std::string_view original);
  void resolve_domain(const std::string& domain);
  void run_resolver();
  void on_dns_poll(const io_uring_cqe& cqe);
  void open_outbound(relay::ConnectRequest request);
  void open_waiting_outbound();
  void connect_target(uint32_t index);
  void outbound_dispatch(const io_uring_cqe& cqe, io::CompletionTag tag, uint32_t index);
  void outbound_on_connect(uint32_t index, int32_t res);
  void outbound_on_recv(const io_uring_cqe& cqe, uint32_t index);
  void outbound_on_send(uint32_t index, int32_t res, bool file_read);
  void outbound_act(uint32_t index, smtp::ClientAction action);
  void outbound_input(uint32_t index, std::string_view data);
  void outbound_next_job(uint32_t index);
  void outbound_job_done(uint32_t index);
  void outbound_session_over(uint32_t index);
  void outbound_close(uint32_t index);
  void outbound_on_close(uint32_t index);
  void outbound_on_timer(uint32_t index);
  void outbound_rearm(uint32_t index);
  void outbound_mark_dirty(uint32_t index);
  void flush_outbound_dirty();
  void outbound_drain();
  void unpin_body(OutboundConnection& c);
  void record_outcomes();
  void check_final(const std::string& id);
  void finalize_message(const spool::MessageInfo& info);
  void remove_message(const std::string& id);
  void log_unattempted(const relay::Outcome& out);
  void log_attempt(const OutboundConnection& c, const relay::Job& job, const std::vector<smtp::RecipientResult>& results);

  // ---- inbound.cc: connections and their sessions -------------------------------------------
  // logging
  std::string session_tag(uint64_t serial) const { return str_cat("session=S", shard->_index, "-", serial); }
  void log_rejection(const Connection& c, Rejection reason, std::string_view reply, std::string_view extra = {});
  std::string transaction_fields(const Connection& c, const smtp::AcceptedMessage& message) const;
  void log_transaction(std::string_view queue_id, std::string_view fields, uint64_t started_ms, uint64_t commit_us,
                       bool stored, std::string_view error, bool client_present = true);
  // slots, accept, PROXY, session start
  std::optional<uint32_t> allocate_slot();
  void free_slot(uint32_t index);
  void refuse(int fd, std::string_view reply);
  void on_accept(const io_uring_cqe& cqe, uint32_t listener);
  void on_proxy_bytes(uint32_t index, std::string_view data);
  void start_session(uint32_t index);
  // input
  void on_recv(const io_uring_cqe& cqe, uint32_t index);
  void finish_if_read_closed(uint32_t index);
  void on_bytes(uint32_t index, std::string_view data);
  void run_session(uint32_t index, std::string_view data, bool from_parked);
  void resume_pending(uint32_t index);
  // message bodies in memory
  const Connection* body_head();
  bool admit_body_input(uint32_t index, size_t octets);
  uint64_t body_octets_of(const Connection& c) const;
  void sync_body(uint32_t index);
  void compact_bodies();
  void wake_budget_waiters();
  // output and close
  void mark_dirty(uint32_t index);
  void on_send(const io_uring_cqe& cqe, uint32_t index);
  void begin_close(uint32_t index);
  void on_close(uint32_t index);
  // timers
  void update_deadlines(uint32_t index);
  void rearm_timer(uint32_t index);
  std::string_view expired_deadline(const Connection& c) const;
  void on_timer(uint32_t index);
  // the spool: store, wait for room, answer
  void commit_message(uint32_t index);
  bool spool_has_room_for(const Connection& c) const;
  void store_message(uint32_t index);
  void retry_waiting_for_space();
  void on_spool_result(uint64_t op_id, int32_t result);
  void answer_commit(uint32_t index, bool stored, std::string_view queue_id);
};

}  // namespace sluice::app
