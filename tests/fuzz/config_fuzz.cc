// Fuzz target for the config reader: any text, valid TOML or not, must give a list of errors
// (or none) and never crash, throw or hang. Every error must carry the file name and a line
// inside the text.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/app/config.h"

namespace {

void check(bool condition) {
  if (!condition) {
    std::abort();
  }
}

// Keys to aim at, so random text is tried as the value of a real key (the replay driver's
// random bytes are rarely valid TOML on their own).
constexpr std::array<std::string_view, 12> kTargets = {"[server]\nlisten = [\"",
                                                       "[server]\nmax_message_size = ",
                                                       "[server]\ncommand_timeout = \"",
                                                       "[spool]\nsegment_bytes = ",
                                                       "[relay]\nnetworks = [\"",
                                                       "[relay]\ndomains = [\"",
                                                       "[proxy_protocol]\ntrusted = [\"",
                                                       "[dns]\nservers = [\"",
                                                       "[delivery]\nretry_max = \"",
                                                       "[[route]]\ndomain = \"*\"\nnext_hop = \"",
                                                       "[admin]\nlisten = \"",
                                                       "[server]\n"};
constexpr std::array<std::string_view, 12> kEndings = {"\"]\n", "\n",    "\"\n", "\n",   "\"]\n", "\"]\n",
                                                       "\"]\n", "\"]\n", "\"\n", "\"\n", "\"\n",  "\n"};

void check_text(std::string_view text) {
  const size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
  const sluice::app::ConfigErrors errors = sluice::app::check_config_text(text, "fuzz.toml");
  for (const sluice::app::ConfigError& error : errors) {
    check(error.file == "fuzz.toml");
    check(!error.message.empty());
    check(error.line <= lines);
  }
  // load and check agree on validity.
  check(sluice::app::load_config_text(text, "fuzz.toml").ok() == errors.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  check_text(raw);
  if (size > 0) {
    const size_t target = data[0] % kTargets.size();
    check_text(std::string(kTargets[target]) + std::string(raw.substr(1)) + std::string(kEndings[target]));
  }
  return 0;
}
