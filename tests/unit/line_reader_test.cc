// The CRLF line reader shared by the SMTP server and client: the same results however the input
// is split, the length limit at its exact octet, the bare CR and bare LF rules of each side.
#include "engine/smtp/line_reader.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sluice::smtp {
namespace {

using namespace std::string_literals;

const LineReaderSettings kServer{20, BareLf::error, BareCr::error_at_line_end};
const LineReaderSettings kClient{20, BareLf::ends_line, BareCr::error_at_once};

// One result, with the line copied out (its view dies with the next read).
struct Result {
  LineEvent event;
  std::string line;
  bool line_ended;
  friend bool operator==(const Result&, const Result&) = default;
};

std::ostream& operator<<(std::ostream& os, const Result& r) {
  return os << line_event_name(r.event) << "(" << testing::PrintToString(r.line) << (r.line_ended ? ",ended" : "")
            << ")";
}

struct Outcome {
  std::vector<Result> results;
  size_t consumed = 0;
  bool in_line = false;
  friend bool operator==(const Outcome&, const Outcome&) = default;
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  return os << testing::PrintToString(o.results) << " consumed=" << o.consumed << " in_line=" << o.in_line;
}

bool is_final(LineEvent event) {
  return event == LineEvent::bare_cr || event == LineEvent::bare_lf;
}

// Feeds `input` cut at `cuts` (ascending offsets), each piece until it is used up; stops at a
// final result. need_more is not recorded (where it comes depends on the cuts).
Outcome read_pieces(const LineReaderSettings& settings, std::string_view input, std::vector<size_t> cuts = {}) {
  LineReader reader(settings);
  Outcome out;
  cuts.push_back(input.size());
  size_t begin = 0;
  for (const size_t end : cuts) {
    std::string_view piece = input.substr(begin, end - begin);
    begin = end;
    while (true) {
      const LineStep step = reader.read(piece);
      EXPECT_LE(step.consumed, piece.size());
      piece.remove_prefix(step.consumed);
      out.consumed += step.consumed;
      if (step.event == LineEvent::need_more) {
        EXPECT_TRUE(piece.empty());
        break;
      }
      EXPECT_TRUE(step.event == LineEvent::line || step.line.empty());
      out.results.push_back(Result{step.event, std::string(step.line), step.line_ended});
      if (is_final(step.event)) {
        // Final: nothing more is read, and the answer stays.
        EXPECT_EQ(reader.read("NOOP\r\n"), (LineStep{0, step.event, false, {}}));
        out.in_line = reader.in_line();
        return out;
      }
    }
  }
  out.in_line = reader.in_line();
  return out;
}

Result line(std::string text) {
  return Result{LineEvent::line, std::move(text), true};
}
const Result kTooLong{LineEvent::too_long, "", false};
const Result kTooLongAtLf{LineEvent::too_long, "", true};
const Result kSkippedEnd{LineEvent::skipped_end, "", true};
const Result kBareLfAtEnd{LineEvent::bare_lf, "", true};
const Result kBareCrAtEnd{LineEvent::bare_cr, "", true};
const Result kBareCrAtOnce{LineEvent::bare_cr, "", false};

// Every way to cut `input` in one and in two places, and one octet at a time, gives `whole`.
void expect_split_invariant(const LineReaderSettings& settings, std::string_view input) {
  const Outcome whole = read_pieces(settings, input);
  for (size_t a = 0; a <= input.size(); ++a) {
    ASSERT_EQ(read_pieces(settings, input, {a}), whole) << "cut " << a;
    for (size_t b = a; b <= input.size(); ++b) {
      ASSERT_EQ(read_pieces(settings, input, {a, b}), whole) << "cuts " << a << " " << b;
    }
  }
  std::vector<size_t> every;
  for (size_t i = 1; i < input.size(); ++i) {
    every.push_back(i);
  }
  ASSERT_EQ(read_pieces(settings, input, every), whole) << "one octet at a time";
}

// ---- splitting ----

const std::string kLines = "EHLO a.example\r\n\r\nMAIL FROM:<a@b>\r\nx\0y\r\nNOOP\r\n"s;

TEST(LineReaderTest, ManyLinesInOneRead) {
  const Outcome out = read_pieces(kServer, kLines);
  EXPECT_EQ(out.results, (std::vector<Result>{line("EHLO a.example"), line(""), line("MAIL FROM:<a@b>"), line("x\0y"s),
                                              line("NOOP")}));
  EXPECT_EQ(out.consumed, kLines.size());
  EXPECT_FALSE(out.in_line);
}

TEST(LineReaderTest, EveryChunkBoundaryGivesTheSameLines) {
  expect_split_invariant(kServer, kLines);
  expect_split_invariant(kClient, kLines);
  // With the results that come only from the rules: a long line skipped, then lines again.
  expect_split_invariant(kServer, "NOOP\r\n" + std::string(30, 'x') + "\r\nQUIT\r\n" + "partial");
  expect_split_invariant(kClient, "250-a\n250-b\r\n" + std::string(19, 'y') + "\n250 " + std::string(30, 'z'));
}

TEST(LineReaderTest, CrAtTheEndOfOneReadAndLfAtTheStartOfTheNext) {
  LineReader reader(kServer);
  EXPECT_EQ(reader.read("NOOP\r"), (LineStep{5, LineEvent::need_more, false, {}}));
  EXPECT_TRUE(reader.in_line());
  EXPECT_EQ(reader.read(""), (LineStep{0, LineEvent::need_more, false, {}}));  // an empty read changes nothing
  const LineStep step = reader.read("\nQUIT\r\n");
  EXPECT_EQ(step.event, LineEvent::line);
  EXPECT_EQ(step.line, "NOOP");
  EXPECT_EQ(step.consumed, 1u);
  EXPECT_FALSE(reader.in_line());
  // The same for the client, whose CR is judged at the next octet.
  LineReader client(kClient);
  EXPECT_EQ(client.read("250 ok\r").event, LineEvent::need_more);
  EXPECT_EQ(client.read("\n").line, "250 ok");
}

TEST(LineReaderTest, AWholeLineIsNotCopied) {
  LineReader reader(kServer);
  const std::string input = "NOOP\r\nRSET\r\n";
  const LineStep step = reader.read(input);
  EXPECT_EQ(step.line, "NOOP");
  EXPECT_EQ(step.line.data(), input.data());
}

TEST(LineReaderTest, EmptyLinesAndNulOctets) {
  EXPECT_EQ(read_pieces(kServer, "\r\n\r\n").results, (std::vector<Result>{line(""), line("")}));
  EXPECT_EQ(read_pieces(kClient, "\n\r\n").results, (std::vector<Result>{line(""), line("")}));
  EXPECT_EQ(read_pieces(kServer, "\0\r\n\0\0\r\n"s, {1, 4}).results, (std::vector<Result>{line("\0"s), line("\0\0"s)}));
}

// ---- the limit: line_octets_max is 20, line end included ----

TEST(LineReaderTest, ExactLimitIsALine) {
  const std::string text(18, 'a');
  EXPECT_EQ(read_pieces(kServer, text + "\r\n").results, std::vector<Result>{line(text)});
  EXPECT_EQ(read_pieces(kClient, text + "\r\n").results, std::vector<Result>{line(text)});
  EXPECT_EQ(read_pieces(kClient, text + "a\n").results, std::vector<Result>{line(text + "a")});
  expect_split_invariant(kServer, text + "\r\n" + text + "\r\n");
}

TEST(LineReaderTest, LimitPlusOneIsTooLongAtTheOctetThatPassesIt) {
  // The 21st octet is the LF: the line has ended with it, too long.
  const std::string text(19, 'a');
  EXPECT_EQ(read_pieces(kServer, text + "\r\nNOOP\r\n").results, (std::vector<Result>{kTooLongAtLf, line("NOOP")}));
  EXPECT_EQ(read_pieces(kClient, text + "\r\n250 ok\n").results, (std::vector<Result>{kTooLongAtLf, line("250 ok")}));
  // The 21st octet is not the LF: too long there, then the rest is skipped to the LF.
  LineReader reader(kServer);
  const std::string input = std::string(25, 'b') + "\r\nNOOP\r\n";
  EXPECT_EQ(reader.read(input), (LineStep{21, LineEvent::too_long, false, {}}));
  EXPECT_TRUE(reader.in_line());
  EXPECT_EQ(reader.read(std::string_view(input).substr(21)), (LineStep{6, LineEvent::skipped_end, true, {}}));
  EXPECT_FALSE(reader.in_line());
  EXPECT_EQ(reader.read(std::string_view(input).substr(27)).line, "NOOP");
  // Split before the limit: the same octet.
  LineReader split(kServer);
  EXPECT_EQ(split.read(std::string(15, 'c')).consumed, 15u);
  EXPECT_EQ(split.read(std::string(15, 'c')), (LineStep{6, LineEvent::too_long, false, {}}));
}

TEST(LineReaderTest, ALineThatNeverEndsIsReportedOnce) {
  LineReader reader(kServer);
  EXPECT_EQ(reader.read(std::string(100, 'x')).event, LineEvent::too_long);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(reader.read(std::string(1000, 'x')), (LineStep{1000, LineEvent::need_more, false, {}}));
  }
  EXPECT_TRUE(reader.in_line());
  EXPECT_EQ(reader.read("\r\n").event, LineEvent::skipped_end);
}

