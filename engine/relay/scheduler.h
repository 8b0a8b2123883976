#pragma once
// The delivery scheduler of one shard (DESIGN.md section 2, "Delivery"): what to send, where, on
// which connection, and what each attempt's results mean for the spool. Sans-I/O, like the
// server session and the spool: it opens no socket, asks no DNS server and writes no record; the
// shard's delivery code (engine/app/outbound.cc) does those when the scheduler asks, and tells it
// what happened. Times are wall-clock milliseconds (retry times are kept in the spool and must
// survive a restart); it keeps no clock of its own and takes its randomness from the caller.
//
// Its parts:
// * Jobs: one transaction's worth of work, the recipients of one message at one domain, at most
//   recipients_per_transaction of them (more are split into several jobs). A job carries the
//   whole ClientTransaction, so sending needs no second look-up.
// * Domains: a recipient domain and what the resolver (or a [[route]]) last said about it. Jobs
//   of a domain whose plan is older than plan_reuse_ms wait while the resolver is asked again
//   (once for all of them: the resolver's cache honours the TTLs, this only bounds how often).
// * Sites: domains whose plans name the same hosts share one site (KumoMTA's site rollup): one
//   ready queue, one connection pool, one backoff. A route's site is its next hop.
// * The scheduled queue: jobs deferred until a definite time, ordered by it; tick() releases
//   them. Every job is always in exactly one place: scheduled, waiting for its domain's plan,
//   ready at its site, in flight on a connection (then the shard owes on_job_done), or parked
//   behind a job of its message that is in flight.
// * Parked jobs: a message added again (an admin release, which drops and re-adds it) while one
//   of its jobs is on a connection would otherwise send that job's recipients a second time. Its
//   new jobs wait until the message has nothing in flight; then the recipients those jobs made
//   final are taken out, and the rest go on as usual.
//
// Decisions:
// * A connection is asked for only while the site's ready queue is deeper than its connections
//   that are starting, idle or woken (those will take work soon), up to connections_per_site.
// * A site whose connections all fail (no address took a connection, or every one refused at
//   the greeting) is down as a unit for an exponential backoff (site_backoff_initial_ms doubling
//   to the retry policy's max): its ready jobs, and jobs that reach it meanwhile, are deferred
//   at once with the failure's reply, without a connection (Postfix's "delivery temporarily
//   suspended"). A connection that gets through ends the backoff.
// * A deferral counts an attempt; the next one follows relay::after_temporary_failure (the job's
//   recipients share one random draw, so they stay together), no sooner than the site's backoff
//   ends. Past the lifetime a temporary failure is final: bounced, with the last reply.
// * Results are handed out as outcomes (take_outcomes) for the shard to journal; the scheduler
//   forgets delivered and bounced recipients at once (it never sends a recipient twice in one
//   run; a crash before the record is durable can, which is the duplicate the design allows).
// * Rotation among equal-preference hosts is the resolver's (per plan); in addition each new
//   connection of a site starts one host further among the first preference's hosts, so that
//   a site's connections spread over its equal MX hosts.
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/relay/retry_schedule.h"
#include "engine/smtp/client_session.h"
#include "resolver/mx_plan.h"
#include "spool/spool.h"

namespace sluice::relay {

struct SchedulerSettings {
  RetryPolicy retry;
  uint32_t connections_per_site = 20;
  uint32_t recipients_per_transaction = 100;  // at most smtp::kClientRecipientsMax
  uint64_t site_backoff_initial_ms = 60'000;
  uint64_t plan_reuse_ms = 5'000;
  const resolver::RouteTable* routes = nullptr;  // null or empty: MX for every domain
  // This scheduler's shard, of how many: every site belongs to one shard (site_owner), and a job
  // whose site is another shard's is handed to it (take_handoffs), so that the domains of one
  // provider share one queue and one connection pool whichever shard received their mail.
  uint32_t shard = 0;
  uint32_t shards = 1;
};

// One transaction to send: the recipients of one message at one domain.
struct Job {
  uint64_t id = 0;      // the scheduler's, given by add_job
  uint32_t origin = 0;  // the shard whose spool holds the message: its outcomes are journaled there
  std::string message_id;
  std::string domain;
  std::vector<uint32_t> recipients;     // indices in the message's recipient list
  std::vector<uint32_t> attempts;       // parallel: failed attempts so far
  smtp::ClientTransaction transaction;  // transaction.recipients parallel to `recipients`
  spool::MessageLocation location;
  std::string segment_path;  // the segment file holding the body (read by the owner shard)
  uint64_t arrival_ms = 0;
  uint64_t due_ms = 0;  // when first due (0: now); the scheduled queue keeps it afterwards
  uint64_t queued_ms = 0;  // when it became ready at its site (for the queue summary)
};

// What one attempt at one recipient came to, for the journal (spool::ShardSpool::record_outcome),
// the log and, when bounced, the DSN.
struct Outcome {
  uint32_t origin = 0;  // the shard that journals it (Job::origin)
  std::string message_id;
  uint32_t recipient = 0;
  spool::RecipientOutcome outcome;  // state, next_attempt_ms, last_reply
  std::string status;               // enhanced status code, "5.1.1"
  std::string remote_mta;           // the host that answered, or empty
  std::string address;              // the recipient (for the log)
  std::string domain;               // its domain
  // Decided without a connection (DNS, a site down, every connection failed): no connection
  // logged the attempt, so whoever journals it logs it.
  bool unattempted = false;
  // Delivered to a next hop without DSN for a recipient with NOTIFY=SUCCESS (RFC 3461 5.2.2):
  // the sender is owed a DSN saying "relayed".
  bool relayed = false;
};

// A job on its way to the shard that owns its site, with what chose the site: the plan's
// targets, or the [[route]] ("route:DOMAIN").
struct Handoff {
  uint32_t owner = 0;
  Job job;
  std::vector<resolver::PlanTarget> targets;
  std::string route_name;
};

// The shard that owns the site with this key: the same on every thread and in every run
// (FNV-1a; absl's hash is seeded per process).
uint32_t site_owner(std::string_view site_key, uint32_t shards);

// The shard should open a connection for `site`, trying `targets` in order.
struct ConnectRequest {
  uint32_t site = 0;
  std::string site_name;
  std::vector<resolver::PlanTarget> targets;
};

struct SiteSummary {
  std::string name;
  size_t ready = 0;
  uint32_t connections = 0;
  bool down = false;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerSettings settings) : _settings(std::move(settings)) {}

