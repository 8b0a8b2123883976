// Text renderings of the queue for operators.
#include "engine/app/queue_report.h"

#include <ctime>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/io/strings.h"
#include "engine/smtp/command.h"

namespace sluice::app {

std::string format_queue_list(const std::vector<spool::MessageInfo>& messages) {
  std::string out =
      absl::StrFormat("%-16s %9s  %-20s  %s\n", "-Queue ID-", "-Size-", "-Arrival Time-", "-Sender- -> -Recipients-");
  uint64_t bytes = 0;
  for (const spool::MessageInfo& message : messages) {
    const time_t seconds = static_cast<time_t>(message.arrival_ms / 1000);
    tm parts{};
    gmtime_r(&seconds, &parts);
    char arrival[32];
    strftime(arrival, sizeof(arrival), "%a %b %d %H:%M:%S", &parts);
    str_append(&out, absl::StrFormat("%-16s%s %9u  %-20s  <%s> -> %s\n", message.id,
                                     message.status == spool::MessageStatus::held ? "!" : " ", message.rfc_size,
                                     arrival, message.sender, absl::StrJoin(message.recipients, ", ")));
    bytes += message.rfc_size;
  }
  str_append(&out, "-- ", (bytes + 1023) / 1024, " Kbytes in ", messages.size(), " Requests.\n");
  return out;
}

std::string format_queue_summary(const std::vector<spool::MessageInfo>& messages, uint64_t now_ms) {
  constexpr size_t kColumns = std::size(kSummaryBucketsMinutes) + 1;
  std::map<std::string, std::array<uint64_t, kColumns + 1>> rows;  // [0] = total
  std::array<uint64_t, kColumns + 1> totals{};
  for (const spool::MessageInfo& message : messages) {
    const uint64_t age_minutes = now_ms > message.arrival_ms ? (now_ms - message.arrival_ms) / 60'000 : 0;
    size_t column = 0;
    while (column < std::size(kSummaryBucketsMinutes) && age_minutes >= kSummaryBucketsMinutes[column]) {
      ++column;
    }
    for (const std::string& rcpt : message.recipients) {
      std::string domain = to_lower(smtp::domain_of(rcpt));
      auto& row = rows[domain.empty() ? "(local)" : domain];
      ++row[0];
      ++row[column + 1];
      ++totals[0];
      ++totals[column + 1];
    }
  }
  std::string out = absl::StrFormat("%-30s %6s", "", "T");
  for (size_t i = 0; i < kColumns; ++i) {
    const std::string label = i < std::size(kSummaryBucketsMinutes) ? str_cat(kSummaryBucketsMinutes[i])
                                                                    : str_cat(kSummaryBucketsMinutes[i - 1], "+");
    str_append(&out, absl::StrFormat(" %6s", label));
  }
  out += "\n";
  auto append_row = [&out](const std::string& name, const std::array<uint64_t, kColumns + 1>& row) {
    str_append(&out, absl::StrFormat("%-30s", name));
    for (const uint64_t value : row) {
      str_append(&out, absl::StrFormat(" %6u", value));
    }
    out += "\n";
  };
  append_row("TOTAL", totals);
  for (const auto& [domain, row] : rows) {
    append_row(domain, row);
  }
  return out;
}

}  // namespace sluice::app
