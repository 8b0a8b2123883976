// The shard loop: accepts connections, runs SMTP sessions over multishot recv and one send in
// flight per socket, stores messages through the spool's group commit, and drives timers.
// It never blocks: every socket and file operation goes through its ring, and the only wait is
// the ring wait, bounded by the next timer or commit deadline.
// It never sends "250 queued" before the spool reports the covering fdatasync done.
#include "engine/app/shard.h"

#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <deque>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/app/input_path.h"
#include "engine/app/log.h"
#include "engine/io/assert.h"
#include "engine/io/buffer_ring.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/socket.h"
#include "engine/io/strings.h"
#include "engine/io/timer_wheel.h"
#include "engine/smtp/proxy_protocol.h"
#include "engine/smtp/replies.h"
#include "engine/smtp/trace_header.h"
#include "spool/message_id.h"

namespace sluice::app {
namespace {

// The session hands DSN parameters to the spool as they are on disk.
static_assert(static_cast<uint8_t>(smtp::DsnRet::full) == static_cast<uint8_t>(spool::DsnRet::full) &&
              static_cast<uint8_t>(smtp::DsnRet::hdrs) == static_cast<uint8_t>(spool::DsnRet::hdrs));
static_assert(smtp::kNotifyNever == spool::kNotifyNever && smtp::kNotifySuccess == spool::kNotifySuccess &&
              smtp::kNotifyFailure == spool::kNotifyFailure && smtp::kNotifyDelay == spool::kNotifyDelay);

enum Tag : uint8_t {
  kTagIgnore = 0,
  kTagAccept,
  kTagRecv,
  kTagSend,
  kTagClose,
  kTagSpool,
  kTagDoorbell,
  kTagLog,
};

constexpr uint16_t kBufferGroup = 1;
constexpr uint64_t kLoopWaitUsMax = 10'000;            // the timer wheel's tick: sleep while polling
constexpr uint64_t kIdleWaitUsMax = 100'000;           // nothing to do: the drain flag is seen within this
constexpr size_t kPendingInputOctetsMax = 4 << 20;     // hard cap on parked input: beyond it, close
constexpr size_t kPendingInputHighOctets = 256 << 10;  // parked input that pauses the recv...
constexpr size_t kPendingInputLowOctets = 64 << 10;    // ...until it is drained below this
constexpr size_t kOutputOctetsMax = 256 << 10;         // replies queued for a client that does not read
constexpr size_t kIdleBufferCapacity = 1024;           // above this, buffers are released when empty
constexpr size_t kInputSliceOctets = 16 << 10;         // parked input handed to a session at once
constexpr uint64_t kCloseLingerMs = 10'000;            // a closing client that reads nothing is cut off
constexpr uint64_t kDrainForceGraceMs = 1'000;         // after the drain deadline, before cutting off
constexpr uint32_t kSlotsPerChunk = 256;               // session slots are allocated this many at a time
constexpr uint64_t kAcceptRetryMs = 50;                // after EMFILE/ENFILE ended a multishot accept
constexpr uint64_t kSpoolFullWaitMs = 2'000;           // a message may wait this long for a full disk
constexpr uint64_t kSubmitErrorLogMs = 1'000;          // failed submits are logged at most this often
constexpr uint64_t kTraceOctetsMax = 1024;             // our Received:, Message-ID:, Date: (HELO cut at 255)

void release_if_large(std::string& buffer) {
  if (buffer.empty() && buffer.capacity() > kIdleBufferCapacity) {
    std::string().swap(buffer);
  }
}

}  // namespace

struct Connection {
  uint32_t generation = 0;
  int fd = -1;
  bool in_use = false;
  bool recv_armed = false;
  bool send_in_flight = false;
  bool closing = false;  // no more input is processed; close once output is sent
  bool shutdown_sent = false;
  bool close_sent = false;
  bool awaiting_proxy = false;
  bool dirty = false;  // has output to flush this loop iteration
  bool counted_as_client = false;
  bool read_closed = false;     // the client sent FIN; replies may still go out
  bool reading_paused = false;  // backpressure: too much input parked
  bool recv_cancel_pending = false;
  bool budget_paused = false;  // backpressure: its body may not grow until the body budget frees
  uint64_t budget_paused_since_ms = 0;
  uint64_t body_held = 0;  // octets of message body it holds, counted in the shard's budget
  uint64_t body_seq = 0;   // its place among the bodies in memory, oldest first; 0: none held
  uint32_t out_offset = 0;
  uint64_t started_ms = 0;
  uint64_t serial = 0;            // this shard's number for the session: session=S<shard>-<serial>
  uint64_t line_deadline_ms = 0;  // a command line has begun: it must end by then (0 = none)
  uint64_t data_deadline_ms = 0;  // DATA or a BDAT chunk has begun: it must end by then (0 = none)
  uint32_t line_commands = 0;     // the session's command count when line_deadline_ms was set
  bool connect_logged = false;    // a disconnect line is owed
  std::string_view end_reason;    // why it ended, for the disconnect line (static text)
  io::TimerNode timer;
  std::string out;         // being sent (the kernel reads it until the send CQE)
  std::string out_next;    // replies gathered meanwhile
  ParkedInput pending_in;  // received, not yet taken by the session (read from an offset)
  io::SocketAddress peer;  // after PROXY: the real client
  std::optional<smtp::ServerSession> session;
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

  bool spool_space_low() const override { return shard->_spool->below_min_free(); }

  uint64_t now_ms() const override { return loop_now_ms; }

  std::string session_tag(uint64_t serial) const { return str_cat("session=S", shard->_index, "-", serial); }

  // One line per refusal the session reports: who, in which transaction, what, and the reply.
  void on_reject(const smtp::RejectEvent& event, const smtp::ClientInfo& client) override {
    shard->_metrics.reject(event.reason);
    if (!event.log) {
      return;
    }
    std::string line =
        str_cat("event=rejected ", session_tag(client.session_serial),
                " reason=", smtp::reject_reason_name(event.reason), " client=", client.address.ip_string());
    if (!event.helo.empty()) {
      append_log_field(line, "helo", event.helo);
    }
    if (event.in_transaction) {
      append_log_field(line, "from", str_cat("<", event.sender, ">"));
      if (event.recipients != nullptr) {
        append_log_recipients(line, *event.recipients);
      }
    }
    if (!event.address.empty()) {
      append_log_field(line, "address", event.address);
    }
    append_log_field(line, "reply", event.reply);
    log.line(line);
  }

