// Tests for the delivery scheduler, with the test playing the shard: it adds stored messages,
// answers resolve requests with hand-made plans, opens (or fails) the connections asked for, runs
// jobs and reports their results, and checks the outcomes the journal would get. Covered: jobs
// per message and domain (split, final, deferred, held recipients), resolve merging and plan
// reuse, plan failures, routes, sites shared by host set, the pump rule, the spread over
// equal-preference hosts, retry times and the lifetime, site backoff as a unit, wakes of idle
// connections, drop and flush, and the job counts.
#include "engine/relay/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/io/address.h"
#include "engine/relay/retry_schedule.h"
#include "engine/smtp/client_session.h"
#include "resolver/mx_plan.h"
#include "spool/spool.h"

namespace sluice::relay {
namespace {

using resolver::DeliveryPlan;
using resolver::PlanFailure;
using resolver::PlanTarget;
using spool::DeliveryState;
using spool::MessageInfo;

constexpr uint64_t kStart = 1'800'000'000'000;  // wall-clock ms, any time will do
constexpr uint64_t kInitial = 5 * 60 * 1000;
constexpr uint64_t kMax = 60 * 60 * 1000;
constexpr uint64_t kLifetime = 5ull * 24 * 60 * 60 * 1000;
constexpr uint64_t kSiteBackoff = 60'000;
constexpr uint64_t kPlanReuse = 5'000;

SchedulerSettings default_settings() {
  SchedulerSettings settings;
  settings.retry = RetryPolicy{kInitial, kMax, kLifetime, 10};
  settings.connections_per_site = 20;
  settings.recipients_per_transaction = 100;
  settings.site_backoff_initial_ms = kSiteBackoff;
  settings.plan_reuse_ms = kPlanReuse;
  return settings;
}

io::SocketAddress address(std::string_view text, uint16_t port = 25) {
  absl::StatusOr<io::SocketAddress> parsed = io::parse_ip(text, port);
  if (!parsed.ok()) {
    __builtin_trap();  // the test wrote a bad address
  }
  return *parsed;
}

PlanTarget target(std::string host, uint16_t preference, std::string_view ip) {
  return PlanTarget{std::move(host), preference, address(ip)};
}

DeliveryPlan plan(std::vector<PlanTarget> targets) {
  return DeliveryPlan{std::nullopt, std::move(targets), false};
}

DeliveryPlan failed_plan(PlanFailure failure) {
  return DeliveryPlan{failure, {}, false};
}

// One MX host with one address: the usual plan of a test domain.
DeliveryPlan one_host(std::string host, std::string_view ip) {
  return plan({target(std::move(host), 10, ip)});
}

MessageInfo message(std::string id, std::vector<std::string> recipients, uint64_t arrival_ms = kStart) {
  MessageInfo info;
  info.id = std::move(id);
  info.sender = "sender@origin.example";
  info.recipients = std::move(recipients);
  info.recipient_states.resize(info.recipients.size());
  info.rfc_size = 1234;
  info.arrival_ms = arrival_ms;
  info.location.segment_id = 7;
  info.location.wire_offset = 4096;
  info.location.wire_length = 1234;
  return info;
}

smtp::RecipientResult reply(smtp::DeliveryStatus status, uint16_t code, smtp::EnhancedStatus enhanced,
                            std::string text) {
  smtp::RecipientResult result;
  result.status = status;
  result.cause = smtp::ResultCause::reply;
  result.command = smtp::ClientCommand::data_end;
  result.code = code;
  result.enhanced = enhanced;
  result.text = std::move(text);
  return result;
}
smtp::RecipientResult delivered() {
  return reply(smtp::DeliveryStatus::delivered, 250, {2, 0, 0}, "2.0.0 Ok: queued as 1");
}
smtp::RecipientResult deferred() {
  return reply(smtp::DeliveryStatus::deferred, 451, {4, 3, 0}, "4.3.0 try later");
}
smtp::RecipientResult bounced() {
  return reply(smtp::DeliveryStatus::bounced, 550, {5, 1, 1}, "5.1.1 no such user");
}
// What the shard reports when no address of a site took a connection.
smtp::RecipientResult connect_failure() {
  smtp::RecipientResult result;
  result.status = smtp::DeliveryStatus::deferred;
  result.cause = smtp::ResultCause::connect_failed;
  result.enhanced = {4, 4, 1};
  result.text = "connect to 192.0.2.1:25: timed out";
  return result;
}

// The shard's side: the scheduler, the clock, and the connections it opened.
struct Shard {
  explicit Shard(SchedulerSettings settings = default_settings()) : scheduler(std::move(settings)) {}

  void add(const MessageInfo& info) { scheduler.add_message(info, now, random); }
  void answer(std::string_view domain, const DeliveryPlan& delivery_plan) {
    scheduler.on_plan(domain, delivery_plan, now, random);
  }
  // Connects every requested connection: returns their ids.
  std::vector<uint64_t> connect_all(uint32_t site) {
    std::vector<uint64_t> ids;
    for (const ConnectRequest& request : scheduler.take_connect_requests()) {
      EXPECT_EQ(request.site, site);
      scheduler.connection_up(site);
      ids.push_back(next_connection++);
    }
    return ids;
  }
  // Each message (one job each, at x.example) on a connection of its own, numbered 1, 2, ...:
  // the jobs in the messages' order.
  std::vector<Job> in_flight_at_x(const std::vector<MessageInfo>& infos) {
    for (const MessageInfo& info : infos) {
      add(info);
    }
    scheduler.take_resolve_requests();
    answer("x.example", one_host("mx.x.example", "192.0.2.1"));
    EXPECT_EQ(scheduler.take_connect_requests().size(), infos.size());
    std::vector<Job> jobs;
    for (uint64_t connection = 1; connection <= infos.size(); ++connection) {
      scheduler.connection_up(0);
      if (std::optional<Job> job = scheduler.next_job(0, connection)) {
        EXPECT_EQ(job->message_id, infos[jobs.size()].id);
        jobs.push_back(std::move(*job));
      }
    }
    EXPECT_EQ(jobs.size(), infos.size());
    return jobs;
  }
  void done(Job job, std::vector<smtp::RecipientResult> results, std::string_view mta = "mx.example.net") {
    scheduler.on_job_done(std::move(job), results, mta, now, random);
  }
  // Runs `connection` until it is idle, every job getting `result` for each recipient.
  size_t drain(uint32_t site, uint64_t connection, const smtp::RecipientResult& result) {
    size_t jobs = 0;
    while (std::optional<Job> job = scheduler.next_job(site, connection)) {
      const std::vector<smtp::RecipientResult> results(job->recipients.size(), result);
      done(std::move(*job), results);
      ++jobs;
    }
    return jobs;
  }

