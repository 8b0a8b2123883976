#pragma once
// Human-readable queue reports for `sluice queue list` (like `postqueue -p`, one message per
// line) and `sluice queue summary` (like Postfix's qshape: recipient domains by message age).
#include <cstdint>
#include <string>
#include <vector>

#include "spool/spool.h"

namespace sluice::app {

// Age buckets of the summary, in minutes (qshape's defaults); the last column is "older".
inline constexpr uint64_t kSummaryBucketsMinutes[] = {5, 10, 20, 40, 80, 160, 320, 640, 1280};

std::string format_queue_list(const std::vector<spool::MessageInfo>& messages);
std::string format_queue_summary(const std::vector<spool::MessageInfo>& messages, uint64_t now_ms);

}  // namespace sluice::app