TEST(LineReaderTest, ASkippedLineMustStillEndInCrlfOnTheServer) {
  const std::string text(30, 'x');
  EXPECT_EQ(read_pieces(kServer, text + "\nNOOP\r\n").results, (std::vector<Result>{kTooLong, kBareLfAtEnd}));
  EXPECT_EQ(read_pieces(kServer, text + "\r", {31}).results, std::vector<Result>{kTooLong});
  EXPECT_EQ(read_pieces(kServer, text + "\r\n", {31}).results, (std::vector<Result>{kTooLong, kSkippedEnd}));
  // CRs inside the dropped part are not looked at: the line is dropped whatever it holds.
  EXPECT_EQ(read_pieces(kServer, text + "\ra\rb\r\nNOOP\r\n").results,
            (std::vector<Result>{kTooLong, kSkippedEnd, line("NOOP")}));
  // A limit-plus-one line that ends in a bare LF: the line end is judged before the length.
  EXPECT_EQ(read_pieces(kServer, std::string(20, 'y') + "\n").results, std::vector<Result>{kBareLfAtEnd});
  EXPECT_EQ(read_pieces(kServer, "a\rb" + std::string(16, 'y') + "\r\n").results, std::vector<Result>{kBareCrAtEnd});
  // The client takes a bare LF as the end of a skipped line too.
  EXPECT_EQ(read_pieces(kClient, text + "\n250 ok\n").results,
            (std::vector<Result>{kTooLong, kSkippedEnd, line("250 ok")}));
}

