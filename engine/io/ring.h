#pragma once
// One io_uring per shard thread. Created inside the thread that uses it (SINGLE_ISSUER binds the
// ring to its creator); falls back to COOP_TASKRUN where DEFER_TASKRUN is missing. Completions
// are reaped only through submit_and_wait (with DEFER_TASKRUN they appear only when the owning
// thread enters the kernel). Never shared between threads, except the ring fd as a MSG_RING target.
#include <liburing.h>

#include <cstdint>
#include <string>

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
};

class Ring {
 public:
  static absl::StatusOr<Ring*> create_for_this_thread(const RingOptions& options);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Never returns null: when the SQ is full it submits what is queued and takes a fresh entry.
  io_uring_sqe* sqe();
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

  io_uring* raw() { return &_ring; }
  int fd() const { return _ring.ring_fd; }
  const std::string& description() const { return _description; }

 private:
  Ring() = default;
  void submit_and_wait(uint64_t timeout_us);

  io_uring _ring{};
  std::string _description;
};

// Posts a CQE with `user_data` on `target_ring_fd`, waking its owner if it waits (MSG_RING).
void prep_doorbell(io_uring_sqe* sqe, int target_ring_fd, uint64_t user_data);

}  // namespace sluice::io
