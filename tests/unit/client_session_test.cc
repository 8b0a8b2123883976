// Tests for the SMTP client session: scripted servers, byte for byte. What the client writes and
// when (with and without PIPELINING), the handshake (HELO fallback, refused greetings), checks
// made before anything is sent (SIZE, SMTPUTF8, 8BITMIME), results per recipient, the end of a
// connection (421, close, timeouts, QUIT), several transactions on one connection, every split of
// the server's stream, and hostile servers (garbage, endless replies, long lines, bare LF).
#include "engine/smtp/client_session.h"

#include <gtest/gtest.h>

#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "engine/smtp/server_session.h"

namespace sluice::smtp {
namespace {

constexpr std::string_view kBodyMark = "<body from the spool>";
constexpr std::string_view kGreeting = "220 mx.example.test ESMTP\r\n";
constexpr std::string_view kEhloPipelining =
    "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-DSN\r\n"
    "250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";
constexpr std::string_view kEhloPlain = "250-mx.example.test\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n";

ClientTransaction transaction(std::vector<std::string> recipients, std::string sender = "a@example.org") {
  ClientTransaction t;
  t.sender = std::move(sender);
  for (std::string& r : recipients) {
    t.recipients.push_back(ClientRecipient{std::move(r), 0, ""});
  }
  t.size_octets = 1000;
  return t;
}

// A client session and its owner: hands in the queued transactions one at a time, sends the body
// (kBodyMark stands for the spool's bytes) and finishes when nothing is left.
class Owner {
 public:
  explicit Owner(std::deque<ClientTransaction> queue, ClientSettings settings = default_settings())
      : _settings(std::move(settings)), session(&_settings, now_ms), queue(std::move(queue)) {}

  static ClientSettings default_settings() {
    ClientSettings settings;
    settings.hostname = "relay.example.test";
    return settings;
  }

  // The server's bytes, in one piece.
  void server(std::string_view bytes) {
    while (true) {
      const ClientStep step = session.on_input(bytes, now_ms, written);
      bytes.remove_prefix(step.consumed);
      act(step.action);
      if (step.action == ClientAction::none || step.action == ClientAction::close) {
        EXPECT_TRUE(step.action == ClientAction::close || bytes.empty());
        return;
      }
    }
  }

  void act(ClientAction action) {
    actions.push_back(action);
    switch (action) {
      case ClientAction::none:
        return;
      case ClientAction::send_body:
        written += kBodyMark;
        session.body_queued(true, now_ms, written);
        session.body_sent(now_ms);
        return;
      case ClientAction::ready:
        next();
        return;
      case ClientAction::transaction_done:
        results.push_back(session.take_results());
        if (session.state() == ClientState::idle) {
          next();
        } else if (session.state() == ClientState::closed) {
          closed = true;
        }
        return;
      case ClientAction::close:
        closed = true;
        return;
    }
  }

  void next() {
    if (queue.empty() || !auto_start) {
      if (auto_finish) {
        act(session.finish(now_ms, written));
      }
      return;
    }
    ClientTransaction t = std::move(queue.front());
    queue.pop_front();
    act(session.start_transaction(std::move(t), now_ms, written));
  }

  std::string take_written() {
    std::string w = std::move(written);
    written.clear();
    return w;
  }