  // A stored message: its recipients that are not final become jobs (due now, or at their
  // recorded next attempt). Held messages are skipped (release adds them again).
  void add_message(const spool::MessageInfo& info, uint64_t now_ms, uint64_t random);
  // One job made by make_jobs (possibly on another shard): due now, or at job.due_ms; parked
  // while a job of its message is in flight.
  void add_job(Job job, uint64_t now_ms, uint64_t random);
  // A job another shard's scheduler handed over (its Handoff): to its site here, parked while a
  // job of its message is in flight here.
  void add_handoff(Handoff handoff, uint64_t now_ms, uint64_t random);
  // Jobs whose site is another shard's, for the shard to send there. A job handed out has left
  // this scheduler (jobs() no longer counts it) without ending: the receiver ends it.
  std::vector<Handoff> take_handoffs();
  // Forgets every job not in flight (the drain: the spool keeps their state); returns how many.
  size_t drop_all();
  // One entry per job the scheduler let go of (every recipient final, dropped, or a retry
  // not kept): the job's origin. The origin counts its jobs out with these.
  std::vector<uint32_t> take_ended();
  // Forgets every job of `message_id` not in flight (delete, hold), parked ones too; returns how
  // many. Its jobs
  // in flight still report through on_job_done (their outcomes are real), but what they defer
  // is not tried again (release adds the message again).
  size_t drop_message(std::string_view message_id);
  // Scheduled jobs (of one domain, or all with an empty one) become due now; down sites are up.
  size_t flush(std::string_view domain, uint64_t now_ms);

  // Releases the scheduled jobs that are due, ends site backoffs that are over.
  void tick(uint64_t now_ms, uint64_t random);
  // The next time tick() has something to do; nullopt if nothing is scheduled.
  std::optional<uint64_t> next_deadline_ms() const;

  // Domains to resolve (each once until on_plan).
  std::vector<std::string> take_resolve_requests();
  void on_plan(std::string_view domain, const resolver::DeliveryPlan& plan, uint64_t now_ms, uint64_t random);

  std::vector<ConnectRequest> take_connect_requests();
  // A connection of `site` is ready for a transaction (after its handshake, or after the last
  // one): the next job, or nullopt (it is then idle, woken through take_wakes()).
  std::optional<Job> next_job(uint32_t site, uint64_t connection);
  // Idle connections that have work now: the shard calls next_job for each.
  std::vector<uint64_t> take_wakes();
  // Every connection that came up is reported gone exactly once: by connection_leaves or by
  // connection_closed, never both (each takes it out of the site's count).
  // connection_leaves: a connection that holds no job goes away: idle (idle timeout, drain, or
  // lost while idle), woken but not yet asking, or done with its last job (its message limit).
  // No more work for it; after it the shard does not call connection_closed for it.
  void connection_leaves(uint32_t site, uint64_t connection);
  // A requested connection got through its handshake: the site is up.
  void connection_up(uint32_t site);
  // A requested connection ended without ever being ready (every target failed): `reason` is
  // the last failure, as a recipient result. May put the site down.
  void connection_failed(uint32_t site, const smtp::RecipientResult& reason, uint64_t now_ms, uint64_t random);
  // A ready connection that is not idle ended (lost during a transaction, or after its QUIT
  // between next_job calls); its in-flight job was reported first. Never for an idle one: that
  // is connection_leaves, which also takes it off the idle list.
  void connection_closed(uint32_t site);

