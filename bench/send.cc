// The send workers: one per thread, each with its own ring, buffer ring, timer wheel and slice of
// the sessions. A connection slot is an io::Stream with an smtp::ClientSession on it, driven as
// the relay's outbound connections are (engine/app/outbound.cc): input to the session, its
// actions carried out, output flushed once per loop iteration, timers from the session's
// deadline, the stream's close protocol before a slot is reused.
#include "bench/send.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_format.h"
#include "bench/common/report.h"
#include "engine/app/http.h"
#include "engine/io/buffer_ring.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/stream.h"
#include "engine/io/strings.h"
#include "engine/io/timer_wheel.h"
#include "engine/smtp/client_session.h"
#include "spool/crc32c.h"

namespace sluice::bench {

using io::CompletionTag;

namespace {

std::atomic<bool> g_stop_requested{false};  // set from a signal handler: lock-free, so safe there
static_assert(std::atomic<bool>::is_always_lock_free);

constexpr uint16_t kBufferGroup = 0;
constexpr uint32_t kBufferBytes = 4096;  // replies are short; a long EHLO spans two
constexpr uint64_t kCloseLingerMs = 2'000;  // a closing connection's peer gets this long
constexpr uint64_t kWaitUsMax = 100'000;    // the loop wakes at least this often (stop, progress)
// Connections in a row that ended before any transaction (refused, 554 greeting, ...): the
// target is not taking mail, and a closed loop would spin on it forever.
constexpr uint64_t kFailedConnectionsPerSessionMax = 20;

uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// RFC 5322 date, fixed for the run: every message's Date is the start (cheaper than strftime
// per message, and a sink does not care).
std::string rfc5322_date(uint64_t wall_ms) {
  const time_t seconds = static_cast<time_t>(wall_ms / 1000);
  tm parts{};
  gmtime_r(&seconds, &parts);
  char text[64];
  strftime(text, sizeof(text), "%a, %d %b %Y %H:%M:%S +0000", &parts);
  return text;
}

struct Body {
  std::string wire;
  std::string sum;  // "crc32c:xxxxxxxx"
};

std::string result_key(const smtp::RecipientResult& result) {
  if (result.cause == smtp::ResultCause::reply && result.code != 0) {
    return std::to_string(result.code);
  }
  return std::string(smtp::result_cause_name(result.cause));
}

class Worker;

// Times each reply of one connection's session (see StepHistograms).
struct StepTimer : smtp::ClientReplyObserver {
  Worker* worker = nullptr;
  uint32_t index = 0;
  void on_reply(smtp::ClientCommand command, uint16_t code) override;
};

struct Connection {
  io::Stream stream;
  std::optional<smtp::ClientSession> session;
  io::TimerNode timer;
  StepTimer step_timer;
  uint32_t generation = 0;
  bool active = false;  // a stream is open or closing
  bool session_over = false;
  bool in_transaction = false;
  bool body_sending = false;
  bool waiting = false;   // ready, waiting for the next due message (open loop)
  bool dirty = false;
  bool any_transaction = false;  // this connection started one
  bool opening = false;          // counted in SendRun::opening: no message claimed yet
  uint64_t connect_start_us = 0;
  uint64_t connected_us = 0;
  uint64_t last_reply_us = 0;
  uint64_t started_us = 0;
  uint64_t scheduled_us = 0;
  uint64_t message = 0;
  uint32_t body = 0;
  std::string header;  // the message's header section, built when its transaction starts
};

enum class Claim : uint8_t { got, not_yet, exhausted };

class Worker {
 public:
  Worker(SendRun* run, uint32_t thread, uint32_t sessions, const std::vector<Body>* bodies, std::string date)
      : _run(run), _options(*run->options), _thread(thread), _count(sessions), _bodies(bodies),
        _date(std::move(date)) {}

  absl::Status run();
  SendResults& results() { return _results; }
  void on_reply(uint32_t index, smtp::ClientCommand command);

 private:
  Connection& conn(uint32_t index) { return _connections[index]; }
  absl::Status start();
  void loop();
  uint64_t wait_us();
  void dispatch(const io_uring_cqe& cqe);
  void open(uint32_t index);
  void on_connect(uint32_t index, int32_t res);
  void on_recv(const io_uring_cqe& cqe, uint32_t index);
  void input(uint32_t index, std::string_view data);
  void act(uint32_t index, smtp::ClientAction action);
  void next_transaction(uint32_t index);
  Claim claim(uint64_t now_us, uint64_t& message, uint64_t& scheduled_us);
  bool start_transaction(uint32_t index, uint64_t message, uint64_t scheduled_us);
  void send_body(uint32_t index);
  void transaction_done(uint32_t index);
  void session_over(uint32_t index);
  void close(uint32_t index);
  void on_send(uint32_t index, int32_t res);
  void on_close(uint32_t index);
  void on_timer(uint32_t index);
  void rearm(uint32_t index);
  void mark_dirty(uint32_t index);
  void flush_dirty();
  void wake_waiting();
  bool work_left() const;
  bool connection_needed() const;
  void end_opening(Connection& c);
  void note_connection_error(const std::string& reason);

