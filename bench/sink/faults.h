#pragma once
// The faults sluice-bench sink injects, from its options or a TOML file with the same keys
// (`rcpt-5xx = 0.1` or `rcpt_5xx = 0.1`, `no-pipelining = true`, ...).
//
// Fractions are deterministic, so that runs repeat: a recipient's fate is a hash of its address
// (the same address always gets the same answer); connections (greeting 421) and DATA phases
// (dropped mid-DATA) are counted, and exactly the fraction of them is hit, evenly spread
// (0.25: the 4th, 8th, ...).
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace sluice::bench {

struct Faults {
  double rcpt_4xx = 0;       // fraction of recipient addresses answered 451 4.3.0
  double rcpt_5xx = 0;       // fraction answered 550 5.1.1 (taken first: 4xx and 5xx never overlap)
  double greeting_421 = 0;   // fraction of connections greeted with 421 4.3.2 and closed
  double drop_mid_data = 0;  // fraction of DATA phases whose connection is dropped before the reply
  uint32_t delay_ms = 0;     // every reply (the greeting too) is sent this long after its command
  bool no_pipelining = false;
  bool no_8bitmime = false;
  bool no_size = false;
  bool no_chunking = false;
  uint32_t max_size = 0;  // octets: SIZE's limit, larger messages refused 552 (0: the server's default)
  bool helo_only = false;                   // EHLO gets 502: the client must fall back to HELO
  uint32_t defer_after_per_connection = 0;  // after N messages on a connection, MAIL gets 421; 0: never
  // After N messages in one wall-clock minute (all connections), MAIL gets 421 and the connection
  // closes until the next minute begins, like a mailbox provider's rate limit; 0: never.
  uint32_t defer_after_per_minute = 0;
  // Recipients whose address matches the glob (fnmatch: * ? [...], case-insensitive), e.g.
  // "*@full.example": 451 / 550 whatever the fractions say. Empty: none.
  std::string rcpt_4xx_pattern;
  std::string rcpt_5xx_pattern;
};

// What a recipient gets: a pattern first (5xx before 4xx), then the fractions by the address's
// place (address_fraction), so the same address always gets the same answer.
enum class RecipientFault : uint8_t { none, temporary, permanent };
RecipientFault recipient_fault(const Faults& faults, std::string_view address);

// The per-minute deferral: counts the messages of the current wall-clock minute.
class MinuteWindow {
 public:
  // True when this message is over the limit of its minute (it is not counted then).
  bool over(uint32_t limit, uint64_t wall_ms) {
    const uint64_t minute = wall_ms / 60'000;
    if (minute != _minute) {
      _minute = minute;
      _count = 0;
    }
    if (_count >= limit) {
      return true;
    }
    ++_count;
    return false;
  }

 private:
  uint64_t _minute = 0;
  uint32_t _count = 0;
};

// Sets one fault by its key (an option name without "--", '_' taken as '-'). A flag's value is
// "true" or "false"; `flag_without_value` tells that the option was given alone (--no-size).
absl::Status set_fault(Faults& faults, std::string_view key, std::string_view value);
bool is_fault_key(std::string_view key);
bool is_fault_flag(std::string_view key);
absl::Status load_faults_toml(Faults& faults, const char* path);

// The place of `address` in [0, 1): the same for the same address (case-insensitively).
double address_fraction(std::string_view address);

// Hits exactly `fraction` of the events it is asked about, evenly spread.
class FractionCounter {
 public:
  bool hit(double fraction) {
    if (fraction <= 0) {
      return false;
    }
    _credit += fraction;
    if (_credit >= 1.0 - 1e-9) {
      _credit -= 1.0;
      return true;
    }
    return false;
  }

 private:
  double _credit = 0;
};

}  // namespace sluice::bench
