// Start-up recovery of one shard's spool: replays segments and the journal, deletes what holds
// nothing live, rewrites the journal compacted. Also the spool directory lock. Blocking; runs
// before the listener opens. Must never accept a record that fails any check (a torn tail is
// dropped, stale records past the tail are ignored), and never delete a segment with a live message.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io/assert.h"
#include "engine/io/clock.h"
#include "spool/crc32c.h"
#include "spool/file_util.h"
#include "spool/message_id.h"
#include "spool/spool.h"

namespace sluice::spool {
namespace {

bool all_zero(const uint8_t* bytes, size_t size) {
  for (size_t i = 0; i < size; ++i) {
    if (bytes[i] != 0) {
      return false;
    }
  }
  return true;
}

// A read-only mapping of a whole file; empty if the file is empty.
class MappedFile {
 public:
  static absl::StatusOr<MappedFile> open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return errno_status(errno, absl::StrCat("open ", path));
    }
    struct stat info;
    if (::fstat(fd, &info) != 0) {
      const int error = errno;
      ::close(fd);
      return errno_status(error, absl::StrCat("stat ", path));
    }
    MappedFile file;
    file._size = static_cast<size_t>(info.st_size);
    if (file._size > 0) {
      void* data = ::mmap(nullptr, file._size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (data == MAP_FAILED) {
        const int error = errno;
        ::close(fd);
        return errno_status(error, absl::StrCat("mmap ", path));
      }
      file._data = static_cast<const uint8_t*>(data);
    }
    ::close(fd);
    return file;
  }
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept : _data(other._data), _size(other._size) { other._data = nullptr; }
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile() {
    if (_data != nullptr) {
      ::munmap(const_cast<uint8_t*>(_data), _size);
    }
  }
  std::span<const uint8_t> bytes() const { return {_data, _size}; }

 private:
  const uint8_t* _data = nullptr;
  size_t _size = 0;
};

struct ScannedSegment {
  uint64_t id = 0;
  std::string path;
  uint64_t end_offset = 0;
  std::vector<std::string> ids;  // every message id in it, live or not
  uint32_t live = 0;
  uint16_t version = kFormatVersion;
};

using io::wall_ms;

// Writes the compacted journal DIR/journal-<number>: a file header, the snapshot records, then a
// checkpoint that makes every older journal file irrelevant. Through a temporary name, fsync,
// rename and directory fsync: durable before any older journal is deleted.
absl::Status write_journal(const std::string& shard_dir, uint32_t shard, uint32_t generation, uint64_t number,
                           const std::vector<JournalEntry>& entries, RecoveredShard& out) {
  const std::string final_path = journal_path(shard_dir, number);
  const std::string temporary = final_path + ".tmp";
  FileHeaderPayload payload;
  payload.shard = shard;
  payload.created_ms = wall_ms();
  std::string bytes = encode_file_header_record(kJournalFileId, generation, payload);
  uint64_t sequence = 1;
  for (const auto& entry : entries) {
    bytes += encode_journal_record(entry, generation, sequence++);
  }
  bytes += encode_journal_record(checkpoint_entry(entries.size()), generation, sequence++);
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    return errno_status(errno, absl::StrCat("open ", temporary));
  }
  absl::Status status = write_all(fd, bytes.data(), bytes.size());
  if (status.ok() && ::fsync(fd) != 0) {
    status = errno_status(errno, "fsync journal");
  }
  ::close(fd);
  if (status.ok() && ::rename(temporary.c_str(), final_path.c_str()) != 0) {
    status = errno_status(errno, "rename journal");
  }
  if (status.ok()) {
    status = fsync_directory(shard_dir);
  }
  out.journal_number = number;
  out.journal_path = final_path;
  out.journal_end_offset = bytes.size();
  out.journal_next_sequence = sequence;
  return status;
}

// What the journal files say, applied in file order; a checkpoint replaces all that came before.
struct JournalState {
  absl::flat_hash_map<std::string, bool> held;  // id -> held (true) or released (false)
  absl::flat_hash_map<std::string, bool> removed;
  std::vector<JournalEntry> outcomes;  // in journal order: applied to the live messages at the end

