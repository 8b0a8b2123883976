// The cross-shard mailbox: how one shard asks another to do something and gets the answer back,
// without locks and without a shard ever touching another shard's state (DESIGN.md section 5).
//
// Shape. For N shards there are N x N request rings and N x N reply rings, one of each per
// ordered (source, target) pair, each a bounded io::SpscRing of fixed-size, trivially copyable
// records: `Request` goes source -> target, `Reply` goes back target -> source. Shard `s` pushes
// onto its outgoing rings only from its own thread and drains its incoming rings only from its
// own thread, so every ring has exactly one producer thread and one consumer thread.
//
// Flow control: a reply ring can never be full. A source holds `capacity` credits toward each
// target; a request takes one, and it comes back only when the source has consumed the reply to
// that request. The target answers every request exactly once (now or later, from its own
// thread), so the records in the reply ring target -> source, plus the requests in flight in the
// other direction, never exceed the requests outstanding, which never exceed `capacity`: the reply
// push always has room (asserted), and so does the request push when a credit is available.
// try_request() on a source without credits returns false and the caller keeps the work for a
// later iteration; nothing here blocks, grows or allocates after construction.
//
// Doorbells. Pushes only mark their target; flush_doorbells(), once per loop iteration, sends at
// most one MSG_RING (io::prep_doorbell on the caller's own ring) to each marked target, and only
// to a target that may be asleep. A target announces sleep with prepare_to_sleep() just before
// its ring wait and clears it with woke() after. Both sides follow the store-buffer protocol
// explained at prepare_to_sleep(); either side missing its fence can lose a wake-up.
//
// Never: push from a thread other than the source's, drain from a thread other than the
// target's, or reply to a request that was not received (the credit count would lie).
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "engine/io/assert.h"
#include "engine/io/ring.h"
#include "engine/io/spsc_ring.h"

namespace sluice::io {

// A record fits in one cache line, so a push or a pop touches one slot line.
inline constexpr size_t kMailboxRecordBytesMax = 64;
// Shards the mailbox serves: the marks are kept in a fixed array (a shard per core; 2-core box).
inline constexpr uint32_t kMailboxShardsMax = 256;

template <typename Request, typename Reply>
class Mailbox {
 public:
  static_assert(std::is_trivially_copyable_v<Request> && std::is_trivially_copyable_v<Reply>,
                "records cross threads as plain bytes");
  static_assert(sizeof(Request) <= kMailboxRecordBytesMax && sizeof(Reply) <= kMailboxRecordBytesMax,
                "a record is at most one cache line");

  // `capacity`: records per ring, and credits per (source, target) pair; a power of two.
  // `doorbell_user_data`: the user_data of the doorbell CQE on a target's ring.
  Mailbox(uint32_t shards, size_t capacity, uint64_t doorbell_user_data)
      : _shards(shards), _capacity(capacity), _doorbell_user_data(doorbell_user_data), _endpoints(shards) {
    SLUICE_ASSERT(shards > 0 && shards <= kMailboxShardsMax);
    SLUICE_ASSERT(capacity > 0 && (capacity & (capacity - 1)) == 0, "capacity is a power of two");
    _requests.reserve(size_t{shards} * shards);
    _replies.reserve(size_t{shards} * shards);
    for (size_t i = 0; i < size_t{shards} * shards; ++i) {
      _requests.push_back(std::make_unique<SpscRing<Request>>(capacity));
      _replies.push_back(std::make_unique<SpscRing<Reply>>(capacity));
    }
    for (Endpoint& endpoint : _endpoints) {
      endpoint.outstanding.assign(shards, 0);
    }
  }
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  uint32_t shards() const { return _shards; }
  size_t capacity() const { return _capacity; }

  // On shard `self`'s thread, once its ring exists and before it first sleeps: where doorbells go.
  void attach(uint32_t self, int ring_fd) {
    SLUICE_ASSERT(self < _shards && ring_fd >= 0);
    _endpoints[self].ring_fd.store(ring_fd, std::memory_order_release);
  }

  // ---- source side (shard `self`'s thread) ---------------------------------------------------

  // Credits left toward `target`: requests `self` may still send before a reply comes back.
  size_t credits(uint32_t self, uint32_t target) const { return _capacity - _endpoints[self].outstanding[target]; }

  // Queues `request` for `target` and marks it for this iteration's doorbell. False, with nothing
  // queued, when no credit is left toward `target`.
  bool try_request(uint32_t self, uint32_t target, const Request& request) {
    SLUICE_ASSERT(self < _shards && target < _shards);
    Endpoint& me = _endpoints[self];
    if (me.outstanding[target] == _capacity) {
      return false;
    }
    // Requests queued <= outstanding < capacity: the ring has room.
    const bool pushed = request_ring(self, target).try_push(request);
    SLUICE_ASSERT(pushed, "a request ring is full although a credit was left");
    ++me.outstanding[target];
    mark(me, target);
    return true;
  }

  // The answer to a request `self` received from `source`. Always has room (see the top).
  void reply(uint32_t self, uint32_t source, const Reply& reply) {
    SLUICE_ASSERT(self < _shards && source < _shards);
    const bool pushed = reply_ring(self, source).try_push(reply);
    SLUICE_ASSERT(pushed, "a reply ring is full: a shard answered a request it never received");
    mark(_endpoints[self], source);
  }

