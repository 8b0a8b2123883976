// sluice-bench sink: the option parsing, the receive loop and its counts (see sink.h).
#include "bench/sink/sink.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "bench/sink/faults.h"
#include "bench/sink/ids.h"
#include "bench/sink/verify.h"
#include "bench/common/report.h"
#include "engine/app/http.h"
#include "engine/io/address.h"
#include "engine/io/buffer_ring.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/socket.h"
#include "engine/io/stream.h"
#include "engine/io/strings.h"
#include "engine/io/timer_wheel.h"
#include "engine/smtp/server_session.h"

namespace sluice::bench {
namespace {

using io::CompletionTag;

constexpr uint16_t kBufferGroup = 1;
constexpr uint32_t kBufferCount = 512;
constexpr uint32_t kBufferBytes = 16384;
constexpr uint64_t kWaitUsMax = 200'000;          // the stop flag and the live line are polled
constexpr uint64_t kLiveLineMs = 1000;
constexpr size_t kOutputOctetsMax = 256 << 10;    // replies queued for a client that does not read
constexpr uint64_t kCloseLingerMs = 10'000;       // a closing client that reads nothing is cut off

constexpr std::string_view kGreeting421 = "421 4.3.2 Service not available (sluice-bench sink fault)\r\n";
constexpr std::string_view kRcpt4xx = "451 4.3.0 Recipient deferred (sluice-bench sink fault)\r\n";
constexpr std::string_view kRcpt5xx = "550 5.1.1 Recipient refused (sluice-bench sink fault)\r\n";
constexpr std::string_view kDeferMail =
    "421 4.7.0 Too many messages on this connection, try again later (sluice-bench sink fault)\r\n";
constexpr std::string_view kDeferMinute =
    "421 4.7.0 Too many messages this minute, try again later (sluice-bench sink fault)\r\n";

volatile std::sig_atomic_t g_stop = 0;
void on_stop_signal(int) {
  g_stop = 1;
}

using Counts = SinkCounts;
using CheckCounts = SinkChecks;

struct Listener {
  int fd = -1;
  io::SocketAddress address;  // as bound (port 0 resolved)
  Counts counts;
};

struct FaultCounts {
  uint64_t greeting_421 = 0;
  uint64_t rcpt_4xx = 0;
  uint64_t rcpt_5xx = 0;
  uint64_t dropped_mid_data = 0;
  uint64_t deferred_mail = 0;
  uint64_t deferred_mail_per_minute = 0;
};

// The command line of `sluice-bench sink`.
struct SinkOptions {
  SinkServerOptions server;
  std::string json_path;
  std::string verify_path;
};

struct Connection {
  io::Stream stream;
  std::optional<smtp::ServerSession> session;
  io::TimerNode timer;  // --delay-ms, then the close linger
  uint32_t generation = 0;
  uint32_t listener = 0;
  uint32_t messages = 0;  // acknowledged on this connection
  bool in_use = false;
  bool dirty = false;
  // --delay-ms: the connection waits for its timer, which then greets, reads the next command
  // line, or answers the message (the commit is answered late, as the real spool does).
  bool held = false;
  bool greet_pending = false;
  bool line_pending = false;
  bool commit_pending = false;
  bool peer_closed = false;  // the client half-closed: close once what it sent is answered
  bool data_decided = false;  // this DATA phase was weighed for --drop-mid-data
  bool drop_data = false;     // ...and will be dropped
};

class Sink : public smtp::SessionHost {
 public:
  Sink(const SinkServerOptions& options, const std::atomic<bool>* stop, SinkLive* live)
      : _options(options), _stop(stop), _live_figures(live) {
    const Faults& f = options.faults;
    _settings.hostname = "sluice-bench-sink";
    _settings.offer.pipelining = !f.no_pipelining;
    _settings.offer.eight_bit_mime = !f.no_8bitmime;
    _settings.offer.size = !f.no_size;
    _settings.offer.chunking = !f.no_chunking;
    _settings.offer.ehlo = !f.helo_only;
    // Refusals the sink injects are not the client's errors; its own ones are few.
    _settings.limits.errors_max = 1000;
    if (f.max_size > 0) {
      _settings.limits.message_octets_max = f.max_size;
    }
  }

  absl::Status start();
  void run();
  std::string json() const;
  std::vector<io::SocketAddress> addresses() const;
  SinkResults take_results();  // after run()

