// Tests for the SMTP reply parser and the EHLO capability parser: the reply grammar rule by rule
// (each with an accepted and a refused case), every split of a pipelined stream, the limits a
// hostile server meets, enhanced status codes, and the EHLO advertisements of the real peers in
// /work/shared/PEERS.md (smtp-sink's and aiosmtpd's captured on this box byte for byte).
#include "engine/smtp/reply_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "engine/smtp/ehlo_capabilities.h"

namespace sluice::smtp {
namespace {

// What a stream parses into: the replies in order, then the error (none if the stream ended
// cleanly or mid-reply), and the octets consumed in all.
struct Outcome {
  std::vector<Reply> replies;
  ReplyError error = ReplyError::none;
  size_t consumed = 0;
  bool in_reply = false;
};

// Feeds `stream` cut at `cuts` (ascending offsets), each piece until it is used up.
Outcome parse_pieces(std::string_view stream, const std::vector<size_t>& cuts) {
  Outcome out;
  ReplyParser parser;
  size_t from = 0;
  for (size_t i = 0; i <= cuts.size() && out.error == ReplyError::none; ++i) {
    std::string_view piece = stream.substr(from, (i < cuts.size() ? cuts[i] : stream.size()) - from);
    from += piece.size();
    while (true) {
      const ReplyFeed r = parser.feed(piece);
      out.consumed += r.consumed;
      piece.remove_prefix(r.consumed);
      if (r.stop == ReplyStop::reply) {
        out.replies.push_back(parser.reply());
        continue;
      }
      if (r.stop == ReplyStop::error) {
        out.error = parser.error();
      }
      break;
    }
  }
  out.in_reply = parser.in_reply();
  return out;
}

Outcome parse_all(std::string_view stream) {
  return parse_pieces(stream, {});
}

// The one reply `wire` must be.
Reply one(std::string_view wire) {
  const Outcome out = parse_all(wire);
  EXPECT_EQ(out.error, ReplyError::none) << wire;
  EXPECT_EQ(out.replies.size(), 1u) << wire;
  EXPECT_EQ(out.consumed, wire.size()) << wire;
  EXPECT_FALSE(out.in_reply) << wire;
  return out.replies.empty() ? Reply() : out.replies[0];
}

ReplyError error_of(std::string_view wire) {
  const Outcome out = parse_all(wire);
  EXPECT_TRUE(out.replies.empty()) << wire;
  return out.error;
}

std::vector<std::string> lines_of(const Reply& reply) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < reply.line_count(); ++i) {
    lines.emplace_back(reply.line(i));
  }
  return lines;
}

EhloCapabilities ehlo(std::string_view wire) {
  const std::optional<EhloCapabilities> caps = parse_ehlo_reply(one(wire));
  EXPECT_TRUE(caps.has_value()) << wire;
  return caps.value_or(EhloCapabilities{});
}

// ---- the reply grammar ----

TEST(ReplyParserTest, SingleLineReply) {
  const Reply r = one("250 2.1.0 Ok\r\n");
  EXPECT_EQ(r.code(), 250);
  ASSERT_TRUE(r.enhanced().has_value());
  EXPECT_EQ(*r.enhanced(), (EnhancedStatus{2, 1, 0}));
  EXPECT_EQ(lines_of(r), std::vector<std::string>{"2.1.0 Ok"});
  EXPECT_EQ(r.wire_octets(), 14u);
}

