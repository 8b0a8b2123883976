#pragma once
// One io_uring per shard thread. Created inside the thread that uses it (SINGLE_ISSUER binds the
// ring to its creator); falls back to COOP_TASKRUN where DEFER_TASKRUN is missing. Completions
// are reaped only through submit_and_wait (with DEFER_TASKRUN they appear only when the owning
// thread enters the kernel). Never shared between threads, except the ring fd as a MSG_RING target.
#include <liburing.h>

#include <cstdint>
#include <deque>
#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace sluice::io {

// user_data layout: | tag:8 | index:24 | generation:32 |. The generation makes a late CQE for a
// reused slot recognisable (DESIGN.md section 5).
struct UserData {
  uint8_t tag = 0;
  uint32_t index = 0;
  uint32_t generation = 0;

  static constexpr uint32_t kIndexMax = (1u << 24) - 1;
  uint64_t encode() const { return (uint64_t{tag} << 56) | (uint64_t{index & kIndexMax} << 32) | generation; }
  static UserData decode(uint64_t value) {
    return UserData{static_cast<uint8_t>(value >> 56), static_cast<uint32_t>(value >> 32) & kIndexMax,
                    static_cast<uint32_t>(value)};
  }
};

struct RingOptions {
  uint32_t sq_entries = 4096;
  uint32_t cq_entries = 16384;  // >= 4x SQ: multishot ops post many CQEs per SQE
  bool start_disabled = false;  // tests: IORING_SETUP_R_DISABLED, so that submit fails until enabled
};

// Entries prepared while the SQ was full and the kernel took nothing: beyond this the ring is
// broken (every submit failing), which is fatal rather than an unbounded queue.
inline constexpr size_t kSqBacklogMax = 1 << 16;

class Ring {
 public:
  static absl::StatusOr<Ring*> create_for_this_thread(const RingOptions& options);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Never returns null and never spins: when the SQ is full it submits what is queued and takes a
  // fresh entry; if the kernel takes nothing (the submit failed, e.g. -EBUSY while completions
  // back up), the entry is kept in a backlog, in order, and goes to the kernel at the next submit.
  io_uring_sqe* sqe();
  // Two entries for a linked pair (IOSQE_IO_LINK / HARDLINK on the first): both in the SQ, or
  // both in the backlog, so that no submit can split them.
  std::pair<io_uring_sqe*, io_uring_sqe*> linked_pair();
  // Submits queued SQEs and waits up to timeout_us for at least one CQE; then `handle` is called
  // for every CQE available. Returns the number handled.
  template <typename Handler>
  unsigned submit_wait_and_reap(uint64_t timeout_us, Handler&& handle) {
    submit_and_wait(timeout_us);
    unsigned head;
    unsigned count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&_ring, head, cqe) {
      handle(*cqe);
      ++count;
    }
    io_uring_cq_advance(&_ring, count);
    return count;
  }
  void submit();
  // Failed submits (other than a timeout or a signal), and the last one's errno: the shard logs them.
  uint64_t submit_errors() const { return _submit_errors; }
  int last_submit_error() const { return _last_submit_error; }
  size_t backlog() const { return _backlog.size(); }

  io_uring* raw() { return &_ring; }
  int fd() const { return _ring.ring_fd; }
  const std::string& description() const { return _description; }

 private:
  Ring() = default;
  void submit_and_wait(uint64_t timeout_us);
  void move_backlog_to_ring();
  void note_submit_result(int result);

  io_uring _ring{};
  std::deque<io_uring_sqe> _backlog;  // deque: references to entries stay valid as it grows
  uint64_t _submit_errors = 0;
  int _last_submit_error = 0;
  std::string _description;
};

// Posts a CQE with `user_data` on `target_ring_fd`, waking its owner if it waits (MSG_RING).
void prep_doorbell(io_uring_sqe* sqe, int target_ring_fd, uint64_t user_data);

}  // namespace sluice::io
