// Fuzz target for the SMTP command parser: any line must parse without crashing, every view in a
// result must lie inside the input, and whatever the parser accepts must satisfy the address
// grammar it claims to enforce.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "engine/smtp/command.h"

namespace {

using namespace sluice::smtp;

void require(bool condition) {
  if (!condition) {
    std::abort();
  }
}

bool inside(std::string_view part, std::string_view whole) {
  if (part.empty()) {
    return true;
  }
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

void check_mail(std::string_view input, std::string_view argument, bool utf8_allowed) {
  const auto parsed = parse_mail_from(argument, utf8_allowed);
  if (const auto* error = std::get_if<ParseError>(&parsed)) {
    require(error->code >= 500 && error->code < 600 && !error->text.empty());
    return;
  }
  const MailFrom& mail = std::get<MailFrom>(parsed);
  require(inside(mail.reverse_path, input) && inside(mail.ret, input) && inside(mail.envid, input));
  require(!mail.smtputf8 || utf8_allowed);
  require(mail.reverse_path.empty() || valid_mailbox(mail.reverse_path, mail.smtputf8));
  require(mail.reverse_path.size() + 2 <= kPathOctetsMax);
}

void check_rcpt(std::string_view input, std::string_view argument, bool utf8) {
  const auto parsed = parse_rcpt_to(argument, utf8);
  if (const auto* error = std::get_if<ParseError>(&parsed)) {
    require(error->code >= 500 && error->code < 600 && !error->text.empty());
    return;
  }
  const RcptTo& rcpt = std::get<RcptTo>(parsed);
  require(inside(rcpt.forward_path, input) && inside(rcpt.notify, input) && inside(rcpt.orcpt, input));
  require(!rcpt.forward_path.empty());
  if (domain_of(rcpt.forward_path).empty()) {
    require(rcpt.forward_path.size() == 10);  // "postmaster", in any case
  } else {
    require(valid_mailbox(rcpt.forward_path, utf8));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const CommandLine line = parse_command_line(input);
  require(inside(line.argument, input));
  // The argument the session would see for MAIL / RCPT, and the raw input as an argument too,
  // so the path and parameter code gets inputs that do not start with a verb.
  for (const std::string_view argument : {line.argument, input}) {
    check_mail(input, argument, false);
    check_mail(input, argument, true);
    check_rcpt(input, argument, false);
    check_rcpt(input, argument, true);
    const auto bdat = parse_bdat(argument);
    if (const auto* error = std::get_if<ParseError>(&bdat)) {
      require(error->code == 501);
    }
  }
  const bool domain_ascii = valid_domain(input);
  require(!domain_ascii || valid_domain(input, true));
  const bool mailbox_ascii = valid_mailbox(input, false);
  require(!mailbox_ascii || valid_mailbox(input, true));
  require(inside(domain_of(input), input));
  return 0;
}
