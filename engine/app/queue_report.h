#pragma once
// Human-readable queue reports for `sluice queue list` (like `postqueue -p`, one message per
// line) and `sluice queue summary` (like Postfix's qshape: recipient domains by message age),
// and the message as an operator sees it (the stored wire form without its dot-stuffing).
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spool/spool.h"

namespace sluice::app {

// Age buckets of the summary, in minutes (qshape's defaults); the last column is "older".
inline constexpr uint64_t kSummaryBucketsMinutes[] = {5, 10, 20, 40, 80, 160, 320, 640, 1280};
inline constexpr size_t kSummaryColumns = std::size(kSummaryBucketsMinutes) + 1;

// Which recipients a summary counts (qshape's queues): every one not yet final, or only those
// not tried yet or being tried (active), or only those waiting for a retry (deferred).
enum class SummaryQueue : uint8_t { all, active, deferred };
// "all", "active", "deferred"; nullopt for anything else.
std::optional<SummaryQueue> parse_summary_queue(std::string_view name);

// Recipients per domain and age bucket. Built on each shard (so the index is never copied),
// merged on the admin thread. Delivered and bounced recipients are not counted: they are no
// longer queued, even while the rest of their message is.
struct QueueSummary {
  SummaryQueue queue = SummaryQueue::all;
  using Row = std::array<uint64_t, kSummaryColumns + 1>;  // [0] = total, then the buckets
  std::map<std::string, Row> domains;
  Row totals{};

  void add(const spool::MessageInfo& message, uint64_t now_ms);
  void merge(const QueueSummary& other);
};

// The whole table for these messages: column header, one line each, total.
std::string format_queue_list(const std::vector<spool::MessageInfo>& messages);
// One page of a longer table: the header only on the first page, the total (of the whole
// queue, not of the page) only on the last, so that the pages printed one after the other are
// the whole table.
struct QueueListPage {
  bool first = true;
  bool last = true;
  uint64_t total_messages = 0;
  uint64_t total_bytes = 0;
};
std::string format_queue_list(const std::vector<spool::MessageInfo>& messages, const QueueListPage& page);
std::string format_queue_summary(const QueueSummary& summary);
std::string format_queue_summary(const std::vector<spool::MessageInfo>& messages, uint64_t now_ms);
// {"buckets_minutes": [...], "total": {"total": N, "counts": [...]},
//  "domains": [{"domain": "x", "total": N, "counts": [...]}, ...]}
std::string queue_summary_json(const QueueSummary& summary);

// Where delivery stands for each recipient of the message, for the admin JSON (beside the
// message-level "attempts", "next_attempt" and "last_reply", which it does not replace):
// [{"address", "state" (pending, delivered, deferred, bounced), "attempts", "next_attempt_ms"
// (0 unless deferred), "last_reply", "remote_mta" (the host that answered the last attempt, or
// ""), "relayed" (owed a "relayed" DSN)}], parallel to the message's "recipients".
std::string recipient_states_json(const spool::MessageInfo& message);

// The stored wire form (CRLF lines, dot-stuffed, without the final ".\r\n") as the message is:
// one leading "." removed from every line that starts with one.
std::string remove_dot_stuffing(std::string_view wire);

}  // namespace sluice::app
