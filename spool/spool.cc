// The shard's spool: record placement in segments and the journal, the group-commit state
// machine, and the queue index. Sans-I/O on the data path: it only returns IoRequests and reacts
// to their completions. Must never report a ticket OK before an fdatasync covering its record
// completed OK, never issue an fdatasync before the CQEs of the writes it covers, never have two
// fdatasyncs in flight, and never append to a segment after a hole (a failed write seals it).
#include "spool/spool.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <ctime>

#include "absl/strings/str_cat.h"
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

}  // namespace

absl::StatusOr<std::unique_ptr<ShardSpool>> ShardSpool::open(const SpoolOptions& options, RecoveredShard recovered) {
  if (options.segment_bytes < kMinSegmentBytes || options.shard >= kIdMaxShards || options.dir.empty() ||
      recovered.shard != options.shard || recovered.shard_dir.empty()) {
    return absl::InvalidArgumentError("spool: bad options or recovery of another shard");
  }
  std::unique_ptr<ShardSpool> spool(new ShardSpool(options, recovered));
  for (const auto& segment : recovered.segments) {
    const int fd = ::open(segment.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return errno_status(errno, absl::StrCat("open ", segment.path));
    }
    auto file = std::make_unique<SpoolFile>();
    file->fd = fd;
    file->id = segment.id;
    file->path = segment.path;
    file->capacity = options.segment_bytes;
    file->end_offset = segment.end_offset;
    file->sealed = true;  // never append after a possibly torn tail
    file->live = segment.live_messages;
    spool->_segments.emplace(segment.id, std::move(file));
  }
  for (auto& message : recovered.messages) {
    std::string id = message.id;
    spool->_index.emplace(std::move(id), std::move(message));
  }
  auto& journal = *spool->_journal;
  journal.path = recovered.shard_dir + "/journal";
  journal.fd = ::open(journal.path.c_str(), O_RDWR | O_CLOEXEC);
  if (journal.fd < 0) {
    return errno_status(errno, absl::StrCat("open ", journal.path));
  }
  journal.end_offset = recovered.journal_end_offset;
  journal.next_sequence = recovered.journal_next_sequence;
  const std::string idfloor = recovered.shard_dir + "/idfloor";
  const int idfloor_fd = ::open(idfloor.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (idfloor_fd < 0) {
    return errno_status(errno, absl::StrCat("open ", idfloor));
  }
  spool->_preallocator =
      std::make_unique<SegmentPreallocator>(recovered.shard_dir, options.shard, recovered.generation,
                                            options.segment_bytes, recovered.next_segment_id, idfloor_fd,
                                            options.background_log);
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
      envelope.client_helo.size() > kMaxEnvelopeStringBytes) {
    return absl::InvalidArgumentError("spool: malformed queue id or envelope over limits");
  }
  for (const auto& recipient : envelope.recipients) {
    if (recipient.size() > kMaxEnvelopeStringBytes) {
      return absl::InvalidArgumentError("spool: recipient over limits");
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
  record.ticket = _next_ticket;
  if (auto status = place_message(record); !status.ok()) {
    return status;
  }
  _preallocator->note_id_ms(*id_ms(_current->open.back().info.id));  // for the persisted id floor
  return _next_ticket++;
}

absl::StatusOr<uint64_t> ShardSpool::append_journal(JournalOp op, std::string_view queue_id, uint32_t argument) {
  if (!valid_queue_id(queue_id)) {
    return absl::InvalidArgumentError("spool: malformed queue id");
  }
  PendingRecord record;
  record.type = RecordType::journal;
  record.head.resize(kRecordHeaderBytes + kJournalPayloadBytes);
  record.info.id = std::string(queue_id);
  auto* payload = reinterpret_cast<uint8_t*>(record.head.data()) + kRecordHeaderBytes;
  encode_journal_payload(JournalEntry{op, record.info.id, argument}, payload);
  record.payload_crc = crc32c(payload, kJournalPayloadBytes);
  record.ticket = _next_ticket++;
  const uint64_t ticket = record.ticket;
  place_in(*_journal, record);
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
      maybe_unlink(*previous);
    }
  }
  place_in(*_current, record);
  return absl::OkStatus();
}

