// Encoding and decoding of spool records (the format is described in format.h). Pure functions
// over byte buffers: no I/O. Encoders assert what they write; decoders never trust what they
// read and return an error for anything out of bounds.
#include "spool/format.h"

#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "engine/io/assert.h"
#include "spool/crc32c.h"

namespace sluice::spool {
namespace {

void put_u16(uint8_t* out, uint16_t value) {
  out[0] = static_cast<uint8_t>(value);
  out[1] = static_cast<uint8_t>(value >> 8);
}
void put_u32(uint8_t* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) {
    out[i] = static_cast<uint8_t>(value >> (8 * i));
  }
}
void put_u64(uint8_t* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>(value >> (8 * i));
  }
}
uint16_t get_u16(const uint8_t* in) {
  return static_cast<uint16_t>(in[0] | (in[1] << 8));
}
uint32_t get_u32(const uint8_t* in) {
  uint32_t value = 0;
  for (int i = 3; i >= 0; --i) {
    value = (value << 8) | in[i];
  }
  return value;
}
uint64_t get_u64(const uint8_t* in) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) {
    value = (value << 8) | in[i];
  }
  return value;
}

// Appends little-endian fields to a string being built.
class Writer {
 public:
  explicit Writer(std::string& out) : _out(out) {}
  void u8(uint8_t value) { _out.push_back(static_cast<char>(value)); }
  void u32(uint32_t value) {
    uint8_t bytes[4];
    put_u32(bytes, value);
    _out.append(reinterpret_cast<const char*>(bytes), sizeof(bytes));
  }
  void u64(uint64_t value) {
    uint8_t bytes[8];
    put_u64(bytes, value);
    _out.append(reinterpret_cast<const char*>(bytes), sizeof(bytes));
  }
  void str(std::string_view value) {
    SLUICE_ASSERT(value.size() <= kMaxEnvelopeStringBytes);
    uint8_t bytes[2];
    put_u16(bytes, static_cast<uint16_t>(value.size()));
    _out.append(reinterpret_cast<const char*>(bytes), sizeof(bytes));
    _out.append(value);
  }

 private:
  std::string& _out;
};

// Reads little-endian fields from an untrusted buffer; any overrun sets the error flag.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : _bytes(bytes) {}
  bool ok() const { return _ok; }
  size_t position() const { return _position; }
  const uint8_t* take(size_t size) {
    if (!_ok || _bytes.size() - _position < size) {
      _ok = false;
      return nullptr;
    }
    const uint8_t* at = _bytes.data() + _position;
    _position += size;
    return at;
  }
  uint8_t u8() {
    const uint8_t* at = take(1);
    return at == nullptr ? 0 : *at;
  }
  uint16_t u16() {
    const uint8_t* at = take(2);
    return at == nullptr ? 0 : get_u16(at);
  }
  uint32_t u32() {
    const uint8_t* at = take(4);
    return at == nullptr ? 0 : get_u32(at);
  }
  uint64_t u64() {
    const uint8_t* at = take(8);
    return at == nullptr ? 0 : get_u64(at);
  }
  std::string str() {
    const uint16_t size = u16();
    if (size > kMaxEnvelopeStringBytes) {
      _ok = false;
      return {};
    }
    const uint8_t* at = take(size);
    return at == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(at), size);
  }

 private:
  std::span<const uint8_t> _bytes;
  size_t _position = 0;
  bool _ok = true;
};

bool is_queue_id(std::string_view id) {
  if (id.size() != kQueueIdBytes) {
    return false;
  }
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'))) {
      return false;
    }
  }
  return true;
}

}  // namespace

void encode_record_header(const RecordHeader& header, uint8_t* out) {
  SLUICE_ASSERT(header.magic == kRecordMagic);
  SLUICE_ASSERT(header.version == kFormatVersion);
  SLUICE_ASSERT(header.payload_length <= kMaxPayloadBytes);
  put_u32(out + 0, header.magic);
  put_u16(out + 4, header.version);
  put_u16(out + 6, static_cast<uint16_t>(header.type));
  put_u64(out + 8, header.segment_id);
  put_u32(out + 16, header.generation);
  put_u64(out + 20, header.sequence);
  put_u32(out + 28, header.payload_length);
  put_u32(out + kRecordCrcOffset, header.crc);
}