  // ---- SessionHost ----
  bool spool_space_low() const override { return false; }
  void on_reject(const smtp::RejectEvent&, const smtp::ClientInfo&) override { ++_rejections; }
  uint64_t now_ms() const override { return _now_ms; }
  smtp::HostVerdict mail_verdict(std::string_view) override;
  smtp::HostVerdict recipient_verdict(std::string_view forward_path) override;

 private:
  Connection& slot(uint32_t index) { return *_slots[index]; }
  void arm_accept(uint32_t listener);
  void dispatch(const io_uring_cqe& cqe);
  void on_accept(const io_uring_cqe& cqe, uint32_t listener);
  std::optional<uint32_t> allocate_slot();
  void on_recv(const io_uring_cqe& cqe, uint32_t index);
  void on_bytes(uint32_t index, std::string_view data);
  void pump(uint32_t index);
  bool feed(uint32_t index, std::string_view input, size_t& consumed);
  void note_data_phase(Connection& c);
  bool on_commit(uint32_t index);
  void drop_connection(uint32_t index);
  void hold(uint32_t index);
  void answer_commit(uint32_t index);
  void begin_close(uint32_t index);
  void close_if_answered(uint32_t index);
  void on_send(const io_uring_cqe& cqe, uint32_t index);
  void on_close(uint32_t index);
  void on_timer(uint32_t index);
  void mark_dirty(uint32_t index);
  void flush_dirty();
  uint64_t wait_us() const;
  void live_line(bool final_line);