  SendRun* _run;
  const SendOptions& _options;
  uint32_t _thread;
  uint32_t _count;
  const std::vector<Body>* _bodies;
  const std::string _date;
  std::unique_ptr<io::Ring> _ring;
  std::unique_ptr<io::BufferRing> _buffers;
  std::unique_ptr<io::TimerWheel> _timers;
  uint64_t _wake_us = 0;  // open loop: when the next message is due (0: no session waits)
  std::unique_ptr<Connection[]> _connections;
  smtp::ClientSettings _settings;
  std::vector<uint32_t> _dirty;
  std::deque<uint32_t> _waiting;  // open loop: ready sessions waiting for a due message
  std::vector<uint32_t> _to_open;  // slots to (re)open at the top of the loop, never recursively
  std::vector<io::TimerNode*> _expired;
  uint32_t _active = 0;
  uint64_t _opened = 0;  // connections opened by this worker: picks target and source
  uint64_t _failed_in_a_row = 0;
  uint64_t _now_ms = 0;
  absl::Status _error;
  SendResults _results;
};

void StepTimer::on_reply(smtp::ClientCommand command, uint16_t) {
  worker->on_reply(index, command);
}

absl::Status Worker::start() {
  auto ring = io::Ring::create_for_this_thread(io::RingOptions{});
  if (!ring.ok()) {
    return ring.status();
  }
  _ring.reset(*ring);
  uint32_t entries = 64;
  // A buffer per recv CQE, recycled in the loop iteration it came in: two per session is plenty.
  while (entries < _count * 2 && entries < io::BufferRing::kEntriesMax) {
    entries *= 2;
  }
  auto buffers = io::BufferRing::create(_ring->raw(), kBufferGroup, entries, kBufferBytes);
  if (!buffers.ok()) {
    return buffers.status();
  }
  _buffers.reset(*buffers);
  _now_ms = io::monotonic_ms();
  _timers = std::make_unique<io::TimerWheel>(_now_ms, 1);
  _settings.hostname = _options.helo;
  _settings.pipelining = _options.pipelining;
  _settings.chunking = _options.chunking;
  _settings.timeouts = smtp::ClientTimeouts{_options.timeout_ms, _options.timeout_ms, _options.timeout_ms,
                                            _options.timeout_ms, _options.timeout_ms, _options.timeout_ms,
                                            _options.timeout_ms};
  _connections = std::make_unique<Connection[]>(_count);
  for (uint32_t i = 0; i < _count; ++i) {
    conn(i).step_timer.worker = this;
    conn(i).step_timer.index = i;
    conn(i).timer.cookie = i;
  }
  return absl::OkStatus();
}

absl::Status Worker::run() {
  if (absl::Status status = start(); !status.ok()) {
    _run->stop.store(true);
    return status;
  }
  for (uint32_t i = 0; i < _count; ++i) {
    _to_open.push_back(i);
  }
  loop();
  return _error;
}

void Worker::loop() {
  while (true) {
    std::vector<uint32_t> to_open;
    to_open.swap(_to_open);
    for (const uint32_t index : to_open) {
      if (connection_needed()) {
        open(index);
      }
    }
    if (_active == 0 && _to_open.empty()) {
      return;
    }
    _now_ms = io::monotonic_ms();
    _expired.clear();
    _timers->advance(_now_ms, [this](io::TimerNode& node) { _expired.push_back(&node); });
    for (io::TimerNode* node : _expired) {
      on_timer(static_cast<uint32_t>(node->cookie));
    }
    if (!_waiting.empty() && (io::monotonic_us() >= _wake_us || !work_left())) {
      wake_waiting();  // when nothing is left, they find nothing to claim and QUIT
    }
    flush_dirty();
    _ring->submit_wait_and_reap(wait_us(), [this](const io_uring_cqe& cqe) {
      _now_ms = io::monotonic_ms();
      dispatch(cqe);
    });
    _buffers->publish();
    flush_dirty();
  }
}

uint64_t Worker::wait_us() {
  uint64_t wait = kWaitUsMax;
  const uint64_t now = io::monotonic_us();
  if (const std::optional<uint64_t> timer_ms = _timers->next_deadline_ms()) {
    const uint64_t timer_us = *timer_ms * 1000;
    wait = std::min(wait, timer_us > now ? timer_us - now : 0);
  }
  if (!_waiting.empty()) {
    // To the microsecond, not the wheel's tick: lateness here would count as queueing delay.
    wait = std::min(wait, _wake_us > now ? _wake_us - now : 0);
  }
  return wait;  // 0: a zero timeout, the ring returns at once
}

bool Worker::work_left() const {
  if (_run->stop.load(std::memory_order_relaxed)) {
    return false;
  }
  if (_options.duration_ms != 0 && io::monotonic_us() >= _run->start_us + _options.duration_ms * 1000) {
    return false;
  }
  return _options.messages == 0 || _run->next_message.load(std::memory_order_relaxed) < _options.messages;
}

// A new connection only for a message nobody has claimed or is about to: with --messages N, N
// minus those sent minus the connections still on their way to their first message. Without it,
// the last messages' slots would reconnect only to QUIT (one connection too many per slot at
// --messages-per-connection 1). Across threads the check is racy, at worst one spare connection.
bool Worker::connection_needed() const {
  if (!work_left()) {
    return false;
  }
  return _options.messages == 0 || _run->next_message.load(std::memory_order_relaxed) +
                                           _run->opening.load(std::memory_order_relaxed) <
                                       _options.messages;
}

void Worker::end_opening(Connection& c) {
  if (c.opening) {
    c.opening = false;
    _run->opening.fetch_sub(1, std::memory_order_relaxed);
  }
}

void Worker::note_connection_error(const std::string& reason) {
  ++_results.connection_errors[reason];
}

// ---- connections --------------------------------------------------------------------------
void Worker::open(uint32_t index) {
  Connection& c = conn(index);
  SLUICE_ASSERT(!c.active, "a slot is reopened once closed");
  const uint64_t serial = _opened++ * _options.threads + _thread;  // spreads threads over targets
  const io::SocketAddress& target = _options.targets[serial % _options.targets.size()];
  const io::SocketAddress* source =
      _options.sources.empty() ? nullptr : &_options.sources[serial % _options.sources.size()];
  c.stream.~Stream();
  new (&c.stream) io::Stream();
  c.stream.bind(_ring.get(), _buffers.get(), index, c.generation);
  c.session.reset();
  c.session_over = false;
  c.in_transaction = false;
  c.body_sending = false;
  c.waiting = false;
  c.any_transaction = false;
  c.opening = true;
  _run->opening.fetch_add(1, std::memory_order_relaxed);
  c.connect_start_us = io::monotonic_us();
  c.active = true;
  ++_active;
  const int error = c.stream.connect(target, _options.timeout_ms, source);
  if (error != 0) {
    // No socket at all (EMFILE, a bad source address): nothing is in the kernel.
    note_connection_error(str_cat("socket: ", std::strerror(-error)));
    ++_results.connect_failures;
    on_close(index);
  }
}

void Worker::on_connect(uint32_t index, int32_t res) {
  Connection& c = conn(index);
  const int32_t result = c.stream.on_connect(res);
  if (result != 0) {
    if (result != -ECANCELED) {
      ++_results.connect_failures;
      note_connection_error(str_cat("connect: ", result == -ETIMEDOUT ? "timed out" : std::strerror(-result)));
    }
    c.stream.advance_close();
    return;
  }
  const uint64_t now = io::monotonic_us();
  _results.latency.connect.record(now - c.connect_start_us);
  ++_results.connections;
  c.connected_us = now;
  c.last_reply_us = now;
  c.session.emplace(&_settings, _now_ms);
  c.session->set_reply_observer(&c.step_timer);
  rearm(index);
}

void Worker::dispatch(const io_uring_cqe& cqe) {
  const CompletionTag tag = io::completion_tag(cqe.user_data);
  if (tag == CompletionTag::ignore) {
    return;
  }
  const io::UserData data = io::UserData::decode(cqe.user_data);
  SLUICE_ASSERT(data.index < _count && conn(data.index).active && conn(data.index).generation == data.generation,
                "CQE for a closed slot");
  const uint32_t index = data.index;
  switch (tag) {
    case CompletionTag::stream_connect:
      on_connect(index, cqe.res);
      return;
    case CompletionTag::stream_recv:
      on_recv(cqe, index);
      return;
    case CompletionTag::stream_send:
      on_send(index, cqe.res);
      return;
    case CompletionTag::stream_close:
      conn(index).stream.on_close();
      on_close(index);
      return;
    default:
      SLUICE_ASSERT(false, "unexpected completion tag for a bench connection");
  }
}

void Worker::on_recv(const io_uring_cqe& cqe, uint32_t index) {
  Connection& c = conn(index);
  const io::RecvEvent event = c.stream.on_recv(cqe, [&](std::string_view data) { input(index, data); });
  switch (event) {
    case io::RecvEvent::more:
      return;
    case io::RecvEvent::peer_closed:
      session_over(index);
      close(index);
      return;
    case io::RecvEvent::ended:
    case io::RecvEvent::failed:
      session_over(index);
      c.stream.advance_close();
      return;
  }
}

void Worker::input(uint32_t index, std::string_view data) {
  Connection& c = conn(index);
  while (c.session && !c.session_over && !c.stream.closing()) {
    const smtp::ClientStep step = c.session->on_input(data, _now_ms, c.stream.output());
    data.remove_prefix(step.consumed);
    act(index, step.action);
    if (step.action == smtp::ClientAction::none && (data.empty() || step.consumed == 0)) {
      break;
    }
  }
  rearm(index);
}

void Worker::on_reply(uint32_t index, smtp::ClientCommand command) {
  Connection& c = conn(index);
  const uint64_t now = io::monotonic_us();
  const uint64_t since = std::max(c.last_reply_us, c.in_transaction ? c.started_us : 0);
  const uint64_t elapsed = now > since ? now - since : 0;
  StepHistograms& h = _results.latency;
  switch (command) {
    case smtp::ClientCommand::greeting:
      h.greeting.record(elapsed);
      break;
    case smtp::ClientCommand::ehlo:
    case smtp::ClientCommand::helo:
      h.ehlo.record(elapsed);
      break;
    case smtp::ClientCommand::mail:
      h.mail.record(elapsed);
      break;
    case smtp::ClientCommand::rcpt:
      h.rcpt.record(elapsed);
      break;
    case smtp::ClientCommand::data:
      h.data.record(elapsed);
      break;
    case smtp::ClientCommand::data_end:
      h.data_end.record(elapsed);
      break;
    case smtp::ClientCommand::rset:
    case smtp::ClientCommand::quit:
      break;
  }
  c.last_reply_us = now;
}

void Worker::act(uint32_t index, smtp::ClientAction action) {
  Connection& c = conn(index);
  switch (action) {
    case smtp::ClientAction::none:
      break;
    case smtp::ClientAction::ready:
      next_transaction(index);
      break;
    case smtp::ClientAction::send_body:
      send_body(index);
      break;
    case smtp::ClientAction::transaction_done:
      transaction_done(index);
      if (c.session->state() == smtp::ClientState::idle && !c.stream.closing()) {
        next_transaction(index);
      }
      break;
    case smtp::ClientAction::close:
      session_over(index);
      close(index);
      return;
  }
  mark_dirty(index);
}

// ---- messages -----------------------------------------------------------------------------
Claim Worker::claim(uint64_t now_us, uint64_t& message, uint64_t& scheduled_us) {
  if (!work_left()) {
    return Claim::exhausted;
  }
  std::atomic<uint64_t>& next = _run->next_message;
  if (_options.rate <= 0) {
    message = next.fetch_add(1, std::memory_order_relaxed);
    if (_options.messages != 0 && message >= _options.messages) {
      return Claim::exhausted;
    }
    scheduled_us = now_us;
    return Claim::got;
  }
  // Open loop: message n is due at start + n / rate, and taken by whichever session is free.
  uint64_t n = next.load(std::memory_order_relaxed);
  while (true) {
    if (_options.messages != 0 && n >= _options.messages) {
      return Claim::exhausted;
    }
    const uint64_t due = _run->start_us + static_cast<uint64_t>(static_cast<double>(n) * 1e6 / _options.rate);
    if (due > now_us) {
      scheduled_us = due;
      return Claim::not_yet;
    }
    if (next.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) {
      message = n;
      scheduled_us = due;
      return Claim::got;
    }
  }
}

// The session is ready for a transaction: the next message, QUIT at the connection's limit or
// when nothing is left, or a wait for the next due message (open loop).
void Worker::next_transaction(uint32_t index) {
  Connection& c = conn(index);
  while (true) {
    if (_options.messages_per_connection != 0 && c.session->transactions() >= _options.messages_per_connection) {
      act(index, c.session->finish(_now_ms, c.stream.output()));
      return;
    }
    const uint64_t now = io::monotonic_us();
    uint64_t message = 0;
    uint64_t scheduled = 0;
    const Claim claimed = claim(now, message, scheduled);
    if (claimed != Claim::not_yet) {
      end_opening(c);
    }
    switch (claimed) {
      case Claim::exhausted:
        act(index, c.session->finish(_now_ms, c.stream.output()));
        return;
      case Claim::not_yet:
        c.waiting = true;
        _waiting.push_back(index);
        _wake_us = scheduled;  // the same for every waiting session: the next message's
        return;
      case Claim::got:
        break;
    }
    if (start_transaction(index, message, scheduled)) {
      return;
    }
    // Refused before anything was sent (e.g. SIZE): its results are in; go on unless closing.
    if (c.session->state() != smtp::ClientState::idle || c.stream.closing()) {
      return;
    }
  }
}

// Returns false when the session refused the transaction at once (its results are taken).
bool Worker::start_transaction(uint32_t index, uint64_t message, uint64_t scheduled_us) {
  Connection& c = conn(index);
  const std::vector<Body>& bodies = *_bodies;
  uint32_t body = 0;
  if (bodies.size() > 1) {
    uint64_t total = 0;
    for (const SizeChoice& choice : _options.sizes) {
      total += choice.weight;
    }
    uint64_t pick = splitmix64(message) % total;
    while (pick >= _options.sizes[body].weight) {
      pick -= _options.sizes[body].weight;
      ++body;
    }
  }
  const std::string id = str_cat(_run->run_id, "-", message);
  smtp::ClientTransaction transaction;
  transaction.sender = expand_counter(_options.from, message);
  for (uint32_t i = 0; i < _options.rcpts; ++i) {
    transaction.recipients.push_back(
        smtp::ClientRecipient{expand_counter(_options.to, message * _options.rcpts + i), 0, ""});
  }
  c.header.clear();
  str_append(&c.header, "Message-ID: <", id, "@sluice-bench.invalid>\r\nDate: ", _date, "\r\nFrom: <",
             transaction.sender, ">\r\nTo: <", transaction.recipients[0].address, ">\r\nSubject: sluice-bench ", id,
             "\r\nX-Sluice-Bench-Id: ", id, "\r\nX-Sluice-Bench-Sum: ", bodies[body].sum,
             "\r\nX-Sluice-Bench-Sent: ", io::wall_us(), "\r\n\r\n");
  transaction.size_octets = c.header.size() + bodies[body].wire.size();
  c.message = message;
  c.body = body;
  c.scheduled_us = scheduled_us;
  c.started_us = io::monotonic_us();
  c.in_transaction = true;
  c.any_transaction = true;
  _results.latency.queue_delay.record(c.started_us > scheduled_us ? c.started_us - scheduled_us : 0);
  ++_results.messages_sent;
  _run->live_sent.fetch_add(1, std::memory_order_relaxed);
  const smtp::ClientAction action = c.session->start_transaction(std::move(transaction), _now_ms, c.stream.output());
  if (action == smtp::ClientAction::transaction_done) {
    transaction_done(index);
    mark_dirty(index);
    return false;
  }
  act(index, action);
  return true;
}

void Worker::send_body(uint32_t index) {
  Connection& c = conn(index);
  std::string& out = c.stream.output();
  out += c.header;
  out += (*_bodies)[c.body].wire;
  c.session->body_queued(true, _now_ms, out);  // the body ends with CRLF (make_body)
  c.body_sending = true;
}

void Worker::transaction_done(uint32_t index) {
  Connection& c = conn(index);
  SLUICE_ASSERT(c.in_transaction, "a transaction ends once");
  c.in_transaction = false;
  c.body_sending = false;
  const std::vector<smtp::RecipientResult> results = c.session->take_results();
  bool accepted = false;
  bool deferred = false;
  for (const smtp::RecipientResult& result : results) {
    switch (result.status) {
      case smtp::DeliveryStatus::delivered:
        ++_results.recipients_accepted;
        accepted = true;
        break;
      case smtp::DeliveryStatus::deferred:
        ++_results.recipients_deferred;
        ++_results.deferred_by_code[result_key(result)];
        deferred = true;
        break;
      case smtp::DeliveryStatus::bounced:
        ++_results.recipients_rejected;
        ++_results.rejected_by_code[result_key(result)];
        break;
    }
  }
  if (accepted) {
    const uint64_t now = io::monotonic_us();
    const uint64_t latency = now > c.scheduled_us ? now - c.scheduled_us : 0;
    _results.latency.message.record(latency);
    ++_results.messages_accepted;
    _results.accepted_messages.push_back(c.message);
    _results.octets_accepted += c.header.size() + (*_bodies)[c.body].wire.size();
    _run->live_accepted.fetch_add(1, std::memory_order_relaxed);
    _run->live_latency_sum_us.fetch_add(latency, std::memory_order_relaxed);
    _run->live_latency_count.fetch_add(1, std::memory_order_relaxed);
  } else {
    ++(deferred ? _results.messages_deferred : _results.messages_rejected);
    _run->live_failed.fetch_add(1, std::memory_order_relaxed);
  }
}

// Open loop: waiting sessions take the messages now due (or QUIT when none are left), one
// session per message: the first that finds nothing due goes back to the end of the queue and
// the rest wait on, so a thousand idle sessions cost nothing per message.
void Worker::wake_waiting() {
  while (!_waiting.empty()) {
    const uint32_t index = _waiting.front();
    _waiting.pop_front();
    Connection& c = conn(index);
    if (!c.waiting) {
      continue;  // closed meanwhile (its slot may have reopened)
    }
    c.waiting = false;
    if (!c.session || c.stream.closing() || c.session->state() != smtp::ClientState::idle) {
      continue;
    }
    next_transaction(index);
    mark_dirty(index);
    if (c.waiting) {
      return;  // nothing due yet: _wake_us is the next one's time
    }
  }
}

// ---- the end of a connection --------------------------------------------------------------
// The connection can carry nothing more: the results of what was in flight are taken (once).
void Worker::session_over(uint32_t index) {
  Connection& c = conn(index);
  if (c.session_over || !c.session) {
    return;
  }
  if (c.session->state() != smtp::ClientState::closed) {
    if (c.session->on_close() == smtp::ClientAction::transaction_done) {
      transaction_done(index);
    }
  } else if (c.in_transaction) {
    transaction_done(index);
  }
  c.session_over = true;
  if (c.session->failure()) {
    note_connection_error(result_key(*c.session->failure()));
  }
}

void Worker::close(uint32_t index) {
  Connection& c = conn(index);
  if (!c.stream.closing()) {
    c.stream.begin_close();
  }
  _timers->schedule(c.timer, _now_ms + kCloseLingerMs);
  mark_dirty(index);
}

void Worker::on_send(uint32_t index, int32_t res) {
  Connection& c = conn(index);
  if (!c.stream.on_send(res)) {
    session_over(index);
    c.stream.advance_close();
    return;
  }
  if (c.stream.output_in_flight()) {
    if (c.body_sending && c.session) {
      c.session->body_progress(_now_ms);
    }
    return;
  }
  if (c.body_sending && c.stream.output_idle() && c.session) {
    c.body_sending = false;
    c.session->body_sent(_now_ms);
    rearm(index);
  }
  c.stream.flush();
}

// The close CQE (or a connection that never got a socket): the slot opens again while there is
// work, unless the targets keep refusing.
void Worker::on_close(uint32_t index) {
  Connection& c = conn(index);
  session_over(index);
  end_opening(c);
  _timers->cancel(c.timer);
  c.session.reset();
  c.active = false;
  ++c.generation;
  --_active;
  if (c.any_transaction) {
    _failed_in_a_row = 0;
  } else if (++_failed_in_a_row >= kFailedConnectionsPerSessionMax * _count) {
    if (_error.ok()) {
      _error = absl::UnavailableError(
          str_cat(_failed_in_a_row, " connections in a row ended before any transaction (see connection_errors)"));
    }
    _run->stop.store(true);
  }
  _to_open.push_back(index);
}

// ---- timers and output ----------------------------------------------------------------------
void Worker::rearm(uint32_t index) {
  Connection& c = conn(index);
  if (c.stream.closing()) {
    return;
  }
  _timers->cancel(c.timer);
  if (c.session) {
    if (const std::optional<uint64_t> deadline = c.session->next_deadline_ms()) {
      _timers->schedule(c.timer, *deadline);
    }
  }
}

void Worker::on_timer(uint32_t index) {
  Connection& c = conn(index);
  if (!c.active || c.stream.shut_down()) {
    return;
  }
  if (c.stream.closing()) {
    c.stream.force_close();
    return;
  }
  if (!c.session) {
    return;  // connecting: the linked timeout ends it
  }
  act(index, c.session->on_timeout(_now_ms, c.stream.output()));
  rearm(index);
}

void Worker::mark_dirty(uint32_t index) {
  Connection& c = conn(index);
  if (!c.dirty) {
    c.dirty = true;
    _dirty.push_back(index);
  }
}

void Worker::flush_dirty() {
  for (size_t i = 0; i < _dirty.size(); ++i) {
    Connection& c = conn(_dirty[i]);
    c.dirty = false;
    if (c.active && c.stream.state() != io::StreamState::idle && c.stream.state() != io::StreamState::connecting) {
      c.stream.flush();
    }
  }
  _dirty.clear();
}

// ---- the progress line ------------------------------------------------------------------------
std::string format_duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) {
    return "-";
  }
  const uint64_t s = static_cast<uint64_t>(seconds + 0.5);
  return s >= 60 ? absl::StrFormat("%dm%02ds", s / 60, s % 60) : absl::StrFormat("%ds", s);
}

