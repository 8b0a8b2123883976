// Inbound connections on a shard: accept (and refusals), the PROXY header, the SMTP server
// session on each connection's stream, input backpressure and the body budget, timeouts, and
// the hand-over of finished messages to the spool with the answer once it is durable (never
// "250 queued" before the covering fdatasync completed).
#include <sys/socket.h>

#include "engine/app/shard_internal.h"

namespace sluice::app {

// The session hands DSN parameters to the spool as they are on disk.
static_assert(static_cast<uint8_t>(smtp::DsnRet::full) == static_cast<uint8_t>(spool::DsnRet::full) &&
              static_cast<uint8_t>(smtp::DsnRet::hdrs) == static_cast<uint8_t>(spool::DsnRet::hdrs));
static_assert(smtp::kNotifyNever == spool::kNotifyNever && smtp::kNotifySuccess == spool::kNotifySuccess &&
              smtp::kNotifyFailure == spool::kNotifyFailure && smtp::kNotifyDelay == spool::kNotifyDelay);

using io::completion_user_data;
using io::CompletionTag;

// One line per refusal the session reports: who, in which transaction, what, and the reply.
void Shard::Impl::on_reject(const smtp::RejectEvent& event, const smtp::ClientInfo& client) {
  shard->_metrics.reject(event.reason);
  if (!event.log) {
    return;
  }
  std::string line =
      str_cat("event=rejected ", session_tag(client.session_serial), " reason=", smtp::reject_reason_name(event.reason),
              " client=", client.address.ip_string());
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
void Shard::Impl::log_rejection(const Connection& c, Rejection reason, std::string_view reply, std::string_view extra) {
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
std::string Shard::Impl::transaction_fields(const Connection& c, const smtp::AcceptedMessage& message) const {
  std::string fields = str_cat(session_tag(c.serial), " client=", c.peer.ip_string());
  append_log_field(fields, "helo", message.helo);
  append_log_field(fields, "from", str_cat("<", message.sender, ">"));
  append_log_recipients(fields, message.recipients);
  str_append(&fields, " size=", message.rfc_size);
  return fields;
}

// ---- slots ------------------------------------------------------------------------------
std::optional<uint32_t> Shard::Impl::allocate_slot() {
  if (free_slots.empty()) {
    if (slots_used >= kInboundSlotsMax) {
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
  connection.timer.cookie = TimerCookie{TimerKind::session, index, connection.generation}.encode();
  connection.stream.bind(ring.get(), buffers.get(), index, connection.generation);
  return index;
}

void Shard::Impl::free_slot(uint32_t index) {
  Connection& c = slot(index);
  SLUICE_ASSERT(c.in_use && c.stream.closed() && c.stream.quiescent(), "slot freed before its last CQE");
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
void Shard::Impl::refuse(int fd, std::string_view reply) {
  // The reply text is static; HARDLINK makes the close run even if the send fails.
  auto [send, close] = ring->linked_pair();
  io_uring_prep_send(send, fd, reply.data(), reply.size(), MSG_NOSIGNAL);
  send->flags |= IOSQE_IO_HARDLINK;
  io_uring_sqe_set_data64(send, completion_user_data(CompletionTag::ignore, 0, 0));
  io_uring_prep_close(close, fd);
  io_uring_sqe_set_data64(close, completion_user_data(CompletionTag::ignore, 0, 0));
}

void Shard::Impl::on_accept(const io_uring_cqe& cqe, uint32_t listener) {
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
  c.started_ms = loop_now_ms;
  c.serial = ++next_serial;
  c.peer = io::peer_address(fd);
  c.stream.adopt(fd);
  if (context->proxy_trusted.contains(c.peer)) {
    c.awaiting_proxy = true;
    timers->schedule(c.timer, loop_now_ms + context->proxy_timeout_ms);
    return;
  }
  start_session(*index);
}

void Shard::Impl::start_session(uint32_t index) {
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
      c.stream.output().append(reply);
      c.end_reason = "refused";
      begin_close(index);
      return;
    }
    c.counted_as_client = true;
  }
  c.session.emplace(&context->settings, this, smtp::ClientInfo{c.peer, relay_allowed, c.serial});
  c.session->greet(c.stream.output());
  mark_dirty(index);
  rearm_timer(index);
}

// ---- receive ----------------------------------------------------------------------------
void Shard::Impl::on_recv(const io_uring_cqe& cqe, uint32_t index) {
  Connection& c = slot(index);
  const io::RecvEvent event = c.stream.on_recv(cqe, [&](std::string_view data) { on_bytes(index, data); });
  switch (event) {
    case io::RecvEvent::more:
      return;
    case io::RecvEvent::peer_closed:
      // The client half-closed (SHUT_WR): it may still read. Answer what it sent, then close.
      c.end_reason = "client_closed";
      resume_pending(index);
      finish_if_read_closed(index);
      return;
    case io::RecvEvent::ended:
      break;
    case io::RecvEvent::failed:
      if (c.stream.last_error() < 0 && c.stream.last_error() != -ECANCELED) {
        log.line(str_cat("event=recv_error client=", c.peer.ip_string(), " error=", -c.stream.last_error()));
      }
      c.end_reason = "client_gone";
      break;
  }
  c.stream.advance_close();
}

// After the client's EOF: once nothing it sent is still being processed, close (after the
// replies are sent).
void Shard::Impl::finish_if_read_closed(uint32_t index) {
  Connection& c = slot(index);
  if (!c.stream.peer_closed() || c.stream.closing()) {
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

void Shard::Impl::on_bytes(uint32_t index, std::string_view data) {
  Connection& c = slot(index);
  if (c.awaiting_proxy) {
    on_proxy_bytes(index, data);
    return;
  }
  if (!c.session) {
    return;
  }
  // Backpressure: while input waits (a commit running, or replies the client does not read),
  // it is parked; the stream stops the recv above its high watermark, so TCP's window holds
  // the client back instead of our memory. resume_pending() starts it again.
  if (!c.stream.parked().empty() || c.session->waiting_for_commit() || c.stream.queued_octets() > kOutputOctetsMax) {
    if (!c.stream.park(data)) {
      log_rejection(c, Rejection::input_overflow, smtp::reply::kTooMuchInput);
      c.stream.output().append(smtp::reply::kTooMuchInput);
      c.end_reason = "input_overflow";
      begin_close(index);
      return;
    }
    sync_body(index);
    return;
  }
  if (!admit_body_input(index, data.size())) {
    if (!c.stream.closing()) {
      c.stream.parked().append(data);  // read when the budget frees
      sync_body(index);
    }
    return;
  }
  // A recv buffer is at most one slice: its replies are bounded without slicing here.
  run_session(index, data, false);
  rearm_timer(index);
}

// Feeds input to the session. `data` is either new input (nothing parked) or the front of
// the parked input (from_parked); what the session does not take stays parked, in order.
void Shard::Impl::run_session(uint32_t index, std::string_view data, bool from_parked) {
  Connection& c = slot(index);
  const smtp::SessionStep step = c.session->on_input(data, c.stream.output());
  update_deadlines(index);
  mark_dirty(index);
  // Park (or un-park) before acting: commit_message can answer at once and come back into
  // resume_pending, which must find the input in order.
  if (from_parked) {
    c.stream.parked().consume(step.consumed);
  } else if (step.action != smtp::SessionAction::close && step.consumed < data.size()) {
    // A rest of at most one recv buffer: parked whatever the watermarks (never refused).
    c.stream.parked().append(data.substr(step.consumed));
    if (c.stream.parked().size() >= io::Stream::kParkedHighOctets) {
      c.stream.pause_reading();
    }
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
// slices are views into the parked input: nothing is copied per slice.
void Shard::Impl::resume_pending(uint32_t index) {
  Connection& c = slot(index);
  io::ParkedInput& parked = c.stream.parked();
  while (!c.stream.closing() && c.session && !c.session->waiting_for_commit() && !parked.empty() &&
         c.stream.queued_octets() <= kOutputOctetsMax) {
    const size_t before = parked.size();
    const std::string_view input = parked.view();
    const size_t slice = std::min(input.size(), kInputSliceOctets);
    if (!admit_body_input(index, slice)) {
      break;  // waits for the body budget (or was closed)
    }
    run_session(index, input.substr(0, slice), true);
    if (parked.size() >= before) {
      break;  // no progress: wait for more input
    }
  }
  parked.release_if_large(kIdleBufferCapacity);
  c.stream.resume_reading(c.budget_paused);
}

// ---- message bodies in memory -----------------------------------------------------------
// The oldest body in memory (BodyBudget's head), or null when none is held.
const Connection* Shard::Impl::body_head() {
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
bool Shard::Impl::admit_body_input(uint32_t index, size_t octets) {
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
    c.stream.output().append(smtp::reply::kBodyMemoryExceededClosing);
    begin_close(index);
    return false;
  }
  if (!c.budget_paused) {
    c.budget_paused = true;
    c.budget_paused_since_ms = loop_now_ms;
    budget_waiters.push_back(BodyHolder{index, c.generation, 0});
  }
  c.stream.pause_reading();
  return false;
}

// What a session holds against the budget: its body buffers and, while it has a transaction
// open, the input parked for it (which becomes body): input that arrived after it was paused
// counts too, so the others are held back instead of the total creeping past the budget.
uint64_t Shard::Impl::body_octets_of(const Connection& c) const {
  if (!c.session || !(c.session->transaction_open() || c.session->waiting_for_commit())) {
    return 0;  // no body: what an idle session keeps (a small buffer) is not a body in flight
  }
  return c.session->body_memory_octets() + (c.session->transaction_open() ? c.stream.parked().size() : 0);
}

// Brings the budget up to date with what the session holds (after input, parking, a take).
void Shard::Impl::sync_body(uint32_t index) {
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

void Shard::Impl::compact_bodies() {
  std::erase_if(bodies, [this](const BodyHolder& holder) {
    const Connection& c = slot(holder.index);
    return !c.in_use || c.generation != holder.generation || c.body_seq != holder.seq;
  });
}

// After the budget freed: sessions paused for it go on, oldest first, as far as it allows
// (each one that still may not grow waits again, at the back).
void Shard::Impl::wake_budget_waiters() {
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
void Shard::Impl::on_proxy_bytes(uint32_t index, std::string_view data) {
  Connection& c = slot(index);
  io::ParkedInput& parked = c.stream.parked();
  parked.append(data);
  const smtp::ProxyParseResult parsed = smtp::parse_proxy_header(parked.view());
  if (parsed.status == smtp::ProxyParseStatus::need_more) {
    return;
  }
  if (parsed.status == smtp::ProxyParseStatus::invalid) {
    log_rejection(c, Rejection::proxy_invalid, "(closed without a reply)");
    parked.clear();
    begin_close(index);
    return;
  }
  c.awaiting_proxy = false;
  if (!parsed.use_socket_address) {
    c.peer = parsed.source.unmapped();
  }
  const bool early = parked.size() > parsed.header_octets;
  parked.clear();
  if (early) {
    // The client spoke before our greeting: RFC 5321 4.3.1 synchronization error.
    log_rejection(c, Rejection::early_talker, smtp::reply::kEarlyTalker);
    c.stream.output().append(smtp::reply::kEarlyTalker);
    mark_dirty(index);
    begin_close(index);
    return;
  }
  timers->cancel(c.timer);
  start_session(index);
}

// ---- send and close ---------------------------------------------------------------------
void Shard::Impl::mark_dirty(uint32_t index) {
  Connection& c = slot(index);
  if (!c.dirty) {
    c.dirty = true;
    dirty.push_back(index);
  }
}

void Shard::Impl::on_send(const io_uring_cqe& cqe, uint32_t index) {
  Connection& c = slot(index);
  const bool was_closing = c.stream.closing();
  if (!c.stream.on_send(cqe.res)) {
    if (!was_closing) {  // else it failed because we shut the socket down ourselves
      c.end_reason = cqe.res == -EPIPE || cqe.res == -ECONNRESET ? "client_reset" : "send_error";
    }
    return;
  }
  if (c.stream.output_in_flight()) {
    return;  // a short send: the rest is on its way
  }
  resume_pending(index);
  c.stream.flush();
}

// We read nothing more (the stream stops the recv now rather than draining a client that
// keeps sending). The last replies get kCloseLingerMs to leave; a client that does not read is
// cut off then.
void Shard::Impl::begin_close(uint32_t index) {
  Connection& c = slot(index);
  if (!c.stream.closing()) {
    c.stream.begin_close();
    timers->cancel(c.timer);
    timers->schedule(c.timer, loop_now_ms + kCloseLingerMs);
  }
  mark_dirty(index);
}

void Shard::Impl::on_close(uint32_t index) {
  slot(index).stream.on_close();
  free_slot(index);
}

// ---- timers -----------------------------------------------------------------------------
// Besides the idle timeouts (command_timeout / data_timeout since the last input), a unit of
// input in progress has a deadline from its first octet, however the client paces its octets:
// a command line must end within command_timeout, and a message body (DATA to its end, or the
// BDAT chunks of a transaction up to LAST) within data_phase_timeout. Called after every pass
// of input through the session.
void Shard::Impl::update_deadlines(uint32_t index) {
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

void Shard::Impl::rearm_timer(uint32_t index) {
  Connection& c = slot(index);
  if (!c.session || c.stream.closing()) {
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

std::string_view Shard::Impl::expired_deadline(const Connection& c) const {
  if (c.data_deadline_ms != 0 && loop_now_ms >= c.data_deadline_ms) {
    return "data_phase";
  }
  if (c.line_deadline_ms != 0 && loop_now_ms >= c.line_deadline_ms) {
    return "command_line";
  }
  return "idle";
}

void Shard::Impl::on_timer(uint32_t index) {
  Connection& c = slot(index);
  SLUICE_ASSERT(c.in_use, "a freed slot's timer is cancelled");
  if (c.stream.shut_down()) {
    return;  // the close is on its way
  }
  if (c.stream.closing()) {
    log.line(
        str_cat("event=close_forced ", session_tag(c.serial), " client=", c.peer.ip_string(), " reason=not_reading"));
    c.end_reason = "close_forced";
    c.stream.force_close();
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
    c.session->on_timeout(c.stream.output());
  }
  c.end_reason = "timeout";
  begin_close(index);
}

// ---- spool ------------------------------------------------------------------------------
void Shard::Impl::commit_message(uint32_t index) {
  Connection& c = slot(index);
  if (!waiting_for_space.empty() || !spool_has_room_for(c)) {
    waiting_for_space.push_back(WaitingForSpace{index, c.generation, loop_now_ms});
    return;
  }
  store_message(index);
}

bool Shard::Impl::spool_has_room_for(const Connection& c) const {
  return shard->_spool->has_room_for(c.session->message_octets() + kTraceOctetsMax, c.session->envelope_octets());
}

// Gives a session the spool's answer for its message (250 queued, or 451) and lets it go on
// with whatever the client pipelined meanwhile. Every commit outcome goes through here.
void Shard::Impl::answer_commit(uint32_t index, bool stored, std::string_view queue_id) {
  Connection& c = slot(index);
  c.session->commit_done(stored, queue_id, c.stream.output());
  sync_body(index);  // no longer committing: it holds no body, and is no longer the oldest holder
  mark_dirty(index);
  if (draining && !c.session->transaction_open()) {
    c.stream.output().append(smtp::reply::kShuttingDown);
    begin_close(index);
  }
  resume_pending(index);
  finish_if_read_closed(index);
}

void Shard::Impl::retry_waiting_for_space() {
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

void Shard::Impl::store_message(uint32_t index) {
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
void Shard::Impl::log_transaction(std::string_view queue_id, std::string_view fields, uint64_t started_ms,
                                  uint64_t commit_us, bool stored, std::string_view error, bool client_present) {
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

// Every spool completion, from the ring or from the test seam, comes through here.
void Shard::Impl::on_spool_result(uint64_t op_id, int32_t result) {
  completed.clear();
  shard->_spool->on_io_complete(op_id, result, completed);
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
      delivery_message_stored(done.queue_id);
    }
    if (!client_present) {
      continue;  // the client left before the answer; the message is stored (if ok) all the same
    }
    answer_commit(owner.index, done.status.ok(), done.queue_id);
  }
}

}  // namespace sluice::app