  Scheduler scheduler;
  uint64_t now = kStart;
  uint64_t random = 30'000;  // with 10% jitter on 5 minutes: exactly 5 minutes
  uint64_t next_connection = 100;
};

std::vector<DeliveryState> states_of(const std::vector<Outcome>& outcomes) {
  std::vector<DeliveryState> states;
  for (const Outcome& outcome : outcomes) {
    states.push_back(outcome.outcome.state);
  }
  return states;
}

// ---- jobs in --------------------------------------------------------------------------------
TEST(SchedulerTest, RecipientDomain) {
  EXPECT_EQ(recipient_domain("User@Example.COM"), "example.com");
  EXPECT_EQ(recipient_domain("user@example.com."), "example.com");
  EXPECT_EQ(recipient_domain("\"a@b\"@c.example"), "c.example");
  EXPECT_EQ(recipient_domain("postmaster"), "");
}

TEST(SchedulerTest, TwoDomainsMakeTwoJobsCarryingTheTransaction) {
  Shard shard;
  MessageInfo info = message("m1", {"a@x.example", "b@y.example", "c@X.Example"});
  info.body_8bit = true;
  info.dsn_ret = spool::DsnRet::hdrs;
  info.dsn_envid = "env1";
  info.recipient_dsn.resize(3);
  info.recipient_dsn[2].notify = 5;
  info.recipient_dsn[2].orcpt = "rfc822;c@x.example";
  shard.add(info);
  EXPECT_EQ(shard.scheduler.jobs(), 2u);
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"x.example", "y.example"}));
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  shard.answer("y.example", one_host("mx.y.example", "192.0.2.2"));
  const std::vector<ConnectRequest> requests = shard.scheduler.take_connect_requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_NE(requests[0].site, requests[1].site);
  EXPECT_EQ(requests[0].site_name, "mx.x.example");
  EXPECT_EQ(requests[0].targets, one_host("mx.x.example", "192.0.2.1").targets);

  shard.scheduler.connection_up(requests[0].site);
  std::optional<Job> job = shard.scheduler.next_job(requests[0].site, 1);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(shard.scheduler.jobs_in_flight(), 1u);
  EXPECT_EQ(job->message_id, "m1");
  EXPECT_EQ(job->domain, "x.example");
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{0, 2}));
  EXPECT_EQ(job->attempts, (std::vector<uint32_t>{0, 0}));
  ASSERT_EQ(job->transaction.recipients.size(), 2u);
  EXPECT_EQ(job->transaction.recipients[0].address, "a@x.example");
  EXPECT_EQ(job->transaction.recipients[1].address, "c@X.Example");
  EXPECT_EQ(job->transaction.recipients[1].notify, 5);
  EXPECT_EQ(job->transaction.recipients[1].orcpt, "rfc822;c@x.example");
  EXPECT_EQ(job->transaction.sender, "sender@origin.example");
  EXPECT_EQ(job->transaction.ret, smtp::DsnRet::hdrs);
  EXPECT_EQ(job->transaction.envid, "env1");
  EXPECT_EQ(job->transaction.size_octets, 1234u);
  EXPECT_TRUE(job->transaction.body_8bit);
  EXPECT_EQ(job->location.segment_id, 7u);
  EXPECT_EQ(job->location.wire_offset, 4096u);
  EXPECT_EQ(job->arrival_ms, kStart);
}

TEST(SchedulerTest, SplitsAboveRecipientsPerTransaction) {
  SchedulerSettings settings = default_settings();
  settings.recipients_per_transaction = 2;
  Shard shard(settings);
  shard.add(message("m1", {"a@x.example", "b@x.example", "c@y.example", "d@x.example", "e@x.example", "f@x.example"}));
  EXPECT_EQ(shard.scheduler.jobs(), 4u);  // x: 2 + 2 + 1, y: 1
  EXPECT_EQ(shard.scheduler.take_resolve_requests().size(), 2u);
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_FALSE(connections.empty());
  std::vector<std::vector<uint32_t>> batches;
  while (std::optional<Job> job = shard.scheduler.next_job(0, connections[0])) {
    batches.push_back(job->recipients);
    EXPECT_EQ(job->transaction.recipients.size(), job->recipients.size());
    shard.done(std::move(*job), std::vector<smtp::RecipientResult>(batches.back().size(), delivered()));
  }
  EXPECT_EQ(batches, (std::vector<std::vector<uint32_t>>{{0, 1}, {3, 4}, {5}}));
  EXPECT_EQ(shard.scheduler.jobs(), 1u);  // y's
}

TEST(SchedulerTest, FinalRecipientsAreSkipped) {
  Shard shard;
  MessageInfo info = message("m1", {"a@x.example", "b@x.example", "c@x.example", "d@x.example"});
  info.recipient_states[0].state = DeliveryState::delivered;
  info.recipient_states[1].state = DeliveryState::bounced;
  info.recipient_states[2].final_in_flight = true;  // its final record is on its way
  shard.add(info);
  EXPECT_EQ(shard.scheduler.jobs(), 1u);
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"x.example"}));
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  std::optional<Job> job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{3}));

  Shard all_final;
  MessageInfo done_info = message("m2", {"a@x.example"});
  done_info.recipient_states[0].state = DeliveryState::delivered;
  all_final.add(done_info);
  EXPECT_EQ(all_final.scheduler.jobs(), 0u);
  EXPECT_TRUE(all_final.scheduler.take_resolve_requests().empty());
}

TEST(SchedulerTest, HeldAndRemovedMessagesAreSkipped) {
  Shard shard;
  MessageInfo held = message("m1", {"a@x.example"});
  held.status = spool::MessageStatus::held;
  shard.add(held);
  MessageInfo removing = message("m2", {"a@x.example"});
  removing.removal_pending = true;
  shard.add(removing);
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
  EXPECT_TRUE(shard.scheduler.take_resolve_requests().empty());
}

TEST(SchedulerTest, DeferredRecipientsWaitForTheirNextAttempt) {
  Shard shard;
  MessageInfo info = message("m1", {"a@x.example", "b@x.example", "c@x.example"});
  info.recipient_states[0].state = DeliveryState::deferred;
  info.recipient_states[0].attempts = 2;
  info.recipient_states[0].next_attempt_ms = kStart + 10'000;
  info.recipient_states[1].state = DeliveryState::deferred;  // due already
  info.recipient_states[1].attempts = 1;
  info.recipient_states[1].next_attempt_ms = kStart - 1;
  shard.add(info);
  EXPECT_EQ(shard.scheduler.jobs(), 2u);
  EXPECT_EQ(shard.scheduler.scheduled(), 1u);
  EXPECT_EQ(shard.scheduler.next_deadline_ms(), kStart + 10'000);
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"x.example"}));
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  std::optional<Job> job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(job->attempts, (std::vector<uint32_t>{1, 0}));
  shard.done(std::move(*job), {delivered(), delivered()});
  EXPECT_FALSE(shard.scheduler.next_job(0, connections[0]).has_value());  // idle

  shard.scheduler.tick(kStart + 9'999, 0);
  EXPECT_EQ(shard.scheduler.scheduled(), 1u);
  EXPECT_TRUE(shard.scheduler.take_wakes().empty());
  shard.now = kStart + 10'000;
  shard.scheduler.tick(shard.now, 0);
  EXPECT_EQ(shard.scheduler.scheduled(), 0u);
  EXPECT_EQ(shard.scheduler.next_deadline_ms(), std::nullopt);
  // The plan is older than plan_reuse_ms: asked again.
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"x.example"}));
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  EXPECT_EQ(shard.scheduler.take_wakes(), (std::vector<uint64_t>{connections[0]}));
  job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{0}));
  EXPECT_EQ(job->attempts, (std::vector<uint32_t>{2}));
  // Its third failure: 4 x initial, jitter 0 with random 2 x spread / 2.
  shard.random = 4 * kInitial / 10;
  shard.done(std::move(*job), {deferred()});
  const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 3u);
  EXPECT_EQ(outcomes[2].outcome.state, DeliveryState::deferred);
  EXPECT_EQ(outcomes[2].outcome.next_attempt_ms, shard.now + 4 * kInitial);
}