  ClientSettings _settings;
  uint64_t now_ms = 1'000'000;
  ClientSession session;
  std::deque<ClientTransaction> queue;
  std::string written;
  std::vector<std::vector<RecipientResult>> results;
  std::vector<ClientAction> actions;
  bool closed = false;
  bool auto_start = true;
  bool auto_finish = true;
};

std::vector<DeliveryStatus> statuses(const std::vector<RecipientResult>& results) {
  std::vector<DeliveryStatus> out;
  for (const RecipientResult& r : results) {
    out.push_back(r.status);
  }
  return out;
}

using enum DeliveryStatus;

TEST(ClientSession, PipelinedTransactionWritesOneGroup) {
  Owner o({transaction({"b@example.net", "c@example.net"})});
  EXPECT_EQ(o.take_written(), "");
  o.server(kGreeting);
  EXPECT_EQ(o.take_written(), "EHLO relay.example.test\r\n");
  o.server(kEhloPipelining);
  EXPECT_EQ(o.take_written(),
            "MAIL FROM:<a@example.org> SIZE=1000\r\n"
            "RCPT TO:<b@example.net>\r\n"
            "RCPT TO:<c@example.net>\r\n"
            "DATA\r\n");
  EXPECT_TRUE(o.session.capabilities().pipelining);
  o.server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  EXPECT_EQ(o.take_written(), "");
  o.server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(o.take_written(), "");
  o.server("354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_EQ(o.take_written(), std::string(kBodyMark) + ".\r\n");
  EXPECT_EQ(o.session.state(), ClientState::body);
  EXPECT_TRUE(o.results.empty());
  o.server("250 2.0.0 Ok: queued as 0123456789ABCDEF\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{delivered, delivered}));
  EXPECT_EQ(o.results[0][0].code, 250);
  EXPECT_EQ(o.results[0][0].command, ClientCommand::data_end);
  EXPECT_EQ(o.results[0][0].text, "2.0.0 Ok: queued as 0123456789ABCDEF");
  EXPECT_EQ(o.results[0][0].enhanced, (EnhancedStatus{2, 0, 0}));
  // Nothing left: QUIT, done on 221.
  EXPECT_EQ(o.take_written(), "QUIT\r\n");
  EXPECT_EQ(o.session.state(), ClientState::quitting);
  o.server("221 2.0.0 Bye\r\n");
  EXPECT_TRUE(o.closed);
  EXPECT_EQ(o.session.state(), ClientState::closed);
  EXPECT_FALSE(o.session.failure().has_value());
}

TEST(ClientSession, LockstepWithoutPipelining) {
  Owner o({transaction({"b@example.net", "c@example.net"})});
  o.server(kGreeting);
  EXPECT_EQ(o.take_written(), "EHLO relay.example.test\r\n");
  o.server(kEhloPlain);
  EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org> SIZE=1000\r\n");
  o.server("250 2.1.0 Ok\r\n");
  EXPECT_EQ(o.take_written(), "RCPT TO:<b@example.net>\r\n");
  o.server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(o.take_written(), "RCPT TO:<c@example.net>\r\n");
  o.server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(o.take_written(), "DATA\r\n");
  o.server("354 go ahead\r\n");
  EXPECT_EQ(o.take_written(), std::string(kBodyMark) + ".\r\n");
  o.server("250 ok\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{delivered, delivered}));
  // A reply without an enhanced code gets class.0.0.
  EXPECT_EQ(o.results[0][1].enhanced, (EnhancedStatus{2, 0, 0}));
  EXPECT_EQ(o.take_written(), "QUIT\r\n");
  // The server closes instead of answering QUIT: a clean end too.
  EXPECT_EQ(o.session.on_close(), ClientAction::close);
  EXPECT_FALSE(o.session.failure().has_value());
}

// sluice-bench --pipelining off: one command at a time although the server offers PIPELINING.
TEST(ClientSession, PipeliningOffInTheSettingsGoesLockstep) {
  ClientSettings settings = Owner::default_settings();
  settings.pipelining = false;
  Owner o({transaction({"b@example.net", "c@example.net"})}, settings);
  o.server(kGreeting);
  EXPECT_EQ(o.take_written(), "EHLO relay.example.test\r\n");
  o.server(kEhloPipelining);
  EXPECT_FALSE(o.session.capabilities().pipelining);
  EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org> SIZE=1000\r\n");
  o.server("250 2.1.0 Ok\r\n");
  EXPECT_EQ(o.take_written(), "RCPT TO:<b@example.net>\r\n");
  o.server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(o.take_written(), "RCPT TO:<c@example.net>\r\n");
  o.server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(o.take_written(), "DATA\r\n");
  o.server("354 go ahead\r\n250 ok\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{delivered, delivered}));
}

// The reply observer sees every reply to a command sent, in order, with its command.
TEST(ClientSession, ReplyObserverSeesEachStep) {
  struct Recorder : ClientReplyObserver {
    void on_reply(ClientCommand command, uint16_t code) override { seen.emplace_back(command, code); }
    std::vector<std::pair<ClientCommand, uint16_t>> seen;
  } recorder;
  Owner o({transaction({"b@example.net", "c@example.net"})});
  o.session.set_reply_observer(&recorder);
  o.server(kGreeting);
  o.server(kEhloPipelining);
  o.server("250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n250 queued\r\n221 bye\r\n");
  using enum ClientCommand;
  EXPECT_EQ(recorder.seen, (std::vector<std::pair<ClientCommand, uint16_t>>{
                               {greeting, 220}, {ehlo, 250}, {mail, 250}, {rcpt, 250}, {rcpt, 550},
                               {data, 354}, {data_end, 250}, {quit, 221}}));
}

TEST(ClientSession, ExtensionParametersOnlyWhenOffered) {
  ClientTransaction t = transaction({"b@example.net", "c@example.net"}, "");
  t.body_8bit = true;
  t.smtputf8 = true;
  t.ret = DsnRet::hdrs;
  t.envid = "QQ+2Bid";
  t.recipients[0].notify = kNotifySuccess | kNotifyDelay;
  t.recipients[0].orcpt = "rfc822;b@example.net";
  t.recipients[1].notify = kNotifyNever;
  Owner o({t});
  o.server(kGreeting);
  o.take_written();
  o.server(kEhloPipelining);
  EXPECT_EQ(o.take_written(),
            "MAIL FROM:<> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bid\r\n"
            "RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@example.net\r\n"
            "RCPT TO:<c@example.net> NOTIFY=NEVER\r\n"
            "DATA\r\n");

  // Without DSN and SIZE: none of their parameters.
  t.body_8bit = false;
  t.smtputf8 = false;
  Owner plain({t});
  plain.server(kGreeting);
  plain.take_written();
  plain.server("250-mx\r\n250 PIPELINING\r\n");
  EXPECT_EQ(plain.take_written(), "MAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n");
}

TEST(ClientSession, HeloFallbackUsesNoExtension) {
  for (const std::string_view refusal :
       {"502 5.5.1 Error: command not implemented\r\n", "500 unknown\r\n", "550 no ESMTP here\r\n"}) {
    Owner o({transaction({"b@example.net"})});
    o.server(kGreeting);
    EXPECT_EQ(o.take_written(), "EHLO relay.example.test\r\n");
    o.server(refusal);
    EXPECT_EQ(o.take_written(), "HELO relay.example.test\r\n");
    o.server("250 mx.example.test\r\n");
    EXPECT_FALSE(o.session.esmtp());
    EXPECT_FALSE(o.session.capabilities().pipelining);
    EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org>\r\n");
    o.server("250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
    ASSERT_EQ(o.results.size(), 1u);
    EXPECT_EQ(statuses(o.results[0]), (std::vector{delivered}));
    EXPECT_EQ(o.take_written(), "RCPT TO:<b@example.net>\r\nDATA\r\n" + std::string(kBodyMark) + ".\r\nQUIT\r\n");
  }
}

TEST(ClientSession, HandshakeRefusalsGiveEveryRecipientTheReply) {
  struct Case {
    std::string_view server;
    DeliveryStatus status;
    ClientCommand command;
  };
  for (const Case& c : {Case{"554 5.7.1 go away\r\n", bounced, ClientCommand::greeting},
                        Case{"421 4.3.2 busy\r\n", deferred, ClientCommand::greeting},
                        Case{"450 not now\r\n", deferred, ClientCommand::greeting},
                        Case{"220 hi\r\n451 4.3.0 EHLO trouble\r\n", deferred, ClientCommand::ehlo},
                        Case{"220 hi\r\n502 no\r\n554 5.7.1 no HELO\r\n", bounced, ClientCommand::helo}}) {
    // The transaction was handed in before the greeting.
    Owner o({});
    ASSERT_TRUE(o.session.can_start());
    EXPECT_EQ(o.session.start_transaction(transaction({"b@example.net", "c@example.net"}), o.now_ms, o.written),
              ClientAction::none);
    o.server(c.server);
    ASSERT_EQ(o.results.size(), 1u) << c.server;
    EXPECT_EQ(statuses(o.results[0]), (std::vector{c.status, c.status}));
    EXPECT_EQ(o.results[0][0].command, c.command);
    EXPECT_EQ(o.results[0][0].cause, ResultCause::reply);
    ASSERT_TRUE(o.session.failure().has_value());
    EXPECT_EQ(o.session.failure()->status, c.status);
    EXPECT_TRUE(o.written.ends_with("QUIT\r\n")) << o.written;
    EXPECT_EQ(o.written.find("MAIL"), std::string::npos);
    EXPECT_EQ(o.session.state(), ClientState::quitting);
    o.server("221 bye\r\n");
    EXPECT_TRUE(o.closed);
  }
}

TEST(ClientSession, RefusalsBeforeSendingAnything) {
  struct Case {
    std::string_view ehlo;
    uint64_t size;
    bool smtputf8;
    bool body_8bit;
    ResultCause cause;
    EnhancedStatus enhanced;
  };
  const std::vector<Case> cases = {
      {"250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", 1001, false, false, ResultCause::message_too_big, {5, 3, 4}},
      {"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n", 10, true, false, ResultCause::smtputf8_refused, {5, 6, 7}},
      {"250-mx\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n", 10, false, true, ResultCause::eight_bit_refused, {5, 6, 3}},
  };
  for (const Case& c : cases) {
    ClientTransaction t = transaction({"b@example.net", "c@example.net"});
    t.size_octets = c.size;
    t.smtputf8 = c.smtputf8;
    t.body_8bit = c.body_8bit;
    // A second transaction that fits follows on the same connection.
    Owner o({t, transaction({"d@example.net"})});
    o.server(kGreeting);
    o.take_written();
    o.server(c.ehlo);
    ASSERT_EQ(o.results.size(), 1u);
    EXPECT_EQ(statuses(o.results[0]), (std::vector{bounced, bounced}));
    EXPECT_EQ(o.results[0][0].cause, c.cause);
    EXPECT_EQ(o.results[0][0].enhanced, c.enhanced);
    EXPECT_EQ(o.results[0][0].code, 0);
    // Nothing of the refused one was sent, and no RSET before the next.
    EXPECT_TRUE(o.take_written().starts_with("MAIL FROM:<a@example.org>"));
  }
  // Exactly the advertised limit is allowed.
  ClientTransaction t = transaction({"b@example.net"});
  t.size_octets = 1000;
  Owner o({t});
  o.server(kGreeting);
  o.take_written();
  o.server("250-mx\r\n250 SIZE 1000\r\n");
  EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org> SIZE=1000\r\n");
  // SIZE without a limit: SIZE= is sent, nothing is refused.
  t.size_octets = 99'000'000;
  Owner unlimited({t});
  unlimited.server(kGreeting);
  unlimited.take_written();
  unlimited.server("250-mx\r\n250 SIZE\r\n");
  EXPECT_EQ(unlimited.take_written(), "MAIL FROM:<a@example.org> SIZE=99000000\r\n");
}

TEST(ClientSession, EnvelopeWithLineBreakIsNeverSent) {
  Owner o({transaction({"b@example.net\r\nRCPT TO:<evil@example.net>"})});
  o.server(kGreeting);
  o.take_written();
  o.server(kEhloPipelining);
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(o.results[0][0].cause, ResultCause::invalid_envelope);
  EXPECT_EQ(o.results[0][0].status, bounced);
  EXPECT_EQ(o.take_written(), "QUIT\r\n");
}

TEST(ClientSession, PerRecipientMix) {
  for (const bool pipelining : {true, false}) {
    Owner o({transaction({"ok@example.net", "later@example.net", "gone@example.net"})});
    o.server(kGreeting);
    o.server(pipelining ? kEhloPipelining : kEhloPlain);
    o.server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.2.0 try later\r\n550 5.1.1 <gone@example.net>: unknown\r\n");
    o.server("354 go\r\n250 2.0.0 queued\r\n");
    ASSERT_EQ(o.results.size(), 1u);
    const std::vector<RecipientResult>& r = o.results[0];
    EXPECT_EQ(statuses(r), (std::vector{delivered, deferred, bounced}));
    EXPECT_EQ(r[0].command, ClientCommand::data_end);
    EXPECT_EQ(r[1].command, ClientCommand::rcpt);
    EXPECT_EQ(r[1].code, 451);
    EXPECT_EQ(r[1].enhanced, (EnhancedStatus{4, 2, 0}));
    EXPECT_EQ(r[2].text, "5.1.1 <gone@example.net>: unknown");
    EXPECT_EQ(r[2].enhanced, (EnhancedStatus{5, 1, 1}));
    EXPECT_EQ(o.written.find("RSET"), std::string::npos);
  }
}

TEST(ClientSession, AllRecipientsRefused) {
  // Without pipelining: no DATA, the next transaction starts with RSET.
  Owner lockstep({transaction({"x@example.net", "y@example.net"}), transaction({"z@example.net"})});
  lockstep.server(kGreeting);
  lockstep.server(kEhloPlain);
  lockstep.take_written();
  lockstep.server("250 ok\r\n550 5.1.1 no\r\n452 4.5.3 full\r\n");
  ASSERT_EQ(lockstep.results.size(), 1u);
  EXPECT_EQ(statuses(lockstep.results[0]), (std::vector{bounced, deferred}));
  EXPECT_EQ(lockstep.take_written(), "RCPT TO:<x@example.net>\r\nRCPT TO:<y@example.net>\r\nRSET\r\n");
  lockstep.server("250 ok\r\n");
  EXPECT_EQ(lockstep.take_written(), "MAIL FROM:<a@example.org> SIZE=1000\r\n");

  // With pipelining: DATA was sent; its 554 is read, and RSET goes with the next group.
  Owner piped({transaction({"x@example.net", "y@example.net"}), transaction({"z@example.net"})});
  piped.server(kGreeting);
  piped.server(kEhloPipelining);
  piped.take_written();
  piped.server("250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n");
  EXPECT_TRUE(piped.results.empty());
  piped.server("554 5.5.1 Error: no valid recipients\r\n");
  ASSERT_EQ(piped.results.size(), 1u);
  EXPECT_EQ(statuses(piped.results[0]), (std::vector{bounced, bounced}));
  EXPECT_EQ(piped.results[0][0].command, ClientCommand::rcpt);
  EXPECT_EQ(piped.take_written(), "RSET\r\nMAIL FROM:<a@example.org> SIZE=1000\r\nRCPT TO:<z@example.net>\r\nDATA\r\n");
  piped.server("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
  ASSERT_EQ(piped.results.size(), 2u);
  EXPECT_EQ(statuses(piped.results[1]), (std::vector{delivered}));

  // A pipelining server that says 354 anyway gets an empty message, and the results stand.
  Owner stray({transaction({"x@example.net"})});
  stray.server(kGreeting);
  stray.server(kEhloPipelining);
  stray.take_written();
  stray.server("250 ok\r\n550 5.1.1 no\r\n354 go\r\n");
  EXPECT_EQ(stray.take_written(), ".\r\n");
  stray.server("250 2.0.0 empty message queued\r\n");
  ASSERT_EQ(stray.results.size(), 1u);
  EXPECT_EQ(statuses(stray.results[0]), (std::vector{bounced}));
}

TEST(ClientSession, MailRefusedGivesEveryRecipientItsReply) {
  for (const bool pipelining : {true, false}) {
    Owner o({transaction({"x@example.net", "y@example.net"})});
    o.server(kGreeting);
    o.server(pipelining ? kEhloPipelining : kEhloPlain);
    o.take_written();
    o.server("553 5.7.1 sender rejected\r\n");
    if (pipelining) {
      EXPECT_TRUE(o.results.empty());
      o.server("503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
    }
    ASSERT_EQ(o.results.size(), 1u);
    EXPECT_EQ(statuses(o.results[0]), (std::vector{bounced, bounced}));
    EXPECT_EQ(o.results[0][1].command, ClientCommand::mail);
    EXPECT_EQ(o.results[0][1].text, "5.7.1 sender rejected");
    EXPECT_EQ(o.take_written(), "QUIT\r\n");
  }
}

TEST(ClientSession, ServiceClosingInTheMiddle) {
  Owner o({transaction({"x@example.net", "y@example.net", "z@example.net"})});
  o.server(kGreeting);
  o.server(kEhloPipelining);
  o.take_written();
  o.server("250 ok\r\n550 5.1.1 no\r\n421 4.3.2 shutting down\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{bounced, deferred, deferred}));
  EXPECT_EQ(o.results[0][1].code, 421);
  EXPECT_EQ(o.results[0][2].text, "4.3.2 shutting down");
  EXPECT_EQ(o.take_written(), "QUIT\r\n");
  EXPECT_EQ(o.session.state(), ClientState::quitting);
  ASSERT_TRUE(o.session.failure().has_value());
  EXPECT_EQ(o.session.on_close(), ClientAction::close);

  // 421 after the data: the accepted recipients are deferred.
  Owner late({transaction({"x@example.net"})});
  late.server(kGreeting);
  late.server(kEhloPipelining);
  late.server("250 ok\r\n250 ok\r\n354 go\r\n421 4.4.2 timeout\r\n");
  ASSERT_EQ(late.results.size(), 1u);
  EXPECT_EQ(statuses(late.results[0]), (std::vector{deferred}));
  EXPECT_EQ(late.results[0][0].command, ClientCommand::data_end);

  // 421 on an idle pooled connection ends it.
  Owner idle({});
  idle.auto_finish = false;
  idle.server(kGreeting);
  idle.server(kEhloPipelining);
  EXPECT_EQ(idle.session.state(), ClientState::idle);
  idle.take_written();
  idle.server("421 4.4.2 idle timeout\r\n");
  EXPECT_EQ(idle.take_written(), "QUIT\r\n");
  EXPECT_FALSE(idle.session.can_start());
}

TEST(ClientSession, RefusalAfterTheData) {
  for (const std::string_view final_reply : {"554 5.7.1 spam\r\n", "452 4.3.1 full\r\n"}) {
    Owner o({transaction({"x@example.net", "y@example.net"}), transaction({"z@example.net"})});
    o.server(kGreeting);
    o.server(kEhloPipelining);
    o.server("250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n");
    o.take_written();
    o.server(final_reply);
    ASSERT_EQ(o.results.size(), 1u);
    const DeliveryStatus expected = final_reply[0] == '5' ? bounced : deferred;
    EXPECT_EQ(statuses(o.results[0]), (std::vector{expected, bounced}));
    EXPECT_EQ(o.results[0][0].command, ClientCommand::data_end);
    // The transaction ended with the final reply: no RSET before the next.
    EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org> SIZE=1000\r\nRCPT TO:<z@example.net>\r\nDATA\r\n");
  }
  // DATA itself refused for the accepted recipients.
  Owner o({transaction({"x@example.net"})});
  o.server(kGreeting);
  o.server(kEhloPipelining);
  o.server("250 ok\r\n250 ok\r\n451 4.3.0 no DATA now\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{deferred}));
  EXPECT_EQ(o.results[0][0].command, ClientCommand::data);
}

TEST(ClientSession, TwoTransactionsOnOneConnection) {
  Owner o({transaction({"x@example.net"}), transaction({"y@example.net", "z@example.net"}, "q@example.org")});
  o.server(kGreeting);
  o.take_written();
  o.server(kEhloPipelining);
  EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org> SIZE=1000\r\nRCPT TO:<x@example.net>\r\nDATA\r\n");
  o.server("250 ok\r\n250 ok\r\n354 go\r\n");
  EXPECT_EQ(o.take_written(), std::string(kBodyMark) + ".\r\n");
  o.server("250 2.0.0 queued as A\r\n");
  EXPECT_EQ(o.take_written(),
            "MAIL FROM:<q@example.org> SIZE=1000\r\nRCPT TO:<y@example.net>\r\nRCPT TO:<z@example.net>\r\nDATA\r\n");
  o.server("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued as B\r\n");
  ASSERT_EQ(o.results.size(), 2u);
  EXPECT_EQ(o.results[0][0].text, "2.0.0 queued as A");
  EXPECT_EQ(o.results[1][1].text, "2.0.0 queued as B");
  EXPECT_EQ(o.session.transactions(), 2u);
  EXPECT_EQ(o.take_written(), std::string(kBodyMark) + ".\r\nQUIT\r\n");
}

TEST(ClientSession, BodyWithoutFinalCrlfGetsOne) {
  ClientSettings settings = Owner::default_settings();
  ClientSession session(&settings, 0);
  std::string out;
  EXPECT_EQ(session.on_input(kGreeting, 0, out).action, ClientAction::none);
  EXPECT_EQ(session.on_input("250 mx\r\n", 0, out).action, ClientAction::ready);
  session.start_transaction(transaction({"x@example.net"}), 0, out);
  EXPECT_EQ(session.on_input("250 ok\r\n250 ok\r\n354 go\r\n", 0, out).action, ClientAction::send_body);
  out.clear();
  session.body_queued(false, 0, out);
  EXPECT_EQ(out, "\r\n.\r\n");
}

// --- the connection's end: closes and timeouts ---------------------------------------------------

TEST(ClientSession, ConnectionLostDefersEverythingInFlight) {
  Owner o({transaction({"x@example.net", "y@example.net"})});
  o.server(kGreeting);
  o.server(kEhloPipelining);
  o.server("250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n");
  o.act(o.session.on_close());
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{bounced, deferred}));
  EXPECT_EQ(o.results[0][1].cause, ResultCause::connection_lost);
  EXPECT_EQ(o.results[0][1].enhanced, (EnhancedStatus{4, 4, 2}));
  EXPECT_TRUE(o.closed);
  // A reply cut short by the close is no reply.
  Owner cut({transaction({"x@example.net"})});
  cut.server(kGreeting);
  cut.server(kEhloPipelining);
  cut.server("250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queu");
  cut.act(cut.session.on_close());
  ASSERT_EQ(cut.results.size(), 1u);
  EXPECT_EQ(statuses(cut.results[0]), (std::vector{deferred}));
}

TEST(ClientSession, TimeoutsFollowRfc5321) {
  ClientSettings settings = Owner::default_settings();
  const ClientTimeouts& t = settings.timeouts;
  EXPECT_EQ(t.timeout_ms_greeting, 300'000u);
  EXPECT_EQ(t.timeout_ms_mail, 300'000u);
  EXPECT_EQ(t.timeout_ms_rcpt, 300'000u);
  EXPECT_EQ(t.timeout_ms_data_initiation, 120'000u);
  EXPECT_EQ(t.timeout_ms_data_block, 180'000u);
  EXPECT_EQ(t.timeout_ms_data_termination, 600'000u);

  ClientSession session(&settings, 1000);
  std::string out;
  EXPECT_EQ(session.next_deadline_ms(), 1000 + t.timeout_ms_greeting);
  EXPECT_EQ(session.on_timeout(1000 + t.timeout_ms_greeting - 1, out), ClientAction::none);
  session.on_input(kGreeting, 2000, out);
  EXPECT_EQ(session.next_deadline_ms(), 2000 + t.timeout_ms_command);
  EXPECT_EQ(session.on_input(kEhloPipelining, 3000, out).action, ClientAction::ready);
  EXPECT_EQ(session.next_deadline_ms(), std::nullopt);  // idle: the owner's pool decides
  session.start_transaction(transaction({"x@example.net", "y@example.net"}), 4000, out);
  EXPECT_EQ(session.next_deadline_ms(), 4000 + t.timeout_ms_mail);
  session.on_input("250 ok\r\n", 5000, out);
  EXPECT_EQ(session.next_deadline_ms(), 5000 + t.timeout_ms_rcpt);
  session.on_input("250 ok\r\n250 ok\r\n", 6000, out);
  EXPECT_EQ(session.next_deadline_ms(), 6000 + t.timeout_ms_data_initiation);
  EXPECT_EQ(session.on_input("354 go\r\n", 7000, out).action, ClientAction::send_body);
  session.body_queued(true, 7000, out);
  EXPECT_EQ(session.next_deadline_ms(), 7000 + t.timeout_ms_data_block);
  session.body_progress(8000);
  EXPECT_EQ(session.next_deadline_ms(), 8000 + t.timeout_ms_data_block);
  session.body_sent(9000);
  const uint64_t due = 9000 + t.timeout_ms_data_termination;
  EXPECT_EQ(session.next_deadline_ms(), due);
  EXPECT_EQ(session.on_timeout(due - 1, out), ClientAction::none);
  ASSERT_EQ(session.on_timeout(due, out), ClientAction::transaction_done);
  const std::vector<RecipientResult> results = session.take_results();
  EXPECT_EQ(statuses(results), (std::vector{deferred, deferred}));
  EXPECT_EQ(results[0].cause, ResultCause::timeout);
  EXPECT_EQ(results[0].command, ClientCommand::data_end);
  EXPECT_EQ(session.state(), ClientState::closed);
  EXPECT_EQ(session.next_deadline_ms(), std::nullopt);
}

TEST(ClientSession, TimeoutInTheGreetingAndInQuit) {
  ClientSettings settings = Owner::default_settings();
  ClientSession session(&settings, 0);
  std::string out;
  session.start_transaction(transaction({"x@example.net"}), 0, out);
  ASSERT_EQ(session.on_timeout(*session.next_deadline_ms(), out), ClientAction::transaction_done);
  EXPECT_EQ(session.take_results()[0].command, ClientCommand::greeting);
  EXPECT_EQ(out, "");

  ClientSession quitter(&settings, 0);
  quitter.on_input(kGreeting, 0, out);
  quitter.on_input(kEhloPlain, 0, out);
  out.clear();
  EXPECT_EQ(quitter.finish(10, out), ClientAction::none);
  EXPECT_EQ(out, "QUIT\r\n");
  EXPECT_EQ(quitter.next_deadline_ms(), 10 + settings.timeouts.timeout_ms_command);
  EXPECT_EQ(quitter.on_timeout(*quitter.next_deadline_ms(), out), ClientAction::close);
  EXPECT_FALSE(quitter.failure().has_value());
}

// --- every split of the server's stream -----------------------------------------------------------

struct Transcript {
  std::string written;
  std::vector<std::vector<RecipientResult>> results;
  bool closed = false;
  friend bool operator==(const Transcript&, const Transcript&) = default;
};

std::deque<ClientTransaction> two_transactions() {
  ClientTransaction second = transaction({"y@example.net", "z@example.net", "w@example.net"}, "q@example.org");
  second.body_8bit = true;
  return {transaction({"x@example.net", "gone@example.net"}), second};
}

// `stream` fed in pieces cut at `cuts` (ascending), then the connection closes.
Transcript run_pieces(std::string_view stream, const std::vector<size_t>& cuts) {
  Owner o(two_transactions());
  size_t from = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t to = i < cuts.size() ? cuts[i] : stream.size();
    o.server(stream.substr(from, to - from));
    from = to;
  }
  o.act(o.session.on_close());
  return Transcript{o.written, o.results, o.closed};
}

TEST(ClientSession, EverySplitOfTheServerStreamGivesTheSameRun) {
  const std::string pipelined = std::string(kGreeting) + std::string(kEhloPipelining) +
                                "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go\r\n"
                                "250 2.0.0 queued as A\r\n"
                                "250 ok\r\n250 ok\r\n451 4.2.0 later\r\n250 ok\r\n354 go\r\n250 2.0.0 queued as B\r\n"
                                "221 2.0.0 Bye\r\n";
  const std::string lockstep = std::string(kGreeting) + "502 5.5.1 no EHLO\r\n250 mx\r\n" +
                               "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n250 queued\r\n221 bye\r\n";
  for (const std::string& stream : {pipelined, lockstep}) {
    const Transcript whole = run_pieces(stream, {});
    ASSERT_FALSE(whole.results.empty());
    for (size_t cut = 0; cut <= stream.size(); ++cut) {
      ASSERT_EQ(run_pieces(stream, {cut}), whole) << "cut at " << cut;
    }
    std::vector<size_t> every;
    for (size_t i = 1; i < stream.size(); ++i) {
      every.push_back(i);
    }
    EXPECT_EQ(run_pieces(stream, every), whole);
  }
  // What the pipelined run is.
  const Transcript run = run_pieces(pipelined, {});
  ASSERT_EQ(run.results.size(), 2u);
  EXPECT_EQ(statuses(run.results[0]), (std::vector{delivered, bounced}));
  EXPECT_EQ(run.results[0][1].text, "5.1.1 no such 5.1.1 user");
  EXPECT_EQ(statuses(run.results[1]), (std::vector{delivered, deferred, delivered}));
  EXPECT_NE(run.written.find("MAIL FROM:<q@example.org> SIZE=1000 BODY=8BITMIME\r\n"), std::string::npos);
  EXPECT_TRUE(run.written.ends_with("QUIT\r\n"));
  // The lockstep run: HELO, so the 8-bit second message is refused without being sent.
  const Transcript plain = run_pieces(lockstep, {});
  ASSERT_EQ(plain.results.size(), 2u);
  EXPECT_EQ(statuses(plain.results[0]), (std::vector{delivered, bounced}));
  EXPECT_EQ(plain.results[1][0].cause, ResultCause::eight_bit_refused);
  EXPECT_EQ(plain.written.find("q@example.org"), std::string::npos);
}

// --- hostile servers ------------------------------------------------------------------------------

// The server's `reply` comes where the RCPT replies are due: everything is deferred as a protocol
// error, and nothing more is written (not even QUIT: the framing is lost).
void expect_protocol_error_at_rcpt(std::string_view reply) {
  Owner o({transaction({"x@example.net", "y@example.net"})});
  o.server(kGreeting);
  o.server(kEhloPipelining);
  o.server("250 ok\r\n");
  o.take_written();
  o.server(reply);
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{deferred, deferred}));
  EXPECT_EQ(o.results[0][0].cause, ResultCause::protocol_error);
  EXPECT_EQ(o.results[0][0].enhanced, (EnhancedStatus{4, 5, 0}));
  EXPECT_TRUE(o.closed);
  EXPECT_EQ(o.session.state(), ClientState::closed);
  EXPECT_EQ(o.take_written(), "");
  ASSERT_TRUE(o.session.failure().has_value());
  EXPECT_EQ(o.session.failure()->cause, ResultCause::protocol_error);
  // Whatever follows is dropped.
  std::string out;
  EXPECT_EQ(o.session.on_input("250 ok\r\n", 0, out).action, ClientAction::close);
  EXPECT_EQ(out, "");
}

TEST(ClientSession, EndlessMultiLineReply) {
  std::string endless;
  for (size_t i = 0; i <= kReplyLinesMax; ++i) {
    endless += "250-still going\r\n";
  }
  expect_protocol_error_at_rcpt(endless);
  std::string huge;  // under the line count, over the octet limit
  while (huge.size() <= kReplyOctetsMax) {
    huge += "550-" + std::string(500, 'x') + "\r\n";
  }
  expect_protocol_error_at_rcpt(huge);
}

TEST(ClientSession, ReplyLineOverTheLimit) {
  // A permanent refusal that cannot be read is no refusal: deferred, not bounced.
  expect_protocol_error_at_rcpt("550 " + std::string(kReplyLineOctetsMax, 'x') + "\r\n");
}

TEST(ClientSession, Garbage) {
  expect_protocol_error_at_rcpt("HTTP/1.1 400 Bad Request\r\n");
  expect_protocol_error_at_rcpt("250 ok\r\n250 ok\r\n250 ok\r\n");  // a reply nobody asked for
  expect_protocol_error_at_rcpt("354 go\r\n");                      // 354 to RCPT
  expect_protocol_error_at_rcpt("250 ok\rX\r\n");                   // bare CR
  expect_protocol_error_at_rcpt("250-ok\r\n550 mixed\r\n");         // codes change inside a reply
  // Garbage instead of a greeting.
  Owner o({transaction({"x@example.net"})});
  o.session.start_transaction(std::move(o.queue.front()), o.now_ms, o.written);
  o.queue.clear();
  o.server("SSH-2.0-OpenSSH_9.2\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(o.results[0][0].cause, ResultCause::protocol_error);
  EXPECT_EQ(o.results[0][0].command, ClientCommand::greeting);
  EXPECT_EQ(o.written, "");
}

TEST(ClientSession, BareLfRepliesAreTolerated) {
  Owner o({transaction({"x@example.net", "y@example.net"})});
  o.server("220 mx\n");
  o.server("250-mx\n250-PIPELINING\n250 SIZE 100000\n");
  o.server("250 ok\n250 ok\n550 5.1.1 no\n354 go\n250 2.0.0 queued\n221 bye\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{delivered, bounced}));
  EXPECT_TRUE(o.closed);
  EXPECT_FALSE(o.session.failure().has_value());
}

TEST(ClientSession, UnsolicitedReplyWhileIdleCloses) {
  Owner o({});
  o.auto_finish = false;
  o.server(kGreeting);
  o.server(kEhloPlain);
  o.take_written();
  o.server("250 surprise\r\n");
  EXPECT_TRUE(o.closed);
  EXPECT_EQ(o.take_written(), "");
  EXPECT_EQ(o.session.failure()->cause, ResultCause::protocol_error);
}

TEST(ClientSession, RsetRefusedDefersAndCloses) {
  Owner o({transaction({"x@example.net"}), transaction({"y@example.net"})});
  o.server(kGreeting);
  o.server(kEhloPipelining);
  o.server("250 ok\r\n550 no\r\n554 no valid recipients\r\n");
  EXPECT_TRUE(
      o.take_written().ends_with("RSET\r\nMAIL FROM:<a@example.org> SIZE=1000\r\nRCPT TO:<y@example.net>\r\nDATA\r\n"));
  o.server("500 5.5.1 what\r\n");
  ASSERT_EQ(o.results.size(), 2u);
  EXPECT_EQ(statuses(o.results[1]), (std::vector{deferred}));
  EXPECT_EQ(o.results[1][0].command, ClientCommand::rset);
  EXPECT_TRUE(o.closed);
}

// --- against our own server session ---------------------------------------------------------------

class AcceptingHost : public SessionHost {
 public:
  bool spool_space_low() const override { return false; }
  void on_reject(const RejectEvent&, const ClientInfo&) override {}
  uint64_t now_ms() const override { return 0; }
};

// Moves bytes between a client session (with its transaction handed in) and our server session
// until the client closes; the body is `body` as the owner would queue it.
struct Conversation {
  std::vector<AcceptedMessage> stored;
  std::vector<RecipientResult> results;
  bool client_closed = false;
};
Conversation converse(ClientSession& session, ServerSession& server, const std::string& body) {
  Conversation c;
  std::string to_client;
  server.greet(to_client);
  for (int round = 0; round < 50 && !c.client_closed; ++round) {
    std::string to_server;
    std::string_view input = to_client;
    while (!input.empty() && !c.client_closed) {
      const ClientStep step = session.on_input(input, 0, to_server);
      input.remove_prefix(step.consumed);
      if (step.action == ClientAction::send_body) {
        to_server += body;
        session.body_queued(true, 0, to_server);
      } else if (step.action == ClientAction::transaction_done) {
        c.results = session.take_results();
        session.finish(0, to_server);
      } else if (step.action == ClientAction::close) {
        c.client_closed = true;
      }
    }
    to_client.clear();
    std::string_view pending = to_server;
    while (!pending.empty()) {
      const SessionStep step = server.on_input(pending, to_client);
      pending.remove_prefix(step.consumed);
      if (step.action == SessionAction::commit) {
        c.stored.push_back(server.take_message());
        server.commit_done(true, "0123456789ABCDEF", to_client);
      } else if (step.action == SessionAction::close) {
        EXPECT_EQ(session.on_close(), ClientAction::close);
        c.client_closed = true;
        break;
      }
    }
  }
  return c;
}

TEST(ClientSession, TalksToOurServerSession) {
  ServerSettings server_settings;
  server_settings.hostname = "mx.example.test";
  server_settings.limits.recipients_max = 2;
  AcceptingHost host;
  ClientInfo client;
  client.address = *io::parse_host_port("127.0.0.1:4000");
  client.relay_allowed = true;
  ServerSession server(&server_settings, &host, client);

  ClientSettings settings = Owner::default_settings();
  ClientSession session(&settings, 0);
  // The spool's wire form: dot-stuffed CRLF lines, without the final ".\r\n".
  const std::string wire_body = "Subject: t\r\n\r\n..a line that began with a dot\r\n8-bit: \xc3\xa9\r\n";
  ClientTransaction t = transaction({"x@example.net", "y@example.net", "z@example.net"});
  t.body_8bit = true;
  t.recipients[0].notify = kNotifyFailure;
  t.recipients[0].orcpt = "rfc822;x@example.net";
  t.ret = DsnRet::full;
  std::string nothing_yet;
  ASSERT_EQ(session.start_transaction(t, 0, nothing_yet), ClientAction::none);
  EXPECT_EQ(nothing_yet, "");

  const Conversation c = converse(session, server, wire_body);
  const std::vector<AcceptedMessage>& stored = c.stored;
  const std::vector<RecipientResult>& results = c.results;
  EXPECT_TRUE(c.client_closed);
  EXPECT_TRUE(session.capabilities().pipelining);
  EXPECT_TRUE(session.capabilities().dsn);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(statuses(results), (std::vector{delivered, delivered, deferred}));  // recipients_max = 2
  EXPECT_EQ(results[0].text, "2.0.0 Ok: queued as 0123456789ABCDEF");
  EXPECT_EQ(results[2].code, 452);
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].body, wire_body);
  EXPECT_EQ(stored[0].sender, "a@example.org");
  EXPECT_EQ(stored[0].recipients, (std::vector<std::string>{"x@example.net", "y@example.net"}));
  EXPECT_TRUE(stored[0].body_8bit);
  EXPECT_EQ(stored[0].ret, DsnRet::full);
  ASSERT_EQ(stored[0].recipient_dsn.size(), 2u);
  EXPECT_EQ(stored[0].recipient_dsn[0].notify, kNotifyFailure);
  EXPECT_EQ(stored[0].recipient_dsn[0].orcpt, "rfc822;x@example.net");
  EXPECT_EQ(stored[0].helo, "relay.example.test");
  EXPECT_FALSE(session.failure().has_value());
}


// --- CHUNKING (sluice-bench send --chunking) -------------------------------------------------------

constexpr std::string_view kEhloChunkingPipelining =
    "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-CHUNKING\r\n250 8BITMIME\r\n";
constexpr std::string_view kEhloChunkingLockstep = "250-mx.example.test\r\n250-CHUNKING\r\n250 8BITMIME\r\n";

ClientSettings chunking_settings() {
  ClientSettings settings = Owner::default_settings();
  settings.chunking = true;
  return settings;
}

TEST(ClientSession, ChunkingPipelinesOneLastChunkAfterTheRcpts) {
  Owner o({transaction({"b@example.net", "c@example.net"}), transaction({"d@example.net"})}, chunking_settings());
  o.server(kGreeting);
  o.take_written();
  o.server(kEhloChunkingPipelining);
  // No DATA, no final dot: the message's exact size_octets, as is, right after the RCPTs.
  EXPECT_EQ(o.take_written(),
            "MAIL FROM:<a@example.org> SIZE=1000\r\n"
            "RCPT TO:<b@example.net>\r\n"
            "RCPT TO:<c@example.net>\r\n"
            "BDAT 1000 LAST\r\n" +
                std::string(kBodyMark));
  EXPECT_EQ(o.session.state(), ClientState::body);
  o.server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n");
  EXPECT_TRUE(o.results.empty());
  o.server("250 2.0.0 Ok: 1000 octets\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{delivered, bounced}));
  EXPECT_EQ(o.results[0][0].command, ClientCommand::data_end);
  EXPECT_EQ(o.results[0][1].command, ClientCommand::rcpt);
  // A BDAT that succeeded ends the transaction cleanly: no RSET before the next.
  EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org> SIZE=1000\r\nRCPT TO:<d@example.net>\r\nBDAT 1000 LAST\r\n" +
                                  std::string(kBodyMark));
  // Refused after the chunk: every accepted recipient gets the reply, and the next one RSETs.
  o.queue.push_back(transaction({"e@example.net"}));
  o.server("250 ok\r\n250 ok\r\n552 5.3.4 too much\r\n");
  ASSERT_EQ(o.results.size(), 2u);
  EXPECT_EQ(statuses(o.results[1]), (std::vector{bounced}));
  EXPECT_EQ(o.results[1][0].code, 552);
  EXPECT_EQ(o.take_written().substr(0, 6), "RSET\r\n");
}

TEST(ClientSession, ChunkingLockstepWaitsForAnAcceptedRcpt) {
  Owner o({transaction({"b@example.net"}), transaction({"c@example.net"})}, chunking_settings());
  o.server(kGreeting);
  o.take_written();
  o.server(kEhloChunkingLockstep);
  EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org>\r\n");
  o.server("250 ok\r\n");
  EXPECT_EQ(o.take_written(), "RCPT TO:<b@example.net>\r\n");
  // Every RCPT refused: no BDAT at all, RSET before the next transaction.
  o.server("550 5.1.1 no\r\n");
  ASSERT_EQ(o.results.size(), 1u);
  EXPECT_EQ(statuses(o.results[0]), (std::vector{bounced}));
  EXPECT_EQ(o.take_written(), "RSET\r\n");
  o.server("250 ok\r\n");
  EXPECT_EQ(o.take_written(), "MAIL FROM:<a@example.org>\r\n");
  o.server("250 ok\r\n");
  EXPECT_EQ(o.take_written(), "RCPT TO:<c@example.net>\r\n");
  o.server("250 ok\r\n");
  EXPECT_EQ(o.take_written(), "BDAT 1000 LAST\r\n" + std::string(kBodyMark));
  o.server("250 ok\r\n");
  ASSERT_EQ(o.results.size(), 2u);
  EXPECT_EQ(statuses(o.results[1]), (std::vector{delivered}));
}

TEST(ClientSession, ChunkingOnlyWhenBothSidesWantIt) {
  // Offered, not asked for (the relay): DATA.
  Owner relay({transaction({"b@example.net"})});
  relay.server(kGreeting);
  relay.server(kEhloChunkingPipelining);
  EXPECT_NE(relay.take_written().find("DATA\r\n"), std::string::npos);
  // Asked for, not offered: DATA.
  Owner bench({transaction({"b@example.net"})}, chunking_settings());
  bench.server(kGreeting);
  bench.server(kEhloPipelining);
  const std::string written = bench.take_written();
  EXPECT_NE(written.find("DATA\r\n"), std::string::npos);
  EXPECT_EQ(written.find("BDAT"), std::string::npos);
}

// BDAT against our own server: the raw message (a line starting with "." is not stuffed on the
// wire) is stored in wire form, stuffed.
TEST(ClientSession, ChunkingTalksToOurServerSession) {
  ServerSettings server_settings;
  server_settings.hostname = "mx.example.test";
  AcceptingHost host;
  ClientInfo client;
  client.address = *io::parse_host_port("127.0.0.1:4000");
  client.relay_allowed = true;
  ServerSession server(&server_settings, &host, client);
  ClientSettings settings = chunking_settings();
  ClientSession session(&settings, 0);
  const std::string raw = "Subject: t\r\n\r\n.a line that begins with a dot\r\nend\r\n";
  ClientTransaction t = transaction({"x@example.net"});
  t.size_octets = raw.size();
  std::string out;
  ASSERT_EQ(session.start_transaction(t, 0, out), ClientAction::none);
  const Conversation c = converse(session, server, raw);
  const std::vector<AcceptedMessage>& stored = c.stored;
  const std::vector<RecipientResult>& results = c.results;
  EXPECT_TRUE(c.client_closed);
  EXPECT_TRUE(session.capabilities().chunking);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(statuses(results), (std::vector{delivered}));
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].body, "Subject: t\r\n\r\n..a line that begins with a dot\r\nend\r\n");
  EXPECT_FALSE(session.failure().has_value());
}

}  // namespace
}  // namespace sluice::smtp