TEST(ReplyParserTest, MultiLineReplyKeepsEveryLine) {
  const Reply r = one("250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
  EXPECT_EQ(r.code(), 250);
  EXPECT_FALSE(r.enhanced().has_value());
  EXPECT_EQ(lines_of(r), (std::vector<std::string>{"mx.example", "PIPELINING", "SIZE 1000"}));
}

TEST(ReplyParserTest, BareCodeAndCodeWithTrailingSpaceAreLastLines) {
  const Reply bare = one("250\r\n");
  EXPECT_EQ(bare.code(), 250);
  EXPECT_EQ(lines_of(bare), std::vector<std::string>{""});
  const Reply space = one("250 \r\n");
  EXPECT_EQ(lines_of(space), std::vector<std::string>{""});
  // As the last line of a multi-line reply (smtp-sink) and with an empty continuation line.
  EXPECT_EQ(lines_of(one("250-a\r\n250-\r\n250 \r\n")), (std::vector<std::string>{"a", "", ""}));
  EXPECT_EQ(lines_of(one("250-a\r\n250\r\n")), (std::vector<std::string>{"a", ""}));
}

TEST(ReplyParserTest, EveryFirstDigitTwoToFive) {
  for (const std::string_view wire :
       {"220 hi\r\n", "354 go\r\n", "421 bye\r\n", "554 no\r\n", "299 x\r\n", "599 x\r\n", "200 x\r\n", "590 x\r\n"}) {
    EXPECT_EQ(one(wire).code(), std::stoi(std::string(wire.substr(0, 3)))) << wire;
  }
}

TEST(ReplyParserTest, MalformedCodesAreRefused) {
  for (const std::string_view wire :
       {"25 ok\r\n", "2500\r\n", "2500 ok\r\n", "600 x\r\n", "100 x\r\n", "000 x\r\n", "250x\r\n", "250\tok\r\n",
        "2a0 x\r\n", "25a x\r\n", "\r\n", "\n", "ok\r\n", " 250 ok\r\n", "650 x\r\n", "25\r\n"}) {
    EXPECT_EQ(error_of(wire), ReplyError::bad_code) << wire;
  }
  // A bad continuation line of an otherwise good reply.
  EXPECT_EQ(error_of("250-a\r\n25-b\r\n250 c\r\n"), ReplyError::bad_code);
}

TEST(ReplyParserTest, MixedCodesInOneReplyAreRefused) {
  EXPECT_EQ(error_of("250-a\r\n251 b\r\n"), ReplyError::mixed_codes);
  EXPECT_EQ(error_of("250-a\r\n250-b\r\n550 c\r\n"), ReplyError::mixed_codes);
  EXPECT_EQ(error_of("450-a\r\n550-b\r\n"), ReplyError::mixed_codes);
  // Different codes in consecutive replies are fine.
  const Outcome out = parse_all("250-a\r\n250 b\r\n550 c\r\n");
  ASSERT_EQ(out.replies.size(), 2u);
  EXPECT_EQ(out.replies[1].code(), 550);
}

TEST(ReplyParserTest, LineEnds) {
  // A bare LF ends a line, as Postfix's client tolerates; CRLF and LF may mix.
  EXPECT_EQ(lines_of(one("250-a\n250-b\r\n250 c\n")), (std::vector<std::string>{"a", "b", "c"}));
  // A CR not followed by LF is refused where it is proven, with the octet that proved it.
  const Outcome bare = parse_all("250 a\rb\r\n");
  EXPECT_EQ(bare.error, ReplyError::bare_cr);
  EXPECT_EQ(bare.consumed, 7u);
  EXPECT_EQ(error_of("250 a\r\r\n"), ReplyError::bare_cr);
  // A CR at the end of the input is pending, not yet bare.
  const Outcome pending = parse_all("250 a\r");
  EXPECT_EQ(pending.error, ReplyError::none);
  EXPECT_TRUE(pending.in_reply);
}

TEST(ReplyParserTest, TextIsKeptAsSent) {
  // HTAB, a control octet, UTF-8 and a NUL: escaping them is the logger's business.
  const std::string text = std::string("a\tb \x01 \xc3\xa9 ") + '\0' + " z";
  const std::string wire = "550 " + text + "\r\n";
  EXPECT_EQ(lines_of(one(wire)), std::vector<std::string>{text});
}

TEST(ReplyParserTest, ErrorIsFinal) {
  ReplyParser parser;
  EXPECT_EQ(parser.feed("xyz\r\n").stop, ReplyStop::error);
  EXPECT_EQ(parser.error(), ReplyError::bad_code);
  EXPECT_EQ(parser.feed("250 ok\r\n"), (ReplyFeed{0, ReplyStop::error}));
  EXPECT_EQ(parser.error(), ReplyError::bad_code);
}

// ---- pipelining and splits ----

TEST(ReplyParserTest, PipelinedRepliesComeOutOneByOne) {
  const std::string_view stream = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n354 End data\r\n250 ";
  ReplyParser parser;
  std::string_view rest = stream;
  std::vector<uint16_t> codes;
  for (ReplyFeed r = parser.feed(rest); r.stop == ReplyStop::reply; r = parser.feed(rest)) {
    rest.remove_prefix(r.consumed);
    codes.push_back(parser.reply().code());
  }
  EXPECT_EQ(codes, (std::vector<uint16_t>{250, 250, 550, 354}));
  // The start of the next reply was kept and completes with the next feed.
  EXPECT_TRUE(parser.in_reply());
  const ReplyFeed last = parser.feed("2.0.0 queued\r\n");
  EXPECT_EQ(last, (ReplyFeed{14, ReplyStop::reply}));
  EXPECT_EQ(parser.reply().code(), 250);
  EXPECT_EQ(lines_of(parser.reply()), std::vector<std::string>{"2.0.0 queued"});
  EXPECT_FALSE(parser.in_reply());
}

const std::string_view kStream =
    "220-mx.example ESMTP\r\n220 ready\r\n"
    "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 \r\n"
    "250 2.1.0 Ok\r\n550 5.1.1 <x@y>: no\r\n250\r\n354 go\n"
    "451-4.3.0 one\r\n451 4.3.0 two\r\n";

TEST(ReplyParserTest, EverySplitGivesTheSameReplies) {
  const Outcome whole = parse_all(kStream);
  ASSERT_EQ(whole.error, ReplyError::none);
  ASSERT_EQ(whole.replies.size(), 7u);
  EXPECT_EQ(whole.consumed, kStream.size());
  EXPECT_EQ(whole.replies[6].code(), 451);
  EXPECT_EQ(*whole.replies[6].enhanced(), (EnhancedStatus{4, 3, 0}));
  for (size_t cut = 0; cut <= kStream.size(); ++cut) {
    const Outcome split = parse_pieces(kStream, {cut});
    EXPECT_EQ(split.replies, whole.replies) << "cut " << cut;
    EXPECT_EQ(split.consumed, kStream.size()) << "cut " << cut;
    EXPECT_EQ(split.error, ReplyError::none) << "cut " << cut;
  }
  std::vector<size_t> every;
  for (size_t i = 1; i < kStream.size(); ++i) {
    every.push_back(i);
  }
  EXPECT_EQ(parse_pieces(kStream, every).replies, whole.replies);
}

TEST(ReplyParserTest, EveryPairOfSplitsGivesTheSameReplies) {
  const std::string_view stream = kStream.substr(0, 120);
  const Outcome whole = parse_all(stream);
  for (size_t a = 0; a <= stream.size(); ++a) {
    for (size_t b = a; b <= stream.size(); ++b) {
      const Outcome split = parse_pieces(stream, {a, b});
      ASSERT_EQ(split.replies, whole.replies) << a << " " << b;
      ASSERT_EQ(split.consumed, whole.consumed) << a << " " << b;
      ASSERT_EQ(split.in_reply, whole.in_reply) << a << " " << b;
    }
  }
}

TEST(ReplyParserTest, EverySplitGivesTheSameError) {
  const std::string stream = std::string(kStream.substr(0, 60)) + "250-a\r\n251 b\r\n250 c\r\n";
  const Outcome whole = parse_all(stream);
  ASSERT_EQ(whole.error, ReplyError::mixed_codes);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    const Outcome split = parse_pieces(stream, {cut});
    EXPECT_EQ(split.error, whole.error) << cut;
    EXPECT_EQ(split.consumed, whole.consumed) << cut;
    EXPECT_EQ(split.replies, whole.replies) << cut;
  }
}

