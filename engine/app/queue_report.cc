// Text renderings of the queue for operators.
#include "engine/app/queue_report.h"

#include <ctime>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/app/http.h"
#include "engine/io/strings.h"
#include "engine/smtp/command.h"

namespace sluice::app {

std::string format_queue_list(const std::vector<spool::MessageInfo>& messages) {
  QueueListPage page;
  page.total_messages = messages.size();
  for (const spool::MessageInfo& message : messages) {
    page.total_bytes += message.rfc_size;
  }
  return format_queue_list(messages, page);
}

std::string format_queue_list(const std::vector<spool::MessageInfo>& messages, const QueueListPage& page) {
  std::string out;
  if (page.first) {
    out =
        absl::StrFormat("%-16s %9s  %-20s  %s\n", "-Queue ID-", "-Size-", "-Arrival Time-", "-Sender- -> -Recipients-");
  }
  for (const spool::MessageInfo& message : messages) {
    const time_t seconds = static_cast<time_t>(message.arrival_ms / 1000);
    tm parts{};
    gmtime_r(&seconds, &parts);
    char arrival[32];
    strftime(arrival, sizeof(arrival), "%a %b %d %H:%M:%S", &parts);
    str_append(&out, absl::StrFormat("%-16s%s %9u  %-20s  <%s> -> %s\n", message.id,
                                     message.status == spool::MessageStatus::held ? "!" : " ", message.rfc_size,
                                     arrival, message.sender, absl::StrJoin(message.recipients, ", ")));
  }
  if (page.last) {
    str_append(&out, "-- ", (page.total_bytes + 1023) / 1024, " Kbytes in ", page.total_messages, " Requests.\n");
  }
  return out;
}

std::optional<SummaryQueue> parse_summary_queue(std::string_view name) {
  if (name == "all" || name.empty()) {
    return SummaryQueue::all;
  }
  if (name == "active") {
    return SummaryQueue::active;
  }
  if (name == "deferred") {
    return SummaryQueue::deferred;
  }
  return std::nullopt;
}

void QueueSummary::add(const spool::MessageInfo& message, uint64_t now_ms) {
  const uint64_t age_minutes = now_ms > message.arrival_ms ? (now_ms - message.arrival_ms) / 60'000 : 0;
  size_t column = 0;
  while (column < std::size(kSummaryBucketsMinutes) && age_minutes >= kSummaryBucketsMinutes[column]) {
    ++column;
  }
  for (size_t i = 0; i < message.recipients.size(); ++i) {
    const spool::DeliveryState state =
        i < message.recipient_states.size() ? message.recipient_states[i].state : spool::DeliveryState::pending;
    const bool deferred = state == spool::DeliveryState::deferred;
    if (spool::is_final(state) || (queue == SummaryQueue::active && deferred) ||
        (queue == SummaryQueue::deferred && !deferred)) {
      continue;
    }
    std::string domain = to_lower(smtp::domain_of(message.recipients[i]));
    Row& row = domains[domain.empty() ? "(local)" : domain];
    ++row[0];
    ++row[column + 1];
    ++totals[0];
    ++totals[column + 1];
  }
}

void QueueSummary::merge(const QueueSummary& other) {
  for (const auto& [domain, row] : other.domains) {
    Row& mine = domains[domain];
    for (size_t i = 0; i < row.size(); ++i) {
      mine[i] += row[i];
    }
  }
  for (size_t i = 0; i < totals.size(); ++i) {
    totals[i] += other.totals[i];
  }
}

std::string format_queue_summary(const QueueSummary& summary) {
  std::string out = absl::StrFormat("%-30s %6s", "", "T");
  for (size_t i = 0; i < kSummaryColumns; ++i) {
    const std::string label = i < std::size(kSummaryBucketsMinutes) ? str_cat(kSummaryBucketsMinutes[i])
                                                                    : str_cat(kSummaryBucketsMinutes[i - 1], "+");
    str_append(&out, absl::StrFormat(" %6s", label));
  }
  out += "\n";
  auto append_row = [&out](const std::string& name, const QueueSummary::Row& row) {
    str_append(&out, absl::StrFormat("%-30s", name));
    for (const uint64_t value : row) {
      str_append(&out, absl::StrFormat(" %6u", value));
    }
    out += "\n";
  };
  append_row("TOTAL", summary.totals);
  for (const auto& [domain, row] : summary.domains) {
    append_row(domain, row);
  }
  return out;
}

std::string format_queue_summary(const std::vector<spool::MessageInfo>& messages, uint64_t now_ms) {
  QueueSummary summary;
  for (const spool::MessageInfo& message : messages) {
    summary.add(message, now_ms);
  }
  return format_queue_summary(summary);
}

namespace {

std::string row_json(const QueueSummary::Row& row) {
  std::string counts;
  for (size_t i = 1; i < row.size(); ++i) {
    str_append(&counts, i == 1 ? "" : ", ", row[i]);
  }
  return str_cat("\"total\": ", row[0], ", \"counts\": [", counts, "]");
}

}  // namespace

std::string queue_summary_json(const QueueSummary& summary) {
  std::string buckets;
  for (const uint64_t minutes : kSummaryBucketsMinutes) {
    str_append(&buckets, buckets.empty() ? "" : ", ", minutes);
  }
  std::string domains;
  for (const auto& [domain, row] : summary.domains) {
    // Domains are validated at RCPT (ASCII, or UTF-8 with SMTPUTF8): no escaping beyond JSON's.
    str_append(&domains, domains.empty() ? "\n    " : ",\n    ", "{\"domain\": \"", json_escape(domain), "\", ",
               row_json(row), "}");
  }
  return str_cat("{\"buckets_minutes\": [", buckets, "], \"total\": {", row_json(summary.totals), "}, \"domains\": [",
                 domains, "]}\n");
}

std::string recipient_states_json(const spool::MessageInfo& message) {
  std::string items;
  for (size_t i = 0; i < message.recipients.size(); ++i) {
    const spool::RecipientDelivery pending;
    const spool::RecipientDelivery& state = i < message.recipient_states.size() ? message.recipient_states[i] : pending;
    const std::string_view name = state.state == spool::DeliveryState::delivered ? "delivered"
                                  : state.state == spool::DeliveryState::deferred ? "deferred"
                                  : state.state == spool::DeliveryState::bounced  ? "bounced"
                                                                                  : "pending";
    str_append(&items, i == 0 ? "" : ", ", "{\"address\": \"", json_escape(message.recipients[i]), "\", \"state\": \"",
               name, "\", \"attempts\": ", state.attempts, ", \"next_attempt_ms\": ", state.next_attempt_ms,
               ", \"last_reply\": \"", json_escape(state.last_reply), "\", \"remote_mta\": \"",
               json_escape(state.remote_mta), "\", \"relayed\": ", state.relayed ? "true" : "false", "}");
  }
  return str_cat("[", items, "]");
}

std::string remove_dot_stuffing(std::string_view wire) {
  std::string out;
  out.reserve(wire.size());
  size_t line_start = 0;
  while (line_start < wire.size()) {
    size_t line_end = wire.find('\n', line_start);
    line_end = line_end == std::string_view::npos ? wire.size() : line_end + 1;
    const size_t skip = wire[line_start] == '.' ? 1 : 0;
    out.append(wire.substr(line_start + skip, line_end - line_start - skip));
    line_start = line_end;
  }
  return out;
}

}  // namespace sluice::app
