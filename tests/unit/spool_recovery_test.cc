// Spool recovery against real files: everything written comes back byte-exact; a torn tail
// (cut or garbled at every offset of the last records) yields exactly the complete records
// before it; stale valid-looking records past the tail are ignored; the journal is applied; the
// id floor only grows; half-created segments go; the directory lock excludes a second holder;
// missing spool directories are created from any form of path.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "engine/io/assert.h"
#include "spool/crc32c.h"
#include "spool/spool.h"
#include "spool/spool_testing.h"

namespace sluice::spool {
namespace {

using testing::drain;
using testing::journal_files;
using testing::read_file;
using testing::wait_for_ready_segments;
using testing::write_file;

// The v1 encoding, written out by hand as the previous release wrote it (this build never writes
// v1): record headers of version 1, and message envelopes without the DSN fields.
void put_le(std::string& out, uint64_t value, int octets) {
  for (int i = 0; i < octets; ++i) {
    out.push_back(static_cast<char>(value >> (8 * i)));
  }
}
void put_v1_str(std::string& out, std::string_view text) {
  put_le(out, text.size(), 2);
  out.append(text);
}
std::string old_record(uint16_t version, RecordType type, uint64_t file_id, uint32_t generation, uint64_t sequence,
                       const std::string& payload) {
  std::string record;
  put_le(record, kRecordMagic, 4);
  put_le(record, version, 2);
  put_le(record, static_cast<uint16_t>(type), 2);
  put_le(record, file_id, 8);
  put_le(record, generation, 4);
  put_le(record, sequence, 8);
  put_le(record, payload.size(), 4);
  put_le(record, 0, 4);  // the crc, filled below
  const uint32_t crc = record_crc(reinterpret_cast<const uint8_t*>(record.data()), crc32c(payload));
  record.resize(kRecordCrcOffset);
  put_le(record, crc, 4);
  return record + payload;
}
std::string v1_record(RecordType type, uint64_t file_id, uint32_t generation, uint64_t sequence,
                      const std::string& payload) {
  return old_record(1, type, file_id, generation, sequence, payload);
}
std::string old_file_header(uint16_t version, uint64_t file_id, uint32_t generation, uint64_t segment_bytes) {
  std::string payload;
  put_le(payload, segment_bytes, 8);
  put_le(payload, 0, 4);  // shard
  put_le(payload, 0, 4);  // reserved
  put_le(payload, 1600000000000, 8);
  return old_record(version, RecordType::file_header, file_id, generation, 0, payload);
}
std::string v1_file_header(uint64_t file_id, uint32_t generation, uint64_t segment_bytes) {
  std::string payload;
  put_le(payload, segment_bytes, 8);
  put_le(payload, 0, 4);  // shard
  put_le(payload, 0, 4);  // reserved
  put_le(payload, 1600000000000, 8);
  return v1_record(RecordType::file_header, file_id, generation, 0, payload);
}
std::string v1_message(uint64_t segment_id, uint32_t generation, uint64_t sequence, const std::string& id,
                       const std::string& sender, const std::vector<std::string>& recipients, const std::string& wire) {
  std::string payload = id;
  put_le(payload, 1600000000000 + sequence, 8);  // arrival_ms
  put_le(payload, wire.size(), 8);               // rfc_size
  put_le(payload, kFlagBody8bit, 4);
  put_le(payload, wire.size(), 4);
  put_v1_str(payload, sender);
  put_v1_str(payload, "192.0.2.1");
  put_v1_str(payload, "old.example");
  put_le(payload, recipients.size(), 4);
  for (const auto& recipient : recipients) {
    put_v1_str(payload, recipient);
  }
  return v1_record(RecordType::message, segment_id, generation, sequence, payload + wire);
}
std::string v1_journal(uint32_t generation, const std::vector<JournalEntry>& entries) {
  std::string file = v1_file_header(kJournalFileId, generation, 0);
  uint64_t sequence = 1;
  for (const auto& entry : entries) {
    std::string payload(kJournalPayloadBytes, '\0');
    encode_journal_payload(entry, reinterpret_cast<uint8_t*>(payload.data()));  // the same in v1
    file += v1_record(RecordType::journal, kJournalFileId, generation, sequence++, payload);
  }
  return file;
}

// The v2 encoding, as the previous release wrote it: messages with the DSN parameters but no
// dsn_of, outcome records without the remote MTA (and flags 0).
std::string v2_message(uint64_t segment_id, uint32_t generation, uint64_t sequence, const std::string& id,
                       const std::string& sender, const std::vector<std::string>& recipients, const std::string& wire) {
  std::string payload = id;
  put_le(payload, 1650000000000 + sequence, 8);  // arrival_ms
  put_le(payload, wire.size(), 8);               // rfc_size
  put_le(payload, 0, 4);
  put_le(payload, wire.size(), 4);
  put_v1_str(payload, sender);
  put_v1_str(payload, "192.0.2.2");
  put_v1_str(payload, "two.example");
  put_le(payload, static_cast<uint8_t>(DsnRet::hdrs), 1);
  put_v1_str(payload, "env2");
  put_le(payload, recipients.size(), 4);
  for (const auto& recipient : recipients) {
    put_v1_str(payload, recipient);
    put_le(payload, kNotifyFailure | kNotifySuccess, 1);
    put_v1_str(payload, "rfc822;" + recipient);
  }
  return old_record(2, RecordType::message, segment_id, generation, sequence, payload + wire);
}
std::string v2_journal(uint32_t generation, const std::vector<JournalEntry>& entries) {
  std::string file = old_file_header(2, kJournalFileId, generation, 0);
  uint64_t sequence = 1;
  for (const auto& entry : entries) {
    SLUICE_ASSERT(entry.remote_mta.empty() && !entry.relayed, "v2 has neither");
    std::string payload(journal_payload_bytes(entry), '\0');
    encode_journal_payload(entry, reinterpret_cast<uint8_t*>(payload.data()));
    if (is_outcome(entry.op)) {
      payload.resize(payload.size() - 2);  // v3's remote MTA length (0 here): v2 ends at the reply
    }
    file += old_record(2, RecordType::journal, kJournalFileId, generation, sequence++, payload);
  }
  return file;
}

struct Written {
  std::string id;
  std::string sender;
  std::vector<std::string> recipients;
  std::string body;
  DsnRet ret = DsnRet::none;
  std::string envid;
  std::vector<RecipientDsn> recipient_dsn;  // one per recipient, as recovery gives them back
  std::string dsn_of;
};

// The DSN parameters write_message stores for `seed`: every value of each field, empty ones and
// a message that gave none at all (recipient_dsn left short) among them.
void fill_dsn(uint32_t seed, Written& w, Envelope& envelope) {
  envelope.ret = static_cast<DsnRet>(seed % 3);
  envelope.envid = seed % 2 == 0 ? "" : "env+2B" + std::to_string(seed);
  if (seed % 5 != 0) {
    envelope.recipient_dsn = {RecipientDsn{static_cast<uint8_t>(seed % 16), seed % 3 == 0 ? "" : "rfc822;r1+40x"}};
    if (seed % 7 != 0) {
      envelope.recipient_dsn.push_back(RecipientDsn{kNotifyNever, "utf-8;r" + std::to_string(seed)});
    }
  }
  w.ret = envelope.ret;
  w.envid = envelope.envid;
  w.recipient_dsn = envelope.recipient_dsn;
  w.recipient_dsn.resize(w.recipients.size());
  // Some are DSNs: they name the message they report on.
  envelope.dsn_of = seed % 4 == 1 ? IdGenerator(1, 1600000000000).next(1600000000000 + seed) : "";
  w.dsn_of = envelope.dsn_of;
}

class SpoolRecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/spool_recovery_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    _dir = pattern;
    _options.dir = _dir;
    _options.segment_bytes = 64 << 10;
  }
  void TearDown() override {
    _spool.reset();
    std::filesystem::remove_all(_dir);
  }
  void open_spool(const std::string& dir) {
    auto recovered = recover_shard(dir, 0);
    ASSERT_TRUE(recovered.ok()) << recovered.status();
    _options.dir = dir;
    auto spool = ShardSpool::open(_options, *std::move(recovered));
    ASSERT_TRUE(spool.ok()) << spool.status();
    _spool = *std::move(spool);
  }
  // Appends and commits one message at a time (each its own fdatasync).
  Written write_message(size_t body_bytes, uint32_t seed) {
    EXPECT_TRUE(wait_for_ready_segments(*_spool, 1));
    std::mt19937 rng(seed);
    Written w;
    w.id = _ids.next(1700000000000 + seed);
    w.sender = "s" + std::to_string(seed) + "@example.test";
    w.recipients = {"r1@example.test", "r" + std::to_string(seed) + "@x.example"};
    w.body.resize(body_bytes);
    for (auto& c : w.body) {
      c = static_cast<char>(rng());
    }
    Envelope envelope;
    envelope.sender = w.sender;
    envelope.recipients = w.recipients;
    envelope.body_8bit = seed % 2 == 0;
    envelope.smtputf8 = seed % 3 == 0;
    envelope.client_address = "192.0.2.7";
    envelope.client_helo = "helo.example";
    fill_dsn(seed, w, envelope);
    auto ticket = _spool->append_message(w.id, 1700000000000 + seed, std::move(envelope), body_bytes + 7, w.body);
    EXPECT_TRUE(ticket.ok()) << ticket.status();
    auto done = drain(*_spool, _now);
    EXPECT_EQ(done.size(), 1u);
    EXPECT_TRUE(done.at(0).status.ok());
    return w;
  }
  std::string segment_path(const std::string& dir, uint64_t id) {
    char name[40];
    std::snprintf(name, sizeof(name), "/shard-0/seg-%016llx", static_cast<unsigned long long>(id));
    return dir + name;
  }

