#pragma once
// The spool's on-disk format, all of it, in one place. Bump kFormatVersion on any change.
//
// A file (segment or journal) is a sequence of records packed back to back:
//
//   record header, 36 octets, little endian:
//     0  magic            u32  kRecordMagic ("SLSP")
//     4  format version   u16  kFormatVersion
//     6  record type      u16  RecordType
//     8  segment id       u64  the file's id (kJournalFileId for the journal)
//    16  generation       u32  the spool incarnation that created the file
//    20  sequence         u64  0 for the file header record, then consecutive per file
//    28  payload length   u32
//    32  crc32c           u32  crc32c_extend(crc32c(payload), header with this field zeroed)
//   payload, `payload length` octets.
//
// The CRC runs over the payload first and the header second, so a record that must move to
// another segment (after a write error) gets a new header without a second pass over the body.
//
// Record 0 of every file is a file header (RecordType::file_header). Segments are preallocated
// zero-filled to `segment_bytes`, and the journal files the spool makes ahead of need to its
// rotation size where the file system allows (recovery's compacted one is not); the first
// all-zero or invalid header ends a file.
//
// Payloads (all integers little endian; strings are u16 length + octets):
//   file header:  segment_bytes u64 (0 for the journal), shard u32, reserved u32, created_ms u64
//   message:      queue id 16 octets, arrival_ms u64, rfc_size u64, flags u32 (kFlag*),
//                 wire_length u32, sender, client_address, client_helo,
//                 [v2: ret u8 (DsnRet), envid,] [v3: dsn_of,]
//                 recipient count u32, per recipient: the address [v2: then notify u8 (kNotify*
//                 bits, 0 = not given), orcpt], then wire_length octets of the message in wire
//                 form (CRLF, dot-stuffed, our Received: first).
//                 The DSN parameters (RFC 3461) are kept as the client sent them: envid and
//                 orcpt still xtext-encoded, empty when not given. dsn_of: in a DSN we made, the
//                 queue id of the message it reports on (16 octets), empty in any other message;
//                 a restart that finds that message final again (a crash before its removal was
//                 durable) removes it without making a second DSN.
//   journal:      op u16 (JournalOp), flags u16, queue id 16 octets, argument u32: 24 octets,
//                 the whole payload of every op but the three outcomes. flags: 0, but for
//                 kJournalFlagRelayed on a v3 delivered outcome (v1 and v2: always 0).
//                 (checkpoint: queue id all '0', argument = the number of snapshot records.)
//                 delivered, deferred, bounced (argument = the recipient's index in the message
//                 record) go on after those 24: next_attempt_ms u64 (deferred only, else 0),
//                 attempts u32 (the recipient's attempts so far, this one included: a record
//                 states the recipient's whole state, so replaying it twice changes nothing),
//                 last reply (u16 length + octets, at most kMaxReplyBytes), [v3: remote MTA (u16
//                 length + octets, at most kMaxRemoteMtaBytes): the host that answered this
//                 attempt, empty when none did (DNS, no connection); a DSN's Remote-MTA]. The
//                 payload length must be exactly 24 + 14 + the reply's length [v3: + 2 + the
//                 remote MTA's length]; anything else is corruption.
//
// Versions: every record of a file carries the version of its file header. This build writes
// only kFormatVersion (3) and reads 1, 2 and 3: a v1 or v2 segment is read as such (v1: no DSN
// fields; v1 and v2: no dsn_of) until its last message is gone and it is deleted; an older
// journal is replaced by recovery's compacted one. Journal records of v1 and v2 differ only in
// the outcomes (v2 added them; v1 has none): a v2 outcome has no remote MTA and no flags, and
// reads as one with an empty remote MTA, not relayed. The file header payload is the same in all
// three. No previous build reads v3 files: it takes their first record as invalid, and so a v3
// segment as a half-created one that it deletes. Going back to a v2 build after this one wrote
// its spool loses that mail (empty the queue first).
//
// Journal files are DIR/shard-N/journal-<16 hex digits>, applied in number order; the spool
// appends to the newest and starts a new one at a size limit or after a failed write or
// fdatasync (never rewriting an offset it may already have written). A v1 spool's single file
// DIR/shard-N/journal counts as number 0.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sluice::spool {

