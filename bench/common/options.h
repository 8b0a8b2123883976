#pragma once
// Option values shared by the sluice-bench commands (send, relay, compare).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bench/send.h"

namespace sluice::bench {

bool parse_count(std::string_view text, uint64_t& out);
// `value` of option `flag` as a number from min to max into `out`; the error text, or empty.
std::string parse_count_option(std::string_view flag, std::string_view value, uint64_t min, uint64_t max,
                               uint64_t& out);
// The value of option argv[i] (`flag`, "--name" or "--name=value"): `flag` loses any "=value",
// and i moves past a value taken from the next argument. The error text, or empty.
std::string take_option_value(std::string& flag, int argc, char** argv, int& i, std::string& value);
// "1024", "10k", "2m" (k = 1024).
bool parse_octets(std::string_view text, uint64_t& out);
// "500ms", "30s", "2m", or a bare number of seconds.
bool parse_duration_ms(std::string_view text, uint64_t& out);
// "1k:70,10k:25,100k:5" (weights optional); the error text, or empty.
std::string parse_sizes(std::string_view text, std::vector<SizeChoice>& sizes);

}  // namespace sluice::bench