RecordHeader decode_record_header(const uint8_t* in) {
  RecordHeader header;
  header.magic = get_u32(in + 0);
  header.version = get_u16(in + 4);
  header.type = static_cast<RecordType>(get_u16(in + 6));
  header.segment_id = get_u64(in + 8);
  header.generation = get_u32(in + 16);
  header.sequence = get_u64(in + 20);
  header.payload_length = get_u32(in + 28);
  header.crc = get_u32(in + kRecordCrcOffset);
  return header;
}

uint32_t record_crc(const uint8_t* header_bytes, uint32_t payload_crc) {
  uint8_t copy[kRecordHeaderBytes];
  std::memcpy(copy, header_bytes, kRecordHeaderBytes);
  put_u32(copy + kRecordCrcOffset, 0);
  return crc32c_extend(payload_crc, copy, sizeof(copy));
}

void seal_record_header(RecordHeader header, uint32_t payload_crc, uint8_t* out) {
  header.crc = 0;
  encode_record_header(header, out);
  put_u32(out + kRecordCrcOffset, record_crc(out, payload_crc));
  SLUICE_ASSERT(decode_record_header(out).crc == record_crc(out, payload_crc));
}

size_t message_meta_bytes(const Envelope& envelope) {
  size_t size = kQueueIdBytes + 8 + 8 + 4 + 4;
  size += 2 + envelope.sender.size() + 2 + envelope.client_address.size() + 2 + envelope.client_helo.size();
  size += 1 + 2 + envelope.envid.size();
  size += 2 + envelope.dsn_of.size();
  size += 4;
  for (const auto& recipient : envelope.recipients) {
    size += 2 + recipient.size() + 1 + 2;
  }
  for (const auto& dsn : envelope.recipient_dsn) {
    size += dsn.orcpt.size();
  }
  return size;
}

std::string encode_message_head(std::string_view queue_id, uint64_t arrival_ms, uint64_t rfc_size,
                                const Envelope& envelope, uint32_t wire_length) {
  SLUICE_ASSERT(is_queue_id(queue_id));
  SLUICE_ASSERT(envelope.recipients.size() <= kMaxRecipients);
  SLUICE_ASSERT(envelope.recipient_dsn.size() <= envelope.recipients.size());
  SLUICE_ASSERT(envelope.ret <= DsnRet::hdrs);
  SLUICE_ASSERT(envelope.dsn_of.empty() || is_queue_id(envelope.dsn_of));
  std::string head;
  head.reserve(kRecordHeaderBytes + message_meta_bytes(envelope));
  head.resize(kRecordHeaderBytes);  // room for the header, sealed when the record is placed
  Writer writer(head);
  head.append(queue_id);
  writer.u64(arrival_ms);
  writer.u64(rfc_size);
  writer.u32((envelope.body_8bit ? kFlagBody8bit : 0u) | (envelope.smtputf8 ? kFlagSmtputf8 : 0u));
  writer.u32(wire_length);
  writer.str(envelope.sender);
  writer.str(envelope.client_address);
  writer.str(envelope.client_helo);
  writer.u8(static_cast<uint8_t>(envelope.ret));
  writer.str(envelope.envid);
  writer.str(envelope.dsn_of);
  writer.u32(static_cast<uint32_t>(envelope.recipients.size()));
  for (size_t i = 0; i < envelope.recipients.size(); ++i) {
    writer.str(envelope.recipients[i]);
    const RecipientDsn none;
    const RecipientDsn& dsn = i < envelope.recipient_dsn.size() ? envelope.recipient_dsn[i] : none;
    SLUICE_ASSERT((dsn.notify & ~kNotifyAll) == 0);
    writer.u8(dsn.notify);
    writer.str(dsn.orcpt);
  }
  SLUICE_ASSERT(head.size() == kRecordHeaderBytes + message_meta_bytes(envelope));
  return head;
}

