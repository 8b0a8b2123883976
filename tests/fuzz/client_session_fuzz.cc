// Fuzz target for the SMTP client session: arbitrary server bytes to a session with transactions
// in flight. Properties, not only "no crash" (and no SLUICE_ASSERT: the server's bytes must never
// reach one):
// 1. Every transaction handed in ends exactly once, with exactly one result per recipient, however
//    the connection ends (the input runs out and the connection closes, or the deadline passes).
// 2. The session ends closed, and writes nothing once closed.
// 3. What the client writes is only its own command lines (and the body it was told to send): no
//    server octet is ever echoed into the command stream.
// 4. The same input fed whole, and in pieces of a size taken from the second octet, gives the
//    same bytes written and the same results.
// The first octet chooses: a well-formed greeting and EHLO first (with or without PIPELINING),
// the input rewritten into reply lines from a table (so random input reaches deep states), the
// number of recipients, an 8-bit or SMTPUTF8 message, and close or timeout at the end.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/smtp/client_session.h"

namespace {

using namespace sluice::smtp;

void require(bool ok) {
  if (!ok) {
    __builtin_trap();
  }
}

constexpr std::string_view kBody = "Subject: x\r\n\r\nbody\r\n";

struct Outcome {
  std::string written;
  std::vector<std::vector<RecipientResult>> results;
  friend bool operator==(const Outcome&, const Outcome&) = default;
};

struct Choice {
  bool handshake = false;
  bool pipelining = false;
  bool shaped = false;
  size_t recipients = 1;
  bool body_8bit = false;
  bool smtputf8 = false;
  bool end_by_timeout = false;
  bool pipelining_off = false;  // ClientSettings::pipelining (sluice-bench --pipelining off)
  bool chunking = false;        // ClientSettings::chunking (sluice-bench --chunking)
};

ClientTransaction make_transaction(const Choice& choice, size_t serial) {
  ClientTransaction t;
  t.sender = serial == 0 ? "a@example.org" : "";
  for (size_t i = 0; i < choice.recipients; ++i) {
    std::string address = "r@example.net";
    address.insert(1, 1, static_cast<char>('0' + i));  // (GCC 12 warns wrongly on "r" + to_string(i))
    t.recipients.push_back(
        ClientRecipient{std::move(address), static_cast<uint8_t>(i % 2 == 0 ? kNotifyFailure : 0), ""});
  }
  t.size_octets = 5000 * (serial + 1);
  t.body_8bit = choice.body_8bit && serial == 0;
  t.smtputf8 = choice.smtputf8 && serial == 1;
  t.ret = DsnRet::hdrs;
  return t;
}

// Each line the client wrote is one of its own.
void check_written(std::string_view written) {
  static constexpr std::string_view kPrefixes[] = {"EHLO relay.example.test",
                                                   "HELO relay.example.test",
                                                   "MAIL FROM:<",
                                                   "RCPT TO:<r",
                                                   "DATA",
                                                   "BDAT ",
                                                   "RSET",
                                                   "QUIT",
                                                   ".",
                                                   "Subject: x",
                                                   "",
                                                   "body"};
  size_t at = 0;
  while (at < written.size()) {
    const size_t end = written.find("\r\n", at);
    require(end != std::string_view::npos);
    const std::string_view line = written.substr(at, end - at);
    bool known = false;
    for (const std::string_view prefix : kPrefixes) {
      known = known || (prefix.empty() ? line.empty() : line.starts_with(prefix));
    }
    require(known);
    require(line.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos);
    at = end + 2;
  }
}

Outcome run(std::string_view input, size_t piece, const Choice& choice) {
  ClientSettings settings;
  settings.hostname = "relay.example.test";
  settings.pipelining = !choice.pipelining_off;
  settings.chunking = choice.chunking;
  uint64_t now_ms = 0;
  ClientSession session(&settings, now_ms);
  Outcome out;
  size_t started = 0;
  size_t ended = 0;
  std::vector<size_t> sizes;
  const auto start_next = [&]() -> ClientAction {
    if (started < 2) {
      ClientTransaction t = make_transaction(choice, started);
      sizes.push_back(t.recipients.size());
      ++started;
      return session.start_transaction(std::move(t), now_ms, out.written);
    }
    return session.finish(now_ms, out.written);
  };
  // Acts on `action` and on whatever that leads to.
  const auto act = [&](ClientAction action) {
    while (action != ClientAction::none && action != ClientAction::close) {
      if (action == ClientAction::send_body) {
        out.written += kBody;
        session.body_queued(true, now_ms, out.written);
        session.body_sent(now_ms);
        return;
      }
      if (action == ClientAction::transaction_done) {
        std::vector<RecipientResult> results = session.take_results();
        require(ended < started && results.size() == sizes[ended]);
        ++ended;
        out.results.push_back(std::move(results));
        if (session.state() != ClientState::idle) {
          return;
        }
      }
      action = start_next();  // after ready, or after a transaction ended on a usable connection
    }
  };
  act(start_next());  // the first transaction goes in before the greeting
  bool closed = false;
  while (!input.empty() && !closed) {
    std::string_view chunk = input.substr(0, piece);
    input.remove_prefix(chunk.size());
    while (!closed) {
      now_ms += 10;
      const ClientStep step = session.on_input(chunk, now_ms, out.written);
      require(step.consumed <= chunk.size());
      chunk.remove_prefix(step.consumed);
      closed = step.action == ClientAction::close;
      act(step.action);
      closed = closed || session.state() == ClientState::closed;
      if (step.action == ClientAction::none) {
        require(chunk.empty());
        break;
      }
    }
  }
  // The end: the connection closes, or the deadline passes (and then it closes).
  if (!closed && choice.end_by_timeout) {
    if (const std::optional<uint64_t> deadline = session.next_deadline_ms()) {
      now_ms = *deadline;
      act(session.on_timeout(now_ms, out.written));
    }
  }
  act(session.on_close());
  require(session.state() == ClientState::closed);
  require(ended == started);
  for (const std::vector<RecipientResult>& results : out.results) {
    for (const RecipientResult& r : results) {
      require(r.text.size() <= kResultTextOctetsMax);
      require((r.code == 0) == (r.cause != ResultCause::reply));
      require(r.enhanced.klass == 2 || r.enhanced.klass == 4 || r.enhanced.klass == 5);
    }
  }
  const size_t written = out.written.size();
  std::string after;
  require(session.on_input("250 ok\r\n", now_ms, after).action == ClientAction::close && after.empty());
  require(out.written.size() == written);
  check_written(out.written);
  return out;
}

// Each input octet becomes one reply from the table: mostly the ones a working server sends, so
// that random input gets through whole transactions and on to the next one.
std::string shaped(std::string_view input) {
  static constexpr std::string_view kReplies[] = {
      "250 ok\r\n",         "250 2.1.5 ok\r\n", "250 2.0.0 queued\r\n", "250 ok\n",
      "250 ok\r\n",         "250 2.1.0 ok\r\n", "250 ok\r\n",           "250 ok\r\n",
      "250 ok\r\n",         "250 ok\r\n",       "354 go\r\n",           "354 go\r\n",
      "354 go\r\n",         "220 mx ESMTP\r\n", "451 4.3.0 later\r\n",  "550 5.1.1 no\r\n",
      "421 4.3.2 bye\r\n",  "221 bye\r\n",      "502 5.5.1 no\r\n",     "503 5.5.1 seq\r\n",
      "554 5.7.1 no\r\n",   "250-mx\r\n",       "250-PIPELINING\r\n",   "250-SIZE 6000\r\n",
      "250-8BITMIME\r\n",   "250-SMTPUTF8\r\n", "250-DSN\r\n",          "452 4.5.3 full\r\n",
      "250-x\r\n550 y\r\n", "garbage\r\n",      "334 what\r\n",         "250-",
  };
  std::string out;
  for (const char c : input) {
    out += kReplies[static_cast<uint8_t>(c) % std::size(kReplies)];
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) {
    return 0;
  }
  const uint8_t flags = data[0];
  const Choice choice{.handshake = (flags & 1) != 0,
                      .pipelining = (flags & 2) != 0,
                      .shaped = (flags & 4) != 0,
                      .recipients = size_t{1} + ((flags >> 3) & 3u),
                      .body_8bit = (flags & 0x60) == 0x60,
                      .smtputf8 = (flags & 0x60) == 0x40,
                      .end_by_timeout = (flags & 128) != 0,
                      .pipelining_off = (data[1] & 0x80) != 0,
                      .chunking = (data[1] & 0x40) != 0};  // the low 6 bits are the piece size
  const size_t piece = 1 + data[1] % 64;
  const std::string_view raw(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::string input;
  if (choice.handshake) {
    input = choice.pipelining ? "220 mx\r\n250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n"
                              : "220 mx\r\n250-mx\r\n250-8BITMIME\r\n";
    input += choice.chunking ? "250-CHUNKING\r\n" : "";
    input += choice.pipelining ? "250 SIZE 7000\r\n" : "250 SIZE\r\n";
  }
  if (choice.shaped) {
    input += shaped(raw);
  } else {
    input.append(raw.begin(), raw.end());
  }
  const Outcome whole = run(input, input.size() + 1, choice);
  require(run(input, piece, choice) == whole);
  return 0;
}
