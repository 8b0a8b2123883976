// Reads both result files and compares the sets of ids.
#include "bench/sink/verify.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "bench/sink/ids.h"
#include "bench/sink/json_reader.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

constexpr size_t kIdsShownMax = 10;

absl::StatusOr<JsonValue> read_json(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(to_absl(str_cat(path, ": cannot open")));
  }
  std::stringstream text;
  text << file.rdbuf();
  auto parsed = parse_json(text.str());
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(to_absl(str_cat(path, ": ", to_std(parsed.status().message()))));
  }
  if (!parsed->is(JsonValue::Type::object)) {
    return absl::InvalidArgumentError(to_absl(str_cat(path, ": not a JSON object")));
  }
  return parsed;
}

// {"RUN": [[lo, hi], ...], ...} into `ids`.
bool add_ranges(const JsonValue& ranges, IdSet& ids) {
  if (!ranges.is(JsonValue::Type::object)) {
    return false;
  }
  for (const auto& [run, list] : ranges.members) {
    if (!list.is(JsonValue::Type::array)) {
      return false;
    }
    for (const JsonValue& range : list.items) {
      uint64_t lo = 0;
      uint64_t hi = 0;
      if (!range.is(JsonValue::Type::array) || range.items.size() != 2 || !range.items[0].as_uint(lo) ||
          !range.items[1].as_uint(hi) || !ids.insert_range(run, lo, hi)) {
        return false;
      }
    }
  }
  return true;
}

bool add_strings(const JsonValue& list, IdSet& ids) {
  if (!list.is(JsonValue::Type::array)) {
    return false;
  }
  for (const JsonValue& id : list.items) {
    if (!id.is(JsonValue::Type::string)) {
      return false;
    }
    ids.insert(id.text);
  }
  return true;
}

struct Problems {
  uint64_t count = 0;
  std::vector<std::string> shown;
  void add(std::string_view id) {
    ++count;
    if (shown.size() < kIdsShownMax) {
      shown.emplace_back(id);
    }
  }
};

void print_problem(const char* name, const Problems& problems) {
  std::printf("%-11s %llu", name, static_cast<unsigned long long>(problems.count));
  if (!problems.shown.empty()) {
    std::printf("  (");
    for (size_t i = 0; i < problems.shown.size(); ++i) {
      std::printf("%s%s", i == 0 ? "" : " ", problems.shown[i].c_str());
    }
    std::printf("%s)", problems.count > problems.shown.size() ? " ..." : "");
  }
  std::printf("\n");
}

int input_error(std::string_view message) {
  std::fprintf(stderr, "sluice-bench sink --verify: %.*s\n", static_cast<int>(message.size()), message.data());
  return 2;
}

}  // namespace

int run_verify(const std::string& sender_path, const std::string& sink_path) {
  auto sender = read_json(sender_path);
  if (!sender.ok()) {
    return input_error(to_std(sender.status().message()));
  }
  auto sink = read_json(sink_path);
  if (!sink.ok()) {
    return input_error(to_std(sink.status().message()));
  }
  IdSet accepted;
  const JsonValue* accepted_ids = sender->get("accepted_ids");
  const JsonValue* accepted_ranges = sender->get("accepted_id_ranges");
  if (accepted_ids == nullptr && accepted_ranges == nullptr) {
    return input_error(str_cat(sender_path, ": neither \"accepted_ids\" nor \"accepted_id_ranges\""));
  }
  if ((accepted_ids != nullptr && !add_strings(*accepted_ids, accepted)) ||
      (accepted_ranges != nullptr && !add_ranges(*accepted_ranges, accepted))) {
    return input_error(str_cat(sender_path, ": malformed accepted ids"));
  }
  IdSet received;
  const JsonValue* received_ids = sink->get("received_ids");
  const JsonValue* duplicate_ids = sink->get("duplicate_ids");
  const JsonValue* corrupt_ids = sink->get("corrupt_ids");
  if (received_ids == nullptr || received_ids->get("ranges") == nullptr || received_ids->get("other") == nullptr ||
      duplicate_ids == nullptr || !duplicate_ids->is(JsonValue::Type::array) || corrupt_ids == nullptr ||
      !corrupt_ids->is(JsonValue::Type::array) || !add_ranges(*received_ids->get("ranges"), received) ||
      !add_strings(*received_ids->get("other"), received)) {
    return input_error(str_cat(sink_path, ": not a sluice-bench sink result (received_ids, duplicate_ids, corrupt_ids)"));
  }
  absl::flat_hash_set<std::string> duplicated;
  for (const JsonValue& id : duplicate_ids->items) {
    duplicated.insert(id.text);
  }
  absl::flat_hash_set<std::string> corrupt;
  for (const JsonValue& id : corrupt_ids->items) {
    corrupt.insert(id.text);
  }
  uint64_t intact = 0;
  Problems missing;
  Problems duplicates;
  Problems corrupted;
  Problems unexpected;
  const auto judge = [&](const std::string& id) {
    if (!received.contains(id)) {
      missing.add(id);
      return;
    }
    const bool twice = duplicated.contains(id);
    const bool damaged = corrupt.contains(id);
    if (twice) {
      duplicates.add(id);
    }
    if (damaged) {
      corrupted.add(id);
    }
    intact += twice || damaged ? 0 : 1;
  };
  accepted.for_each([&](std::string_view run, uint64_t n) { judge(str_cat(run, "-", n)); },
                    [&](std::string_view id) { judge(std::string(id)); });
  received.for_each(
      [&](std::string_view run, uint64_t n) {
        if (!accepted.contains(run, n)) {
          unexpected.add(str_cat(run, "-", n));
        }
      },
      [&](std::string_view id) {
        if (!accepted.contains(id)) {
          unexpected.add(id);
        }
      });
  std::printf("accepted    %llu\nreceived    %llu\nintact      %llu\n", static_cast<unsigned long long>(accepted.size()),
              static_cast<unsigned long long>(received.size()), static_cast<unsigned long long>(intact));
  print_problem("missing", missing);
  print_problem("duplicated", duplicates);
  print_problem("corrupt", corrupted);
  print_problem("unexpected", unexpected);
  const bool ok = missing.count == 0 && duplicates.count == 0 && corrupted.count == 0;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace sluice::bench