  // A refusal by the shard itself (connection limits, PROXY, timeouts, input overflow).
  void log_rejection(const Connection& c, Rejection reason, std::string_view reply, std::string_view extra = {}) {
    shard->_metrics.reject(reason);
    std::string line = str_cat("event=rejected ", session_tag(c.serial), " reason=", smtp::reject_reason_name(reason),
                               " client=", c.peer.ip_string());
    if (c.session && !c.session->helo().empty()) {
      append_log_field(line, "helo", c.session->helo());
    }
    line.append(extra);
    while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) {
      reply.remove_suffix(1);
    }
    append_log_field(line, "reply", reply);
    log.line(line);
  }

  // The fields of a transaction line that describe the message (the outcome is added later).
  std::string transaction_fields(const Connection& c, const smtp::AcceptedMessage& message) const {
    std::string fields = str_cat(session_tag(c.serial), " client=", c.peer.ip_string());
    append_log_field(fields, "helo", message.helo);
    append_log_field(fields, "from", str_cat("<", message.sender, ">"));
    append_log_recipients(fields, message.recipients);
    str_append(&fields, " size=", message.rfc_size);
    return fields;
  }

  Connection& slot(uint32_t index) { return chunks[index / kSlotsPerChunk][index % kSlotsPerChunk]; }

  uint64_t user_data(uint8_t tag, uint32_t index) { return io::UserData{tag, index, slot(index).generation}.encode(); }

  // ---- set-up -----------------------------------------------------------------------------
  bool start() {
    auto created = io::Ring::create_for_this_thread(io::RingOptions{});
    if (!created.ok()) {
      std::fprintf(stderr, "shard %u: %s\n", shard->_index, std::string(created.status().message()).c_str());
      return false;
    }
    ring.reset(*created);
    auto buffer_ring = io::BufferRing::create(ring->raw(), kBufferGroup, context->buffer_count, context->buffer_bytes);
    if (!buffer_ring.ok()) {
      std::fprintf(stderr, "shard %u: %s\n", shard->_index, std::string(buffer_ring.status().message()).c_str());
      return false;
    }
    buffers.reset(*buffer_ring);
    loop_now_ms = io::monotonic_us() / 1000;
    timers = std::make_unique<io::TimerWheel>(loop_now_ms);
    log.line(str_cat("event=shard_start shard=", shard->_index, " ring=\"", ring->description(), "\""));
    for (size_t i = 0; i < listeners.size(); ++i) {
      arm_accept(static_cast<uint32_t>(i));
    }
    return true;
  }

  void arm_accept(uint32_t listener) {
    io_uring_sqe* sqe = ring->sqe();
    io_uring_prep_multishot_accept(sqe, listeners[listener], nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, io::UserData{kTagAccept, listener, 0}.encode());
  }

  // ---- slots ------------------------------------------------------------------------------
  std::optional<uint32_t> allocate_slot() {
    if (free_slots.empty()) {
      if (slots_used >= io::UserData::kIndexMax) {
        return std::nullopt;
      }
      if (slots_used % kSlotsPerChunk == 0) {
        chunks.push_back(std::make_unique<Connection[]>(kSlotsPerChunk));
      }
      free_slots.push_back(slots_used++);
    }
    const uint32_t index = free_slots.back();
    free_slots.pop_back();
    Connection& connection = slot(index);
    connection.in_use = true;
    connection.timer.cookie = index;
    return index;
  }

  void free_slot(uint32_t index) {
    Connection& c = slot(index);
    SLUICE_ASSERT(c.in_use && c.close_sent && !c.recv_armed && !c.send_in_flight, "slot freed before its last CQE");
    if (c.connect_logged) {
      std::string line = str_cat("event=disconnect ", session_tag(c.serial), " client=", c.peer.ip_string(),
                                 " duration_ms=", loop_now_ms - c.started_ms);
      if (c.session) {
        const smtp::SessionCounts& counts = c.session->counts();
        str_append(&line, " commands=", counts.commands, " messages=", counts.messages, " failed=", counts.failed,
                   " rejections=", counts.rejections);
      }
      str_append(&line, " reason=", c.end_reason.empty() ? std::string_view("closed") : c.end_reason);
      log.line(line);
    }
    if (c.counted_as_client) {
      context->client_limits->release(c.peer.ip_string());
    }
    timers->cancel(c.timer);
    if (c.body_held > 0) {
      budget.remove(c.body_held);  // a body never handed to the spool: dropped with the session
      budget_freed = true;
    }
    const uint32_t generation = c.generation + 1;
    c.~Connection();
    new (&c) Connection();
    c.generation = generation;
    free_slots.push_back(index);
    --open_connections;
    context->sessions_open->fetch_sub(1, std::memory_order_relaxed);
    shard->_metrics.add(shard->_metrics.connections_current, static_cast<uint64_t>(-1));
  }

  // ---- accept -----------------------------------------------------------------------------
  void refuse(int fd, std::string_view reply) {
    // The reply text is static; HARDLINK makes the close run even if the send fails.
    auto [send, close] = ring->linked_pair();
    io_uring_prep_send(send, fd, reply.data(), reply.size(), MSG_NOSIGNAL);
    send->flags |= IOSQE_IO_HARDLINK;
    io_uring_sqe_set_data64(send, 0);
    io_uring_prep_close(close, fd);
    io_uring_sqe_set_data64(close, 0);
  }

  void on_accept(const io_uring_cqe& cqe, uint32_t listener) {
    const bool out_of_descriptors = cqe.res == -EMFILE || cqe.res == -ENFILE || cqe.res == -ENOMEM;
    if (!(cqe.flags & IORING_CQE_F_MORE) && !accepts_cancelled) {
      if (out_of_descriptors) {
        // Re-arming at once would spin on the same error: try again a little later.
        accept_retry_ms = loop_now_ms + kAcceptRetryMs;
        accepts_to_rearm.push_back(listener);
        log.line(str_cat("event=accept_error error=", -cqe.res, " listener=", listener));
      } else {
        arm_accept(listener);
      }
    }
    if (cqe.res < 0) {
      return;  // ECANCELED when stopping; descriptor shortage handled above
    }
    const int fd = cqe.res;
    shard->_metrics.add(shard->_metrics.connections_total);
    if (draining) {
      refuse(fd, smtp::reply::kShuttingDown);
      return;
    }
    if (context->sessions_open->fetch_add(1, std::memory_order_relaxed) >= context->sessions_max) {
      context->sessions_open->fetch_sub(1, std::memory_order_relaxed);
      shard->_metrics.reject(Rejection::too_many_connections);
      refuse(fd, smtp::reply::kTooManyConnections);
      return;
    }
    const std::optional<uint32_t> index = allocate_slot();
    if (!index) {
      context->sessions_open->fetch_sub(1, std::memory_order_relaxed);
      refuse(fd, smtp::reply::kTooManyConnections);
      return;
    }
    ++open_connections;
    shard->_metrics.add(shard->_metrics.connections_current);
    Connection& c = slot(*index);
    c.fd = fd;
    c.started_ms = loop_now_ms;
    c.serial = ++next_serial;
    c.peer = io::peer_address(fd);
    arm_recv(*index);
    if (context->proxy_trusted.contains(c.peer)) {
      c.awaiting_proxy = true;
      timers->schedule(c.timer, loop_now_ms + context->proxy_timeout_ms);
      return;
    }
    start_session(*index);
  }

