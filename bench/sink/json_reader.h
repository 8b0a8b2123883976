#pragma once
// A small JSON reader for sluice-bench's own result files (sink --verify reads the sink's and the
// sender's). The whole document becomes a tree; numbers keep their text, so that 64-bit counts
// are read exactly.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sluice::bench {

struct JsonValue {
  enum class Type : uint8_t { null, boolean, number, string, array, object };
  Type type = Type::null;
  bool boolean = false;
  std::string text;  // a string's value, or a number as written
  std::vector<JsonValue> items;
  std::vector<std::pair<std::string, JsonValue>> members;

  const JsonValue* get(std::string_view key) const;  // an object's member, or null
  bool is(Type t) const { return type == t; }
  // A number that is a non-negative integer (false otherwise).
  bool as_uint(uint64_t& value) const;
};

absl::StatusOr<JsonValue> parse_json(std::string_view text);

}  // namespace sluice::bench
