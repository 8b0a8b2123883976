#pragma once
// A decision of a shard's input path, kept out of the ring code so it can be tested alone:
// whether a session may buffer more of a message body within the shard's body memory budget.
// (What to do when a recv ends, and parked input, are the stream's: engine/io/stream.h.)
// Nothing here does I/O or owns a socket.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/io/assert.h"

namespace sluice::app {

// The shard's budget of message body octets in memory: bodies sessions are receiving plus
// bodies handed to the spool and not yet committed. It must bound memory without deadlock: if
// every session held part of a body and the budget were full, none could finish. So the oldest
// body (the head) may use the whole budget, while the others together keep out of one whole
// message's room for it (message_octets_max): when the head finishes, its bytes go to the spool
// and are freed at the commit; then the next oldest finds the same room, and so on. A session
// that may not grow is paused (its recv cancelled) until the budget frees.
class BodyBudget {
 public:
  BodyBudget(uint64_t budget_octets, uint64_t message_octets_max)
      : _budget_octets(budget_octets), _head_room_octets(std::min(budget_octets, message_octets_max)) {}

  uint64_t budget_octets() const { return _budget_octets; }
  uint64_t used_octets() const { return _used_octets; }
  // Whether a session may take `more` octets. is_head: it holds the oldest body in memory (or
  // none is held); head_held: what the head holds now (buffer capacity, counted in used);
  // head_body: the octets of its body (the size the message has reached).
  bool may_grow(bool is_head, uint64_t head_held, uint64_t head_body, uint64_t more) const {
    if (is_head) {
      // With nothing committing (nothing will free by itself), the head is bound only by the
      // size of its own message: neither the others' overshoots (BDAT dot-stuffing) nor its
      // buffer's doubling can stall it.
      return _used_octets + more <= _budget_octets || (_spool_octets == 0 && head_body + more <= _budget_octets);
    }
    const uint64_t head_needs = _head_room_octets > head_held ? _head_room_octets - head_held : 0;
    return _used_octets + more + head_needs <= _budget_octets;
  }
  // A message that alone is larger than the whole budget can never be taken.
  bool can_ever_fit(uint64_t message_octets) const { return message_octets <= _budget_octets; }
  void add(uint64_t octets) { _used_octets += octets; }
  void remove(uint64_t octets) {
    SLUICE_ASSERT(octets <= _used_octets, "body budget released more than was taken");
    _used_octets -= octets;
  }
  // A finished body handed to the spool: still counted until its commit completes.
  void to_spool(uint64_t octets) {
    SLUICE_ASSERT(octets <= _used_octets - _spool_octets);
    _spool_octets += octets;
  }
  void spool_done(uint64_t octets) {
    SLUICE_ASSERT(octets <= _spool_octets, "body budget: more committed than was handed over");
    _spool_octets -= octets;
    remove(octets);
  }
  uint64_t spool_octets() const { return _spool_octets; }

 private:
  uint64_t _budget_octets;
  uint64_t _head_room_octets;
  uint64_t _used_octets = 0;   // sessions' bodies and bodies in the spool's hands
  uint64_t _spool_octets = 0;  // of which handed to the spool, not yet committed
};

}  // namespace sluice::app
