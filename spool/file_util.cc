// Blocking file helpers used at start-up and by the preallocator thread. Owns no state; must
// never be called from a shard thread's loop.
#include "spool/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "spool/crc32c.h"

namespace sluice::spool {
namespace {

constexpr size_t kFloorFileBytes = 12;

void encode_floor(uint64_t value, uint8_t* out) {
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>(value >> (8 * i));
  }
  const uint32_t crc = crc32c(out, 8);
  for (int i = 0; i < 4; ++i) {
    out[8 + i] = static_cast<uint8_t>(crc >> (8 * i));
  }
}

// "a/b" -> "a", "/a" -> "/", "a" -> "." (trailing slashes are the caller's: mkdir ignores them).
std::string parent_directory(const std::string& path) {
  const size_t end = path.find_last_not_of('/');
  const size_t slash = end == std::string::npos ? std::string::npos : path.find_last_of('/', end);
  if (slash == std::string::npos) {
    return ".";
  }
  const size_t parent_end = path.find_last_not_of('/', slash);
  return parent_end == std::string::npos ? "/" : path.substr(0, parent_end + 1);
}

}  // namespace

absl::Status errno_status(int error, std::string_view what) {
  std::string message = absl::StrCat(absl::string_view(what.data(), what.size()), ": ", std::strerror(error));
  switch (error) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status make_directories(const std::string& path) {
  if (path.empty()) {
    return absl::InvalidArgumentError("spool: empty directory name");
  }
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (::mkdir(prefix.c_str(), 0750) == 0) {
      // A new directory's name is durable only once its parent is fsync'd: without this a power
      // cut takes the directory, and every segment and journal later put in it, away.
      if (auto status = fsync_directory(parent_directory(prefix)); !status.ok()) {
        return status;
      }
    } else if (errno != EEXIST) {
      return errno_status(errno, absl::StrCat("mkdir ", prefix));
    }
    if (slash == std::string::npos) {
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status fsync_directory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return errno_status(errno, absl::StrCat("open ", path));
  }
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : errno_status(error, absl::StrCat("fsync ", path));
}

absl::Status write_all(int fd, const void* data, size_t size) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, bytes, size);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno_status(errno, "write");
    }
    if (n == 0) {
      return errno_status(EIO, "write made no progress");
    }
    bytes += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::optional<uint64_t> read_floor_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return std::nullopt;
  }
  uint8_t bytes[kFloorFileBytes];
  const ssize_t n = ::pread(fd, bytes, sizeof(bytes), 0);
  ::close(fd);
  if (n != static_cast<ssize_t>(sizeof(bytes))) {
    return std::nullopt;
  }
  uint8_t expected[kFloorFileBytes];
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) {
    value = (value << 8) | bytes[i];
  }
  encode_floor(value, expected);
  if (std::memcmp(expected, bytes, sizeof(bytes)) != 0) {
    return std::nullopt;
  }
  return value;
}

absl::Status write_floor_file_durably(const std::string& dir, const std::string& name, uint64_t value) {
  const std::string temporary = absl::StrCat(dir, "/", name, ".tmp");
  const std::string final_path = absl::StrCat(dir, "/", name);
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    return errno_status(errno, absl::StrCat("open ", temporary));
  }
  uint8_t bytes[kFloorFileBytes];
  encode_floor(value, bytes);
  absl::Status status = write_all(fd, bytes, sizeof(bytes));
  if (status.ok() && ::fsync(fd) != 0) {
    status = errno_status(errno, absl::StrCat("fsync ", temporary));
  }
  ::close(fd);
  if (status.ok() && ::rename(temporary.c_str(), final_path.c_str()) != 0) {
    status = errno_status(errno, absl::StrCat("rename ", temporary));
  }
  if (status.ok()) {
    status = fsync_directory(dir);
  }
  return status;
}

absl::Status overwrite_floor_file(int fd, uint64_t value) {
  uint8_t bytes[kFloorFileBytes];
  encode_floor(value, bytes);
  if (::pwrite(fd, bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) {
    return errno_status(errno, "write idfloor");
  }
  if (::fdatasync(fd) != 0) {
    return errno_status(errno, "fdatasync idfloor");
  }
  return absl::OkStatus();
}

}  // namespace sluice::spool
