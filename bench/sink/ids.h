#pragma once
// What sluice-bench sink knows of the messages it receives: the id and checksum headers that
// sluice-bench send puts in every message, and the set of ids seen, kept compactly.
//
// The header convention (bench/send.cc writes it): X-Sluice-Bench-Id: <run>-<n> and
// X-Sluice-Bench-Sum: crc32c:<8 hex digits>, the CRC32C (spool/crc32c.h) of the body, that is the
// octets after the empty line ending the header, up to and including the CRLF before the final
// dot, without dot-stuffing. The sum is accepted without its "crc32c:" prefix too.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"

namespace sluice::bench {

inline constexpr std::string_view kIdHeader = "X-Sluice-Bench-Id";
inline constexpr std::string_view kSumHeader = "X-Sluice-Bench-Sum";
// The wall-clock time (µs since the Unix epoch) the sender started the transaction.
inline constexpr std::string_view kSentHeader = "X-Sluice-Bench-Sent";

enum class BodyCheck : uint8_t {
  no_id,    // no X-Sluice-Bench-Id header: not a message of sluice-bench send
  intact,   // the sum matches the body
  corrupt,  // the sum is missing, malformed, or does not match the body
};

struct MessageCheck {
  BodyCheck result = BodyCheck::no_id;
  std::string_view id;  // a view into the checked message
  uint64_t sent_us = 0;  // X-Sluice-Bench-Sent; 0 when absent or malformed
};

// `message` as the SMTP server session holds it: wire form, dot-stuffed, without the final dot.
MessageCheck check_message(std::string_view message);

// The CRC32C of the dot-stuffed `wire` octets with the stuffing removed (RFC 5321 4.5.2),
// `wire` starting at the beginning of a line.
uint32_t unstuffed_crc32c(std::string_view wire);

// A set of ids. "<run>-<n>" with n decimal and below kNumberMax is a bit in the run's bitmap
// (a run of a million messages is 125 KiB); any other id is kept as a string.
class IdSet {
 public:
  static constexpr uint64_t kNumberMax = uint64_t{1} << 28;

  // Adds the id; false when it was there already.
  bool insert(std::string_view id);
  bool contains(std::string_view id) const;
  bool contains(std::string_view run, uint64_t n) const;
  // Adds lo..hi (inclusive) of `run`; false when the range is out of bounds.
  bool insert_range(std::string_view run, uint64_t lo, uint64_t hi);
  uint64_t size() const { return _size; }

  // {"RUN":[[lo,hi],...],...}: the numbered ids as ranges of consecutive numbers.
  void append_ranges_json(std::string& out) const;
  // ["id",...]: the others.
  void append_others_json(std::string& out) const;

  template <typename OnNumbered, typename OnOther>
  void for_each(OnNumbered&& numbered, OnOther&& other) const {
    for (const auto& [run, bits] : _runs) {
      for (size_t word = 0; word < bits.size(); ++word) {
        for (uint64_t w = bits[word]; w != 0; w &= w - 1) {
          numbered(std::string_view(run), word * 64 + static_cast<uint64_t>(__builtin_ctzll(w)));
        }
      }
    }
    for (const std::string& id : _others) {
      other(std::string_view(id));
    }
  }

 private:
  std::vector<uint64_t>* bits_of(std::string_view run);
  const std::vector<uint64_t>* find_bits(std::string_view run) const;

  absl::flat_hash_map<std::string, std::vector<uint64_t>> _runs;
  absl::flat_hash_set<std::string> _others;
  // The run of the last insert: a run's ids come one after another, so most lookups stop here.
  std::string _last_run;
  std::vector<uint64_t>* _last_bits = nullptr;
  uint64_t _size = 0;
};

// "<run>-<n>" split at the last '-'; false when it is not of that form (n decimal, < kNumberMax).
bool split_numbered_id(std::string_view id, std::string_view& run, uint64_t& n);

}  // namespace sluice::bench
