#include "bench/relay/proc_stats.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "engine/io/strings.h"
#include "absl/strings/str_split.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

absl::StatusOr<std::string> read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(str_cat(path, ": cannot be read"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The fields of /proc/PID/stat after the command name, which may hold spaces and parentheses
// (so the split starts after the last ')'): index 0 is field 3 (state).
absl::StatusOr<std::vector<std::string>> stat_fields(pid_t pid) {
  absl::StatusOr<std::string> text = read_text(str_cat("/proc/", pid, "/stat"));
  if (!text.ok()) {
    return text.status();
  }
  const size_t close = text->rfind(')');
  if (close == std::string::npos || close + 2 > text->size()) {
    return absl::DataLossError(str_cat("/proc/", pid, "/stat: no command name"));
  }
  return std::vector<std::string>(absl::StrSplit(text->substr(close + 2), ' ', absl::SkipEmpty()));
}

uint64_t field_or_zero(const std::vector<std::string>& fields, size_t index) {
  uint64_t value = 0;
  if (index < fields.size() && parse_decimal(fields[index], value)) {
    return value;
  }
  return 0;
}

// Field 4 of /proc/PID/stat, or -1 when the process is gone.
pid_t parent_of(pid_t pid) {
  absl::StatusOr<std::vector<std::string>> fields = stat_fields(pid);
  if (!fields.ok()) {
    return -1;
  }
  return static_cast<pid_t>(field_or_zero(*fields, 1));
}

std::vector<pid_t> all_pids() {
  std::vector<pid_t> pids;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) {
    return pids;
  }
  while (const dirent* entry = readdir(dir)) {
    uint32_t pid = 0;
    if (parse_decimal(std::string_view(entry->d_name), pid) && pid > 0) {
      pids.push_back(static_cast<pid_t>(pid));
    }
  }
  closedir(dir);
  return pids;
}

// "VmRSS:   1234 kB" -> 1234 * 1024.
uint64_t status_kib(const std::string& status, std::string_view key) {
  for (absl::string_view piece : absl::StrSplit(status, '\n')) {
    const std::string_view line = to_std(piece);
    if (line.substr(0, key.size()) == key && line.size() > key.size() && line[key.size()] == ':') {
      // "VmRSS:\t    1234 kB": a tab, then spaces.
      std::vector<std::string> parts =
          absl::StrSplit(to_absl(line.substr(key.size() + 1)), absl::ByAnyChar(" \t"), absl::SkipEmpty());
      uint64_t kib = 0;
      if (!parts.empty() && parse_decimal(parts[0], kib)) {
        return kib * 1024;
      }
    }
  }
  return 0;
}

}  // namespace

CpuTicks& CpuTicks::operator+=(const CpuTicks& other) {
  user += other.user;
  system += other.system;
  return *this;
}

CpuTicks operator-(const CpuTicks& after, const CpuTicks& before) {
  return CpuTicks{after.user > before.user ? after.user - before.user : 0,
                  after.system > before.system ? after.system - before.system : 0};
}

double ticks_to_seconds(uint64_t ticks) {
  static const long kTicksPerSecond = sysconf(_SC_CLK_TCK);
  return static_cast<double>(ticks) / static_cast<double>(kTicksPerSecond > 0 ? kTicksPerSecond : 100);
}

absl::StatusOr<CpuTicks> process_cpu(pid_t pid, bool include_reaped_children) {
  absl::StatusOr<std::vector<std::string>> fields = stat_fields(pid);
  if (!fields.ok()) {
    return fields.status();
  }
  // Fields 14-17 (utime, stime, cutime, cstime) are indexes 11-14 here.
  CpuTicks ticks{field_or_zero(*fields, 11), field_or_zero(*fields, 12)};
  if (include_reaped_children) {
    ticks += CpuTicks{field_or_zero(*fields, 13), field_or_zero(*fields, 14)};
  }
  return ticks;
}

std::vector<pid_t> process_tree(pid_t root) {
  std::multimap<pid_t, pid_t> children;
  for (pid_t pid : all_pids()) {
    const pid_t parent = parent_of(pid);
    if (parent > 0) {
      children.emplace(parent, pid);
    }
  }
  std::vector<pid_t> tree;
  if (parent_of(root) < 0) {
    return tree;  // gone
  }
  tree.push_back(root);
  for (size_t next = 0; next < tree.size(); ++next) {
    auto [first, last] = children.equal_range(tree[next]);
    for (auto it = first; it != last; ++it) {
      tree.push_back(it->second);
    }
  }
  return tree;
}

CpuTicks tree_cpu(pid_t root) {
  CpuTicks total;
  for (pid_t pid : process_tree(root)) {
    if (absl::StatusOr<CpuTicks> ticks = process_cpu(pid, true); ticks.ok()) {
      total += *ticks;
    }
  }
  return total;
}

absl::StatusOr<Memory> process_memory(pid_t pid) {
  absl::StatusOr<std::string> status = read_text(str_cat("/proc/", pid, "/status"));
  if (!status.ok()) {
    return status.status();
  }
  return Memory{status_kib(*status, "VmRSS"), status_kib(*status, "VmHWM")};
}

Memory tree_memory(pid_t root) {
  Memory total;
  for (pid_t pid : process_tree(root)) {
    if (absl::StatusOr<Memory> memory = process_memory(pid); memory.ok()) {
      total.rss_octets += memory->rss_octets;
      total.peak_rss_octets += memory->peak_rss_octets;
    }
  }
  return total;
}

absl::StatusOr<BoxCpu> box_cpu() {
  absl::StatusOr<std::string> stat = read_text("/proc/stat");
  if (!stat.ok()) {
    return stat.status();
  }
  const std::string first_line = stat->substr(0, stat->find('\n'));
  std::vector<std::string> fields = absl::StrSplit(first_line, ' ', absl::SkipEmpty());
  if (fields.size() < 9 || fields[0] != "cpu") {
    return absl::DataLossError("/proc/stat: no cpu line");
  }
  // user nice system idle iowait irq softirq steal
  BoxCpu box;
  for (size_t i = 1; i <= 8; ++i) {
    const uint64_t value = field_or_zero(fields, i);
    box.total += value;
    if (i != 4 && i != 5) {
      box.busy += value;
    }
  }
  return box;
}

}  // namespace sluice::bench