  // A job's results (one per recipient, in order) from the host `remote_mta`. `job` is the one
  // next_job handed out, whole (its transaction is copied into the retry of what is deferred).
  // The shard calls it exactly once per job, also when the connection was lost (then deferred).
  // next_hop_dsn: the server offered DSN (NOTIFY was passed on); without it a delivered
  // recipient that asked for NOTIFY=SUCCESS is owed a "relayed" DSN (Outcome::relayed).
  void on_job_done(Job job, const std::vector<smtp::RecipientResult>& results, std::string_view remote_mta,
                   uint64_t now_ms, uint64_t random, bool next_hop_dsn = true);
  std::vector<Outcome> take_outcomes();

  // Jobs anywhere (scheduled, waiting, ready, in flight, parked), not those handed out.
  size_t jobs() const { return _jobs_total; }
  size_t jobs_in_flight() const { return _in_flight.size(); }
  size_t scheduled() const { return _scheduled.size(); }
  std::vector<SiteSummary> sites() const;  // the sites this shard owns

 private:
  struct Site {
    std::string name;
    std::string route_name;  // a [[route]]'s site: its key; empty for an MX site
    uint32_t owner = 0;      // site_owner of its key
    std::vector<resolver::PlanTarget> targets;  // the newest plan of any of its domains
    std::deque<Job> ready;
    uint32_t starting = 0;  // requested, not yet ready or failed
    uint32_t busy = 0;
    std::vector<uint64_t> idle;
    std::vector<uint64_t> woken;  // taken from idle by pump (counted busy), not yet in next_job
    uint32_t failures = 0;        // connection failures in a row
    uint64_t down_until_ms = 0;
    smtp::RecipientResult down_reason;
    uint64_t connections_made = 0;  // for the start host of the next one
  };
  struct Domain {
    bool resolving = false;
    bool has_plan = false;
    uint64_t planned_ms = 0;
    uint32_t site = 0;
    std::vector<Job> waiting;
  };

  // A job that may go on now: scheduled if due later, else on to its domain.
  void place(Job job, uint64_t now_ms, uint64_t random);
  void enqueue(Job job, uint64_t now_ms, uint64_t random);
  // After a job of `message_id` came back: takes out of its parked jobs the recipients the
  // job's outcomes (from _outcomes[first_outcome] on) made final (or, `retried`, kept in its own
  // retry), and places them once the message has nothing in flight.
  void unpark(const std::string& message_id, const Job& job, size_t first_outcome, bool retried, uint64_t now_ms,
              uint64_t random);
  void to_site(uint32_t site, Job job, uint64_t now_ms, uint64_t random);
  uint32_t site_for(const resolver::DeliveryPlan& plan, std::string_view route_name);
  void pump(uint32_t site);
  void schedule(Job job, uint64_t at_ms);
  void defer(Job job, const smtp::RecipientResult& reason, std::string_view remote_mta, uint64_t not_before_ms,
             uint64_t now_ms, uint64_t random);
  void fail(Job job, const smtp::RecipientResult& reason, std::string_view remote_mta);
  // keep_retry false: the message was dropped, its deferred recipients get no retry job.
  // attempted: a connection carried the job (its owner logs the attempt); false for results
  // decided here (DNS, a site down, no connection), which Outcome::unattempted marks.
  void settle(Job job, const std::vector<smtp::RecipientResult>& results, std::string_view remote_mta,
              uint64_t not_before_ms, uint64_t now_ms, uint64_t random, bool keep_retry = true,
              bool attempted = true);

  SchedulerSettings _settings;
  uint64_t _next_job_id = 1;
  size_t _jobs_total = 0;
  // Jobs in flight by id (unique while in flight; at most one per connection, so drop_message
  // scans them): their message, and whether drop_message dropped it.
  struct InFlight {
    std::string message_id;
    bool dropped = false;
  };
  absl::flat_hash_map<uint64_t, InFlight> _in_flight;
  absl::flat_hash_map<std::string, uint32_t> _in_flight_by_message;  // jobs in flight per message
  absl::flat_hash_map<std::string, std::vector<Job>> _parked;        // by message
  std::multimap<uint64_t, Job> _scheduled;  // by next attempt
  absl::flat_hash_map<std::string, Domain> _domains;
  std::vector<std::unique_ptr<Site>> _sites;
  absl::flat_hash_map<std::string, uint32_t> _site_by_key;
  std::vector<std::string> _resolve_requests;
  std::vector<ConnectRequest> _connect_requests;
  std::vector<uint64_t> _wakes;
  std::vector<Outcome> _outcomes;
  std::vector<uint32_t> _ended;
  std::vector<Handoff> _handoffs;
};

// The jobs for a stored message's recipients that are not final: by domain, at most
// recipients_per_transaction each; recipients deferred to later than now_ms wait for their
// time (due_ms). None for a held message or one being removed. origin and segment_path are the
// caller's to fill in.
std::vector<Job> make_jobs(const spool::MessageInfo& info, uint64_t now_ms, uint32_t recipients_per_transaction);

// The recipient's domain, lower case ("" for an address without one).
std::string recipient_domain(std::string_view address);

}  // namespace sluice::relay
