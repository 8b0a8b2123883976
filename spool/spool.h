#pragma once
// The spool: the module's public interface (DESIGN.md section 2, "Durability", "Spool format").
//
// One ShardSpool per shard thread. It is sans-I/O on the data path: it never writes or syncs by
// itself but hands IoRequests to the shard, which submits them on its io_uring and reports the
// completions back. A ticket completes OK only after an fdatasync that covers its record has
// completed OK; that is what lets the shard send "250 queued as ID".
//
// Lifecycle: SpoolLock::acquire(dir) -> load_and_bump_floor(dir, now) -> recover_shard(dir, n)
// for every shard -> ShardSpool::open(options, recovered) -> loop { append_*, collect_io,
// submit, on_io_complete } -> drain until idle() -> destroy.
#include <sys/uio.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "spool/format.h"
#include "spool/message_id.h"

namespace sluice::spool {

struct SpoolOptions {
  std::string dir;
  uint32_t shard = 0;
  // Group commit pacing (commit_pace_us): the longest the start of a batch waits after the start
  // of the one before, when fdatasyncs are costly; with cheap ones the next batch starts as soon
  // as the previous one finished. 0: never wait.
  uint64_t commit_interval_us = 500;
  uint64_t commit_batch_bytes = 1 << 20;
  // Each fdatasync goes out linked to the write it covers (IoRequest::link_next), so the kernel
  // starts it as soon as the write completed in full; false: issued after the write's CQE.
  bool link_fdatasync = true;
  uint64_t segment_bytes = 64 << 20;
  uint64_t min_free_bytes = 0;
  // At this size the journal starts a new file with a snapshot of the live state (then the older
  // files are deleted), so it never grows without bound and a restart replays little.
  uint64_t journal_rotate_bytes = 64 << 20;
  // Sealed segments (full, or recovered) with live messages keep no descriptor unless read: at
  // most this many stay open, the least recently read closed first, so a large queue cannot eat
  // the descriptors that sessions need. The current and the preallocated ones are always open.
  uint32_t open_sealed_segments_max = 64;
  std::function<void(std::string_view fields)> background_log;  // the preallocator's failures
  // Where fdatasync latencies are read from; empty: io::monotonic_us. Tests give a fake clock,
  // so that the pacing decision can be driven with the values they choose.
  std::function<uint64_t()> clock_us;
};

// Descriptors one shard's spool holds at most: the sealed cache, the current segment, the ready
// ones and the one being made, the journal, its spare, the shard directory and the id floor.
inline uint64_t spool_descriptors_max(const SpoolOptions& options);

inline constexpr size_t kReadySegmentsTarget = 2;  // segments kept preallocated
inline constexpr uint32_t kMaxIovPerWrite = 1024;  // UIO_MAXIOV
inline constexpr uint64_t kMinSegmentBytes = 64 << 10;
inline constexpr uint64_t kFreeBytesRefreshMs = 100;
inline constexpr uint64_t kPreallocRetryMs = 200;
inline constexpr uint64_t kIdFloorPersistMs = 1000;
// Failed attempts in a row at making the next journal file (kPreallocRetryMs apart) before the
// records waiting for it fail.
inline constexpr uint32_t kSpareFailuresMax = 10;
// Group-commit pacing (ShardSpool::commit_pace_us): the moving average of fdatasync latency
// weighs each new sample 1/kSyncAverageWeight; syncs are cheap up to commit_interval_us /
// kCheapSyncDivisor; costly ones pace batches kPaceSyncMultiple times their latency apart.
inline constexpr uint64_t kSyncAverageScale = 16;
inline constexpr uint64_t kSyncAverageWeight = 8;
inline constexpr uint64_t kCheapSyncDivisor = 4;
inline constexpr uint64_t kPaceSyncMultiple = 2;

struct IoRequest {
  // open: openat(AT_FDCWD, path, open_flags, open_mode), the result is the new fd. fsync: a full
  // fsync (used on the shard directory, so that a new file's name is durable). fallocate:
  // fallocate(fd, 0, offset, length), zero-filled blocks for the next journal file.
  enum class Kind : uint8_t { write, fdatasync, unlink, open, fsync, fallocate };
  Kind kind = Kind::write;
  int fd = -1;                 // write, fdatasync, fsync, fallocate
  uint64_t offset = 0;         // write: pwritev semantics; fallocate
  uint64_t length = 0;         // fallocate
  const iovec* iov = nullptr;  // write; owned by the spool until on_io_complete(op_id)
  uint32_t iov_count = 0;
  const char* path = nullptr;  // unlink, open (absolute or relative to the cwd); owned like iov
  int open_flags = 0;          // open
  uint32_t open_mode = 0;      // open
  uint64_t op_id = 0;
  // The next request in the same collect_io output is linked to this one (IOSQE_IO_LINK): it
  // starts only after this one completed in full, and completes with -ECANCELED, never having
  // run, if this one failed or was short. Submit the two together, in order.
  bool link_next = false;
};

struct Completed {
  uint64_t ticket = 0;
  absl::Status status;  // OK only after an fdatasync covering the record completed OK
  std::string queue_id;
};

enum class MessageStatus : uint8_t { queued, held };

// Where delivery stands for one recipient; delivered and bounced are final. The spool records
// outcomes (record_outcome) but never removes a message by itself when every recipient is final:
// the delivery side writes the remove (after any DSN it owes is queued).
enum class DeliveryState : uint8_t { pending, delivered, deferred, bounced };
constexpr bool is_final(DeliveryState state) {
  return state == DeliveryState::delivered || state == DeliveryState::bounced;
}
struct RecipientDelivery {
  DeliveryState state = DeliveryState::pending;
  uint32_t attempts = 0;
  uint64_t next_attempt_ms = 0;  // deferred: when to try again
  std::string last_reply;
  // The spool's bookkeeping, never on disk: outcome records of this recipient on their way (the
  // next one counts them into its attempts), and whether one of them is final (nothing may follow).
  uint32_t outcomes_in_flight = 0;
  bool final_in_flight = false;
  // The host that answered the last attempt ("" if none did, or read from a v2 journal), and
  // whether the sender is owed a "relayed" DSN for this delivered recipient: what a DSN made
  // after a restart needs, so on disk with the outcome.
  std::string remote_mta;
  bool relayed = false;
};
// What one delivery attempt to one recipient came to (record_outcome).
struct RecipientOutcome {
  DeliveryState state = DeliveryState::deferred;  // never pending
  uint64_t next_attempt_ms = 0;                   // deferred only
  std::string last_reply;                         // cut to kMaxReplyBytes
  std::string remote_mta;                         // the host that answered, or ""; cut to kMaxRemoteMtaBytes
  bool relayed = false;                           // delivered only: a "relayed" DSN is owed
};

struct MessageLocation {
  uint64_t segment_id = 0;
  uint64_t record_offset = 0;
  uint64_t wire_offset = 0;  // absolute offset of the wire bytes in the segment file
  uint64_t wire_length = 0;
};

// What the queue API and the delivery side need to know about one stored message.
struct MessageInfo {
  std::string id;
  std::string sender;
  std::vector<std::string> recipients;
  uint64_t rfc_size = 0;
  uint64_t arrival_ms = 0;
  MessageStatus status = MessageStatus::queued;
  bool removal_pending = false;  // a remove record is on its way: gone from the index once durable
  // Derived from recipient_states: the most attempts of any recipient, the earliest retry of the
  // deferred ones (0 if none is deferred), the reply of the most recent outcome.
  uint32_t attempts = 0;
  uint64_t next_attempt_ms = 0;
  std::string last_reply;
  // One per recipient, parallel to `recipients`: what the durable outcome records say.
  std::vector<RecipientDelivery> recipient_states;
  bool body_8bit = false;
  bool smtputf8 = false;
  std::string client_address;
  std::string client_helo;
  // DSN parameters (RFC 3461) as sent; recipient_dsn has one entry per recipient.
  DsnRet dsn_ret = DsnRet::none;
  std::string dsn_envid;
  std::vector<RecipientDsn> recipient_dsn;
  std::string dsn_of;  // a DSN's: the queue id of the message it reports on; else empty
  MessageLocation location;
};

struct RecoveredSegment {
  uint64_t id = 0;
  std::string path;
  uint64_t end_offset = 0;
  uint32_t live_messages = 0;
  std::vector<std::string> removed_ids;  // its messages that are gone: a journal snapshot repeats them
};

struct RecoveredShard {
  std::string shard_dir;
  uint32_t shard = 0;
  uint32_t generation = 1;  // for files created by this run
  uint64_t next_segment_id = 1;
  uint64_t max_id_ms = 0;                  // largest millisecond of any id seen on disk
  std::vector<RecoveredSegment> segments;  // segments with live messages, by id
  std::vector<MessageInfo> messages;       // live messages, by id
  // The journal recovery wrote (compacted, ending in a checkpoint): the spool appends to it.
  uint64_t journal_number = 0;
  std::string journal_path;
  uint64_t journal_end_offset = 0;
  uint64_t journal_next_sequence = 1;
  // What recovery saw, for the start-up log line.
  uint64_t records_recovered = 0;
  uint64_t segments_deleted = 0;
  uint64_t torn_tails = 0;           // files that ended in a partial or invalid record
  uint64_t old_format_segments = 0;  // kept segments of an older format version (read as such)
};

// A durable outcome record (is_outcome(entry.op)) applied to its message: the recipient takes
// the record's state, and attempts and last_reply follow; ignored for a recipient index out of
// range or a recipient already final. next_attempt_ms is left to derive_next_attempt.
void apply_outcome(MessageInfo& info, const JournalEntry& entry);
// info.next_attempt_ms from the recipients (O(recipients)).
void derive_next_attempt(MessageInfo& info);
// The outcome records that restate every recipient's state (none for a pending one), ordered so
// that applying them in order gives back info's last_reply too: for journal snapshots.
std::vector<JournalEntry> outcome_snapshot(const MessageInfo& info);

// Replays one shard's segments and journal (blocking; before the listener opens), deletes
// segments that hold nothing live or were half created, and rewrites the journal compacted.
absl::StatusOr<RecoveredShard> recover_shard(const std::string& dir, uint32_t shard);

// One record found by scan_records: payload at offset + kRecordHeaderBytes.
struct ScannedRecord {
  RecordType type = RecordType::message;
  uint64_t sequence = 0;
  uint64_t offset = 0;
  uint32_t payload_length = 0;
};
struct FileScan {
  bool has_header = false;  // record 0 was a valid file header for expected_file_id
  uint32_t generation = 0;
  uint16_t version = 0;  // of record 0, and so of every record in the file
  FileHeaderPayload header;
  std::vector<ScannedRecord> records;  // after the header, all valid, consecutive
  uint64_t end_offset = 0;             // where the next record would go
  bool torn = false;                   // stopped at a non-zero invalid header, not at the end
};
// Pure: validates records of one file in memory (exposed for tests and the fuzzer).
FileScan scan_records(std::span<const uint8_t> bytes, uint64_t expected_file_id, RecordType body_type);

// Holds DIR/lock with flock(LOCK_EX|LOCK_NB) for the life of the process.
class SpoolLock {
 public:
  static absl::StatusOr<SpoolLock> acquire(const std::string& dir);
  SpoolLock(SpoolLock&& other) noexcept : _fd(other._fd) { other._fd = -1; }
  SpoolLock& operator=(SpoolLock&& other) noexcept;
  SpoolLock(const SpoolLock&) = delete;
  SpoolLock& operator=(const SpoolLock&) = delete;
  ~SpoolLock();