  std::string _dir;
  SpoolOptions _options;
  std::unique_ptr<ShardSpool> _spool;
  IdGenerator _ids{0, 1700000000000};
  uint64_t _now = 0;
};

TEST_F(SpoolRecoveryTest, EveryMessageComesBackByteExact) {
  open_spool(_dir);
  std::vector<Written> written;
  for (uint32_t i = 0; i < 120; ++i) {
    const size_t size = i % 10 == 0 ? 0 : (i % 7 == 0 ? 9000 : 1 + i * 13);  // empty, short, multi-KiB
    written.push_back(write_message(size, i));
  }
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  ASSERT_EQ(recovered->messages.size(), written.size());
  EXPECT_GE(recovered->segments.size(), 3u);
  EXPECT_EQ(recovered->torn_tails, 0u);
  EXPECT_EQ(recovered->max_id_ms, 1700000000000u + 119);
  EXPECT_EQ(recovered->old_format_segments, 0u);
  for (size_t i = 0; i < written.size(); ++i) {
    const MessageInfo& info = recovered->messages[i];
    EXPECT_EQ(info.id, written[i].id);
    EXPECT_EQ(info.sender, written[i].sender);
    EXPECT_EQ(info.recipients, written[i].recipients);
    EXPECT_EQ(info.rfc_size, written[i].body.size() + 7);
    EXPECT_EQ(info.arrival_ms, 1700000000000u + i);
    EXPECT_EQ(info.body_8bit, i % 2 == 0);
    EXPECT_EQ(info.smtputf8, i % 3 == 0);
    EXPECT_EQ(info.client_helo, "helo.example");
    EXPECT_EQ(info.status, MessageStatus::queued);
    EXPECT_EQ(info.dsn_ret, written[i].ret);
    EXPECT_EQ(info.dsn_envid, written[i].envid);
    EXPECT_EQ(info.recipient_dsn, written[i].recipient_dsn);
    EXPECT_EQ(info.dsn_of, written[i].dsn_of);
  }
  const uint32_t generation = recovered->generation;
  open_spool(_dir);
  for (const auto& w : written) {
    auto bytes = _spool->read_message(w.id);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, w.body);
  }
  // New messages after a restart go to new segments of a newer generation; old ones stay.
  write_message(100, 1000);
  _spool.reset();
  auto again = recover_shard(_dir, 0);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->messages.size(), written.size() + 1);
  EXPECT_GT(again->generation, generation);
}