  void start_session(uint32_t index) {
    Connection& c = slot(index);
    const bool relay_allowed = context->settings.relay_networks.contains(c.peer);
    c.connect_logged = true;
    log.line(str_cat("event=connect ", session_tag(c.serial), " client=", c.peer.ip_string(), " port=", c.peer.port(),
                     " relay=", relay_allowed ? "yes" : "no"));
    if (!relay_allowed) {
      const ClientAdmission admission = context->client_limits->admit(c.peer.ip_string(), io::wall_ms());
      if (admission != ClientAdmission::admitted) {
        const bool rate = admission == ClientAdmission::rate_exceeded;
        // table_full: every tracked address has a live connection; never admit one uncounted.
        const std::string_view reply = rate                                       ? smtp::reply::kRateExceeded
                                       : admission == ClientAdmission::table_full ? smtp::reply::kTooManyConnections
                                                                                  : smtp::reply::kTooManyFromYou;
        log_rejection(c, rate ? Rejection::rate_limited : Rejection::too_many_from_client, reply);
        c.out_next.append(reply);
        c.end_reason = "refused";
        begin_close(index);
        return;
      }
      c.counted_as_client = true;
    }
    c.session.emplace(&context->settings, this, smtp::ClientInfo{c.peer, relay_allowed, c.serial});
    c.session->greet(c.out_next);
    mark_dirty(index);
    rearm_timer(index);
  }