// ---- bare CR and bare LF ----

TEST(LineReaderTest, BareLfIsFinalOnTheServerAndALineEndForTheClient) {
  EXPECT_EQ(read_pieces(kServer, "NOOP\nNOOP\r\n").results, std::vector<Result>{kBareLfAtEnd});
  EXPECT_EQ(read_pieces(kServer, "NOOP\nNOOP\r\n").consumed, 5u);
  EXPECT_EQ(read_pieces(kServer, "\n").results, std::vector<Result>{kBareLfAtEnd});
  EXPECT_EQ(read_pieces(kServer, "NOOP\r\n\n").results, (std::vector<Result>{line("NOOP"), kBareLfAtEnd}));
  EXPECT_EQ(read_pieces(kClient, "250-a\n250 b\n").results, (std::vector<Result>{line("250-a"), line("250 b")}));
  expect_split_invariant(kServer, "NOOP\r\nRSET\nNOOP\r\n");
}

TEST(LineReaderTest, BareCrOnTheServerIsFinalWhenItsLineEnds) {
  for (const std::string input : {"NOOP\rNOOP\r\n", "\rNOOP\r\n", "NOOP\r\r\n", "NOOP\r\rNOOP\r\n"}) {
    EXPECT_EQ(read_pieces(kServer, input).results, std::vector<Result>{kBareCrAtEnd}) << input;
    EXPECT_EQ(read_pieces(kServer, input).consumed, input.size()) << input;
    expect_split_invariant(kServer, input + "QUIT\r\n");
  }
  // Until the LF arrives nothing is said: the server reads the whole line first.
  LineReader reader(kServer);
  EXPECT_EQ(reader.read("NOOP\rxyz").event, LineEvent::need_more);
  EXPECT_EQ(reader.read("\r"), (LineStep{1, LineEvent::need_more, false, {}}));
  EXPECT_EQ(reader.read("\n"), (LineStep{1, LineEvent::bare_cr, true, {}}));
  // A bare CR and a bare LF in one line: the line end is judged first.
  EXPECT_EQ(read_pieces(kServer, "a\rb\n").results, std::vector<Result>{kBareLfAtEnd});
}

TEST(LineReaderTest, BareCrForTheClientIsFinalAtTheOctetAfterIt) {
  EXPECT_EQ(read_pieces(kClient, "250 a\rb\r\n").results, std::vector<Result>{kBareCrAtOnce});
  EXPECT_EQ(read_pieces(kClient, "250 a\rb\r\n").consumed, 7u);
  EXPECT_EQ(read_pieces(kClient, "250 a\r\r\n").consumed, 7u);
  EXPECT_EQ(read_pieces(kClient, "250 a\r", {}).results, std::vector<Result>{});  // the next octet decides
  EXPECT_EQ(read_pieces(kClient, "250 a\rb", {6}).consumed, 7u);
  // On the octet that passes the limit, the bare CR is reported first.
  EXPECT_EQ(read_pieces(kClient, std::string(19, 'a') + "\rb").results, std::vector<Result>{kBareCrAtOnce});
  EXPECT_EQ(read_pieces(kClient, std::string(20, 'a') + "\rb").results, std::vector<Result>{kTooLong});
  expect_split_invariant(kClient, "250-a\r\n250 b\rc\r\n");
}

}  // namespace
}  // namespace sluice::smtp