// Every DSN field at its limits and empty comes back from the live index and from recovery.
TEST_F(SpoolRecoveryTest, DsnParametersAtTheirLimitsRoundTrip) {
  open_spool(_dir);
  ASSERT_TRUE(wait_for_ready_segments(*_spool, 1));
  const std::string longest(kMaxEnvelopeStringBytes, 'x');
  Envelope envelope;
  envelope.sender = "a@example.test";
  envelope.recipients = {"r1@example.test", "r2@example.test", "r3@example.test"};
  envelope.ret = DsnRet::full;
  envelope.envid = longest;
  envelope.recipient_dsn = {RecipientDsn{kNotifySuccess | kNotifyFailure | kNotifyDelay, longest}, RecipientDsn{0, ""},
                            RecipientDsn{kNotifyNever, "rfc822;r3@example.test"}};
  const std::vector<RecipientDsn> expected = envelope.recipient_dsn;
  const std::string id = _ids.next(1700000000000);
  ASSERT_TRUE(_spool->append_message(id, 1700000000000, envelope, 4, "body").ok());
  ASSERT_TRUE(drain(*_spool, _now).at(0).status.ok());
  const auto live = _spool->find(id);
  ASSERT_TRUE(live.has_value());
  EXPECT_EQ(live->dsn_ret, DsnRet::full);
  EXPECT_EQ(live->dsn_envid, longest);
  EXPECT_EQ(live->recipient_dsn, expected);
  // Over the limit, or more DSN entries than recipients: refused, not written.
  Envelope too_long = envelope;
  too_long.recipient_dsn[1].orcpt = longest + "x";
  EXPECT_FALSE(_spool->append_message(_ids.next(1700000000001), 1700000000001, too_long, 4, "body").ok());
  Envelope too_many = envelope;
  too_many.recipient_dsn.push_back(RecipientDsn{});
  EXPECT_FALSE(_spool->append_message(_ids.next(1700000000002), 1700000000002, too_many, 4, "body").ok());
  // dsn_of is a queue id or nothing.
  for (const std::string bad : {"0123456789abcdef", "0123456789ABCDE", "0123456789ABCDEF0"}) {
    Envelope malformed = envelope;
    malformed.dsn_of = bad;
    EXPECT_EQ(_spool->append_message(_ids.next(1700000000003), 1700000000003, malformed, 4, "body").status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  ASSERT_EQ(recovered->messages.size(), 1u);
  EXPECT_EQ(recovered->messages[0].dsn_ret, DsnRet::full);
  EXPECT_EQ(recovered->messages[0].dsn_envid, longest);
  EXPECT_EQ(recovered->messages[0].recipient_dsn, expected);
}

// A spool of the previous release (v1 segment, v1 journal) is recovered with every message, read
// back byte-exact, and lives beside the v2 segments this build writes; a v2 record appended to a
// v1 file is not taken (a file's records are all of its header's version).
TEST_F(SpoolRecoveryTest, AVersionOneSegmentIsStillRecovered) {
  std::filesystem::create_directories(_dir + "/shard-0");
  const std::string ids[3] = {_ids.next(1600000000001), _ids.next(1600000000002), _ids.next(1600000000003)};
  const std::string wires[3] = {"Subject: one\r\n\r\nfirst\r\n", "", "Subject: three\r\n\r\n\xC3\xA9\r\n"};
  std::string segment = v1_file_header(5, 1, _options.segment_bytes);
  for (uint64_t i = 0; i < 3; ++i) {
    segment += v1_message(5, 1, i + 1, ids[i], "old" + std::to_string(i) + "@example.test",
                          {"a@example.test", "b" + std::to_string(i) + "@example.test"}, wires[i]);
  }
  const size_t v1_end = segment.size();
  segment.resize(_options.segment_bytes, '\0');
  write_file(segment_path(_dir, 5), segment);
  write_file(_dir + "/shard-0/journal",
             v1_journal(1, {JournalEntry{JournalOp::remove, ids[1], 0}, JournalEntry{JournalOp::hold, ids[2], 0}}));
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ(recovered->torn_tails, 0u);
  EXPECT_EQ(recovered->old_format_segments, 1u);  // said in the start-up log line
  ASSERT_EQ(recovered->messages.size(), 2u);
  for (const size_t i : {size_t{0}, size_t{2}}) {
    const MessageInfo& info = recovered->messages[i == 0 ? 0 : 1];
    EXPECT_EQ(info.id, ids[i]);
    EXPECT_EQ(info.sender, "old" + std::to_string(i) + "@example.test");
    EXPECT_EQ(info.recipients, (std::vector<std::string>{"a@example.test", "b" + std::to_string(i) + "@example.test"}));
    EXPECT_EQ(info.rfc_size, wires[i].size());
    EXPECT_TRUE(info.body_8bit);
    EXPECT_EQ(info.client_helo, "old.example");
    EXPECT_EQ(info.status, i == 2 ? MessageStatus::held : MessageStatus::queued);
    EXPECT_EQ(info.dsn_ret, DsnRet::none);  // v1 had none
    EXPECT_EQ(info.dsn_envid, "");
    EXPECT_EQ(info.recipient_dsn, std::vector<RecipientDsn>(2));
  }
  EXPECT_FALSE(std::filesystem::exists(_dir + "/shard-0/journal"));  // replaced by a v2 one
  // Served by the spool, beside a new v2 message; both survive another restart.
  auto spool = ShardSpool::open(_options, *std::move(recovered));
  ASSERT_TRUE(spool.ok()) << spool.status();
  _spool = *std::move(spool);
  for (const size_t i : {size_t{0}, size_t{2}}) {
    auto bytes = _spool->read_message(ids[i]);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, wires[i]);
  }
  const Written fresh = write_message(50, 3);
  EXPECT_NE(_spool->find(fresh.id)->location.segment_id, 5u);  // never appended to the v1 file
  _spool.reset();
  auto again = recover_shard(_dir, 0);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->messages.size(), 3u);
  EXPECT_EQ(again->old_format_segments, 1u);  // still read as v1, the new one is v2
  EXPECT_EQ(again->messages[2].id, fresh.id);
  EXPECT_EQ(again->messages[2].recipient_dsn, fresh.recipient_dsn);
  EXPECT_EQ(again->messages[1].status, MessageStatus::held);

  // A v2 record after v1 ones in the same file ends the file there.
  std::string mixed = read_file(segment_path(_dir, 5));
  Envelope envelope;
  envelope.sender = "x@example.test";
  envelope.recipients = {"y@example.test"};
  const std::string new_id = _ids.next(1600000000004);
  std::string record = encode_message_head(new_id, 1, 0, envelope, 0);
  RecordHeader header;
  header.segment_id = 5;
  header.generation = 1;
  header.sequence = 4;
  header.payload_length = static_cast<uint32_t>(record.size() - kRecordHeaderBytes);
  seal_record_header(header, crc32c(std::string_view(record).substr(kRecordHeaderBytes)),
                     reinterpret_cast<uint8_t*>(record.data()));
  mixed.replace(v1_end, record.size(), record);
  const std::string work = _dir + "/mixed";
  std::filesystem::create_directories(work + "/shard-0");
  write_file(segment_path(work, 5), mixed);
  auto scanned = recover_shard(work, 0);
  ASSERT_TRUE(scanned.ok()) << scanned.status();
  EXPECT_EQ(scanned->torn_tails, 1u);
  ASSERT_EQ(scanned->messages.size(), 3u);  // the three v1 ones (no journal here), not the v2 one
  for (const auto& message : scanned->messages) {
    EXPECT_NE(message.id, new_id);
  }
}