  const SinkServerOptions& _options;
  const std::atomic<bool>* _stop;
  SinkLive* _live_figures;
  smtp::ServerSettings _settings;
  std::unique_ptr<io::Ring> _ring;
  std::unique_ptr<io::BufferRing> _buffers;
  std::vector<Listener> _listeners;
  std::vector<std::unique_ptr<Connection>> _slots;
  // After the slots: destroyed first, while the timer nodes in the connections still exist.
  std::unique_ptr<io::TimerWheel> _timers;
  std::vector<uint32_t> _free_slots;
  std::vector<uint32_t> _dirty;
  std::vector<io::TimerNode*> _expired;
  Connection* _current = nullptr;  // the connection whose session is running (for the verdicts)
  uint64_t _now_ms = 0;
  uint64_t _started_ms = 0;
  uint64_t _stopped_ms = 0;
  uint64_t _next_live_ms = 0;
  uint64_t _live_ms = 0;  // when the last live line was written, and the messages then
  uint64_t _live_messages = 0;
  uint64_t _open = 0;
  uint64_t _rejections = 0;
  uint64_t _serial = 0;
  bool _live = false;
  Counts _total;
  FaultCounts _fault_counts;
  MinuteWindow _minute;  // --defer-after-per-minute
  CheckCounts _checks;
  FractionCounter _greeting_faults;
  FractionCounter _data_faults;
  IdSet _received;
  std::vector<std::string> _duplicate_ids;  // one entry per extra arrival
  std::vector<std::string> _corrupt_ids;
  io::LatencyHistogram _arrival_latency_us;
};

absl::Status Sink::start() {
  auto ring = io::Ring::create_for_this_thread(io::RingOptions{1024, 4096, false});
  if (!ring.ok()) {
    return ring.status();
  }
  _ring.reset(*ring);
  auto buffers = io::BufferRing::create(_ring->raw(), kBufferGroup, kBufferCount, kBufferBytes);
  if (!buffers.ok()) {
    return buffers.status();
  }
  _buffers.reset(*buffers);
  _now_ms = io::monotonic_ms();
  _started_ms = _now_ms;
  _timers = std::make_unique<io::TimerWheel>(_now_ms);
  for (const io::SocketAddress& address : _options.listen) {
    auto fd = io::open_listener(address);
    if (!fd.ok()) {
      return absl::Status(fd.status().code(), to_absl(str_cat(address.to_string(), ": ", to_std(fd.status().message()))));
    }
    auto bound = io::local_address(*fd);
    if (!bound.ok()) {
      return bound.status();
    }
    _listeners.push_back(Listener{*fd, *bound, {}});
  }
  for (uint32_t i = 0; i < _listeners.size(); ++i) {
    arm_accept(i);
  }
  if (_options.announce) {
    std::string ready = "sluice-bench sink: listening on";
    for (const Listener& listener : _listeners) {
      str_append(&ready, " ", listener.address.to_string());
    }
    std::fprintf(stderr, "%s\n", ready.c_str());
    std::fflush(stderr);
  }
  _live = _options.live_line && isatty(STDOUT_FILENO) == 1;
  _next_live_ms = _now_ms + kLiveLineMs;
  _live_ms = _now_ms;
  return absl::OkStatus();
}

void Sink::arm_accept(uint32_t listener) {
  io_uring_sqe* sqe = _ring->sqe();
  io_uring_prep_multishot_accept(sqe, _listeners[listener].fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, io::completion_user_data(CompletionTag::accept, listener, 0));
}

std::vector<io::SocketAddress> Sink::addresses() const {
  std::vector<io::SocketAddress> addresses;
  for (const Listener& listener : _listeners) {
    addresses.push_back(listener.address);
  }
  return addresses;
}

void Sink::run() {
  while (!_stop->load(std::memory_order_relaxed)) {
    _now_ms = io::monotonic_ms();
    _expired.clear();
    _timers->advance(_now_ms, [this](io::TimerNode& node) { _expired.push_back(&node); });
    for (io::TimerNode* node : _expired) {
      const io::UserData cookie = io::UserData::decode(node->cookie);
      SLUICE_ASSERT(cookie.index < _slots.size() && slot(cookie.index).generation == cookie.generation,
                    "a timer outlived its slot");
      on_timer(cookie.index);
    }
    if (_live && _now_ms >= _next_live_ms) {
      live_line(false);
      _next_live_ms = _now_ms + kLiveLineMs;
    }
    flush_dirty();
    _ring->submit_wait_and_reap(wait_us(), [this](const io_uring_cqe& cqe) { dispatch(cqe); });
    _buffers->publish();
    flush_dirty();
  }
  _now_ms = io::monotonic_ms();
  _stopped_ms = _now_ms;
  if (_live) {
    live_line(true);
  }
  // Messages not acknowledged yet are not counted: what the JSON says was answered 250.
  for (const Listener& listener : _listeners) {
    close(listener.fd);
  }
}

uint64_t Sink::wait_us() const {
  uint64_t wait = kWaitUsMax;
  if (const std::optional<uint64_t> timer_ms = _timers->next_deadline_ms()) {
    const uint64_t now_us = io::monotonic_us();
    const uint64_t timer_us = *timer_ms * 1000;
    wait = std::min(wait, timer_us > now_us ? timer_us - now_us : 0);
  }
  return wait;
}

void Sink::dispatch(const io_uring_cqe& cqe) {
  const io::UserData data = io::UserData::decode(cqe.user_data);
  switch (io::completion_tag(cqe.user_data)) {
    case CompletionTag::accept:
      on_accept(cqe, data.index);
      return;
    case CompletionTag::stream_recv:
    case CompletionTag::stream_send:
    case CompletionTag::stream_close:
      break;
    default:
      return;  // ignore: nothing else is submitted with a tag that needs an answer
  }
  SLUICE_ASSERT(data.index < _slots.size() && slot(data.index).in_use && slot(data.index).generation == data.generation,
                "CQE for a freed slot");
  switch (io::completion_tag(cqe.user_data)) {
    case CompletionTag::stream_recv:
      on_recv(cqe, data.index);
      return;
    case CompletionTag::stream_send:
      on_send(cqe, data.index);
      return;
    default:
      on_close(data.index);
      return;
  }
}

std::optional<uint32_t> Sink::allocate_slot() {
  if (_free_slots.empty()) {
    if (_slots.size() >= io::UserData::kIndexMax) {
      return std::nullopt;
    }
    _slots.push_back(std::make_unique<Connection>());
    _free_slots.push_back(static_cast<uint32_t>(_slots.size() - 1));
  }
  const uint32_t index = _free_slots.back();
  _free_slots.pop_back();
  Connection& c = slot(index);
  c.in_use = true;
  c.timer.cookie = io::UserData{0, index, c.generation}.encode();
  c.stream.bind(_ring.get(), _buffers.get(), index, c.generation);
  return index;
}

void Sink::on_accept(const io_uring_cqe& cqe, uint32_t listener) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) {
    arm_accept(listener);  // EMFILE and friends included: a benchmark tool may spin a little
  }
  if (cqe.res < 0) {
    return;
  }
  const std::optional<uint32_t> index = allocate_slot();
  if (!index) {
    close(cqe.res);
    return;
  }
  ++_open;
  ++_total.connections;
  ++_listeners[listener].counts.connections;
  Connection& c = slot(*index);
  c.listener = listener;
  c.stream.adopt(cqe.res);
  if (_greeting_faults.hit(_options.faults.greeting_421)) {
    ++_fault_counts.greeting_421;
    c.stream.output().append(kGreeting421);
    begin_close(*index);
    return;
  }
  c.session.emplace(&_settings, this, smtp::ClientInfo{io::peer_address(cqe.res), true, ++_serial});
  if (_options.faults.delay_ms > 0) {
    c.greet_pending = true;
    hold(*index);
    return;
  }
  c.session->greet(c.stream.output());
  mark_dirty(*index);
}

