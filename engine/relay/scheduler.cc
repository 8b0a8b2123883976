#include "engine/relay/scheduler.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/io/assert.h"

namespace sluice::relay {

namespace {

smtp::RecipientResult plan_failure_result(resolver::PlanFailure failure) {
  smtp::RecipientResult result;
  const bool permanent = resolver::plan_failure_permanent(failure);
  result.status = permanent ? smtp::DeliveryStatus::bounced : smtp::DeliveryStatus::deferred;
  result.cause = smtp::ResultCause::unroutable;
  if (auto parsed = smtp::parse_enhanced_status(resolver::plan_failure_status(failure))) {
    result.enhanced = parsed->status;
  }
  result.text = std::string(resolver::plan_failure_text(failure));
  return result;
}

// The reply text kept in the journal and shown by the queue API: the server's words when it
// answered, else what we saw ("connect to ...: timed out").
std::string reply_line(const smtp::RecipientResult& result) {
  if (result.cause == smtp::ResultCause::reply && result.code != 0) {
    return absl::StrCat(result.code, " ", result.text);
  }
  return absl::StrCat(result.enhanced.to_string(), " ", result.text);
}

}  // namespace

std::string recipient_domain(std::string_view address) {
  const size_t at = address.rfind('@');
  if (at == std::string_view::npos) {
    return std::string();
  }
  std::string domain = absl::AsciiStrToLower(std::string(address.substr(at + 1)));
  while (!domain.empty() && domain.back() == '.') {
    domain.pop_back();
  }
  return domain;
}

uint32_t site_owner(std::string_view site_key, uint32_t shards) {
  uint64_t hash = 14695981039346656037ull;
  for (const char c : site_key) {
    hash = (hash ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  }
  return static_cast<uint32_t>(hash % std::max<uint32_t>(shards, 1));
}

// ---- jobs in --------------------------------------------------------------------------------
void Scheduler::add_message(const spool::MessageInfo& info, uint64_t now_ms, uint64_t random) {
  for (Job& job : make_jobs(info, now_ms, _settings.recipients_per_transaction)) {
    job.id = 0;
    add_job(std::move(job), now_ms, random);
  }
}

void Scheduler::add_job(Job job, uint64_t now_ms, uint64_t random) {
  job.id = _next_job_id++;
  ++_jobs_total;
  if (_in_flight_by_message.contains(job.message_id)) {
    _parked[job.message_id].push_back(std::move(job));
    return;
  }
  place(std::move(job), now_ms, random);
}

void Scheduler::add_handoff(Handoff handoff, uint64_t now_ms, uint64_t random) {
  Job job = std::move(handoff.job);
  job.id = _next_job_id++;
  ++_jobs_total;
  if (_in_flight_by_message.contains(job.message_id)) {
    _parked[job.message_id].push_back(std::move(job));
    return;
  }
  const uint32_t site =
      site_for(resolver::DeliveryPlan{std::nullopt, std::move(handoff.targets), false}, handoff.route_name);
  SLUICE_ASSERT(_sites[site]->owner == _settings.shard, "a job is handed to its site's owner");
  to_site(site, std::move(job), now_ms, random);
}

std::vector<Handoff> Scheduler::take_handoffs() {
  return std::exchange(_handoffs, {});
}

void Scheduler::place(Job job, uint64_t now_ms, uint64_t random) {
  if (job.due_ms > now_ms) {
    const uint64_t due = job.due_ms;
    schedule(std::move(job), due);
  } else {
    enqueue(std::move(job), now_ms, random);
  }
}

std::vector<Job> make_jobs(const spool::MessageInfo& info, uint64_t now_ms, uint32_t recipients_per_transaction) {
  std::vector<Job> jobs;
  if (info.status == spool::MessageStatus::held || info.removal_pending) {
    return jobs;
  }
  // Recipients by domain and by due time, in the message's order.
  struct Group {
    std::string domain;
    uint64_t due_ms;
    std::vector<uint32_t> recipients;
  };
  std::vector<Group> groups;
  for (uint32_t i = 0; i < info.recipients.size(); ++i) {
    const spool::RecipientDelivery state =
        i < info.recipient_states.size() ? info.recipient_states[i] : spool::RecipientDelivery{};
    if (spool::is_final(state.state) || state.final_in_flight) {
      continue;
    }
    // Every recipient due by now is "due now" (0), whatever its recorded time: recipients
    // deferred at different times (say, in an earlier run) share a transaction again.
    uint64_t due = state.state == spool::DeliveryState::deferred ? state.next_attempt_ms : 0;
    if (due <= now_ms) {
      due = 0;
    }
    std::string domain = recipient_domain(info.recipients[i]);
    auto group = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.domain == domain && g.due_ms == due && g.recipients.size() < recipients_per_transaction;
    });
    if (group == groups.end()) {
      groups.push_back(Group{std::move(domain), due, {}});
      group = groups.end() - 1;
    }
    group->recipients.push_back(i);
  }
  for (Group& group : groups) {
    Job job;
    job.message_id = info.id;
    job.due_ms = group.due_ms;
    job.domain = std::move(group.domain);
    job.location = info.location;
    job.arrival_ms = info.arrival_ms;
    job.transaction.sender = info.sender;
    job.transaction.ret = static_cast<smtp::DsnRet>(info.dsn_ret);
    job.transaction.envid = info.dsn_envid;
    job.transaction.size_octets = info.rfc_size;
    job.transaction.body_8bit = info.body_8bit;
    job.transaction.smtputf8 = info.smtputf8;
    for (const uint32_t i : group.recipients) {
      job.recipients.push_back(i);
      job.attempts.push_back(i < info.recipient_states.size() ? info.recipient_states[i].attempts : 0);
      smtp::ClientRecipient recipient;
      recipient.address = info.recipients[i];
      if (i < info.recipient_dsn.size()) {
        recipient.notify = info.recipient_dsn[i].notify;
        recipient.orcpt = info.recipient_dsn[i].orcpt;
      }
      job.transaction.recipients.push_back(std::move(recipient));
    }
    jobs.push_back(std::move(job));
  }
  return jobs;
}