class TornTailTest : public SpoolRecoveryTest {
 protected:
  void SetUp() override {
    SpoolRecoveryTest::SetUp();
    open_spool(_dir);
    for (uint32_t i = 0; i < 4; ++i) {
      _written.push_back(write_message(40 + i * 30, i));
    }
    _segment = _spool->find(_written[0].id)->location.segment_id;
    for (const auto& w : _written) {
      _starts.push_back(_spool->find(w.id)->location.record_offset);
      ASSERT_EQ(_spool->find(w.id)->location.segment_id, _segment);
    }
    _end = _spool->find(_written.back().id)->location.wire_offset + _written.back().body.size();
    _spool.reset();
    _pristine = read_file(segment_path(_dir, _segment));
    ASSERT_EQ(_pristine.size(), _options.segment_bytes);
    _work = _dir + "/work";
  }
  // Recovers a spool whose only segment holds `bytes`; returns the ids recovered.
  std::vector<std::string> recover_bytes(const std::string& bytes) {
    std::filesystem::remove_all(_work);
    std::filesystem::create_directories(_work + "/shard-0");
    write_file(segment_path(_work, _segment), bytes);
    auto recovered = recover_shard(_work, 0);
    EXPECT_TRUE(recovered.ok()) << recovered.status();
    std::vector<std::string> ids;
    if (recovered.ok()) {
      for (const auto& m : recovered->messages) {
        ids.push_back(m.id);
      }
    }
    return ids;
  }
  std::vector<std::string> first_ids(size_t count) {
    std::vector<std::string> ids;
    for (size_t i = 0; i < count; ++i) {
      ids.push_back(_written[i].id);
    }
    return ids;
  }
  // Messages wholly before `offset`.
  size_t complete_before(uint64_t offset) {
    size_t count = 0;
    for (size_t i = 0; i < _starts.size(); ++i) {
      const uint64_t end = i + 1 < _starts.size() ? _starts[i + 1] : _end;
      count += end <= offset ? 1 : 0;
    }
    return count;
  }

  std::vector<Written> _written;
  std::vector<uint64_t> _starts;
  uint64_t _segment = 0;
  uint64_t _end = 0;
  std::string _pristine;
  std::string _work;
};

TEST_F(TornTailTest, CutAtEveryOffsetOfTheLastTwoRecords) {
  for (uint64_t offset = _starts[2]; offset <= _end; ++offset) {
    // Zeroed from `offset` on (lost writes into the preallocated file), in memory at every
    // offset and through the files at every fourth (each recovery fsyncs; keep the test quick)...
    std::string zeroed = _pristine;
    std::fill(zeroed.begin() + static_cast<ptrdiff_t>(offset), zeroed.end(), '\0');
    const FileScan scan =
        scan_records({reinterpret_cast<const uint8_t*>(zeroed.data()), zeroed.size()}, _segment, RecordType::message);
    ASSERT_EQ(scan.records.size(), complete_before(offset)) << "zeroed at " << offset;
    if (offset % 4 == 0) {
      ASSERT_EQ(recover_bytes(zeroed), first_ids(complete_before(offset))) << "zeroed at " << offset;
    }
    // ...and the file cut short there, through the files at every offset.
    ASSERT_EQ(recover_bytes(_pristine.substr(0, offset)), first_ids(complete_before(offset))) << "cut at " << offset;
  }
}

TEST_F(TornTailTest, GarbleEveryByteOfTheLastRecord) {
  for (uint64_t offset = _starts[3]; offset < _end; ++offset) {
    for (uint8_t mask : {0x01, 0x80, 0xFF}) {
      std::string garbled = _pristine;
      garbled[offset] = static_cast<char>(garbled[offset] ^ mask);
      const FileScan scan = scan_records({reinterpret_cast<const uint8_t*>(garbled.data()), garbled.size()}, _segment,
                                         RecordType::message);
      ASSERT_EQ(scan.records.size(), 3u) << "offset " << offset << " mask " << int(mask);
      EXPECT_TRUE(scan.torn);
    }
    std::string garbled = _pristine;
    garbled[offset] = static_cast<char>(garbled[offset] ^ 0x5A);
    ASSERT_EQ(recover_bytes(garbled), first_ids(3)) << "offset " << offset;
  }
  // Garbling a middle record drops it and everything after it.
  std::string garbled = _pristine;
  garbled[_starts[1] + kRecordHeaderBytes + 3] ^= 0x10;
  EXPECT_EQ(recover_bytes(garbled), first_ids(1));
}

// A valid-looking record (correct CRC) that must not be taken: wrong generation, a gap in the
// sequence, another segment's id, or anything after the first zero header.
TEST_F(TornTailTest, StaleValidLookingRecordsPastTheTailAreIgnored) {
  const FileScan pristine = scan_records({reinterpret_cast<const uint8_t*>(_pristine.data()), _pristine.size()},
                                         _segment, RecordType::message);
  ASSERT_EQ(pristine.records.size(), 4u);
  const uint32_t generation = pristine.generation;
  auto make_record = [&](uint32_t record_generation, uint64_t sequence, uint64_t segment_id) {
    Envelope envelope;
    envelope.sender = "stale@example.test";
    envelope.recipients = {"x@example.test"};
    const std::string body = "stale body\r\n";
    std::string record =
        encode_message_head(_ids.next(1800000000000), 1, body.size(), envelope, static_cast<uint32_t>(body.size()));
    record += body;
    RecordHeader header;
    header.type = RecordType::message;
    header.segment_id = segment_id;
    header.generation = record_generation;
    header.sequence = sequence;
    header.payload_length = static_cast<uint32_t>(record.size() - kRecordHeaderBytes);
    seal_record_header(header, crc32c(record.data() + kRecordHeaderBytes, record.size() - kRecordHeaderBytes),
                       reinterpret_cast<uint8_t*>(record.data()));
    return record;
  };
  auto place = [&](uint64_t offset, const std::string& record) {
    std::string bytes = _pristine;
    bytes.replace(offset, record.size(), record);
    return bytes;
  };
  // Sanity: the right generation and sequence at the tail IS taken, so the checks below can fail.
  EXPECT_EQ(recover_bytes(place(_end, make_record(generation, 5, _segment))).size(), 5u);
  EXPECT_EQ(recover_bytes(place(_end, make_record(generation - 1, 5, _segment))), first_ids(4));
  EXPECT_EQ(recover_bytes(place(_end, make_record(generation + 1, 5, _segment))), first_ids(4));
  EXPECT_EQ(recover_bytes(place(_end, make_record(generation, 6, _segment))), first_ids(4));
  EXPECT_EQ(recover_bytes(place(_end, make_record(generation, 4, _segment))), first_ids(4));
  EXPECT_EQ(recover_bytes(place(_end, make_record(generation, 5, _segment + 1))), first_ids(4));
  EXPECT_EQ(recover_bytes(place(_end + 64, make_record(generation, 5, _segment))), first_ids(4));
  // The last record torn, an old copy of a valid one after it.
  std::string torn = place(_end + 8, make_record(generation, 5, _segment));
  torn[_starts[3] + 40] ^= 0x01;
  EXPECT_EQ(recover_bytes(torn), first_ids(3));
}