// ---- limits for a hostile server ----

std::string line_of_octets(size_t octets, std::string_view end = "\r\n", std::string_view code = "250 ") {
  return std::string(code) + std::string(octets - code.size() - end.size(), 'x') + std::string(end);
}

TEST(ReplyParserTest, LineLimit) {
  EXPECT_EQ(one(line_of_octets(kReplyLineOctetsMax)).wire_octets(), kReplyLineOctetsMax);
  EXPECT_EQ(one(line_of_octets(kReplyLineOctetsMax, "\n")).wire_octets(), kReplyLineOctetsMax);
  EXPECT_EQ(error_of(line_of_octets(kReplyLineOctetsMax + 1)), ReplyError::line_too_long);
  EXPECT_EQ(error_of(line_of_octets(kReplyLineOctetsMax + 1, "\n")), ReplyError::line_too_long);
  // Longer than the RFC's 512 is accepted (see reply_parser.h).
  EXPECT_EQ(one(line_of_octets(kReplyLineOctetsRfc + 1)).code(), 250);
  // Also on a continuation line, and without waiting for a line end that never comes.
  EXPECT_EQ(error_of("250-a\r\n" + line_of_octets(kReplyLineOctetsMax + 1, "\r\n", "250-")), ReplyError::line_too_long);
  const Outcome endless = parse_all(std::string(100000, 'x'));
  EXPECT_EQ(endless.error, ReplyError::line_too_long);
  EXPECT_EQ(endless.consumed, kReplyLineOctetsMax + 1);
}