size_t Scheduler::drop_message(std::string_view message_id) {
  size_t dropped = 0;
  const auto matches = [&](const Job& job) {
    if (job.message_id != message_id) {
      return false;
    }
    _ended.push_back(job.origin);
    return true;
  };
  // Handed out but not yet taken by the shard: no longer counted here, ended here.
  std::erase_if(_handoffs, [&](const Handoff& handoff) { return matches(handoff.job); });
  if (const auto parked = _parked.find(std::string(message_id)); parked != _parked.end()) {
    dropped += std::erase_if(parked->second, matches);
    _parked.erase(parked);
  }
  for (auto it = _scheduled.begin(); it != _scheduled.end();) {
    if (matches(it->second)) {
      it = _scheduled.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  for (auto& [name, domain] : _domains) {
    dropped += std::erase_if(domain.waiting, matches);
  }
  for (auto& site : _sites) {
    dropped += std::erase_if(site->ready, matches);
  }
  _jobs_total -= dropped;
  // Without this, what a job in flight defers would be scheduled again after a hold or a delete
  // and sent at its retry time.
  for (auto& [id, in_flight] : _in_flight) {
    if (in_flight.message_id == message_id) {
      in_flight.dropped = true;
    }
  }
  return dropped;
}

size_t Scheduler::flush(std::string_view domain, uint64_t now_ms) {
  size_t released = 0;
  std::vector<Job> due;
  for (auto it = _scheduled.begin(); it != _scheduled.end();) {
    if (domain.empty() || it->second.domain == domain) {
      due.push_back(std::move(it->second));
      it = _scheduled.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& site : _sites) {
    site->down_until_ms = 0;
    site->failures = 0;
  }
  for (Job& job : due) {
    ++released;
    enqueue(std::move(job), now_ms, 0);
  }
  return released;
}

void Scheduler::schedule(Job job, uint64_t at_ms) {
  _scheduled.emplace(at_ms, std::move(job));
}

void Scheduler::tick(uint64_t now_ms, uint64_t random) {
  // A backoff that is over ends here (to_site already ignores it, but sites() would still say
  // "down" until the next connection got through); `failures` stays, so that the next failure
  // doubles the backoff.
  for (auto& site : _sites) {
    if (site->down_until_ms != 0 && site->down_until_ms <= now_ms) {
      site->down_until_ms = 0;
    }
  }
  while (!_scheduled.empty() && _scheduled.begin()->first <= now_ms) {
    Job job = std::move(_scheduled.begin()->second);
    _scheduled.erase(_scheduled.begin());
    enqueue(std::move(job), now_ms, random);
  }
}

std::optional<uint64_t> Scheduler::next_deadline_ms() const {
  if (_scheduled.empty()) {
    return std::nullopt;
  }
  return _scheduled.begin()->first;
}

// ---- routing ------------------------------------------------------------------------------
void Scheduler::enqueue(Job job, uint64_t now_ms, uint64_t random) {
  if (_settings.routes != nullptr) {
    if (const resolver::Route* route = _settings.routes->find(job.domain)) {
      const uint32_t site = site_for(resolver::plan_route(*route), absl::StrCat("route:", route->domain));
      to_site(site, std::move(job), now_ms, random);
      return;
    }
  }
  Domain& domain = _domains[job.domain];
  if (domain.has_plan && now_ms < domain.planned_ms + _settings.plan_reuse_ms) {
    to_site(domain.site, std::move(job), now_ms, random);
    return;
  }
  if (!domain.resolving) {
    domain.resolving = true;
    _resolve_requests.push_back(job.domain);
  }
  domain.waiting.push_back(std::move(job));
}

std::vector<std::string> Scheduler::take_resolve_requests() {
  return std::exchange(_resolve_requests, {});
}

void Scheduler::on_plan(std::string_view name, const resolver::DeliveryPlan& plan, uint64_t now_ms, uint64_t random) {
  auto it = _domains.find(std::string(name));
  if (it == _domains.end()) {
    return;  // not asked for (or forgotten): nothing waits
  }
  Domain& domain = it->second;
  domain.resolving = false;
  std::vector<Job> waiting = std::exchange(domain.waiting, {});
  if (plan.failure) {
    domain.has_plan = false;
    const smtp::RecipientResult reason = plan_failure_result(*plan.failure);
    for (Job& job : waiting) {
      if (reason.status == smtp::DeliveryStatus::bounced) {
        fail(std::move(job), reason, {});
      } else {
        defer(std::move(job), reason, {}, 0, now_ms, random);
      }
    }
    return;
  }
  domain.has_plan = true;
  domain.planned_ms = now_ms;
  domain.site = site_for(plan, {});
  for (Job& job : waiting) {
    to_site(domain.site, std::move(job), now_ms, random);
  }
}

// Sites are keyed by the set of hosts (for a route, its name): the order of a plan changes with
// the rotation, its hosts do not.
uint32_t Scheduler::site_for(const resolver::DeliveryPlan& plan, std::string_view route_name) {
  std::string key;
  if (!route_name.empty()) {
    key = std::string(route_name);
  } else {
    std::vector<std::string> hosts;
    for (const resolver::PlanTarget& target : plan.targets) {
      hosts.push_back(absl::StrCat(target.host, "/", target.address.to_string()));
    }
    std::sort(hosts.begin(), hosts.end());
    hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
    for (const std::string& host : hosts) {
      absl::StrAppend(&key, host, " ");
    }
  }
  auto [it, inserted] = _site_by_key.try_emplace(key, static_cast<uint32_t>(_sites.size()));
  if (inserted) {
    auto site = std::make_unique<Site>();
    site->name = route_name.empty() ? (plan.targets.empty() ? std::string("-") : plan.targets.front().host)
                                    : std::string(route_name);
    site->route_name = std::string(route_name);
    site->owner = site_owner(key, _settings.shards);
    _sites.push_back(std::move(site));
  }
  _sites[it->second]->targets = plan.targets;
  return it->second;
}

void Scheduler::to_site(uint32_t index, Job job, uint64_t now_ms, uint64_t random) {
  Site& site = *_sites[index];
  if (site.owner != _settings.shard) {
    --_jobs_total;  // counted again where it lands
    _handoffs.push_back(Handoff{site.owner, std::move(job), site.targets, site.route_name});
    return;
  }
  if (site.down_until_ms > now_ms) {
    defer(std::move(job), site.down_reason, {}, site.down_until_ms, now_ms, random);
    return;
  }
  job.queued_ms = now_ms;
  site.ready.push_back(std::move(job));
  pump(index);
}

void Scheduler::pump(uint32_t index) {
  Site& site = *_sites[index];
  // Ready jobs that no woken connection is about to take (each takes one). Counting only the
  // ready queue here asked for a new connection for every job after the first that arrived
  // before the woken connections had asked (a batch released by tick, n idle connections:
  // n - 1 extra connections).
  size_t unclaimed = site.ready.size() - std::min(site.ready.size(), site.woken.size());
  // Idle connections take work first, the longest idle first: the connections take turns, so
  // equal-preference hosts share the load as they share the connections (with the most
  // recently idle first, the first host's connections kept every job and the others timed out).
  while (unclaimed > 0 && !site.idle.empty()) {
    _wakes.push_back(site.idle.front());
    site.woken.push_back(site.idle.front());
    site.idle.erase(site.idle.begin());
    ++site.busy;  // until next_job says otherwise
    --unclaimed;
  }
  while (unclaimed > site.starting && site.starting + site.busy + site.idle.size() < _settings.connections_per_site &&
         !site.targets.empty()) {
    ConnectRequest request;
    request.site = index;
    request.site_name = site.name;
    request.targets = site.targets;
    // Spread the site's connections over its first-preference hosts.
    size_t first_group = 1;
    while (first_group < request.targets.size() &&
           request.targets[first_group].preference == request.targets.front().preference) {
      ++first_group;
    }
    std::vector<std::string> hosts;
    for (size_t i = 0; i < first_group; ++i) {
      if (std::find(hosts.begin(), hosts.end(), request.targets[i].host) == hosts.end()) {
        hosts.push_back(request.targets[i].host);
      }
    }
    if (hosts.size() > 1) {
      const std::string& start = hosts[site.connections_made % hosts.size()];
      std::stable_partition(request.targets.begin(), request.targets.begin() + static_cast<ptrdiff_t>(first_group),
                            [&](const resolver::PlanTarget& t) { return t.host == start; });
    }
    ++site.connections_made;
    ++site.starting;
    _connect_requests.push_back(std::move(request));
  }
}

std::vector<ConnectRequest> Scheduler::take_connect_requests() {
  return std::exchange(_connect_requests, {});
}

std::vector<uint64_t> Scheduler::take_wakes() {
  return std::exchange(_wakes, {});
}

// ---- connections ----------------------------------------------------------------------------
std::optional<Job> Scheduler::next_job(uint32_t index, uint64_t connection) {
  SLUICE_ASSERT(index < _sites.size());
  Site& site = *_sites[index];
  // A woken connection was counted busy by pump; a fresh one is counted starting; one that just
  // finished a job is busy.
  std::erase(site.woken, connection);  // it asks now
  if (site.ready.empty()) {
    site.idle.push_back(connection);
    SLUICE_ASSERT(site.busy > 0);
    --site.busy;
    return std::nullopt;
  }
  Job job = std::move(site.ready.front());
  site.ready.pop_front();
  const bool inserted = _in_flight.try_emplace(job.id, InFlight{job.message_id, false}).second;
  SLUICE_ASSERT(inserted, "a job is in flight once");
  ++_in_flight_by_message[job.message_id];
  return job;
}

void Scheduler::connection_up(uint32_t index) {
  Site& site = *_sites[index];
  SLUICE_ASSERT(site.starting > 0);
  --site.starting;
  ++site.busy;
  site.failures = 0;
  site.down_until_ms = 0;
}

void Scheduler::connection_leaves(uint32_t index, uint64_t connection) {
  Site& site = *_sites[index];
  const auto it = std::find(site.idle.begin(), site.idle.end(), connection);
  if (it != site.idle.end()) {
    site.idle.erase(it);
  } else {
    // Woken for work it will not take, or done with its last job.
    std::erase(site.woken, connection);
    SLUICE_ASSERT(site.busy > 0);
    --site.busy;
    pump(index);
  }
}

void Scheduler::connection_closed(uint32_t index) {
  Site& site = *_sites[index];
  SLUICE_ASSERT(site.busy > 0);
  --site.busy;
  // Woken connections are counted busy; one closed here (it should have left) would leave a
  // stale entry that keeps the pump from asking for a connection.
  SLUICE_ASSERT(site.woken.size() <= site.busy, "a woken connection is reported by connection_leaves");
  pump(index);
}

void Scheduler::connection_failed(uint32_t index, const smtp::RecipientResult& reason, uint64_t now_ms,
                                  uint64_t random) {
  Site& site = *_sites[index];
  SLUICE_ASSERT(site.starting > 0);
  --site.starting;
  if (site.busy > 0 || !site.idle.empty()) {
    pump(index);  // others get through: the queue is theirs
    return;
  }
  if (site.starting > 0) {
    return;  // another attempt may still get through: not down yet
  }
  // Every connection failed: one failure of the site, however many connections failed in
  // parallel (counting each would start the first outage at 2^(n-1) x the initial backoff).
  ++site.failures;
  uint64_t backoff = _settings.site_backoff_initial_ms;
  for (uint32_t i = 1; i < site.failures && backoff < _settings.retry.max_ms; ++i) {
    backoff *= 2;
  }
  backoff = std::min(backoff, _settings.retry.max_ms);
  site.down_until_ms = now_ms + backoff;
  site.down_reason = reason;
  std::deque<Job> ready = std::exchange(site.ready, {});
  for (Job& job : ready) {
    defer(std::move(job), reason, {}, site.down_until_ms, now_ms, random);
  }
}

// ---- results ------------------------------------------------------------------------------
void Scheduler::on_job_done(Job job, const std::vector<smtp::RecipientResult>& results, std::string_view remote_mta,
                            uint64_t now_ms, uint64_t random, bool next_hop_dsn) {
  const auto it = _in_flight.find(job.id);
  SLUICE_ASSERT(it != _in_flight.end(), "on_job_done for a job next_job handed out");
  const bool dropped = it->second.dropped;
  _in_flight.erase(it);
  std::vector<bool> success_wanted;
  for (const smtp::ClientRecipient& recipient : job.transaction.recipients) {
    success_wanted.push_back(!next_hop_dsn && (recipient.notify & smtp::kNotifySuccess) != 0);
  }
  const size_t first = _outcomes.size();
  const std::string message_id = job.message_id;
  const bool any_parked = _parked.contains(message_id);
  std::optional<Job> returned;
  if (any_parked) {
    returned = job;  // settle takes the job; unpark needs its recipients and attempts
  }
  settle(std::move(job), results, remote_mta, 0, now_ms, random, !dropped);
  for (size_t i = 0; i < success_wanted.size() && first + i < _outcomes.size(); ++i) {
    Outcome& out = _outcomes[first + i];
    out.relayed = success_wanted[i] && out.outcome.state == spool::DeliveryState::delivered;
  }
  const auto count = _in_flight_by_message.find(message_id);
  SLUICE_ASSERT(count != _in_flight_by_message.end() && count->second > 0, "counted when handed out");
  if (--count->second == 0) {
    _in_flight_by_message.erase(count);
  }
  if (any_parked) {
    unpark(message_id, *returned, first, !dropped, now_ms, random);
  }
}

void Scheduler::unpark(const std::string& message_id, const Job& job, size_t first_outcome, bool retried,
                       uint64_t now_ms, uint64_t random) {
  const auto parked = _parked.find(message_id);
  std::vector<Job>& jobs = parked->second;
  for (size_t i = 0; i < job.recipients.size(); ++i) {
    const Outcome& out = _outcomes[first_outcome + i];
    for (Job& waiting : jobs) {
      const auto at = std::find(waiting.recipients.begin(), waiting.recipients.end(), job.recipients[i]);
      if (at == waiting.recipients.end()) {
        continue;
      }
      const size_t k = static_cast<size_t>(at - waiting.recipients.begin());
      // A deferred recipient whose retry the job kept is the retry's (a release drops the
      // message first, so this is for a caller that added a message twice).
      if (spool::is_final(out.outcome.state) || retried) {
        waiting.recipients.erase(at);
        waiting.attempts.erase(waiting.attempts.begin() + static_cast<ptrdiff_t>(k));
        waiting.transaction.recipients.erase(waiting.transaction.recipients.begin() + static_cast<ptrdiff_t>(k));
      } else {
        waiting.attempts[k] = std::max(waiting.attempts[k], job.attempts[i] + 1);  // this attempt counts
      }
    }
  }
  if (_in_flight_by_message.contains(message_id)) {
    return;  // another job of the message is still out: they wait for it too
  }
  std::vector<Job> ready = std::move(jobs);
  _parked.erase(parked);
  for (Job& waiting : ready) {
    if (waiting.recipients.empty()) {
      --_jobs_total;
      _ended.push_back(waiting.origin);
      continue;
    }
    place(std::move(waiting), now_ms, random);
  }
}

void Scheduler::settle(Job job, const std::vector<smtp::RecipientResult>& results, std::string_view remote_mta,
                       uint64_t not_before_ms, uint64_t now_ms, uint64_t random, bool keep_retry, bool attempted) {
  SLUICE_ASSERT(results.size() == job.recipients.size(), "one result per recipient");
  // The retry job is built from the job handed back: its transaction must be intact (not moved
  // into the client session).
  SLUICE_ASSERT(job.transaction.recipients.size() == job.recipients.size(), "the job comes back whole");
  Job retry = job;
  retry.recipients.clear();
  retry.attempts.clear();
  retry.transaction.recipients.clear();
  retry.queued_ms = 0;
  uint64_t retry_at_ms = 0;
  const uint64_t give_up_ms = job.arrival_ms + _settings.retry.lifetime_ms;
  for (size_t i = 0; i < results.size(); ++i) {
    const smtp::RecipientResult& result = results[i];
    Outcome out;
    out.message_id = job.message_id;
    out.origin = job.origin;
    out.recipient = job.recipients[i];
    out.address = job.transaction.recipients[i].address;
    out.domain = job.domain;
    out.unattempted = !attempted;
    out.outcome.last_reply = reply_line(result);
    out.status = result.enhanced.to_string();
    out.remote_mta = std::string(remote_mta);
    if (result.status == smtp::DeliveryStatus::delivered) {
      out.outcome.state = spool::DeliveryState::delivered;
    } else if (result.status == smtp::DeliveryStatus::bounced) {
      out.outcome.state = spool::DeliveryState::bounced;
    } else {
      // One random draw for the whole job: its deferred recipients stay together.
      const uint32_t attempts = job.attempts[i] + 1;
      const RetryDecision decision = after_temporary_failure(_settings.retry, job.arrival_ms, now_ms, attempts, random);
      if (decision.expired) {
        out.outcome.state = spool::DeliveryState::bounced;
      } else {
        out.outcome.state = spool::DeliveryState::deferred;
        out.outcome.next_attempt_ms = std::min(std::max(decision.next_attempt_ms, not_before_ms), give_up_ms);
        retry_at_ms = std::max(retry_at_ms, out.outcome.next_attempt_ms);
        retry.recipients.push_back(job.recipients[i]);
        retry.attempts.push_back(attempts);
        retry.transaction.recipients.push_back(job.transaction.recipients[i]);
      }
    }
    _outcomes.push_back(std::move(out));
  }
  if (retry.recipients.empty() || !keep_retry) {
    --_jobs_total;
    _ended.push_back(job.origin);
    return;
  }
  schedule(std::move(retry), retry_at_ms);
}

void Scheduler::defer(Job job, const smtp::RecipientResult& reason, std::string_view remote_mta, uint64_t not_before_ms,
                      uint64_t now_ms, uint64_t random) {
  smtp::RecipientResult result = reason;
  result.status = smtp::DeliveryStatus::deferred;
  const std::vector<smtp::RecipientResult> results(job.recipients.size(), result);
  settle(std::move(job), results, remote_mta, not_before_ms, now_ms, random, true, false);
}

void Scheduler::fail(Job job, const smtp::RecipientResult& reason, std::string_view remote_mta) {
  smtp::RecipientResult result = reason;
  result.status = smtp::DeliveryStatus::bounced;
  const std::vector<smtp::RecipientResult> results(job.recipients.size(), result);
  settle(std::move(job), results, remote_mta, 0, 0, 0, true, false);
}

size_t Scheduler::drop_all() {
  size_t dropped = 0;
  for (auto& [at, job] : _scheduled) {
    _ended.push_back(job.origin);
    ++dropped;
  }
  _scheduled.clear();
  for (auto& [name, domain] : _domains) {
    for (const Job& job : domain.waiting) {
      _ended.push_back(job.origin);
      ++dropped;
    }
    domain.waiting.clear();
  }
  for (auto& site : _sites) {
    for (const Job& job : site->ready) {
      _ended.push_back(job.origin);
      ++dropped;
    }
    site->ready.clear();
  }
  for (auto& [message_id, jobs] : _parked) {
    for (const Job& job : jobs) {
      _ended.push_back(job.origin);
      ++dropped;
    }
  }
  _parked.clear();
  for (const Handoff& handoff : _handoffs) {
    _ended.push_back(handoff.job.origin);  // not counted in _jobs_total any more
  }
  _handoffs.clear();
  _jobs_total -= dropped;
  for (auto& [id, in_flight] : _in_flight) {
    in_flight.dropped = true;
  }
  return dropped;
}

std::vector<uint32_t> Scheduler::take_ended() {
  return std::exchange(_ended, {});
}

std::vector<Outcome> Scheduler::take_outcomes() {
  return std::exchange(_outcomes, {});
}

std::vector<SiteSummary> Scheduler::sites() const {
  std::vector<SiteSummary> out;
  for (const auto& site : _sites) {
    if (site->owner != _settings.shard) {
      continue;
    }
    out.push_back(SiteSummary{site->name, site->ready.size(),
                              site->starting + site->busy + static_cast<uint32_t>(site->idle.size()),
                              site->down_until_ms != 0});
  }
  return out;
}

}  // namespace sluice::relay
