// The SMTP server state machine without sockets: every reply, the pause at end of data until the
// spool answers, pipelining, limits and the smuggling defences.
#include "engine/smtp/server_session.h"

#include <gtest/gtest.h>

#include <string>

namespace sluice::smtp {
namespace {

// What the session reported, copied out of the event (its views die with the call).
struct Reported {
  RejectReason reason;
  std::string reply;
  std::string address;
  std::string helo;
  bool in_transaction;
  std::string sender;
  std::vector<std::string> recipients;
};

class FakeHost : public SessionHost {
 public:
  bool spool_space_low() const override { return low; }
  void on_reject(const RejectEvent& event, const ClientInfo&) override {
    last_reject = event.reason;
    ++rejects;
    if (!event.log) {
      return;  // counted, not logged: kept out of `reported`
    }
    reported.push_back(Reported{event.reason, std::string(event.reply), std::string(event.address),
                                std::string(event.helo), event.in_transaction, std::string(event.sender),
                                event.recipients ? *event.recipients : std::vector<std::string>{}});
  }
  uint64_t now_ms() const override { return now; }
  HostVerdict mail_verdict(std::string_view) override { return mail; }
  HostVerdict recipient_verdict(std::string_view forward_path) override {
    return forward_path.starts_with("refused") ? rcpt : HostVerdict{};
  }
  HostVerdict mail;  // empty by default: the session's own answers (what the server's shard does)
  HostVerdict rcpt;
  bool low = false;
  RejectReason last_reject = RejectReason::relay_denied;
  int rejects = 0;
  uint64_t now = 1000;
  std::vector<Reported> reported;
};

class ServerSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    settings.hostname = "relay.example.test";
    settings.limits.message_octets_max = 1000;
    settings.limits.recipients_max = 3;
    settings.limits.errors_max = 5;
    settings.relay_domains = {"local.example", ".sub.example"};
    start(true);
  }

  void start(bool relay_allowed) {
    ClientInfo client;
    client.address = *io::parse_host_port("127.0.0.1:4000");
    client.relay_allowed = relay_allowed;
    session.emplace(&settings, &host, client);
    out.clear();
    session->greet(out);
  }

  // Feeds input; on commit, answers "stored" like the shard does, and feeds the rest.
  std::string feed(std::string_view input, bool store_ok = true) {
    out.clear();
    while (true) {
      const SessionStep step = session->on_input(input, out);
      input.remove_prefix(step.consumed);
      if (step.action == SessionAction::commit) {
        last = session->take_message();
        ++commits;
        session->commit_done(store_ok, "0123456789ABCDEF", out);
        continue;
      }
      if (step.action == SessionAction::close) {
        closed = true;
        break;
      }
      if (input.empty()) {
        break;
      }
    }
    return out;
  }

  ServerSettings settings;
  FakeHost host;
  std::optional<ServerSession> session;
  std::string out;
  AcceptedMessage last;
  int commits = 0;
  bool closed = false;
};

TEST_F(ServerSessionTest, GreetsWithHostname) {
  EXPECT_EQ(out, "220 relay.example.test ESMTP Sluice\r\n");
}

TEST_F(ServerSessionTest, EhloAdvertisesExtensions) {
  const std::string reply = feed("EHLO client.example\r\n");
  EXPECT_EQ(reply,
            "250-relay.example.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
            "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n");
  EXPECT_EQ(feed("HELO client.example\r\n"), "250 relay.example.test\r\n");
  EXPECT_EQ(feed("EHLO\r\n").substr(0, 10), "501 5.5.4 ");
}

TEST_F(ServerSessionTest, EhloOfferCanHideExtensions) {
  settings.offer.pipelining = false;
  settings.offer.size = false;
  settings.offer.eight_bit_mime = false;
  EXPECT_EQ(feed("EHLO client.example\r\n"),
            "250-relay.example.test\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n");
  settings.offer.ehlo = false;
  EXPECT_EQ(feed("EHLO client.example\r\n").substr(0, 4), "502 ");
  EXPECT_EQ(feed("HELO client.example\r\n"), "250 relay.example.test\r\n");
  EXPECT_EQ(feed("MAIL FROM:<a@b.example>\r\n"), "250 2.1.0 Ok\r\n");
}