// ---- resolving ----------------------------------------------------------------------------
TEST(SchedulerTest, OneResolveRequestPerDomainHoweverManyJobsWait) {
  Shard shard;
  for (int i = 0; i < 5; ++i) {
    shard.add(message(absl::StrCat("m", i), {"a@x.example", "b@y.example"}));
  }
  EXPECT_EQ(shard.scheduler.jobs(), 10u);
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"x.example", "y.example"}));
  shard.add(message("m9", {"c@x.example"}));
  EXPECT_TRUE(shard.scheduler.take_resolve_requests().empty());  // still being resolved
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  EXPECT_EQ(shard.scheduler.sites().size(), 1u);
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 6u);
  // An answer nobody asked for changes nothing.
  shard.answer("z.example", one_host("mx.z.example", "192.0.2.9"));
  EXPECT_EQ(shard.scheduler.sites().size(), 1u);
  EXPECT_EQ(shard.scheduler.jobs(), 11u);
}

TEST(SchedulerTest, PlanIsReusedWithinPlanReuseMsThenResolvedAgain) {
  Shard shard;
  shard.add(message("m1", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_resolve_requests().size(), 1u);
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 1u);

  shard.now = kStart + kPlanReuse - 1;
  shard.add(message("m2", {"a@x.example"}));
  EXPECT_TRUE(shard.scheduler.take_resolve_requests().empty());
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 2u);

  shard.now = kStart + kPlanReuse;
  shard.add(message("m3", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"x.example"}));
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 2u);  // m3 waits for the new plan
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  EXPECT_EQ(shard.scheduler.sites().size(), 1u);  // same hosts, same site
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 3u);
}

TEST(SchedulerTest, PermanentPlanFailuresBounceWithTheirStatus) {
  struct Case {
    PlanFailure failure;
    std::string status;
  };
  for (const Case& c : {Case{PlanFailure::null_mx, "5.1.10"}, Case{PlanFailure::no_such_domain, "5.1.2"}}) {
    SCOPED_TRACE(c.status);
    Shard shard;
    shard.add(message("m1", {"a@x.example", "b@x.example"}));
    shard.add(message("m2", {"c@x.example"}));
    ASSERT_EQ(shard.scheduler.take_resolve_requests().size(), 1u);
    shard.answer("x.example", failed_plan(c.failure));
    const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
    ASSERT_EQ(outcomes.size(), 3u);
    for (const Outcome& outcome : outcomes) {
      EXPECT_EQ(outcome.outcome.state, DeliveryState::bounced);
      EXPECT_EQ(outcome.status, c.status);
      EXPECT_EQ(outcome.outcome.last_reply.rfind(c.status + " ", 0), 0u) << outcome.outcome.last_reply;
      EXPECT_EQ(outcome.remote_mta, "");
    }
    EXPECT_EQ(outcomes[0].message_id, "m1");
    EXPECT_EQ(outcomes[1].recipient, 1u);
    EXPECT_EQ(outcomes[2].message_id, "m2");
    EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
    EXPECT_EQ(shard.scheduler.jobs(), 0u);
    EXPECT_EQ(shard.scheduler.scheduled(), 0u);
  }
}

TEST(SchedulerTest, TemporaryPlanFailureDefersPerRetryPolicy) {
  Shard shard;
  shard.random = 0;  // the low end of the jitter
  shard.add(message("m1", {"a@x.example"}));
  ASSERT_EQ(shard.scheduler.take_resolve_requests().size(), 1u);
  shard.answer("x.example", failed_plan(PlanFailure::dns_temporary));
  std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[0].outcome.state, DeliveryState::deferred);
  EXPECT_EQ(outcomes[0].status, "4.4.3");
  EXPECT_EQ(outcomes[0].outcome.next_attempt_ms, kStart + kInitial - kInitial / 10);
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
  EXPECT_EQ(shard.scheduler.jobs(), 1u);
  EXPECT_EQ(shard.scheduler.next_deadline_ms(), outcomes[0].outcome.next_attempt_ms);

  // Comes back at that time and is resolved again (a failure is not a plan to reuse).
  shard.now = outcomes[0].outcome.next_attempt_ms;
  shard.scheduler.tick(shard.now, 0);
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"x.example"}));
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
  shard.scheduler.connection_up(0);
  std::optional<Job> job = shard.scheduler.next_job(0, 1);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->attempts, (std::vector<uint32_t>{1}));
}

// ---- routes -------------------------------------------------------------------------------
TEST(SchedulerTest, RoutesNeedNoResolveAndTheMostSpecificWins) {
  absl::StatusOr<resolver::RouteTable> routes = resolver::RouteTable::build({
      resolver::Route{"*", address("127.0.0.4", 2525)},
      resolver::Route{".example.com", address("127.0.0.3", 2525)},
      resolver::Route{"example.com", address("127.0.0.2", 2525)},
  });
  ASSERT_TRUE(routes.ok()) << routes.status();
  SchedulerSettings settings = default_settings();
  settings.routes = &*routes;
  Shard shard(settings);
  shard.add(message("m1", {"a@example.com", "b@sub.example.com", "c@other.org", "d@deep.sub.example.com"}));
  EXPECT_TRUE(shard.scheduler.take_resolve_requests().empty());
  const std::vector<ConnectRequest> requests = shard.scheduler.take_connect_requests();
  // Four jobs at three next hops; the fourth job's site already has a connection starting for
  // the second, so the pump asks for one more (2 ready > 1 starting).
  ASSERT_EQ(requests.size(), 4u);
  const auto hop_of = [](const ConnectRequest& request) {
    EXPECT_EQ(request.targets.size(), 1u);
    return request.targets.front().address.to_string();
  };
  EXPECT_EQ(hop_of(requests[0]), "127.0.0.2:2525");
  EXPECT_EQ(requests[0].site_name, "route:example.com");
  EXPECT_EQ(hop_of(requests[1]), "127.0.0.3:2525");
  EXPECT_EQ(requests[1].site_name, "route:.example.com");
  EXPECT_EQ(hop_of(requests[2]), "127.0.0.4:2525");
  EXPECT_EQ(requests[2].site_name, "route:*");
  EXPECT_EQ(requests[3].site, requests[1].site);
  EXPECT_EQ(shard.scheduler.sites().size(), 3u);
}

TEST(SchedulerTest, DomainsWithoutARouteUseMx) {
  absl::StatusOr<resolver::RouteTable> routes =
      resolver::RouteTable::build({resolver::Route{".example.com", address("127.0.0.3", 2525)}});
  ASSERT_TRUE(routes.ok()) << routes.status();
  SchedulerSettings settings = default_settings();
  settings.routes = &*routes;
  Shard shard(settings);
  shard.add(message("m1", {"a@example.com", "b@sub.example.com"}));
  EXPECT_EQ(shard.scheduler.take_resolve_requests(), (std::vector<std::string>{"example.com"}));
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
}

