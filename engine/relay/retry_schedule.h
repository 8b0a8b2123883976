#pragma once
// When to try a deferred recipient again, and when to give up (DESIGN.md section 2, "Delivery";
// `[delivery] retry_initial`, `retry_max`, `lifetime`). Pure arithmetic on times the caller
// passes: no clock, no randomness of its own (the caller passes a random word), so the schedule
// is deterministic in tests and survives restarts (only arrival time and attempt count are kept).
//
// After the n-th failed attempt the next one is retry_initial x 2^(n-1), capped at retry_max,
// spread by +-jitter_percent so that messages deferred together do not come back together. A
// message is never kept past its lifetime: the last attempt is scheduled at arrival + lifetime at
// the latest, and a failure at or after that point is final (bounce), like Postfix's
// maximal_queue_lifetime. A deferred recipient therefore always has a definite next time.
#include <algorithm>
#include <cstdint>

#include "engine/io/assert.h"

namespace sluice::relay {

struct RetryPolicy {
  uint64_t initial_ms = 5 * 60 * 1000;
  uint64_t max_ms = 60 * 60 * 1000;
  uint64_t lifetime_ms = 5ull * 24 * 60 * 60 * 1000;
  uint32_t jitter_percent = 10;  // 0..50
};

// The pause after `attempts` failed attempts (attempts >= 1), before jitter.
inline uint64_t retry_backoff_ms(const RetryPolicy& policy, uint32_t attempts) {
  SLUICE_ASSERT(attempts >= 1 && policy.initial_ms > 0 && policy.max_ms >= policy.initial_ms);
  uint64_t delay = policy.initial_ms;
  for (uint32_t i = 1; i < attempts && delay < policy.max_ms; ++i) {
    delay *= 2;
  }
  return std::min(delay, policy.max_ms);
}

// The same, spread by +-jitter_percent using `random` (any 64-bit value, e.g. from a per-shard
// generator): uniform over [delay x (1 - j), delay x (1 + j)].
inline uint64_t retry_delay_ms(const RetryPolicy& policy, uint32_t attempts, uint64_t random) {
  SLUICE_ASSERT(policy.jitter_percent <= 50);
  const uint64_t delay = retry_backoff_ms(policy, attempts);
  const uint64_t spread = delay * policy.jitter_percent / 100;
  if (spread == 0) {
    return delay;
  }
  return delay - spread + random % (2 * spread + 1);
}

struct RetryDecision {
  bool expired = false;          // the lifetime is over: the failure is final (bounce)
  uint64_t next_attempt_ms = 0;  // when not expired: the next attempt, within the lifetime
};

// After a failed (temporary) attempt at now_ms, the attempts-th one for this recipient.
inline RetryDecision after_temporary_failure(const RetryPolicy& policy, uint64_t arrival_ms, uint64_t now_ms,
                                             uint32_t attempts, uint64_t random) {
  const uint64_t give_up_ms = arrival_ms + policy.lifetime_ms;
  if (now_ms >= give_up_ms) {
    return RetryDecision{true, 0};
  }
  const uint64_t next = now_ms + retry_delay_ms(policy, attempts, random);
  return RetryDecision{false, std::min(next, give_up_ms)};
}

}  // namespace sluice::relay