  void apply(JournalEntry entry) {
    switch (entry.op) {
      case JournalOp::remove:
        removed[entry.queue_id] = true;
        break;
      case JournalOp::hold:
        held[entry.queue_id] = true;
        break;
      case JournalOp::release:
        held[entry.queue_id] = false;
        break;
      case JournalOp::delivered:
      case JournalOp::deferred:
      case JournalOp::bounced:
        outcomes.push_back(std::move(entry));
        break;
      default:
        break;
    }
  }
};

}  // namespace

FileScan scan_records(std::span<const uint8_t> bytes, uint64_t expected_file_id, RecordType body_type) {
  FileScan scan;
  uint64_t offset = 0;
  uint64_t expected_sequence = 0;
  while (true) {
    if (bytes.size() - offset < kRecordHeaderBytes) {
      scan.torn = !all_zero(bytes.data() + offset, bytes.size() - offset);
      break;
    }
    const uint8_t* at = bytes.data() + offset;
    if (all_zero(at, kRecordHeaderBytes)) {
      break;  // the preallocated zeros: the clean end
    }
    const RecordHeader header = decode_record_header(at);
    const RecordType wanted = expected_sequence == 0 ? RecordType::file_header : body_type;
    // Record 0 decides the file's version (any this build reads); every later record must match.
    const bool version_ok = expected_sequence == 0
                                ? header.version >= kOldestReadableVersion && header.version <= kFormatVersion
                                : header.version == scan.version;
    const bool header_ok = header.magic == kRecordMagic && version_ok && header.type == wanted &&
                           header.segment_id == expected_file_id && header.sequence == expected_sequence &&
                           header.payload_length <= kMaxPayloadBytes &&
                           (expected_sequence == 0 || header.generation == scan.generation) &&
                           header.payload_length <= bytes.size() - offset - kRecordHeaderBytes;
    if (!header_ok) {
      scan.torn = true;
      break;
    }
    const std::span<const uint8_t> payload = bytes.subspan(offset + kRecordHeaderBytes, header.payload_length);
    if (record_crc(at, crc32c(payload.data(), payload.size())) != header.crc) {
      scan.torn = true;
      break;
    }
    if (expected_sequence == 0) {
      auto file_header = decode_file_header_payload(payload);
      if (!file_header.ok()) {
        scan.torn = true;
        break;
      }
      scan.has_header = true;
      scan.generation = header.generation;
      scan.version = header.version;
      scan.header = *file_header;
    } else {
      scan.records.push_back(ScannedRecord{header.type, header.sequence, offset, header.payload_length});
    }
    offset += kRecordHeaderBytes + header.payload_length;
    ++expected_sequence;
  }
  scan.end_offset = offset;
  return scan;
}