 private:
  explicit SpoolLock(int fd) : _fd(fd) {}
  int _fd = -1;
};

inline constexpr size_t kFsyncLatencyBuckets = 14;
inline constexpr std::array<uint64_t, kFsyncLatencyBuckets - 1> kFsyncLatencyBoundsUs = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000};

struct SpoolMetrics {
  uint64_t fsyncs = 0;
  uint64_t fsync_errors = 0;
  uint64_t messages_per_fsync_sum = 0;    // messages made durable by fsyncs...
  uint64_t messages_per_fsync_count = 0;  // ...and the fsyncs that made them (histogram style)
  std::array<uint64_t, kFsyncLatencyBuckets> fsync_latency_bucket{};  // last bucket: > 1 s
  uint64_t fsync_latency_sum_us = 0;
  uint64_t bytes_written = 0;
  uint64_t write_errors = 0;
  uint64_t segments_used = 0;
  uint64_t segments_unlinked = 0;
  uint64_t journal_rotations = 0;       // new journal files started (size limit or after a failure)
  uint64_t journal_spare_failures = 0;  // a next journal file could not be made (retried)
  uint64_t journal_prealloc_failures = 0;  // a next journal file kept unpreallocated (logged)
  uint64_t unavailable = 0;             // appends refused because no segment was ready
};

