// Recovery of arbitrary segment and journal bytes never crashes and never returns a record that
// fails any check. The input is put after a valid file header (and sometimes a valid record), so
// the fuzzer spends its time on the records rather than on the first header; for the journal,
// after valid outcome records too, and as the tail of an outcome payload (the variable part).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "spool/crc32c.h"
#include "spool/format.h"
#include "spool/spool.h"

namespace {

using namespace sluice::spool;

constexpr uint64_t kSegmentId = 7;
constexpr uint32_t kGeneration = 3;

void check(bool condition) {
  if (!condition) {
    std::abort();
  }
}

// Every record recovery returns must pass every check, verified here independently (the table
// CRC is the oracle).
void verify(std::span<const uint8_t> bytes, const FileScan& scan, uint64_t file_id, RecordType type) {
  uint64_t sequence = 1;
  uint64_t offset = scan.records.empty() ? scan.end_offset : scan.records.front().offset;
  for (const auto& record : scan.records) {
    check(record.offset == offset);
    check(record.offset + kRecordHeaderBytes + record.payload_length <= bytes.size());
    const RecordHeader header = decode_record_header(bytes.data() + record.offset);
    check(header.magic == kRecordMagic && header.version == scan.version);
    check(scan.version >= kOldestReadableVersion && scan.version <= kFormatVersion);
    check(header.type == type && header.segment_id == file_id && header.generation == scan.generation);
    check(header.sequence == sequence++ && record.sequence == header.sequence);
    const uint8_t* payload = bytes.data() + record.offset + kRecordHeaderBytes;
    uint8_t zeroed[kRecordHeaderBytes];
    std::memcpy(zeroed, bytes.data() + record.offset, kRecordHeaderBytes);
    std::memset(zeroed + kRecordCrcOffset, 0, 4);
    const uint32_t crc =
        crc32c_extend_table(crc32c_extend_table(0, payload, record.payload_length), zeroed, kRecordHeaderBytes);
    check(crc == header.crc);
    if (type == RecordType::message) {
      decode_message_meta({payload, record.payload_length}, scan.version).status().IgnoreError();
    } else {
      decode_journal_payload({payload, record.payload_length}).status().IgnoreError();
    }
    offset = record.offset + kRecordHeaderBytes + record.payload_length;
  }
  check(scan.end_offset == offset);
  check(scan.end_offset <= bytes.size());
}

std::string valid_message_record(uint64_t sequence) {
  Envelope envelope;
  envelope.sender = "a@b";
  envelope.recipients = {"c@d"};
  envelope.ret = DsnRet::hdrs;
  envelope.envid = "e+2B1";
  envelope.recipient_dsn = {RecipientDsn{kNotifySuccess | kNotifyDelay, "rfc822;c@d"}};
  const std::string body = "Subject: fuzz\r\n\r\n.\r\n";
  std::string record =
      encode_message_head("0000000000000000", 1, body.size(), envelope, static_cast<uint32_t>(body.size()));
  record += body;
  RecordHeader header;
  header.type = RecordType::message;
  header.segment_id = kSegmentId;
  header.generation = kGeneration;
  header.sequence = sequence;
  header.payload_length = static_cast<uint32_t>(record.size() - kRecordHeaderBytes);
  seal_record_header(header, crc32c(record.data() + kRecordHeaderBytes, record.size() - kRecordHeaderBytes),
                     reinterpret_cast<uint8_t*>(record.data()));
  return record;
}

// Seeds for the journal: one outcome record of each kind, the last with the longest reply.
std::string valid_outcome_records() {
  std::string records;
  uint64_t sequence = 1;
  for (const JournalOp op : {JournalOp::deferred, JournalOp::delivered, JournalOp::bounced}) {
    JournalEntry entry(op, "0000000000000000", static_cast<uint32_t>(sequence));
    entry.next_attempt_ms = op == JournalOp::deferred ? 1700000000000 : 0;
    entry.attempts = 2;
    entry.reply = op == JournalOp::bounced ? std::string(kMaxReplyBytes, 'r') : "451 4.7.1 later";
    records += encode_journal_record(entry, kGeneration, sequence++);
  }
  records += encode_journal_record(JournalEntry(JournalOp::hold, "0000000000000000", 0), kGeneration, sequence++);
  return records;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> raw(data, size);
  // 1. The bytes as a whole file.
  verify(raw, scan_records(raw, kSegmentId, RecordType::message), kSegmentId, RecordType::message);
  verify(raw, scan_records(raw, kJournalFileId, RecordType::journal), kJournalFileId, RecordType::journal);
  // 2. After a valid header, and after a valid header and record.
  FileHeaderPayload payload;
  payload.segment_bytes = 1 << 20;
  for (int prefix_records = 0; prefix_records < 2; ++prefix_records) {
    std::string file = encode_file_header_record(kSegmentId, kGeneration, payload);
    if (prefix_records == 1) {
      file += valid_message_record(1);
    }
    file.append(reinterpret_cast<const char*>(data), size);
    const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(file.data()), file.size());
    const FileScan scan = scan_records(bytes, kSegmentId, RecordType::message);
    check(scan.has_header && scan.records.size() >= static_cast<size_t>(prefix_records));
    verify(bytes, scan, kSegmentId, RecordType::message);
  }
  // 2b. A journal: after a valid header, and after valid outcome records.
  for (int prefix_records = 0; prefix_records < 2; ++prefix_records) {
    std::string file = encode_file_header_record(kJournalFileId, kGeneration, FileHeaderPayload{});
    static const std::string outcomes = valid_outcome_records();
    if (prefix_records == 1) {
      file += outcomes;
    }
    file.append(reinterpret_cast<const char*>(data), size);
    const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(file.data()), file.size());
    const FileScan scan = scan_records(bytes, kJournalFileId, RecordType::journal);
    check(scan.has_header && scan.records.size() >= static_cast<size_t>(prefix_records * 4));
    verify(bytes, scan, kJournalFileId, RecordType::journal);
    for (const auto& record : scan.records) {
      auto entry = decode_journal_payload(bytes.subspan(record.offset + kRecordHeaderBytes, record.payload_length));
      if (entry.ok()) {  // whatever decodes is within the limits, and encodes back to the same
        check(entry->reply.size() <= kMaxReplyBytes && entry->remote_mta.size() <= kMaxRemoteMtaBytes &&
              journal_payload_bytes(*entry) == record.payload_length);
        check(is_outcome(entry->op) || (entry->reply.empty() && entry->attempts == 0 && entry->remote_mta.empty()));
        check(!entry->relayed || entry->op == JournalOp::delivered);
      }
    }
  }
  // 2c. The input as the tail of an outcome payload: its fixed 24 octets valid, the rest fuzzed.
  for (const JournalOp op : {JournalOp::deferred, JournalOp::bounced, JournalOp::delivered}) {
    std::string payload(kJournalPayloadBytes, '\0');
    encode_journal_payload(JournalEntry(JournalOp::hold, "0000000000000000", 3),
                           reinterpret_cast<uint8_t*>(payload.data()));
    payload[0] = static_cast<char>(op);
    payload.append(reinterpret_cast<const char*>(data), size);
    auto entry = decode_journal_payload({reinterpret_cast<const uint8_t*>(payload.data()), payload.size()});
    if (entry.ok()) {
      check(entry->op == op && entry->reply.size() <= kMaxReplyBytes && entry->remote_mta.size() <= kMaxRemoteMtaBytes);
      check(payload.size() ==
            kJournalPayloadBytes + kJournalOutcomeBytes + entry->reply.size() + entry->remote_mta.size());
      check(op == JournalOp::deferred || entry->next_attempt_ms == 0);
    }
    // The same as a v2 outcome: no remote MTA.
    auto old = decode_journal_payload({reinterpret_cast<const uint8_t*>(payload.data()), payload.size()}, 2);
    if (old.ok()) {
      check(old->remote_mta.empty() && !old->relayed &&
            payload.size() == kJournalPayloadBytes + kJournalOutcomeV2Bytes + old->reply.size());
    }
  }
  // 3. The payload decoders on raw bytes.
  for (uint16_t version = kOldestReadableVersion; version <= kFormatVersion; ++version) {
    decode_message_meta(raw, version).status().IgnoreError();
  }
  for (uint16_t version = kOldestReadableVersion; version <= kFormatVersion; ++version) {
    decode_journal_payload(raw, version).status().IgnoreError();
  }
  decode_file_header_payload(raw).status().IgnoreError();
  return 0;
}
