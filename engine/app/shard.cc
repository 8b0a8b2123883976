// The shard loop: timers, the drain, control requests from other threads, the spool's I/O on
// the ring, and the dispatch of every completion by its tag. The inbound connections and their
// SMTP sessions are in inbound.cc; both share shard_internal.h.
// It never blocks: every socket and file operation goes through its ring, and the only wait is
// the ring wait, bounded by the next timer or commit deadline.
#include <sched.h>
#include <unistd.h>

#include "engine/app/shard_internal.h"

namespace sluice::app {

using io::completion_user_data;
using io::CompletionTag;

// ---- set-up -----------------------------------------------------------------------------
bool Shard::Impl::start() {
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
  start_delivery();
  return true;
}

void Shard::Impl::arm_accept(uint32_t listener) {
  io_uring_sqe* sqe = ring->sqe();
  io_uring_prep_multishot_accept(sqe, listeners[listener], nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, completion_user_data(CompletionTag::accept, listener, 0));
}

void Shard::Impl::submit_spool_io() {
  io_requests.clear();
  shard->_spool->collect_io(io::monotonic_us(), io_requests);
  io_uring_sqe* linked_next = nullptr;  // the second entry of a linked pair, taken with the first
  for (const spool::IoRequest& request : io_requests) {
    if (context->spool_io != nullptr) {
      context->spool_io->submit(request);
      continue;
    }
    io_uring_sqe* sqe = linked_next;
    linked_next = nullptr;
    if (sqe == nullptr && request.link_next) {
      std::tie(sqe, linked_next) = ring->linked_pair();  // never split across two submits
    } else if (sqe == nullptr) {
      sqe = ring->sqe();
    }
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
    // The spool's op ids fit in 56 bits: the tag takes the top octet.
    SLUICE_ASSERT(request.op_id < (uint64_t{1} << 56));
    io_uring_sqe_set_data64(sqe, (uint64_t{static_cast<uint8_t>(CompletionTag::spool)} << 56) | request.op_id);
    if (request.link_next) {
      sqe->flags |= IOSQE_IO_LINK;
    }
  }
  SLUICE_ASSERT(linked_next == nullptr, "a linked spool request is followed by the one it links to");
}

// ---- control and drain ------------------------------------------------------------------
void Shard::Impl::run_control_requests() {
  ControlRequest* request = nullptr;
  while (shard->_control.try_pop(request)) {
    request->run(*shard);
    delete request;  // posted by another thread, owned by us from then on
  }
}

void Shard::Impl::start_drain() {
  draining = true;
  drain_deadline_ms = loop_now_ms + context->drain_timeout_ms;
  log.line(str_cat("event=drain shard=", shard->_index, " sessions=", open_connections,
                   " outbound=", outbound_open));
  // Deliveries in flight finish; the rest stays in the spool for the next start.
  scheduler->drop_all();
  outbound_drain();
  run_scheduler();
  if (context->shards_draining != nullptr) {
    // After this no job crosses to another shard (hand_off): see the exit condition.
    context->shards_draining->fetch_add(1, std::memory_order_seq_cst);
  }
  // Sessions between transactions are told now; those mid-transaction finish it first.
  for (uint32_t index = 0; index < slots_used; ++index) {
    Connection& c = slot(index);
    if (c.in_use && !c.stream.closing() && c.session && !c.session->transaction_open() && !c.session->in_data_phase() &&
        !c.session->waiting_for_commit()) {
      c.stream.output().append(smtp::reply::kShuttingDown);
      begin_close(index);
    } else if (c.in_use && !c.stream.closing() && !c.session) {
      begin_close(index);
    }
  }
}

void Shard::Impl::force_close_all() {
  for (uint32_t index = 0; index < slots_used; ++index) {
    Connection& c = slot(index);
    if (c.in_use && !c.stream.closing()) {
      if (c.session && !c.session->waiting_for_commit()) {
        c.stream.output().append(smtp::reply::kShuttingDown);
      }
      begin_close(index);
    }
  }
}

void Shard::Impl::cancel_accepts() {
  accepts_cancelled = true;
  for (uint32_t i = 0; i < listeners.size(); ++i) {
    io_uring_sqe* sqe = ring->sqe();
    io_uring_prep_cancel64(sqe, completion_user_data(CompletionTag::accept, i, 0), IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, completion_user_data(CompletionTag::ignore, 0, 0));
  }
}

// ---- the loop ---------------------------------------------------------------------------
// A failed submit is retried by the ring itself (its backlog); the operator sees it here, at
// most once per kSubmitErrorLogMs, with the count and the errno.
void Shard::Impl::log_submit_errors() {
  const uint64_t errors = ring->submit_errors();
  if (errors == submit_errors_logged || loop_now_ms < submit_error_logged_ms + kSubmitErrorLogMs) {
    return;
  }
  log.line(str_cat("event=ring_submit_error errno=", ring->last_submit_error(),
                   " count=", errors - submit_errors_logged, " backlog=", ring->backlog()));
  submit_errors_logged = errors;
  submit_error_logged_ms = loop_now_ms;
}

void Shard::Impl::dispatch(const io_uring_cqe& cqe) {
  const io::UserData data = io::UserData::decode(cqe.user_data);
  const CompletionTag tag = io::completion_tag(cqe.user_data);
  switch (tag) {
    case CompletionTag::accept:
      on_accept(cqe, data.index);
      return;
    case CompletionTag::spool:
      on_spool(cqe);
      return;
    case CompletionTag::doorbell:
      run_control_requests();
      return;
    case CompletionTag::log:
      log.on_write_done(cqe.res);
      return;
    case CompletionTag::dns_poll:
      on_dns_poll(cqe);
      return;
    case CompletionTag::bounce_read:
      on_bounce_read(cqe);
      return;
    case CompletionTag::ignore:
      return;
    case CompletionTag::stream_recv:
    case CompletionTag::stream_send:
    case CompletionTag::stream_read:
    case CompletionTag::stream_connect:
    case CompletionTag::stream_close:
      break;
  }
  // A slot is freed only on its close CQE, and the close is issued only after the final CQE
  // of its recv and its send: no CQE can arrive for a freed or reused slot.
  if (data.index >= kOutboundIndexBase) {
    const uint32_t index = data.index - kOutboundIndexBase;
    SLUICE_ASSERT(index < outbound_used && outbound(index).in_use && outbound(index).generation == data.generation,
                  "CQE for a freed outbound slot");
    outbound_dispatch(cqe, tag, index);
    return;
  }
  SLUICE_ASSERT(data.index < slots_used && slot(data.index).in_use && slot(data.index).generation == data.generation,
                "CQE for a freed slot");
  switch (tag) {
    case CompletionTag::stream_recv:
      on_recv(cqe, data.index);
      return;
    case CompletionTag::stream_send:
      on_send(cqe, data.index);
      return;
    case CompletionTag::stream_close:
      on_close(data.index);
      return;
    default:
      // Inbound streams never connect nor send file ranges.
      SLUICE_ASSERT(false, "unexpected completion tag for an inbound connection");
  }
}

void Shard::Impl::flush_dirty() {
  // Flushing can mark more connections dirty (resume_pending); take the list as it grows.
  for (size_t i = 0; i < dirty.size(); ++i) {
    const uint32_t index = dirty[i];
    Connection& c = slot(index);
    c.dirty = false;
    if (c.in_use) {
      c.stream.flush();
    }
  }
  dirty.clear();
}

// How long the ring may sleep: until the next timer or paced commit, at most kIdleWaitUsMax
// when nothing is pending (an idle relay should not wake 100 times a second), and at most
// kLoopWaitUsMax while something is polled rather than woken (drain, space, accept retry).
uint64_t Shard::Impl::wait_us() const {
  if (scheduler_pending) {
    return 0;  // a run asked for by something the last run did itself (a job refused at once)
  }
  const bool polling = draining || !waiting_for_space.empty() || !accepts_to_rearm.empty() || budget_freed;
  uint64_t wait = polling ? kLoopWaitUsMax : kIdleWaitUsMax;
  if (scheduler_deadline_ms != 0) {
    const uint64_t wall = io::wall_ms();
    wait = std::min(wait, scheduler_deadline_ms > wall ? (scheduler_deadline_ms - wall) * 1000 : 0);
  }
  if (dns_deadline_ms != 0) {
    const uint64_t now_ms = io::monotonic_ms();
    wait = std::min(wait, dns_deadline_ms > now_ms ? (dns_deadline_ms - now_ms) * 1000 : 0);
  }
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

void Shard::Impl::loop() {
  while (true) {
    loop_now_ms = io::monotonic_us() / 1000;
    expired.clear();
    timers->advance(loop_now_ms, [this](io::TimerNode& node) { expired.push_back(&node); });
    for (io::TimerNode* node : expired) {
      const TimerCookie cookie = TimerCookie::decode(node->cookie);
      if (cookie.kind == TimerKind::outbound) {
        SLUICE_ASSERT(cookie.generation == outbound(cookie.index).generation, "a timer outlived its slot");
        outbound_on_timer(cookie.index);
        continue;
      }
      SLUICE_ASSERT(cookie.kind == TimerKind::session && cookie.generation == slot(cookie.index).generation,
                    "a timer outlived its slot");
      on_timer(cookie.index);
    }
    if (scheduler_deadline_ms != 0 && io::wall_ms() >= scheduler_deadline_ms) {
      run_scheduler();
    }
    if (dns_deadline_ms != 0 && loop_now_ms >= dns_deadline_ms) {
      dns->on_tick(loop_now_ms);
      run_resolver();
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
        for (uint32_t index = 0; index < outbound_used; ++index) {
          OutboundConnection& c = outbound(index);
          if (c.in_use && c.stream.state() != io::StreamState::idle && c.stream.state() < io::StreamState::close_sent) {
            c.stream.force_close();
          }
        }
        for (uint32_t index = 0; index < slots_used; ++index) {
          Connection& c = slot(index);
          if (c.in_use && c.stream.state() < io::StreamState::close_sent) {
            if (!c.stream.shut_down()) {
              log.line(str_cat("event=close_forced ", session_tag(c.serial), " client=", c.peer.ip_string(),
                               " reason=drain_deadline"));
              c.end_reason = "close_forced";
            }
            c.stream.force_close();
          }
        }
      }
      // With other shards: only once every shard has seen the drain (no new job can come) and
      // every job of ours has ended (its outcomes journaled here), with no mail left either way.
      const bool others_done = context->shards_draining == nullptr ||
                               (context->shards_draining->load(std::memory_order_seq_cst) == context->shards &&
                                jobs_outstanding == 0 && mail_idle());
      if (open_connections == 0 && outbound_open == 0 && bounce_reads_in_flight == 0 && !scheduler_pending &&
          tickets.empty() &&
          waiting_for_space.empty() &&
          shard->_spool->idle() && others_done) {
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
    if (scheduler_pending) {
      run_scheduler();  // what the last completions asked for: before the connections flush
    }
    run_control_requests();
    exchange_mail();
    retry_waiting_for_space();
    wake_budget_waiters();
    flush_dirty();
    flush_outbound_dirty();
    submit_spool_io();
    log.flush(*ring, completion_user_data(CompletionTag::log, 0, 0));
    shard->_metrics.log_lines_dropped.store(log.dropped(), std::memory_order_relaxed);
    exchange_mail();  // what the steps above gave other shards, and their doorbells
    // Asleep only if no mail came meanwhile (the mailbox's store-buffer protocol).
    const bool may_sleep = context->mailbox == nullptr || context->mailbox->prepare_to_sleep(shard->_index);
    ring->submit_wait_and_reap(may_sleep ? wait_us() : 0, [this](const io_uring_cqe& cqe) { dispatch(cqe); });
    if (context->mailbox != nullptr) {
      context->mailbox->woke(shard->_index);
    }
    log_submit_errors();
    buffers->publish();
    flush_dirty();
    flush_outbound_dirty();
  }
  // Let the cancels and the last log write complete, then close the listeners.
  for (int round = 0; round < 100 && (round == 0 || log.in_flight()); ++round) {
    ring->submit_wait_and_reap(10'000, [this](const io_uring_cqe& cqe) {
      if (io::completion_tag(cqe.user_data) == CompletionTag::log) {
        log.on_write_done(cqe.res);
      }
    });
  }
  for (int fd : listeners) {
    close(fd);
  }
  log.flush_blocking();
}

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

void Shard::complete_spool_io(uint64_t op_id, int32_t result) {
  _impl->on_spool_result(op_id, result);
}

bool Shard::post(ControlRequest* request) {
  std::lock_guard lock(_post_mutex);
  return _control.try_push(request);
}

}  // namespace sluice::app

namespace sluice::app {
uint64_t Shard::doorbell_user_data() {
  return completion_user_data(CompletionTag::doorbell, 0, 0);
}
}  // namespace sluice::app