TEST(ReplyParserTest, LineCountLimit) {
  std::string at_limit;
  for (size_t i = 1; i < kReplyLinesMax; ++i) {
    at_limit += "250-x\r\n";
  }
  EXPECT_EQ(one(at_limit + "250 x\r\n").line_count(), kReplyLinesMax);
  const std::string over = at_limit + "250-x\r\n250 x\r\n";
  const Outcome out = parse_all(over);
  EXPECT_EQ(out.error, ReplyError::too_many_lines);
  // Found at the end of the last allowed line, when the reply can no longer end in time.
  EXPECT_EQ(out.consumed, kReplyLinesMax * 7);
}

TEST(ReplyParserTest, ReplyOctetLimit) {
  // Lines of 1,024 octets: the reply limit is reached before the line count limit.
  const size_t lines = kReplyOctetsMax / 1024;
  std::string at_limit;
  for (size_t i = 1; i < lines; ++i) {
    at_limit += line_of_octets(1024, "\r\n", "250-");
  }
  EXPECT_EQ(one(at_limit + line_of_octets(1024)).wire_octets(), kReplyOctetsMax);
  const std::string over = at_limit + line_of_octets(1025);
  const Outcome out = parse_all(over);
  EXPECT_EQ(out.error, ReplyError::reply_too_long);
  EXPECT_EQ(out.consumed, kReplyOctetsMax + 1);
  // The limit is per reply: many replies in a row are fine.
  std::string many;
  for (size_t i = 0; i < 3 * lines; ++i) {
    many += line_of_octets(1024);
  }
  EXPECT_EQ(parse_all(many).replies.size(), 3 * lines);
}

TEST(ReplyParserTest, ErrorNames) {
  EXPECT_EQ(reply_error_name(ReplyError::line_too_long), "line_too_long");
  EXPECT_EQ(reply_error_name(ReplyError::reply_too_long), "reply_too_long");
  EXPECT_EQ(reply_error_name(ReplyError::too_many_lines), "too_many_lines");
}

// ---- enhanced status codes ----

TEST(EnhancedStatusTest, ValidCodes) {
  EXPECT_EQ(parse_enhanced_status("2.0.0")->status, (EnhancedStatus{2, 0, 0}));
  EXPECT_EQ(parse_enhanced_status("4.7.1 try later")->status, (EnhancedStatus{4, 7, 1}));
  EXPECT_EQ(parse_enhanced_status("4.7.1 try later")->octets, 5u);
  EXPECT_EQ(parse_enhanced_status("5.1.10 no")->status, (EnhancedStatus{5, 1, 10}));
  EXPECT_EQ(parse_enhanced_status("5.999.999")->status, (EnhancedStatus{5, 999, 999}));
  EXPECT_EQ(parse_enhanced_status("5.1.10")->status.to_string(), "5.1.10");
}

TEST(EnhancedStatusTest, InvalidCodes) {
  for (const std::string_view text : {"3.0.0", "1.0.0", "6.0.0", "2.1000.0", "2.0.1000", "2..0", "2.0.", "2.0",
                                      ".2.0.0", "2.0.0x", "2.0.0.", "20.0.0", "2-0-0", "", "2", "2.a.0", "2.0.0\t"}) {
    EXPECT_FALSE(parse_enhanced_status(text).has_value()) << text;
  }
}

TEST(EnhancedStatusTest, TakenFromTheFirstLineWhenItsClassMatches) {
  EXPECT_EQ(*one("550 5.1.1 <a@b>: unknown\r\n").enhanced(), (EnhancedStatus{5, 1, 1}));
  EXPECT_EQ(*one("250 2.0.0\r\n").enhanced(), (EnhancedStatus{2, 0, 0}));
  EXPECT_EQ(*one("452-4.5.3 one\r\n452 5.5.3 two\r\n").enhanced(), (EnhancedStatus{4, 5, 3}));
  // Absent, not an error: a class that contradicts the code, class 3, a bad code, none at all.
  for (const std::string_view wire : {"250 5.0.0 Ok\r\n", "354 3.0.0 go\r\n", "250 2.1000.0 Ok\r\n", "250 Ok\r\n",
                                      "250\r\n", "550-mx\r\n550 5.1.1 no\r\n", "421 4.7.1x\r\n"}) {
    const Reply r = one(wire);
    EXPECT_FALSE(r.enhanced().has_value()) << wire;
  }
}