// ---- sites and connections ----------------------------------------------------------------
TEST(SchedulerTest, DomainsWithTheSameHostsShareOneSite) {
  SchedulerSettings settings = default_settings();
  settings.connections_per_site = 1;
  Shard shard(settings);
  shard.add(message("m1", {"a@x.example", "b@y.example"}));
  ASSERT_EQ(shard.scheduler.take_resolve_requests().size(), 2u);
  // The same hosts in another order (the resolver's rotation): the same site.
  shard.answer("x.example",
               plan({target("mx1.hoster.example", 10, "192.0.2.1"), target("mx2.hoster.example", 10, "192.0.2.2")}));
  shard.answer("y.example",
               plan({target("mx2.hoster.example", 10, "192.0.2.2"), target("mx1.hoster.example", 10, "192.0.2.1")}));
  ASSERT_EQ(shard.scheduler.sites().size(), 1u);
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 2u);
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);  // connections_per_site
  const std::vector<uint64_t> connections = shard.connect_all(0);
  EXPECT_TRUE(connections.empty());
  shard.scheduler.connection_up(0);
  EXPECT_EQ(shard.drain(0, 1, delivered()), 2u);  // both domains' jobs on the one connection
  EXPECT_EQ(shard.scheduler.jobs(), 0u);

  // A different host set is a different site.
  shard.now += kPlanReuse;
  shard.add(message("m2", {"c@z.example"}));
  shard.answer("z.example", plan({target("mx1.hoster.example", 10, "192.0.2.1")}));
  EXPECT_EQ(shard.scheduler.sites().size(), 2u);
}

TEST(SchedulerTest, ConnectionsOnlyWhileTheReadyQueueIsDeeperThanStartingAndIdle) {
  SchedulerSettings settings = default_settings();
  settings.connections_per_site = 3;
  Shard shard(settings);
  shard.add(message("m1", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);  // 1 ready, 0 starting
  shard.add(message("m2", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);  // 2 ready, 1 starting
  shard.add(message("m3", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);  // 3 ready, 2 starting
  shard.add(message("m4", {"a@x.example"}));
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());  // connections_per_site
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 3u);

  // Two come up and empty the queue; one goes idle. A new job wakes it, no new connection.
  shard.scheduler.connection_up(0);
  shard.scheduler.connection_up(0);
  EXPECT_EQ(shard.drain(0, 1, delivered()), 4u);
  EXPECT_FALSE(shard.scheduler.next_job(0, 2).has_value());
  shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);  // the third: others are up
  EXPECT_TRUE(shard.scheduler.take_outcomes().size() == 4u);              // the four deliveries
  EXPECT_FALSE(shard.scheduler.sites()[0].down);
  shard.add(message("m5", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_wakes().size(), 1u);
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 2u);
}

TEST(SchedulerTest, ConnectionsSpreadOverEqualPreferenceHosts) {
  SchedulerSettings settings = default_settings();
  settings.connections_per_site = 6;
  Shard shard(settings);
  for (int i = 0; i < 6; ++i) {
    shard.add(message(absl::StrCat("m", i), {"a@x.example"}));
  }
  shard.scheduler.take_resolve_requests();
  // Two first-preference hosts (the first with two addresses) and a backup.
  const DeliveryPlan delivery_plan =
      plan({target("mx-a.x.example", 10, "192.0.2.1"), target("mx-a.x.example", 10, "192.0.2.11"),
            target("mx-b.x.example", 10, "192.0.2.2"), target("backup.x.example", 20, "192.0.2.3")});
  shard.answer("x.example", delivery_plan);
  const std::vector<ConnectRequest> requests = shard.scheduler.take_connect_requests();
  ASSERT_EQ(requests.size(), 6u);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    const std::vector<PlanTarget>& targets = requests[i].targets;
    ASSERT_EQ(targets.size(), 4u);
    EXPECT_EQ(targets.front().host, i % 2 == 0 ? "mx-a.x.example" : "mx-b.x.example");
    EXPECT_EQ(targets.back().host, "backup.x.example");
    // Every target is still there, a host's addresses together and in order.
    std::vector<PlanTarget> sorted = targets;
    std::vector<PlanTarget> expected = delivery_plan.targets;
    const auto by_address = [](const PlanTarget& a, const PlanTarget& b) {
      return a.address.to_string() < b.address.to_string();
    };
    std::sort(sorted.begin(), sorted.end(), by_address);
    std::sort(expected.begin(), expected.end(), by_address);
    EXPECT_EQ(sorted, expected);
    const auto first_a =
        std::find_if(targets.begin(), targets.end(), [](const PlanTarget& t) { return t.host == "mx-a.x.example"; });
    ASSERT_NE(first_a + 1, targets.end());
    EXPECT_EQ(first_a->address.to_string(), "192.0.2.1:25");
    EXPECT_EQ((first_a + 1)->address.to_string(), "192.0.2.11:25");
  }
}

TEST(SchedulerTest, ABackupAloneAfterOneFirstHostIsNeverFirst) {
  SchedulerSettings settings = default_settings();
  settings.connections_per_site = 3;
  Shard shard(settings);
  for (int i = 0; i < 3; ++i) {
    shard.add(message(absl::StrCat("m", i), {"a@x.example"}));
  }
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example",
               plan({target("mx.x.example", 10, "192.0.2.1"), target("backup.x.example", 20, "192.0.2.3")}));
  const std::vector<ConnectRequest> requests = shard.scheduler.take_connect_requests();
  ASSERT_EQ(requests.size(), 3u);
  for (const ConnectRequest& request : requests) {
    EXPECT_EQ(request.targets.front().host, "mx.x.example");
  }
}

// ---- results ------------------------------------------------------------------------------
TEST(SchedulerTest, DeliveredAndBouncedAreFinalDeferredComeBackTogether) {
  Shard shard;
  shard.add(message("m1", {"a@x.example", "b@x.example", "c@x.example", "d@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  std::optional<Job> job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  shard.done(std::move(*job), {delivered(), deferred(), bounced(), deferred()}, "mx.x.example");
  EXPECT_EQ(shard.scheduler.jobs_in_flight(), 0u);
  const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 4u);
  EXPECT_EQ(states_of(outcomes), (std::vector<DeliveryState>{DeliveryState::delivered, DeliveryState::deferred,
                                                             DeliveryState::bounced, DeliveryState::deferred}));
  EXPECT_EQ(outcomes[0].status, "2.0.0");
  EXPECT_EQ(outcomes[0].outcome.last_reply, "250 2.0.0 Ok: queued as 1");
  EXPECT_EQ(outcomes[0].remote_mta, "mx.x.example");
  EXPECT_EQ(outcomes[2].status, "5.1.1");
  EXPECT_EQ(outcomes[2].outcome.last_reply, "550 5.1.1 no such user");
  EXPECT_EQ(outcomes[1].status, "4.3.0");
  EXPECT_EQ(outcomes[1].outcome.next_attempt_ms, kStart + kInitial);
  EXPECT_EQ(outcomes[3].outcome.next_attempt_ms, kStart + kInitial);
  EXPECT_EQ(outcomes[1].recipient, 1u);
  EXPECT_EQ(outcomes[3].recipient, 3u);

  EXPECT_EQ(shard.scheduler.jobs(), 1u);
  EXPECT_EQ(shard.scheduler.scheduled(), 1u);
  shard.now = kStart + kInitial;
  shard.scheduler.tick(shard.now, 0);
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  // The two deferred recipients come back as one job.
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 1u);
  job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{1, 3}));
}