void print_progress(const SendRun& run, uint64_t& last_sent, uint64_t& last_us, uint64_t& last_latency_sum,
                    uint64_t& last_latency_count) {
  const SendOptions& options = *run.options;
  const uint64_t now = io::monotonic_us();
  const uint64_t sent = run.live_sent.load(std::memory_order_relaxed);
  const uint64_t latency_sum = run.live_latency_sum_us.load(std::memory_order_relaxed);
  const uint64_t latency_count = run.live_latency_count.load(std::memory_order_relaxed);
  const double interval_s = static_cast<double>(now - last_us) / 1e6;
  const double rate = interval_s > 0 ? static_cast<double>(sent - last_sent) / interval_s : 0;
  const double latency_ms = latency_count > last_latency_count ? static_cast<double>(latency_sum - last_latency_sum) /
                                                                     static_cast<double>(latency_count - last_latency_count) / 1000.0
                                                               : 0.0;
  const double elapsed_s = static_cast<double>(now - run.start_us) / 1e6;
  double eta_s = -1;
  if (options.duration_ms != 0) {
    eta_s = static_cast<double>(options.duration_ms) / 1000.0 - elapsed_s;
  } else if (options.messages != 0 && rate > 0) {
    eta_s = static_cast<double>(options.messages - std::min(options.messages, sent)) / rate;
  }
  std::fprintf(stdout, "\r\033[K%s sent=%llu accepted=%llu failed=%llu rate=%.0f msg/s latency=%.2f ms ETA %s",
               format_duration(elapsed_s).c_str(), static_cast<unsigned long long>(sent),
               static_cast<unsigned long long>(run.live_accepted.load(std::memory_order_relaxed)),
               static_cast<unsigned long long>(run.live_failed.load(std::memory_order_relaxed)), rate, latency_ms,
               format_duration(eta_s).c_str());
  std::fflush(stdout);
  last_sent = sent;
  last_us = now;
  last_latency_sum = latency_sum;
  last_latency_count = latency_count;
}

