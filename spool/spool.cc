// The shard's spool: record placement in segments and the journal, the group-commit state
// machine, and the queue index. Sans-I/O on the data path: it only returns IoRequests and reacts
// to their completions. Must never report a ticket OK before an fdatasync covering its record
// completed OK, never issue a file's fdatasync before the CQEs of the writes it covers unless
// linked to them (IOSQE_IO_LINK: it then counts only if they completed in full), never
// have two fdatasyncs of one file in flight (the files of one batch sync concurrently), never
// start a batch before the previous one ended, and never append to a segment after a hole (a
// failed write seals it).
#include "spool/spool.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/io/assert.h"
#include "engine/io/clock.h"
#include "engine/io/strings.h"
#include "spool/crc32c.h"
#include "spool/file_util.h"
#include "spool/preallocator.h"

namespace sluice::spool {
namespace {

bool valid_queue_id(std::string_view id) {
  return id.size() == kQueueIdBytes && id_ms(id).has_value();
}

absl::Status io_error(int32_t result, std::string_view what) {
  return errno_status(result < 0 ? -result : EIO, what);
}

constexpr int kJournalOpenFlags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
constexpr uint32_t kJournalFileMode = 0640;

// The log line of a journal file left unpreallocated: the spool goes on with it.
std::string prealloc_failure_line(uint32_t shard, const std::string& path, int error) {
  const char* name = strerrorname_np(error);
  return absl::StrCat("event=spool_error shard=", shard, " op=journal_preallocate errno=",
                      name != nullptr ? name : std::to_string(error), " error=\"fallocate ", path, ": ",
                      std::strerror(error), "\" fallback=unpreallocated");
}

// A failed fallocate may have allocated part of the range (ext4 keeps what it got): give it back,
// so that a full disk is not made fuller by a file that no longer needs it. Blocking, but only on
// this failure path; nothing was appended yet.
void undo_preallocation(int fd, uint64_t header_bytes, int error) {
  if (error != EOPNOTSUPP) {
    (void)::ftruncate(fd, static_cast<off_t>(header_bytes));
  }
}

// A zeroing write of the journal spare failed: fallocate's extents stay (reading as zeros).
std::string zeroing_failure_line(uint32_t shard, const std::string& path, int error) {
  const char* name = strerrorname_np(error);
  return absl::StrCat("event=spool_error shard=", shard, " op=journal_preallocate errno=",
                      name != nullptr ? name : std::to_string(error), " error=\"write zeros ", path, ": ",
                      std::strerror(error), "\" fallback=unwritten_extents");
}

// Zeros to write from, allocated once (the spare's writes point into it, never write to it).
constexpr size_t kZeroChunkBytes = 1 << 20;
std::span<const uint8_t> zero_chunk() {
  static const std::vector<uint8_t> zeros(kZeroChunkBytes, 0);
  return zeros;
}

struct CreatedJournal {
  int fd = -1;
  int prealloc_error = 0;  // not preallocated (the file works without)
  bool zeroing_failed = false;
};

// The first spare journal, at start-up (blocking is fine there): created, header, preallocated,
// fsync, and the directory fsync'd, exactly what the asynchronous spare does later.
absl::StatusOr<CreatedJournal> create_journal_file(const std::string& path, const std::string& header,
                                                   const std::string& dir, uint64_t preallocate_bytes) {
  CreatedJournal created;
  const int fd = ::open(path.c_str(), kJournalOpenFlags, kJournalFileMode);
  if (fd < 0) {
    return errno_status(errno, absl::StrCat("create ", path));
  }
  created.fd = fd;
  absl::Status status = write_all(fd, header.data(), header.size());
  if (status.ok() && preallocate_bytes > header.size()) {
    if (::fallocate(fd, 0, 0, static_cast<off_t>(preallocate_bytes)) != 0) {
      created.prealloc_error = errno;
      undo_preallocation(fd, header.size(), created.prealloc_error);
    }
    for (uint64_t at = header.size(); created.prealloc_error == 0 && at < preallocate_bytes;) {
      const size_t length = static_cast<size_t>(std::min<uint64_t>(kZeroChunkBytes, preallocate_bytes - at));
      if (!write_all(fd, zero_chunk().data(), length).ok()) {
        created.prealloc_error = errno;  // the allocated extents stay: still zeros, still its size
        created.zeroing_failed = true;
      }
      at += length;
    }
  }
  if (status.ok() && ::fdatasync(fd) != 0) {
    status = errno_status(errno, absl::StrCat("fdatasync ", path));
  }
  if (status.ok()) {
    status = fsync_directory(dir);
  }
  if (!status.ok()) {
    ::close(fd);
    return status;
  }
  return created;
}

// Cuts a reply (or a host name) to `limit` octets without splitting a UTF-8 sequence.
std::string bounded(std::string reply, size_t limit) {
  if (reply.size() <= limit) {
    return reply;
  }
  size_t end = limit;
  while (end > 0 && (static_cast<uint8_t>(reply[end]) & 0xC0) == 0x80) {
    --end;  // reply[end] continues a sequence that started before it
  }
  reply.resize(end);
  return reply;
}

JournalOp outcome_op(DeliveryState state) {
  switch (state) {
    case DeliveryState::delivered:
      return JournalOp::delivered;
    case DeliveryState::deferred:
      return JournalOp::deferred;
    case DeliveryState::bounced:
      return JournalOp::bounced;
    case DeliveryState::pending:
      break;
  }
  SLUICE_ASSERT(false, "pending is not an outcome");
  return JournalOp::deferred;
}

DeliveryState outcome_state(JournalOp op) {
  SLUICE_ASSERT(is_outcome(op));
  return op == JournalOp::delivered ? DeliveryState::delivered
         : op == JournalOp::bounced ? DeliveryState::bounced
                                    : DeliveryState::deferred;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardSpool>> ShardSpool::open(const SpoolOptions& options, RecoveredShard recovered) {
  if (options.segment_bytes < kMinSegmentBytes || options.shard >= kIdMaxShards || options.dir.empty() ||
      recovered.shard != options.shard || recovered.shard_dir.empty()) {
    return absl::InvalidArgumentError("spool: bad options or recovery of another shard");
  }
  std::unique_ptr<ShardSpool> spool(new ShardSpool(options, recovered));
  for (const auto& segment : recovered.segments) {
    auto file = std::make_unique<SpoolFile>();
    file->fd = -1;  // opened when read (segment_fd)
    file->id = segment.id;
    file->path = segment.path;
    file->capacity = options.segment_bytes;
    file->end_offset = segment.end_offset;
    file->sealed = true;  // never append after a possibly torn tail
    file->live = segment.live_messages;
    file->removed_ids = segment.removed_ids;
    spool->_segments.emplace(segment.id, std::move(file));
  }
  for (auto& message : recovered.messages) {
    std::string id = message.id;
    spool->_index.emplace(std::move(id), std::move(message));
  }
  auto& journal = *spool->_journal;
  journal.path = recovered.journal_path;
  journal.journal_number = recovered.journal_number;
  journal.fd = ::open(journal.path.c_str(), O_RDWR | O_CLOEXEC);
  if (journal.fd < 0) {
    return errno_status(errno, absl::StrCat("open ", journal.path));
  }
  journal.end_offset = recovered.journal_end_offset;
  journal.snapshot_end = recovered.journal_end_offset;  // recovery wrote it compacted: all snapshot
  journal.next_sequence = recovered.journal_next_sequence;
  spool->_dir_fd = ::open(recovered.shard_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (spool->_dir_fd < 0) {
    return errno_status(errno, absl::StrCat("open ", recovered.shard_dir));
  }
  JournalSpare& spare = spool->_spare;
  spare.number = recovered.journal_number + 1;
  spare.path = journal_path(recovered.shard_dir, spare.number);
  spare.header = encode_file_header_record(kJournalFileId, recovered.generation,
                                           FileHeaderPayload{0, options.shard, io::wall_ms()});
  auto created = create_journal_file(spare.path, spare.header, recovered.shard_dir, options.journal_rotate_bytes);
  if (!created.ok()) {
    return created.status();
  }
  spare.fd = created->fd;
  if (created->prealloc_error != 0) {
    ++spool->_metrics.journal_prealloc_failures;
    if (options.background_log) {
      options.background_log(created->zeroing_failed
                                 ? zeroing_failure_line(options.shard, spare.path, created->prealloc_error)
                                 : prealloc_failure_line(options.shard, spare.path, created->prealloc_error));
    }
  }
  spare.phase = JournalSpare::Phase::ready;
  const std::string idfloor = recovered.shard_dir + "/idfloor";
  const int idfloor_fd = ::open(idfloor.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (idfloor_fd < 0) {
    return errno_status(errno, absl::StrCat("open ", idfloor));
  }
  spool->_preallocator = std::make_unique<SegmentPreallocator>(recovered.shard_dir, options.shard, recovered.generation,
                                                               options.segment_bytes, recovered.next_segment_id,
                                                               idfloor_fd, options.background_log);
  return spool;
}

ShardSpool::ShardSpool(const SpoolOptions& options, RecoveredShard& recovered)
    : _options(options), _shard_dir(recovered.shard_dir), _generation(recovered.generation) {
  _journal = std::make_unique<SpoolFile>();
  _journal->id = kJournalFileId;
  _journal->generation = _generation;
  _journal->is_journal = true;
  _journal->capacity = UINT64_MAX;
}

ShardSpool::~ShardSpool() {
  _preallocator.reset();
  for (int fd : {_spare.fd, _dir_fd}) {
    if (fd >= 0) {
      ::close(fd);
    }
  }
  for (auto& old : _old_journals) {
    if (old->fd >= 0) {
      ::close(old->fd);
    }
  }
  for (auto& [id, file] : _segments) {
    if (file->fd >= 0) {
      ::close(file->fd);
    }
  }
  if (_journal->fd >= 0) {
    ::close(_journal->fd);
  }
}

absl::StatusOr<uint64_t> ShardSpool::append_message(std::string queue_id, uint64_t arrival_ms, Envelope envelope,
                                                    uint64_t rfc_size, std::string trace, std::string body) {
  if (!valid_queue_id(queue_id) || envelope.recipients.size() > kMaxRecipients ||
      envelope.sender.size() > kMaxEnvelopeStringBytes || envelope.client_address.size() > kMaxEnvelopeStringBytes ||
      envelope.client_helo.size() > kMaxEnvelopeStringBytes || envelope.envid.size() > kMaxEnvelopeStringBytes ||
      envelope.ret > DsnRet::hdrs || envelope.recipient_dsn.size() > envelope.recipients.size() ||
      !(envelope.dsn_of.empty() || valid_queue_id(envelope.dsn_of))) {
    return absl::InvalidArgumentError("spool: malformed queue id or envelope over limits");
  }
  for (const auto& recipient : envelope.recipients) {
    if (recipient.size() > kMaxEnvelopeStringBytes) {
      return absl::InvalidArgumentError("spool: recipient over limits");
    }
  }
  for (const auto& dsn : envelope.recipient_dsn) {
    if (dsn.orcpt.size() > kMaxEnvelopeStringBytes || (dsn.notify & ~kNotifyAll) != 0) {
      return absl::InvalidArgumentError("spool: recipient DSN parameters over limits");
    }
  }
  const uint64_t wire_bytes = trace.size() + body.size();
  const uint64_t payload_bytes = message_meta_bytes(envelope) + wire_bytes;
  if (payload_bytes > kMaxPayloadBytes ||
      kRecordHeaderBytes + payload_bytes > _options.segment_bytes - kFileHeaderRecordBytes) {
    return absl::ResourceExhaustedError("spool: message larger than a segment");
  }
  PendingRecord record;
  record.type = RecordType::message;
  record.head = encode_message_head(queue_id, arrival_ms, rfc_size, envelope, static_cast<uint32_t>(wire_bytes));
  record.payload_crc = crc32c_extend(
      crc32c_extend(crc32c(record.head.data() + kRecordHeaderBytes, record.head.size() - kRecordHeaderBytes),
                    trace.data(), trace.size()),
      body.data(), body.size());
  record.trace = std::move(trace);
  record.body = std::move(body);
  MessageInfo& info = record.info;
  info.id = std::move(queue_id);
  info.sender = std::move(envelope.sender);
  info.recipients = std::move(envelope.recipients);
  info.rfc_size = rfc_size;
  info.arrival_ms = arrival_ms;
  info.body_8bit = envelope.body_8bit;
  info.smtputf8 = envelope.smtputf8;
  info.client_address = std::move(envelope.client_address);
  info.client_helo = std::move(envelope.client_helo);
  info.dsn_ret = envelope.ret;
  info.dsn_envid = std::move(envelope.envid);
  info.recipient_dsn = std::move(envelope.recipient_dsn);
  info.recipient_dsn.resize(info.recipients.size());  // as recovery has it: one per recipient
  info.dsn_of = std::move(envelope.dsn_of);
  info.recipient_states.resize(info.recipients.size());
  record.ticket = _next_ticket;
  if (auto status = place_message(record); !status.ok()) {
    return status;
  }
  _preallocator->note_id_ms(*id_ms(_current->open.back().info.id));  // for the persisted id floor
  return _next_ticket++;
}

absl::StatusOr<uint64_t> ShardSpool::append_journal(JournalOp op, std::string_view queue_id, uint32_t argument) {
  if (is_outcome(op) || op == JournalOp::checkpoint) {
    return absl::InvalidArgumentError("spool: outcomes go through record_outcome, checkpoints are the spool's");
  }
  return append_journal_entry(JournalEntry{op, std::string(queue_id), argument});
}

absl::StatusOr<uint64_t> ShardSpool::append_journal_entry(JournalEntry entry) {
  if (!valid_queue_id(entry.queue_id)) {
    return absl::InvalidArgumentError("spool: malformed queue id");
  }
  PendingRecord record;
  record.type = RecordType::journal;
  record.op = entry.op;
  const size_t payload_bytes = journal_payload_bytes(entry);
  record.head.resize(kRecordHeaderBytes + payload_bytes);
  record.info.id = entry.queue_id;
  auto* payload = reinterpret_cast<uint8_t*>(record.head.data()) + kRecordHeaderBytes;
  encode_journal_payload(entry, payload);
  record.payload_crc = crc32c(payload, payload_bytes);
  if (is_outcome(entry.op)) {
    record.outcome = std::move(entry);
  }
  record.ticket = _next_ticket++;
  const uint64_t ticket = record.ticket;
  if (_journal->sealed) {
    _journal_waiting.push_back(std::move(record));  // placed in the next journal file
  } else {
    place_in(*_journal, record);
  }
  return ticket;
}

absl::Status ShardSpool::place_message(PendingRecord& record) {
  if (_current == nullptr || _current->end_offset + record.length() > _current->capacity) {
    SpoolFile* next = take_ready_segment();
    if (next == nullptr) {
      ++_metrics.unavailable;
      return absl::UnavailableError("spool: no segment ready (disk full or preallocation behind)");
    }
    SpoolFile* previous = _current;
    _current = next;
    if (previous != nullptr) {
      previous->sealed = true;  // its unused tail stays zero: the clean end for recovery
      if (previous->fd >= 0) {
        ++_open_sealed;
      }
      maybe_unlink(*previous);
      close_idle_sealed(nullptr);
    }
  }
  place_in(*_current, record);
  return absl::OkStatus();
}

void ShardSpool::place_in(SpoolFile& file, PendingRecord& record) {
  SLUICE_ASSERT(!file.sealed);
  SLUICE_ASSERT(file.end_offset + record.length() <= file.capacity);
  record.offset = file.end_offset;
  if (record.snapshot) {
    // Many records, sealed when they were encoded with the sequence numbers they take here.
    record.sequence = file.next_sequence;
    file.next_sequence += record.snapshot_records;
  } else {
    record.sequence = file.next_sequence++;
    RecordHeader header;
    header.type = record.type;
    header.segment_id = file.id;
    header.generation = file.generation;
    header.sequence = record.sequence;
    header.payload_length = static_cast<uint32_t>(record.length() - kRecordHeaderBytes);
    seal_record_header(header, record.payload_crc, reinterpret_cast<uint8_t*>(record.head.data()));
  }
  file.end_offset += record.length();
  ++file.in_flight;
  _open_bytes += record.length();
  ++_open_records;
  file.open.push_back(std::move(record));
  if (!file.in_dirty) {
    file.in_dirty = true;
    _dirty.push_back(&file);
  }
}

ShardSpool::SpoolFile* ShardSpool::take_ready_segment() {
  auto ready = _preallocator->take();
  if (!ready.has_value()) {
    return nullptr;
  }
  auto file = std::make_unique<SpoolFile>();
  file->fd = ready->fd;
  file->id = ready->id;
  file->generation = _generation;
  file->path = std::move(ready->path);
  file->capacity = _options.segment_bytes;
  file->end_offset = kFileHeaderRecordBytes;
  file->next_sequence = 1;
  SpoolFile* raw = file.get();
  _segments[raw->id] = std::move(file);
  ++_metrics.segments_used;
  return raw;
}

void ShardSpool::remove_from_dirty(SpoolFile& file) {
  if (file.in_dirty) {
    _dirty.erase(std::find(_dirty.begin(), _dirty.end(), &file));
    file.in_dirty = false;
  }
}

void ShardSpool::seal(SpoolFile& file, std::vector<Completed>& done) {
  SLUICE_ASSERT(!file.is_journal);
  if (!file.sealed && file.fd >= 0) {
    ++_open_sealed;
  }
  file.sealed = true;
  if (_current == &file) {
    _current = nullptr;
  }
  // Records placed after the hole were never written: give them a place in the next segment.
  std::vector<PendingRecord> unwritten = std::move(file.open);
  file.open.clear();
  remove_from_dirty(file);
  for (auto& record : unwritten) {
    --file.in_flight;
    _open_bytes -= record.length();
    --_open_records;
    if (auto status = place_message(record); !status.ok()) {
      done.push_back(Completed{record.ticket, status, record.info.id});
    }
  }
  maybe_unlink(file);
}

// After a failed journal write or fdatasync the file is never written again: its failed records
// may have reached the disk, and writing other records over them could leave stale ones past the
// new tail that look valid. Records not yet written wait for the next file (rotate_journal).
void ShardSpool::seal_journal() {
  SpoolFile& journal = *_journal;
  journal.sealed = true;
  remove_from_dirty(journal);
  for (auto& record : journal.open) {
    --journal.in_flight;
    _open_bytes -= record.length();
    --_open_records;
    _journal_waiting.push_back(std::move(record));
  }
  journal.open.clear();
}

bool ShardSpool::rotation_due() const {
  // What was appended since the file's snapshot: a snapshot that alone is large must not make
  // every new file due at once.
  return _batch_state == BatchState::idle && _spare.phase == JournalSpare::Phase::ready &&
         (_journal->sealed || _journal->end_offset - _journal->snapshot_end >= _options.journal_rotate_bytes);
}

// Starts the next journal file with a snapshot of the durable state and its checkpoint; older
// files are deleted once the checkpoint is durable. Only between batches: nothing is in flight,
// so the index is exactly what the journal files say, and what waits follows the checkpoint.
void ShardSpool::rotate_journal() {
  SLUICE_ASSERT(rotation_due());
  SLUICE_ASSERT(_journal->in_flight == _journal->open.size(), "nothing of the journal is being written");
  if (!_journal->sealed) {
    seal_journal();  // its unwritten records follow the checkpoint in the new file
  }
  std::unique_ptr<SpoolFile> old = std::move(_journal);
  SLUICE_ASSERT(old->in_flight == 0);
  ::close(old->fd);
  old->fd = -1;
  old->sealed = true;
  _old_journals.push_back(std::move(old));

  _journal = std::make_unique<SpoolFile>();
  _journal->fd = _spare.fd;
  _journal->id = kJournalFileId;
  _journal->generation = _generation;
  _journal->is_journal = true;
  _journal->journal_number = _spare.number;
  _journal->path = _spare.path;
  _journal->capacity = UINT64_MAX;
  _journal->end_offset = kFileHeaderRecordBytes;
  _journal->next_sequence = 1;
  const uint64_t next_number = _spare.number + 1;
  _spare = JournalSpare{};
  _spare.number = next_number;
  ++_metrics.journal_rotations;

  place_snapshot();
  _journal->snapshot_end = _journal->end_offset;
  std::vector<PendingRecord> waiting = std::move(_journal_waiting);
  _journal_waiting.clear();
  for (auto& record : waiting) {
    place_in(*_journal, record);
  }
}

void ShardSpool::place_snapshot() {
  std::vector<JournalEntry> entries;
  for (const auto& [id, segment] : _segments) {
    for (const auto& removed : segment->removed_ids) {
      entries.push_back(JournalEntry{JournalOp::remove, removed, 0});
    }
  }
  for (const auto& unlinked : _unlinked_ids) {
    for (const auto& removed : unlinked.ids) {
      entries.push_back(JournalEntry{JournalOp::remove, removed, 0});
    }
  }
  size_t bytes = 0;
  for (const auto& [id, info] : _index) {
    if (info.status == MessageStatus::held) {
      entries.push_back(JournalEntry{JournalOp::hold, id, 0});
    }
    for (auto& outcome : outcome_snapshot(info)) {  // or the new file would forget them
      bytes += outcome.reply.size() + outcome.remote_mta.size() + kJournalOutcomeBytes;
      entries.push_back(std::move(outcome));
    }
  }
  PendingRecord snapshot;
  snapshot.type = RecordType::journal;
  snapshot.snapshot = true;
  snapshot.snapshot_records = static_cast<uint32_t>(entries.size() + 1);
  snapshot.head.reserve((entries.size() + 1) * (kRecordHeaderBytes + kJournalPayloadBytes) + bytes);
  uint64_t sequence = _journal->next_sequence;
  for (const auto& entry : entries) {
    snapshot.head += encode_journal_record(entry, _journal->generation, sequence++);
  }
  snapshot.head += encode_journal_record(checkpoint_entry(entries.size()), _journal->generation, sequence++);
  place_in(*_journal, snapshot);
}

// A durable journal record's effect on the index. Records of the snapshot change nothing: they
// repeat what the index already says.
void ShardSpool::apply_journal_record(PendingRecord& record) {
  if (record.snapshot) {
    for (auto& old : _old_journals) {
      const uint64_t op_id = _next_op_id++;
      Op op{IoRequest::Kind::unlink, 0, 0, old->path};
      op.journal_file = true;
      _ops.emplace(op_id, std::move(op));
      _unlinks_to_submit.push_back(op_id);
    }
    _old_journals.clear();
    return;
  }
  auto it = _index.find(record.info.id);
  if (it == _index.end()) {
    return;
  }
  if (is_outcome(record.op)) {
    outcome_settled(record);
    apply_outcome(it->second, record.outcome);
    derive_next_attempt(it->second);
    return;
  }
  switch (record.op) {
    case JournalOp::remove: {
      const uint64_t segment_id = it->second.location.segment_id;
      std::string id = std::move(record.info.id);
      _index.erase(it);
      auto segment = _segments.find(segment_id);
      SLUICE_ASSERT(segment != _segments.end() && segment->second->live > 0, "a live message's segment is open");
      --segment->second->live;
      segment->second->removed_ids.push_back(std::move(id));
      maybe_unlink(*segment->second);
      break;
    }
    case JournalOp::hold:
      it->second.status = MessageStatus::held;
      break;
    case JournalOp::release:
      it->second.status = MessageStatus::queued;
      break;
    default:
      break;
  }
}

// An outcome record is durable or failed: it no longer counts as on its way.
void ShardSpool::outcome_settled(const PendingRecord& record) {
  auto it = _index.find(record.info.id);
  if (it == _index.end()) {
    return;
  }
  SLUICE_ASSERT(record.outcome.argument < it->second.recipient_states.size(), "record_outcome checked it");
  RecipientDelivery& recipient = it->second.recipient_states[record.outcome.argument];
  SLUICE_ASSERT(recipient.outcomes_in_flight > 0);
  --recipient.outcomes_in_flight;
  if (is_final(outcome_state(record.op))) {
    recipient.final_in_flight = false;  // durable: the state says final now; failed: may try again
  }
}

void apply_outcome(MessageInfo& info, const JournalEntry& entry) {
  SLUICE_ASSERT(is_outcome(entry.op));
  if (entry.argument >= info.recipient_states.size() || is_final(info.recipient_states[entry.argument].state)) {
    return;  // never written so by this spool; on disk it is ignored rather than trusted
  }
  RecipientDelivery& recipient = info.recipient_states[entry.argument];
  recipient.state = outcome_state(entry.op);
  recipient.attempts = entry.attempts;
  recipient.next_attempt_ms = entry.op == JournalOp::deferred ? entry.next_attempt_ms : 0;
  recipient.last_reply = entry.reply;
  recipient.remote_mta = entry.remote_mta;
  recipient.relayed = entry.relayed;
  info.attempts = std::max(info.attempts, entry.attempts);
  info.last_reply = entry.reply;
}

void derive_next_attempt(MessageInfo& info) {
  std::optional<uint64_t> earliest;
  for (const RecipientDelivery& recipient : info.recipient_states) {
    if (recipient.state == DeliveryState::deferred) {
      earliest = std::min(earliest.value_or(UINT64_MAX), recipient.next_attempt_ms);
    }
  }
  info.next_attempt_ms = earliest.value_or(0);
}

std::vector<JournalEntry> outcome_snapshot(const MessageInfo& info) {
  std::vector<JournalEntry> entries;
  std::optional<size_t> latest;  // a recipient whose reply is the message's: it goes last
  for (size_t i = 0; i < info.recipient_states.size(); ++i) {
    const RecipientDelivery& recipient = info.recipient_states[i];
    if (recipient.state == DeliveryState::pending) {
      continue;
    }
    JournalEntry entry;
    entry.op = outcome_op(recipient.state);
    entry.queue_id = info.id;
    entry.argument = static_cast<uint32_t>(i);
    entry.next_attempt_ms = recipient.state == DeliveryState::deferred ? recipient.next_attempt_ms : 0;
    entry.attempts = recipient.attempts;
    entry.reply = recipient.last_reply;
    entry.remote_mta = recipient.remote_mta;
    entry.relayed = recipient.relayed;
    if (recipient.last_reply == info.last_reply) {
      latest = entries.size();
    }
    entries.push_back(std::move(entry));
  }
  if (latest.has_value()) {
    std::rotate(entries.begin() + static_cast<ptrdiff_t>(*latest), entries.begin() + static_cast<ptrdiff_t>(*latest) + 1,
                entries.end());
  }
  return entries;
}

void ShardSpool::start_spare(uint64_t now_us, std::vector<IoRequest>& out) {
  if (_spare.phase != JournalSpare::Phase::none || now_us < _spare.retry_at_us) {
    return;
  }
  _spare.path = journal_path(_shard_dir, _spare.number);
  _spare.header =
      encode_file_header_record(kJournalFileId, _generation, FileHeaderPayload{0, _options.shard, io::wall_ms()});
  const uint64_t op_id = _next_op_id++;
  Op op{IoRequest::Kind::open, 0, 0, {}};
  op.spare = true;
  _ops.emplace(op_id, std::move(op));
  IoRequest request;
  request.kind = IoRequest::Kind::open;
  request.path = _spare.path.c_str();
  request.open_flags = kJournalOpenFlags;
  request.open_mode = kJournalFileMode;
  request.op_id = op_id;
  out.push_back(request);
  _spare.phase = JournalSpare::Phase::opening;
}

// The half-made file is unlinked (a header-less one left behind would be deleted by recovery,
// but a disk that keeps failing would collect one every retry). After kSpareFailuresMax failures
// in a row, the records waiting for a journal file fail: their callers get an error rather than
// no answer, and a drain can finish.
void ShardSpool::spare_failed(uint64_t now_us, int error, std::vector<Completed>& done) {
  if (_spare.fd >= 0) {
    ::close(_spare.fd);
    const uint64_t op_id = _next_op_id++;
    Op op{IoRequest::Kind::unlink, 0, 0, _spare.path};
    op.journal_file = true;
    _ops.emplace(op_id, std::move(op));
    _unlinks_to_submit.push_back(op_id);
  }
  _spare.fd = -1;
  _spare.phase = JournalSpare::Phase::none;
  ++_spare.number;  // never reuse a name that may exist
  _spare.retry_at_us = now_us + kPreallocRetryMs * 1000;
  ++_metrics.journal_spare_failures;
  if (++_spare.failures_in_a_row >= kSpareFailuresMax && !_journal_waiting.empty()) {
    const absl::Status status = errno_status(error, "spool: no journal file can be made");
    std::vector<PendingRecord> waiting = std::move(_journal_waiting);
    _journal_waiting.clear();
    _journal->in_flight += static_cast<uint32_t>(waiting.size());  // fail_records counts them off the file
    fail_records(*_journal, waiting, status, done);
  }
}

void ShardSpool::spare_prealloc_failed(int error, bool allocated) {
  if (!allocated) {
    undo_preallocation(_spare.fd, _spare.header.size(), error);
  }
  ++_metrics.journal_prealloc_failures;
  if (_options.background_log) {
    _options.background_log(allocated ? zeroing_failure_line(_options.shard, _spare.path, error)
                                      : prealloc_failure_line(_options.shard, _spare.path, error));
  }
}

// The zeros from _spare.zero_offset to the rotation size, as one gathered write (or the first
// kMaxIovPerWrite MiB of them: the next write goes on from where it ended).
IoRequest ShardSpool::spare_zero_write() {
  const std::span<const uint8_t> zeros = zero_chunk();
  _spare.zero_iov.clear();
  for (uint64_t at = _spare.zero_offset; at < _options.journal_rotate_bytes && _spare.zero_iov.size() < kMaxIovPerWrite;) {
    const size_t length = static_cast<size_t>(std::min<uint64_t>(zeros.size(), _options.journal_rotate_bytes - at));
    _spare.zero_iov.push_back(iovec{const_cast<uint8_t*>(zeros.data()), length});  // only read
    at += length;
  }
  SLUICE_ASSERT(!_spare.zero_iov.empty());
  IoRequest request;
  request.kind = IoRequest::Kind::write;
  request.fd = _spare.fd;
  request.offset = _spare.zero_offset;
  request.iov = _spare.zero_iov.data();
  request.iov_count = static_cast<uint32_t>(_spare.zero_iov.size());
  return request;
}

void ShardSpool::on_spare_complete(int32_t result, std::vector<Completed>& done) {
  using Phase = JournalSpare::Phase;
  const uint64_t now_us = io::monotonic_us();
  // Preallocation is an optimisation: when it fails the file works without it.
  if (_spare.phase == Phase::allocating && result < 0) {
    spare_prealloc_failed(-result, false);  // unpreallocated
    _spare.zero_offset = _options.journal_rotate_bytes;
    result = 0;
  } else if (_spare.phase == Phase::zeroing && result <= 0) {
    spare_prealloc_failed(result < 0 ? -result : EIO, true);  // allocated, zeros not all written
    _spare.zero_offset = _options.journal_rotate_bytes;
    result = 0;
  } else if (_spare.phase == Phase::zeroing) {
    _spare.zero_offset += static_cast<uint64_t>(result);
  }
  if (result < 0 || (_spare.phase == Phase::writing && static_cast<size_t>(result) != _spare.header.size())) {
    spare_failed(now_us, result < 0 ? -result : EIO, done);
    return;
  }
  IoRequest request;
  request.op_id = _next_op_id++;
  Op op{IoRequest::Kind::write, 0, 0, {}};
  op.spare = true;
  switch (_spare.phase) {
    case Phase::opening:
      _spare.fd = result;
      _spare.iov = iovec{_spare.header.data(), _spare.header.size()};
      request.kind = IoRequest::Kind::write;
      request.fd = _spare.fd;
      request.iov = &_spare.iov;
      request.iov_count = 1;
      _spare.phase = Phase::writing;
      break;
    case Phase::writing:
      if (_options.journal_rotate_bytes > _spare.header.size()) {
        // fallocate first: a full disk says so at once, before any zero is written.
        request.kind = IoRequest::Kind::fallocate;
        request.fd = _spare.fd;
        request.offset = 0;
        request.length = _options.journal_rotate_bytes;
        _spare.zero_offset = _spare.header.size();
        _spare.phase = Phase::allocating;
        break;
      }
      [[fallthrough]];
    case Phase::allocating:
    case Phase::zeroing:
      if (_spare.zero_offset < _options.journal_rotate_bytes) {
        // Real zeros over fallocate's unwritten extents, as the segments have them: otherwise
        // the first write to each extent costs its conversion in the append's fdatasync.
        const uint64_t op_id = request.op_id;
        request = spare_zero_write();
        request.op_id = op_id;
        _spare.phase = Phase::zeroing;
        break;
      }
      request.kind = IoRequest::Kind::fdatasync;
      request.fd = _spare.fd;
      _spare.phase = Phase::syncing;
      break;
    case Phase::syncing:
      request.kind = IoRequest::Kind::fsync;
      request.fd = _dir_fd;
      ++_dir_syncs_issued;
      _spare.phase = Phase::syncing_dir;
      break;
    case Phase::syncing_dir: {
      _dir_syncs_done = _dir_syncs_issued;
      while (!_unlinked_ids.empty() && _unlinked_ids.front().dir_sync_needed <= _dir_syncs_done) {
        _unlinked_ids.pop_front();
      }
      _spare.phase = Phase::ready;
      _spare.failures_in_a_row = 0;
      return;
    }
    default:
      SLUICE_ASSERT(false, "a spare completion in no phase that issues one");
  }
  op.kind = request.kind;
  _ops.emplace(request.op_id, std::move(op));
  _spare_requests.push_back(request);
}

void ShardSpool::fail_records(SpoolFile& file, std::vector<PendingRecord>& records, const absl::Status& status,
                              std::vector<Completed>& done) {
  for (auto& record : records) {
    SLUICE_ASSERT(file.in_flight > 0);
    --file.in_flight;
    if (record.type == RecordType::journal && record.op == JournalOp::remove && !record.snapshot) {
      if (auto it = _index.find(record.info.id); it != _index.end()) {
        it->second.removal_pending = false;  // not removed: a later remove may try again
      }
    }
    if (record.type == RecordType::journal && is_outcome(record.op) && !record.snapshot) {
      outcome_settled(record);  // not recorded: the index stays as it was
    }
    if (record.ticket != 0) {
      done.push_back(Completed{record.ticket, status, record.info.id});
    }
  }
  records.clear();
}

void ShardSpool::maybe_unlink(SpoolFile& file) {
  if (file.is_journal || !file.sealed || file.unlinked || file.live > 0 || file.in_flight > 0 || !file.open.empty()) {
    return;
  }
  // Close while the file is still linked (cheap), then unlink through the ring: freeing 64 MiB
  // of extents is slow and belongs on a worker, not here.
  if (file.fd >= 0) {
    if (holds_sealed_descriptor(file)) {
      --_open_sealed;
    }
    ::close(file.fd);
  }
  file.fd = -1;
  file.unlinked = true;
  const uint64_t op_id = _next_op_id++;
  _ops.emplace(op_id, Op{IoRequest::Kind::unlink, 0, file.id, file.path});
  _unlinks_to_submit.push_back(op_id);
  ++_metrics.segments_unlinked;
}

void ShardSpool::collect_io(uint64_t now_us, std::vector<IoRequest>& out) {
  for (uint64_t op_id : _unlinks_to_submit) {
    IoRequest request;
    request.kind = IoRequest::Kind::unlink;
    request.path = _ops.at(op_id).path.c_str();
    request.op_id = op_id;
    out.push_back(request);
  }
  _unlinks_to_submit.clear();
  for (const IoRequest& request : _spare_requests) {
    out.push_back(request);
  }
  _spare_requests.clear();
  start_spare(now_us, out);
  if (rotation_due()) {
    rotate_journal();
  }

  if (_batch_state == BatchState::active) {
    for (auto& write : _batch) {
      if (write.needs_submit && !write.sync_in_flight) {
        emit_write(write, out);  // the rest of a short write, once its linked fdatasync is back
      }
      if (write.needs_sync) {
        emit_sync(write, false, out);  // its own writes are all complete
      }
    }
  }
  if (_batch_state == BatchState::idle && _open_records > 0 && now_us >= commit_deadline_us()) {
    close_batch(now_us, out);
  }
}

uint64_t ShardSpool::commit_pace_us() const {
  const uint64_t average = sync_latency_average_us();
  if (_options.commit_interval_us == 0 || average * kCheapSyncDivisor <= _options.commit_interval_us) {
    return 0;
  }
  return std::min(_options.commit_interval_us, kPaceSyncMultiple * average);
}

void ShardSpool::note_sync_latency(uint64_t latency_us) {
  const uint64_t sample = latency_us * kSyncAverageScale;
  if (_metrics.fsyncs == 0) {
    _sync_average_scaled = sample;  // the first one: nothing to average with yet
  } else if (sample >= _sync_average_scaled) {
    _sync_average_scaled += (sample - _sync_average_scaled) / kSyncAverageWeight;
  } else {
    _sync_average_scaled -= (_sync_average_scaled - sample) / kSyncAverageWeight;
  }
}

void ShardSpool::close_batch(uint64_t now_us, std::vector<IoRequest>& out) {
  SLUICE_ASSERT(_batch.empty());
  _last_batch_start_us = now_us;
  std::vector<SpoolFile*> still_dirty;
  for (SpoolFile* file : _dirty) {
    FileWrite write;
    write.file = file;
    size_t take = 0;
    size_t iov_count = 0;
    for (const auto& record : file->open) {
      const size_t needed = 1 + (record.trace.empty() ? 0 : 1) + (record.body.empty() ? 0 : 1);
      if (iov_count + needed > kMaxIovPerWrite) {
        break;
      }
      iov_count += needed;
      ++take;
    }
    SLUICE_ASSERT(take > 0);
    write.records.reserve(take);
    std::move(file->open.begin(), file->open.begin() + static_cast<ptrdiff_t>(take), std::back_inserter(write.records));
    file->open.erase(file->open.begin(), file->open.begin() + static_cast<ptrdiff_t>(take));
    if (file->open.empty()) {
      file->in_dirty = false;
    } else {
      still_dirty.push_back(file);
    }
    _batch.push_back(std::move(write));
  }
  _dirty = std::move(still_dirty);
  // iovecs are built only now that the records have stopped moving (a short body lives inline).
  for (auto& write : _batch) {
    write.start_offset = write.records.front().offset;
    write.start_sequence = write.records.front().sequence;
    write.offset = write.start_offset;
    write.iov.reserve(3 * write.records.size());
    uint64_t expected_offset = write.start_offset;
    for (auto& record : write.records) {
      SLUICE_ASSERT(record.offset == expected_offset);
      expected_offset += record.length();
      write.iov.push_back(iovec{record.head.data(), record.head.size()});
      if (!record.trace.empty()) {
        write.iov.push_back(iovec{record.trace.data(), record.trace.size()});
      }
      if (!record.body.empty()) {
        write.iov.push_back(iovec{record.body.data(), record.body.size()});
      }
      write.bytes_left += record.length();
      _open_bytes -= record.length();
      --_open_records;
    }
  }
  _batch_state = BatchState::active;
  for (auto& write : _batch) {
    emit_write(write, out);
  }
}

void ShardSpool::emit_write(FileWrite& write, std::vector<IoRequest>& out) {
  const uint64_t op_id = _next_op_id++;
  const size_t index = static_cast<size_t>(&write - _batch.data());
  _ops.emplace(op_id, Op{IoRequest::Kind::write, index, write.file->id, {}});
  IoRequest request;
  request.kind = IoRequest::Kind::write;
  request.fd = write.file->fd;
  request.offset = write.offset;
  request.iov = write.iov.data() + write.iov_first;
  request.iov_count = static_cast<uint32_t>(write.iov.size() - write.iov_first);
  request.op_id = op_id;
  request.link_next = _options.link_fdatasync;
  out.push_back(request);
  write.in_flight = true;
  write.needs_submit = false;
  if (_options.link_fdatasync) {
    emit_sync(write, true, out);  // runs when this write completed in full, cancelled otherwise
  }
}

void ShardSpool::on_io_complete(uint64_t op_id, int32_t result, std::vector<Completed>& done) {
  auto it = _ops.find(op_id);
  SLUICE_ASSERT(it != _ops.end(), "completion for an operation the spool did not issue");
  const Op op = std::move(it->second);
  _ops.erase(it);
  if (op.spare) {
    on_spare_complete(result, done);
    return;
  }
  switch (op.kind) {
    case IoRequest::Kind::write:
      on_write_complete(op.write_index, result, done);
      break;
    case IoRequest::Kind::fdatasync:
      on_sync_complete(op.write_index, result, done);
      break;
    case IoRequest::Kind::unlink:
      if (!op.journal_file) {
        // Until a directory fsync covers the unlink, snapshots still say its messages are gone.
        // A failed unlink leaves the dead file for recovery to delete: then they must say so
        // for good, or the file's messages would come back at the next start.
        auto segment = _segments.find(op.segment_id);
        SLUICE_ASSERT(segment != _segments.end());
        const bool gone = result == 0 || result == -ENOENT;
        if (!segment->second->removed_ids.empty()) {
          _unlinked_ids.push_back(
              UnlinkedIds{gone ? _dir_syncs_issued + 1 : UINT64_MAX, std::move(segment->second->removed_ids)});
        }
        _segments.erase(segment);
      }
      break;
    case IoRequest::Kind::open:
    case IoRequest::Kind::fsync:
    case IoRequest::Kind::fallocate:
      SLUICE_ASSERT(false, "open, fsync and fallocate are issued only for the journal spare");
  }
}

void ShardSpool::emit_sync(FileWrite& write, bool linked, std::vector<IoRequest>& out) {
  SLUICE_ASSERT(!write.needs_submit && !write.sync_in_flight && !write.failed,
                "one fdatasync of a file at a time, never for a failed write");
  SLUICE_ASSERT(linked ? write.in_flight && !out.empty() && out.back().link_next : !write.in_flight,
                "an fdatasync only linked to the write before it, or after every write it covers completed");
  const uint64_t op_id = _next_op_id++;
  const size_t index = static_cast<size_t>(&write - _batch.data());
  _ops.emplace(op_id, Op{IoRequest::Kind::fdatasync, index, write.file->id, {}});
  IoRequest request;
  request.kind = IoRequest::Kind::fdatasync;
  request.fd = write.file->fd;
  request.op_id = op_id;
  out.push_back(request);
  write.needs_sync = false;
  write.sync_in_flight = true;
  write.sync_linked = linked;
  write.sync_started_us = _options.clock_us ? _options.clock_us() : io::monotonic_us();
}

void ShardSpool::on_write_complete(size_t index, int32_t result, std::vector<Completed>& done) {
  SLUICE_ASSERT(_batch_state == BatchState::active && index < _batch.size());
  FileWrite& write = _batch[index];
  SLUICE_ASSERT(write.in_flight);
  write.in_flight = false;
  if (result <= 0) {
    // 0 for a non-empty write means no progress: treat as an error rather than loop.
    ++_metrics.write_errors;
    write.failed = true;
    write.finished = !write.sync_in_flight;  // a linked fdatasync still owes its CQE
    fail_records(*write.file, write.records, io_error(result, "spool write"), done);
    if (write.file->is_journal) {
      seal_journal();
    } else {
      seal(*write.file, done);
    }
  } else {
    auto written = static_cast<uint64_t>(result);
    SLUICE_ASSERT(written <= write.bytes_left);
    _metrics.bytes_written += written;
    write.bytes_left -= written;
    write.offset += written;
    while (written > 0) {
      iovec& iov = write.iov[write.iov_first];
      if (iov.iov_len <= written) {
        written -= iov.iov_len;
        ++write.iov_first;
      } else {
        iov.iov_base = static_cast<char*>(iov.iov_base) + written;
        iov.iov_len -= written;
        written = 0;
      }
    }
    write.needs_submit = write.bytes_left > 0;
    // Issued by collect_io, with the other files' own, unless it went out linked to this write.
    write.needs_sync = write.bytes_left == 0 && !write.sync_in_flight;
  }
  if (write.sync_result_waiting) {
    write.sync_result_waiting = false;
    on_sync_complete(index, write.sync_result, done);  // its CQE came first
    return;
  }
  finish_batch_if_done();
}

// The batch is over when every file's write failed or its fdatasync completed.
void ShardSpool::finish_batch_if_done() {
  for (const auto& write : _batch) {
    if (!write.finished) {
      return;
    }
  }
  _batch.clear();
  _batch_state = BatchState::idle;
}

void ShardSpool::on_sync_complete(size_t index, int32_t result, std::vector<Completed>& done) {
  SLUICE_ASSERT(_batch_state == BatchState::active && index < _batch.size());
  FileWrite& write = _batch[index];
  SLUICE_ASSERT(write.sync_in_flight);
  if (write.in_flight) {
    // Linked, and the kernel posted its CQE before the write's: nothing is known until that one.
    SLUICE_ASSERT(write.sync_linked && !write.sync_result_waiting);
    write.sync_result_waiting = true;
    write.sync_result = result;
    return;
  }
  write.sync_in_flight = false;
  const bool linked = write.sync_linked;
  write.sync_linked = false;
  if (write.failed) {
    // Its write failed and the records with it; the linked fdatasync was cancelled (or ran).
    write.finished = true;
    finish_batch_if_done();
    return;
  }
  if (linked && (result == -ECANCELED || (result == 0 && write.bytes_left > 0))) {
    // It never ran (the link broke on a short write), or it covered only the part written: the
    // rest goes out with an fdatasync of its own (collect_io). Cancelled though the write was
    // complete (nothing else cancels it): issued once more, after the write.
    write.needs_sync = write.bytes_left == 0;
    return;
  }
  SLUICE_ASSERT(result < 0 || write.bytes_left == 0, "an fdatasync that covers the records follows all of their writes");
  write.finished = true;
  write.needs_submit = false;  // a failed fdatasync (even after a short write) ends the file's part
  const uint64_t latency_us =
      (_options.clock_us ? _options.clock_us() : io::monotonic_us()) - write.sync_started_us;
  note_sync_latency(latency_us);
  size_t bucket = 0;
  while (bucket < kFsyncLatencyBoundsUs.size() && latency_us > kFsyncLatencyBoundsUs[bucket]) {
    ++bucket;
  }
  ++_metrics.fsync_latency_bucket[bucket];
  _metrics.fsync_latency_sum_us += latency_us;
  SpoolFile& file = *write.file;
  if (result < 0) {
    // Never retried as success: after a failed fdatasync the page cache may have dropped the data.
    ++_metrics.fsync_errors;
    write.failed = true;
    fail_records(file, write.records, io_error(result, "spool fdatasync"), done);
    if (file.is_journal) {
      seal_journal();
    } else {
      seal(file, done);
    }
  } else {
    ++_metrics.fsyncs;
    uint64_t messages = 0;
    for (auto& record : write.records) {
      --file.in_flight;
      if (record.ticket != 0) {
        done.push_back(Completed{record.ticket, absl::OkStatus(), record.info.id});
      }
      if (record.type == RecordType::message) {
        ++messages;
        ++file.live;
        MessageInfo& info = record.info;
        const uint64_t meta_bytes = record.head.size();
        info.location = MessageLocation{file.id, record.offset, record.offset + meta_bytes, record.wire_length()};
        std::string id = info.id;
        _index.insert_or_assign(std::move(id), std::move(info));
      } else {
        apply_journal_record(record);
      }
    }
    write.records.clear();
    if (messages > 0) {
      _metrics.messages_per_fsync_sum += messages;
      ++_metrics.messages_per_fsync_count;
    }
    maybe_unlink(file);
  }
  finish_batch_if_done();
  close_idle_sealed(nullptr);  // a sealed segment whose last records just became durable
}

uint64_t ShardSpool::next_deadline_us() const {
  if (!_unlinks_to_submit.empty() || !_spare_requests.empty() || rotation_due()) {
    return 0;
  }
  // Records waiting for the next journal file are retried with the spare; the commits of
  // everything else keep their own pace (the rest of this function).
  const uint64_t spare_retry_us =
      _spare.phase == JournalSpare::Phase::none && (!_journal_waiting.empty() || _journal->sealed) ? _spare.retry_at_us
                                                                                                   : UINT64_MAX;
  return std::min(spare_retry_us, commit_deadline_us());
}

uint64_t ShardSpool::commit_deadline_us() const {
  if (_batch_state == BatchState::active) {
    for (const auto& write : _batch) {
      if ((write.needs_submit && !write.sync_in_flight) || write.needs_sync) {
        return 0;
      }
    }
    return UINT64_MAX;
  }
  if (_open_records == 0) {
    return UINT64_MAX;
  }
  if (_open_bytes >= _options.commit_batch_bytes || 2 * _open_records >= kMaxIovPerWrite) {
    return 0;
  }
  return _last_batch_start_us + commit_pace_us();  // 0 before the first batch
}

bool ShardSpool::idle() const {
  return _open_records == 0 && _batch_state == BatchState::idle && _ops.empty() && _unlinks_to_submit.empty() &&
         _journal_waiting.empty() && _spare_requests.empty();
}

uint64_t ShardSpool::free_bytes() const {
  return _preallocator->free_bytes();
}

uint64_t ShardSpool::ready_segments() const {
  return _preallocator->ready();
}

bool ShardSpool::has_room_for(uint64_t wire_octets, uint64_t envelope_octets) const {
  // The caller's envelope figure is an estimate; the allowance covers the fixed fields.
  constexpr uint64_t kEnvelopeAllowanceBytes = 4 << 10;
  const uint64_t record_bytes = kRecordHeaderBytes + kEnvelopeAllowanceBytes + envelope_octets + wire_octets;
  if (_current != nullptr && !_current->sealed && _current->end_offset + record_bytes <= _current->capacity) {
    return true;
  }
  return ready_segments() > 0;
}

bool ShardSpool::below_min_free() const {
  return free_bytes() < _options.min_free_bytes;
}

std::vector<MessageInfo> ShardSpool::list() const {
  std::vector<MessageInfo> messages;
  messages.reserve(_index.size());
  for (const auto& [id, info] : _index) {
    messages.push_back(info);
  }
  std::sort(messages.begin(), messages.end(), [](const MessageInfo& a, const MessageInfo& b) { return a.id < b.id; });
  return messages;
}

std::optional<MessageInfo> ShardSpool::find(std::string_view id) const {
  auto it = _index.find(to_absl(id));
  if (it == _index.end()) {
    return std::nullopt;
  }
  return it->second;
}

bool ShardSpool::holds_sealed_descriptor(const SpoolFile& file) const {
  return !file.is_journal && file.sealed && !file.unlinked && file.fd >= 0;
}

// Closes the least recently read sealed segments beyond the cap. One still being written (its
// last records in the batch) keeps its descriptor until they complete.
void ShardSpool::close_idle_sealed(const SpoolFile* keep) {
  while (_open_sealed > _options.open_sealed_segments_max) {
    SpoolFile* oldest = nullptr;
    for (auto& [id, file] : _segments) {
      if (file.get() != keep && holds_sealed_descriptor(*file) && file->in_flight == 0 && file->open.empty() &&
          (oldest == nullptr || file->last_read < oldest->last_read)) {
        oldest = file.get();
      }
    }
    if (oldest == nullptr) {
      return;  // all busy: the next seal or read tries again
    }
    ::close(oldest->fd);
    oldest->fd = -1;
    --_open_sealed;
  }
}

std::string ShardSpool::segment_path(uint64_t segment_id) const {
  auto it = _segments.find(segment_id);
  return it == _segments.end() ? std::string() : it->second->path;
}

int ShardSpool::segment_fd(uint64_t segment_id) {
  auto it = _segments.find(segment_id);
  if (it == _segments.end() || it->second->unlinked) {
    return -1;
  }
  SpoolFile& file = *it->second;
  file.last_read = ++_read_clock;
  if (file.fd < 0) {
    SLUICE_ASSERT(file.sealed, "only sealed segments are ever closed");
    file.fd = ::open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (file.fd < 0) {
      return -1;
    }
    ++_open_sealed;
    close_idle_sealed(&file);
  }
  return file.fd;
}

absl::StatusOr<std::string> ShardSpool::read_message(std::string_view id) {
  auto it = _index.find(to_absl(id));
  if (it == _index.end()) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  const MessageLocation& location = it->second.location;
  const int fd = segment_fd(location.segment_id);
  if (fd < 0) {
    return errno_status(errno, "spool: open the message's segment");
  }
  std::string bytes(location.wire_length, '\0');
  uint64_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(location.wire_offset + done));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return errno_status(n < 0 ? errno : EIO, "spool read");
    }
    done += static_cast<uint64_t>(n);
  }
  return bytes;
}

absl::StatusOr<uint64_t> ShardSpool::remove(std::string_view id) {
  auto it = _index.find(to_absl(id));
  if (it == _index.end() || it->second.removal_pending) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  auto ticket = append_journal(JournalOp::remove, id);
  if (ticket.ok()) {
    it->second.removal_pending = true;
  }
  return ticket;
}

absl::StatusOr<uint64_t> ShardSpool::hold(std::string_view id) {
  if (!_index.contains(to_absl(id))) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  return append_journal(JournalOp::hold, id);
}

absl::StatusOr<uint64_t> ShardSpool::release(std::string_view id) {
  if (!_index.contains(to_absl(id))) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  return append_journal(JournalOp::release, id);
}

absl::StatusOr<uint64_t> ShardSpool::record_outcome(std::string_view id, uint32_t recipient, RecipientOutcome outcome) {
  auto it = _index.find(to_absl(id));
  if (it == _index.end() || it->second.removal_pending) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  if (outcome.state == DeliveryState::pending) {
    return absl::InvalidArgumentError("spool: pending is not an outcome");
  }
  if (outcome.relayed && outcome.state != DeliveryState::delivered) {
    return absl::InvalidArgumentError("spool: only a delivery is relayed");
  }
  if (recipient >= it->second.recipient_states.size()) {
    return absl::InvalidArgumentError(absl::StrCat("spool: message ", to_absl(id), " has no recipient ", recipient));
  }
  RecipientDelivery& state = it->second.recipient_states[recipient];
  if (is_final(state.state) || state.final_in_flight) {
    return absl::InvalidArgumentError(absl::StrCat("spool: recipient ", recipient, " of ", to_absl(id), " is final"));
  }
  JournalEntry entry;
  entry.op = outcome_op(outcome.state);
  entry.queue_id = std::string(id);
  entry.argument = recipient;
  entry.next_attempt_ms = outcome.state == DeliveryState::deferred ? outcome.next_attempt_ms : 0;
  // This attempt, after the durable ones and those on their way (a failed one leaves a gap).
  const uint64_t attempts = uint64_t{state.attempts} + state.outcomes_in_flight + 1;
  entry.attempts = static_cast<uint32_t>(std::min<uint64_t>(attempts, UINT32_MAX));
  entry.reply = bounded(std::move(outcome.last_reply), kMaxReplyBytes);
  entry.remote_mta = bounded(std::move(outcome.remote_mta), kMaxRemoteMtaBytes);
  entry.relayed = outcome.relayed;
  auto ticket = append_journal_entry(std::move(entry));
  if (ticket.ok()) {
    ++state.outcomes_in_flight;
    state.final_in_flight = is_final(outcome.state);
  }
  return ticket;
}

}  // namespace sluice::spool