TEST_F(SpoolRecoveryTest, JournalDeleteHoldAndReleaseAreApplied) {
  open_spool(_dir);
  std::vector<Written> written;
  for (uint32_t i = 0; i < 5; ++i) {
    written.push_back(write_message(100, i));
  }
  ASSERT_TRUE(_spool->remove(written[1].id).ok());
  ASSERT_TRUE(_spool->hold(written[2].id).ok());
  ASSERT_TRUE(_spool->hold(written[3].id).ok());
  ASSERT_TRUE(_spool->release(written[3].id).ok());
  EXPECT_EQ(_spool->remove(written[1].id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(drain(*_spool, _now).size(), 4u);
  EXPECT_EQ(_spool->find(written[2].id)->status, MessageStatus::held);
  _spool.reset();

  for (int restart = 0; restart < 2; ++restart) {  // twice: the compacted journal must say the same
    auto recovered = recover_shard(_dir, 0);
    ASSERT_TRUE(recovered.ok());
    ASSERT_EQ(recovered->messages.size(), 4u);
    EXPECT_EQ(recovered->messages[0].id, written[0].id);
    EXPECT_EQ(recovered->messages[1].id, written[2].id);
    EXPECT_EQ(recovered->messages[1].status, MessageStatus::held);
    EXPECT_EQ(recovered->messages[2].id, written[3].id);
    EXPECT_EQ(recovered->messages[2].status, MessageStatus::queued);
  }
  // Removing everything empties the spool; the sealed segment goes away at the next recovery.
  open_spool(_dir);
  for (const auto& m : _spool->list()) {
    ASSERT_TRUE(_spool->remove(m.id).ok());
  }
  drain(*_spool, _now);
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok());
  EXPECT_TRUE(recovered->messages.empty());
  EXPECT_TRUE(recovered->segments.empty());
}

// What a journal of single records says, applied to a model: id -> held; removed ids absent.
using JournalModel = std::map<std::string, bool>;

TEST_F(SpoolRecoveryTest, JournalTornAtEveryOffsetKeepsExactlyTheCompleteRecords) {
  open_spool(_dir);
  std::vector<Written> written;
  for (uint32_t i = 0; i < 4; ++i) {
    written.push_back(write_message(50, i));
  }
  // One record per drain, so the journal holds them in this order, 60 octets each.
  struct Step {
    JournalOp op;
    size_t message;
  };
  const std::vector<Step> steps = {{JournalOp::hold, 0},    {JournalOp::hold, 1}, {JournalOp::release, 0},
                                   {JournalOp::remove, 2},  {JournalOp::hold, 3}, {JournalOp::remove, 1},
                                   {JournalOp::release, 3}, {JournalOp::hold, 0}};
  for (const Step& step : steps) {
    const std::string& id = written[step.message].id;
    auto ticket = step.op == JournalOp::hold      ? _spool->hold(id)
                  : step.op == JournalOp::release ? _spool->release(id)
                                                  : _spool->remove(id);
    ASSERT_TRUE(ticket.ok()) << ticket.status();
    ASSERT_EQ(drain(*_spool, _now).size(), 1u);
  }
  _spool.reset();
  const std::vector<std::string> journals = journal_files(_dir);
  ASSERT_FALSE(journals.empty());
  const std::string journal = journals.front();  // the one recovery wrote, appended to since
  const std::string bytes = read_file(journal);
  constexpr size_t kRecord = kRecordHeaderBytes + kJournalPayloadBytes;
  ASSERT_GE(bytes.size(), steps.size() * kRecord);
  const size_t first = bytes.size() - steps.size() * kRecord;  // where the steps' records start
  const std::string segment = segment_path(_dir, 1);
  const std::string segment_bytes = read_file(segment);
  const std::vector<std::string> spares(journals.begin() + 1, journals.end());

  for (size_t cut = first; cut <= bytes.size(); ++cut) {
    for (int garble = 0; garble < 2; ++garble) {
      std::string damaged = bytes.substr(0, cut);
      if (garble == 1) {
        if (cut == bytes.size()) {
          continue;
        }
        damaged = bytes;
        damaged[cut] = static_cast<char>(damaged[cut] ^ 0x40);  // a flipped bit instead of a cut
      }
      // Restore what the spool left (recovery rewrites and deletes journal files), then damage.
      for (const auto& entry : std::filesystem::directory_iterator(_dir + "/shard-0")) {
        if (parse_journal_name(entry.path().filename().string()).has_value()) {
          std::filesystem::remove(entry.path());
        }
      }
      write_file(journal, damaged);
      write_file(segment, segment_bytes);
      const size_t complete = (cut - first) / kRecord;
      JournalModel model;
      for (size_t i = 0; i < written.size(); ++i) {
        model[written[i].id] = false;
      }
      for (size_t i = 0; i < complete; ++i) {
        const std::string& id = written[steps[i].message].id;
        if (steps[i].op == JournalOp::remove) {
          model.erase(id);
        } else if (model.contains(id)) {
          model[id] = steps[i].op == JournalOp::hold;
        }
      }
      auto recovered = recover_shard(_dir, 0);
      ASSERT_TRUE(recovered.ok()) << recovered.status();
      JournalModel got;
      for (const auto& message : recovered->messages) {
        got[message.id] = message.status == MessageStatus::held;
      }
      ASSERT_EQ(got, model) << "cut at " << cut << " garble " << garble << " (" << complete << " complete records)";
    }
  }
}

// A journal write that reached the disk but reported failure: the spool told its callers it
// failed and the index says so; a restart must agree, even with the old file still there (an
// unlink not yet durable). Today's rewind wrote the next records over the failed ones, and the
// failed record past the new tail was taken as valid.
TEST_F(SpoolRecoveryTest, AFailedJournalWriteThatReachedTheDiskIsNotRevived) {
  open_spool(_dir);
  const Written a = write_message(10, 1);
  const Written b = write_message(10, 2);
  const uint64_t hold_a = _spool->hold(a.id).value();
  const uint64_t hold_b = _spool->hold(b.id).value();
  std::vector<IoRequest> requests;
  _spool->collect_io(_now + 1'000'000, requests);
  ASSERT_EQ(requests.size(), 2u);  // the write and the fdatasync linked to it
  ASSERT_EQ(requests[0].kind, IoRequest::Kind::write);
  ASSERT_TRUE(requests[0].link_next);
  const std::vector<std::string> before = journal_files(_dir);
  ASSERT_GT(testing::perform(requests[0]), 0);  // the bytes are on disk...
  const std::string failed_journal_bytes = read_file(before.front());
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, -EIO, done);        // ...but the write reports an error
  _spool->on_io_complete(requests[1].op_id, -ECANCELED, done);  // so the link broke
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].ticket, hold_a);
  EXPECT_EQ(done[1].ticket, hold_b);
  EXPECT_FALSE(done[0].status.ok());
  EXPECT_FALSE(done[1].status.ok());
  EXPECT_EQ(_spool->find(a.id)->status, MessageStatus::queued) << "a failed hold changes nothing";
  const uint64_t release_a = _spool->release(a.id).value();
  auto rest = drain(*_spool, _now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, release_a);
  EXPECT_TRUE(rest[0].status.ok());
  EXPECT_EQ(_spool->metrics().journal_rotations, 1u) << "the failed file is sealed, the journal goes on in a new one";
  EXPECT_EQ(_spool->find(b.id)->status, MessageStatus::queued);
  _spool.reset();
  EXPECT_FALSE(std::filesystem::exists(before.front())) << "superseded by the new file's checkpoint";
  for (int old_file_back = 0; old_file_back < 2; ++old_file_back) {
    if (old_file_back == 1) {
      write_file(before.front(), failed_journal_bytes);  // as if its unlink never reached the disk
    }
    auto recovered = recover_shard(_dir, 0);
    ASSERT_TRUE(recovered.ok()) << recovered.status();
    ASSERT_EQ(recovered->messages.size(), 2u);
    for (const auto& message : recovered->messages) {
      EXPECT_EQ(message.status, MessageStatus::queued) << message.id << " old file back: " << old_file_back;
    }
  }
}

