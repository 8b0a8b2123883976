// The shard's io_uring: set-up with the best flags this kernel takes, a probe of what it
// supports (logged once), and the submit/reap primitive every shard loop iteration uses.
#include "engine/io/ring.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io/assert.h"
#include "engine/io/strings.h"

namespace sluice::io {
namespace {

std::string probe_description(io_uring* ring, unsigned flags) {
  std::string text = (flags & IORING_SETUP_DEFER_TASKRUN) ? "DEFER_TASKRUN" : "COOP_TASKRUN";
  io_uring_probe* probe = io_uring_get_probe_ring(ring);
  if (probe == nullptr) {
    return text;
  }
  struct Named {
    int op;
    const char* name;
  };
  static constexpr Named kOps[] = {{IORING_OP_ACCEPT, "accept"},     {IORING_OP_RECV, "recv"},
                                   {IORING_OP_SEND, "send"},         {IORING_OP_MSG_RING, "msg_ring"},
                                   {IORING_OP_SEND_ZC, "send_zc"},   {IORING_OP_SHUTDOWN, "shutdown"},
                                   {IORING_OP_WRITEV, "writev"},     {IORING_OP_FSYNC, "fsync"},
                                   {IORING_OP_UNLINKAT, "unlinkat"}, {IORING_OP_SPLICE, "splice"}};
  for (const auto& op : kOps) {
    str_append(&text, " ", op.name, io_uring_opcode_supported(probe, op.op) ? "+" : "-");
  }
  io_uring_free_probe(probe);
  return text;
}

}  // namespace

absl::StatusOr<Ring*> Ring::create_for_this_thread(const RingOptions& options) {
  auto* ring = new Ring();
  io_uring_params params{};
  const unsigned disabled = options.start_disabled ? IORING_SETUP_R_DISABLED : 0;
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | disabled;
  params.cq_entries = options.cq_entries;
  int rc = io_uring_queue_init_params(options.sq_entries, &ring->_ring, &params);
  if (rc == -EINVAL) {
    params = io_uring_params{};
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | disabled;
    params.cq_entries = options.cq_entries;
    rc = io_uring_queue_init_params(options.sq_entries, &ring->_ring, &params);
  }
  if (rc < 0) {
    delete ring;
    return absl::InternalError(str_cat("io_uring_queue_init: ", std::strerror(-rc)));
  }
  ring->_description = absl::StrFormat("sq=%u cq=%u %s", params.sq_entries, params.cq_entries,
                                       probe_description(&ring->_ring, params.flags));
  return ring;
}

Ring::~Ring() {
  io_uring_queue_exit(&_ring);
}

io_uring_sqe* Ring::sqe() {
  if (_backlog.empty()) {
    if (io_uring_sqe* entry = io_uring_get_sqe(&_ring)) {
      return entry;
    }
    note_submit_result(io_uring_submit(&_ring));
    if (io_uring_sqe* entry = io_uring_get_sqe(&_ring)) {
      return entry;
    }
  }
  SLUICE_ASSERT(_backlog.size() < kSqBacklogMax, "the kernel has taken no submission for a long time");
  io_uring_sqe& entry = _backlog.emplace_back();
  std::memset(&entry, 0, sizeof(entry));
  return &entry;
}

std::pair<io_uring_sqe*, io_uring_sqe*> Ring::linked_pair() {
  if (_backlog.empty() && io_uring_sq_space_left(&_ring) < 2) {
    note_submit_result(io_uring_submit(&_ring));  // nothing of ours is half a chain here yet
  }
  if (_backlog.empty() && io_uring_sq_space_left(&_ring) >= 2) {
    io_uring_sqe* first = io_uring_get_sqe(&_ring);
    return {first, io_uring_get_sqe(&_ring)};
  }
  SLUICE_ASSERT(_backlog.size() + 2 <= kSqBacklogMax, "the kernel has taken no submission for a long time");
  io_uring_sqe& first = _backlog.emplace_back();
  io_uring_sqe& second = _backlog.emplace_back();
  std::memset(&first, 0, sizeof(first));
  std::memset(&second, 0, sizeof(second));
  return {&first, &second};
}

// Oldest first, and a linked chain only whole: a chain split across two submits would lose its
// ordering guarantee.
void Ring::move_backlog_to_ring() {
  while (!_backlog.empty()) {
    size_t chain = 1;
    while (chain <= _backlog.size() && (_backlog[chain - 1].flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)) != 0) {
      ++chain;
    }
    chain = std::min(chain, _backlog.size());
    if (io_uring_sq_space_left(&_ring) < chain) {
      return;
    }
    for (size_t i = 0; i < chain; ++i) {
      io_uring_sqe* entry = io_uring_get_sqe(&_ring);
      SLUICE_ASSERT(entry != nullptr);
      *entry = _backlog.front();
      _backlog.pop_front();
    }
  }
}

void Ring::note_submit_result(int result) {
  // -ETIME (timeout) and -EINTR are ordinary: the caller reaps whatever is there.
  if (result < 0 && result != -ETIME && result != -EINTR) {
    ++_submit_errors;
    _last_submit_error = -result;
  }
}

void Ring::submit() {
  move_backlog_to_ring();
  note_submit_result(io_uring_submit(&_ring));
  move_backlog_to_ring();
}

void Ring::submit_and_wait(uint64_t timeout_us) {
  move_backlog_to_ring();
  if (!_backlog.empty()) {
    timeout_us = 0;  // entries wait for room: come back at once rather than sleep on them
  }
  __kernel_timespec timeout{};
  timeout.tv_sec = static_cast<int64_t>(timeout_us / 1'000'000);
  timeout.tv_nsec = static_cast<int64_t>((timeout_us % 1'000'000) * 1000);
  io_uring_cqe* cqe = nullptr;
  note_submit_result(io_uring_submit_and_wait_timeout(&_ring, &cqe, 1, &timeout, nullptr));
}

void prep_doorbell(io_uring_sqe* sqe, int target_ring_fd, uint64_t user_data) {
  io_uring_prep_msg_ring(sqe, target_ring_fd, 0, user_data, 0);
  // The doorbell's own completion on the sender's ring carries nothing worth handling.
  io_uring_sqe_set_data64(sqe, 0);
}

}  // namespace sluice::io
