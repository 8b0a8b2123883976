#pragma once
// The segment files a shard's delivery reads message bodies from, with descriptors of its own:
// the body of a job may sit in another shard's spool (the receiving shard owns the bytes, the
// destination's shard sends them), and a shard never touches another's spool. A descriptor is
// held (pinned) while a send from it is queued on a stream; unpinned ones are kept for reuse,
// at most kSegmentReadersPerShard, the least recently used closed first. Opening is a local
// open(2) of a file that exists (as the spool's own segment_fd does for sealed segments).
//
// Why a descriptor of its own is safe: the receiving shard unlinks a segment only after every
// message in it is final, which needs this shard's results first; and an unlink never affects
// a descriptor already open (a delete by the operator during a send included).
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "engine/app/descriptors.h"
#include "engine/io/assert.h"

namespace sluice::app {

class SegmentReader {
 public:
  SegmentReader() = default;
  SegmentReader(const SegmentReader&) = delete;
  SegmentReader& operator=(const SegmentReader&) = delete;
  ~SegmentReader() {
    for (auto& [path, file] : _files) {
      ::close(file.fd);
    }
  }

  // A pinned descriptor for `path`, or -errno.
  int pin(const std::string& path) {
    auto it = _files.find(path);
    if (it == _files.end()) {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        return -errno;
      }
      it = _files.emplace(path, File{fd, 0, 0}).first;
    }
    ++it->second.pins;
    it->second.last_use = ++_clock;
    const int fd = it->second.fd;
    close_unused();
    return fd;
  }

  void unpin(const std::string& path) {
    auto it = _files.find(path);
    SLUICE_ASSERT(it != _files.end() && it->second.pins > 0, "unpin of a segment not pinned");
    --it->second.pins;
    close_unused();
  }

  size_t open_files() const { return _files.size(); }

 private:
  struct File {
    int fd = -1;
    uint32_t pins = 0;
    uint64_t last_use = 0;
  };

  void close_unused() {
    while (_files.size() > kSegmentReadersPerShard) {
      auto oldest = _files.end();
      for (auto it = _files.begin(); it != _files.end(); ++it) {
        if (it->second.pins == 0 && (oldest == _files.end() || it->second.last_use < oldest->second.last_use)) {
          oldest = it;
        }
      }
      if (oldest == _files.end()) {
        return;  // all pinned: bounded by the connections sending, closed as they unpin
      }
      ::close(oldest->second.fd);
      _files.erase(oldest);
    }
  }

  absl::flat_hash_map<std::string, File> _files;
  uint64_t _clock = 0;
};

}  // namespace sluice::app