TEST_F(SpoolRecoveryTest, JournalRotatesAtItsSizeLimitAndKeepsTheState) {
  _options.journal_rotate_bytes = 2048;  // ~30 records a file
  open_spool(_dir);
  std::vector<Written> written;
  for (uint32_t i = 0; i < 12; ++i) {
    written.push_back(write_message(30, i));
  }
  JournalModel model;
  for (const auto& w : written) {
    model[w.id] = false;
  }
  std::mt19937 rng(7);
  for (int round = 0; round < 400; ++round) {
    const std::string& id = written[rng() % written.size()].id;
    const bool removable = round > 300 && rng() % 8 == 0;
    if (!model.contains(id)) {
      continue;
    }
    if (removable) {
      ASSERT_TRUE(_spool->remove(id).ok());
      model.erase(id);
    } else if (rng() % 2 == 0) {
      ASSERT_TRUE(_spool->hold(id).ok());
      model[id] = true;
    } else {
      ASSERT_TRUE(_spool->release(id).ok());
      model[id] = false;
    }
    if (round % 3 == 0) {
      drain(*_spool, _now);
    }
  }
  drain(*_spool, _now);
  EXPECT_GE(_spool->metrics().journal_rotations, 5u);
  JournalModel live;
  for (const auto& message : _spool->list()) {
    live[message.id] = message.status == MessageStatus::held;
  }
  EXPECT_EQ(live, model);
  // The current file and the spare; every superseded one is gone.
  EXPECT_LE(journal_files(_dir).size(), 2u);
  for (const auto& file : journal_files(_dir)) {
    EXPECT_LE(std::filesystem::file_size(file), 2048u + 4096u) << file;
  }
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  JournalModel got;
  for (const auto& message : recovered->messages) {
    got[message.id] = message.status == MessageStatus::held;
  }
  EXPECT_EQ(got, model);
}

// A v1 spool (one file DIR/shard-N/journal) is still recovered, then replaced by a numbered one.
TEST_F(SpoolRecoveryTest, AVersionOneJournalIsRecoveredAndReplaced) {
  open_spool(_dir);
  const Written kept = write_message(10, 1);
  const Written gone = write_message(10, 2);
  _spool.reset();
  for (const auto& file : journal_files(_dir)) {
    std::filesystem::remove(file);
  }
  write_file(_dir + "/shard-0/journal",
             v1_journal(1, {JournalEntry{JournalOp::remove, gone.id, 0}, JournalEntry{JournalOp::hold, kept.id, 0}}));
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  ASSERT_EQ(recovered->messages.size(), 1u);
  EXPECT_EQ(recovered->messages[0].id, kept.id);
  EXPECT_EQ(recovered->messages[0].status, MessageStatus::held);
  EXPECT_FALSE(std::filesystem::exists(_dir + "/shard-0/journal"));
  EXPECT_EQ(journal_files(_dir).size(), 1u);
}

