#include "bench/common/options.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/io/strings.h"

namespace sluice::bench {

bool parse_count(std::string_view text, uint64_t& out) {
  return absl::SimpleAtoi(to_absl(text), &out);
}

std::string parse_count_option(std::string_view flag, std::string_view value, uint64_t min, uint64_t max,
                               uint64_t& out) {
  if (!parse_count(value, out) || out < min || out > max) {
    return str_cat(flag, ": '", value, "' is not a number from ", min, " to ", max);
  }
  return "";
}

std::string take_option_value(std::string& flag, int argc, char** argv, int& i, std::string& value) {
  if (const size_t equals = flag.find('='); equals != std::string::npos) {
    value = flag.substr(equals + 1);
    flag.resize(equals);
  } else if (i + 1 < argc) {
    value = argv[++i];
  } else {
    return str_cat(flag, " needs a value");
  }
  return "";
}

bool parse_octets(std::string_view text, uint64_t& out) {
  uint64_t scale = 1;
  if (!text.empty() && (text.back() == 'k' || text.back() == 'K')) {
    scale = 1024;
    text.remove_suffix(1);
  } else if (!text.empty() && (text.back() == 'm' || text.back() == 'M')) {
    scale = 1024 * 1024;
    text.remove_suffix(1);
  }
  uint64_t value = 0;
  if (!parse_count(text, value) || value > (uint64_t{1} << 40)) {
    return false;
  }
  out = value * scale;
  return true;
}

bool parse_duration_ms(std::string_view text, uint64_t& out) {
  uint64_t scale = 1000;
  if (text.ends_with("ms")) {
    scale = 1;
    text.remove_suffix(2);
  } else if (text.ends_with("s")) {
    text.remove_suffix(1);
  } else if (text.ends_with("m")) {
    scale = 60'000;
    text.remove_suffix(1);
  }
  uint64_t value = 0;
  if (!parse_count(text, value)) {
    return false;
  }
  out = value * scale;
  return true;
}

std::string parse_sizes(std::string_view text, std::vector<SizeChoice>& sizes) {
  sizes.clear();
  for (const absl::string_view part : absl::StrSplit(to_absl(text), ',')) {
    SizeChoice choice;
    const std::vector<absl::string_view> fields = absl::StrSplit(part, absl::MaxSplits(':', 1));
    if (!parse_octets(to_std(fields[0]), choice.octets) || choice.octets < 2) {
      return str_cat("--size: '", to_std(fields[0]), "' is not a size of at least 2 octets");
    }
    uint64_t weight = 1;
    if (fields.size() == 2 && (!parse_count(to_std(fields[1]), weight) || weight == 0 || weight > 1'000'000)) {
      return str_cat("--size: '", to_std(fields[1]), "' is not a weight from 1 to 1000000");
    }
    choice.weight = static_cast<uint32_t>(weight);
    sizes.push_back(choice);
  }
  return "";
}

}  // namespace sluice::bench