  // Once per loop iteration, after this iteration's pushes and before the ring submit: one
  // doorbell per marked target that may be asleep. Returns how many were prepared.
  uint32_t flush_doorbells(uint32_t self, Ring& ring) {
    Endpoint& me = _endpoints[self];
    if (me.marked_count == 0) {
      return 0;
    }
    // Pairs with the fence in prepare_to_sleep(): orders the release stores of the tails pushed
    // this iteration before the loads of `sleeping` below (see there).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    uint32_t rung = 0;
    for (uint32_t i = 0; i < me.marked_count; ++i) {
      const uint32_t target = me.marked[i];
      me.is_marked[target] = false;
      Endpoint& other = _endpoints[target];
      // Acquire: a target seen asleep has attached, so its ring fd is visible.
      if (other.sleeping.load(std::memory_order_acquire)) {
        const int fd = other.ring_fd.load(std::memory_order_acquire);
        SLUICE_ASSERT(fd >= 0, "a shard slept before attaching its ring");
        prep_doorbell(ring.sqe(), fd, _doorbell_user_data);
        ++rung;
      }
    }
    me.marked_count = 0;
    return rung;
  }

  // ---- target side (shard `self`'s thread) ---------------------------------------------------

  // Every request waiting for `self`, oldest first per source: handle(source, request). The
  // handler (or later code on this thread) must reply() to each exactly once. Returns the count.
  template <typename Handler>
  size_t drain_requests(uint32_t self, Handler&& handle) {
    size_t count = 0;
    Request request;
    for (uint32_t source = 0; source < _shards; ++source) {
      // At most `capacity` per source per call: the source cannot refill faster than we answer.
      SpscRing<Request>& ring = request_ring(source, self);
      for (size_t taken = 0; taken < _capacity && ring.try_pop(request); ++taken) {
        handle(source, request);
        ++count;
      }
    }
    return count;
  }

  // Every reply waiting for `self`: handle(target, reply); each returns a credit toward `target`.
  template <typename Handler>
  size_t drain_replies(uint32_t self, Handler&& handle) {
    Endpoint& me = _endpoints[self];
    size_t count = 0;
    Reply reply;
    for (uint32_t target = 0; target < _shards; ++target) {
      SpscRing<Reply>& ring = reply_ring(target, self);
      while (ring.try_pop(reply)) {
        SLUICE_ASSERT(me.outstanding[target] > 0, "a reply to no outstanding request");
        --me.outstanding[target];
        handle(target, reply);
        ++count;
      }
    }
    return count;
  }

  // Just before the ring wait. Returns false (and stays awake) when something arrived meanwhile:
  // drain and loop again instead of sleeping. On true, wait, then call woke().
  //
  // Why the fences. The source does "store tail; load sleeping", the target "store sleeping; load
  // tail": the store-buffer pattern. Without a full fence between the store and the load on each
  // side, each store may still sit in its core's store buffer when the other core loads (x86
  // allows exactly this store->load reordering; release/acquire do not forbid it), so the source
  // sees "awake" and rings no doorbell while the target sees "empty" and sleeps: the wake-up is
  // lost. With a seq_cst fence on both sides the fences are totally ordered; whichever comes
  // second sees the other's store: the source sees `sleeping` (and rings), or the target sees the
  // record (and does not sleep), or both (a spare doorbell, harmless).
  bool prepare_to_sleep(uint32_t self) {
    Endpoint& me = _endpoints[self];
    me.sleeping.store(true, std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (has_incoming(self)) {
      me.sleeping.store(false, std::memory_order_relaxed);
      return false;
    }
    return true;
  }
  // After the ring wait: a doorbell pushed from now on would be a spare one.
  void woke(uint32_t self) { _endpoints[self].sleeping.store(false, std::memory_order_relaxed); }

  // Whether any incoming ring of `self` holds a record (exact for what was published before the
  // caller's last fence).
  bool has_incoming(uint32_t self) const {
    for (uint32_t other = 0; other < _shards; ++other) {
      if (!request_ring(other, self).empty() || !reply_ring(other, self).empty()) {
        return true;
      }
    }
    return false;
  }

 private:
  // What shard `i` owns in the mailbox; only `sleeping` and `ring_fd` are read by other threads.
  struct Endpoint {
    // Read by the other shards at every flush: on a line of their own, away from the marks the
    // owner writes at every push.
    alignas(kFalseSharingBytes) std::atomic<bool> sleeping{false};
    std::atomic<int> ring_fd{-1};
    // Owner thread only, below.
    alignas(
        kFalseSharingBytes) std::vector<size_t> outstanding;  // per target: requests sent whose reply was not consumed
    uint32_t marked[kMailboxShardsMax] = {};
    bool is_marked[kMailboxShardsMax] = {};
    uint32_t marked_count = 0;
  };

  void mark(Endpoint& me, uint32_t target) {
    if (!me.is_marked[target]) {
      me.is_marked[target] = true;
      me.marked[me.marked_count++] = target;
    }
  }

  SpscRing<Request>& request_ring(uint32_t source, uint32_t target) const {
    return *_requests[size_t{source} * _shards + target];
  }
  SpscRing<Reply>& reply_ring(uint32_t source, uint32_t target) const {
    return *_replies[size_t{source} * _shards + target];
  }

  const uint32_t _shards;
  const size_t _capacity;
  const uint64_t _doorbell_user_data;
  std::vector<Endpoint> _endpoints;
  // [source * shards + target]; each ring on its own allocation, its indices on their own lines.
  std::vector<std::unique_ptr<SpscRing<Request>>> _requests;
  std::vector<std::unique_ptr<SpscRing<Reply>>> _replies;
};

}  // namespace sluice::io