TEST_F(ServerSessionTest, HostVerdictsReplaceTheAnswerToMailAndRcpt) {
  host.rcpt = HostVerdict{"550 5.1.1 No such user\r\n", false};
  feed("EHLO c\r\n");
  EXPECT_EQ(feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<refused@y.example>\r\nRCPT TO:<ok@y.example>\r\n"),
            "250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n250 2.1.5 Ok\r\n");
  EXPECT_EQ(host.rejects, 0);  // the owner's policy, not the client's error
  feed("DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
  EXPECT_EQ(last.recipients, std::vector<std::string>{"ok@y.example"});
  // Every recipient refused by the owner: DATA is 554, as when the session refuses them.
  EXPECT_EQ(feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<refused@y.example>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n554 5.5.1 Error: no valid recipients\r\n");
  host.mail = HostVerdict{"421 4.7.0 Too many messages\r\n", true};
  EXPECT_EQ(feed("RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<ok@y.example>\r\n"),
            "250 2.0.0 Ok\r\n421 4.7.0 Too many messages\r\n");
  EXPECT_TRUE(closed);
}

TEST_F(ServerSessionTest, FullTransactionWaitsForCommit) {
  feed("EHLO c\r\n");
  EXPECT_EQ(feed("MAIL FROM:<a@b.example>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(feed("RCPT TO:<x@y.example>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(feed("DATA\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  // The end of data alone produces no reply until the owner reports the commit.
  out.clear();
  const SessionStep step = session->on_input("Subject: hi\r\n\r\nbody\r\n..dot\r\n.\r\nNOOP\r\n", out);
  EXPECT_EQ(step.action, SessionAction::commit);
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(session->waiting_for_commit());
  // Input after the terminator is not consumed while the commit runs.
  EXPECT_EQ(step.consumed, std::string_view("Subject: hi\r\n\r\nbody\r\n..dot\r\n.\r\n").size());
  AcceptedMessage message = session->take_message();
  EXPECT_EQ(message.body, "Subject: hi\r\n\r\nbody\r\n..dot\r\n");
  EXPECT_EQ(message.rfc_size, message.body.size() - 1);  // one stuffing dot
  EXPECT_EQ(message.sender, "a@b.example");
  ASSERT_EQ(message.recipients.size(), 1u);
  EXPECT_TRUE(message.add_message_id);
  EXPECT_TRUE(message.add_date);
  session->commit_done(true, "0123456789ABCDEF", out);
  EXPECT_EQ(out, "250 2.0.0 Ok: queued as 0123456789ABCDEF\r\n");
}

// The DSN parameters reach the message with their recipients, and none leak into the next
// transaction (after RSET, and after a message).
TEST_F(ServerSessionTest, DsnParametersAreKeptPerTransactionAndRecipient) {
  feed("EHLO c\r\nMAIL FROM:<a@b.example> RET=HDRS ENVID=abc+2Bdef\r\n");
  EXPECT_EQ(feed("RCPT TO:<1@y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;1+40y.example\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(feed("RCPT TO:<2@elsewhere.example> NOTIFY=NEVER\r\n").substr(0, 3), "250");
  EXPECT_EQ(feed("RCPT TO:<3@y.example>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(feed("RCPT TO:<4@y.example> NOTIFY=NEVER,DELAY\r\n").substr(0, 9), "501 5.5.4");  // not added
  feed("DATA\r\nx\r\n.\r\n");
  ASSERT_EQ(commits, 1);
  EXPECT_EQ(last.ret, DsnRet::hdrs);
  EXPECT_EQ(last.envid, "abc+2Bdef");
  ASSERT_EQ(last.recipients.size(), 3u);
  ASSERT_EQ(last.recipient_dsn.size(), 3u);
  EXPECT_EQ(last.recipient_dsn[0].notify, kNotifySuccess | kNotifyFailure);
  EXPECT_EQ(last.recipient_dsn[0].orcpt, "rfc822;1+40y.example");
  EXPECT_EQ(last.recipient_dsn[1].notify, kNotifyNever);
  EXPECT_EQ(last.recipient_dsn[1].orcpt, "");
  EXPECT_EQ(last.recipient_dsn[2].notify, 0);
  EXPECT_EQ(last.recipient_dsn[2].orcpt, "");
  // RSET drops them; the next message has none.
  feed("MAIL FROM:<a@b.example> RET=FULL ENVID=x\r\nRCPT TO:<1@y.example> NOTIFY=DELAY\r\nRSET\r\n");
  feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<1@y.example>\r\nDATA\r\nx\r\n.\r\n");
  ASSERT_EQ(commits, 2);
  EXPECT_EQ(last.ret, DsnRet::none);
  EXPECT_EQ(last.envid, "");
  ASSERT_EQ(last.recipient_dsn.size(), 1u);
  EXPECT_EQ(last.recipient_dsn[0].notify, 0);
}

TEST_F(ServerSessionTest, FailedCommitGives451) {
  feed("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  EXPECT_EQ(feed("x\r\n.\r\n", false), "451 4.3.0 Error: queue file write error\r\n");
}

TEST_F(ServerSessionTest, PipelinedBatchRepliesInOrder) {
  const std::string reply = feed(
      "EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<1@y.example>\r\nRCPT TO:<2@y.example>\r\nDATA\r\n"
      "hello\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<3@y.example>\r\nDATA\r\nagain\r\n.\r\nQUIT\r\n");
  EXPECT_EQ(commits, 2);
  EXPECT_TRUE(closed);
  const std::string expected_tail =
      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
      "250 2.0.0 Ok: queued as 0123456789ABCDEF\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
      "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 0123456789ABCDEF\r\n221 2.0.0 Bye\r\n";
  ASSERT_GE(reply.size(), expected_tail.size());
  EXPECT_EQ(reply.substr(reply.size() - expected_tail.size()), expected_tail);
}

TEST_F(ServerSessionTest, CommandsSplitAcrossReads) {
  feed("EH");
  feed("LO c\r");
  EXPECT_EQ(feed("\nNOOP\r\n").substr(0, 4), "250-");
}

TEST_F(ServerSessionTest, SequenceErrors) {
  EXPECT_EQ(feed("MAIL FROM:<a@b.example>\r\n").substr(0, 10), "503 5.5.1 ");
  feed("EHLO c\r\n");
  EXPECT_EQ(feed("RCPT TO:<x@y.example>\r\n").substr(0, 10), "503 5.5.1 ");
  EXPECT_EQ(feed("DATA\r\n").substr(0, 10), "503 5.5.1 ");
  feed("MAIL FROM:<a@b.example>\r\n");
  EXPECT_EQ(feed("MAIL FROM:<a@b.example>\r\n").substr(0, 10), "503 5.5.1 ");
  EXPECT_EQ(feed("DATA\r\n").substr(0, 10), "503 5.5.1 ");  // no RCPT at all
  settings.relay_domains.clear();
  start(false);
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n");
  EXPECT_EQ(feed("DATA\r\n").substr(0, 10), "554 5.5.1 ");  // every RCPT was refused
}

TEST_F(ServerSessionTest, SimpleCommands) {
  feed("EHLO c\r\n");
  EXPECT_EQ(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(feed("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(feed("VRFY root\r\n").substr(0, 10), "252 2.5.2 ");
  EXPECT_EQ(feed("EXPN staff\r\n").substr(0, 10), "502 5.5.1 ");
  EXPECT_EQ(feed("HELP\r\n").substr(0, 10), "214 2.0.0 ");
  EXPECT_EQ(feed("TURN\r\n").substr(0, 10), "502 5.5.1 ");
  EXPECT_EQ(feed("XYZZY\r\n").substr(0, 10), "500 5.5.1 ");
  EXPECT_EQ(feed("QUIT\r\n"), "221 2.0.0 Bye\r\n");
  EXPECT_TRUE(closed);
}

TEST_F(ServerSessionTest, SizeLimits) {
  feed("EHLO c\r\n");
  EXPECT_EQ(feed("MAIL FROM:<a@b.example> SIZE=1001\r\n").substr(0, 10), "552 5.3.4 ");
  EXPECT_EQ(feed("MAIL FROM:<a@b.example> SIZE=1000\r\n"), "250 2.1.0 Ok\r\n");
  feed("RCPT TO:<x@y.example>\r\nDATA\r\n");
  // Exactly 1000 octets of 100-octet lines, the last one shorter.
  std::string body;
  while (body.size() + 200 <= 1000) {
    body += std::string(98, 'a') + "\r\n";
  }
  body += std::string(1000 - body.size() - 2, 'b') + "\r\n";
  ASSERT_EQ(body.size(), 1000u);
  EXPECT_EQ(feed(body + ".\r\n"), "250 2.0.0 Ok: queued as 0123456789ABCDEF\r\n");
  EXPECT_EQ(last.rfc_size, 1000u);
  feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  EXPECT_EQ(feed("x" + body + ".\r\n").substr(0, 10), "552 5.3.4 ");
  EXPECT_FALSE(closed);
  EXPECT_EQ(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

TEST_F(ServerSessionTest, LongTextLineRefusedAfterData) {
  settings.limits.message_octets_max = 5000;
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  EXPECT_EQ(feed(std::string(999, 'a') + "\r\n.\r\n").substr(0, 10), "500 5.5.2 ");
  EXPECT_FALSE(closed);
  feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  EXPECT_EQ(feed(std::string(998, 'a') + "\r\n.\r\n").substr(0, 4), "250 ");
}

TEST_F(ServerSessionTest, CommandLineLimits) {
  feed("EHLO c\r\n");
  EXPECT_EQ(feed("NOOP " + std::string(505, 'x') + "\r\n").substr(0, 4), "250 ");  // 512 with CRLF
  EXPECT_EQ(feed("NOOP " + std::string(506, 'x') + "\r\n").substr(0, 10), "500 5.5.2 ");
  feed("MAIL FROM:<a@b.example>\r\n");
  // RCPT with ESMTP parameters may be up to 2048 octets (RFC 5321 4.5.3.1.4).
  EXPECT_EQ(feed("RCPT TO:<x@y.example> ORCPT=rfc822;" + std::string(450, 'x') + "@y.example\r\n").substr(0, 4),
            "250 ");
  EXPECT_EQ(feed("RSET " + std::string(3000, 'x') + "\r\n").substr(0, 10), "500 5.5.2 ");
  EXPECT_FALSE(closed);
}

TEST_F(ServerSessionTest, BareNewlinesCloseTheConnection) {
  for (const std::string smuggle :
       {"a\n.\nMAIL FROM:<x@y>\r\n", "a\n.\r\n", "a\r.\r", "a\r\n.\n", "a\rb\r\n", "a\nb\r\n"}) {
    SetUp();
    feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    const std::string reply = feed(smuggle + "\r\n.\r\n");
    EXPECT_EQ(reply.substr(0, 10), "521 5.5.2 ") << smuggle;
    EXPECT_TRUE(closed);
    EXPECT_EQ(commits, 0);
    closed = false;
  }
  SetUp();
  EXPECT_EQ(feed("NOOP\n").substr(0, 10), "521 5.5.2 ");
  EXPECT_TRUE(closed);
}

TEST_F(ServerSessionTest, RelayRules) {
  start(false);
  feed("EHLO localhost\r\nMAIL FROM:<a@b.example>\r\n");
  EXPECT_EQ(feed("RCPT TO:<x@other.example>\r\n"), "554 5.7.1 Relay access denied\r\n");
  EXPECT_EQ(feed("RCPT TO:<x@LOCAL.example>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(feed("RCPT TO:<x@deep.sub.example>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(feed("RCPT TO:<x@sub.example.evil>\r\n"), "554 5.7.1 Relay access denied\r\n");
  EXPECT_EQ(feed("RCPT TO:<postmaster>\r\n"), "250 2.1.5 Ok\r\n");
}

TEST_F(ServerSessionTest, RecipientLimit) {
  feed(
      "EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<1@y.example>\r\nRCPT TO:<2@y.example>\r\nRCPT "
      "TO:<3@y.example>\r\n");
  EXPECT_EQ(feed("RCPT TO:<4@y.example>\r\n"), "452 4.5.3 Error: too many recipients\r\n");
}

TEST_F(ServerSessionTest, ErrorLimitDisconnects) {
  std::string reply;
  for (int i = 0; i < 5; ++i) {
    reply = feed("BOGUS\r\n");
  }
  EXPECT_NE(reply.find("421 4.7.0"), std::string::npos);
  EXPECT_TRUE(closed);
}

TEST_F(ServerSessionTest, SpoolLowGives452AtMail) {
  host.low = true;
  feed("EHLO c\r\n");
  EXPECT_EQ(feed("MAIL FROM:<a@b.example>\r\n"), "452 4.3.1 Insufficient system storage\r\n");
}

TEST_F(ServerSessionTest, MailLoopDetected) {
  settings.limits.message_octets_max = 100'000;
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  std::string headers;
  for (int i = 0; i < 101; ++i) {
    headers += "Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n";
  }
  EXPECT_EQ(feed(headers + "\r\nbody\r\n.\r\n").substr(0, 10), "554 5.4.6 ");
  EXPECT_EQ(commits, 0);
}

TEST_F(ServerSessionTest, BdatChunksAreDotStuffed) {
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
  EXPECT_EQ(feed("BDAT 8\r\n.a\r\nb\r\n."), "250 2.0.0 Ok: chunk received\r\n");
  EXPECT_EQ(feed("BDAT 2 LAST\r\n\r\n"), "250 2.0.0 Ok: queued as 0123456789ABCDEF\r\n");
  EXPECT_EQ(last.body, "..a\r\nb\r\n..\r\n");
  EXPECT_EQ(last.rfc_size, 10u);
  // BDAT without a transaction: the chunk is read and dropped, then 503.
  EXPECT_EQ(feed("BDAT 5 LAST\r\nhello").substr(0, 10), "503 5.5.1 ");
  EXPECT_EQ(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
  // BDAT 0 LAST ends a transaction started with chunks.
  feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nBDAT 3\r\nx\r\n");
  EXPECT_EQ(feed("BDAT 0 LAST\r\n"), "250 2.0.0 Ok: queued as 0123456789ABCDEF\r\n");
  EXPECT_EQ(last.body, "x\r\n");
}

// Postfix takes the first recipients_max and refuses the rest with 452; the transaction goes on.
// Those 452s are not the client's errors: before, they counted toward errors_max and a
// transaction with more recipients than recipients_max + errors_max was cut off with 421.
TEST_F(ServerSessionTest, RecipientsOverTheLimitAreNotErrors) {
  std::string input = "EHLO c\r\nMAIL FROM:<a@b.example>\r\n";
  for (int i = 0; i < 20; ++i) {  // errors_max is 5, recipients_max 3
    input += "RCPT TO:<" + std::to_string(i) + "@y.example>\r\n";
  }
  const std::string reply = feed(input + "DATA\r\nhello\r\n.\r\n");
  EXPECT_FALSE(closed) << reply;
  EXPECT_EQ(commits, 1) << reply;
  EXPECT_EQ(last.recipients, (std::vector<std::string>{"0@y.example", "1@y.example", "2@y.example"}));
  EXPECT_NE(reply.find("452 4.5.3 "), std::string::npos);
  EXPECT_NE(reply.find("250 2.0.0 Ok: queued as"), std::string::npos);
  // Each counted, one logged per transaction, with the first refused address.
  EXPECT_EQ(host.rejects, 17);
  ASSERT_EQ(host.reported.size(), 1u);
  EXPECT_EQ(host.reported[0].reason, RejectReason::too_many_recipients);
  EXPECT_EQ(host.reported[0].address, "3@y.example");
  EXPECT_EQ(host.reported[0].reply, "452 4.5.3 Error: too many recipients");
}

TEST_F(ServerSessionTest, BdatLastWithoutRecipientsNeedsRcpt) {
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
  EXPECT_EQ(feed("BDAT 5 LAST\r\nhello"), "503 5.5.1 Error: need RCPT command\r\n");
  EXPECT_EQ(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
  // Every RCPT refused: as for DATA, "no valid recipients".
  settings.relay_domains.clear();
  start(false);
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n");
  EXPECT_EQ(feed("BDAT 2 LAST\r\nhi").substr(0, 10), "554 5.5.1 ");
  EXPECT_EQ(commits, 0);
}

TEST_F(ServerSessionTest, MalformedBdatSizeIsAnsweredBeforeTheClose) {
  for (const std::string bad : {"BDAT\r\n", "BDAT x\r\n", "BDAT 99999999999999999999999\r\n", "BDAT 5 NEXT\r\n"}) {
    SetUp();
    feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
    EXPECT_EQ(feed(bad + "hello"),
              "521 5.5.4 Syntax: BDAT chunk-size [LAST]; chunk end unknown, closing connection\r\n")
        << bad;
    EXPECT_TRUE(closed) << bad;
    ASSERT_FALSE(host.reported.empty());
    EXPECT_EQ(host.reported.back().reason, RejectReason::syntax);
    closed = false;
  }
}

TEST_F(ServerSessionTest, BdatOverTheSizeLimitIsReportedOnce) {
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
  const std::string chunk(600, 'a');
  EXPECT_EQ(feed("BDAT 600\r\n" + chunk), "250 2.0.0 Ok: chunk received\r\n");
  EXPECT_EQ(feed("BDAT 600\r\n" + chunk).substr(0, 10), "552 5.3.4 ");
  EXPECT_EQ(feed("BDAT 600 LAST\r\n" + chunk).substr(0, 10), "552 5.3.4 ");
  ASSERT_EQ(host.reported.size(), 1u);
  EXPECT_EQ(host.reported[0].reason, RejectReason::too_big);
  EXPECT_EQ(host.reported[0].sender, "a@b.example");
  EXPECT_EQ(host.reported[0].recipients, std::vector<std::string>{"x@y.example"});
  EXPECT_EQ(host.reported[0].reply, "552 5.3.4 Error: message too big");
  EXPECT_EQ(commits, 0);
  EXPECT_EQ(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

// Every refusal reaches the owner with what a log line needs: what was refused and the reply.
TEST_F(ServerSessionTest, RefusalsAreReportedWithAddressAndReply) {
  settings.limits.errors_max = 10;
  settings.relay_domains.clear();
  start(false);
  feed("EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n");
  ASSERT_EQ(host.reported.size(), 1u);
  EXPECT_EQ(host.reported[0].reason, RejectReason::relay_denied);
  EXPECT_EQ(host.reported[0].address, "x@elsewhere.example");
  EXPECT_EQ(host.reported[0].reply, "554 5.7.1 Relay access denied");
  EXPECT_EQ(host.reported[0].helo, "client.example");
  EXPECT_TRUE(host.reported[0].in_transaction);
  EXPECT_EQ(host.reported[0].sender, "a@b.example");
  feed("RCPT TO:<bad address>\r\n");
  EXPECT_EQ(host.reported.back().reason, RejectReason::syntax);
  EXPECT_EQ(host.reported.back().address, "TO:<bad address>");
  EXPECT_EQ(host.reported.back().reply.substr(0, 4), "501 ");
  feed("RCPT TO:<j\xc3\xb6rg@elsewhere.example>\r\n");
  EXPECT_EQ(host.reported.back().reason, RejectReason::non_ascii_address);
  EXPECT_EQ(host.reported.back().reply.substr(0, 10), "553 5.6.7 ");
  feed("RSET\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\n");
  EXPECT_EQ(host.reported.back().reason, RejectReason::bad_sequence);
  feed("XYZZY plugh\r\n");
  EXPECT_EQ(host.reported.back().reason, RejectReason::unknown_command);
  EXPECT_EQ(host.reported.back().address, "XYZZY");
  EXPECT_EQ(session->counts().rejections, host.reported.size());
  EXPECT_EQ(session->counts().commands, 9u);
}

TEST_F(ServerSessionTest, EndOfDataRefusalCarriesTheEnvelope) {
  settings.limits.message_octets_max = 5000;
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n");
  EXPECT_EQ(feed(std::string(999, 'a') + "\r\n.\r\n").substr(0, 10), "500 5.5.2 ");
  ASSERT_EQ(host.reported.size(), 1u);
  EXPECT_EQ(host.reported[0].reason, RejectReason::line_too_long);
  EXPECT_EQ(host.reported[0].sender, "a@b.example");
  EXPECT_EQ(host.reported[0].recipients, (std::vector<std::string>{"x@y.example", "z@y.example"}));
}

TEST_F(ServerSessionTest, MessageCarriesItsStartAndCountsAreKept) {
  feed("EHLO c\r\n");
  host.now = 5000;
  feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  host.now = 9000;
  feed("hi\r\n.\r\n");
  EXPECT_EQ(last.started_ms, 5000u);
  feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  feed("hi\r\n.\r\n", false);
  EXPECT_EQ(session->counts().messages, 1u);
  EXPECT_EQ(session->counts().failed, 1u);
}

TEST_F(ServerSessionTest, BodyInProgressSpansBdatChunks) {
  feed("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
  EXPECT_FALSE(session->body_in_progress());
  feed("BDAT 4\r\nab");
  EXPECT_TRUE(session->body_in_progress());
  feed("cd");
  EXPECT_FALSE(session->in_data_phase());
  EXPECT_TRUE(session->body_in_progress());  // between chunks: the body is not finished
  feed("BDAT 1 LAST\r\ne");
  EXPECT_EQ(commits, 1);
  EXPECT_FALSE(session->body_in_progress());
  feed("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
  EXPECT_TRUE(session->body_in_progress());
  feed("x\r\n.\r\n");
  EXPECT_FALSE(session->body_in_progress());
}

TEST_F(ServerSessionTest, PartialCommandLineIsVisibleToTheOwner) {
  feed("EHLO c\r\n");
  EXPECT_FALSE(session->command_line_pending());
  feed("NO");
  EXPECT_TRUE(session->command_line_pending());
  feed("OP\r\n");
  EXPECT_FALSE(session->command_line_pending());
  feed("NOOP " + std::string(3000, 'x'));  // over the limit: refused, and the rest is dropped
  EXPECT_TRUE(session->command_line_pending());
  feed("\r\n");
  EXPECT_FALSE(session->command_line_pending());
}

// The command phase answers the same whatever the reads are: a long line is refused at the octet
// that passes the limit and dropped to its end, however it arrives. Before the line reader, a
// long line that came in one read was judged as a whole (a bare CR in it closed the session)
// and one split across reads was dropped (the CR was not looked at).
TEST_F(ServerSessionTest, CommandRepliesDoNotDependOnHowTheInputIsSplit) {
  const std::string streams[] = {
      "EHLO c\r\nNOOP " + std::string(3000, 'x') + "\r\nNOOP\r\nRSET " + std::string(2100, 'y') +
          "\rz\r\nNOOP\r\nQUIT\r\n",
      "EHLO c\r\nNOOP " + std::string(2043, 'x') + "\r\nNOOP\r\n" + std::string(2047, 'y') + "\n",
      "EHLO c\r\n" + std::string(2046, 'x') + "\r\r\nNOOP\r\n",
      "EHLO c\r\n" + std::string(2200, 'x') + "\nNOOP\r\n",
  };
  for (const std::string& stream : streams) {
    SetUp();
    const std::string whole = feed(stream);
    const bool whole_closed = closed;
    const uint32_t whole_commands = session->counts().commands;
    for (size_t cut = 1; cut < stream.size(); cut += 7) {
      SetUp();
      closed = false;
      std::string split = feed(std::string_view(stream).substr(0, cut));
      if (!closed) {
        split += feed(std::string_view(stream).substr(cut));
      }
      ASSERT_EQ(split, whole) << "cut " << cut << " of stream " << stream.substr(0, 12);
      ASSERT_EQ(closed, whole_closed) << cut;
      ASSERT_EQ(session->counts().commands, whole_commands) << cut;
    }
  }
  // What the answers are: 500 for a long line and on; a bare LF at the end of a dropped line
  // closes, as anywhere.
  SetUp();
  feed("EHLO c\r\n");
  EXPECT_EQ(feed(streams[0].substr(8)),
            "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n500 5.5.2 Error: line too long\r\n"
            "250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
  SetUp();
  closed = false;
  feed("EHLO c\r\n");
  EXPECT_EQ(feed(std::string(2200, 'x') + "\nNOOP\r\n"),
            "500 5.5.2 Error: line too long\r\n521 5.5.2 Error: bare CR or LF is not allowed; closing connection\r\n");
  EXPECT_TRUE(closed);
}

}  // namespace
}  // namespace sluice::smtp