// ---- EHLO capabilities ----

TEST(EhloCapabilitiesTest, SmtpSinkCapturedOnThisBox) {
  // smtp-sink (Postfix 3.7) as captured on loopback, with its bare "250 " last line.
  const EhloCapabilities caps = ehlo(
      "250-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-XCLIENT NAME HELO\r\n"
      "250-XFORWARD NAME ADDR PROTO HELO\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 \r\n");
  EhloCapabilities expected;
  expected.domain = "smtp-sink";
  expected.pipelining = true;
  expected.eight_bit_mime = true;
  expected.enhanced_status_codes = true;
  expected.dsn = true;
  expected.auth = true;
  expected.auth_mechanisms = {"PLAIN", "LOGIN"};
  EXPECT_EQ(caps, expected);
}

TEST(EhloCapabilitiesTest, AiosmtpdCapturedOnThisBoxPlusStarttls) {
  // aiosmtpd 1.4 as captured on loopback; with a TLS context it adds STARTTLS before AUTH.
  const EhloCapabilities caps = ehlo(
      "250-localhost\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n"
      "250-AUTH LOGIN PLAIN\r\n250 HELP\r\n");
  EhloCapabilities expected;
  expected.domain = "localhost";
  expected.size = true;
  expected.size_octets_max = 33554432;
  expected.eight_bit_mime = true;
  expected.smtputf8 = true;
  expected.starttls = true;
  expected.auth = true;
  expected.auth_mechanisms = {"LOGIN", "PLAIN"};
  EXPECT_EQ(caps, expected);
}

TEST(EhloCapabilitiesTest, Postfix) {
  const EhloCapabilities caps = ehlo(
      "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n"
      "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n");
  EhloCapabilities expected;
  expected.domain = "mx.example.org";
  expected.pipelining = expected.size = expected.starttls = expected.enhanced_status_codes = true;
  expected.eight_bit_mime = expected.dsn = expected.smtputf8 = expected.chunking = true;
  expected.size_octets_max = 10240000;
  EXPECT_EQ(caps, expected);
}

TEST(EhloCapabilitiesTest, Exim) {
  const EhloCapabilities caps = ehlo(
      "250-mx.example.org Hello client.example [127.0.0.1]\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
      "250-PIPELINING\r\n250-PIPECONNECT\r\n250-CHUNKING\r\n250-STARTTLS\r\n250-PRDR\r\n250-SMTPUTF8\r\n250 HELP\r\n");
  EhloCapabilities expected;
  expected.domain = "mx.example.org";
  expected.size = expected.eight_bit_mime = expected.pipelining = expected.chunking = true;
  expected.starttls = expected.smtputf8 = true;
  expected.size_octets_max = 52428800;
  EXPECT_EQ(caps, expected);
}

TEST(EhloCapabilitiesTest, OpenSmtpd) {
  const EhloCapabilities caps = ehlo(
      "250-mx.example.org Hello client.example [127.0.0.1], pleased to meet you\r\n250-8BITMIME\r\n"
      "250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n250-STARTTLS\r\n250 HELP\r\n");
  EhloCapabilities expected;
  expected.domain = "mx.example.org";
  expected.eight_bit_mime = expected.enhanced_status_codes = expected.size = expected.dsn = true;
  expected.starttls = true;
  expected.size_octets_max = 36700160;
  EXPECT_EQ(caps, expected);
}

TEST(EhloCapabilitiesTest, FirstLineIsTheDomainNotACapability) {
  const EhloCapabilities caps = ehlo("250 PIPELINING\r\n");
  EXPECT_EQ(caps.domain, "PIPELINING");
  EXPECT_FALSE(caps.pipelining);
  EXPECT_EQ(ehlo("250 \r\n").domain, "");
}