void append_counts_json(std::string& out, std::string_view name, const std::map<std::string, uint64_t>& counts) {
  str_append(&out, "\"", name, "\":{");
  bool first = true;
  for (const auto& [key, count] : counts) {
    str_append(&out, first ? "" : ",", "\"", app::json_escape(key), "\":", count);
    first = false;
  }
  out += "}";
}

std::string format_us(uint64_t us) {
  return us >= 10'000 ? absl::StrFormat("%.1fms", static_cast<double>(us) / 1000.0)
                      : absl::StrFormat("%.3fms", static_cast<double>(us) / 1000.0);
}

std::string format_counts(const std::map<std::string, uint64_t>& counts) {
  std::string out;
  for (const auto& [key, count] : counts) {
    str_append(&out, out.empty() ? "" : " ", key, ":", count);
  }
  return out.empty() ? "-" : out;
}

struct NamedHistogram {
  std::string_view name;
  const io::LatencyHistogram* histogram;
};

std::vector<NamedHistogram> named(const StepHistograms& h) {
  return {{"connect", &h.connect}, {"greeting", &h.greeting}, {"ehlo", &h.ehlo},
          {"mail", &h.mail},       {"rcpt", &h.rcpt},         {"data", &h.data},
          {"data_end", &h.data_end}, {"message", &h.message}, {"queue_delay", &h.queue_delay}};
}

}  // namespace