class SegmentPreallocator;

class ShardSpool {
 public:
  static absl::StatusOr<std::unique_ptr<ShardSpool>> open(const SpoolOptions& options, RecoveredShard recovered);
  ~ShardSpool();  // the shard must have drained (idle()) first: in-flight iovecs point into us
  ShardSpool(const ShardSpool&) = delete;
  ShardSpool& operator=(const ShardSpool&) = delete;

  // Takes the message bytes (wire form incl. our headers) without copying them. Errors at once:
  // UNAVAILABLE (no segment ready), RESOURCE_EXHAUSTED (record larger than a segment),
  // INVALID_ARGUMENT (malformed id, envelope over limits).
  absl::StatusOr<uint64_t> append_message(std::string queue_id, uint64_t arrival_ms, Envelope envelope,
                                          uint64_t rfc_size, std::string wire_bytes) {
    return append_message(std::move(queue_id), arrival_ms, std::move(envelope), rfc_size, std::string(),
                          std::move(wire_bytes));
  }
  // The same, with the wire bytes in two parts (trace headers we add, then the client's body),
  // written with one iovec each, so the body is never copied to prepend our headers.
  absl::StatusOr<uint64_t> append_message(std::string queue_id, uint64_t arrival_ms, Envelope envelope,
                                          uint64_t rfc_size, std::string trace, std::string body);
  // A state change; durable (ticket completes) with the next commit. Its effect on the index
  // (remove, hold, release) is applied when it is durable, never before. INVALID_ARGUMENT for the
  // outcomes (record_outcome writes those) and checkpoints (the spool's own).
  absl::StatusOr<uint64_t> append_journal(JournalOp op, std::string_view queue_id, uint32_t argument = 0);