// A spool of the previous release (v2 segment, v2 journal with outcome records) is recovered as
// it was: DSN parameters kept, no dsn_of, outcomes without a remote MTA and not relayed. The
// compacted journal that replaces it is v3 and keeps the states; the segment stays v2 beside
// the v3 ones this build writes, and a v2 outcome record is not read as a v3 one.
TEST_F(SpoolRecoveryTest, AVersionTwoSpoolIsStillRecovered) {
  std::filesystem::create_directories(_dir + "/shard-0");
  const std::string ids[3] = {_ids.next(1650000000001), _ids.next(1650000000002), _ids.next(1650000000003)};
  const std::vector<std::string> recipients = {"a@example.test", "b@example.test"};
  std::string segment = old_file_header(2, 7, 1, _options.segment_bytes);
  for (uint64_t i = 0; i < 3; ++i) {
    segment += v2_message(7, 1, i + 1, ids[i], "two" + std::to_string(i) + "@example.test", recipients,
                          "Subject: v2 " + std::to_string(i) + "\r\n\r\nbody\r\n");
  }
  segment.resize(_options.segment_bytes, '\0');
  write_file(segment_path(_dir, 7), segment);
  JournalEntry bounced(JournalOp::bounced, ids[0], 1);
  bounced.attempts = 1;
  bounced.reply = "550 5.1.1 no such user";
  JournalEntry deferred(JournalOp::deferred, ids[0], 0);
  deferred.attempts = 2;
  deferred.next_attempt_ms = 1650000099999;
  deferred.reply = "451 4.3.0 later";
  JournalEntry delivered(JournalOp::delivered, ids[2], 0);
  delivered.attempts = 1;
  delivered.reply = "250 2.0.0 ok";
  write_file(journal_path(_dir + "/shard-0", 3),
             v2_journal(1, {bounced, deferred, JournalEntry{JournalOp::remove, ids[1], 0}, delivered,
                            JournalEntry{JournalOp::hold, ids[2], 0}}));
  auto check = [&](const RecoveredShard& recovered) {
    EXPECT_EQ(recovered.torn_tails, 0u);
    ASSERT_EQ(recovered.messages.size(), 2u);
    const MessageInfo& first = recovered.messages[0];
    const MessageInfo& third = recovered.messages[1];
    EXPECT_EQ(first.id, ids[0]);
    EXPECT_EQ(third.id, ids[2]);
    EXPECT_EQ(first.sender, "two0@example.test");
    EXPECT_EQ(first.client_helo, "two.example");
    EXPECT_EQ(first.dsn_ret, DsnRet::hdrs);
    EXPECT_EQ(first.dsn_envid, "env2");
    EXPECT_EQ(first.recipient_dsn[1], (RecipientDsn{kNotifyFailure | kNotifySuccess, "rfc822;b@example.test"}));
    EXPECT_EQ(first.dsn_of, "");  // v2 has none
    EXPECT_EQ(first.recipient_states[0].state, DeliveryState::deferred);
    EXPECT_EQ(first.recipient_states[0].attempts, 2u);
    EXPECT_EQ(first.recipient_states[0].next_attempt_ms, 1650000099999u);
    EXPECT_EQ(first.recipient_states[1].state, DeliveryState::bounced);
    EXPECT_EQ(first.recipient_states[1].last_reply, "550 5.1.1 no such user");
    EXPECT_EQ(first.recipient_states[1].remote_mta, "");  // v2 never had it
    EXPECT_EQ(third.status, MessageStatus::held);
    EXPECT_EQ(third.recipient_states[0].state, DeliveryState::delivered);
    EXPECT_FALSE(third.recipient_states[0].relayed);
    EXPECT_EQ(third.recipient_states[1].state, DeliveryState::pending);
  };
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ(recovered->old_format_segments, 1u);
  check(*recovered);
  EXPECT_FALSE(std::filesystem::exists(journal_path(_dir + "/shard-0", 3)));  // replaced by a v3 one
  // Served beside a new v3 message, with an outcome of this build; all survive a restart.
  auto spool = ShardSpool::open(_options, *std::move(recovered));
  ASSERT_TRUE(spool.ok()) << spool.status();
  _spool = *std::move(spool);
  auto bytes = _spool->read_message(ids[2]);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, "Subject: v2 2\r\n\r\nbody\r\n");
  const Written fresh = write_message(50, 5);
  ASSERT_TRUE(_spool->record_outcome(ids[2], 1, {DeliveryState::delivered, 0, "250 ok", "mx.example.test", true}).ok());
  ASSERT_TRUE(_spool->record_outcome(fresh.id, 0, {DeliveryState::bounced, 0, "550 no", "[192.0.2.9]", false}).ok());
  for (const auto& completed : drain(*_spool, _now)) {
    EXPECT_TRUE(completed.status.ok()) << completed.status;
  }
  _spool.reset();
  auto again = recover_shard(_dir, 0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->old_format_segments, 1u);
  ASSERT_EQ(again->messages.size(), 3u);
  again->messages.erase(std::remove_if(again->messages.begin(), again->messages.end(),
                                       [&](const MessageInfo& m) {
                                         if (m.id != fresh.id) {
                                           return false;
                                         }
                                         EXPECT_EQ(m.dsn_of, fresh.dsn_of);
                                         EXPECT_EQ(m.recipient_states[0].remote_mta, "[192.0.2.9]");
                                         return true;
                                       }),
                        again->messages.end());
  ASSERT_EQ(again->messages.size(), 2u);
  EXPECT_EQ(again->messages[1].recipient_states[1].remote_mta, "mx.example.test");
  EXPECT_TRUE(again->messages[1].recipient_states[1].relayed);
  again->messages[1].recipient_states[1] = RecipientDelivery{};  // the rest as the v2 files said
  check(*again);

  // A v2 journal's outcome record read as v3 (its header's version changed, CRC made right) is
  // too short: the file ends there.
  const std::string work = _dir + "/mislabelled";
  std::filesystem::create_directories(work + "/shard-0");
  write_file(segment_path(work, 7), segment);
  std::string journal = v2_journal(1, {bounced});
  for (size_t at = 0; at < journal.size();) {
    RecordHeader header = decode_record_header(reinterpret_cast<const uint8_t*>(journal.data()) + at);
    header.version = kFormatVersion;
    const std::string payload = journal.substr(at + kRecordHeaderBytes, header.payload_length);
    seal_record_header(header, crc32c(payload), reinterpret_cast<uint8_t*>(journal.data()) + at);
    at += kRecordHeaderBytes + header.payload_length;
  }
  write_file(journal_path(work + "/shard-0", 1), journal);
  auto mislabelled = recover_shard(work, 0);
  ASSERT_TRUE(mislabelled.ok()) << mislabelled.status();
  ASSERT_EQ(mislabelled->messages.size(), 3u);
  EXPECT_EQ(mislabelled->messages[0].recipient_states[1].state, DeliveryState::pending);
}

// Descriptors of this process that name a spool segment file.
size_t open_segment_descriptors() {
  size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code error;
    const auto target = std::filesystem::read_symlink(entry.path(), error);
    if (!error && target.filename().string().starts_with("seg-")) {
      ++count;
    }
  }
  return count;
}