// ---- shared pieces --------------------------------------------------------------------------
void request_stop() {
  g_stop_requested.store(true, std::memory_order_relaxed);
}

void StepHistograms::merge(const StepHistograms& other) {
  connect.merge(other.connect);
  greeting.merge(other.greeting);
  ehlo.merge(other.ehlo);
  mail.merge(other.mail);
  rcpt.merge(other.rcpt);
  data.merge(other.data);
  data_end.merge(other.data_end);
  message.merge(other.message);
  queue_delay.merge(other.queue_delay);
}

void SendResults::merge(const SendResults& other) {
  messages_sent += other.messages_sent;
  messages_accepted += other.messages_accepted;
  messages_deferred += other.messages_deferred;
  messages_rejected += other.messages_rejected;
  recipients_accepted += other.recipients_accepted;
  recipients_deferred += other.recipients_deferred;
  recipients_rejected += other.recipients_rejected;
  for (const auto& [key, count] : other.deferred_by_code) {
    deferred_by_code[key] += count;
  }
  for (const auto& [key, count] : other.rejected_by_code) {
    rejected_by_code[key] += count;
  }
  octets_accepted += other.octets_accepted;
  connections += other.connections;
  connect_failures += other.connect_failures;
  for (const auto& [key, count] : other.connection_errors) {
    connection_errors[key] += count;
  }
  latency.merge(other.latency);
  accepted_messages.insert(accepted_messages.end(), other.accepted_messages.begin(), other.accepted_messages.end());
}

