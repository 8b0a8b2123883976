// Delivery on the shard: the relay::Scheduler's requests carried out on the ring. Each delivery
// connection is an OutboundConnection (its own slot table, indices from kOutboundIndexBase): an
// io::Stream that connects to the targets of its site in order, and an smtp::ClientSession on it;
// the body goes from the spool segment with the stream's file ranges. Results go back to the
// scheduler, its outcomes to the journal (record_outcome); once every recipient of a message is
// final its bounce (a DSN, stored like any message) is made durable, and only then is the
// original removed.
//
// What it never does: send a body from a segment that could be closed under it (the segment is
// pinned while a send is queued), lose a result (every job taken from the scheduler is given back
// with one result per recipient, even when the connection dies), or remove a message before
// its bounce is durable.
#include <unistd.h>

#include <cstring>

#include "engine/app/shard_internal.h"
#include "engine/relay/dsn.h"

namespace sluice::app {

using io::CompletionTag;

namespace {

// A temporary failure of ours before any server replied (no connection, or none allowed).
smtp::RecipientResult no_connection(smtp::EnhancedStatus enhanced, std::string text) {
  smtp::RecipientResult result;
  result.status = smtp::DeliveryStatus::deferred;
  result.cause = smtp::ResultCause::connect_failed;
  result.enhanced = enhanced;
  result.text = std::move(text);
  return result;
}

smtp::RecipientResult connect_failure(const resolver::PlanTarget& target, int error) {
  return no_connection(smtp::EnhancedStatus{4, 4, 1},
                       str_cat("connect to ", target.host, "[", target.address.to_string(), "]: ",
                               error == ETIMEDOUT ? std::string("timed out") : std::string(std::strerror(error))));
}

// One event=delivery line: every attempt at a recipient has one, with these fields in this order.
struct AttemptLine {
  std::string_view id;
  std::string_view site;
  std::string_view host = "-";
  std::string_view address = "-";
  std::string_view to;
  std::string_view outcome;
  uint16_t code = 0;
  std::string_view status;
  uint64_t duration_ms = 0;
  std::string_view connection = "-";
  std::string_view reply;
};

std::string attempt_line(const AttemptLine& a) {
  std::string line = str_cat("event=delivery id=", a.id);
  append_log_field(line, "site", a.site);
  append_log_field(line, "host", a.host);
  str_append(&line, " address=", a.address);
  append_log_field(line, "to", a.to);
  str_append(&line, " outcome=", a.outcome, " code=", a.code, " status=", a.status, " duration_ms=", a.duration_ms,
             " connection=", a.connection);
  append_log_field(line, "reply", a.reply);
  return line;
}

}  // namespace

// splitmix64: the scheduler's and the resolver's randomness (retry jitter, rotation start).
uint64_t Shard::Impl::random() {
  uint64_t z = (random_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// ---- set-up and new messages --------------------------------------------------------------
void Shard::Impl::start_delivery() {
  random_state = io::wall_ms() ^ (uint64_t{shard->_index} << 48) ^ reinterpret_cast<uintptr_t>(this);
  relay::SchedulerSettings settings = context->scheduler;
  settings.routes = &context->routes;
  settings.shard = shard->_index;
  settings.shards = context->mailbox != nullptr ? context->shards : 1;
  scheduler = std::make_unique<relay::Scheduler>(settings);
  if (!context->delivery_enabled) {
    return;
  }
  resolver::ResolverOptions options;
  options.servers = context->dns_servers;
  options.own_hostname = context->client.hostname;
  options.port = context->mx_port;
  options.ttl_floor_ms = context->dns_ttl_floor_ms;
  options.ttl_ceiling_ms = context->dns_ttl_ceiling_ms;
  options.cache_entries_max = context->dns_cache_entries;
  // c-ares doubles the timeout each round over the servers: three tries fit in [dns] timeout.
  options.query_tries = 3;
  options.query_timeout_ms = static_cast<uint32_t>(std::max<uint64_t>(context->dns_timeout_ms / 7, 100));
  auto created = resolver::Resolver::create(options);
  if (created.ok()) {
    dns = std::move(*created);
  } else {
    log.line(str_cat("event=resolver_error error=\"", to_std(created.status().message()),
                     "\" effect=\"mail without a [[route]] is deferred\""));
  }
  // What recovery found: every message not final is taken up, and one that is final (a crash
  // between its last outcome and its removal) is finished now.
  outbox.resize(context->shards);
  outcome_batches.resize(context->shards);
  if (context->mailbox != nullptr) {
    context->mailbox->attach(shard->_index, ring->fd());
  }
  std::vector<std::string> final_ids;
  // Originals a DSN in the spool reports on. Only a restart can find one of them final: while
  // running, a message whose DSN is stored is being removed (finalizing), and its removal, or
  // a restart, ends that.
  absl::flat_hash_set<std::string> reported;
  shard->_spool->for_each_message([&](const spool::MessageInfo& info) {
    if (!info.dsn_of.empty()) {
      reported.insert(info.dsn_of);
    }
    bool all_final = true;
    for (size_t i = 0; i < info.recipients.size(); ++i) {
      all_final = all_final && i < info.recipient_states.size() && spool::is_final(info.recipient_states[i].state);
    }
    if (all_final) {
      final_ids.push_back(info.id);
    } else {
      route_jobs(info);
    }
  });
  for (const std::string& id : final_ids) {
    if (reported.contains(id)) {
      // A crash after its DSN was durable, before its removal was: the DSN is in the queue.
      log.line(str_cat("event=bounce_exists id=", id, " effect=\"removed without a second DSN\""));
      finalizing.insert(id);
      remove_message(id);
    } else {
      check_final(id);
    }
  }
  run_scheduler();
}

void Shard::Impl::delivery_message_stored(std::string_view queue_id) {
  if (!context->delivery_enabled) {
    return;
  }
  if (std::optional<spool::MessageInfo> info = shard->_spool->find(queue_id)) {
    route_jobs(*info);
    run_scheduler();
  }
}

// ---- ownership: jobs to their site's shard, outcomes back ---------------------------------
// Every job starts in the receiving shard's scheduler, which resolves its domain; a job whose
// site is another shard's goes there (run_scheduler hands it over), and its outcomes come back.
void Shard::Impl::route_jobs(const spool::MessageInfo& info) {
  if (draining) {
    return;  // what arrives during the drain waits in the spool for the next start
  }
  const uint64_t now = io::wall_ms();
  const std::string path = shard->_spool->segment_path(info.location.segment_id);
  for (relay::Job& job : relay::make_jobs(info, now, context->scheduler.recipients_per_transaction)) {
    job.origin = shard->_index;
    job.segment_path = path;
    ++jobs_outstanding;
    scheduler->add_job(std::move(job), now, random());
  }
}

void Shard::Impl::hand_off(relay::Handoff handoff) {
  if (draining) {
    // Nothing new crosses while draining (a shard that finished may be gone): the job ends
    // here, and the spool keeps its state for the next start.
    job_let_go(handoff.job.origin);
    return;
  }
  SLUICE_ASSERT(handoff.owner != shard->_index && handoff.owner < context->shards, "a handoff crosses shards");
  DeliveryMail mail;
  mail.kind = DeliveryMail::Kind::job;
  const uint32_t owner = handoff.owner;
  mail.payload = new relay::Handoff(std::move(handoff));
  send_mail(owner, mail);
}

// A job of `origin`'s that this shard's scheduler let go of: counted out there.
void Shard::Impl::job_let_go(uint32_t origin) {
  if (origin == shard->_index) {
    jobs_ended(1);
  } else {
    ++outcome_batches[origin].jobs_ended;
  }
}

void Shard::Impl::send_mail(uint32_t target, const DeliveryMail& mail) {
  SLUICE_ASSERT(target != shard->_index && context->mailbox != nullptr, "mail crosses shards");
  std::deque<DeliveryMail>& waiting = outbox[target];
  if (!waiting.empty() || !context->mailbox->try_request(shard->_index, target, mail)) {
    waiting.push_back(mail);  // no credit left: sent when the target's acks return them
  }
}

void Shard::Impl::on_mail(const DeliveryMail& mail) {
  switch (mail.kind) {
    case DeliveryMail::Kind::job: {
      std::unique_ptr<relay::Handoff> handoff(static_cast<relay::Handoff*>(mail.payload));
      if (draining) {
        // Sent before the sender saw the drain: not taken up (its spool keeps its state).
        job_let_go(handoff->job.origin);
        return;
      }
      scheduler->add_handoff(std::move(*handoff), io::wall_ms(), random());
      return;
    }
    case DeliveryMail::Kind::outcomes: {
      std::unique_ptr<OutcomeBatch> batch(static_cast<OutcomeBatch*>(mail.payload));
      for (relay::Outcome& out : batch->outcomes) {
        record_outcome_here(std::move(out));
      }
      jobs_ended(batch->jobs_ended);
      return;
    }
    case DeliveryMail::Kind::drop:
      scheduler->drop_message(std::string_view(mail.queue_id, sizeof(mail.queue_id)));
      return;
  }
}

// Once per loop iteration and after a doorbell: mail in, acks in, outcome batches and waiting
// mail out, doorbells. Nothing here blocks.
void Shard::Impl::exchange_mail() {
  DeliveryMailbox* mailbox = context->mailbox;
  if (mailbox == nullptr) {
    return;
  }
  const uint32_t self = shard->_index;
  bool received = false;
  mailbox->drain_requests(self, [&](uint32_t source, const DeliveryMail& mail) {
    on_mail(mail);
    mailbox->reply(self, source, DeliveryAck{});
    received = true;
  });
  mailbox->drain_replies(self, [](uint32_t, const DeliveryAck&) {});
  if (received) {
    run_scheduler();  // takes the new jobs up, and batches their outcomes
  }
  for (uint32_t target = 0; target < context->shards; ++target) {
    OutcomeBatch& batch = outcome_batches[target];
    if (target != self && (!batch.outcomes.empty() || batch.jobs_ended > 0)) {
      DeliveryMail mail;
      mail.kind = DeliveryMail::Kind::outcomes;
      mail.payload = new OutcomeBatch(std::move(batch));
      batch = OutcomeBatch{};
      send_mail(target, mail);
    }
    std::deque<DeliveryMail>& waiting = outbox[target];
    while (!waiting.empty() && mailbox->try_request(self, target, waiting.front())) {
      waiting.pop_front();
    }
  }
  mailbox->flush_doorbells(self, *ring);
}

// Nothing of ours on its way to another shard, and nothing for us that we have not taken.
bool Shard::Impl::mail_idle() const {
  if (context->mailbox == nullptr) {
    return true;
  }
  for (uint32_t target = 0; target < context->shards; ++target) {
    if (!outbox[target].empty() || !outcome_batches[target].outcomes.empty() ||
        outcome_batches[target].jobs_ended > 0) {
      return false;
    }
  }
  return !context->mailbox->has_incoming(shard->_index);
}

void Shard::Impl::jobs_ended(uint32_t count) {
  SLUICE_ASSERT(jobs_outstanding >= count, "a job of ours ends once");
  jobs_outstanding -= count;
}

void Shard::queue_changed(std::string_view id) {
  Impl& impl = *_impl;
  impl.scheduler->drop_message(id);
  if (impl.context->mailbox != nullptr && id.size() == sizeof(DeliveryMail::queue_id)) {
    DeliveryMail mail;
    mail.kind = DeliveryMail::Kind::drop;
    std::memcpy(mail.queue_id, id.data(), id.size());
    for (uint32_t target = 0; target < impl.context->shards; ++target) {
      if (target != _index) {
        impl.send_mail(target, mail);
      }
    }
  }
  if (std::optional<spool::MessageInfo> info = _spool->find(id); info && impl.context->delivery_enabled) {
    impl.route_jobs(*info);
  }
  impl.run_scheduler();
}

void Shard::delivery_snapshot(SpoolSnapshot& snapshot) const {
  const Impl& impl = *_impl;
  snapshot.sites = impl.scheduler->sites();
  if (impl.dns) {
    snapshot.dns = impl.dns->metrics();
  }
  snapshot.jobs = impl.scheduler->jobs();
  snapshot.jobs_scheduled = impl.scheduler->scheduled();
  snapshot.jobs_in_flight = impl.scheduler->jobs_in_flight();
}

uint64_t Shard::flush_queue(std::string_view domain) {
  const uint64_t flushed = _impl->scheduler->flush(domain, io::wall_ms());
  _impl->run_scheduler();
  return flushed;
}

// ---- the scheduler's requests ---------------------------------------------------------------
// Called after anything that may have given the scheduler work: carries out what it asks for.
void Shard::Impl::run_scheduler() {
  scheduler_pending = false;
  const uint64_t now = io::wall_ms();
  scheduler->tick(now, random());
  for (const std::string& domain : scheduler->take_resolve_requests()) {
    resolve_domain(domain);
  }
  for (relay::Handoff& handoff : scheduler->take_handoffs()) {
    hand_off(std::move(handoff));
  }
  for (relay::ConnectRequest& request : scheduler->take_connect_requests()) {
    connects_waiting.push_back(std::move(request));
  }
  open_waiting_outbound();
  for (const uint64_t connection : scheduler->take_wakes()) {
    // A wake for a connection that left meanwhile (its idle timeout) is stale: it told the
    // scheduler when it left.
    const io::UserData who = io::UserData::decode(connection);
    OutboundConnection& c = outbound(who.index);
    if (!c.in_use || c.generation != who.generation || !c.idle) {
      continue;
    }
    c.idle = false;
    outbound_next_job(who.index);
  }
  record_outcomes();
  scheduler_deadline_ms = scheduler->next_deadline_ms().value_or(0);
}

// ---- the resolver on the ring ------------------------------------------------------------
// Without a resolver (c-ares could not start: logged at start) a domain without a [[route]]
// cannot be resolved: its mail is deferred (4.4.3), never lost.
void Shard::Impl::resolve_domain(const std::string& domain) {
  if (!dns) {
    resolver::DeliveryPlan plan;
    plan.failure = resolver::PlanFailure::dns_temporary;
    scheduler->on_plan(domain, plan, io::wall_ms(), random());
    return;
  }
  const uint64_t id = next_dns_request++;
  dns_requests.emplace(id, domain);
  dns->request_plan(id, domain, loop_now_ms);
  run_resolver();
}

// After anything that may have moved the resolver: its polls on the ring, its deadline, and
// the plans it finished, to the scheduler.
void Shard::Impl::run_resolver() {
  for (const resolver::PollRequest& request : dns->poll_requests()) {
    io_uring_sqe* sqe = ring->sqe();
    const uint64_t user_data = io::completion_user_data(CompletionTag::dns_poll, static_cast<uint32_t>(request.fd),
                                                        request.generation);
    if (request.op == resolver::PollRequest::Op::arm) {
      io_uring_prep_poll_add(sqe, request.fd, request.events);
      io_uring_sqe_set_data64(sqe, user_data);
    } else {
      io_uring_prep_poll_remove(sqe, user_data);
      io_uring_sqe_set_data64(sqe, io::completion_user_data(CompletionTag::ignore, 0, 0));
    }
  }
  dns_deadline_ms = dns->next_deadline_ms(loop_now_ms).value_or(0);
  bool planned = false;
  for (resolver::PlanResult& result : dns->take_completed()) {
    auto request = dns_requests.extract(result.request_id);
    SLUICE_ASSERT(!request.empty(), "a plan the shard asked for");
    scheduler->on_plan(request.mapped(), result.plan, io::wall_ms(), random());
    planned = true;
  }
  if (planned) {
    run_scheduler();
  }
}

void Shard::Impl::on_dns_poll(const io_uring_cqe& cqe) {
  const io::UserData data = io::UserData::decode(cqe.user_data);
  dns->on_poll_ready(static_cast<int>(data.index), data.generation, cqe.res, loop_now_ms);
  run_resolver();
}

// ---- outcomes, bounces, removal -----------------------------------------------------------
void Shard::Impl::record_outcomes() {
  for (relay::Outcome& out : scheduler->take_outcomes()) {
    if (out.unattempted) {
      log_unattempted(out);
    }
    if (out.origin == shard->_index) {
      record_outcome_here(std::move(out));
    } else {
      outcome_batches[out.origin].outcomes.push_back(std::move(out));
    }
  }
  for (const uint32_t origin : scheduler->take_ended()) {
    job_let_go(origin);
  }
}

// An outcome of one of this shard's messages: journaled, and the message finished once final.
void Shard::Impl::record_outcome_here(relay::Outcome out) {
  const std::string id = out.message_id;
  // What a DSN made later (after a restart, too) says of this recipient: kept with the outcome.
  out.outcome.remote_mta = std::move(out.remote_mta);
  out.outcome.relayed = out.relayed;
  absl::StatusOr<uint64_t> ticket = shard->_spool->record_outcome(id, out.recipient, std::move(out.outcome));
  if (!ticket.ok()) {
    // A message deleted meanwhile (NOT_FOUND) has nothing to record; anything else is ours.
    if (ticket.status().code() != absl::StatusCode::kNotFound) {
      log.line(str_cat("event=outcome_error id=", id, " recipient=", out.recipient, " error=\"",
                       to_std(ticket.status().message()), "\""));
    }
    return;
  }
  control_tickets.emplace(*ticket, [this, id](const absl::Status& status) {
    if (!status.ok()) {
      log.line(str_cat("event=outcome_error id=", id, " error=\"", to_std(status.message()), "\""));
      return;
    }
    check_final(id);
  });
}

// Once every recipient's outcome is durable and final, the message is finished.
void Shard::Impl::check_final(const std::string& id) {
  if (finalizing.contains(id)) {
    return;
  }
  std::optional<spool::MessageInfo> info = shard->_spool->find(id);
  if (!info || info->removal_pending) {
    return;
  }
  for (size_t i = 0; i < info->recipients.size(); ++i) {
    if (i >= info->recipient_states.size() || !spool::is_final(info->recipient_states[i].state) ||
        info->recipient_states[i].outcomes_in_flight > 0) {
      return;
    }
  }
  finalize_message(*info);
}

// A DSN for the bounced recipients that want one, durable before the original is removed.
void Shard::Impl::finalize_message(const spool::MessageInfo& info) {
  relay::DsnReport report;
  for (size_t i = 0; i < info.recipients.size(); ++i) {
    const spool::RecipientDelivery& state = info.recipient_states[i];
    const uint8_t notify = i < info.recipient_dsn.size() ? info.recipient_dsn[i].notify : 0;
    if (state.state == spool::DeliveryState::delivered && state.relayed &&
        relay::dsn_wanted(info.sender, notify, relay::DsnAction::relayed)) {
      relay::DsnRecipient recipient;
      recipient.final_recipient = info.recipients[i];
      recipient.orcpt = i < info.recipient_dsn.size() ? info.recipient_dsn[i].orcpt : std::string();
      recipient.action = relay::DsnAction::relayed;
      recipient.status = "2.0.0";
      recipient.remote_mta = state.remote_mta;
      recipient.diagnostic = state.last_reply;
      recipient.last_attempt_s = static_cast<int64_t>(io::wall_ms() / 1000);
      report.recipients.push_back(std::move(recipient));
      continue;
    }
    if (state.state != spool::DeliveryState::bounced ||
        !relay::dsn_wanted(info.sender, notify, relay::DsnAction::failed)) {
      continue;
    }
    relay::DsnRecipient recipient;
    recipient.final_recipient = info.recipients[i];
    recipient.orcpt = i < info.recipient_dsn.size() ? info.recipient_dsn[i].orcpt : std::string();
    recipient.action = relay::DsnAction::failed;
    // last_reply is "550 5.1.1 text" or "5.4.4 text": the enhanced code is the first x.y.z in it.
    recipient.status = "5.0.0";
    std::string_view rest = state.last_reply;
    while (!rest.empty()) {
      const size_t space = rest.find(' ');
      const std::string_view word = rest.substr(0, space);
      if (auto parsed = smtp::parse_enhanced_status(word)) {
        recipient.status = parsed->status.to_string();
        recipient.status[0] = '5';  // a temporary failure past the lifetime is final too
        break;
      }
      rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
    }
    recipient.diagnostic = state.last_reply;
    recipient.remote_mta = state.remote_mta;
    recipient.last_attempt_s = static_cast<int64_t>(io::wall_ms() / 1000);
    report.recipients.push_back(std::move(recipient));
  }
  finalizing.insert(info.id);
  if (report.recipients.empty()) {
    remove_message(info.id);
    return;
  }
  start_bounce_read(info, std::move(report));
}

void Shard::Impl::start_bounce_read(const spool::MessageInfo& info, relay::DsnReport report) {
  const std::string path = shard->_spool->segment_path(info.location.segment_id);
  const int fd = segments.pin(path);  // until the read ends
  if (fd < 0) {
    finalizing.erase(info.id);
    log.line(str_cat("event=bounce_error id=", info.id, " error=\"open the segment: ", std::strerror(-fd), "\""));
    return;  // kept: a restart tries again
  }
  if (bounce_reads_free.empty()) {
    bounce_reads_free.push_back(static_cast<uint32_t>(bounce_reads.size()));
    bounce_reads.emplace_back();
  }
  const uint32_t index = bounce_reads_free.back();
  bounce_reads_free.pop_back();
  BounceRead& read = bounce_reads[index];
  read.in_use = true;
  read.info = info;
  read.report = std::move(report);
  read.segment_path = path;
  read.fd = fd;
  read.octets.resize(info.location.wire_length);
  read.done = 0;
  submit_bounce_read(index);
}

// The next part of the original: what is left, at most kBounceReadChunk a read.
void Shard::Impl::submit_bounce_read(uint32_t index) {
  BounceRead& read = bounce_reads[index];
  const uint64_t length = std::min<uint64_t>(read.octets.size() - read.done, kBounceReadChunk);
  io_uring_sqe* sqe = ring->sqe();
  io_uring_prep_read(sqe, read.fd, read.octets.data() + read.done, static_cast<unsigned>(length),
                     read.info.location.wire_offset + read.done);
  io_uring_sqe_set_data64(sqe, io::completion_user_data(CompletionTag::bounce_read, index, read.generation));
  ++bounce_reads_in_flight;
}

void Shard::Impl::on_bounce_read(const io_uring_cqe& cqe) {
  const io::UserData data = io::UserData::decode(cqe.user_data);
  SLUICE_ASSERT(data.index < bounce_reads.size() && bounce_reads[data.index].in_use &&
                    bounce_reads[data.index].generation == data.generation,
                "a bounce read completes once");
  --bounce_reads_in_flight;
  BounceRead& read = bounce_reads[data.index];
  if (cqe.res == -EINTR || cqe.res == -EAGAIN) {
    submit_bounce_read(data.index);
    return;
  }
  if (cqe.res > 0) {
    read.done += static_cast<uint64_t>(cqe.res);
    if (read.done < read.octets.size()) {
      submit_bounce_read(data.index);  // a short read: the rest
      return;
    }
  }
  segments.unpin(read.segment_path);
  BounceRead finished = std::move(read);
  read = BounceRead{};
  read.generation = finished.generation + 1;
  bounce_reads_free.push_back(data.index);
  if (cqe.res <= 0) {
    // 0: the segment ends before the message does, which recovery would have refused.
    finalizing.erase(finished.info.id);
    log.line(str_cat("event=bounce_error id=", finished.info.id, " error=\"read the original: ",
                     std::strerror(cqe.res < 0 ? -cqe.res : EIO), "\""));
    return;  // kept: a restart tries again
  }
  const std::optional<spool::MessageInfo> now_info = shard->_spool->find(finished.info.id);
  if (!now_info || now_info->removal_pending) {
    finalizing.erase(finished.info.id);  // deleted by the operator while it was read: no DSN
    return;
  }
  store_bounce(finished.info, std::move(finished.report), finished.octets);
}

// The DSN as a new message from <>, durable before the original is removed.
void Shard::Impl::store_bounce(const spool::MessageInfo& info, relay::DsnReport report, std::string_view original) {
  const uint64_t now = io::wall_ms();
  std::string bounce_id = ids->next(now);
  report.reporting_mta = context->client.hostname;
  report.original_sender = info.sender;
  report.queue_id = info.id;
  report.envid = info.dsn_envid;
  report.ret = static_cast<relay::DsnReturn>(info.dsn_ret);
  report.arrival_s = static_cast<int64_t>(info.arrival_ms / 1000);
  report.now_s = static_cast<int64_t>(now / 1000);
  report.boundary = str_cat(bounce_id, "/", context->client.hostname);
  report.message_id = str_cat(bounce_id, "@", context->client.hostname);
  relay::BuiltDsn dsn = relay::build_dsn(report, original);
  spool::Envelope envelope;
  envelope.recipients.push_back(info.sender);
  envelope.body_8bit = dsn.body_8bit;
  envelope.dsn_of = info.id;  // so that a restart before the original's removal makes no second DSN
  const uint64_t size = dsn.wire.size();
  auto ticket = shard->_spool->append_message(bounce_id, now, std::move(envelope), size, std::move(dsn.wire));
  if (!ticket.ok()) {
    finalizing.erase(info.id);
    log.line(str_cat("event=bounce_error id=", info.id, " error=\"", to_std(ticket.status().message()), "\""));
    return;
  }
  log.line(str_cat("event=bounce id=", info.id, " bounce_id=", bounce_id, " to=", info.sender,
                   " recipients=", report.recipients.size()));
  const std::string original_id = info.id;
  control_tickets.emplace(*ticket, [this, original_id, bounce_id](const absl::Status& status) {
    if (!status.ok()) {
      finalizing.erase(original_id);
      log.line(str_cat("event=bounce_error id=", original_id, " error=\"", to_std(status.message()), "\""));
      return;
    }
    delivery_message_stored(bounce_id);
    remove_message(original_id);
  });
}

void Shard::Impl::remove_message(const std::string& id) {
  absl::StatusOr<uint64_t> ticket = shard->_spool->remove(id);
  if (!ticket.ok()) {
    finalizing.erase(id);
    if (ticket.status().code() != absl::StatusCode::kNotFound) {
      log.line(str_cat("event=remove_error id=", id, " error=\"", to_std(ticket.status().message()), "\""));
    }
    return;
  }
  control_tickets.emplace(*ticket, [this, id](const absl::Status& status) {
    finalizing.erase(id);
    if (!status.ok()) {
      log.line(str_cat("event=remove_error id=", id, " error=\"", to_std(status.message()), "\""));
      return;
    }
    shard->_metrics.add(shard->_metrics.messages_finished);
  });
}

// ---- connections ----------------------------------------------------------------------------
// Connections the scheduler asked for, within this shard's share of [delivery] max_connections
// (the descriptor plan counts on it); the rest wait, counted as starting by the scheduler.
void Shard::Impl::open_waiting_outbound() {
  while (draining && !connects_waiting.empty()) {
    // No new connections while draining: the scheduler is told they failed, which defers.
    const uint32_t site = connects_waiting.front().site;
    connects_waiting.pop_front();
    scheduler->connection_failed(site, no_connection(smtp::EnhancedStatus{4, 3, 2}, "the relay is shutting down"),
                                 io::wall_ms(), random());
  }
  while (!connects_waiting.empty() && outbound_open < context->outbound_connections_max) {
    relay::ConnectRequest request = std::move(connects_waiting.front());
    connects_waiting.pop_front();
    open_outbound(std::move(request));
  }
}

void Shard::Impl::open_outbound(relay::ConnectRequest request) {
  if (outbound_free.empty()) {
    if (outbound_used % kSlotsPerChunk == 0) {
      outbound_chunks.push_back(std::make_unique<OutboundConnection[]>(kSlotsPerChunk));
    }
    outbound_free.push_back(outbound_used++);
  }
  const uint32_t index = outbound_free.back();
  outbound_free.pop_back();
  OutboundConnection& c = outbound(index);
  c.in_use = true;
  c.site = request.site;
  c.site_name = std::move(request.site_name);
  c.targets = std::move(request.targets);
  c.target = 0;
  c.serial = ++next_outbound_serial;
  c.started_ms = loop_now_ms;
  c.timer.cookie = TimerCookie{TimerKind::outbound, index, c.generation}.encode();
  ++outbound_open;
  shard->_metrics.add(shard->_metrics.outbound_connections);
  connect_target(index);
}

// Connects to the current target, or (when the socket cannot even be made) goes on to the next.
void Shard::Impl::connect_target(uint32_t index) {
  OutboundConnection& c = outbound(index);
  while (c.target < c.targets.size()) {
    c.stream.~Stream();
    new (&c.stream) io::Stream();
    c.stream.bind(ring.get(), buffers.get(), kOutboundIndexBase + index, c.generation);
    const int error = c.stream.connect(c.targets[c.target].address, context->connect_timeout_ms);
    if (error == 0) {
      return;
    }
    c.last_failure = connect_failure(c.targets[c.target], -error);
    ++c.target;
  }
  // Nothing to connect to: the stream is idle, nothing in the kernel.
  outbound_on_close(index);
}

void Shard::Impl::outbound_dispatch(const io_uring_cqe& cqe, CompletionTag tag, uint32_t index) {
  switch (tag) {
    case CompletionTag::stream_connect:
      outbound_on_connect(index, cqe.res);
      return;
    case CompletionTag::stream_recv:
      outbound_on_recv(cqe, index);
      return;
    case CompletionTag::stream_send:
      outbound_on_send(index, cqe.res, false);
      return;
    case CompletionTag::stream_read:
      outbound_on_send(index, cqe.res, true);
      return;
    case CompletionTag::stream_close:
      outbound(index).stream.on_close();
      outbound_on_close(index);
      return;
    default:
      SLUICE_ASSERT(false, "unexpected completion tag for an outbound connection");
  }
}

void Shard::Impl::outbound_on_connect(uint32_t index, int32_t res) {
  OutboundConnection& c = outbound(index);
  const int32_t result = c.stream.on_connect(res);
  if (result != 0) {
    if (result != -ECANCELED) {
      c.last_failure = connect_failure(c.targets[c.target], -result);
    }
    c.stream.advance_close();
    return;
  }
  c.session.emplace(&context->client, loop_now_ms);
  outbound_rearm(index);
}

void Shard::Impl::outbound_on_recv(const io_uring_cqe& cqe, uint32_t index) {
  OutboundConnection& c = outbound(index);
  const io::RecvEvent event = c.stream.on_recv(cqe, [&](std::string_view data) { outbound_input(index, data); });
  switch (event) {
    case io::RecvEvent::more:
      return;
    case io::RecvEvent::peer_closed:
      outbound_session_over(index);
      outbound_close(index);
      return;
    case io::RecvEvent::ended:
    case io::RecvEvent::failed:
      outbound_session_over(index);
      c.stream.advance_close();
      return;
  }
}

void Shard::Impl::outbound_input(uint32_t index, std::string_view data) {
  OutboundConnection& c = outbound(index);
  while (c.session && !c.session_over && !c.stream.closing()) {
    const smtp::ClientStep step = c.session->on_input(data, loop_now_ms, c.stream.output());
    data.remove_prefix(step.consumed);
    outbound_act(index, step.action);
    if (data.empty() && step.action == smtp::ClientAction::none) {
      break;
    }
    if (step.consumed == 0 && step.action == smtp::ClientAction::none) {
      break;
    }
  }
  outbound_rearm(index);
}

void Shard::Impl::outbound_act(uint32_t index, smtp::ClientAction action) {
  OutboundConnection& c = outbound(index);
  switch (action) {
    case smtp::ClientAction::none:
      break;
    case smtp::ClientAction::ready:
      if (!c.reported_up) {
        c.reported_up = true;
        scheduler->connection_up(c.site);
      }
      outbound_next_job(index);
      break;
    case smtp::ClientAction::send_body: {
      SLUICE_ASSERT(c.job.has_value(), "a body is sent for the job in flight");
      const spool::MessageLocation& location = c.job->location;
      const int fd = segments.pin(c.job->segment_path);
      if (fd < 0) {
        // The segment is gone (the message was deleted): the transaction cannot complete.
        log.line(str_cat("event=delivery_error id=", c.job->message_id, " path=", c.job->segment_path,
                         " error=\"", std::strerror(-fd), "\""));
        outbound_session_over(index);
        outbound_close(index);
        return;
      }
      c.pinned_segment = c.job->segment_path;
      c.stream.queue_file_range(fd, location.wire_offset, location.wire_length);
      // The wire form always ends with CRLF (DATA keeps the CRLF before the dot; BDAT LAST adds one).
      c.session->body_queued(true, loop_now_ms, c.stream.output());
      c.body_sending = true;
      break;
    }
    case smtp::ClientAction::transaction_done:
      outbound_job_done(index);
      if (c.session->state() == smtp::ClientState::idle && !c.stream.closing()) {
        outbound_next_job(index);
      }
      break;
    case smtp::ClientAction::close:
      outbound_session_over(index);
      outbound_close(index);
      return;
  }
  outbound_mark_dirty(index);
}

// The session is ready for a transaction: the next job, QUIT at the connection's message limit
// or while draining, or idle (the scheduler wakes it).
void Shard::Impl::outbound_next_job(uint32_t index) {
  OutboundConnection& c = outbound(index);
  if (c.session->transactions() >= context->messages_per_connection || draining) {
    if (!c.left) {
      c.left = true;
      scheduler->connection_leaves(c.site, io::UserData{0, index, c.generation}.encode());
    }
    outbound_act(index, c.session->finish(loop_now_ms, c.stream.output()));
    return;
  }
  // A loop, not a recursion: a job refused before anything is sent (SIZE, 8BITMIME) ends at
  // once, and a queue of thousands of them must not nest as deep.
  const uint64_t id = io::UserData{0, index, c.generation}.encode();
  while (true) {
    std::optional<relay::Job> job = scheduler->next_job(c.site, id);
    if (!job) {
      c.idle = true;
      c.idle_since_ms = loop_now_ms;
      outbound_rearm(index);
      return;
    }
    c.job = std::move(*job);
    c.job_started_ms = loop_now_ms;
    const smtp::ClientAction action = c.session->start_transaction(c.job->transaction, loop_now_ms, c.stream.output());
    if (action != smtp::ClientAction::transaction_done) {
      outbound_act(index, action);
      return;
    }
    outbound_job_done(index);
    if (c.session->state() != smtp::ClientState::idle || c.stream.closing() ||
        c.session->transactions() >= context->messages_per_connection || draining) {
      outbound_mark_dirty(index);
      if (c.session->state() == smtp::ClientState::idle && !c.stream.closing()) {
        outbound_next_job(index);  // the limit: QUIT (once, no deeper)
      }
      return;
    }
  }
}

void Shard::Impl::outbound_job_done(uint32_t index) {
  OutboundConnection& c = outbound(index);
  SLUICE_ASSERT(c.job.has_value(), "a transaction ends for the job in flight");
  unpin_body(c);
  c.body_sending = false;
  const std::vector<smtp::RecipientResult> results = c.session->take_results();
  log_attempt(c, *c.job, results);
  ShardMetrics& metrics = shard->_metrics;
  const uint64_t now_wall = io::wall_ms();
  for (const smtp::RecipientResult& result : results) {
    switch (result.status) {
      case smtp::DeliveryStatus::delivered: {
        metrics.add(metrics.recipients_delivered);
        const uint64_t latency = now_wall > c.job->arrival_ms ? now_wall - c.job->arrival_ms : 0;
        size_t bucket = 0;
        while (bucket < kDeliveryLatencyBoundsMs.size() && latency > kDeliveryLatencyBoundsMs[bucket]) {
          ++bucket;
        }
        metrics.add(metrics.delivery_latency_bucket[bucket]);
        metrics.add(metrics.delivery_latency_sum_ms, latency);
        break;
      }
      case smtp::DeliveryStatus::bounced:
        metrics.add(metrics.recipients_bounced);
        break;
      case smtp::DeliveryStatus::deferred:
        metrics.add(metrics.recipients_deferred);
        metrics.add(result.cause == smtp::ResultCause::reply ? metrics.deferrals_4xx : metrics.deferrals_network);
        break;
    }
  }
  relay::Job job = std::move(*c.job);
  c.job.reset();
  scheduler->on_job_done(std::move(job), results, c.targets[c.target].host, io::wall_ms(), random(),
                         c.session->capabilities().dsn);
  scheduler_pending = true;
}

// The connection can carry nothing more: the session's results for what was in flight are
// taken (once), and the scheduler is told.
void Shard::Impl::outbound_session_over(uint32_t index) {
  OutboundConnection& c = outbound(index);
  if (c.session_over || !c.session) {
    return;
  }
  if (c.session->state() != smtp::ClientState::closed) {
    const smtp::ClientAction action = c.session->on_close();
    if (action == smtp::ClientAction::transaction_done) {
      outbound_job_done(index);
    }
  } else if (c.job) {
    outbound_job_done(index);
  }
  c.session_over = true;
  if (!c.reported_up && c.session->failure()) {
    c.last_failure = *c.session->failure();
  }
}

void Shard::Impl::outbound_close(uint32_t index) {
  OutboundConnection& c = outbound(index);
  if (!c.stream.closing()) {
    c.stream.begin_close();
  }
  timers->cancel(c.timer);
  timers->schedule(c.timer, loop_now_ms + kCloseLingerMs);
  outbound_mark_dirty(index);
}

void Shard::Impl::outbound_on_send(uint32_t index, int32_t res, bool file_read) {
  OutboundConnection& c = outbound(index);
  const bool ok = file_read ? c.stream.on_read(res) : c.stream.on_send(res);
  if (!ok) {
    outbound_session_over(index);
    c.stream.advance_close();
    return;
  }
  if (c.stream.output_in_flight()) {
    if (c.body_sending && c.session) {
      c.session->body_progress(loop_now_ms);
    }
    return;
  }
  if (c.body_sending && c.stream.output_idle() && c.session) {
    c.body_sending = false;
    unpin_body(c);
    c.session->body_sent(loop_now_ms);
    outbound_rearm(index);
  }
  c.stream.flush();
}

void Shard::Impl::unpin_body(OutboundConnection& c) {
  if (!c.pinned_segment.empty()) {
    segments.unpin(c.pinned_segment);
    c.pinned_segment.clear();
  }
}

// The close CQE (or a connection that never got a socket): the slot is free, unless another
// target is left to try for a connection that never became ready.
void Shard::Impl::outbound_on_close(uint32_t index) {
  OutboundConnection& c = outbound(index);
  outbound_session_over(index);
  unpin_body(c);
  if (!c.reported_up) {
    if (c.target + 1 < c.targets.size() && !draining) {
      ++c.target;
      c.session.reset();
      c.session_over = false;
      connect_target(index);
      return;
    }
    scheduler->connection_failed(c.site, c.last_failure, io::wall_ms(), random());
  } else if (c.idle) {
    scheduler->connection_leaves(c.site, io::UserData{0, index, c.generation}.encode());
  } else if (!c.left) {
    scheduler->connection_closed(c.site);
  }
  timers->cancel(c.timer);
  std::string line = str_cat("event=outbound_close connection=O", shard->_index, "-", c.serial);
  append_log_field(line, "site", c.site_name);
  if (c.target < c.targets.size()) {
    append_log_field(line, "host", c.targets[c.target].host);
    str_append(&line, " address=", c.targets[c.target].address.to_string());
  }
  str_append(&line, " transactions=", c.session ? c.session->transactions() : 0,
             " duration_ms=", loop_now_ms - c.started_ms, " ready=", c.reported_up ? "yes" : "no");
  if (!c.reported_up || (c.session && c.session->failure())) {
    const smtp::RecipientResult& failure =
        c.session && c.session->failure() ? *c.session->failure() : c.last_failure;
    append_log_field(line, "reason", failure.text);
  }
  log.line(line);
  const uint32_t generation = c.generation + 1;
  c.~OutboundConnection();
  new (&c) OutboundConnection();
  c.generation = generation;
  outbound_free.push_back(index);
  --outbound_open;
  shard->_metrics.add(shard->_metrics.outbound_connections, static_cast<uint64_t>(-1));
  scheduler_pending = true;
}

// ---- timers ---------------------------------------------------------------------------------
void Shard::Impl::outbound_rearm(uint32_t index) {
  OutboundConnection& c = outbound(index);
  if (c.stream.closing()) {
    return;
  }
  std::optional<uint64_t> deadline;
  if (c.session) {
    deadline = c.session->next_deadline_ms();
  }
  if (c.idle) {
    deadline = c.idle_since_ms + context->idle_timeout_ms;
  }
  timers->cancel(c.timer);
  if (deadline) {
    timers->schedule(c.timer, *deadline);
  }
}

void Shard::Impl::outbound_on_timer(uint32_t index) {
  OutboundConnection& c = outbound(index);
  SLUICE_ASSERT(c.in_use, "a freed outbound slot's timer is cancelled");
  if (c.stream.shut_down()) {
    return;
  }
  if (c.stream.closing()) {
    c.stream.force_close();
    return;
  }
  if (!c.session) {
    return;  // connecting: the linked timeout ends it
  }
  if (c.idle) {
    c.idle = false;
    c.left = true;
    scheduler->connection_leaves(c.site, io::UserData{0, index, c.generation}.encode());
    outbound_act(index, c.session->finish(loop_now_ms, c.stream.output()));
    outbound_rearm(index);
    return;
  }
  outbound_act(index, c.session->on_timeout(loop_now_ms, c.stream.output()));
  outbound_rearm(index);
}

void Shard::Impl::outbound_mark_dirty(uint32_t index) {
  OutboundConnection& c = outbound(index);
  if (!c.dirty) {
    c.dirty = true;
    outbound_dirty.push_back(index);
  }
}

void Shard::Impl::flush_outbound_dirty() {
  for (size_t i = 0; i < outbound_dirty.size(); ++i) {
    OutboundConnection& c = outbound(outbound_dirty[i]);
    c.dirty = false;
    if (c.in_use && c.stream.state() != io::StreamState::idle && c.stream.state() != io::StreamState::connecting) {
      c.stream.flush();
    }
  }
  outbound_dirty.clear();
}

// The drain: idle connections say QUIT now, busy ones after their transaction.
void Shard::Impl::outbound_drain() {
  for (uint32_t index = 0; index < outbound_used; ++index) {
    OutboundConnection& c = outbound(index);
    if (c.in_use && c.idle && c.session && !c.stream.closing()) {
      c.idle = false;
      c.left = true;
      scheduler->connection_leaves(c.site, io::UserData{0, index, c.generation}.encode());
      outbound_act(index, c.session->finish(loop_now_ms, c.stream.output()));
    }
  }
}

// ---- the log --------------------------------------------------------------------------------
// The attempt line of a result decided without a connection (DNS, a site down, every
// connection failed), and its metrics: every attempt has its line, as connections log theirs.
void Shard::Impl::log_unattempted(const relay::Outcome& out) {
  AttemptLine a;
  a.id = out.message_id;
  a.site = out.domain;
  a.to = out.address;
  a.outcome = out.outcome.state == spool::DeliveryState::bounced ? "bounced" : "deferred";
  a.status = out.status;
  a.reply = out.outcome.last_reply;
  log.line(attempt_line(a));
  ShardMetrics& metrics = shard->_metrics;
  if (out.outcome.state == spool::DeliveryState::bounced) {
    metrics.add(metrics.recipients_bounced);
  } else {
    metrics.add(metrics.recipients_deferred);
    metrics.add(metrics.deferrals_network);
  }
}

void Shard::Impl::log_attempt(const OutboundConnection& c, const relay::Job& job,
                              const std::vector<smtp::RecipientResult>& results) {
  const resolver::PlanTarget& target = c.targets[c.target];
  const std::string address = target.address.to_string();
  const std::string connection = str_cat("O", shard->_index, "-", c.serial);
  for (size_t i = 0; i < results.size(); ++i) {
    const smtp::RecipientResult& result = results[i];
    const std::string status = result.enhanced.to_string();
    AttemptLine a;
    a.id = job.message_id;
    a.site = c.site_name;
    a.host = target.host;
    a.address = address;
    a.to = job.transaction.recipients[i].address;
    a.outcome = smtp::delivery_status_name(result.status);
    a.code = result.code;
    a.status = status;
    a.duration_ms = loop_now_ms - c.job_started_ms;
    a.connection = connection;
    a.reply = result.text;
    log.line(attempt_line(a));
  }
}

}  // namespace sluice::app