void Sink::on_recv(const io_uring_cqe& cqe, uint32_t index) {
  Connection& c = slot(index);
  switch (c.stream.on_recv(cqe, [&](std::string_view data) { on_bytes(index, data); })) {
    case io::RecvEvent::more:
      return;
    case io::RecvEvent::peer_closed:
      c.peer_closed = true;
      close_if_answered(index);
      return;
    case io::RecvEvent::ended:
    case io::RecvEvent::failed:
      break;
  }
  c.stream.advance_close();
}

// Input goes straight to the session unless some waits already (parked behind a reply delay,
// or replies the client does not read): then it is parked, in order.
void Sink::on_bytes(uint32_t index, std::string_view data) {
  Connection& c = slot(index);
  if (!c.session) {
    return;
  }
  if (!c.stream.parked().empty() || c.held || _options.faults.delay_ms > 0 ||
      c.stream.queued_octets() > kOutputOctetsMax) {
    if (!c.stream.park(data)) {
      c.stream.output().append(smtp::reply::kTooMuchInput);
      begin_close(index);
      return;
    }
    pump(index);
    return;
  }
  while (!data.empty() && !c.stream.closing()) {
    size_t consumed = 0;
    if (!feed(index, data, consumed) || consumed == 0) {
      return;
    }
    data.remove_prefix(consumed);
  }
}

// Feeds parked input while nothing holds it. With --delay-ms each complete command line waits
// for the timer (on_timer feeds it); a message body is read at once, its answer is delayed.
void Sink::pump(uint32_t index) {
  Connection& c = slot(index);
  io::ParkedInput& parked = c.stream.parked();
  while (!c.stream.closing() && !c.held && !parked.empty() && c.stream.queued_octets() <= kOutputOctetsMax) {
    const std::string_view input = parked.view();
    if (_options.faults.delay_ms > 0 && !c.session->in_data_phase() && input.find('\n') != std::string_view::npos) {
      c.line_pending = true;
      hold(index);
      break;
    }
    size_t consumed = 0;
    const bool go_on = feed(index, input, consumed);
    if (!c.in_use || c.stream.closing()) {
      return;
    }
    parked.consume(consumed);
    if (!go_on || consumed == 0) {
      break;
    }
  }
  parked.release_if_large(io::Stream::kIdleBufferCapacity);
  c.stream.resume_reading();
  close_if_answered(index);
}

// After the client's FIN: once nothing it sent waits (a delay, parked input), close.
void Sink::close_if_answered(uint32_t index) {
  Connection& c = slot(index);
  if (c.peer_closed && !c.held && c.stream.parked().empty() && !c.stream.closing()) {
    begin_close(index);
  }
}

// One pass of `input` through the session; false when the connection stops taking input now
// (closing, or its replies are held).
bool Sink::feed(uint32_t index, std::string_view input, size_t& consumed) {
  Connection& c = slot(index);
  if (c.drop_data && c.session->in_data_phase()) {
    drop_connection(index);  // the body has begun to arrive: cut it off in the middle
    return false;
  }
  _current = &c;
  const smtp::SessionStep step = c.session->on_input(input, c.stream.output());
  _current = nullptr;
  consumed = step.consumed;
  note_data_phase(c);
  mark_dirty(index);
  switch (step.action) {
    case smtp::SessionAction::close:
      begin_close(index);
      return false;
    case smtp::SessionAction::commit:
      if (!on_commit(index)) {
        return false;
      }
      break;
    case smtp::SessionAction::none:
      break;
  }
  return true;
}

void Sink::note_data_phase(Connection& c) {
  if (c.session->in_data_phase() && !c.data_decided) {
    c.data_decided = true;
    c.drop_data = _data_faults.hit(_options.faults.drop_mid_data);
  } else if (!c.session->in_data_phase() && !c.session->waiting_for_commit()) {
    c.data_decided = false;
    c.drop_data = false;
  }
}