  // ---- receive ----------------------------------------------------------------------------
  void arm_recv(uint32_t index) {
    Connection& c = slot(index);
    SLUICE_ASSERT(c.in_use && !c.recv_armed && !c.close_sent, "one recv per connection, none after close");
    io_uring_sqe* sqe = ring->sqe();
    io_uring_prep_recv_multishot(sqe, c.fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kBufferGroup;
    io_uring_sqe_set_data64(sqe, user_data(kTagRecv, index));
    c.recv_armed = true;
  }

  void on_recv(const io_uring_cqe& cqe, uint32_t index) {
    Connection& c = slot(index);
    const bool more = cqe.flags & IORING_CQE_F_MORE;
    if (cqe.res > 0 && (cqe.flags & IORING_CQE_F_BUFFER)) {
      const uint16_t buffer_id = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
      const std::span<const char> data = buffers->data(buffer_id, static_cast<uint32_t>(cqe.res));
      if (!c.closing) {
        on_bytes(index, std::string_view(data.data(), data.size()));
      }
      buffers->recycle(buffer_id);
    }
    if (more) {
      return;
    }
    c.recv_armed = false;
    const bool cancel_pending = c.recv_cancel_pending;
    c.recv_cancel_pending = false;
    switch (recv_end_action(cqe.res, cancel_pending, c.reading_paused, c.closing)) {
      case RecvEnd::rearm:
        arm_recv(index);
        return;
      case RecvEnd::stay_paused:
        return;  // resume_reading_if_drained() arms it again
      case RecvEnd::half_close:
        // The client half-closed (SHUT_WR): it may still read. Answer what it sent, then close.
        c.read_closed = true;
        c.end_reason = "client_closed";
        resume_pending(index);
        finish_if_read_closed(index);
        return;
      case RecvEnd::close:
        break;
    }
    // An error, or the end of a recv we shut down or cancelled: nobody is listening any more.
    if (cqe.res < 0 && cqe.res != -ECANCELED && !c.closing) {
      log.line(str_cat("event=recv_error client=", c.peer.ip_string(), " error=", -cqe.res));
    }
    if (!c.closing) {
      c.closing = true;
      c.out_next.clear();
      c.end_reason = "client_gone";
    }
    advance_close(index);
  }

  // After the client's EOF: once nothing it sent is still being processed, close (after the
  // replies are sent).
  void finish_if_read_closed(uint32_t index) {
    Connection& c = slot(index);
    if (!c.read_closed || c.closing) {
      return;
    }
    if (c.session && c.session->waiting_for_commit()) {
      return;  // on_spool() comes back here
    }
    if (c.budget_paused) {
      return;  // its parked input waits for the body budget; wake_budget_waiters() comes back here
    }
    begin_close(index);
  }

  void on_bytes(uint32_t index, std::string_view data) {
    Connection& c = slot(index);
    if (c.awaiting_proxy) {
      on_proxy_bytes(index, data);
      return;
    }
    if (!c.session) {
      return;
    }
    if (!c.pending_in.empty() || c.session->waiting_for_commit() || c.out_next.size() > kOutputOctetsMax) {
      if (c.pending_in.size() + data.size() > kPendingInputOctetsMax) {
        log_rejection(c, Rejection::input_overflow, smtp::reply::kTooMuchInput);
        c.out_next.append(smtp::reply::kTooMuchInput);
        c.end_reason = "input_overflow";
        begin_close(index);
        return;
      }
      c.pending_in.append(data);
      sync_body(index);
      pause_reading_if_full(index);
      return;
    }
    if (!admit_body_input(index, data.size())) {
      if (!c.closing) {
        c.pending_in.append(data);  // read when the budget frees
        sync_body(index);
      }
      return;
    }
    // A recv buffer is at most one slice: its replies are bounded without slicing here.
    run_session(index, data, false);
    pause_reading_if_full(index);
    rearm_timer(index);
  }

  // Backpressure: while input waits (a commit running, or replies the client does not read),
  // stop the recv once kPendingInputHighOctets are parked, so TCP's window holds the client
  // back instead of our memory. resume_pending() starts it again.
  void pause_reading_if_full(uint32_t index) {
    if (slot(index).pending_in.size() >= kPendingInputHighOctets) {
      pause_reading(index);
    }
  }

  void pause_reading(uint32_t index) {
    Connection& c = slot(index);
    if (c.reading_paused || c.closing) {
      return;
    }
    c.reading_paused = true;
    if (c.recv_armed && !c.recv_cancel_pending) {
      c.recv_cancel_pending = true;
      io_uring_sqe* sqe = ring->sqe();
      io_uring_prep_cancel64(sqe, user_data(kTagRecv, index), 0);
      io_uring_sqe_set_data64(sqe, 0);
    }
  }

  void resume_reading_if_drained(uint32_t index) {
    Connection& c = slot(index);
    if (!c.reading_paused || c.closing || c.read_closed || c.budget_paused ||
        c.pending_in.size() >= kPendingInputLowOctets) {
      return;
    }
    c.reading_paused = false;
    if (!c.recv_armed) {
      arm_recv(index);
    }  // else the cancelled recv's final CQE re-arms it (on_recv)
  }

  // Feeds input to the session. `data` is either new input (nothing parked) or the front of
  // pending_in (from_parked); what the session does not take stays parked, in order.
  void run_session(uint32_t index, std::string_view data, bool from_parked) {
    Connection& c = slot(index);
    const smtp::SessionStep step = c.session->on_input(data, c.out_next);
    update_deadlines(index);
    mark_dirty(index);
    // Park (or un-park) before acting: commit_message can answer at once and come back into
    // resume_pending, which must find the input in order.
    if (from_parked) {
      c.pending_in.consume(step.consumed);
    } else if (step.action != smtp::SessionAction::close && step.consumed < data.size()) {
      c.pending_in.append(data.substr(step.consumed));
    }
    sync_body(index);
    switch (step.action) {
      case smtp::SessionAction::commit:
        commit_message(index);
        return;
      case smtp::SessionAction::close:
        c.end_reason = "session_end";  // QUIT, or a refusal that ends the session (logged)
        begin_close(index);
        return;
      case smtp::SessionAction::none:
        return;
    }
  }

  // Feeds parked input to the session a slice at a time, so that the replies it produces stay
  // bounded by kOutputOctetsMax (a client that sends many commands and reads nothing). The
  // slices are views into pending_in: nothing is copied per slice.
  void resume_pending(uint32_t index) {
    Connection& c = slot(index);
    while (!c.closing && c.session && !c.session->waiting_for_commit() && !c.pending_in.empty() &&
           c.out_next.size() <= kOutputOctetsMax) {
      const size_t before = c.pending_in.size();
      const std::string_view input = c.pending_in.view();
      const size_t slice = std::min(input.size(), kInputSliceOctets);
      if (!admit_body_input(index, slice)) {
        break;  // waits for the body budget (or was closed)
      }
      run_session(index, input.substr(0, slice), true);
      if (c.pending_in.size() >= before) {
        break;  // no progress: wait for more input
      }
    }
    c.pending_in.release_if_large(kIdleBufferCapacity);
    resume_reading_if_drained(index);
  }

  // ---- message bodies in memory -----------------------------------------------------------
  // The oldest body in memory (BodyBudget's head), or null when none is held.
  const Connection* body_head() {
    while (!bodies.empty()) {
      const BodyHolder& front = bodies.front();
      const Connection& c = slot(front.index);
      if (c.in_use && c.generation == front.generation && c.body_seq == front.seq) {
        return &c;
      }
      bodies.pop_front();
    }
    return nullptr;
  }

  // Whether the session may be given `octets` more input now. Only a session with a
  // transaction open can turn input into body octets; the others are never held back. When it
  // may not, it waits (reading paused, its timeout suspended) until the budget frees; a message
  // that alone is larger than the whole budget is refused and the connection closed.
  bool admit_body_input(uint32_t index, size_t octets) {
    Connection& c = slot(index);
    if (!c.session || !c.session->transaction_open()) {
      return true;
    }
    const Connection* head = body_head();
    const bool is_head = head == nullptr || head == &c;
    // BDAT stores the chunk dot-stuffed: it can grow by up to half again. The head asks for
    // what it is given, so that it is never stalled by the estimate.
    const uint64_t more = is_head ? octets : octets + octets / 2;
    const uint64_t head_body = head != nullptr ? head->session->body_octets() : 0;
    if (budget.may_grow(is_head, head != nullptr ? head->body_held : 0, head_body, more)) {
      return true;
    }
    if (is_head && !budget.can_ever_fit(c.session->body_octets() + octets)) {
      log_rejection(c, Rejection::too_big, smtp::reply::kBodyMemoryExceededClosing,
                    str_cat(" limit=body_memory held=", c.body_held, " budget=", budget.budget_octets()));
      c.out_next.append(smtp::reply::kBodyMemoryExceededClosing);
      begin_close(index);
      return false;
    }
    if (!c.budget_paused) {
      c.budget_paused = true;
      c.budget_paused_since_ms = loop_now_ms;
      budget_waiters.push_back(BodyHolder{index, c.generation, 0});
    }
    pause_reading(index);
    return false;
  }

  // What a session holds against the budget: its body buffers and, while it has a transaction
  // open, the input parked for it (which becomes body): input that arrived after it was paused
  // counts too, so the others are held back instead of the total creeping past the budget.
  uint64_t body_octets_of(const Connection& c) const {
    if (!c.session || !(c.session->transaction_open() || c.session->waiting_for_commit())) {
      return 0;  // no body: what an idle session keeps (a small buffer) is not a body in flight
    }
    return c.session->body_memory_octets() + (c.session->transaction_open() ? c.pending_in.size() : 0);
  }

  // Brings the budget up to date with what the session holds (after input, parking, a take).
  void sync_body(uint32_t index) {
    Connection& c = slot(index);
    const uint64_t held = body_octets_of(c);
    if (held > c.body_held) {
      budget.add(held - c.body_held);
    } else if (held < c.body_held) {
      budget.remove(c.body_held - held);
      budget_freed = true;
    }
    c.body_held = held;
    if (held == 0) {
      c.body_seq = 0;
    } else if (c.body_seq == 0) {
      c.body_seq = next_body_seq++;
      bodies.push_back(BodyHolder{index, c.generation, c.body_seq});
      if (bodies.size() > 2 * size_t{open_connections} + kSlotsPerChunk) {
        compact_bodies();  // stale entries behind a long-lived head
      }
    }
  }

  void compact_bodies() {
    std::erase_if(bodies, [this](const BodyHolder& holder) {
      const Connection& c = slot(holder.index);
      return !c.in_use || c.generation != holder.generation || c.body_seq != holder.seq;
    });
  }

  // After the budget freed: sessions paused for it go on, oldest first, as far as it allows
  // (each one that still may not grow waits again, at the back).
  void wake_budget_waiters() {
    if (!budget_freed) {
      return;
    }
    budget_freed = false;
    for (size_t round = budget_waiters.size(); round > 0 && !budget_waiters.empty(); --round) {
      const BodyHolder waiter = budget_waiters.front();
      budget_waiters.pop_front();
      Connection& c = slot(waiter.index);
      if (!c.in_use || c.generation != waiter.generation || !c.budget_paused) {
        continue;
      }
      c.budget_paused = false;
      // The time we held it back does not count against its line and data-phase deadlines.
      const uint64_t held_back_ms = loop_now_ms - c.budget_paused_since_ms;
      for (uint64_t* deadline : {&c.line_deadline_ms, &c.data_deadline_ms}) {
        if (*deadline != 0) {
          *deadline += held_back_ms;
        }
      }
      rearm_timer(waiter.index);  // its timeout was suspended while we held it back
      resume_pending(waiter.index);
      finish_if_read_closed(waiter.index);
    }
  }

  // ---- PROXY protocol ---------------------------------------------------------------------
  void on_proxy_bytes(uint32_t index, std::string_view data) {
    Connection& c = slot(index);
    c.pending_in.append(data);
    const smtp::ProxyParseResult parsed = smtp::parse_proxy_header(c.pending_in.view());
    if (parsed.status == smtp::ProxyParseStatus::need_more) {
      return;
    }
    if (parsed.status == smtp::ProxyParseStatus::invalid) {
      log_rejection(c, Rejection::proxy_invalid, "(closed without a reply)");
      c.pending_in.clear();
      begin_close(index);
      return;
    }
    c.awaiting_proxy = false;
    if (!parsed.use_socket_address) {
      c.peer = parsed.source.unmapped();
    }
    const bool early = c.pending_in.size() > parsed.header_octets;
    c.pending_in.clear();
    if (early) {
      // The client spoke before our greeting: RFC 5321 4.3.1 synchronization error.
      log_rejection(c, Rejection::early_talker, smtp::reply::kEarlyTalker);
      c.out_next.append(smtp::reply::kEarlyTalker);
      mark_dirty(index);
      begin_close(index);
      return;
    }
    timers->cancel(c.timer);
    start_session(index);
  }

  // ---- send -------------------------------------------------------------------------------
  void mark_dirty(uint32_t index) {
    Connection& c = slot(index);
    if (!c.dirty) {
      c.dirty = true;
      dirty.push_back(index);
    }
  }

  void flush_output(uint32_t index) {
    Connection& c = slot(index);
    if (c.send_in_flight || c.fd < 0 || c.close_sent) {
      return;
    }
    if (c.out_next.empty()) {
      if (c.closing) {
        advance_close(index);
      }
      return;
    }
    c.out.swap(c.out_next);
    c.out_next.clear();
    c.out_offset = 0;
    submit_send(index);
  }

  void submit_send(uint32_t index) {
    Connection& c = slot(index);
    SLUICE_ASSERT(c.in_use && !c.send_in_flight && !c.close_sent && c.out_offset < c.out.size(),
                  "one send in flight, none after the close was issued");
    io_uring_sqe* sqe = ring->sqe();
    io_uring_prep_send(sqe, c.fd, c.out.data() + c.out_offset, c.out.size() - c.out_offset, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, user_data(kTagSend, index));
    c.send_in_flight = true;
  }

  void on_send(const io_uring_cqe& cqe, uint32_t index) {
    Connection& c = slot(index);
    c.send_in_flight = false;
    if (cqe.res < 0) {
      if (!c.closing) {  // else it failed because we shut the socket down ourselves
        c.end_reason = cqe.res == -EPIPE || cqe.res == -ECONNRESET ? "client_reset" : "send_error";
      }
      c.closing = true;
      c.out.clear();
      c.out_next.clear();
      advance_close(index);
      return;
    }
    c.out_offset += static_cast<uint32_t>(cqe.res);
    if (c.out_offset < c.out.size()) {
      submit_send(index);  // short send: the rest, in order
      return;
    }
    c.out.clear();
    release_if_large(c.out);
    resume_pending(index);
    flush_output(index);
  }

  // ---- close ------------------------------------------------------------------------------
  void begin_close(uint32_t index) {
    Connection& c = slot(index);
    if (!c.closing) {
      // We read nothing more: stop the recv now rather than draining a client that keeps
      // sending. The last replies get kCloseLingerMs to leave; a client that does not read is
      // cut off then.
      shutdown(c.fd, SHUT_RD);
      timers->schedule(c.timer, loop_now_ms + kCloseLingerMs);
    }
    c.closing = true;
    mark_dirty(index);
  }

  // Ends the connection now, even with a send stuck on a client that does not read: shutdown
  // makes the pending send and the multishot recv complete, and the close follows.
  void force_close(uint32_t index) {
    Connection& c = slot(index);
    c.closing = true;
    c.out_next.clear();
    if (!c.close_sent) {
      shutdown_socket(index);
    }
    advance_close(index);
  }

  // A plain shutdown(2), not IORING_OP_SHUTDOWN: that op always runs in an io-wq worker, which
  // looks the fd number up late; by then we may have closed it and another shard may have
  // accepted a new connection on the same number, which the late shutdown would kill.
  void shutdown_socket(uint32_t index) {
    Connection& c = slot(index);
    if (c.shutdown_sent) {
      return;
    }
    c.shutdown_sent = true;
    shutdown(c.fd, SHUT_RDWR);
    if (c.recv_armed) {
      // Normally the shutdown ends the multishot recv; cancel it too so its final CQE comes.
      io_uring_sqe* sqe = ring->sqe();
      io_uring_prep_cancel64(sqe, user_data(kTagRecv, index), 0);
      io_uring_sqe_set_data64(sqe, 0);
    }
  }

  // Close order: replies sent -> shutdown (sends FIN, ends the multishot recv) -> recv's final
  // CQE -> close -> close CQE -> slot freed. A slot is reused only after its last CQE.
  void advance_close(uint32_t index) {
    Connection& c = slot(index);
    if (c.send_in_flight || !c.out_next.empty() || c.close_sent) {
      return;
    }
    shutdown_socket(index);
    if (c.recv_armed) {
      return;
    }
    SLUICE_ASSERT(!c.send_in_flight && !c.recv_armed);
    c.close_sent = true;
    io_uring_sqe* sqe = ring->sqe();
    io_uring_prep_close(sqe, c.fd);
    io_uring_sqe_set_data64(sqe, user_data(kTagClose, index));
  }

  void on_close(uint32_t index) { free_slot(index); }

  // ---- timers -----------------------------------------------------------------------------
  // Besides the idle timeouts (command_timeout / data_timeout since the last input), a unit of
  // input in progress has a deadline from its first octet, however the client paces its octets:
  // a command line must end within command_timeout, and a message body (DATA to its end, or the
  // BDAT chunks of a transaction up to LAST) within data_phase_timeout. Called after every pass
  // of input through the session.
  void update_deadlines(uint32_t index) {
    Connection& c = slot(index);
    const uint32_t commands = c.session->counts().commands;
    if (!c.session->command_line_pending()) {
      c.line_deadline_ms = 0;
    } else if (c.line_deadline_ms == 0 || commands != c.line_commands) {
      // A line ended in this input and another began: the new one began now.
      c.line_deadline_ms = loop_now_ms + context->command_timeout_ms;
      c.line_commands = commands;
    }
    if (!c.session->body_in_progress()) {
      c.data_deadline_ms = 0;
    } else if (c.data_deadline_ms == 0) {
      c.data_deadline_ms = loop_now_ms + context->data_phase_timeout_ms;
    }
  }

  void rearm_timer(uint32_t index) {
    Connection& c = slot(index);
    if (!c.session || c.closing) {
      return;
    }
    const uint64_t timeout = c.session->in_data_phase() ? context->data_timeout_ms : context->command_timeout_ms;
    uint64_t deadline = loop_now_ms + timeout;
    for (const uint64_t unit_deadline : {c.line_deadline_ms, c.data_deadline_ms}) {
      if (unit_deadline != 0) {
        deadline = std::min(deadline, unit_deadline);
      }
    }
    timers->cancel(c.timer);
    timers->schedule(c.timer, deadline);
  }

  std::string_view expired_deadline(const Connection& c) const {
    if (c.data_deadline_ms != 0 && loop_now_ms >= c.data_deadline_ms) {
      return "data_phase";
    }
    if (c.line_deadline_ms != 0 && loop_now_ms >= c.line_deadline_ms) {
      return "command_line";
    }
    return "idle";
  }

  void on_timer(uint32_t index) {
    Connection& c = slot(index);
    if (!c.in_use || c.close_sent) {
      return;
    }
    if (c.closing) {
      log.line(
          str_cat("event=close_forced ", session_tag(c.serial), " client=", c.peer.ip_string(), " reason=not_reading"));
      c.end_reason = "close_forced";
      force_close(index);
      return;
    }
    if (c.session && c.session->waiting_for_commit()) {
      rearm_timer(index);  // the spool owes this client an answer; it is not the client's fault
      return;
    }
    if (c.budget_paused) {
      // We stopped reading it (body budget): not the client's fault either. Its deadlines are
      // moved on when it resumes; until then only the idle timeout runs, so this does not spin.
      timers->cancel(c.timer);
      timers->schedule(c.timer, loop_now_ms + context->data_timeout_ms);
      return;
    }
    // Without a session (waiting for a PROXY header) nothing is sent: the connection is closed.
    log_rejection(c, Rejection::timeout, c.session ? smtp::reply::kTimeout : "(closed without a reply)",
                  str_cat(" timeout=", c.session ? expired_deadline(c) : std::string_view("proxy_header")));
    if (c.session) {
      c.session->on_timeout(c.out_next);
    }
    c.end_reason = "timeout";
    begin_close(index);
  }

  // ---- spool ------------------------------------------------------------------------------
  void commit_message(uint32_t index) {
    Connection& c = slot(index);
    if (!waiting_for_space.empty() || !spool_has_room_for(c)) {
      waiting_for_space.push_back(WaitingForSpace{index, c.generation, loop_now_ms});
      return;
    }
    store_message(index);
  }

  bool spool_has_room_for(const Connection& c) const {
    return shard->_spool->has_room_for(c.session->message_octets() + kTraceOctetsMax, c.session->envelope_octets());
  }

  // Gives a session the spool's answer for its message (250 queued, or 451) and lets it go on
  // with whatever the client pipelined meanwhile. Every commit outcome goes through here.
  void answer_commit(uint32_t index, bool stored, std::string_view queue_id) {
    Connection& c = slot(index);
    c.session->commit_done(stored, queue_id, c.out_next);
    sync_body(index);  // no longer committing: it holds no body, and is no longer the oldest holder
    mark_dirty(index);
    if (draining && !c.session->transaction_open()) {
      c.out_next.append(smtp::reply::kShuttingDown);
      begin_close(index);
    }
    resume_pending(index);
    finish_if_read_closed(index);
  }

  void retry_waiting_for_space() {
    while (!waiting_for_space.empty()) {
      const WaitingForSpace waiting = waiting_for_space.front();
      Connection& c = slot(waiting.index);
      if (c.generation != waiting.generation || !c.in_use || !c.session || !c.session->waiting_for_commit()) {
        waiting_for_space.pop_front();  // the client left; its message was never acknowledged
        continue;
      }
      if (spool_has_room_for(c)) {
        waiting_for_space.pop_front();
        store_message(waiting.index);
        continue;
      }
      const uint64_t free_bytes = shard->_spool->free_bytes();
      const bool disk_has_room = free_bytes > shard->_spool->segment_bytes();
      if (loop_now_ms - waiting.since_ms < (disk_has_room ? context->data_timeout_ms : kSpoolFullWaitMs)) {
        return;
      }
      waiting_for_space.pop_front();
      const smtp::AcceptedMessage message = c.session->take_message();
      sync_body(waiting.index);
      shard->_metrics.reject(Rejection::spool_error);
      log_transaction("", transaction_fields(c, message), message.started_ms, 0, false,
                      str_cat("no spool segment ready (free_bytes=", free_bytes, ")"));
      answer_commit(waiting.index, false, "");
    }
  }

  void store_message(uint32_t index) {
    Connection& c = slot(index);
    sync_body(index);
    const uint64_t held_before = c.body_held;
    smtp::AcceptedMessage message = c.session->take_message();
    // The body moves to the spool; it stays counted in the budget until its commit completes.
    const uint64_t held_after = body_octets_of(c);
    SLUICE_ASSERT(held_after <= held_before);
    const uint64_t body_octets = held_before - held_after;
    budget.to_spool(body_octets);
    c.body_held = held_after;
    if (held_after == 0) {
      c.body_seq = 0;
    }
    shard->_metrics.add(shard->_metrics.transactions_total);
    std::string fields = transaction_fields(c, message);
    const uint64_t transaction_started_ms = message.started_ms;
    const uint64_t arrival_ms = io::wall_ms();
    std::string queue_id = ids->next(arrival_ms);
    const uint64_t rfc_size = message.rfc_size;
    const uint32_t recipient_count = static_cast<uint32_t>(message.recipients.size());
    std::string head;
    head.reserve(512);
    smtp::TraceContext trace{
        context->settings.hostname, queue_id, &c.peer, false, false, static_cast<int64_t>(arrival_ms / 1000)};
    smtp::append_trace_headers(message, trace, head);
    spool::Envelope envelope;
    envelope.sender = std::move(message.sender);
    envelope.recipients = std::move(message.recipients);
    envelope.body_8bit = message.body_8bit;
    envelope.smtputf8 = message.smtputf8;
    envelope.client_address = c.peer.ip_string();
    envelope.client_helo = std::move(message.helo);
    // The session's DSN values are the on-disk ones (checked at the top of this file).
    envelope.ret = static_cast<spool::DsnRet>(message.ret);
    envelope.envid = std::move(message.envid);
    envelope.recipient_dsn.reserve(message.recipient_dsn.size());
    for (smtp::RecipientDsn& dsn : message.recipient_dsn) {
      envelope.recipient_dsn.push_back(spool::RecipientDsn{dsn.notify, std::move(dsn.orcpt)});
    }
    auto ticket = shard->_spool->append_message(std::move(queue_id), arrival_ms, std::move(envelope), rfc_size,
                                                std::move(head), std::move(message.body));
    if (!ticket.ok()) {
      budget.spool_done(body_octets);
      budget_freed = true;
      shard->_metrics.reject(Rejection::spool_error);
      log_transaction("", fields, transaction_started_ms, 0, false, to_std(ticket.status().message()));
      answer_commit(index, false, "");
      return;
    }
    tickets[*ticket] = PendingCommit{io::UserData{0, index, c.generation},
                                     rfc_size,
                                     recipient_count,
                                     io::monotonic_us(),
                                     body_octets,
                                     transaction_started_ms,
                                     std::move(fields)};
  }

  // One line per transaction that reached the end of data and was handed to the spool: the
  // envelope, the queue id, the reply the client got (or would have: `client_present`), the
  // duration since MAIL and the commit's share of it. Refusals at end of data are event=rejected.
  void log_transaction(std::string_view queue_id, std::string_view fields, uint64_t started_ms, uint64_t commit_us,
                       bool stored, std::string_view error, bool client_present = true) {
    std::string line = str_cat("event=transaction status=", stored ? "250" : "451");
    if (!queue_id.empty()) {
      str_append(&line, " id=", queue_id);
    }
    str_append(&line, " ", fields);
    std::string reply = stored ? str_cat("250 2.0.0 Ok: queued as ", queue_id)
                               : std::string(smtp::reply::kSpoolFailed.substr(0, smtp::reply::kSpoolFailed.size() - 2));
    append_log_field(line, "reply", reply);
    str_append(&line, " duration_ms=", loop_now_ms >= started_ms ? loop_now_ms - started_ms : 0,
               " commit_us=", commit_us);
    if (!client_present) {
      line.append(" client_gone=yes");
    }
    if (!stored) {
      append_log_field(line, "error", error);
    }
    log.line(line);
  }

  void submit_spool_io() {
    io_requests.clear();
    shard->_spool->collect_io(io::monotonic_us(), io_requests);
    for (const spool::IoRequest& request : io_requests) {
      io_uring_sqe* sqe = ring->sqe();
      switch (request.kind) {
        case spool::IoRequest::Kind::write:
          io_uring_prep_writev(sqe, request.fd, request.iov, request.iov_count, request.offset);
          break;
        case spool::IoRequest::Kind::fdatasync:
          io_uring_prep_fsync(sqe, request.fd, IORING_FSYNC_DATASYNC);
          break;
        case spool::IoRequest::Kind::unlink:
          io_uring_prep_unlinkat(sqe, AT_FDCWD, request.path, 0);
          break;
        case spool::IoRequest::Kind::open:
          io_uring_prep_openat(sqe, AT_FDCWD, request.path, request.open_flags, request.open_mode);
          break;
        case spool::IoRequest::Kind::fsync:
          io_uring_prep_fsync(sqe, request.fd, 0);
          break;
        case spool::IoRequest::Kind::fallocate:
          io_uring_prep_fallocate(sqe, request.fd, 0, static_cast<off_t>(request.offset),
                                  static_cast<off_t>(request.length));
          break;
      }
      io_uring_sqe_set_data64(sqe, (uint64_t{kTagSpool} << 56) | request.op_id);
    }
  }

  void on_spool(const io_uring_cqe& cqe) {
    const uint64_t op_id = cqe.user_data & ((uint64_t{1} << 56) - 1);
    completed.clear();
    shard->_spool->on_io_complete(op_id, cqe.res, completed);
    for (spool::Completed& done : completed) {
      const auto it = tickets.find(done.ticket);
      if (it == tickets.end()) {
        if (auto control = control_tickets.extract(done.ticket)) {
          control.mapped()(done.status);
        }
        continue;
      }
      const PendingCommit pending = std::move(it->second);
      const io::UserData owner = pending.owner;
      tickets.erase(it);
      budget.spool_done(pending.body_octets);
      budget_freed = true;
      Connection& c = slot(owner.index);
      const bool client_present = c.generation == owner.generation && c.in_use && c.session;
      const uint64_t duration_us = io::monotonic_us() - pending.started_us;
      if (!done.status.ok()) {
        shard->_metrics.reject(Rejection::spool_error);
        log_transaction(done.queue_id, pending.fields, pending.transaction_started_ms, duration_us, false,
                        to_std(done.status.message()), client_present);
      } else {
        shard->_metrics.add(shard->_metrics.messages_accepted);
        shard->_metrics.add(shard->_metrics.bytes_accepted, pending.rfc_size);
        log_transaction(done.queue_id, pending.fields, pending.transaction_started_ms, duration_us, true, {},
                        client_present);
      }
      if (!client_present) {
        continue;  // the client left before the answer; the message is stored (if ok) all the same
      }
      answer_commit(owner.index, done.status.ok(), done.queue_id);
    }
  }

  // ---- control and drain ------------------------------------------------------------------
  void run_control_requests() {
    ControlRequest* request = nullptr;
    while (shard->_control.try_pop(request)) {
      request->run(*shard);
      delete request;  // posted by another thread, owned by us from then on
    }
  }

  void start_drain() {
    draining = true;
    drain_deadline_ms = loop_now_ms + context->drain_timeout_ms;
    log.line(str_cat("event=drain shard=", shard->_index, " sessions=", open_connections));
    // Sessions between transactions are told now; those mid-transaction finish it first.
    for (uint32_t index = 0; index < slots_used; ++index) {
      Connection& c = slot(index);
      if (c.in_use && !c.closing && c.session && !c.session->transaction_open() && !c.session->in_data_phase() &&
          !c.session->waiting_for_commit()) {
        c.out_next.append(smtp::reply::kShuttingDown);
        begin_close(index);
      } else if (c.in_use && !c.closing && !c.session) {
        begin_close(index);
      }
    }
  }

  void force_close_all() {
    for (uint32_t index = 0; index < slots_used; ++index) {
      Connection& c = slot(index);
      if (c.in_use && !c.closing) {
        if (c.session && !c.session->waiting_for_commit()) {
          c.out_next.append(smtp::reply::kShuttingDown);
        }
        begin_close(index);
      }
    }
  }

  void cancel_accepts() {
    accepts_cancelled = true;
    for (uint32_t i = 0; i < listeners.size(); ++i) {
      io_uring_sqe* sqe = ring->sqe();
      io_uring_prep_cancel64(sqe, io::UserData{kTagAccept, i, 0}.encode(), IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, 0);
    }
  }

  // ---- the loop ---------------------------------------------------------------------------
  // A failed submit is retried by the ring itself (its backlog); the operator sees it here, at
  // most once per kSubmitErrorLogMs, with the count and the errno.
  void log_submit_errors() {
    const uint64_t errors = ring->submit_errors();
    if (errors == submit_errors_logged || loop_now_ms < submit_error_logged_ms + kSubmitErrorLogMs) {
      return;
    }
    log.line(str_cat("event=ring_submit_error errno=", ring->last_submit_error(),
                     " count=", errors - submit_errors_logged, " backlog=", ring->backlog()));
    submit_errors_logged = errors;
    submit_error_logged_ms = loop_now_ms;
  }

  void dispatch(const io_uring_cqe& cqe) {
    const io::UserData data = io::UserData::decode(cqe.user_data);
    switch (data.tag) {
      case kTagAccept:
        on_accept(cqe, data.index);
        return;
      case kTagSpool:
        on_spool(cqe);
        return;
      case kTagDoorbell:
        run_control_requests();
        return;
      case kTagLog:
        log.on_write_done(cqe.res);
        return;
      case kTagIgnore:
        return;
      default:
        break;
    }
    // A slot is freed only on its close CQE, and the close is issued only after the final CQE
    // of its recv and its send: no CQE can arrive for a freed or reused slot.
    SLUICE_ASSERT(data.index < slots_used && slot(data.index).in_use && slot(data.index).generation == data.generation,
                  "CQE for a freed slot");
    switch (data.tag) {
      case kTagRecv:
        on_recv(cqe, data.index);
        return;
      case kTagSend:
        on_send(cqe, data.index);
        return;
      case kTagClose:
        on_close(data.index);
        return;
      default:
        return;
    }
  }

  void flush_dirty() {
    // Flushing can mark more connections dirty (resume_pending); take the list as it grows.
    for (size_t i = 0; i < dirty.size(); ++i) {
      const uint32_t index = dirty[i];
      Connection& c = slot(index);
      c.dirty = false;
      if (c.in_use) {
        flush_output(index);
      }
    }
    dirty.clear();
  }

  // How long the ring may sleep: until the next timer or paced commit, at most kIdleWaitUsMax
  // when nothing is pending (an idle relay should not wake 100 times a second), and at most
  // kLoopWaitUsMax while something is polled rather than woken (drain, space, accept retry).
  uint64_t wait_us() const {
    const bool polling = draining || !waiting_for_space.empty() || !accepts_to_rearm.empty() || budget_freed;
    uint64_t wait = polling ? kLoopWaitUsMax : kIdleWaitUsMax;
    const uint64_t now = io::monotonic_us();
    if (const std::optional<uint64_t> timer_ms = timers->next_deadline_ms()) {
      const uint64_t timer_us = *timer_ms * 1000;
      wait = std::min(wait, timer_us > now ? timer_us - now : 0);
    }
    const uint64_t spool_deadline = shard->_spool->next_deadline_us();
    if (spool_deadline != UINT64_MAX) {
      wait = std::min(wait, spool_deadline > now ? spool_deadline - now : 0);
    }
    return wait;
  }

  void loop() {
    while (true) {
      loop_now_ms = io::monotonic_us() / 1000;
      expired.clear();
      timers->advance(loop_now_ms, [this](io::TimerNode& node) { expired.push_back(&node); });
      for (io::TimerNode* node : expired) {
        on_timer(static_cast<uint32_t>(node->cookie));
      }
      if (!draining && context->draining->load(std::memory_order_relaxed)) {
        start_drain();
      }
      if (draining) {
        if (loop_now_ms >= drain_deadline_ms && !drain_deadline_passed) {
          drain_deadline_passed = true;
          force_close_all();
        }
        if (loop_now_ms >= drain_deadline_ms + kDrainForceGraceMs) {
          for (uint32_t index = 0; index < slots_used; ++index) {
            Connection& c = slot(index);
            if (c.in_use && !c.close_sent) {
              if (!c.shutdown_sent) {
                log.line(str_cat("event=close_forced ", session_tag(c.serial), " client=", c.peer.ip_string(),
                                 " reason=drain_deadline"));
                c.end_reason = "close_forced";
              }
              force_close(index);
            }
          }
        }
        if (open_connections == 0 && tickets.empty() && waiting_for_space.empty() && shard->_spool->idle()) {
          if (!accepts_cancelled) {
            cancel_accepts();
          } else {
            break;
          }
        }
      }
      if (!accepts_to_rearm.empty() && loop_now_ms >= accept_retry_ms && !accepts_cancelled) {
        for (const uint32_t listener : accepts_to_rearm) {
          arm_accept(listener);
        }
        accepts_to_rearm.clear();
      }
      run_control_requests();
      retry_waiting_for_space();
      wake_budget_waiters();
      flush_dirty();
      submit_spool_io();
      log.flush(*ring, io::UserData{kTagLog, 0, 0}.encode());
      shard->_metrics.log_lines_dropped.store(log.dropped(), std::memory_order_relaxed);
      ring->submit_wait_and_reap(wait_us(), [this](const io_uring_cqe& cqe) { dispatch(cqe); });
      log_submit_errors();
      buffers->publish();
      flush_dirty();
    }
    // Let the cancels and the last log write complete, then close the listeners.
    for (int round = 0; round < 100 && (round == 0 || log.in_flight()); ++round) {
      ring->submit_wait_and_reap(10'000, [this](const io_uring_cqe& cqe) {
        if (io::UserData::decode(cqe.user_data).tag == kTagLog) {
          log.on_write_done(cqe.res);
        }
      });
    }
    for (int fd : listeners) {
      close(fd);
    }
    log.flush_blocking();
  }
};