TEST(SchedulerTest, RetryTimesJitterDoubleAndCap) {
  const uint64_t spread = kInitial / 10;
  for (const uint64_t random : {uint64_t{0}, uint64_t{1}, spread, 2 * spread, 2 * spread + 1, ~uint64_t{0}}) {
    SCOPED_TRACE(random);
    Shard shard;
    shard.random = random;
    shard.add(message("m1", {"a@x.example"}));
    shard.scheduler.take_resolve_requests();
    shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
    shard.connect_all(0);
    shard.drain(0, 100, deferred());
    std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
    ASSERT_EQ(outcomes.size(), 1u);
    const uint64_t first = outcomes[0].outcome.next_attempt_ms - shard.now;
    EXPECT_GE(first, kInitial - spread);
    EXPECT_LE(first, kInitial + spread);
    if (random == 0) {
      EXPECT_EQ(first, kInitial - spread);
    }
    if (random == 2 * spread) {
      EXPECT_EQ(first, kInitial + spread);
    }

    // The second failure: twice as long.
    shard.now = outcomes[0].outcome.next_attempt_ms;
    shard.scheduler.tick(shard.now, random);
    shard.scheduler.take_resolve_requests();
    shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
    ASSERT_EQ(shard.scheduler.take_wakes(), (std::vector<uint64_t>{100}));
    EXPECT_EQ(shard.drain(0, 100, deferred()), 1u);
    outcomes = shard.scheduler.take_outcomes();
    ASSERT_EQ(outcomes.size(), 1u);
    const uint64_t second = outcomes[0].outcome.next_attempt_ms - shard.now;
    EXPECT_GE(second, 2 * (kInitial - spread));
    EXPECT_LE(second, 2 * (kInitial + spread));
  }

  // Many failures before: capped at max (with its jitter).
  Shard shard;
  MessageInfo info = message("m1", {"a@x.example"});
  info.recipient_states[0].state = DeliveryState::deferred;
  info.recipient_states[0].attempts = 30;
  info.recipient_states[0].next_attempt_ms = kStart;
  shard.add(info);
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  shard.connect_all(0);
  shard.drain(0, 100, deferred());
  const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_GE(outcomes[0].outcome.next_attempt_ms, kStart + kMax - kMax / 10);
  EXPECT_LE(outcomes[0].outcome.next_attempt_ms, kStart + kMax + kMax / 10);
}

TEST(SchedulerTest, PastTheLifetimeATemporaryFailureBounces) {
  Shard shard;
  shard.add(message("old", {"a@x.example"}, kStart - kLifetime));
  shard.add(message("young", {"a@x.example"}, kStart - kLifetime + 1000));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_FALSE(connections.empty());
  EXPECT_EQ(shard.drain(0, connections[0], deferred()), 2u);
  const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].message_id, "old");
  EXPECT_EQ(outcomes[0].outcome.state, DeliveryState::bounced);
  EXPECT_EQ(outcomes[0].outcome.last_reply, "451 4.3.0 try later");  // the last reply
  EXPECT_EQ(outcomes[0].status, "4.3.0");
  // The young one gets its last attempt at the end of its lifetime, not later.
  EXPECT_EQ(outcomes[1].outcome.state, DeliveryState::deferred);
  EXPECT_EQ(outcomes[1].outcome.next_attempt_ms, kStart + 1000);
  EXPECT_EQ(shard.scheduler.jobs(), 1u);
}

TEST(SchedulerTest, RecipientsDeferredInOneJobComeBackAsOneJob) {
  Shard shard;
  shard.add(message("m1", {"a@x.example", "b@x.example", "c@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  std::optional<Job> job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  shard.done(std::move(*job), {deferred(), delivered(), deferred()});
  EXPECT_FALSE(shard.scheduler.next_job(0, connections[0]).has_value());
  EXPECT_EQ(shard.scheduler.scheduled(), 1u);
  const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 3u);
  EXPECT_EQ(outcomes[0].outcome.next_attempt_ms, outcomes[2].outcome.next_attempt_ms);

  shard.now = *shard.scheduler.next_deadline_ms();
  shard.scheduler.tick(shard.now, 0);
  EXPECT_EQ(shard.scheduler.take_resolve_requests().size(), 1u);
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_wakes(), (std::vector<uint64_t>{connections[0]}));
  job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{0, 2}));
  EXPECT_EQ(job->attempts, (std::vector<uint32_t>{1, 1}));
  ASSERT_EQ(job->transaction.recipients.size(), 2u);
  EXPECT_EQ(job->transaction.recipients[0].address, "a@x.example");
  EXPECT_EQ(job->transaction.recipients[1].address, "c@x.example");
  EXPECT_EQ(job->transaction.sender, "sender@origin.example");
  shard.done(std::move(*job), {delivered(), delivered()});
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
}

// ---- site backoff -------------------------------------------------------------------------
// retry_initial well below the site backoff, so that the backoff decides the next attempt.
SchedulerSettings short_retry_settings() {
  SchedulerSettings settings = default_settings();
  settings.retry.initial_ms = 1000;
  settings.retry.jitter_percent = 0;
  return settings;
}

TEST(SchedulerTest, ASiteWhoseConnectionFailsIsDownForItsBackoff) {
  Shard shard(short_retry_settings());
  shard.add(message("m1", {"a@x.example", "b@y.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.hoster.example", "192.0.2.1"));
  shard.answer("y.example", one_host("mx.hoster.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 2u);
  shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  EXPECT_TRUE(shard.scheduler.take_outcomes().empty());  // another connection is still starting
  shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 2u);
  for (const Outcome& outcome : outcomes) {
    EXPECT_EQ(outcome.outcome.state, DeliveryState::deferred);
    EXPECT_EQ(outcome.outcome.next_attempt_ms, kStart + kSiteBackoff);  // the first backoff
    EXPECT_EQ(outcome.status, "4.4.1");
    EXPECT_EQ(outcome.outcome.last_reply, "4.4.1 connect to 192.0.2.1:25: timed out");
  }
  EXPECT_TRUE(shard.scheduler.sites()[0].down);
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 0u);
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 0u);

  // Meanwhile a new job for the site is deferred at once, without a connection, not before the
  // backoff ends.
  shard.now = kStart + 1000;
  shard.add(message("m2", {"c@x.example"}));
  EXPECT_TRUE(shard.scheduler.take_resolve_requests().empty());  // the plan is fresh
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
  outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[0].outcome.state, DeliveryState::deferred);
  EXPECT_EQ(outcomes[0].outcome.next_attempt_ms, kStart + kSiteBackoff);
  EXPECT_EQ(shard.scheduler.jobs(), 3u);
  EXPECT_EQ(shard.scheduler.scheduled(), 3u);

  // The backoff ends: the jobs come back, and a connection is asked for.
  shard.now = kStart + kSiteBackoff;
  shard.scheduler.tick(shard.now, 0);
  EXPECT_FALSE(shard.scheduler.sites()[0].down);
  EXPECT_EQ(shard.scheduler.take_resolve_requests().size(), 2u);
  shard.answer("x.example", one_host("mx.hoster.example", "192.0.2.1"));
  shard.answer("y.example", one_host("mx.hoster.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 3u);

  // Failing again doubles the backoff.
  for (int i = 0; i < 3; ++i) {
    shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  }
  outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 3u);
  EXPECT_EQ(outcomes[0].outcome.next_attempt_ms, shard.now + 2 * kSiteBackoff);

  // A connection that gets through ends it.
  shard.now += 2 * kSiteBackoff;
  shard.scheduler.tick(shard.now, 0);
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.hoster.example", "192.0.2.1"));
  shard.answer("y.example", one_host("mx.hoster.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 3u);
  shard.scheduler.connection_up(0);
  EXPECT_FALSE(shard.scheduler.sites()[0].down);
  EXPECT_EQ(shard.drain(0, 1, delivered()), 3u);
  shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  EXPECT_FALSE(shard.scheduler.sites()[0].down);
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
}

// Parallel connections that fail together are one failure of the site: the first backoff.
TEST(SchedulerTest, ConnectionsFailingTogetherAreOneSiteFailure) {
  SchedulerSettings settings = short_retry_settings();
  settings.connections_per_site = 4;
  Shard shard(settings);
  for (int i = 0; i < 4; ++i) {
    shard.add(message(absl::StrCat("m", i), {"a@x.example"}));
  }
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 4u);
  for (int i = 0; i < 4; ++i) {
    shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  }
  const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 4u);
  for (const Outcome& outcome : outcomes) {
    EXPECT_EQ(outcome.outcome.next_attempt_ms, kStart + kSiteBackoff);
  }
}