// The message is complete: counted, checked, and answered 250 at once (nothing is stored).
bool Sink::on_commit(uint32_t index) {
  Connection& c = slot(index);
  smtp::AcceptedMessage message = c.session->take_message();
  if (!c.data_decided) {
    // The whole body came in the read that held DATA (or BDAT LAST): weighed here instead.
    c.drop_data = _data_faults.hit(_options.faults.drop_mid_data);
  }
  const bool drop = c.drop_data;
  c.data_decided = false;
  c.drop_data = false;
  if (drop) {
    drop_connection(index);  // never answered: the client cannot know whether it arrived
    return false;
  }
  for (Counts* counts : {&_total, &_listeners[c.listener].counts}) {
    ++counts->messages;
    counts->recipients += message.recipients.size();
    counts->octets += message.rfc_size;
  }
  const MessageCheck check = check_message(message.body);
  if (check.sent_us > 0) {
    const uint64_t now_us = io::wall_us();  // both ends on this machine's wall clock
    _arrival_latency_us.record(now_us > check.sent_us ? now_us - check.sent_us : 0);
  }
  if (check.result == BodyCheck::no_id) {
    ++_checks.no_id;
  } else {
    const bool first = _received.insert(check.id);
    if (check.result == BodyCheck::corrupt) {
      ++_checks.corrupt;
      _corrupt_ids.emplace_back(check.id);
    }
    if (!first) {
      ++_checks.duplicate;
      _duplicate_ids.emplace_back(check.id);
    } else if (check.result == BodyCheck::intact) {
      ++_checks.intact;
    }
  }
  ++c.messages;
  // Counted at the commit, as the totals are (a --delay-ms answer is late, the arrival is not).
  _live_figures->distinct_ids.store(_received.size(), std::memory_order_relaxed);
  _live_figures->last_arrival_us.store(io::monotonic_us(), std::memory_order_relaxed);
  _live_figures->messages.store(_total.messages, std::memory_order_release);
  if (_options.faults.delay_ms > 0) {
    c.commit_pending = true;
    hold(index);
    return false;
  }
  answer_commit(index);
  return true;
}

void Sink::answer_commit(uint32_t index) {
  Connection& c = slot(index);
  char queue_id[24];
  std::snprintf(queue_id, sizeof(queue_id), "%016llX", static_cast<unsigned long long>(_total.messages));
  c.session->commit_done(true, queue_id, c.stream.output());
  mark_dirty(index);
}

void Sink::drop_connection(uint32_t index) {
  ++_fault_counts.dropped_mid_data;
  Connection& c = slot(index);
  c.held = false;
  _timers->cancel(c.timer);
  c.stream.force_close();
}

smtp::HostVerdict Sink::mail_verdict(std::string_view) {
  const uint32_t limit = _options.faults.defer_after_per_connection;
  if (limit > 0 && _current != nullptr && _current->messages >= limit) {
    ++_fault_counts.deferred_mail;
    return smtp::HostVerdict{kDeferMail, true};
  }
  const uint32_t per_minute = _options.faults.defer_after_per_minute;
  if (per_minute > 0 && _minute.over(per_minute, io::wall_ms())) {
    ++_fault_counts.deferred_mail_per_minute;
    return smtp::HostVerdict{kDeferMinute, true};
  }
  return {};
}

smtp::HostVerdict Sink::recipient_verdict(std::string_view forward_path) {
  switch (recipient_fault(_options.faults, forward_path)) {
    case RecipientFault::permanent:
      ++_fault_counts.rcpt_5xx;
      return smtp::HostVerdict{kRcpt5xx, false};
    case RecipientFault::temporary:
      ++_fault_counts.rcpt_4xx;
      return smtp::HostVerdict{kRcpt4xx, false};
    case RecipientFault::none:
      return {};
  }
  return {};
}

void Sink::hold(uint32_t index) {
  Connection& c = slot(index);
  c.held = true;
  _timers->schedule(c.timer, _now_ms + _options.faults.delay_ms);
}

void Sink::begin_close(uint32_t index) {
  Connection& c = slot(index);
  c.held = false;
  if (!c.stream.closing()) {
    c.stream.begin_close();
    _timers->schedule(c.timer, _now_ms + kCloseLingerMs);
  }
  mark_dirty(index);
}