absl::StatusOr<MessageMeta> decode_message_meta(std::span<const uint8_t> payload, uint16_t version) {
  SLUICE_ASSERT(version >= kOldestReadableVersion && version <= kFormatVersion);  // scan_records checked it
  Reader reader(payload);
  MessageMeta meta;
  const uint8_t* id = reader.take(kQueueIdBytes);
  if (id != nullptr) {
    meta.queue_id.assign(reinterpret_cast<const char*>(id), kQueueIdBytes);
  }
  meta.arrival_ms = reader.u64();
  meta.rfc_size = reader.u64();
  const uint32_t flags = reader.u32();
  meta.envelope.body_8bit = (flags & kFlagBody8bit) != 0;
  meta.envelope.smtputf8 = (flags & kFlagSmtputf8) != 0;
  meta.wire_length = reader.u32();
  meta.envelope.sender = reader.str();
  meta.envelope.client_address = reader.str();
  meta.envelope.client_helo = reader.str();
  const bool dsn = version >= kFirstDsnVersion;  // v1 has no DSN fields: every one reads as not given
  const uint8_t ret = dsn ? reader.u8() : 0;
  if (dsn) {
    meta.envelope.envid = reader.str();
  }
  if (version >= kFirstDsnFactsVersion) {  // before v3 no message says it is a DSN
    meta.envelope.dsn_of = reader.str();
  }
  const uint32_t recipients = reader.u32();
  if (!reader.ok() || recipients > kMaxRecipients || !is_queue_id(meta.queue_id) ||
      ret > static_cast<uint8_t>(DsnRet::hdrs) || !(meta.envelope.dsn_of.empty() || is_queue_id(meta.envelope.dsn_of))) {
    return absl::DataLossError("spool: malformed message envelope");
  }
  meta.envelope.ret = static_cast<DsnRet>(ret);
  meta.envelope.recipients.reserve(recipients);
  meta.envelope.recipient_dsn.reserve(recipients);
  for (uint32_t i = 0; i < recipients && reader.ok(); ++i) {
    meta.envelope.recipients.push_back(reader.str());
    RecipientDsn& recipient_dsn = meta.envelope.recipient_dsn.emplace_back();
    if (dsn) {
      recipient_dsn.notify = reader.u8();
      recipient_dsn.orcpt = reader.str();
      if ((recipient_dsn.notify & ~kNotifyAll) != 0) {
        return absl::DataLossError("spool: malformed recipient notify");
      }
    }
  }
  if (!reader.ok() || payload.size() - reader.position() != meta.wire_length) {
    return absl::DataLossError("spool: message envelope and length disagree");
  }
  meta.wire_offset = static_cast<uint32_t>(reader.position());
  return meta;
}

void encode_file_header_payload(const FileHeaderPayload& payload, uint8_t* out) {
  put_u64(out + 0, payload.segment_bytes);
  put_u32(out + 8, payload.shard);
  put_u32(out + 12, 0);
  put_u64(out + 16, payload.created_ms);
}

absl::StatusOr<FileHeaderPayload> decode_file_header_payload(std::span<const uint8_t> payload) {
  if (payload.size() != kFileHeaderPayloadBytes || get_u32(payload.data() + 12) != 0) {
    return absl::DataLossError("spool: malformed file header");
  }
  FileHeaderPayload header;
  header.segment_bytes = get_u64(payload.data() + 0);
  header.shard = get_u32(payload.data() + 8);
  header.created_ms = get_u64(payload.data() + 16);
  return header;
}

size_t journal_payload_bytes(const JournalEntry& entry) {
  return is_outcome(entry.op)
             ? kJournalPayloadBytes + kJournalOutcomeBytes + entry.reply.size() + entry.remote_mta.size()
             : kJournalPayloadBytes;
}