TEST(EhloCapabilitiesTest, KeywordsAreCaseInsensitive) {
  const EhloCapabilities caps = ehlo(
      "250-mx\r\n250-pipelining\r\n250-Size 1000\r\n250-8bitmime\r\n250-enhancedStatusCodes\r\n250-smtputf8\r\n"
      "250-chunking\r\n250-dsn\r\n250-StartTLS\r\n250 auth plain cram-md5\r\n");
  EXPECT_TRUE(caps.pipelining && caps.size && caps.eight_bit_mime && caps.enhanced_status_codes && caps.smtputf8 &&
              caps.chunking && caps.dsn && caps.starttls && caps.auth);
  EXPECT_EQ(caps.size_octets_max, 1000u);
  EXPECT_EQ(caps.auth_mechanisms, (std::vector<std::string>{"PLAIN", "CRAM-MD5"}));
}

TEST(EhloCapabilitiesTest, SizeArgument) {
  EXPECT_EQ(ehlo("250-mx\r\n250 SIZE\r\n").size_octets_max, 0u);
  EXPECT_TRUE(ehlo("250-mx\r\n250 SIZE\r\n").size);
  EXPECT_EQ(ehlo("250-mx\r\n250 SIZE 0\r\n").size_octets_max, 0u);
  EXPECT_EQ(ehlo("250-mx\r\n250 SIZE 18446744073709551615\r\n").size_octets_max, UINT64_MAX);
  // Not a number in 64 bits: no fixed limit (as Postfix's client does).
  for (const std::string_view wire : {"250-mx\r\n250 SIZE 18446744073709551616\r\n", "250-mx\r\n250 SIZE -1\r\n",
                                      "250-mx\r\n250 SIZE 10k\r\n", "250-mx\r\n250 SIZE  \r\n"}) {
    const EhloCapabilities caps = ehlo(wire);
    EXPECT_TRUE(caps.size) << wire;
    EXPECT_EQ(caps.size_octets_max, 0u) << wire;
  }
  // Separated by a tab or several spaces.
  EXPECT_EQ(ehlo("250-mx\r\n250 SIZE\t  5000\r\n").size_octets_max, 5000u);
}

TEST(EhloCapabilitiesTest, AuthForms) {
  // RFC 4954 and the older "AUTH=" form together (Postfix with broken_sasl_auth_clients): merged.
  const EhloCapabilities caps = ehlo("250-mx\r\n250-AUTH PLAIN LOGIN\r\n250 AUTH=LOGIN PLAIN XOAUTH2\r\n");
  EXPECT_TRUE(caps.auth);
  EXPECT_EQ(caps.auth_mechanisms, (std::vector<std::string>{"PLAIN", "LOGIN", "XOAUTH2"}));
  // Invalid names are dropped; AUTH with none is still AUTH.
  const EhloCapabilities odd = ehlo("250-mx\r\n250 AUTH PL@IN ABCDEFGHIJKLMNOPQRSTU GSSAPI\r\n");
  EXPECT_EQ(odd.auth_mechanisms, std::vector<std::string>{"GSSAPI"});
  EXPECT_TRUE(ehlo("250-mx\r\n250 AUTH\r\n").auth);
  EXPECT_TRUE(ehlo("250-mx\r\n250 AUTH\r\n").auth_mechanisms.empty());
  // Bounded.
  std::string many = "250-mx\r\n250 AUTH";
  for (int i = 0; i < 40; ++i) {
    many += " M" + std::to_string(i);
  }
  EXPECT_EQ(ehlo(many + "\r\n").auth_mechanisms.size(), kAuthMechanismsMax);
}

TEST(EhloCapabilitiesTest, UnknownAndMalformedLinesAreIgnored) {
  const EhloCapabilities caps = ehlo(
      "250-mx\r\n250-X-UNKNOWN foo\r\n250-PIPELININGX\r\n250--PIPELINING\r\n250-SIZEX 5\r\n"
      "250-\r\n250-STARTTLS extra\r\n250-8BITMIME=1\r\n250 DSN\r\n");
  EXPECT_FALSE(caps.pipelining);
  EXPECT_FALSE(caps.size);
  EXPECT_FALSE(caps.eight_bit_mime);
  EXPECT_TRUE(caps.starttls);  // a parameter we do not expect does not hide the keyword
  EXPECT_TRUE(caps.dsn);
}

TEST(EhloCapabilitiesTest, OnlyA250IsAnEhloReply) {
  EXPECT_FALSE(parse_ehlo_reply(one("502 5.5.1 Error: command not implemented\r\n")).has_value());
  EXPECT_FALSE(parse_ehlo_reply(one("251-mx\r\n251 PIPELINING\r\n")).has_value());
}

}  // namespace
}  // namespace sluice::smtp