// One descriptor per live segment made a large queue eat the descriptors sessions need (accept
// failed with EMFILE, every message 451). Sealed segments now keep none unless read, and at most
// open_sealed_segments_max stay open.
TEST_F(SpoolRecoveryTest, MoreSegmentsThanTheDescriptorCapRecoverAndServe) {
  _options.open_sealed_segments_max = 3;
  open_spool(_dir);
  std::vector<Written> written;
  for (uint32_t i = 0; i < 60; ++i) {
    written.push_back(write_message(20000, i));  // three to a 64 KiB segment: ~20 segments
  }
  constexpr size_t kAlwaysOpen = 1 + kReadySegmentsTarget + 1;  // current, ready, being made
  EXPECT_LE(open_segment_descriptors(), _options.open_sealed_segments_max + kAlwaysOpen);
  EXPECT_LE(_spool->open_sealed_segments(), _options.open_sealed_segments_max);
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  ASSERT_GE(recovered->segments.size(), 15u);
  open_spool(_dir);
  EXPECT_LE(open_segment_descriptors(), kAlwaysOpen) << "recovered segments are not opened until read";
  for (const auto& w : written) {
    auto body = _spool->read_message(w.id);
    ASSERT_TRUE(body.ok()) << body.status();
    EXPECT_EQ(*body, w.body);
    EXPECT_LE(_spool->open_sealed_segments(), _options.open_sealed_segments_max);
  }
  EXPECT_LE(open_segment_descriptors(), _options.open_sealed_segments_max + kAlwaysOpen);
  written.push_back(write_message(100, 99));  // and it still takes mail
  EXPECT_EQ(_spool->size(), written.size());
}

TEST_F(SpoolRecoveryTest, HalfCreatedSegmentsAreDeleted) {
  std::filesystem::create_directories(_dir + "/shard-0");
  write_file(_dir + "/shard-0/seg-0000000000000007.tmp", std::string(100, '\0'));
  write_file(segment_path(_dir, 8), std::string(4096, '\0'));  // no header
  FileHeaderPayload payload;
  payload.segment_bytes = 1 << 20;
  write_file(segment_path(_dir, 9), encode_file_header_record(9, 1, payload) + std::string(100, '\0'));  // short
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok());
  EXPECT_EQ(recovered->segments_deleted, 3u);
  EXPECT_GE(recovered->next_segment_id, 10u);
  EXPECT_FALSE(std::filesystem::exists(segment_path(_dir, 8)));
  EXPECT_FALSE(std::filesystem::exists(segment_path(_dir, 9)));
  EXPECT_FALSE(std::filesystem::exists(_dir + "/shard-0/seg-0000000000000007.tmp"));
}

TEST_F(SpoolRecoveryTest, IdFloorOnlyGrows) {
  auto first = load_and_bump_floor(_dir, 5000);
  ASSERT_TRUE(first.ok());
  EXPECT_GE(*first, 5000u);
  auto second = load_and_bump_floor(_dir, 100);  // the clock stepped back
  ASSERT_TRUE(second.ok());
  EXPECT_GT(*second, *first);
  // A running spool persists the last id millisecond it saw; a restart starts after it.
  open_spool(_dir);
  IdGenerator future(0, 9000000000000);
  Envelope envelope;
  ASSERT_TRUE(wait_for_ready_segments(*_spool, 1));
  ASSERT_TRUE(_spool->append_message(future.next(0), 1, envelope, 1, "x\r\n").ok());
  drain(*_spool, _now);
  _spool->remove(_spool->list().at(0).id).IgnoreError();
  drain(*_spool, _now);
  _spool.reset();
  auto third = load_and_bump_floor(_dir, 100);
  ASSERT_TRUE(third.ok());
  EXPECT_GT(*third, 9000000000000u);
}

TEST_F(SpoolRecoveryTest, TheLockExcludesASecondHolder) {
  auto lock = SpoolLock::acquire(_dir);
  ASSERT_TRUE(lock.ok()) << lock.status();
  auto second = SpoolLock::acquire(_dir);
  EXPECT_FALSE(second.ok());
  { SpoolLock moved = *std::move(lock); }
  EXPECT_TRUE(SpoolLock::acquire(_dir).ok()) << "released when the holder goes";
}

// Each new directory's parent is fsync'd (the power-cut integration test shows why); that must
// work for every form of path a config may give: nested, trailing slash, relative, one level.
TEST_F(SpoolRecoveryTest, MissingSpoolDirectoriesAreCreatedAtAnyDepth) {
  const std::string nested = _dir + "/a/b/spool/";
  ASSERT_TRUE(SpoolLock::acquire(nested).ok());
  EXPECT_TRUE(recover_shard(nested, 2).ok());
  EXPECT_TRUE(std::filesystem::is_directory(nested + "shard-2"));
  EXPECT_TRUE(std::filesystem::exists(nested + "shard-2/idfloor"));
  const std::filesystem::path previous = std::filesystem::current_path();
  std::filesystem::current_path(_dir);
  const bool relative_nested = SpoolLock::acquire("rel/spool").ok();
  const bool relative_single = SpoolLock::acquire("single").ok();
  std::filesystem::current_path(previous);
  EXPECT_TRUE(relative_nested);
  EXPECT_TRUE(relative_single);
  EXPECT_TRUE(std::filesystem::is_directory(_dir + "/rel/spool"));
  EXPECT_TRUE(std::filesystem::is_directory(_dir + "/single"));
}

TEST(Crc32cTest, KnownVectorsAndHardwareMatchesTable) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c_extend_table(0, "123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c(""), 0u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);  // RFC 3720 B.4
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  EXPECT_EQ(crc32c_extend(crc32c("1234"), "56789", 5), 0xE3069283u);
  if (!crc32c_hw_available()) {
    GTEST_SKIP() << "no SSE4.2";
  }
  std::mt19937_64 rng(42);
  for (int round = 0; round < 2000; ++round) {
    std::string data(rng() % 300, '\0');
    for (auto& c : data) {
      c = static_cast<char>(rng());
    }
    const size_t skew = data.empty() ? 0 : rng() % data.size();  // unaligned starts too
    const uint32_t seed = static_cast<uint32_t>(rng());
    ASSERT_EQ(crc32c_extend_hw(seed, data.data() + skew, data.size() - skew),
              crc32c_extend_table(seed, data.data() + skew, data.size() - skew));
  }
}

}  // namespace
}  // namespace sluice::spool
