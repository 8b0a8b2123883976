#pragma once
// Small blocking file helpers for the spool's control path (recovery, preallocation, lock, id
// floor). Never called on the shard thread's data path.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace sluice::spool {

absl::Status errno_status(int error, std::string_view what);
// mkdir -p; the parent of every directory it creates is fsync'd before it returns.
absl::Status make_directories(const std::string& path);
absl::Status fsync_directory(const std::string& path);
// write() until done; EINTR retried, a short write continued.
absl::Status write_all(int fd, const void* data, size_t size);
// A u64 with its crc32c (12 octets). nullopt if missing or damaged.
std::optional<uint64_t> read_floor_file(const std::string& path);
// Writes dir/name through a temporary file, fsync, rename and directory fsync.
absl::Status write_floor_file_durably(const std::string& dir, const std::string& name, uint64_t value);
// Overwrites an open floor file in place and fdatasyncs it (12 octets: one sector, CRC-guarded).
absl::Status overwrite_floor_file(int fd, uint64_t value);

}  // namespace sluice::spool