void Sink::on_timer(uint32_t index) {
  Connection& c = slot(index);
  if (c.stream.closing()) {
    if (!c.stream.shut_down()) {
      c.stream.force_close();  // it does not read its last replies
    }
    return;
  }
  c.held = false;
  if (c.greet_pending) {
    c.greet_pending = false;
    c.session->greet(c.stream.output());
  } else if (c.commit_pending) {
    c.commit_pending = false;
    answer_commit(index);
  } else if (c.line_pending) {
    c.line_pending = false;
    io::ParkedInput& parked = c.stream.parked();
    const std::string_view input = parked.view();
    size_t consumed = 0;
    feed(index, input.substr(0, input.find('\n') + 1), consumed);
    if (c.stream.closing()) {
      return;
    }
    parked.consume(consumed);
  }
  mark_dirty(index);
  pump(index);
}

void Sink::on_send(const io_uring_cqe& cqe, uint32_t index) {
  Connection& c = slot(index);
  if (!c.stream.on_send(cqe.res) || c.stream.output_in_flight()) {
    return;  // failed (the stream is closing) or a short send on its way
  }
  if (c.session && !c.held) {
    pump(index);  // input parked while replies were not read
  }
  c.stream.flush();
}

void Sink::on_close(uint32_t index) {
  Connection& c = slot(index);
  c.stream.on_close();
  SLUICE_ASSERT(c.stream.closed() && c.stream.quiescent(), "slot freed before its last CQE");
  _timers->cancel(c.timer);
  const uint32_t generation = c.generation + 1;
  _slots[index] = std::make_unique<Connection>();
  slot(index).generation = generation;
  _free_slots.push_back(index);
  --_open;
}

void Sink::mark_dirty(uint32_t index) {
  Connection& c = slot(index);
  if (!c.dirty) {
    c.dirty = true;
    _dirty.push_back(index);
  }
}

void Sink::flush_dirty() {
  for (size_t i = 0; i < _dirty.size(); ++i) {
    Connection& c = slot(_dirty[i]);
    c.dirty = false;
    if (c.in_use) {
      c.stream.flush();
    }
  }
  _dirty.clear();
}

// The rate is over the last line's interval (the final line: over the whole run).
void Sink::live_line(bool final_line) {
  const double elapsed_s = static_cast<double>(_now_ms - _started_ms) / 1000.0;
  const double interval_s = static_cast<double>(_now_ms - _live_ms) / 1000.0;
  const double rate = final_line ? (elapsed_s > 0 ? static_cast<double>(_total.messages) / elapsed_s : 0.0)
                                 : (interval_s > 0 ? static_cast<double>(_total.messages - _live_messages) / interval_s : 0.0);
  _live_ms = _now_ms;
  _live_messages = _total.messages;
  std::printf("\r%.0fs conn %llu open %llu msg %llu (%.0f/s) rcpt %llu MiB %.1f intact %llu corrupt %llu dup %llu "
              "no-id %llu%s",
              elapsed_s, static_cast<unsigned long long>(_total.connections), static_cast<unsigned long long>(_open),
              static_cast<unsigned long long>(_total.messages), rate,
              static_cast<unsigned long long>(_total.recipients), static_cast<double>(_total.octets) / (1 << 20),
              static_cast<unsigned long long>(_checks.intact), static_cast<unsigned long long>(_checks.corrupt),
              static_cast<unsigned long long>(_checks.duplicate), static_cast<unsigned long long>(_checks.no_id),
              final_line ? "\n" : "   ");
  std::fflush(stdout);
}

void append_counts(std::string& out, const Counts& counts) {
  str_append(&out, "\"connections\":", counts.connections, ",\"messages\":", counts.messages,
             ",\"recipients\":", counts.recipients, ",\"octets\":", counts.octets);
}

void append_string_list(std::string& out, const std::vector<std::string>& items) {
  out += "[";
  for (size_t i = 0; i < items.size(); ++i) {
    str_append(&out, i == 0 ? "\"" : ",\"", app::json_escape(items[i]), "\"");
  }
  out += "]";
}