void SendResults::finish() { std::sort(accepted_messages.begin(), accepted_messages.end()); }

std::vector<std::pair<uint64_t, uint64_t>> accepted_ranges(const std::vector<uint64_t>& sorted_messages) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const uint64_t message : sorted_messages) {
    SLUICE_ASSERT(ranges.empty() || message > ranges.back().second, "message numbers are sorted and unique");
    if (!ranges.empty() && message == ranges.back().second + 1) {
      ranges.back().second = message;
    } else {
      ranges.emplace_back(message, message);
    }
  }
  return ranges;
}

std::string make_body(uint64_t octets) {
  SLUICE_ASSERT(octets >= 2, "a body is at least one CRLF");
  static constexpr std::string_view kText =
      "The quick brown fox jumps over the lazy dog; sluice-bench filler text 0123456789.";
  static constexpr uint64_t kLineMax = 78;  // with the CRLF
  std::string body;
  body.reserve(octets);
  uint64_t left = octets;
  while (left > 0) {
    uint64_t line = std::min(left, kLineMax);
    if (left - line == 1) {
      --line;  // never leave a lone octet: every line ends with CRLF
    }
    const uint64_t text = line - 2;
    for (uint64_t i = 0; i < text; ++i) {
      body += kText[i % kText.size()];  // starts with "T": never a leading dot
    }
    body += "\r\n";
    left -= line;
  }
  return body;
}

