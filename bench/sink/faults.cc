// Fault options of sluice-bench sink: parsing (options and TOML), and the deterministic choices.
#include "bench/sink/faults.h"

#include <fnmatch.h>
#include <toml++/toml.h>

#include <charconv>
#include <string>

#include "engine/io/strings.h"
#include "spool/crc32c.h"

namespace sluice::bench {
namespace {

std::string normalized(std::string_view key) {
  std::string out(key);
  for (char& c : out) {
    c = c == '_' ? '-' : c;
  }
  return out;
}

absl::Status bad_value(std::string_view key, std::string_view value, std::string_view expected) {
  return absl::InvalidArgumentError(to_absl(str_cat(key, ": \"", value, "\" is not ", expected)));
}

absl::Status set_fraction(double& field, std::string_view key, std::string_view value) {
  double parsed = 0;
  const auto result = std::from_chars(value.data(), value.data() + value.size(), parsed);
  if (result.ec != std::errc() || result.ptr != value.data() + value.size() || !(parsed >= 0 && parsed <= 1)) {
    return bad_value(key, value, "a fraction from 0 to 1");
  }
  field = parsed;
  return absl::OkStatus();
}

absl::Status set_count(uint32_t& field, std::string_view key, std::string_view value) {
  if (!parse_decimal(value, field)) {
    return bad_value(key, value, "a whole number");
  }
  return absl::OkStatus();
}

absl::Status set_flag(bool& field, std::string_view key, std::string_view value) {
  if (value != "true" && value != "false") {
    return bad_value(key, value, "true or false");
  }
  field = value == "true";
  return absl::OkStatus();
}

constexpr std::string_view kFlags[] = {"no-pipelining", "no-8bitmime", "no-size", "no-chunking", "helo-only"};
constexpr std::string_view kValued[] = {"rcpt-4xx",         "rcpt-5xx",
                                        "rcpt-4xx-pattern", "rcpt-5xx-pattern",
                                        "greeting-421",     "drop-mid-data",
                                        "delay-ms",         "defer-after-per-connection",
                                        "defer-after-per-minute", "max-size"};

// A glob that matches nothing would be a silent no-op: it must at least be one an address can meet.
absl::Status set_pattern(std::string& field, std::string_view key, std::string_view value) {
  if (value.empty() || value.find('\0') != std::string_view::npos) {
    return bad_value(key, value, "a glob such as *@full.example");
  }
  field = std::string(value);
  return absl::OkStatus();
}

bool matches(const std::string& pattern, std::string_view address) {
  return !pattern.empty() && fnmatch(pattern.c_str(), std::string(address).c_str(), FNM_CASEFOLD) == 0;
}

}  // namespace

bool is_fault_flag(std::string_view key) {
  const std::string name = normalized(key);
  for (std::string_view flag : kFlags) {
    if (name == flag) {
      return true;
    }
  }
  return false;
}

bool is_fault_key(std::string_view key) {
  const std::string name = normalized(key);
  for (std::string_view valued : kValued) {
    if (name == valued) {
      return true;
    }
  }
  return is_fault_flag(key);
}

absl::Status set_fault(Faults& faults, std::string_view key, std::string_view value) {
  const std::string name = normalized(key);
  if (name == "rcpt-4xx") {
    return set_fraction(faults.rcpt_4xx, key, value);
  }
  if (name == "rcpt-5xx") {
    return set_fraction(faults.rcpt_5xx, key, value);
  }
  if (name == "greeting-421") {
    return set_fraction(faults.greeting_421, key, value);
  }
  if (name == "drop-mid-data") {
    return set_fraction(faults.drop_mid_data, key, value);
  }
  if (name == "delay-ms") {
    return set_count(faults.delay_ms, key, value);
  }
  if (name == "defer-after-per-connection") {
    return set_count(faults.defer_after_per_connection, key, value);
  }
  if (name == "max-size") {
    return set_count(faults.max_size, key, value);
  }
  if (name == "defer-after-per-minute") {
    return set_count(faults.defer_after_per_minute, key, value);
  }
  if (name == "rcpt-4xx-pattern") {
    return set_pattern(faults.rcpt_4xx_pattern, key, value);
  }
  if (name == "rcpt-5xx-pattern") {
    return set_pattern(faults.rcpt_5xx_pattern, key, value);
  }
  if (name == "no-pipelining") {
    return set_flag(faults.no_pipelining, key, value);
  }
  if (name == "no-8bitmime") {
    return set_flag(faults.no_8bitmime, key, value);
  }
  if (name == "no-size") {
    return set_flag(faults.no_size, key, value);
  }
  if (name == "no-chunking") {
    return set_flag(faults.no_chunking, key, value);
  }
  if (name == "helo-only") {
    return set_flag(faults.helo_only, key, value);
  }
  return absl::InvalidArgumentError(to_absl(str_cat("unknown fault \"", key, "\"")));
}

// toml++ throws (TOML_EXCEPTIONS, as in engine/app/config.cc): caught here, returned as a status.
absl::Status load_faults_toml(Faults& faults, const char* path) {
  try {
    const toml::table root = toml::parse_file(path);
    for (const auto& [key, node] : root) {
      std::string value;
      if (const auto* b = node.as_boolean()) {
        value = b->get() ? "true" : "false";
      } else if (const auto* i = node.as_integer()) {
        value = str_cat(i->get());
      } else if (const auto* f = node.as_floating_point()) {
        value = absl::StrCat(f->get());
      } else if (const auto* s = node.as_string()) {
        value = s->get();
      } else {
        return absl::InvalidArgumentError(to_absl(str_cat(path, ": ", key.str(), " must be a number or a boolean")));
      }
      if (absl::Status status = set_fault(faults, key.str(), value); !status.ok()) {
        return absl::InvalidArgumentError(to_absl(str_cat(path, ": ", to_std(status.message()))));
      }
    }
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(to_absl(str_cat(path, ": ", e.description())));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(to_absl(str_cat(path, ": ", e.what())));
  }
  return absl::OkStatus();
}

RecipientFault recipient_fault(const Faults& faults, std::string_view address) {
  if (matches(faults.rcpt_5xx_pattern, address)) {
    return RecipientFault::permanent;
  }
  if (matches(faults.rcpt_4xx_pattern, address)) {
    return RecipientFault::temporary;
  }
  if (faults.rcpt_4xx <= 0 && faults.rcpt_5xx <= 0) {
    return RecipientFault::none;
  }
  const double place = address_fraction(address);
  if (place < faults.rcpt_5xx) {
    return RecipientFault::permanent;
  }
  if (place < faults.rcpt_5xx + faults.rcpt_4xx) {
    return RecipientFault::temporary;
  }
  return RecipientFault::none;
}

double address_fraction(std::string_view address) {
  // CRC32C of the lower-cased address, then a 64-bit mix (splitmix64's finaliser): CRC alone
  // puts similar addresses close together.
  const std::string lower = to_lower(address);
  uint64_t x = spool::crc32c(lower);
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<double>(x >> 11) / static_cast<double>(uint64_t{1} << 53);
}

}  // namespace sluice::bench