std::string Sink::json() const {
  const double elapsed_s = static_cast<double>(_stopped_ms - _started_ms) / 1000.0;
  std::string out = "{";
  str_append(&out, absl::StrFormat("\"elapsed_s\":%.3f,\"msg_per_s\":%.3f,", elapsed_s,
                                   elapsed_s > 0 ? static_cast<double>(_total.messages) / elapsed_s : 0.0));
  append_counts(out, _total);
  str_append(&out, ",\"rejected_commands\":", _rejections, ",\"listeners\":[");
  for (size_t i = 0; i < _listeners.size(); ++i) {
    str_append(&out, i == 0 ? "{" : ",{", "\"address\":\"", _listeners[i].address.to_string(), "\",");
    append_counts(out, _listeners[i].counts);
    out += "}";
  }
  str_append(&out, "],\"check\":{\"intact\":", _checks.intact, ",\"corrupt\":", _checks.corrupt,
             ",\"duplicate\":", _checks.duplicate, ",\"no_id\":", _checks.no_id, "},");
  str_append(&out, "\"faults\":{\"greeting_421\":", _fault_counts.greeting_421, ",\"rcpt_4xx\":", _fault_counts.rcpt_4xx,
             ",\"rcpt_5xx\":", _fault_counts.rcpt_5xx, ",\"dropped_mid_data\":", _fault_counts.dropped_mid_data,
             ",\"deferred_mail\":", _fault_counts.deferred_mail,
             ",\"deferred_mail_per_minute\":", _fault_counts.deferred_mail_per_minute, "},");
  out += "\"received_ids\":{\"ranges\":";
  _received.append_ranges_json(out);
  out += ",\"other\":";
  _received.append_others_json(out);
  out += "},\"duplicate_ids\":";
  append_string_list(out, _duplicate_ids);
  out += ",\"corrupt_ids\":";
  append_string_list(out, _corrupt_ids);
  out += ",";
  append_histogram_json(out, "arrival_latency_us", _arrival_latency_us);
  out += "}\n";
  return out;
}

SinkResults Sink::take_results() {
  SinkResults results;
  results.elapsed_s = static_cast<double>(_stopped_ms - _started_ms) / 1000.0;
  results.total = _total;
  results.checks = _checks;
  for (const Listener& listener : _listeners) {
    results.listeners.push_back(listener.counts);
  }
  results.json = json();
  results.received = std::move(_received);
  results.duplicate_ids = std::move(_duplicate_ids);
  results.corrupt_ids = std::move(_corrupt_ids);
  results.arrival_latency_us = std::move(_arrival_latency_us);
  return results;
}

// ---- options ----------------------------------------------------------------------------
constexpr std::string_view kUsage =
    "usage: sluice-bench sink --listen HOST:PORT [--listen HOST:PORT ...] [--json FILE] [faults]\n"
    "       sluice-bench sink --verify SENDER_JSON --json SINK_JSON\n"
    "\n"
    "Receives mail on every --listen address (port 0: any; the addresses are printed on stderr),\n"
    "answers 250 to every message without storing it, and counts messages, recipients and octets;\n"
    "each X-Sluice-Bench-Id / X-Sluice-Bench-Sum is checked (intact, corrupt, duplicate, no id).\n"
    "Runs until SIGINT or SIGTERM, then writes --json FILE. A live line on stdout if it is a TTY.\n"
    "\n"
    "--verify: compares the sink's JSON with the sender's ({\"accepted_ids\": [\"RUN-N\", ...]} and/or\n"
    "{\"accepted_id_ranges\": {\"RUN\": [[lo, hi], ...]}}): exit 1 if any is missing, duplicated or corrupt.\n"
    "\n"
    "Faults (also in --faults FILE.toml, same keys: rcpt_5xx = 0.1, no_pipelining = true):\n"
    "  --rcpt-4xx F, --rcpt-5xx F     that fraction of recipient addresses (by a hash) gets 451 / 550\n"
    "  --rcpt-4xx-pattern GLOB, --rcpt-5xx-pattern GLOB   matching recipients (fnmatch, any case) too\n"
    "  --greeting-421 F               that fraction of connections is greeted 421 and closed\n"
    "  --drop-mid-data F              that fraction of DATA phases: connection closed before the reply\n"
    "  --delay-ms N                   every reply is sent N ms after its command (tarpit)\n"
    "  --defer-after-per-connection N after N messages on a connection, MAIL gets 421 and the close\n"
    "  --defer-after-per-minute N     after N messages in a wall-clock minute (all connections), the same\n"
    "  --no-pipelining --no-8bitmime --no-size --no-chunking   not offered in EHLO\n"
    "  --helo-only                    EHLO gets 502: HELO only\n"
    "  --max-size N                   SIZE offers N octets; a larger message gets 552 5.3.4\n";

