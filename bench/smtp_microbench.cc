// Microbenchmarks of the SMTP parsers on the hot path (issue 9 section 4): the server's command
// parser over one transaction's commands as a bulk client pipelines them, and the client's reply
// parser over the replies it gets back, both from real wire text. DSN building is here too: it
// runs once per bounced message, on the same shard, with the original's header in hand.
// Each benchmark checks its result once per run (a parser that stopped parsing is not fast).
#include <benchmark/benchmark.h>

#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "engine/relay/dsn.h"
#include "engine/smtp/command.h"
#include "engine/smtp/reply_parser.h"

namespace {

namespace smtp = sluice::smtp;
namespace relay = sluice::relay;

// One pipelined transaction with ten recipients, DSN parameters on some, as a bulk client sends
// it (lines without CRLF: the session's line reader has removed it).
const std::vector<std::string_view>& transaction_lines() {
  static const std::vector<std::string_view> lines = {
      "MAIL FROM:<newsletter-bounces+1234@lists.example.test> SIZE=48213 BODY=8BITMIME RET=HDRS ENVID=QQ314159",
      "RCPT TO:<alice@example.org>",
      "RCPT TO:<bob.smith@mail.example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob.smith@mail.example.net",
      "RCPT TO:<carol@example.org>",
      "RCPT TO:<dave+tag@sub.example.com>",
      "RCPT TO:<erin@example.org> NOTIFY=NEVER",
      "RCPT TO:<frank@example.co.uk>",
      "RCPT TO:<grace@example.org>",
      "RCPT TO:<heidi@example.org>",
      "RCPT TO:<ivan@example.org>",
      "RCPT TO:<judy@example.org>",
      "DATA",
  };
  return lines;
}

// Parses every line as ServerSession does: the verb, then MAIL or RCPT arguments. Returns the
// recipients accepted (11 lines, 10 recipients), so the caller can check nothing was refused.
size_t parse_transaction(const std::vector<std::string_view>& lines, bool& sender_ok) {
  size_t recipients = 0;
  bool smtputf8 = false;
  for (std::string_view line : lines) {
    const smtp::CommandLine command = smtp::parse_command_line(line);
    if (command.verb == smtp::Verb::mail) {
      auto parsed = smtp::parse_mail_from(command.argument, true);
      sender_ok = std::holds_alternative<smtp::MailFrom>(parsed);
      if (sender_ok) {
        smtputf8 = std::get<smtp::MailFrom>(parsed).smtputf8;
      }
      benchmark::DoNotOptimize(parsed);
    } else if (command.verb == smtp::Verb::rcpt) {
      auto parsed = smtp::parse_rcpt_to(command.argument, smtputf8);
      recipients += std::holds_alternative<smtp::RcptTo>(parsed) ? 1 : 0;
      benchmark::DoNotOptimize(parsed);
    }
    benchmark::DoNotOptimize(command);
  }
  return recipients;
}

void BM_CommandParser(benchmark::State& state) {
  const auto& lines = transaction_lines();
  bool sender_ok = false;
  if (parse_transaction(lines, sender_ok) != 10 || !sender_ok) {
    state.SkipWithError("the command parser refused a command of the transaction");
    return;
  }
  size_t octets = 0;
  for (std::string_view line : lines) {
    octets += line.size() + 2;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(parse_transaction(lines, sender_ok));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * lines.size()));  // commands
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * octets));
}
BENCHMARK(BM_CommandParser);

// What a Postfix-like server sends back: the EHLO reply (9 lines), then the pipelined replies to
// MAIL, ten RCPTs and DATA, then the final reply to the data, in one buffer.
std::string reply_stream() {
  std::string s =
      "250-mx.example.org\r\n"
      "250-PIPELINING\r\n"
      "250-SIZE 52428800\r\n"
      "250-ETRN\r\n"
      "250-ENHANCEDSTATUSCODES\r\n"
      "250-8BITMIME\r\n"
      "250-DSN\r\n"
      "250-SMTPUTF8\r\n"
      "250 CHUNKING\r\n"
      "250 2.1.0 Ok\r\n";
  for (int i = 0; i < 10; ++i) {
    s += "250 2.1.5 Ok\r\n";
  }
  s += "354 End data with <CR><LF>.<CR><LF>\r\n";
  s += "250 2.0.0 Ok: queued as 4RZx3K1qTnz9vLq\r\n";
  return s;
}
constexpr size_t kRepliesInStream = 1 + 1 + 10 + 1 + 1;