std::string expand_counter(const std::string& pattern, uint64_t n) {
  std::string out;
  size_t from = 0;
  while (true) {
    const size_t at = pattern.find("{n}", from);
    if (at == std::string::npos) {
      out.append(pattern, from, std::string::npos);
      return out;
    }
    out.append(pattern, from, at - from);
    str_append(&out, n);
    from = at + 3;
  }
}

absl::Status run_send(const SendOptions& options, SendResults& results, double& elapsed_s, std::string& run_id) {
  SendRun run;
  run.options = &options;
  run.run_id = options.run_id.empty() ? absl::StrFormat("%x%x", io::wall_ms(), getpid()) : options.run_id;
  run_id = run.run_id;
  std::vector<Body> bodies;
  for (const SizeChoice& choice : options.sizes) {
    Body body;
    body.wire = make_body(choice.octets);
    body.sum = absl::StrFormat("crc32c:%08x", spool::crc32c(body.wire));
    bodies.push_back(std::move(body));
  }
  const std::string date = rfc5322_date(io::wall_ms());
  const uint32_t threads = std::max<uint32_t>(1, std::min(options.threads, options.sessions));
  std::vector<std::unique_ptr<Worker>> workers;
  for (uint32_t t = 0; t < threads; ++t) {
    const uint32_t sessions = options.sessions / threads + (t < options.sessions % threads ? 1 : 0);
    workers.push_back(std::make_unique<Worker>(&run, t, sessions, &bodies, date));
  }
  std::vector<absl::Status> statuses(threads);
  std::atomic<uint32_t> running{threads};
  run.start_us = io::monotonic_us();
  std::vector<std::thread> pool;
  for (uint32_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      statuses[t] = workers[t]->run();
      uint64_t end = io::monotonic_us();
      uint64_t seen = run.end_us.load();
      while (seen < end && !run.end_us.compare_exchange_weak(seen, end)) {
      }
      running.fetch_sub(1);
    });
  }
  uint64_t last_sent = 0;
  uint64_t last_us = run.start_us;
  uint64_t last_latency_sum = 0;
  uint64_t last_latency_count = 0;
  uint64_t next_progress_us = run.start_us + 1'000'000;
  while (running.load() > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (g_stop_requested.load(std::memory_order_relaxed)) {
      run.stop.store(true);  // no new message; what is in flight finishes, then the summary
    }
    if (options.progress && io::monotonic_us() >= next_progress_us) {
      print_progress(run, last_sent, last_us, last_latency_sum, last_latency_count);
      next_progress_us += 1'000'000;
    }
  }
  for (std::thread& thread : pool) {
    thread.join();
  }
  elapsed_s = static_cast<double>(run.end_us.load() - run.start_us) / 1e6;
  if (options.progress) {
    std::fprintf(stdout, "\r\033[K");
    std::fflush(stdout);
  }
  for (const auto& worker : workers) {
    results.merge(worker->results());
  }
  SLUICE_ASSERT(results.messages_sent == results.messages_accepted + results.messages_deferred + results.messages_rejected,
                "every message started has a result");
  results.finish();
  SLUICE_ASSERT(results.accepted_messages.size() == results.messages_accepted, "each accepted message is listed once");
  for (const absl::Status& status : statuses) {
    if (!status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

std::string summary_text(const SendOptions& options, const SendResults& r, double elapsed_s) {
  std::string out;
  const double rate = elapsed_s > 0 ? static_cast<double>(r.messages_accepted) / elapsed_s : 0;
  str_append(&out, absl::StrFormat("sent %d messages in %.3f s: %.1f msg/s accepted (%.2f MB/s)\n", r.messages_sent,
                                   elapsed_s, rate, elapsed_s > 0 ? static_cast<double>(r.octets_accepted) / elapsed_s / 1e6 : 0));
  str_append(&out, "messages:   accepted ", r.messages_accepted, ", deferred ", r.messages_deferred, ", rejected ",
             r.messages_rejected, "\n");
  str_append(&out, "recipients: accepted ", r.recipients_accepted, ", deferred ", r.recipients_deferred, " (",
             format_counts(r.deferred_by_code), "), rejected ", r.recipients_rejected, " (",
             format_counts(r.rejected_by_code), ")\n");
  str_append(&out, "connections: ", r.connections, " connected, ", r.connect_failures, " failed to connect; errors: ",
             format_counts(r.connection_errors), "\n");
  str_append(&out, absl::StrFormat("%-12s %8s %10s %10s %10s %10s %10s\n", "latency", "count", "p50", "p90", "p99",
                                   "p99.9", "max"));
  for (const NamedHistogram& h : named(r.latency)) {
    if (h.histogram->count() == 0 || (h.name == "queue_delay" && options.rate <= 0)) {
      continue;
    }
    str_append(&out, absl::StrFormat("%-12s %8d %10s %10s %10s %10s %10s\n", h.name, h.histogram->count(),
                                     format_us(h.histogram->quantile(0.5)), format_us(h.histogram->quantile(0.9)),
                                     format_us(h.histogram->quantile(0.99)), format_us(h.histogram->quantile(0.999)),
                                     format_us(h.histogram->max())));
  }
  return out;
}

std::string results_json(const SendOptions& options, const SendResults& r, double elapsed_s, const std::string& run_id) {
  std::string out = "{";
  str_append(&out, "\"run_id\":\"", app::json_escape(run_id), "\",\"options\":{\"targets\":[");
  for (size_t i = 0; i < options.targets.size(); ++i) {
    str_append(&out, i == 0 ? "" : ",", "\"", options.targets[i].to_string(), "\"");
  }
  str_append(&out, "],\"sources\":[");
  for (size_t i = 0; i < options.sources.size(); ++i) {
    str_append(&out, i == 0 ? "" : ",", "\"", options.sources[i].ip_string(), "\"");
  }
  str_append(&out, "],\"sessions\":", options.sessions, ",\"threads\":", options.threads,
             ",\"messages\":", options.messages, ",\"duration_ms\":", options.duration_ms,
             ",\"rate\":", absl::StrFormat("%g", options.rate), ",\"sizes\":[");
  for (size_t i = 0; i < options.sizes.size(); ++i) {
    str_append(&out, i == 0 ? "" : ",", "{\"octets\":", options.sizes[i].octets, ",\"weight\":", options.sizes[i].weight,
               "}");
  }
  str_append(&out, "],\"rcpts\":", options.rcpts, ",\"messages_per_connection\":", options.messages_per_connection,
             ",\"pipelining\":", options.pipelining ? "true" : "false",
             ",\"chunking\":", options.chunking ? "true" : "false", ",\"from\":\"", app::json_escape(options.from),
             "\",\"to\":\"", app::json_escape(options.to), "\"},");
  str_append(&out, absl::StrFormat("\"elapsed_s\":%.6f,\"msg_per_s\":%.3f,", elapsed_s,
                                   elapsed_s > 0 ? static_cast<double>(r.messages_accepted) / elapsed_s : 0.0));
  str_append(&out, "\"messages\":{\"sent\":", r.messages_sent, ",\"accepted\":", r.messages_accepted,
             ",\"deferred\":", r.messages_deferred, ",\"rejected\":", r.messages_rejected, "},");
  str_append(&out, "\"recipients\":{\"accepted\":", r.recipients_accepted, ",\"deferred\":", r.recipients_deferred,
             ",\"rejected\":", r.recipients_rejected, ",");
  append_counts_json(out, "deferred_by_code", r.deferred_by_code);
  out += ",";
  append_counts_json(out, "rejected_by_code", r.rejected_by_code);
  str_append(&out, "},\"octets_accepted\":", r.octets_accepted, ",\"connections\":{\"connected\":", r.connections,
             ",\"connect_failures\":", r.connect_failures, ",");
  append_counts_json(out, "errors", r.connection_errors);
  out += "},\"latency_us\":{";
  bool first = true;
  for (const NamedHistogram& h : named(r.latency)) {
    out += first ? "" : ",";
    append_histogram_json(out, h.name, *h.histogram);
    first = false;
  }
  str_append(&out, "},\"accepted_id_ranges\":{\"", app::json_escape(run_id), "\":[");
  first = true;
  for (const auto& [lo, hi] : accepted_ranges(r.accepted_messages)) {
    str_append(&out, first ? "" : ",", "[", lo, ",", hi, "]");
    first = false;
  }
  out += "]}}\n";
  return out;
}

}  // namespace sluice::bench