  void collect_io(uint64_t now_us, std::vector<IoRequest>& out);
  void on_io_complete(uint64_t op_id, int32_t result, std::vector<Completed>& done);
  uint64_t next_deadline_us() const;
  bool idle() const;  // nothing waiting, nothing in flight

  // Group-commit pacing: the least time from the start of one batch to the start of the next.
  // 0 while fdatasyncs are cheap (their moving average at most commit_interval_us /
  // kCheapSyncDivisor): the next batch starts as soon as the previous one finished, since a sync
  // costs less than what waiting would add to every record's answer. When they are costly, a
  // multiple of their latency (so that a batch gathers what arrives meanwhile), capped at
  // commit_interval_us. 0 too when commit_interval_us is 0.
  uint64_t commit_pace_us() const;
  uint64_t sync_latency_average_us() const { return _sync_average_scaled / kSyncAverageScale; }

  // Whether a message of this many wire octets can be placed now (the current segment has room,
  // or a fresh one is ready); when false, append_message would fail with UNAVAILABLE.
  bool has_room_for(uint64_t wire_octets, uint64_t envelope_octets) const;
  uint64_t free_bytes() const;
  bool below_min_free() const;
  uint64_t ready_segments() const;  // preallocated, not yet in use
  uint64_t segment_bytes() const { return _options.segment_bytes; }

  // The queue index: messages whose record is durable.
  std::vector<MessageInfo> list() const;
  std::optional<MessageInfo> find(std::string_view id) const;
  // Every index entry, in no particular order and without copying it (the admin endpoint's
  // page and summary, so that it never copies the whole index on the shard thread).
  template <typename Visit>
  void for_each_message(Visit&& visit) const {
    for (const auto& [id, info] : _index) {
      visit(info);
    }
  }
  size_t size() const { return _index.size(); }
  absl::StatusOr<std::string> read_message(std::string_view id);  // blocking pread: control path
  // For reading the body from the file; -1 if there is no such segment or it cannot be opened.
  // A closed sealed segment is reopened (blocking open(2)) and may close the least recent other:
  // the descriptor is valid until the next call, so a reader that keeps it dup()s it.
  int segment_fd(uint64_t segment_id);
  // The path of a segment file ("" if there is no such segment): delivery on any shard opens it
  // for reading (its own descriptor: an unlink after the message's removal cannot affect it).
  std::string segment_path(uint64_t segment_id) const;
  uint32_t open_sealed_segments() const { return _open_sealed; }
  // A journal record whose ticket completes when it is durable; only then does the index change
  // (and, for remove, the segment's reference count and its unlink). NOT_FOUND if the id is not
  // in the index (or its removal is already on its way).
  absl::StatusOr<uint64_t> remove(std::string_view id);
  absl::StatusOr<uint64_t> hold(std::string_view id);
  absl::StatusOr<uint64_t> release(std::string_view id);
  // One recipient's delivery outcome, an outcome record stating its whole state (attempts
  // counted here). Like remove: the ticket completes when the record is durable, and only then
  // does the index change. NOT_FOUND for an unknown id or a removal on its way; INVALID_ARGUMENT
  // for a recipient index out of range, a recipient already final (or with a final outcome on
  // its way), a pending state, or relayed on anything but delivered. A reply over kMaxReplyBytes
  // (a remote MTA over kMaxRemoteMtaBytes) is cut at a UTF-8 boundary.
  absl::StatusOr<uint64_t> record_outcome(std::string_view id, uint32_t recipient, RecipientOutcome outcome);