inline constexpr uint32_t kRecordMagic = 0x50534C53u;  // octets "SLSP" on disk
inline constexpr uint16_t kFormatVersion = 3;
inline constexpr uint16_t kOldestReadableVersion = 1;  // v1: no DSN parameters in the envelope
inline constexpr uint16_t kFirstDsnVersion = 2;        // the DSN parameters, the outcome records
inline constexpr uint16_t kFirstDsnFactsVersion = 3;   // remote MTA, relayed flag, dsn_of
inline constexpr size_t kRecordHeaderBytes = 36;
inline constexpr size_t kRecordCrcOffset = 32;
inline constexpr uint64_t kJournalFileId = 0;  // segment ids start at 1
inline constexpr size_t kQueueIdBytes = 16;

// Limits: anything larger is refused when written and taken as corruption when read.
inline constexpr uint32_t kMaxPayloadBytes = 1u << 30;
inline constexpr size_t kMaxEnvelopeStringBytes = 4096;  // u16 on disk; SMTP paths are <= 256
inline constexpr uint32_t kMaxRecipients = 100000;
// A delivery outcome's last reply: longer ones are cut here when written (the start of a reply
// says what happened), and a longer one on disk is corruption.
inline constexpr size_t kMaxReplyBytes = 1024;
// An outcome's remote MTA, a host name (at most 253 octets in the DNS) or an address literal:
// cut here when written, corruption when longer on disk. RFC 3464's Remote-MTA is one line of
// that name; dsn.cc cuts it to the same length.
inline constexpr size_t kMaxRemoteMtaBytes = 255;
// Journal flags (the u16 after the op), v3: the sender is owed a "relayed" DSN for this
// delivered recipient (NOTIFY=SUCCESS, the next hop without DSN; RFC 3461 5.2.2).
inline constexpr uint16_t kJournalFlagRelayed = 1u << 0;

enum class RecordType : uint16_t {
  file_header = 1,
  message = 2,
  journal = 3,
};

enum class JournalOp : uint16_t {
  remove = 1,   // the message is gone (delivered to all, bounced, or deleted by the admin)
  hold = 2,     // held by the admin: not delivered until released
  release = 3,  // back to the queue
  // Reserved for the relay: delivered (argument = recipient index), deferred, bounced.
  delivered = 4,
  deferred = 5,
  bounced = 6,
  // Ends a snapshot: the records before it in the same journal file are the whole state (every
  // removal in a segment that still exists, every hold); older journal files no longer count.
  // Written at the start of each journal file by compaction and by rotation.
  checkpoint = 7,
};

// RET= of MAIL (RFC 3461 4.3), one octet on disk.
enum class DsnRet : uint8_t { none = 0, full = 1, hdrs = 2 };
// NOTIFY= of RCPT (RFC 3461 4.1), bits of one octet on disk; 0 means the client gave none.
inline constexpr uint8_t kNotifyNever = 1u << 0;
inline constexpr uint8_t kNotifySuccess = 1u << 1;
inline constexpr uint8_t kNotifyFailure = 1u << 2;
inline constexpr uint8_t kNotifyDelay = 1u << 3;
inline constexpr uint8_t kNotifyAll = kNotifyNever | kNotifySuccess | kNotifyFailure | kNotifyDelay;

inline constexpr uint32_t kFlagBody8bit = 1u << 0;
inline constexpr uint32_t kFlagSmtputf8 = 1u << 1;

struct RecordHeader {
  uint32_t magic = kRecordMagic;
  uint16_t version = kFormatVersion;
  RecordType type = RecordType::message;
  uint64_t segment_id = 0;
  uint32_t generation = 0;
  uint64_t sequence = 0;
  uint32_t payload_length = 0;
  uint32_t crc = 0;
};

// The DSN parameters of one recipient, as sent (orcpt still xtext, empty when not given).
struct RecipientDsn {
  uint8_t notify = 0;  // kNotify* bits
  std::string orcpt;
  bool operator==(const RecipientDsn&) const = default;
};

struct Envelope {
  std::string sender;
  std::vector<std::string> recipients;
  bool body_8bit = false;
  bool smtputf8 = false;
  std::string client_address;
  std::string client_helo;
  DsnRet ret = DsnRet::none;
  std::string envid;  // xtext as sent, or empty
  // recipient_dsn[i] belongs to recipients[i]; it may be shorter (the rest gave no parameters),
  // never longer. Decoding fills it to one entry per recipient.
  std::vector<RecipientDsn> recipient_dsn;
  // A DSN's: the queue id of the message it reports on; empty for any other message.
  std::string dsn_of;
};

inline constexpr size_t kFileHeaderPayloadBytes = 24;
struct FileHeaderPayload {
  uint64_t segment_bytes = 0;
  uint32_t shard = 0;
  uint64_t created_ms = 0;
};