// Feeds `stream` in pieces of `piece` octets (as recv completions would cut it) and returns the
// replies parsed, or 0 on a parse error; `code_sum` adds their codes so the work cannot vanish.
size_t parse_replies(std::string_view stream, size_t piece, uint64_t& code_sum) {
  smtp::ReplyParser parser;
  size_t replies = 0;
  for (size_t at = 0; at < stream.size(); at += piece) {
    std::string_view rest = stream.substr(at, piece);
    while (!rest.empty()) {
      const smtp::ReplyFeed fed = parser.feed(rest);
      if (fed.stop == smtp::ReplyStop::error) {
        return 0;
      }
      if (fed.stop == smtp::ReplyStop::reply) {
        ++replies;
        code_sum += parser.reply().code() + parser.reply().line_count();
      }
      rest.remove_prefix(fed.consumed);
    }
  }
  return replies;
}

void BM_ReplyParser(benchmark::State& state) {
  const std::string stream = reply_stream();
  const size_t piece = static_cast<size_t>(state.range(0));
  uint64_t code_sum = 0;
  if (parse_replies(stream, piece, code_sum) != kRepliesInStream) {
    state.SkipWithError("the reply parser did not find every reply of the stream");
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(parse_replies(stream, piece, code_sum));
  }
  benchmark::DoNotOptimize(code_sum);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kRepliesInStream));  // replies
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * stream.size()));
}
// The whole stream at once (one recv), and cut every 7 octets (replies split across reads).
BENCHMARK(BM_ReplyParser)->Arg(4096)->Arg(7);

// A bounce of a 10-recipient message with RET=HDRS: the report and the original's header part.
void BM_DsnBuild(benchmark::State& state) {
  relay::DsnReport report;
  report.reporting_mta = "relay.example.test";
  report.original_sender = "newsletter-bounces+1234@lists.example.test";
  report.queue_id = "0123456789ABCDEF";
  report.envid = "QQ314159";
  report.ret = relay::DsnReturn::headers;
  report.arrival_s = 1764700000;
  report.now_s = 1765000000;
  report.boundary = "0123456789ABCDEG/relay.example.test";
  report.message_id = "0123456789ABCDEG@relay.example.test";
  for (int i = 0; i < 10; ++i) {
    relay::DsnRecipient recipient;
    recipient.final_recipient = "user" + std::to_string(i) + "@example.org";
    recipient.orcpt = "rfc822;user" + std::to_string(i) + "@example.org";
    recipient.status = "5.1.1";
    recipient.remote_mta = "mx.example.org";
    recipient.diagnostic = "550 5.1.1 <user" + std::to_string(i) + "@example.org>: Recipient address rejected";
    recipient.last_attempt_s = 1764999000;
    report.recipients.push_back(std::move(recipient));
  }
  std::string original =
      "Received: from client.example.test (client.example.test [192.0.2.10])\r\n"
      "\tby relay.example.test (Sluice) with ESMTP id 0123456789ABCDEF\r\n"
      "From: Lists <newsletter@lists.example.test>\r\n"
      "To: Undisclosed recipients:;\r\n"
      "Subject: The December newsletter\r\n"
      "Date: Wed, 2 Dec 2026 12:00:00 +0000\r\n"
      "Message-ID: <20261202120000.1234@lists.example.test>\r\n"
      "MIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=utf-8\r\n"
      "\r\n";
  for (int i = 0; i < 600; ++i) {  // about 40 KiB of body, which RET=HDRS leaves out
    original += "The quick brown fox jumps over the lazy dog, line after line of newsletter.\r\n";
  }
  const relay::BuiltDsn first = relay::build_dsn(report, original);
  if (first.wire.find("Final-Recipient: rfc822; user9@example.org") == std::string::npos ||
      first.wire.find("Subject: The December newsletter") == std::string::npos ||
      first.wire.find("line after line") != std::string::npos) {
    state.SkipWithError("the DSN lacks a recipient or the original's header, or returned the body");
    return;
  }
  for (auto _ : state) {
    relay::BuiltDsn built = relay::build_dsn(report, original);
    benchmark::DoNotOptimize(built.wire.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));  // DSNs
}
BENCHMARK(BM_DsnBuild);

}  // namespace