  const SpoolMetrics& metrics() const { return _metrics; }

 private:
  // A record placed in a file but not yet durable. `head` is the record header plus the
  // envelope (or journal payload); `body` is the moved-in wire bytes, written straight from here.
  struct PendingRecord {
    uint64_t ticket = 0;
    RecordType type = RecordType::message;
    uint64_t offset = 0;
    uint64_t sequence = 0;
    uint32_t payload_crc = 0;
    std::string head;
    std::string trace;                 // our added header fields: the first part of the wire bytes
    std::string body;                  // the client's message: the rest, never copied
    MessageInfo info;                  // the index entry once durable (journal records: info.id only)
    JournalOp op = JournalOp::remove;  // journal records
    JournalEntry outcome;              // outcome records: what apply_outcome applies once durable
    bool snapshot = false;             // a journal snapshot (many records, sealed, ending in a checkpoint)
    uint32_t snapshot_records = 0;
    uint64_t wire_length() const { return trace.size() + body.size(); }
    uint64_t length() const { return head.size() + wire_length(); }
  };
  struct SpoolFile {
    int fd = -1;
    uint64_t id = 0;
    uint32_t generation = 0;
    std::string path;
    uint64_t capacity = 0;
    uint64_t end_offset = 0;  // where the next record goes
    uint64_t next_sequence = 1;
    bool is_journal = false;
    uint64_t journal_number = 0;
    uint64_t snapshot_end = 0;  // journals: where the snapshot at its start ends
    bool sealed = false;        // never appended to again
    bool unlinked = false;
    bool in_dirty = false;
    uint32_t live = 0;                     // durable messages in the index
    uint32_t in_flight = 0;                // records placed here, not yet durable or failed
    std::vector<PendingRecord> open;       // placed, not yet in a write
    std::vector<std::string> removed_ids;  // segments: messages gone from it (for journal snapshots)
    uint64_t last_read = 0;                // sealed segments: for closing the least recently read
  };
  // The next journal file, made ready ahead of need: created, header written, preallocated to
  // journal_rotate_bytes (fallocate, then real zeros over it, as the segments are: appends then
  // change neither its size nor its extents, so their fdatasync need not write metadata; a
  // failure keeps the file as it is, logged), synced, and the directory synced, all through
  // IoRequests (the first one at open(), blocking, at start-up).
  struct JournalSpare {
    enum class Phase : uint8_t { none, opening, writing, allocating, zeroing, syncing, syncing_dir, ready };
    Phase phase = Phase::none;
    uint64_t number = 0;
    std::string path;
    std::string header;
    iovec iov{};
    uint64_t zero_offset = 0;      // the next zero to write (zeroing)
    std::vector<iovec> zero_iov;  // into one shared chunk of zeros
    int fd = -1;
    uint64_t retry_at_us = 0;
    uint32_t failures_in_a_row = 0;
  };
  // Ids of an unlinked segment, repeated in snapshots until a directory fsync issued after the
  // unlink completed (before that the segment could come back after a power cut).
  struct UnlinkedIds {
    uint64_t dir_sync_needed = 0;
    std::vector<std::string> ids;
  };
  // One gathered write of a commit batch (one per file), then its fdatasync.
  struct FileWrite {
    SpoolFile* file = nullptr;
    std::vector<PendingRecord> records;
    std::vector<iovec> iov;
    size_t iov_first = 0;
    uint64_t start_offset = 0;
    uint64_t start_sequence = 0;
    uint64_t offset = 0;  // next octet to write (advances over short writes)
    uint64_t bytes_left = 0;
    bool in_flight = false;     // a write
    bool needs_submit = false;  // the rest of a short write
    bool needs_sync = false;    // written in full: its fdatasync is next
    bool sync_in_flight = false;
    bool sync_linked = false;         // the fdatasync in flight went out linked to a write
    bool sync_result_waiting = false;  // its CQE came before the write's: handled after it
    int32_t sync_result = 0;
    bool failed = false;
    bool finished = false;  // failed (and no fdatasync of it in flight), or its fdatasync completed
    uint64_t sync_started_us = 0;
  };
  struct Op {
    IoRequest::Kind kind = IoRequest::Kind::write;
    size_t write_index = 0;
    uint64_t segment_id = 0;
    std::string path;
    bool journal_file = false;  // unlink of an old journal file
    bool spare = false;         // a step of the journal spare
  };