absl::StatusOr<RecoveredShard> recover_shard(const std::string& dir, uint32_t shard) {
  RecoveredShard out;
  out.shard = shard;
  out.shard_dir = absl::StrCat(dir, "/shard-", shard);
  if (auto status = make_directories(out.shard_dir); !status.ok()) {
    return status;
  }
  // Also when it existed already: a run that died between its mkdir and that fsync left a name
  // that a power cut would still take, with every segment this run acknowledges in it.
  if (auto status = fsync_directory(dir); !status.ok()) {
    return status;
  }
  std::map<uint64_t, std::string> segment_paths;
  std::map<uint64_t, std::string> journal_paths;  // by number: the order they apply in
  {
    DIR* listing = ::opendir(out.shard_dir.c_str());
    if (listing == nullptr) {
      return errno_status(errno, absl::StrCat("opendir ", out.shard_dir));
    }
    while (const dirent* entry = ::readdir(listing)) {
      const std::string name = entry->d_name;
      if (name.ends_with(".tmp")) {
        ::unlink(absl::StrCat(out.shard_dir, "/", name).c_str());  // half-created: never handed out
        ++out.segments_deleted;
      } else if (auto id = parse_segment_name(name); id.has_value()) {
        segment_paths[*id] = absl::StrCat(out.shard_dir, "/", name);
      } else if (auto number = parse_journal_name(name); number.has_value()) {
        journal_paths[*number] = absl::StrCat(out.shard_dir, "/", name);
      }
    }
    ::closedir(listing);
  }

  uint32_t max_generation = 0;
  std::vector<ScannedSegment> segments;
  absl::flat_hash_map<std::string, MessageInfo> live;
  for (const auto& [id, path] : segment_paths) {
    out.next_segment_id = std::max(out.next_segment_id, id + 1);
    auto file = MappedFile::open(path);
    if (!file.ok()) {
      return file.status();
    }
    const FileScan scan = scan_records(file->bytes(), id, RecordType::message);
    // Preallocation goes through a .tmp name, so this is belt and braces: a file without a valid
    // header, or of the wrong size with nothing in it, is a half-created one. A file cut short
    // after valid records keeps them (the scan stopped at its end).
    const bool wrong_size = scan.header.segment_bytes != file->bytes().size();
    if (!scan.has_header || (wrong_size && scan.records.empty())) {
      ::unlink(path.c_str());
      ++out.segments_deleted;
      continue;
    }
    max_generation = std::max(max_generation, scan.generation);
    out.torn_tails += scan.torn ? 1 : 0;
    ScannedSegment segment{id, path, scan.end_offset, {}, 0, scan.version};
    for (const auto& record : scan.records) {
      auto meta = decode_message_meta(file->bytes().subspan(record.offset + kRecordHeaderBytes, record.payload_length),
                                      scan.version);
      if (!meta.ok()) {
        break;  // a valid CRC over a malformed envelope: treat as the end, like any bad record
      }
      ++out.records_recovered;
      out.max_id_ms = std::max(out.max_id_ms, id_ms(meta->queue_id).value_or(0));
      segment.ids.push_back(meta->queue_id);
      MessageInfo info;
      info.id = meta->queue_id;
      info.sender = std::move(meta->envelope.sender);
      info.recipients = std::move(meta->envelope.recipients);
      info.rfc_size = meta->rfc_size;
      info.arrival_ms = meta->arrival_ms;
      info.body_8bit = meta->envelope.body_8bit;
      info.smtputf8 = meta->envelope.smtputf8;
      info.client_address = std::move(meta->envelope.client_address);
      info.client_helo = std::move(meta->envelope.client_helo);
      info.dsn_ret = meta->envelope.ret;
      info.dsn_envid = std::move(meta->envelope.envid);
      info.recipient_dsn = std::move(meta->envelope.recipient_dsn);
      info.dsn_of = std::move(meta->envelope.dsn_of);
      info.recipient_states.resize(info.recipients.size());
      info.location =
          MessageLocation{id, record.offset, record.offset + kRecordHeaderBytes + meta->wire_offset, meta->wire_length};
      live.try_emplace(info.id, std::move(info));  // first copy wins if an id ever repeats
    }
    segments.push_back(std::move(segment));
  }

  JournalState journal;
  for (const auto& [number, path] : journal_paths) {
    auto file = MappedFile::open(path);
    if (!file.ok()) {
      return file.status();
    }
    const FileScan scan = scan_records(file->bytes(), kJournalFileId, RecordType::journal);
    max_generation = std::max(max_generation, scan.generation);
    out.torn_tails += scan.torn ? 1 : 0;
    JournalState in_file;  // this file's records before its checkpoint (if it has one)
    bool checkpointed = false;
    uint64_t records_before_checkpoint = 0;
    for (const auto& record : scan.records) {
      auto entry = decode_journal_payload(
          file->bytes().subspan(record.offset + kRecordHeaderBytes, record.payload_length), scan.version);
      if (!entry.ok()) {
        break;
      }
      if (entry->op == JournalOp::checkpoint && !checkpointed && entry->argument == records_before_checkpoint) {
        journal = std::move(in_file);  // the snapshot is the whole state: older files no longer count
        in_file = JournalState{};
        checkpointed = true;
        continue;
      }
      ++records_before_checkpoint;
      (checkpointed ? journal : in_file).apply(*std::move(entry));
    }
    if (!checkpointed) {
      for (const auto& [id, removed] : in_file.removed) {
        journal.removed[id] = removed;
      }
      for (const auto& [id, held] : in_file.held) {
        journal.held[id] = held;
      }
      for (auto& outcome : in_file.outcomes) {
        journal.outcomes.push_back(std::move(outcome));
      }
    }
  }
  for (const auto& [id, removed] : journal.removed) {
    live.erase(id);
  }
  for (const auto& [id, held] : journal.held) {
    if (auto it = live.find(id); it != live.end()) {
      it->second.status = held ? MessageStatus::held : MessageStatus::queued;
    }
  }
  // Outcomes in the order they were written (a removal won already: its message is not live).
  for (const auto& outcome : journal.outcomes) {
    if (auto it = live.find(outcome.queue_id); it != live.end()) {
      apply_outcome(it->second, outcome);
    }
  }
  journal.outcomes.clear();
  for (auto& [id, info] : live) {
    derive_next_attempt(info);
  }
  out.generation = max_generation + 1;

  // Segments with nothing live go, durably, before the new journal stops saying their messages
  // were removed; the journal keeps what the rest still need.
  std::vector<JournalEntry> keep;
  for (auto& segment : segments) {
    for (const auto& id : segment.ids) {
      auto it = live.find(id);
      if (it != live.end() && it->second.location.segment_id == segment.id) {
        ++segment.live;
      }
    }
    if (segment.live == 0) {
      ::unlink(segment.path.c_str());
      ++out.segments_deleted;
      continue;
    }
    out.old_format_segments += segment.version < kFormatVersion ? 1 : 0;
    RecoveredSegment recovered{segment.id, segment.path, segment.end_offset, segment.live, {}};
    for (const auto& id : segment.ids) {
      auto it = live.find(id);
      if (it == live.end()) {
        keep.push_back(JournalEntry{JournalOp::remove, id, 0});
        recovered.removed_ids.push_back(id);
      } else if (it->second.location.segment_id == segment.id) {
        if (it->second.status == MessageStatus::held) {
          keep.push_back(JournalEntry{JournalOp::hold, id, 0});
        }
        for (auto& outcome : outcome_snapshot(it->second)) {
          keep.push_back(std::move(outcome));
        }
      }
    }
    out.segments.push_back(std::move(recovered));
  }
  if (auto status = fsync_directory(out.shard_dir); !status.ok()) {
    return status;
  }
  const uint64_t journal_number = journal_paths.empty() ? 1 : journal_paths.rbegin()->first + 1;
  if (auto status = write_journal(out.shard_dir, shard, out.generation, journal_number, keep, out); !status.ok()) {
    return status;
  }
  for (const auto& [number, path] : journal_paths) {
    ::unlink(path.c_str());  // the new journal's checkpoint made them irrelevant
  }
  // The id floor the running shard keeps is created here, so the directory fsync below makes its
  // name durable.
  const std::string idfloor = out.shard_dir + "/idfloor";
  if (const int fd = ::open(idfloor.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640); fd >= 0) {
    ::close(fd);
  } else {
    return errno_status(errno, absl::StrCat("open ", idfloor));
  }
  if (auto status = fsync_directory(out.shard_dir); !status.ok()) {
    return status;
  }
  out.messages.reserve(live.size());
  for (auto& [id, info] : live) {
    out.messages.push_back(std::move(info));
  }
  std::sort(out.messages.begin(), out.messages.end(),
            [](const MessageInfo& a, const MessageInfo& b) { return a.id < b.id; });
  return out;
}

absl::StatusOr<SpoolLock> SpoolLock::acquire(const std::string& dir) {
  if (auto status = make_directories(dir); !status.ok()) {
    return status;
  }
  const std::string path = dir + "/lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    return errno_status(errno, absl::StrCat("open ", path));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(fd);
    if (error == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat("spool ", dir, " is in use by another process"));
    }
    return errno_status(error, absl::StrCat("flock ", path));
  }
  return SpoolLock(fd);
}

SpoolLock& SpoolLock::operator=(SpoolLock&& other) noexcept {
  if (this != &other) {
    if (_fd >= 0) {
      ::close(_fd);
    }
    _fd = other._fd;
    other._fd = -1;
  }
  return *this;
}

SpoolLock::~SpoolLock() {
  if (_fd >= 0) {
    ::close(_fd);
  }
}

}  // namespace sluice::spool