TEST(SchedulerTest, SiteBackoffIsCappedAtRetryMax) {
  SchedulerSettings settings = short_retry_settings();
  settings.retry.max_ms = 3 * kSiteBackoff;
  Shard shard(settings);
  shard.add(message("m1", {"a@x.example"}));
  const std::vector<uint64_t> expected = {kSiteBackoff, 2 * kSiteBackoff, 3 * kSiteBackoff, 3 * kSiteBackoff};
  for (const uint64_t backoff : expected) {
    SCOPED_TRACE(backoff);
    shard.scheduler.take_resolve_requests();
    shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
    ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
    shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
    const std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
    ASSERT_EQ(outcomes.size(), 1u);
    EXPECT_EQ(outcomes[0].outcome.next_attempt_ms, shard.now + backoff);
    shard.now = outcomes[0].outcome.next_attempt_ms;
    shard.scheduler.tick(shard.now, 0);
  }
}

TEST(SchedulerTest, FlushEndsTheBackoffAndReleasesScheduledJobs) {
  Shard shard(short_retry_settings());
  shard.add(message("m1", {"a@x.example", "b@y.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  shard.answer("y.example", one_host("mx.y.example", "192.0.2.2"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 2u);
  shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  shard.scheduler.connection_failed(1, connect_failure(), shard.now, 0);
  EXPECT_EQ(shard.scheduler.take_outcomes().size(), 2u);
  EXPECT_EQ(shard.scheduler.scheduled(), 2u);

  shard.now += 1000;
  EXPECT_EQ(shard.scheduler.flush("y.example", shard.now), 1u);
  EXPECT_EQ(shard.scheduler.scheduled(), 1u);
  EXPECT_TRUE(shard.scheduler.take_resolve_requests().empty());  // within plan_reuse_ms
  const std::vector<ConnectRequest> requests = shard.scheduler.take_connect_requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].site, 1u);
  EXPECT_FALSE(shard.scheduler.sites()[1].down);
  EXPECT_TRUE(shard.scheduler.take_outcomes().empty());

  EXPECT_EQ(shard.scheduler.flush("", shard.now), 1u);
  EXPECT_EQ(shard.scheduler.scheduled(), 0u);
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
  EXPECT_FALSE(shard.scheduler.sites()[0].down);
  EXPECT_EQ(shard.scheduler.jobs(), 2u);
}

// ---- idle connections -----------------------------------------------------------------------
TEST(SchedulerTest, AnIdleConnectionIsWokenInsteadOfANewOne) {
  Shard shard;
  shard.add(message("m1", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  EXPECT_EQ(shard.drain(0, connections[0], delivered()), 1u);  // and now idle
  EXPECT_TRUE(shard.scheduler.take_wakes().empty());

  shard.add(message("m2", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_wakes(), (std::vector<uint64_t>{connections[0]}));
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 1u);
  std::optional<Job> job = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->message_id, "m2");
  shard.done(std::move(*job), {delivered()});
  EXPECT_FALSE(shard.scheduler.next_job(0, connections[0]).has_value());

  // Woken for a job another connection took first: idle again.
  shard.add(message("m3", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_wakes(), (std::vector<uint64_t>{connections[0]}));
  shard.scheduler.drop_message("m3");
  EXPECT_FALSE(shard.scheduler.next_job(0, connections[0]).has_value());
  shard.add(message("m4", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_wakes(), (std::vector<uint64_t>{connections[0]}));
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
}

// Jobs arriving one after another before the woken connections ask: each wakes one, and only
// the jobs beyond the idle connections ask for a new one.
TEST(SchedulerTest, ABatchOfJobsWakesIdleConnectionsWithoutExtraConnections) {
  Shard shard;
  shard.add(message("m1", {"a@x.example"}));
  shard.add(message("m2", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 2u);
  EXPECT_EQ(shard.drain(0, connections[0], delivered()), 2u);
  EXPECT_EQ(shard.drain(0, connections[1], delivered()), 0u);  // both idle now

  for (const char* id : {"m3", "m4", "m5"}) {
    MessageInfo info = message(id, {"a@x.example"});
    info.recipient_states[0].state = DeliveryState::deferred;
    info.recipient_states[0].next_attempt_ms = kStart + 1000;
    shard.add(info);
  }
  shard.now = kStart + 1000;
  shard.scheduler.tick(shard.now, 0);  // three jobs at once, the plan still fresh
  std::vector<uint64_t> woken = shard.scheduler.take_wakes();
  std::sort(woken.begin(), woken.end());
  EXPECT_EQ(woken, connections);
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);  // for the third job only
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 3u);
  EXPECT_EQ(shard.drain(0, woken[0], delivered()) + shard.drain(0, woken[1], delivered()), 3u);
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
}

TEST(SchedulerTest, ALeavingConnectionIsNotWoken) {
  Shard shard;
  shard.add(message("m1", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  EXPECT_EQ(shard.drain(0, connections[0], delivered()), 1u);
  shard.scheduler.connection_leaves(0, connections[0]);  // idle timeout
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 0u);
  shard.add(message("m2", {"a@x.example"}));
  EXPECT_TRUE(shard.scheduler.take_wakes().empty());
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
}

TEST(SchedulerTest, AWokenConnectionThatLeavesHandsItsWorkOn) {
  Shard shard;
  shard.add(message("m1", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  EXPECT_EQ(shard.drain(0, connections[0], delivered()), 1u);
  shard.add(message("m2", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.take_wakes(), (std::vector<uint64_t>{connections[0]}));
  shard.scheduler.connection_leaves(0, connections[0]);  // it was closing already
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 1u);  // the new one, starting
}

TEST(SchedulerTest, AClosedConnectionsQueueGetsANewConnection) {
  SchedulerSettings settings = default_settings();
  settings.connections_per_site = 1;
  Shard shard(settings);
  shard.add(message("m1", {"a@x.example"}));
  shard.add(message("m2", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
  shard.scheduler.connection_up(0);
  std::optional<Job> job = shard.scheduler.next_job(0, 1);
  ASSERT_TRUE(job.has_value());
  // Lost mid-transaction: the job is reported first, then the close; m2 needs a new connection.
  shard.done(std::move(*job), {deferred()});
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());  // still at connections_per_site
  shard.scheduler.connection_closed(0);
  EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 1u);  // the new one, starting
  shard.scheduler.connection_up(0);
  EXPECT_EQ(shard.drain(0, 2, delivered()), 1u);
  EXPECT_EQ(shard.scheduler.jobs(), 1u);  // the deferred one
  // Idle and lost (or timed out): it leaves; nothing queued, so no new connection.
  shard.scheduler.connection_leaves(0, 2);
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
  EXPECT_EQ(shard.scheduler.sites()[0].connections, 0u);
}

// ---- drop and the counts ------------------------------------------------------------------
TEST(SchedulerTest, DropMessageForgetsItsJobsNotInFlight) {
  Shard shard;
  MessageInfo info = message("m1", {"a@x.example", "b@y.example", "c@z.example"});
  info.recipient_states[2].state = DeliveryState::deferred;
  info.recipient_states[2].next_attempt_ms = kStart + 60'000;
  shard.add(info);
  shard.add(message("m2", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));  // y still resolving
  EXPECT_EQ(shard.scheduler.jobs(), 4u);
  const std::vector<uint64_t> connections = shard.connect_all(0);
  ASSERT_FALSE(connections.empty());
  std::optional<Job> in_flight = shard.scheduler.next_job(0, connections[0]);
  ASSERT_TRUE(in_flight.has_value());
  EXPECT_EQ(in_flight->message_id, "m1");

  // Scheduled (z), waiting (y); in flight (x) stays.
  EXPECT_EQ(shard.scheduler.drop_message("m1"), 2u);
  EXPECT_EQ(shard.scheduler.jobs(), 2u);
  EXPECT_EQ(shard.scheduler.scheduled(), 0u);
  EXPECT_EQ(shard.scheduler.drop_message("m1"), 0u);
  shard.answer("y.example", one_host("mx.y.example", "192.0.2.2"));
  EXPECT_EQ(shard.scheduler.sites()[1].ready, 0u);
  shard.done(std::move(*in_flight), {delivered()});
  EXPECT_EQ(shard.scheduler.drop_message("m2"), 1u);  // ready at x
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
}

// A hold or delete while a job is in flight: its outcomes are reported, what it defers is not
// tried again (it would be sent at its retry time, held or deleted).
TEST(SchedulerTest, ADroppedMessagesJobInFlightIsNotRetried) {
  Shard shard;
  std::vector<Job> jobs =
      shard.in_flight_at_x({message("m1", {"a@x.example", "b@x.example"}), message("m2", {"a@x.example"})});
  ASSERT_EQ(jobs.size(), 2u);
  std::optional<Job> first = std::move(jobs[0]);
  std::optional<Job> second = std::move(jobs[1]);
  EXPECT_EQ(shard.scheduler.jobs_in_flight(), 2u);
  EXPECT_EQ(shard.scheduler.drop_message("m1"), 0u);  // nothing but the job in flight
  EXPECT_EQ(shard.scheduler.jobs(), 2u);

  shard.done(std::move(*first), {deferred(), delivered()});
  std::vector<Outcome> outcomes = shard.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].outcome.state, DeliveryState::deferred);
  EXPECT_EQ(outcomes[0].outcome.next_attempt_ms, kStart + kInitial);  // what the spool records
  EXPECT_EQ(shard.scheduler.scheduled(), 0u);
  EXPECT_EQ(shard.scheduler.jobs(), 1u);

  shard.done(std::move(*second), {deferred()});  // another message's job: retried as usual
  EXPECT_EQ(shard.scheduler.scheduled(), 1u);
  EXPECT_EQ(shard.scheduler.jobs(), 1u);
  EXPECT_EQ(shard.scheduler.jobs_in_flight(), 0u);
  EXPECT_FALSE(shard.scheduler.next_job(0, 1).has_value());
  EXPECT_FALSE(shard.scheduler.next_job(0, 2).has_value());

  // Released: added again, and delivered as any other.
  MessageInfo released = message("m1", {"a@x.example", "b@x.example"});
  released.recipient_states[0].state = DeliveryState::deferred;
  released.recipient_states[0].attempts = 1;
  released.recipient_states[0].next_attempt_ms = kStart + kInitial;
  released.recipient_states[1].state = DeliveryState::delivered;
  shard.now += 1000;
  shard.scheduler.add_message(released, shard.now, 0);
  EXPECT_EQ(shard.scheduler.flush("x.example", shard.now), 2u);
  const std::vector<uint64_t> woken = shard.scheduler.take_wakes();
  ASSERT_EQ(woken.size(), 2u);
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
  EXPECT_EQ(shard.drain(0, woken[0], delivered()) + shard.drain(0, woken[1], delivered()), 2u);
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
}

// An admin release while a job of the message is on a connection (release drops the message and
// adds it again): the new job waits for that job's results, and does not send what it
// delivered or bounced a second time.
TEST(SchedulerTest, AMessageAddedAgainWhileInFlightWaitsAndSkipsWhatWasDelivered) {
  Shard shard;
  const MessageInfo info = message("m1", {"a@x.example", "b@x.example", "c@x.example"});
  std::vector<Job> jobs = shard.in_flight_at_x({info});
  ASSERT_EQ(jobs.size(), 1u);
  std::optional<Job> in_flight = std::move(jobs[0]);

  // Hold and release, or release alone: both drop, then add the message as the spool has it
  // (nothing recorded yet).
  EXPECT_EQ(shard.scheduler.drop_message("m1"), 0u);
  shard.add(info);
  EXPECT_EQ(shard.scheduler.jobs(), 2u);
  EXPECT_TRUE(shard.scheduler.take_resolve_requests().empty());
  EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());  // nothing ready meanwhile
  EXPECT_EQ(shard.scheduler.sites()[0].ready, 0u);

  shard.done(std::move(*in_flight), {delivered(), deferred(), bounced()});
  EXPECT_EQ(states_of(shard.scheduler.take_outcomes()),
            (std::vector<DeliveryState>{DeliveryState::delivered, DeliveryState::deferred, DeliveryState::bounced}));
  EXPECT_EQ(shard.scheduler.jobs(), 1u);
  EXPECT_EQ(shard.scheduler.scheduled(), 0u);  // the dropped job keeps no retry: the new one has b
  std::optional<Job> again = shard.scheduler.next_job(0, 1);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->recipients, (std::vector<uint32_t>{1}));
  EXPECT_EQ(again->attempts, (std::vector<uint32_t>{1}));  // the attempt in flight counts
  ASSERT_EQ(again->transaction.recipients.size(), 1u);
  EXPECT_EQ(again->transaction.recipients[0].address, "b@x.example");
  shard.done(std::move(*again), {delivered()});
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
}

TEST(SchedulerTest, AParkedJobWhoseRecipientsAllEndedEndsToo) {
  Shard shard;
  const MessageInfo info = message("m1", {"a@x.example"});
  std::vector<Job> jobs = shard.in_flight_at_x({info});
  ASSERT_EQ(jobs.size(), 1u);
  std::optional<Job> in_flight = std::move(jobs[0]);
  shard.scheduler.drop_message("m1");
  shard.add(info);
  shard.scheduler.take_ended();
  shard.done(std::move(*in_flight), {delivered()});
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
  EXPECT_EQ(shard.scheduler.take_ended().size(), 2u);  // the job in flight and the parked one
  EXPECT_FALSE(shard.scheduler.next_job(0, 1).has_value());
}

// Held again before the job in flight came back: the parked job goes with the rest.
TEST(SchedulerTest, DropMessageAndDropAllTakeParkedJobs) {
  Shard shard;
  const MessageInfo info = message("m1", {"a@x.example"});
  std::vector<Job> jobs = shard.in_flight_at_x({info, message("m2", {"a@x.example"})});
  ASSERT_EQ(jobs.size(), 2u);
  std::optional<Job> first = std::move(jobs[0]);
  std::optional<Job> second = std::move(jobs[1]);
  shard.scheduler.drop_message("m1");
  shard.add(info);
  EXPECT_EQ(shard.scheduler.drop_message("m1"), 1u);
  EXPECT_EQ(shard.scheduler.jobs(), 2u);  // the two in flight
  shard.done(std::move(*first), {deferred()});
  EXPECT_EQ(shard.scheduler.jobs(), 1u);
  EXPECT_FALSE(shard.scheduler.next_job(0, 1).has_value());

  shard.scheduler.drop_message("m2");
  shard.add(message("m2", {"a@x.example"}));
  EXPECT_EQ(shard.scheduler.jobs(), 2u);
  EXPECT_EQ(shard.scheduler.drop_all(), 1u);
  shard.done(std::move(*second), {deferred()});
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
  EXPECT_EQ(shard.scheduler.scheduled(), 0u);
}

// Two shards: a job whose site is the other shard's leaves this scheduler (without ending) for
// that one, which resolves nothing again, counts it, runs it and ends it for its origin.
TEST(SchedulerTest, AJobWhoseSiteIsAnotherShardsIsHandedOver) {
  SchedulerSettings first = default_settings();
  first.shards = 2;
  first.shard = 0;
  SchedulerSettings second = first;
  second.shard = 1;
  std::optional<Handoff> handoff;
  bool kept_one = false;
  for (int i = 0; i < 64 && (!handoff || !kept_one); ++i) {
    Shard shard(first);
    MessageInfo info = message("m1", {"a@x.example"});
    shard.add(info);
    shard.scheduler.take_resolve_requests();
    shard.answer("x.example", one_host(absl::StrCat("mx", i, ".example"), "192.0.2.1"));
    std::vector<Handoff> out = shard.scheduler.take_handoffs();
    if (out.empty()) {
      kept_one = true;  // its own site: ready here
      EXPECT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
      EXPECT_EQ(shard.scheduler.jobs(), 1u);
      continue;
    }
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].owner, 1u);
    EXPECT_EQ(shard.scheduler.jobs(), 0u);
    EXPECT_TRUE(shard.scheduler.take_ended().empty());  // not ended: the owner ends it
    EXPECT_TRUE(shard.scheduler.take_connect_requests().empty());
    EXPECT_TRUE(shard.scheduler.sites().empty());  // a site of the other shard is not listed
    handoff = std::move(out[0]);
  }
  ASSERT_TRUE(handoff.has_value() && kept_one);
  Shard owner(second);
  owner.scheduler.add_handoff(std::move(*handoff), owner.now, owner.random);
  EXPECT_TRUE(owner.scheduler.take_resolve_requests().empty());
  EXPECT_EQ(owner.scheduler.jobs(), 1u);
  const std::vector<uint64_t> connections = owner.connect_all(0);
  ASSERT_EQ(connections.size(), 1u);
  EXPECT_EQ(owner.drain(0, connections[0], delivered()), 1u);
  const std::vector<Outcome> outcomes = owner.scheduler.take_outcomes();
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[0].origin, 0u);  // journaled where the message is
  EXPECT_EQ(owner.scheduler.take_ended(), (std::vector<uint32_t>{0}));
  EXPECT_EQ(owner.scheduler.jobs(), 0u);
}