  ShardSpool(const SpoolOptions& options, RecoveredShard& recovered);
  absl::Status place_message(PendingRecord& record);
  void place_in(SpoolFile& file, PendingRecord& record);
  SpoolFile* take_ready_segment();
  void seal(SpoolFile& file, std::vector<Completed>& done);
  void close_idle_sealed(const SpoolFile* keep);
  bool holds_sealed_descriptor(const SpoolFile& file) const;
  void fail_records(SpoolFile& file, std::vector<PendingRecord>& records, const absl::Status& status,
                    std::vector<Completed>& done);
  void seal_journal();
  void rotate_journal();
  void place_snapshot();
  void apply_journal_record(PendingRecord& record);
  absl::StatusOr<uint64_t> append_journal_entry(JournalEntry entry);
  void outcome_settled(const PendingRecord& record);
  void spare_prealloc_failed(int error, bool allocated);
  IoRequest spare_zero_write();
  void start_spare(uint64_t now_us, std::vector<IoRequest>& out);
  void on_spare_complete(int32_t result, std::vector<Completed>& done);
  void spare_failed(uint64_t now_us, int error, std::vector<Completed>& done);
  uint64_t commit_deadline_us() const;
  bool rotation_due() const;
  void remove_from_dirty(SpoolFile& file);
  void maybe_unlink(SpoolFile& file);
  void close_batch(uint64_t now_us, std::vector<IoRequest>& out);
  void emit_write(FileWrite& write, std::vector<IoRequest>& out);
  void on_write_complete(size_t index, int32_t result, std::vector<Completed>& done);
  void on_sync_complete(size_t index, int32_t result, std::vector<Completed>& done);
  void emit_sync(FileWrite& write, bool linked, std::vector<IoRequest>& out);
  void finish_batch_if_done();
  void note_sync_latency(uint64_t latency_us);

  SpoolOptions _options;
  std::string _shard_dir;
  uint32_t _generation;
  absl::flat_hash_map<std::string, MessageInfo> _index;
  absl::flat_hash_map<uint64_t, std::unique_ptr<SpoolFile>> _segments;
  std::unique_ptr<SpoolFile> _journal;
  std::vector<std::unique_ptr<SpoolFile>> _old_journals;  // superseded once the newest checkpoint is durable
  std::vector<PendingRecord> _journal_waiting;            // the journal is sealed: they wait for the spare
  JournalSpare _spare;
  std::vector<IoRequest> _spare_requests;  // the spare's next step, issued by collect_io
  int _dir_fd = -1;
  uint64_t _dir_syncs_issued = 0;
  uint64_t _dir_syncs_done = 0;
  std::deque<UnlinkedIds> _unlinked_ids;
  SpoolFile* _current = nullptr;
  uint32_t _open_sealed = 0;  // sealed segments with an open descriptor
  uint64_t _read_clock = 0;
  std::vector<SpoolFile*> _dirty;  // files with records not yet in a write, in order
  uint64_t _open_bytes = 0;
  uint64_t _open_records = 0;

  // active: the batch's files are written and fdatasync'd, each file's fdatasync issued as soon
  // as its own writes completed, the files' fdatasyncs concurrently.
  enum class BatchState : uint8_t { idle, active };
  BatchState _batch_state = BatchState::idle;
  std::vector<FileWrite> _batch;
  uint64_t _last_batch_start_us = 0;
  // Moving average of fdatasync latency (issue to CQE), in 1/kSyncAverageScale µs: the pacing
  // decision's measure of what a commit costs.
  uint64_t _sync_average_scaled = 0;

  std::unordered_map<uint64_t, Op> _ops;  // node-based: unlink paths stay put
  std::vector<uint64_t> _unlinks_to_submit;
  uint64_t _next_op_id = 1;
  uint64_t _next_ticket = 1;

  SpoolMetrics _metrics;
  std::unique_ptr<SegmentPreallocator> _preallocator;
};

inline uint64_t spool_descriptors_max(const SpoolOptions& options) {
  constexpr uint64_t kFixed = 1 /* current */ + kReadySegmentsTarget + 1 /* being made */ + 2 /* journal, spare */ +
                              1 /* directory */ + 1 /* id floor */;
  return options.open_sealed_segments_max + kFixed;
}

}  // namespace sluice::spool