void ShardSpool::place_in(SpoolFile& file, PendingRecord& record) {
  assert(!file.sealed);
  assert(file.end_offset + record.length() <= file.capacity);
  record.offset = file.end_offset;
  record.sequence = file.next_sequence++;
  RecordHeader header;
  header.type = record.type;
  header.segment_id = file.id;
  header.generation = file.generation;
  header.sequence = record.sequence;
  header.payload_length = static_cast<uint32_t>(record.length() - kRecordHeaderBytes);
  seal_record_header(header, record.payload_crc, reinterpret_cast<uint8_t*>(record.head.data()));
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
  assert(!file.is_journal);
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

void ShardSpool::rewind_journal(const FileWrite& write, std::vector<Completed>& done) {
  (void)done;
  // The journal is not preallocated: rather than sealing it, write again from where the failed
  // write began. Records placed after it move back, renumbered.
  SpoolFile& journal = *_journal;
  std::vector<PendingRecord> unwritten = std::move(journal.open);
  journal.open.clear();
  remove_from_dirty(journal);
  journal.end_offset = write.start_offset;
  journal.next_sequence = write.start_sequence;
  for (auto& record : unwritten) {
    --journal.in_flight;
    _open_bytes -= record.length();
    --_open_records;
    place_in(journal, record);
  }
}

void ShardSpool::fail_records(SpoolFile& file, std::vector<PendingRecord>& records, const absl::Status& status,
                              std::vector<Completed>& done) {
  for (auto& record : records) {
    assert(file.in_flight > 0);
    --file.in_flight;
    done.push_back(Completed{record.ticket, status, record.info.id});
  }
  records.clear();
}

void ShardSpool::maybe_unlink(SpoolFile& file) {
  if (file.is_journal || !file.sealed || file.unlinked || file.live > 0 || file.in_flight > 0 || !file.open.empty()) {
    return;
  }
  // Close while the file is still linked (cheap), then unlink through the ring: freeing 64 MiB
  // of extents is slow and belongs on a worker, not here.
  ::close(file.fd);
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

  if (_batch_state == BatchState::writing) {
    for (auto& write : _batch) {
      if (write.needs_submit) {
        emit_write(write, out);  // the rest of a short write
      }
    }
  }
  if (_batch_state == BatchState::syncing && !_sync_in_flight) {
    assert(_sync_index < _batch.size() && !_batch[_sync_index].failed);
    FileWrite& write = _batch[_sync_index];
    const uint64_t op_id = _next_op_id++;
    _ops.emplace(op_id, Op{IoRequest::Kind::fdatasync, _sync_index, write.file->id, {}});
    IoRequest request;
    request.kind = IoRequest::Kind::fdatasync;
    request.fd = write.file->fd;
    request.op_id = op_id;
    out.push_back(request);
    _sync_in_flight = true;
    _sync_op_id = op_id;
    _sync_started_us = io::monotonic_us();
    _last_sync_issue_us = now_us;
    _synced_once = true;
  }
  if (_batch_state == BatchState::idle && _open_records > 0) {
    const bool batch_full = _open_bytes >= _options.commit_batch_bytes || 2 * _open_records >= kMaxIovPerWrite;
    if (batch_full || !_synced_once || now_us >= _last_sync_issue_us + _options.commit_interval_us) {
      close_batch(out);
    }
  }
}

void ShardSpool::close_batch(std::vector<IoRequest>& out) {
  assert(_batch.empty());
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
    assert(take > 0);
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
      assert(record.offset == expected_offset);
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
  _batch_state = BatchState::writing;
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
  out.push_back(request);
  write.in_flight = true;
  write.needs_submit = false;
}

void ShardSpool::on_io_complete(uint64_t op_id, int32_t result, std::vector<Completed>& done) {
  auto it = _ops.find(op_id);
  assert(it != _ops.end());
  if (it == _ops.end()) {
    return;
  }
  const Op op = std::move(it->second);
  _ops.erase(it);
  switch (op.kind) {
    case IoRequest::Kind::write:
      on_write_complete(op.write_index, result, done);
      break;
    case IoRequest::Kind::fdatasync:
      assert(op_id == _sync_op_id);
      on_sync_complete(result, done);
      break;
    case IoRequest::Kind::unlink:
      _segments.erase(op.segment_id);  // a failed unlink leaves a dead file recovery deletes
      break;
  }
}

void ShardSpool::on_write_complete(size_t index, int32_t result, std::vector<Completed>& done) {
  assert(_batch_state == BatchState::writing && index < _batch.size());
  FileWrite& write = _batch[index];
  write.in_flight = false;
  if (result <= 0) {
    // 0 for a non-empty write means no progress: treat as an error rather than loop.
    ++_metrics.write_errors;
    write.failed = true;
    fail_records(*write.file, write.records, io_error(result, "spool write"), done);
    if (write.file->is_journal) {
      rewind_journal(write, done);
    } else {
      seal(*write.file, done);
    }
  } else {
    auto written = static_cast<uint64_t>(result);
    assert(written <= write.bytes_left);
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
  }
  finish_writes_if_done();
}

void ShardSpool::finish_writes_if_done() {
  for (const auto& write : _batch) {
    if (write.in_flight || write.needs_submit) {
      return;
    }
  }
  _batch_state = BatchState::syncing;
  _sync_index = 0;
  finish_sync_if_done();
}

// Skips writes that failed; when no fdatasync is left to issue, the batch is over.
void ShardSpool::finish_sync_if_done() {
  while (_sync_index < _batch.size() && _batch[_sync_index].failed) {
    ++_sync_index;
  }
  if (_sync_index == _batch.size()) {
    _batch.clear();
    _batch_state = BatchState::idle;
  }
}

void ShardSpool::on_sync_complete(int32_t result, std::vector<Completed>& done) {
  assert(_batch_state == BatchState::syncing && _sync_in_flight);
  _sync_in_flight = false;
  const uint64_t latency_us = io::monotonic_us() - _sync_started_us;
  size_t bucket = 0;
  while (bucket < kFsyncLatencyBoundsUs.size() && latency_us > kFsyncLatencyBoundsUs[bucket]) {
    ++bucket;
  }
  ++_metrics.fsync_latency_bucket[bucket];
  _metrics.fsync_latency_sum_us += latency_us;
  FileWrite& write = _batch[_sync_index];
  SpoolFile& file = *write.file;
  if (result < 0) {
    // Never retried as success: after a failed fdatasync the page cache may have dropped the data.
    ++_metrics.fsync_errors;
    write.failed = true;
    fail_records(file, write.records, io_error(result, "spool fdatasync"), done);
    if (file.is_journal) {
      rewind_journal(write, done);
    } else {
      seal(file, done);
    }
  } else {
    ++_metrics.fsyncs;
    uint64_t messages = 0;
    for (auto& record : write.records) {
      --file.in_flight;
      done.push_back(Completed{record.ticket, absl::OkStatus(), record.info.id});
      if (record.type == RecordType::message) {
        ++messages;
        ++file.live;
        MessageInfo& info = record.info;
        const uint64_t meta_bytes = record.head.size();
        info.location = MessageLocation{file.id, record.offset, record.offset + meta_bytes, record.wire_length()};
        std::string id = info.id;
        _index.insert_or_assign(std::move(id), std::move(info));
      }
    }
    write.records.clear();
    if (messages > 0) {
      _metrics.messages_per_fsync_sum += messages;
      ++_metrics.messages_per_fsync_count;
    }
    maybe_unlink(file);
  }
  ++_sync_index;
  finish_sync_if_done();
}

uint64_t ShardSpool::next_deadline_us() const {
  if (!_unlinks_to_submit.empty()) {
    return 0;
  }
  if (_batch_state == BatchState::writing) {
    for (const auto& write : _batch) {
      if (write.needs_submit) {
        return 0;
      }
    }
    return UINT64_MAX;
  }
  if (_batch_state == BatchState::syncing) {
    return _sync_in_flight ? UINT64_MAX : 0;
  }
  if (_open_records == 0) {
    return UINT64_MAX;
  }
  if (!_synced_once || _open_bytes >= _options.commit_batch_bytes || 2 * _open_records >= kMaxIovPerWrite) {
    return 0;
  }
  return _last_sync_issue_us + _options.commit_interval_us;
}

bool ShardSpool::idle() const {
  return _open_records == 0 && _batch_state == BatchState::idle && _ops.empty() && _unlinks_to_submit.empty();
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

int ShardSpool::segment_fd(uint64_t segment_id) const {
  auto it = _segments.find(segment_id);
  return it == _segments.end() ? -1 : it->second->fd;
}

absl::StatusOr<std::string> ShardSpool::read_message(std::string_view id) const {
  auto it = _index.find(to_absl(id));
  if (it == _index.end()) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  const MessageLocation& location = it->second.location;
  const int fd = segment_fd(location.segment_id);
  if (fd < 0) {
    return absl::InternalError("spool: message without its segment");
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
  if (it == _index.end()) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  auto ticket = append_journal(JournalOp::remove, id);
  if (!ticket.ok()) {
    return ticket;
  }
  const uint64_t segment_id = it->second.location.segment_id;
  _index.erase(it);
  auto segment = _segments.find(segment_id);
  assert(segment != _segments.end() && segment->second->live > 0);
  --segment->second->live;
  maybe_unlink(*segment->second);
  return ticket;
}

absl::StatusOr<uint64_t> ShardSpool::hold(std::string_view id) {
  auto it = _index.find(to_absl(id));
  if (it == _index.end()) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  auto ticket = append_journal(JournalOp::hold, id);
  if (ticket.ok()) {
    it->second.status = MessageStatus::held;
  }
  return ticket;
}

absl::StatusOr<uint64_t> ShardSpool::release(std::string_view id) {
  auto it = _index.find(to_absl(id));
  if (it == _index.end()) {
    return absl::NotFoundError(absl::StrCat("no message ", to_absl(id)));
  }
  auto ticket = append_journal(JournalOp::release, id);
  if (ticket.ok()) {
    it->second.status = MessageStatus::queued;
  }
  return ticket;
}

}  // namespace sluice::spool