void encode_journal_payload(const JournalEntry& entry, uint8_t* out) {
  SLUICE_ASSERT(is_queue_id(entry.queue_id));
  SLUICE_ASSERT(!entry.relayed || entry.op == JournalOp::delivered, "only a delivery is relayed");
  put_u16(out + 0, static_cast<uint16_t>(entry.op));
  put_u16(out + 2, entry.relayed ? kJournalFlagRelayed : 0);
  std::memcpy(out + 4, entry.queue_id.data(), kQueueIdBytes);
  put_u32(out + 4 + kQueueIdBytes, entry.argument);
  if (is_outcome(entry.op)) {
    SLUICE_ASSERT(entry.reply.size() <= kMaxReplyBytes, "the spool cuts replies to the limit");
    SLUICE_ASSERT(entry.remote_mta.size() <= kMaxRemoteMtaBytes, "the spool cuts host names to the limit");
    SLUICE_ASSERT(entry.op == JournalOp::deferred || entry.next_attempt_ms == 0);
    uint8_t* extension = out + kJournalPayloadBytes;
    put_u64(extension + 0, entry.next_attempt_ms);
    put_u32(extension + 8, entry.attempts);
    put_u16(extension + 12, static_cast<uint16_t>(entry.reply.size()));
    uint8_t* at = extension + kJournalOutcomeV2Bytes;
    std::memcpy(at, entry.reply.data(), entry.reply.size());
    at += entry.reply.size();
    put_u16(at, static_cast<uint16_t>(entry.remote_mta.size()));
    std::memcpy(at + 2, entry.remote_mta.data(), entry.remote_mta.size());
  } else {
    SLUICE_ASSERT(entry.next_attempt_ms == 0 && entry.attempts == 0 && entry.reply.empty() && entry.remote_mta.empty(),
                  "only outcomes carry an outcome");
  }
  SLUICE_DEBUG_ASSERT(decode_journal_payload(std::span<const uint8_t>(out, journal_payload_bytes(entry))).ok(),
                      "a journal entry reads back as written");
}

absl::StatusOr<JournalEntry> decode_journal_payload(std::span<const uint8_t> payload, uint16_t version) {
  SLUICE_ASSERT(version >= kOldestReadableVersion && version <= kFormatVersion);  // scan_records checked it
  if (payload.size() < kJournalPayloadBytes) {
    return absl::DataLossError("spool: malformed journal entry");
  }
  JournalEntry entry;
  const uint16_t op = get_u16(payload.data());
  const uint16_t flags = get_u16(payload.data() + 2);
  entry.queue_id.assign(reinterpret_cast<const char*>(payload.data() + 4), kQueueIdBytes);
  entry.argument = get_u32(payload.data() + 4 + kQueueIdBytes);
  // Before v3 the flags were reserved (0); in v3 only a delivered outcome may say relayed.
  const uint16_t flags_allowed =
      version >= kFirstDsnFactsVersion && op == static_cast<uint16_t>(JournalOp::delivered) ? kJournalFlagRelayed : 0;
  if (op < static_cast<uint16_t>(JournalOp::remove) || op > static_cast<uint16_t>(JournalOp::checkpoint) ||
      (flags & ~flags_allowed) != 0 || !is_queue_id(entry.queue_id)) {
    return absl::DataLossError("spool: malformed journal entry");
  }
  entry.op = static_cast<JournalOp>(op);
  entry.relayed = (flags & kJournalFlagRelayed) != 0;
  if (!is_outcome(entry.op)) {
    if (payload.size() != kJournalPayloadBytes) {
      return absl::DataLossError("spool: journal entry of the wrong length");
    }
    return entry;
  }
  // An outcome: the extension must be there in full, its strings within their limits, and the
  // payload must end where the last of them (v3: the remote MTA, before: the reply) does.
  const bool has_remote_mta = version >= kFirstDsnFactsVersion;
  const size_t fixed_bytes = has_remote_mta ? kJournalOutcomeBytes : kJournalOutcomeV2Bytes;
  if (payload.size() < kJournalPayloadBytes + fixed_bytes) {
    return absl::DataLossError("spool: outcome record cut short");
  }
  const uint8_t* extension = payload.data() + kJournalPayloadBytes;
  entry.next_attempt_ms = get_u64(extension + 0);
  entry.attempts = get_u32(extension + 8);
  const size_t reply_bytes = get_u16(extension + 12);
  const size_t reply_end = kJournalPayloadBytes + kJournalOutcomeV2Bytes + reply_bytes;  // where the reply ends
  // fixed_bytes covers the remote MTA's length field: it must fit after the reply.
  if (reply_bytes > kMaxReplyBytes || payload.size() < reply_end + (fixed_bytes - kJournalOutcomeV2Bytes) ||
      (entry.op != JournalOp::deferred && entry.next_attempt_ms != 0)) {
    return absl::DataLossError("spool: malformed outcome record");
  }
  entry.reply.assign(reinterpret_cast<const char*>(payload.data() + reply_end - reply_bytes), reply_bytes);
  size_t end = reply_end;
  if (has_remote_mta) {
    const size_t remote_mta_bytes = get_u16(payload.data() + reply_end);
    end = reply_end + 2 + remote_mta_bytes;
    if (remote_mta_bytes > kMaxRemoteMtaBytes || payload.size() < end) {
      return absl::DataLossError("spool: malformed outcome record");
    }
    entry.remote_mta.assign(reinterpret_cast<const char*>(payload.data() + reply_end + 2), remote_mta_bytes);
  }
  if (payload.size() != end) {
    return absl::DataLossError("spool: malformed outcome record");
  }
  return entry;
}