inline constexpr size_t kJournalPayloadBytes = 24;  // every op; the outcomes then extend it
// The fixed octets of an outcome's extension: v2's next_attempt_ms, attempts, reply length; v3
// adds the remote MTA's length.
inline constexpr size_t kJournalOutcomeV2Bytes = 8 + 4 + 2;
inline constexpr size_t kJournalOutcomeBytes = kJournalOutcomeV2Bytes + 2;
inline constexpr size_t kMaxJournalPayloadBytes =
    kJournalPayloadBytes + kJournalOutcomeBytes + kMaxReplyBytes + kMaxRemoteMtaBytes;
constexpr bool is_outcome(JournalOp op) {
  return op == JournalOp::delivered || op == JournalOp::deferred || op == JournalOp::bounced;
}
struct JournalEntry {
  JournalEntry() = default;
  JournalEntry(JournalOp op_, std::string queue_id_, uint32_t argument_)
      : op(op_), queue_id(std::move(queue_id_)), argument(argument_) {}
  JournalOp op = JournalOp::remove;
  std::string queue_id;
  uint32_t argument = 0;
  // Outcomes only (is_outcome(op)); zero and empty for every other op.
  uint64_t next_attempt_ms = 0;  // deferred only
  uint32_t attempts = 0;
  std::string reply;       // at most kMaxReplyBytes
  std::string remote_mta;  // at most kMaxRemoteMtaBytes
  bool relayed = false;    // delivered only
  bool operator==(const JournalEntry&) const = default;
};

struct MessageMeta {
  std::string queue_id;
  uint64_t arrival_ms = 0;
  uint64_t rfc_size = 0;
  Envelope envelope;
  uint32_t wire_length = 0;
  uint32_t wire_offset = 0;  // offset of the wire bytes inside the payload
};

// Record header. encode writes all 36 octets (the crc field as given); decode reads them and
// checks nothing but the length: validation is the reader's (recovery's) job.
void encode_record_header(const RecordHeader& header, uint8_t* out);
RecordHeader decode_record_header(const uint8_t* in);
// The record CRC given the header octets (crc field ignored) and the payload's own crc32c.
uint32_t record_crc(const uint8_t* header_bytes, uint32_t payload_crc);
// Writes the header with its CRC into out[0..36).
void seal_record_header(RecordHeader header, uint32_t payload_crc, uint8_t* out);

// Message payload without the wire bytes, preceded by kRecordHeaderBytes of room for the
// header, so that one string is the first iovec of the record.
std::string encode_message_head(std::string_view queue_id, uint64_t arrival_ms, uint64_t rfc_size,
                                const Envelope& envelope, uint32_t wire_length);
// Always in kFormatVersion; decoding takes the version of the file the record was read from.
size_t message_meta_bytes(const Envelope& envelope);
absl::StatusOr<MessageMeta> decode_message_meta(std::span<const uint8_t> payload, uint16_t version = kFormatVersion);

void encode_file_header_payload(const FileHeaderPayload& payload, uint8_t* out);
absl::StatusOr<FileHeaderPayload> decode_file_header_payload(std::span<const uint8_t> payload);

// The payload's size on disk: kJournalPayloadBytes, more for an outcome.
size_t journal_payload_bytes(const JournalEntry& entry);
// Writes journal_payload_bytes(entry) octets, in kFormatVersion.
void encode_journal_payload(const JournalEntry& entry, uint8_t* out);
// In the version of the file the record was read from.
absl::StatusOr<JournalEntry> decode_journal_payload(std::span<const uint8_t> payload,
                                                    uint16_t version = kFormatVersion);

// A whole journal record (header + payload) of a file of this generation.
std::string encode_journal_record(const JournalEntry& entry, uint32_t generation, uint64_t sequence);
// The record that ends a snapshot of `records` records (JournalOp::checkpoint).
JournalEntry checkpoint_entry(uint64_t records);
// DIR/journal-<16 hex digits>, and its inverse on a file name ("journal" alone is number 0).
std::string journal_path(const std::string& shard_dir, uint64_t number);
std::optional<uint64_t> parse_journal_name(std::string_view name);
// DIR/seg-<16 hex digits>: the segment id.
std::optional<uint64_t> parse_segment_name(std::string_view name);

// A whole file header record (header + payload), ready to write at offset 0.
std::string encode_file_header_record(uint64_t file_id, uint32_t generation, const FileHeaderPayload& payload);
inline constexpr size_t kFileHeaderRecordBytes = kRecordHeaderBytes + kFileHeaderPayloadBytes;

}  // namespace sluice::spool