int usage_error(std::string_view message) {
  std::fprintf(stderr, "sluice-bench sink: %.*s\n%.*s", static_cast<int>(message.size()), message.data(),
               static_cast<int>(kUsage.size()), kUsage.data());
  return 2;
}

// The options in order; --faults FILE is applied where it stands (later options override it).
absl::Status parse_options(int argc, char** argv, SinkOptions& options) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (!arg.starts_with("--")) {
      return absl::InvalidArgumentError(to_absl(str_cat("unexpected argument \"", arg, "\"")));
    }
    arg.remove_prefix(2);
    std::string_view value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    const bool flag = is_fault_flag(arg);
    if (!flag && !has_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(to_absl(str_cat("--", arg, " needs a value")));
      }
      value = argv[++i];
    }
    if (arg == "listen") {
      auto address = io::parse_host_port(value);
      if (!address.ok()) {
        return address.status();
      }
      options.server.listen.push_back(*address);
    } else if (arg == "json") {
      options.json_path.assign(value);
    } else if (arg == "verify") {
      options.verify_path.assign(value);
    } else if (arg == "faults") {
      const std::string path(value);
      if (absl::Status status = load_faults_toml(options.server.faults, path.c_str()); !status.ok()) {
        return status;
      }
    } else if (is_fault_key(arg)) {
      if (absl::Status status = set_fault(options.server.faults, arg, flag && !has_value ? "true" : value); !status.ok()) {
        return status;
      }
    } else {
      return absl::InvalidArgumentError(to_absl(str_cat("unknown option --", arg)));
    }
  }
  return absl::OkStatus();
}

bool write_file(const std::string& path, std::string_view text) {
  FILE* file = std::fopen(path.c_str(), "w");
  if (file == nullptr) {
    return false;
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  return std::fclose(file) == 0 && written;
}

}  // namespace

SinkServer::SinkServer(SinkServerOptions options) : _options(std::move(options)) {}

SinkServer::~SinkServer() { stop(); }

// The Sink lives and dies on this thread: its ring is SINGLE_ISSUER, and the buffer ring is
// unregistered by the thread that registered it.
void SinkServer::thread_main(std::promise<absl::Status> started) {
  Sink sink(_options, &_stop, &_live);
  absl::Status status = sink.start();
  if (status.ok()) {
    _addresses = sink.addresses();
  }
  const bool ok = status.ok();
  started.set_value(std::move(status));
  if (!ok) {
    return;
  }
  sink.run();
  _results = sink.take_results();
}

absl::Status SinkServer::start() {
  SLUICE_ASSERT(!_thread.joinable(), "SinkServer started twice");
  std::promise<absl::Status> started;
  std::future<absl::Status> status = started.get_future();
  _thread = std::thread([this, promise = std::move(started)]() mutable { thread_main(std::move(promise)); });
  absl::Status result = status.get();
  if (!result.ok()) {
    _thread.join();
  }
  return result;
}

void SinkServer::stop() {
  _stop.store(true);
  if (_thread.joinable()) {
    _thread.join();
  }
}

int run_sink(int argc, char** argv) {
  SinkOptions options;
  if (argc > 1 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
    std::fwrite(kUsage.data(), 1, kUsage.size(), stdout);
    return 0;
  }
  if (absl::Status status = parse_options(argc, argv, options); !status.ok()) {
    return usage_error(to_std(status.message()));
  }
  if (!options.verify_path.empty()) {
    if (options.json_path.empty()) {
      return usage_error("--verify needs --json SINK_JSON (the sink's result file)");
    }
    return run_verify(options.verify_path, options.json_path);
  }
  if (options.server.listen.empty()) {
    return usage_error("at least one --listen HOST:PORT");
  }
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
  options.server.announce = true;
  options.server.live_line = true;
  SinkServer sink(options.server);
  if (absl::Status status = sink.start(); !status.ok()) {
    std::fprintf(stderr, "sluice-bench sink: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  // The signal may land on either thread; the handler only sets the flag polled here.
  while (g_stop == 0) {
    usleep(50'000);
  }
  sink.stop();
  if (!options.json_path.empty() && !write_file(options.json_path, sink.results().json)) {
    std::fprintf(stderr, "sluice-bench sink: cannot write %s: %s\n", options.json_path.c_str(), std::strerror(errno));
    return 1;
  }
  return 0;
}

}  // namespace sluice::bench
