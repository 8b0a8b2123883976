// Tests for the SMTP command parser: verbs, MAIL FROM / RCPT TO paths and parameters, BDAT, and
// the address grammar. Each rule has an accepted and a refused case.
#include "engine/smtp/command.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace sluice::smtp {
namespace {

// Unwraps a successful parse, failing the test with the error text otherwise.
template <typename T>
T expect_ok(const std::variant<T, ParseError>& result) {
  if (const auto* error = std::get_if<ParseError>(&result)) {
    ADD_FAILURE() << "unexpected error " << error->code << " " << error->enhanced << " " << error->text;
    return T{};
  }
  return std::get<T>(result);
}

template <typename T>
ParseError expect_error(const std::variant<T, ParseError>& result) {
  if (const auto* error = std::get_if<ParseError>(&result)) {
    return *error;
  }
  ADD_FAILURE() << "expected an error";
  return ParseError{0, "", ""};
}

MailFrom mail_ok(std::string_view argument, bool utf8_allowed = true) {
  return expect_ok(parse_mail_from(argument, utf8_allowed));
}

ParseError mail_error(std::string_view argument, bool utf8_allowed = true) {
  return expect_error(parse_mail_from(argument, utf8_allowed));
}

RcptTo rcpt_ok(std::string_view argument, bool utf8 = false) {
  return expect_ok(parse_rcpt_to(argument, utf8));
}

ParseError rcpt_error(std::string_view argument, bool utf8 = false) {
  return expect_error(parse_rcpt_to(argument, utf8));
}

void expect_reply(const ParseError& error, uint16_t code, std::string_view enhanced) {
  EXPECT_EQ(error.code, code) << error.text;
  EXPECT_EQ(error.enhanced, enhanced) << error.text;
  EXPECT_FALSE(error.text.empty());
}

// ---- parse_command_line ----

TEST(CommandLineTest, RecognisesEveryVerbInAnyCase) {
  const std::pair<std::string_view, Verb> cases[] = {
      {"EHLO", Verb::ehlo},         {"HELO", Verb::helo}, {"MAIL", Verb::mail}, {"RCPT", Verb::rcpt},
      {"DATA", Verb::data},         {"BDAT", Verb::bdat}, {"RSET", Verb::rset}, {"NOOP", Verb::noop},
      {"QUIT", Verb::quit},         {"VRFY", Verb::vrfy}, {"EXPN", Verb::expn}, {"HELP", Verb::help},
      {"TURN", Verb::turn},         {"SEND", Verb::send}, {"SOML", Verb::soml}, {"SAML", Verb::saml},
      {"STARTTLS", Verb::starttls}, {"AUTH", Verb::auth},
  };
  for (const auto& [name, verb] : cases) {
    EXPECT_EQ(parse_command_line(name).verb, verb) << name;
    std::string lower(name);
    for (char& c : lower) {
      c = static_cast<char>(c | 0x20);
    }
    EXPECT_EQ(parse_command_line(lower).verb, verb) << lower;
    std::string mixed(lower);
    mixed[1] = static_cast<char>(mixed[1] & ~0x20);
    EXPECT_EQ(parse_command_line(mixed).verb, verb) << mixed;
  }
}

TEST(CommandLineTest, SplitsArgumentAfterOneSpace) {
  CommandLine line = parse_command_line("MAIL FROM:<a@b.example> SIZE=10");
  EXPECT_EQ(line.verb, Verb::mail);
  EXPECT_EQ(line.argument, "FROM:<a@b.example> SIZE=10");

  line = parse_command_line("rcpt TO:<x@y.example>");
  EXPECT_EQ(line.verb, Verb::rcpt);
  EXPECT_EQ(line.argument, "TO:<x@y.example>");

  line = parse_command_line("EHLO  client.example");
  EXPECT_EQ(line.verb, Verb::ehlo);
  EXPECT_EQ(line.argument, " client.example");  // only one space belongs to the separator

  line = parse_command_line("NOOP");
  EXPECT_EQ(line.verb, Verb::noop);
  EXPECT_TRUE(line.argument.empty());

  line = parse_command_line("QUIT ");
  EXPECT_EQ(line.verb, Verb::quit);
  EXPECT_TRUE(line.argument.empty());
}

TEST(CommandLineTest, RemovesTrailingCrlf) {
  const CommandLine line = parse_command_line("HELO client.example\r\n");
  EXPECT_EQ(line.verb, Verb::helo);
  EXPECT_EQ(line.argument, "client.example");
  EXPECT_EQ(parse_command_line("DATA\r\n").verb, Verb::data);
}

TEST(CommandLineTest, UnknownVerbs) {
  for (const std::string_view text :
       {"", " ", " MAIL FROM:<a@b>", "MAILX", "MAI", "MAIL\tFROM:<a@b>", "STARTTLSX", "STARTTL",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2", "M@IL", "MA\x80L", "[AIL", "GET / HTTP/1.0"}) {
    EXPECT_EQ(parse_command_line(text).verb, Verb::unknown) << text;
  }
  // Folding must not let a non-letter pass for a letter: '@' | 0x20 is '`', not 'a'.
  EXPECT_EQ(parse_command_line("M\x41IL").verb, Verb::mail);
  EXPECT_EQ(parse_command_line("M\x01IL").verb, Verb::unknown);
  EXPECT_EQ(parse_command_line("M\xC1IL").verb, Verb::unknown);
}

TEST(CommandLineTest, NulIsNotASeparator) {
  EXPECT_EQ(parse_command_line(std::string_view("EHLO\0x", 6)).verb, Verb::unknown);
  EXPECT_EQ(parse_command_line(std::string_view("EHL\0", 4)).verb, Verb::unknown);
}

TEST(CommandLineTest, ArgumentOfUnknownVerbIsKept) {
  const CommandLine line = parse_command_line("XFOO bar baz");
  EXPECT_EQ(line.verb, Verb::unknown);
  EXPECT_EQ(line.argument, "bar baz");
}

// ---- MAIL FROM: paths ----

TEST(MailFromTest, PlainAddress) {
  const MailFrom mail = mail_ok("FROM:<alice@example.com>");
  EXPECT_EQ(mail.reverse_path, "alice@example.com");
  EXPECT_FALSE(mail.size);
  EXPECT_EQ(mail.body, MailFrom::Body::unspecified);
  EXPECT_FALSE(mail.smtputf8);
  EXPECT_TRUE(mail.ret.empty());
  EXPECT_TRUE(mail.envid.empty());
}

TEST(MailFromTest, KeywordIsCaseInsensitive) {
  EXPECT_EQ(mail_ok("from:<a@b.example>").reverse_path, "a@b.example");
  EXPECT_EQ(mail_ok("FrOm:<a@b.example>").reverse_path, "a@b.example");
}

TEST(MailFromTest, NullSender) {
  const MailFrom mail = mail_ok("FROM:<>");
  EXPECT_TRUE(mail.reverse_path.empty());
  EXPECT_EQ(mail_ok("FROM:<> SIZE=100").size, 100u);
}

TEST(MailFromTest, ToleratesSpaceAfterColon) {
  EXPECT_EQ(mail_ok("FROM: <a@b.example>").reverse_path, "a@b.example");
  EXPECT_EQ(mail_ok("FROM:  <a@b.example>").reverse_path, "a@b.example");
  EXPECT_TRUE(mail_ok("FROM: <>").reverse_path.empty());
}

TEST(MailFromTest, RequiresAngleBrackets) {
  expect_reply(mail_error("FROM:a@b.example"), 501, "5.5.4");
  expect_reply(mail_error("FROM: a@b.example"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example"), 501, "5.5.4");
  expect_reply(mail_error("FROM:a@b.example>"), 501, "5.5.4");
  expect_reply(mail_error("FROM:"), 501, "5.5.4");
  expect_reply(mail_error(""), 501, "5.5.4");
}

TEST(MailFromTest, RequiresFromKeyword) {
  expect_reply(mail_error("TO:<a@b.example>"), 501, "5.5.4");
  expect_reply(mail_error("FROM <a@b.example>"), 501, "5.5.4");
  expect_reply(mail_error("FROM :<a@b.example>"), 501, "5.5.4");
  expect_reply(mail_error("<a@b.example>"), 501, "5.5.4");
}

TEST(MailFromTest, GarbageDirectlyAfterPathIsSyntaxError) {
  expect_reply(mail_error("FROM:<a@b.example>x"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example><c@d.example>"), 501, "5.5.4");
}

TEST(MailFromTest, TrailingSpacesAreTolerated) {
  EXPECT_EQ(mail_ok("FROM:<a@b.example> ").reverse_path, "a@b.example");
  EXPECT_EQ(mail_ok("FROM:<a@b.example>  SIZE=5  ").size, 5u);
}

TEST(MailFromTest, BadAddressSyntaxIs553) {
  for (const std::string_view argument : {
           "FROM:<alice>",             // no domain
           "FROM:<@example.com>",      // empty local part
           "FROM:<alice@>",            // empty domain
           "FROM:<a..b@example.com>",  // empty atom
           "FROM:<.a@example.com>",    // leading dot
           "FROM:<a.@example.com>",    // trailing dot
           "FROM:<a b@example.com>",   // space in atom
           "FROM:<a@example..com>",    // empty label
           "FROM:<a@example.com.>",    // trailing dot in domain
           "FROM:<a@-example.com>",    // label starts with hyphen
           "FROM:<a@example-.com>",    // label ends with hyphen
           "FROM:<a@exa_mple.com>",    // underscore
           "FROM:<a@[1.2.3.256]>",     // bad IPv4 literal
           "FROM:<a@[tag:stuff]>",     // general literal: not routable
           "FROM:<a(comment)@example.com>",
           "FROM:<a@b@example.com>",  // unquoted @ in local part
       }) {
    expect_reply(mail_error(argument), 553, "5.1.7");
  }
}

TEST(MailFromTest, QuotedLocalPart) {
  EXPECT_EQ(mail_ok(R"(FROM:<"john doe"@example.com>)").reverse_path, R"("john doe"@example.com)");
  EXPECT_EQ(mail_ok(R"(FROM:<"a>b"@example.com>)").reverse_path, R"("a>b"@example.com)");
  EXPECT_EQ(mail_ok(R"(FROM:<"a@b"@example.com>)").reverse_path, R"("a@b"@example.com)");
  EXPECT_EQ(mail_ok(R"(FROM:<"a\"b"@example.com>)").reverse_path, R"("a\"b"@example.com)");
  EXPECT_EQ(mail_ok(R"(FROM:<"a\\b"@example.com>)").reverse_path, R"("a\\b"@example.com)");
  expect_reply(mail_error(R"(FROM:<"unterminated@example.com>)"), 501, "5.5.4");
  // The third quote opens a string that swallows the closing bracket.
  expect_reply(mail_error(R"(FROM:<"a"b"@example.com>)"), 501, "5.5.4");
  expect_reply(mail_error(R"(FROM:<"a"x@example.com>)"), 553, "5.1.7");
}

TEST(MailFromTest, AddressLiterals) {
  EXPECT_EQ(mail_ok("FROM:<a@[192.0.2.1]>").reverse_path, "a@[192.0.2.1]");
  EXPECT_EQ(mail_ok("FROM:<a@[IPv6:2001:db8::1]>").reverse_path, "a@[IPv6:2001:db8::1]");
  EXPECT_EQ(mail_ok("FROM:<a@[ipv6:::1]>").reverse_path, "a@[ipv6:::1]");
  EXPECT_EQ(mail_ok("FROM:<a@[IPv6:::ffff:192.0.2.1]>").reverse_path, "a@[IPv6:::ffff:192.0.2.1]");
  expect_reply(mail_error("FROM:<a@[IPv6:2001:db8::g]>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<a@[IPv6:1:2:3:4:5:6:7:8:9]>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<a@[1.2.3]>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<a@[1.2.3.4.5]>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<a@[1.2.3.4]x>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<a@[]>"), 553, "5.1.7");
}

TEST(MailFromTest, SourceRouteIsAcceptedAndIgnored) {
  EXPECT_EQ(mail_ok("FROM:<@relay.example:alice@example.com>").reverse_path, "alice@example.com");
  EXPECT_EQ(mail_ok("FROM:<@a.example,@b.example:alice@example.com>").reverse_path, "alice@example.com");
  EXPECT_EQ(mail_ok("FROM:<@[192.0.2.1],@[IPv6:::1]:alice@example.com>").reverse_path, "alice@example.com");
  expect_reply(mail_error("FROM:<@a.example alice@example.com>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<@:alice@example.com>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<@a.example,:alice@example.com>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<@a.example,b.example:alice@example.com>"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<@bad_domain:alice@example.com>"), 553, "5.1.7");
}

TEST(MailFromTest, LengthLimits) {
  const std::string local64(kLocalPartOctetsMax, 'l');
  const std::string local65(kLocalPartOctetsMax + 1, 'l');
  EXPECT_EQ(mail_ok(absl::StrCat("FROM:<", local64, "@example.com>")).reverse_path,
            absl::StrCat(local64, "@example.com"));
  const ParseError local_error = mail_error(absl::StrCat("FROM:<", local65, "@example.com>"));
  expect_reply(local_error, 501, "5.1.7");
  EXPECT_NE(local_error.text.find("local part"), std::string_view::npos);

  // A 253-octet domain in labels of at most 63: with "a@" and "<>" the path is 257 > 256.
  std::string domain;
  while (domain.size() < 240) {
    absl::StrAppend(&domain, std::string(59, 'd'), ".");
  }
  absl::StrAppend(&domain, "example");  // 247 octets
  const std::string path_ok = absl::StrCat("FROM:<a@", domain, ">");
  EXPECT_EQ(mail_ok(path_ok).reverse_path, absl::StrCat("a@", domain));  // path = 2 + 2 + 247 = 251
  const std::string long_path = absl::StrCat("FROM:<", std::string(10, 'a'), "@", domain, ">");
  const ParseError path_error = mail_error(long_path);  // path = 2 + 11 + 247 = 260
  expect_reply(path_error, 501, "5.1.7");
  EXPECT_NE(path_error.text.find("path"), std::string_view::npos);

  // A domain over 255 octets cannot fit in a 256-octet path: it is reported as a long path.
  const ParseError domain_error = mail_error(absl::StrCat("FROM:<a@", std::string(300, 'd'), ">"));
  expect_reply(domain_error, 501, "5.1.7");
  EXPECT_NE(domain_error.text.find("path"), std::string_view::npos);
}

TEST(MailFromTest, PathLimitCountsBrackets) {
  // Exactly 256 octets including the brackets is accepted; 257 is not.
  const std::string domain = absl::StrCat(std::string(63, 'd'), ".", std::string(63, 'e'), ".", std::string(63, 'f'),
                                          ".", std::string(57, 'g'));
  ASSERT_EQ(domain.size(), 249u);
  const std::string at_limit = absl::StrCat("<", std::string(4, 'a'), "@", domain, ">");
  ASSERT_EQ(at_limit.size(), kPathOctetsMax);
  EXPECT_EQ(mail_ok(absl::StrCat("FROM:", at_limit)).reverse_path.size(), kPathOctetsMax - 2);
  const std::string over = absl::StrCat("<", std::string(5, 'a'), "@", domain, ">");
  expect_reply(mail_error(absl::StrCat("FROM:", over)), 501, "5.1.7");
}

// ---- MAIL FROM: parameters ----

TEST(MailFromTest, SizeParameter) {
  EXPECT_EQ(mail_ok("FROM:<a@b.example> SIZE=0").size, 0u);
  EXPECT_EQ(mail_ok("FROM:<a@b.example> size=52428800").size, 52428800u);
  EXPECT_EQ(mail_ok("FROM:<a@b.example> SIZE=18446744073709551615").size, 18446744073709551615u);
  expect_reply(mail_error("FROM:<a@b.example> SIZE=18446744073709551616"), 552, "5.3.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE=99999999999999999999999999"), 552, "5.3.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE="), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE=12k"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE=-1"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE=1 SIZE=2"), 501, "5.5.4");
}

TEST(MailFromTest, BodyParameter) {
  EXPECT_EQ(mail_ok("FROM:<a@b.example> BODY=7BIT").body, MailFrom::Body::seven_bit);
  EXPECT_EQ(mail_ok("FROM:<a@b.example> BODY=8BITMIME").body, MailFrom::Body::eight_bit_mime);
  EXPECT_EQ(mail_ok("FROM:<a@b.example> body=8bitmime").body, MailFrom::Body::eight_bit_mime);
  expect_reply(mail_error("FROM:<a@b.example> BODY=BINARYMIME"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> BODY="), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> BODY"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> BODY=7BIT BODY=7BIT"), 501, "5.5.4");
}

TEST(MailFromTest, Smtputf8Parameter) {
  EXPECT_TRUE(mail_ok("FROM:<a@b.example> SMTPUTF8").smtputf8);
  EXPECT_TRUE(mail_ok("FROM:<a@b.example> smtputf8").smtputf8);
  expect_reply(mail_error("FROM:<a@b.example> SMTPUTF8=yes"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> SMTPUTF8 SMTPUTF8"), 501, "5.5.4");
  // Not advertised: the parameter is unknown to this session.
  expect_reply(mail_error("FROM:<a@b.example> SMTPUTF8", /*utf8_allowed=*/false), 555, "5.5.4");
}

TEST(MailFromTest, NonAsciiSender) {
  const std::string_view utf8_sender =
      "FROM:<j\xC3\xB6rg@b\xC3\xBC"
      "cher.example> SMTPUTF8";
  EXPECT_EQ(mail_ok(utf8_sender).reverse_path,
            "j\xC3\xB6rg@b\xC3\xBC"
            "cher.example");
  // Without SMTPUTF8 on the command, a non-ASCII address is 553 5.6.7 (RFC 6531 3.7.4.1).
  expect_reply(mail_error("FROM:<j\xC3\xB6rg@example.com>"), 553, "5.6.7");
  expect_reply(mail_error("FROM:<jorg@b\xC3\xBC"
                          "cher.example>"),
               553, "5.6.7");
  // Even with SMTPUTF8, malformed UTF-8 is bad syntax.
  expect_reply(mail_error("FROM:<j\xC3@example.com> SMTPUTF8"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<j\xC0\xAF@example.com> SMTPUTF8"), 553, "5.1.7");      // overlong
  expect_reply(mail_error("FROM:<j\xED\xA0\x80@example.com> SMTPUTF8"), 553, "5.1.7");  // surrogate
  expect_reply(mail_error("FROM:<j\xF4\x90\x80\x80@example.com> SMTPUTF8"), 553, "5.1.7");
  expect_reply(mail_error("FROM:<j\xFF@example.com> SMTPUTF8"), 553, "5.1.7");
  // Four-octet characters and quoted UTF-8 are fine.
  EXPECT_FALSE(mail_ok("FROM:<\xF0\x9F\x98\x80@example.com> SMTPUTF8").reverse_path.empty());
  EXPECT_FALSE(mail_ok("FROM:<\"\xC3\xA9 x\"@example.com> SMTPUTF8").reverse_path.empty());
}

TEST(MailFromTest, RetParameter) {
  EXPECT_EQ(mail_ok("FROM:<a@b.example> RET=FULL").ret, "FULL");
  EXPECT_EQ(mail_ok("FROM:<a@b.example> RET=hdrs").ret, "hdrs");
  EXPECT_EQ(mail_ok("FROM:<a@b.example> RET=FULL").ret_kind, DsnRet::full);
  EXPECT_EQ(mail_ok("FROM:<a@b.example> RET=hdrs").ret_kind, DsnRet::hdrs);
  EXPECT_EQ(mail_ok("FROM:<a@b.example>").ret_kind, DsnRet::none);
  expect_reply(mail_error("FROM:<a@b.example> RET=ALL"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> RET"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> RET=FULL RET=HDRS"), 501, "5.5.4");
}

TEST(MailFromTest, EnvidParameter) {
  EXPECT_EQ(mail_ok("FROM:<a@b.example> ENVID=QQ314159").envid, "QQ314159");
  EXPECT_EQ(mail_ok("FROM:<a@b.example> ENVID=a+2Bb+3Dc").envid, "a+2Bb+3Dc");
  expect_reply(mail_error("FROM:<a@b.example> ENVID=a+2b"), 501, "5.5.4");  // lowercase hex
  expect_reply(mail_error("FROM:<a@b.example> ENVID=a+2"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> ENVID=a+"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> ENVID="), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> ENVID=a=b"), 501, "5.5.4");
  const std::string envid_max(kEnvidOctetsMax, 'x');
  EXPECT_EQ(mail_ok(absl::StrCat("FROM:<a@b.example> ENVID=", envid_max)).envid, envid_max);
  expect_reply(mail_error(absl::StrCat("FROM:<a@b.example> ENVID=", envid_max, "x")), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> ENVID=a ENVID=b"), 501, "5.5.4");
}

TEST(MailFromTest, AllParametersTogether) {
  const MailFrom mail = mail_ok("FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id1");
  EXPECT_EQ(mail.size, 1000u);
  EXPECT_EQ(mail.body, MailFrom::Body::eight_bit_mime);
  EXPECT_TRUE(mail.smtputf8);
  EXPECT_EQ(mail.ret, "HDRS");
  EXPECT_EQ(mail.envid, "id1");
}

TEST(MailFromTest, UnknownParameterIs555) {
  expect_reply(mail_error("FROM:<a@b.example> XFOO=1"), 555, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> AUTH=<>"), 555, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> NOTIFY=NEVER"), 555, "5.5.4");  // RCPT-only
  expect_reply(mail_error("FROM:<a@b.example> SIZE=1 XFOO"), 555, "5.5.4");
}

TEST(MailFromTest, MalformedParameterIs501) {
  expect_reply(mail_error("FROM:<a@b.example> =1"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> -X=1"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> X_Y=1"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE=1=2"), 501, "5.5.4");
  expect_reply(mail_error("FROM:<a@b.example> SIZE=\x01"), 501, "5.5.4");
}

// ---- RCPT TO: ----

TEST(RcptToTest, PlainAddress) {
  const RcptTo rcpt = rcpt_ok("TO:<bob@example.org>");
  EXPECT_EQ(rcpt.forward_path, "bob@example.org");
  EXPECT_TRUE(rcpt.notify.empty());
  EXPECT_TRUE(rcpt.orcpt.empty());
  EXPECT_EQ(rcpt_ok("to:<bob@example.org>").forward_path, "bob@example.org");
  EXPECT_EQ(rcpt_ok("TO: <bob@example.org>").forward_path, "bob@example.org");
}

TEST(RcptToTest, SyntaxErrors) {
  expect_reply(rcpt_error("TO:bob@example.org"), 501, "5.5.4");
  expect_reply(rcpt_error("FROM:<bob@example.org>"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<bob@example.org"), 501, "5.5.4");
  expect_reply(rcpt_error(""), 501, "5.5.4");
}

TEST(RcptToTest, BadRecipientIs501_513) {
  expect_reply(rcpt_error("TO:<>"), 501, "5.1.3");
  expect_reply(rcpt_error("TO:<bob>"), 501, "5.1.3");
  expect_reply(rcpt_error("TO:<bob@>"), 501, "5.1.3");
  expect_reply(rcpt_error("TO:<bob@exa mple.org>"), 501, "5.1.3");
  expect_reply(rcpt_error("TO:<postmaster@>"), 501, "5.1.3");
  expect_reply(rcpt_error("TO:<postmasterx>"), 501, "5.1.3");
}

TEST(RcptToTest, PostmasterWithoutDomain) {
  EXPECT_EQ(rcpt_ok("TO:<postmaster>").forward_path, "postmaster");
  EXPECT_EQ(rcpt_ok("TO:<Postmaster>").forward_path, "Postmaster");
  EXPECT_EQ(rcpt_ok("TO:<POSTMASTER> NOTIFY=NEVER").notify, "NEVER");
  EXPECT_EQ(rcpt_ok("TO:<postmaster@example.org>").forward_path, "postmaster@example.org");
}

TEST(RcptToTest, SourceRoute) {
  EXPECT_EQ(rcpt_ok("TO:<@hosta.example,@hostb.example:bob@example.org>").forward_path, "bob@example.org");
}

TEST(RcptToTest, NonAscii) {
  expect_reply(rcpt_error("TO:<b\xC3\xB6"
                          "b@example.org>"),
               553, "5.6.7");
  EXPECT_EQ(rcpt_ok("TO:<b\xC3\xB6"
                    "b@example.org>",
                    /*utf8=*/true)
                .forward_path,
            "b\xC3\xB6"
            "b@example.org");
}

TEST(RcptToTest, LengthLimits) {
  const std::string local65(kLocalPartOctetsMax + 1, 'l');
  const ParseError error = rcpt_error(absl::StrCat("TO:<", local65, "@example.org>"));
  expect_reply(error, 501, "5.1.3");
  EXPECT_NE(error.text.find("local part"), std::string_view::npos);
  const ParseError path_error = rcpt_error(absl::StrCat("TO:<a@", std::string(300, 'd'), ">"));
  expect_reply(path_error, 501, "5.1.3");
  EXPECT_NE(path_error.text.find("path"), std::string_view::npos);
}

TEST(AddressTest, DomainLimit255) {
  const std::string domain256 = absl::StrCat(std::string(63, 'a'), ".", std::string(63, 'b'), ".", std::string(63, 'c'),
                                             ".", std::string(64, 'd'));
  ASSERT_EQ(domain256.size(), 256u);
  EXPECT_FALSE(valid_domain(domain256));
  EXPECT_FALSE(valid_mailbox(absl::StrCat("x@", domain256), false));
  const std::string domain255 = domain256.substr(0, 255);  // last label now 63 octets
  EXPECT_TRUE(valid_domain(domain255));
}

TEST(RcptToTest, NotifyParameter) {
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> NOTIFY=NEVER").notify, "NEVER");
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> NOTIFY=SUCCESS").notify, "SUCCESS");
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> NOTIFY=success,Failure,DELAY").notify, "success,Failure,DELAY");
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> notify=DELAY,FAILURE").notify, "DELAY,FAILURE");
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> NOTIFY=NEVER").notify_flags, kNotifyNever);
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> NOTIFY=success,Failure,DELAY").notify_flags,
            kNotifySuccess | kNotifyFailure | kNotifyDelay);
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> notify=DELAY,FAILURE").notify_flags, kNotifyFailure | kNotifyDelay);
  EXPECT_EQ(rcpt_ok("TO:<b@example.org>").notify_flags, 0);
  expect_reply(rcpt_error("TO:<b@example.org> NOTIFY=NEVER,SUCCESS"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> NOTIFY=SUCCESS,,DELAY"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> NOTIFY=SUCCESS,"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> NOTIFY=SUCCESS,SUCCESS"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> NOTIFY=ALWAYS"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> NOTIFY"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> NOTIFY=NEVER NOTIFY=NEVER"), 501, "5.5.4");
}

TEST(RcptToTest, OrcptParameter) {
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> ORCPT=rfc822;b@example.org").orcpt, "rfc822;b@example.org");
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> ORCPT=RFC822;b+2Bx@example.org").orcpt, "RFC822;b+2Bx@example.org");
  EXPECT_EQ(rcpt_ok("TO:<b@example.org> ORCPT=utf-8;b@example.org").orcpt, "utf-8;b@example.org");
  expect_reply(rcpt_error("TO:<b@example.org> ORCPT=rfc822"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> ORCPT=rfc822;"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> ORCPT=;b@example.org"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> ORCPT=rfc822;b+zz@example.org"), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> ORCPT=rf/c;b@example.org"), 501, "5.5.4");
  const std::string long_orcpt = absl::StrCat("rfc822;", std::string(kOrcptOctetsMax, 'x'));
  expect_reply(rcpt_error(absl::StrCat("TO:<b@example.org> ORCPT=", long_orcpt)), 501, "5.5.4");
  expect_reply(rcpt_error("TO:<b@example.org> ORCPT=rfc822;a ORCPT=rfc822;b"), 501, "5.5.4");
}

TEST(RcptToTest, BothDsnParameters) {
  const RcptTo rcpt = rcpt_ok("TO:<b@example.org> NOTIFY=FAILURE ORCPT=rfc822;b@example.org");
  EXPECT_EQ(rcpt.notify, "FAILURE");
  EXPECT_EQ(rcpt.orcpt, "rfc822;b@example.org");
}

TEST(RcptToTest, UnknownParameterIs555) {
  expect_reply(rcpt_error("TO:<b@example.org> SIZE=10"), 555, "5.5.4");  // MAIL-only
  expect_reply(rcpt_error("TO:<b@example.org> XFOO"), 555, "5.5.4");
}

// ---- BDAT ----

TEST(BdatTest, ChunkSizeAndLast) {
  BdatArgs args = expect_ok(parse_bdat("1000"));
  EXPECT_EQ(args.chunk_octets, 1000u);
  EXPECT_FALSE(args.last);
  args = expect_ok(parse_bdat("0 LAST"));
  EXPECT_EQ(args.chunk_octets, 0u);
  EXPECT_TRUE(args.last);
  args = expect_ok(parse_bdat("42 last"));
  EXPECT_EQ(args.chunk_octets, 42u);
  EXPECT_TRUE(args.last);
  args = expect_ok(parse_bdat("18446744073709551615"));
  EXPECT_EQ(args.chunk_octets, 18446744073709551615u);
}

TEST(BdatTest, SyntaxErrors) {
  for (const std::string_view argument : {"", " 10", "LAST", "10 FIRST", "10 LAST X", "10LAST", "-1", "1e3", "0x10",
                                          "18446744073709551616", "10\tLAST"}) {
    expect_reply(expect_error(parse_bdat(argument)), 501, "5.5.4");
  }
}

// ---- address helpers ----

TEST(AddressTest, ValidDomain) {
  for (const std::string_view domain :
       {"example.com", "a", "a-b.example", "1.example", "x1", "EXAMPLE.COM", "[192.0.2.1]", "[IPv6:::1]",
        "[IPv6:2001:db8:0:0:0:0:0:1]", "xn--bcher-kva.example"}) {
    EXPECT_TRUE(valid_domain(domain)) << domain;
  }
  for (const std::string_view domain :
       {"", ".", "example.", ".example", "a..b", "-a.example", "a-.example", "a_b.example", "a b", "[192.0.2.1",
        "192.0.2.1]", "[300.0.0.1]", "[IPv6:xyz]", "[1.2.3.04.5]",
        "b\xC3\xBC"
        "cher.example"}) {
    EXPECT_FALSE(valid_domain(domain)) << domain;
  }
  EXPECT_TRUE(
      valid_domain("b\xC3\xBC"
                   "cher.example",
                   /*utf8_allowed=*/true));
  EXPECT_TRUE(valid_domain(absl::StrCat(std::string(63, 'a'), ".example")));
  EXPECT_FALSE(valid_domain(absl::StrCat(std::string(64, 'a'), ".example")));
}

TEST(AddressTest, ValidDomainNulInsideIpv6Literal) {
  // A NUL would end the C string handed to inet_pton early; it must be refused before that.
  const std::string literal("[IPv6:1::2\0junk]", 16);
  EXPECT_FALSE(valid_domain(literal));
}

TEST(AddressTest, ValidMailbox) {
  EXPECT_TRUE(valid_mailbox("a@example.com", false));
  EXPECT_TRUE(valid_mailbox("first.last+tag@example.com", false));
  EXPECT_TRUE(valid_mailbox("!#$%&'*+-/=?^_`{|}~@example.com", false));
  EXPECT_TRUE(valid_mailbox("\"quoted local\"@example.com", false));
  EXPECT_TRUE(valid_mailbox("\"\"@example.com", false));
  EXPECT_FALSE(valid_mailbox("postmaster", false));
  EXPECT_FALSE(valid_mailbox("a@", false));
  EXPECT_FALSE(valid_mailbox("@a", false));
  EXPECT_FALSE(valid_mailbox("a@b@c", false));
  EXPECT_FALSE(valid_mailbox("\"a\tb\"@example.com", false));  // control char in quotes
  EXPECT_FALSE(valid_mailbox("\"a\\\"@example.com", false));   // escaped closing quote
  EXPECT_FALSE(valid_mailbox("\xC3\xA9@example.com", false));
  EXPECT_TRUE(valid_mailbox("\xC3\xA9@example.com", true));
  EXPECT_FALSE(valid_mailbox(absl::StrCat(std::string(65, 'a'), "@example.com"), false));
}

TEST(AddressTest, DomainOf) {
  EXPECT_EQ(domain_of("a@example.com"), "example.com");
  EXPECT_EQ(domain_of("\"a@b\"@example.com"), "example.com");
  EXPECT_EQ(domain_of("a@[192.0.2.1]"), "[192.0.2.1]");
  EXPECT_EQ(domain_of("postmaster"), "");
  EXPECT_EQ(domain_of(""), "");
}

// The session logs and counts a refusal by the reason its parse error carries.
TEST(ParseErrorTest, CarriesTheReason) {
  EXPECT_EQ(mail_error("FROM:<j\xC3\xB6rg@example.com>").reason, RejectReason::non_ascii_address);
  EXPECT_EQ(std::get<ParseError>(parse_rcpt_to("TO:<j\xC3\xB6rg@example.com>")).reason,
            RejectReason::non_ascii_address);
  EXPECT_EQ(mail_error("FROM:<a@example.com> SIZE=99999999999999999999999").reason, RejectReason::too_big);
  EXPECT_EQ(mail_error("FROM:a@example.com").reason, RejectReason::syntax);
  EXPECT_EQ(std::get<ParseError>(parse_bdat("x")).reason, RejectReason::syntax);
}

}  // namespace
}  // namespace sluice::smtp
