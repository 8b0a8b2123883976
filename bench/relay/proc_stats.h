#pragma once
// /proc readers for `sluice-bench relay`: the CPU, memory and process tree of what it started,
// and the whole box's CPU, so that a relay's cost per message is measured by the kernel's own
// accounting (every thread of a process, io_uring's iou-wrk workers included: they are threads
// of the process that owns the ring).
#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace sluice::bench {

// Clock ticks (sysconf(_SC_CLK_TCK)) of user and system time.
struct CpuTicks {
  uint64_t user = 0;
  uint64_t system = 0;
  uint64_t total() const { return user + system; }
  CpuTicks& operator+=(const CpuTicks& other);
};
CpuTicks operator-(const CpuTicks& after, const CpuTicks& before);  // per field, floored at 0
double ticks_to_seconds(uint64_t ticks);

// One process, all of its threads; with include_reaped_children, the CPU of its children that
// exited and were waited for (cutime, cstime): Postfix's master reaps smtpd and cleanup
// processes that exit, so their CPU lands there.
absl::StatusOr<CpuTicks> process_cpu(pid_t pid, bool include_reaped_children);

// `root` and every process descended from it (a walk of /proc), root first.
std::vector<pid_t> process_tree(pid_t root);

// The CPU of `root`'s whole tree: every live process of it, plus the reaped children of each.
// Processes that vanish during the walk are skipped.
CpuTicks tree_cpu(pid_t root);

// Resident set size of one process, and its peak (VmRSS, VmHWM in /proc/PID/status), in octets.
struct Memory {
  uint64_t rss_octets = 0;
  uint64_t peak_rss_octets = 0;
};
absl::StatusOr<Memory> process_memory(pid_t pid);
// The sum over a tree (peak: the sum of each process's peak, an upper bound).
Memory tree_memory(pid_t root);

// The box: busy (not idle, not iowait) and total ticks over all CPUs, from /proc/stat.
struct BoxCpu {
  uint64_t busy = 0;
  uint64_t total = 0;
};
absl::StatusOr<BoxCpu> box_cpu();

}  // namespace sluice::bench