namespace {

// `record` holds room for the header, then the payload: seals the header over it.
std::string seal_small_record(RecordType type, uint64_t file_id, uint32_t generation, uint64_t sequence,
                              std::string record) {
  auto* bytes = reinterpret_cast<uint8_t*>(record.data());
  const size_t payload_bytes = record.size() - kRecordHeaderBytes;
  RecordHeader header;
  header.type = type;
  header.segment_id = file_id;
  header.generation = generation;
  header.sequence = sequence;
  header.payload_length = static_cast<uint32_t>(payload_bytes);
  seal_record_header(header, crc32c(bytes + kRecordHeaderBytes, payload_bytes), bytes);
  return record;
}

// PREFIX followed by exactly 16 lower-case hex digits.
std::optional<uint64_t> parse_hex_suffix(std::string_view name, std::string_view prefix) {
  constexpr size_t kDigits = 16;
  if (!name.starts_with(prefix) || name.size() != prefix.size() + kDigits) {
    return std::nullopt;
  }
  uint64_t number = 0;
  for (const char c : name.substr(prefix.size())) {
    if (c >= '0' && c <= '9') {
      number = number * 16 + static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      number = number * 16 + static_cast<uint64_t>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
  }
  return number;
}

}  // namespace

std::string encode_journal_record(const JournalEntry& entry, uint32_t generation, uint64_t sequence) {
  std::string record(kRecordHeaderBytes + journal_payload_bytes(entry), '\0');
  encode_journal_payload(entry, reinterpret_cast<uint8_t*>(record.data()) + kRecordHeaderBytes);
  return seal_small_record(RecordType::journal, kJournalFileId, generation, sequence, std::move(record));
}

JournalEntry checkpoint_entry(uint64_t records) {
  SLUICE_ASSERT(records <= UINT32_MAX);
  return JournalEntry{JournalOp::checkpoint, std::string(kQueueIdBytes, '0'), static_cast<uint32_t>(records)};
}

std::string journal_path(const std::string& shard_dir, uint64_t number) {
  char name[32];
  std::snprintf(name, sizeof(name), "journal-%016llx", static_cast<unsigned long long>(number));
  return shard_dir + "/" + name;
}

std::optional<uint64_t> parse_journal_name(std::string_view name) {
  if (name == "journal") {
    return 0;
  }
  return parse_hex_suffix(name, "journal-");
}

std::optional<uint64_t> parse_segment_name(std::string_view name) {
  return parse_hex_suffix(name, "seg-");
}

std::string encode_file_header_record(uint64_t file_id, uint32_t generation, const FileHeaderPayload& payload) {
  std::string record(kFileHeaderRecordBytes, '\0');
  encode_file_header_payload(payload, reinterpret_cast<uint8_t*>(record.data()) + kRecordHeaderBytes);
  return seal_small_record(RecordType::file_header, file_id, generation, 0, std::move(record));
}

}  // namespace sluice::spool
