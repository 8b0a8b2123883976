// Queue id generation and the persisted id floor. Owns the DIR/meta file. Must never hand out an
// id that sorts before one it (or an earlier run) already handed out.
#include "spool/message_id.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/io/assert.h"
#include "spool/crc32c.h"
#include "spool/file_util.h"

namespace sluice::spool {
namespace {

constexpr char kDigits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

void put_base36(char* out, size_t digits, uint64_t value) {
  for (size_t i = digits; i > 0; --i) {
    out[i - 1] = kDigits[value % 36];
    value /= 36;
  }
  SLUICE_ASSERT(value == 0);
}

}  // namespace

IdGenerator::IdGenerator(uint32_t shard, uint64_t floor_ms) : _shard(shard), _last_ms(floor_ms) {
  SLUICE_ASSERT(shard < kIdMaxShards);
}

std::string IdGenerator::next(uint64_t now_ms) {
  uint64_t ms = std::max(now_ms, _last_ms);
  if (_started && ms == _last_ms) {
    ++_counter;
    if (_counter == kIdCountersPerMs) {
      ++ms;  // more than 60 million ids in one millisecond: borrow the next one
      _counter = 0;
    }
  } else {
    _counter = 0;
  }
  _started = true;
  _last_ms = ms;
  std::string id(kIdMsDigits + kIdShardDigits + kIdCounterDigits, '0');
  put_base36(id.data(), kIdMsDigits, ms);
  put_base36(id.data() + kIdMsDigits, kIdShardDigits, _shard);
  put_base36(id.data() + kIdMsDigits + kIdShardDigits, kIdCounterDigits, _counter);
  return id;
}

std::optional<uint64_t> id_ms(std::string_view id) {
  if (id.size() != kIdMsDigits + kIdShardDigits + kIdCounterDigits) {
    return std::nullopt;
  }
  uint64_t ms = 0;
  for (size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    uint64_t digit;
    if (c >= '0' && c <= '9') {
      digit = static_cast<uint64_t>(c - '0');
    } else if (c >= 'A' && c <= 'Z') {
      digit = static_cast<uint64_t>(c - 'A' + 10);
    } else {
      return std::nullopt;
    }
    if (i < kIdMsDigits) {
      ms = ms * 36 + digit;
    }
  }
  return ms;
}

absl::StatusOr<uint64_t> load_and_bump_floor(const std::string& dir, uint64_t now_ms) {
  if (auto status = make_directories(dir); !status.ok()) {
    return status;
  }
  uint64_t floor = now_ms;
  if (auto stored = read_floor_file(dir + "/meta"); stored.has_value()) {
    floor = std::max(floor, *stored + 1);  // the last run may have used its floor already
  }
  if (DIR* listing = ::opendir(dir.c_str()); listing != nullptr) {
    while (const dirent* entry = ::readdir(listing)) {
      if (std::strncmp(entry->d_name, "shard-", 6) == 0) {
        // idfloor holds the last millisecond a running shard used: start after it.
        if (auto used = read_floor_file(absl::StrCat(dir, "/", entry->d_name, "/idfloor")); used.has_value()) {
          floor = std::max(floor, *used + 1);
        }
      }
    }
    ::closedir(listing);
  }
  if (auto status = write_floor_file_durably(dir, "meta", floor); !status.ok()) {
    return status;
  }
  return floor;
}

}  // namespace sluice::spool