TEST(SchedulerTest, TickEndsABackoffThatIsOver) {
  Shard shard(short_retry_settings());
  shard.add(message("m1", {"a@x.example"}));
  shard.scheduler.take_resolve_requests();
  shard.answer("x.example", one_host("mx.x.example", "192.0.2.1"));
  ASSERT_EQ(shard.scheduler.take_connect_requests().size(), 1u);
  shard.scheduler.connection_failed(0, connect_failure(), shard.now, 0);
  EXPECT_TRUE(shard.scheduler.sites()[0].down);
  shard.scheduler.tick(kStart + kSiteBackoff - 1, 0);
  EXPECT_TRUE(shard.scheduler.sites()[0].down);
  shard.scheduler.tick(kStart + kSiteBackoff, 0);
  EXPECT_FALSE(shard.scheduler.sites()[0].down);
}

TEST(SchedulerTest, JobsCountDownToZeroWhenEverythingIsFinal) {
  SchedulerSettings settings = default_settings();
  settings.recipients_per_transaction = 3;
  Shard shard(settings);
  std::vector<std::string> recipients;
  for (int i = 0; i < 10; ++i) {
    recipients.push_back(absl::StrCat("r", i, i % 2 == 0 ? "@x.example" : "@y.example"));
  }
  shard.add(message("m1", recipients));
  shard.add(message("m2", {"a@null.example"}));
  EXPECT_EQ(shard.scheduler.jobs(), 5u);  // x: 3 + 2, y: 3 + 2, null.example: 1
  shard.scheduler.take_resolve_requests();
  shard.answer("null.example", failed_plan(PlanFailure::null_mx));
  EXPECT_EQ(shard.scheduler.jobs(), 4u);
  shard.answer("x.example", one_host("mx.hoster.example", "192.0.2.1"));
  shard.answer("y.example", one_host("mx.hoster.example", "192.0.2.1"));
  // The connections to run: new ones and woken ones (never one idle and not woken).
  std::vector<uint64_t> to_run = shard.connect_all(0);
  ASSERT_FALSE(to_run.empty());
  // Every other recipient of a job is deferred once, then delivered.
  size_t rounds = 0;
  while (shard.scheduler.jobs() > 0 && rounds++ < 10) {
    for (const uint64_t connection : to_run) {
      while (std::optional<Job> job = shard.scheduler.next_job(0, connection)) {
        EXPECT_EQ(shard.scheduler.jobs_in_flight(), 1u);
        std::vector<smtp::RecipientResult> results;
        for (size_t i = 0; i < job->recipients.size(); ++i) {
          results.push_back(job->attempts[i] == 0 && i % 2 == 0 ? deferred() : delivered());
        }
        shard.done(std::move(*job), results);
        EXPECT_EQ(shard.scheduler.jobs_in_flight(), 0u);
      }
    }
    to_run.clear();
    if (const std::optional<uint64_t> deadline = shard.scheduler.next_deadline_ms()) {
      shard.now = *deadline;
      shard.scheduler.tick(shard.now, shard.random);
      for (const std::string& domain : shard.scheduler.take_resolve_requests()) {
        shard.answer(domain, one_host("mx.hoster.example", "192.0.2.1"));
      }
      to_run = shard.scheduler.take_wakes();
      const std::vector<uint64_t> more = shard.connect_all(0);
      to_run.insert(to_run.end(), more.begin(), more.end());
    }
  }
  EXPECT_EQ(shard.scheduler.jobs(), 0u);
  EXPECT_EQ(shard.scheduler.jobs_in_flight(), 0u);
  EXPECT_EQ(shard.scheduler.scheduled(), 0u);
  EXPECT_EQ(shard.scheduler.next_deadline_ms(), std::nullopt);
  size_t final_outcomes = 0;
  for (const Outcome& outcome : shard.scheduler.take_outcomes()) {
    final_outcomes += spool::is_final(outcome.outcome.state) ? 1 : 0;
  }
  EXPECT_EQ(final_outcomes, 11u);
}

}  // namespace
}  // namespace sluice::relay