Shard::Shard(uint32_t index, const ShardContext* context, std::vector<int> listener_fds,
             std::unique_ptr<spool::ShardSpool> spool, uint64_t id_floor_ms)
    : _index(index), _spool(std::move(spool)), _impl(std::make_unique<Impl>()) {
  _impl->shard = this;
  _impl->context = context;
  _impl->listeners = std::move(listener_fds);
  _impl->ids = std::make_unique<spool::IdGenerator>(index, id_floor_ms);
  _impl->log.set_shard(index);
  _impl->budget = BodyBudget(context->body_memory_octets, context->settings.limits.message_octets_max);
}

Shard::~Shard() = default;

bool Shard::run() {
  if (!_impl->start()) {
    return false;
  }
  _ring_fd.store(_impl->ring->fd(), std::memory_order_release);
  _ready.store(true, std::memory_order_release);
  _impl->loop();
  _ready.store(false, std::memory_order_release);
  return true;
}

void Shard::await_ticket(uint64_t ticket, std::function<void(const absl::Status&)> done) {
  _impl->control_tickets.emplace(ticket, std::move(done));
}

bool Shard::post(ControlRequest* request) {
  std::lock_guard lock(_post_mutex);
  return _control.try_push(request);
}

}  // namespace sluice::app

namespace sluice::app {
uint64_t Shard::doorbell_user_data() {
  return io::UserData{kTagDoorbell, 0, 0}.encode();
}
}  // namespace sluice::app
