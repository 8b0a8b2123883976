// Per-recipient delivery outcomes in the spool's journal: the record format (and its refusal of
// short, overlong and inconsistent payloads), record_outcome's answers and the index changing
// only once the record is durable, recovery restoring every recipient's state after a restart
// and after rotations (whose snapshots must repeat it), a removal winning, a damaged outcome
// record ending the journal like any other; and the next journal file preallocated to its
// rotation size, with the unpreallocated file as the fallback.
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "spool/crc32c.h"
#include "spool/spool.h"
#include "spool/spool_testing.h"

namespace sluice::spool {
namespace {

using testing::drain;
using testing::journal_files;
using testing::perform;
using testing::read_file;
using testing::wait_for_ready_segments;
using testing::write_file;

// Whether any extent of the file is unwritten (fallocate's, whose first write costs a metadata
// commit); nullopt where the file system cannot say (no FIEMAP).
std::optional<bool> has_unwritten_extents(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return std::nullopt;
  }
  constexpr uint32_t kExtents = 256;
  std::vector<uint8_t> buffer(sizeof(fiemap) + kExtents * sizeof(fiemap_extent));
  auto* map = reinterpret_cast<fiemap*>(buffer.data());
  map->fm_start = 0;
  map->fm_length = FIEMAP_MAX_OFFSET;
  map->fm_flags = FIEMAP_FLAG_SYNC;
  map->fm_extent_count = kExtents;
  const int result = ::ioctl(fd, FS_IOC_FIEMAP, map);
  ::close(fd);
  if (result != 0) {
    return std::nullopt;
  }
  for (uint32_t i = 0; i < map->fm_mapped_extents; ++i) {
    if ((map->fm_extents[i].fe_flags & FIEMAP_EXTENT_UNWRITTEN) != 0) {
      return true;
    }
  }
  return false;
}

// The spare as it must be: its header, then zeros up to the rotation size.
void expect_zero_filled(const std::string& path, uint64_t size) {
  const std::string bytes = read_file(path);
  ASSERT_EQ(bytes.size(), size) << path;
  const FileScan scan =
      scan_records({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, kJournalFileId, RecordType::journal);
  EXPECT_TRUE(scan.has_header);
  EXPECT_EQ(bytes.find_first_not_of('\0', kFileHeaderRecordBytes), std::string::npos) << path;
  if (const auto unwritten = has_unwritten_extents(path); unwritten.has_value()) {
    EXPECT_FALSE(*unwritten) << path << ": real zeros, not only fallocate's extents";
  }
}

std::string payload_of(const JournalEntry& entry) {
  std::string payload(journal_payload_bytes(entry), '\0');
  encode_journal_payload(entry, reinterpret_cast<uint8_t*>(payload.data()));
  return payload;
}

absl::StatusOr<JournalEntry> decode(const std::string& payload, uint16_t version = kFormatVersion) {
  return decode_journal_payload({reinterpret_cast<const uint8_t*>(payload.data()), payload.size()}, version);
}

JournalEntry outcome_entry(JournalOp op, std::string id, uint32_t recipient, uint64_t next, uint32_t attempts,
                           std::string reply, std::string remote_mta = "", bool relayed = false) {
  JournalEntry entry(op, std::move(id), recipient);
  entry.next_attempt_ms = next;
  entry.attempts = attempts;
  entry.reply = std::move(reply);
  entry.remote_mta = std::move(remote_mta);
  entry.relayed = relayed;
  return entry;
}

// An outcome payload as a v2 build wrote it: the v3 one without the remote MTA (flags 0).
std::string v2_payload_of(JournalEntry entry) {
  entry.remote_mta.clear();
  entry.relayed = false;
  std::string payload = payload_of(entry);
  payload.resize(payload.size() - 2);  // the empty remote MTA's length field
  return payload;
}

constexpr char kId[] = "0123456789ABCDEF";

TEST(OutcomeFormatTest, OutcomesRoundTripAndOtherOpsKeepTheirTwentyFourOctets) {
  const std::string longest(kMaxReplyBytes, 'r');
  const std::string longest_host(kMaxRemoteMtaBytes, 'h');
  for (const JournalEntry& entry :
       {outcome_entry(JournalOp::deferred, kId, 7, 1700000000123, 3, "451 4.7.1 try later", "mx.example.test"),
        outcome_entry(JournalOp::delivered, kId, 0, 0, 1, "250 2.0.0 ok", "mx.example.test", true),
        outcome_entry(JournalOp::delivered, kId, 0, 0, 1, "250 2.0.0 ok", "", true),
        outcome_entry(JournalOp::bounced, kId, kMaxRecipients - 1, 0, UINT32_MAX, longest, longest_host),
        outcome_entry(JournalOp::bounced, kId, 2, 0, 1, "550 5.1.1 no", "[192.0.2.1]"),
        outcome_entry(JournalOp::deferred, kId, 1, 0, 2, "")}) {
    const std::string payload = payload_of(entry);
    EXPECT_EQ(payload.size(), kJournalPayloadBytes + kJournalOutcomeBytes + entry.reply.size() + entry.remote_mta.size());
    auto decoded = decode(payload);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, entry);
    // The same outcome as a v2 journal has it reads back without the remote MTA, not relayed;
    // and a v3 payload is not a v2 one (nor the other way round).
    const std::string old = v2_payload_of(entry);
    EXPECT_EQ(old.size(), kJournalPayloadBytes + kJournalOutcomeV2Bytes + entry.reply.size());
    JournalEntry plain = entry;
    plain.remote_mta.clear();
    plain.relayed = false;
    for (const uint16_t version : {uint16_t{1}, uint16_t{2}}) {
      auto read = decode(old, version);
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_EQ(*read, plain);
      EXPECT_FALSE(decode(payload, version).ok()) << "a v3 outcome is too long for v" << version;
    }
    EXPECT_FALSE(decode(old).ok()) << "a v2 outcome is too short for v3";
  }
  for (const JournalOp op : {JournalOp::remove, JournalOp::hold, JournalOp::release}) {
    EXPECT_EQ(payload_of(JournalEntry(op, kId, 0)).size(), kJournalPayloadBytes);
  }
}

TEST(OutcomeFormatTest, ShortOverlongAndInconsistentPayloadsAreCorruption) {
  const std::string good = payload_of(outcome_entry(JournalOp::deferred, kId, 2, 99, 4, "451 later"));
  ASSERT_TRUE(decode(good).ok());
  // Every cut short, one octet more, one octet of a reply missing or extra.
  for (size_t size = 0; size < good.size(); ++size) {
    EXPECT_FALSE(decode(good.substr(0, size)).ok()) << "cut to " << size;
  }
  EXPECT_FALSE(decode(good + "x").ok());
  // The reply's length field disagreeing with the payload, or over the limit with a payload
  // that agrees with it.
  auto with_reply_length = [](std::string payload, uint16_t length) {
    payload[kJournalPayloadBytes + 12] = static_cast<char>(length & 0xFF);
    payload[kJournalPayloadBytes + 13] = static_cast<char>(length >> 8);
    return payload;
  };
  EXPECT_FALSE(decode(with_reply_length(good, 8)).ok());
  EXPECT_FALSE(decode(with_reply_length(good, 10)).ok());
  const std::string over = with_reply_length(
      payload_of(outcome_entry(JournalOp::bounced, kId, 0, 0, 1, std::string(kMaxReplyBytes, 'x'))) + "x",
      kMaxReplyBytes + 1);
  EXPECT_FALSE(decode(over).ok());
  // A retry time on a final outcome.
  std::string delivered = payload_of(outcome_entry(JournalOp::delivered, kId, 0, 0, 1, "250 ok"));
  ASSERT_TRUE(decode(delivered).ok());
  delivered[kJournalPayloadBytes] = 1;
  EXPECT_FALSE(decode(delivered).ok());
  // The remote MTA's length disagreeing with the payload, or over its limit with a payload that
  // agrees; the payload cut inside the remote MTA or its length.
  auto with_mta_length = [](std::string payload, size_t at, uint16_t length) {
    payload[at] = static_cast<char>(length & 0xFF);
    payload[at + 1] = static_cast<char>(length >> 8);
    return payload;
  };
  const std::string hosted = payload_of(outcome_entry(JournalOp::bounced, kId, 0, 0, 1, "550 no", "mx.example.test"));
  const size_t mta_at = kJournalPayloadBytes + kJournalOutcomeV2Bytes + 6;
  ASSERT_TRUE(decode(hosted).ok());
  for (size_t size = 0; size < hosted.size(); ++size) {
    EXPECT_FALSE(decode(hosted.substr(0, size)).ok()) << "cut to " << size;
  }
  EXPECT_FALSE(decode(hosted + "x").ok());
  EXPECT_FALSE(decode(with_mta_length(hosted, mta_at, 14)).ok());
  EXPECT_FALSE(decode(with_mta_length(hosted, mta_at, 16)).ok());
  const std::string over_host = with_mta_length(
      payload_of(outcome_entry(JournalOp::bounced, kId, 0, 0, 1, "550 no", std::string(kMaxRemoteMtaBytes, 'h'))) + "h",
      mta_at, kMaxRemoteMtaBytes + 1);
  EXPECT_FALSE(decode(over_host).ok());
  // The flags: relayed only on a delivery, no other bit; in v2 none at all.
  std::string relayed = payload_of(outcome_entry(JournalOp::delivered, kId, 0, 0, 1, "250 ok", "mx", true));
  ASSERT_TRUE(decode(relayed).ok());
  EXPECT_FALSE(decode(with_mta_length(relayed, 2, kJournalFlagRelayed | 2)).ok());
  EXPECT_FALSE(decode(with_mta_length(hosted, 2, kJournalFlagRelayed)).ok()) << "a relayed bounce";
  EXPECT_FALSE(decode(with_mta_length(payload_of(JournalEntry(JournalOp::remove, kId, 0)), 2, kJournalFlagRelayed)).ok());
  std::string old_relayed = v2_payload_of(outcome_entry(JournalOp::delivered, kId, 0, 0, 1, "250 ok"));
  ASSERT_TRUE(decode(old_relayed, 2).ok());
  EXPECT_FALSE(decode(with_mta_length(old_relayed, 2, kJournalFlagRelayed), 2).ok());
  // The other ops with an extension, and an outcome with none (what a previous build wrote for
  // no op: it never wrote these).
  EXPECT_FALSE(decode(payload_of(JournalEntry(JournalOp::hold, kId, 0)) + std::string(16, '\0')).ok());
  EXPECT_FALSE(decode(payload_of(JournalEntry(JournalOp::hold, kId, 0)) + std::string(14, '\0'), 2).ok());
  EXPECT_FALSE(decode(payload_of(JournalEntry(JournalOp::hold, kId, 0)) + "x").ok());
  std::string bare = payload_of(JournalEntry(JournalOp::hold, kId, 0));
  bare[0] = static_cast<char>(JournalOp::deferred);
  EXPECT_FALSE(decode(bare).ok());
}

// One recipient's expected state.
struct Expected {
  DeliveryState state = DeliveryState::pending;
  uint32_t attempts = 0;
  uint64_t next_attempt_ms = 0;
  std::string last_reply;
  std::string remote_mta;
  bool relayed = false;
  bool operator==(const Expected&) const = default;
};
std::ostream& operator<<(std::ostream& out, const Expected& e) {
  return out << "{" << static_cast<int>(e.state) << " " << e.attempts << " " << e.next_attempt_ms << " '"
             << e.last_reply << "' " << e.remote_mta << (e.relayed ? " relayed" : "") << "}";
}
// A message's expected state: its recipients, then the derived message-level fields.
struct ExpectedMessage {
  std::vector<Expected> recipients;
  uint32_t attempts = 0;
  uint64_t next_attempt_ms = 0;
  std::string last_reply;
  bool held = false;
  bool operator==(const ExpectedMessage&) const = default;
  void apply(uint32_t recipient, const RecipientOutcome& outcome) {
    Expected& r = recipients.at(recipient);
    r.state = outcome.state;
    ++r.attempts;
    r.next_attempt_ms = outcome.state == DeliveryState::deferred ? outcome.next_attempt_ms : 0;
    r.last_reply = outcome.last_reply;
    r.remote_mta = outcome.remote_mta;
    r.relayed = outcome.relayed;
    attempts = std::max(attempts, r.attempts);
    last_reply = outcome.last_reply;
    std::optional<uint64_t> earliest;
    for (const Expected& each : recipients) {
      if (each.state == DeliveryState::deferred) {
        earliest = std::min(earliest.value_or(UINT64_MAX), each.next_attempt_ms);
      }
    }
    next_attempt_ms = earliest.value_or(0);
  }
};
std::ostream& operator<<(std::ostream& out, const ExpectedMessage& m) {
  out << "[";
  for (const auto& r : m.recipients) {
    out << r;
  }
  return out << "] attempts=" << m.attempts << " next=" << m.next_attempt_ms << " last='" << m.last_reply
             << "' held=" << m.held;
}
using Model = std::map<std::string, ExpectedMessage>;

ExpectedMessage observed(const MessageInfo& info) {
  ExpectedMessage m;
  for (const RecipientDelivery& r : info.recipient_states) {
    m.recipients.push_back(Expected{r.state, r.attempts, r.next_attempt_ms, r.last_reply, r.remote_mta, r.relayed});
  }
  m.attempts = info.attempts;
  m.next_attempt_ms = info.next_attempt_ms;
  m.last_reply = info.last_reply;
  m.held = info.status == MessageStatus::held;
  return m;
}
Model observed(const std::vector<MessageInfo>& messages) {
  Model model;
  for (const auto& info : messages) {
    model[info.id] = observed(info);
  }
  return model;
}

class SpoolOutcomeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/spool_outcome_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    _dir = pattern;
    _options.dir = _dir;
    _options.segment_bytes = 64 << 10;
    _options.journal_rotate_bytes = 64 << 10;
    _options.background_log = [this](std::string_view fields) { _log.emplace_back(fields); };
    // Step-by-step tests look at the write and its fdatasync one at a time (as the commit tests
    // do); the linked pair is covered in spool_commit_test.
    _options.link_fdatasync = false;
  }
  void TearDown() override {
    _spool.reset();
    std::filesystem::remove_all(_dir);
  }
  void open_spool() {
    auto recovered = recover_shard(_dir, 0);
    ASSERT_TRUE(recovered.ok()) << recovered.status();
    auto spool = ShardSpool::open(_options, *std::move(recovered));
    ASSERT_TRUE(spool.ok()) << spool.status();
    _spool = *std::move(spool);
  }
  Model recover() {
    _spool.reset();
    auto recovered = recover_shard(_dir, 0);
    EXPECT_TRUE(recovered.ok()) << recovered.status();
    return recovered.ok() ? observed(recovered->messages) : Model{};
  }
  std::string add_message(size_t recipients) {
    EXPECT_TRUE(wait_for_ready_segments(*_spool, 1));
    Envelope envelope;
    envelope.sender = "s@example.test";
    for (size_t i = 0; i < recipients; ++i) {
      envelope.recipients.push_back(absl::StrCat("r", i, "@example.test"));
    }
    const std::string id = _ids.next(1700000000000 + _model.size());
    EXPECT_TRUE(_spool->append_message(id, 1700000000000, envelope, 3, "x\r\n").ok());
    auto done = drain(*_spool, _now);
    EXPECT_EQ(done.size(), 1u);
    _model[id].recipients.resize(recipients);
    return id;
  }
  // record_outcome, mirrored in the model (applied there at once: compare after a drain).
  void outcome(const std::string& id, uint32_t recipient, DeliveryState state, uint64_t next, std::string reply,
               std::string remote_mta = "", bool relayed = false) {
    RecipientOutcome outcome{state, next, std::move(reply), std::move(remote_mta), relayed};
    auto ticket = _spool->record_outcome(id, recipient, outcome);
    ASSERT_TRUE(ticket.ok()) << ticket.status();
    _model.at(id).apply(recipient, outcome);
  }
  void drain_ok() {
    for (const auto& completed : drain(*_spool, _now)) {
      EXPECT_TRUE(completed.status.ok()) << completed.ticket << " " << completed.status;
    }
  }

  std::string _dir;
  SpoolOptions _options;
  std::unique_ptr<ShardSpool> _spool;
  IdGenerator _ids{0, 1700000000000};
  uint64_t _now = 0;
  Model _model;
  std::vector<std::string> _log;
};

TEST_F(SpoolOutcomeTest, TheIndexChangesOnlyWhenTheRecordIsDurable) {
  open_spool();
  const std::string id = add_message(3);
  ASSERT_TRUE(_spool->record_outcome(id, 1, {DeliveryState::deferred, 5000, "451 4.2.0 busy", "mx.example.test", false}).ok());
  ExpectedMessage untouched;
  untouched.recipients.resize(3);
  EXPECT_EQ(observed(*_spool->find(id)), untouched) << "not durable yet";
  std::vector<IoRequest> requests;
  _spool->collect_io(_now + 1'000'000, requests);
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(requests[0].kind, IoRequest::Kind::write);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  EXPECT_EQ(_spool->find(id)->recipient_states[1].state, DeliveryState::pending) << "written, not synced";
  requests.clear();
  _spool->collect_io(_now + 1'000'001, requests);
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(requests[0].kind, IoRequest::Kind::fdatasync);
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done[0].status.ok());
  const MessageInfo info = *_spool->find(id);
  EXPECT_EQ(info.recipient_states[1].state, DeliveryState::deferred);
  EXPECT_EQ(info.recipient_states[1].attempts, 1u);
  EXPECT_EQ(info.recipient_states[1].next_attempt_ms, 5000u);
  EXPECT_EQ(info.recipient_states[1].last_reply, "451 4.2.0 busy");
  EXPECT_EQ(info.recipient_states[1].remote_mta, "mx.example.test");
  EXPECT_FALSE(info.recipient_states[1].relayed);
  EXPECT_EQ(info.recipient_states[1].outcomes_in_flight, 0u);
  EXPECT_EQ(info.attempts, 1u);
  EXPECT_EQ(info.next_attempt_ms, 5000u);
  EXPECT_EQ(info.last_reply, "451 4.2.0 busy");
  EXPECT_EQ(info.recipient_states[0].state, DeliveryState::pending);
}

TEST_F(SpoolOutcomeTest, RecordOutcomeRefusesWhatItMustAndCountsAttempts) {
  open_spool();
  const std::string id = add_message(2);
  const std::string other = add_message(1);
  EXPECT_EQ(_spool->record_outcome(_ids.next(1800000000000), 0, {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(_spool->record_outcome(id, 2, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(_spool->record_outcome(id, UINT32_MAX, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(_spool->record_outcome(id, 0, {DeliveryState::pending, 0, "", "", false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Only a delivery is relayed.
  for (const DeliveryState state : {DeliveryState::deferred, DeliveryState::bounced}) {
    EXPECT_EQ(_spool->record_outcome(id, 0, {state, 0, "x", "mx.example.test", true}).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(_spool->append_journal(JournalOp::delivered, id, 0).status().code(), absl::StatusCode::kInvalidArgument);
  // Two deferrals before either is durable count as two attempts.
  outcome(id, 0, DeliveryState::deferred, 100, "451 one");
  outcome(id, 0, DeliveryState::deferred, 200, "451 two");
  // A final outcome on its way: nothing may follow it, durable or not.
  outcome(id, 1, DeliveryState::bounced, 0, "550 5.1.1 no such user");
  EXPECT_EQ(_spool->record_outcome(id, 1, {DeliveryState::delivered, 0, "250", "", false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  drain_ok();
  EXPECT_EQ(_spool->record_outcome(id, 1, {DeliveryState::deferred, 1, "451", "", false}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(observed(*_spool->find(id)), _model.at(id));
  EXPECT_EQ(_spool->find(id)->recipient_states[0].attempts, 2u);
  // Removal on its way: NOT_FOUND, as for remove itself.
  ASSERT_TRUE(_spool->remove(other).ok());
  EXPECT_EQ(_spool->record_outcome(other, 0, {}).status().code(), absl::StatusCode::kNotFound);
  drain_ok();
  EXPECT_EQ(_spool->record_outcome(other, 0, {}).status().code(), absl::StatusCode::kNotFound);
  // All final: still in the index until the caller removes it.
  outcome(id, 0, DeliveryState::delivered, 0, "250 2.0.0 ok");
  drain_ok();
  ASSERT_TRUE(_spool->find(id).has_value());
  EXPECT_EQ(observed(*_spool->find(id)), _model.at(id));
  EXPECT_EQ(_spool->find(id)->next_attempt_ms, 0u) << "no recipient is deferred";
}

TEST_F(SpoolOutcomeTest, LongRepliesAreCutAtAUtf8Boundary) {
  open_spool();
  const std::string id = add_message(2);
  std::string reply = "451 ";
  while (reply.size() < kMaxReplyBytes + 50) {
    reply += "\xC3\xA9";  // two octets
  }
  reply.insert(0, "x");  // ...an odd offset: the limit falls inside one of them
  // The remote MTA is cut the same way at its own limit.
  std::string host = "h";
  while (host.size() < kMaxRemoteMtaBytes + 10) {
    host += "\xC3\xA9";
  }
  ASSERT_TRUE(_spool->record_outcome(id, 0, {DeliveryState::deferred, 1, reply, host, false}).ok());
  ASSERT_TRUE(
      _spool->record_outcome(id, 1, {DeliveryState::deferred, 1, std::string(5000, 'a'), std::string(300, 'm'), false})
          .ok());
  drain_ok();
  const MessageInfo info = *_spool->find(id);
  EXPECT_EQ(info.recipient_states[0].last_reply, reply.substr(0, kMaxReplyBytes - 1));
  EXPECT_EQ(info.recipient_states[1].last_reply, std::string(kMaxReplyBytes, 'a'));
  EXPECT_EQ(info.recipient_states[0].remote_mta, host.substr(0, kMaxRemoteMtaBytes));  // 1 + 127 * 2 octets
  EXPECT_EQ(info.recipient_states[1].remote_mta, std::string(kMaxRemoteMtaBytes, 'm'));
  const Model recovered = recover();
  EXPECT_EQ(recovered.at(id).recipients[0].last_reply, reply.substr(0, kMaxReplyBytes - 1));
  EXPECT_EQ(recovered.at(id).recipients[1].last_reply, std::string(kMaxReplyBytes, 'a'));
  EXPECT_EQ(recovered.at(id).recipients[0].remote_mta, host.substr(0, kMaxRemoteMtaBytes));
  EXPECT_EQ(recovered.at(id).recipients[1].remote_mta, std::string(kMaxRemoteMtaBytes, 'm'));
}

TEST_F(SpoolOutcomeTest, AFailedOutcomeRecordChangesNothingAndMayBeWrittenAgain) {
  open_spool();
  const std::string id = add_message(1);
  const uint64_t ticket = _spool->record_outcome(id, 0, {DeliveryState::delivered, 0, "250 ok", "", false}).value();
  std::vector<IoRequest> requests;
  _spool->collect_io(_now + 1'000'000, requests);
  ASSERT_EQ(requests.size(), 1u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, -EIO, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, ticket);
  EXPECT_FALSE(done[0].status.ok());
  const MessageInfo info = *_spool->find(id);
  EXPECT_EQ(info.recipient_states[0].state, DeliveryState::pending);
  EXPECT_EQ(info.recipient_states[0].outcomes_in_flight, 0u);
  EXPECT_FALSE(info.recipient_states[0].final_in_flight);
  // Not final after all: the delivery side may say it again (into the next journal file).
  outcome(id, 0, DeliveryState::delivered, 0, "250 ok");
  drain_ok();
  EXPECT_EQ(_spool->find(id)->recipient_states[0].state, DeliveryState::delivered);
  EXPECT_EQ(recover(), _model);
}

TEST_F(SpoolOutcomeTest, OutcomesSurviveRestartsAndARemovalWins) {
  open_spool();
  const std::string a = add_message(3);
  const std::string b = add_message(2);
  const std::string gone = add_message(2);
  outcome(a, 0, DeliveryState::deferred, 9000, "421 4.4.2 timeout", "mx1.example.test");
  outcome(a, 2, DeliveryState::deferred, 7000, "451 4.3.0 later");
  drain_ok();
  // What a DSN made after a restart needs: the host of a bounce, a relayed delivery.
  outcome(a, 0, DeliveryState::delivered, 0, "250 2.0.0 queued as Q", "mx2.example.test", true);
  outcome(b, 1, DeliveryState::bounced, 0, "550 5.7.1 refused", "[192.0.2.25]");
  outcome(gone, 0, DeliveryState::delivered, 0, "250 ok");
  ASSERT_TRUE(_spool->hold(b).ok());
  _model.at(b).held = true;
  drain_ok();
  ASSERT_TRUE(_spool->remove(gone).ok());
  _model.erase(gone);
  drain_ok();
  EXPECT_EQ(observed(_spool->list()), _model);
  EXPECT_EQ(_model.at(a).next_attempt_ms, 7000u);
  EXPECT_EQ(_model.at(a).last_reply, "250 2.0.0 queued as Q");
  EXPECT_TRUE(_spool->find(a)->recipient_states[0].relayed);
  EXPECT_EQ(_spool->find(b)->recipient_states[1].remote_mta, "[192.0.2.25]");
  for (int restart = 0; restart < 3; ++restart) {  // each recovery rewrites the journal compacted
    EXPECT_EQ(recover(), _model) << "restart " << restart;
  }
  open_spool();
  EXPECT_EQ(observed(_spool->list()), _model);
  outcome(a, 2, DeliveryState::deferred, 8000, "451 again");  // the third attempt there
  drain_ok();
  EXPECT_EQ(_model.at(a).recipients[2].attempts, 2u);
  EXPECT_EQ(recover(), _model);
}

// The snapshot at the start of each new journal file must repeat every live recipient's state,
// and the message-level last reply with it; older files are deleted after it.
TEST_F(SpoolOutcomeTest, OutcomesSurviveRotationsAndARestart) {
  _options.journal_rotate_bytes = 2048;
  open_spool();
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) {
    ids.push_back(add_message(1 + i % 4));
  }
  std::mt19937 rng(11);
  for (int round = 0; round < 500; ++round) {
    const std::string& id = ids[rng() % ids.size()];
    if (!_model.contains(id)) {
      continue;
    }
    ExpectedMessage& m = _model.at(id);
    const uint32_t recipient = static_cast<uint32_t>(rng() % m.recipients.size());
    if (round > 400 && rng() % 10 == 0) {
      ASSERT_TRUE(_spool->remove(id).ok());
      _model.erase(id);
    } else if (rng() % 7 == 0) {
      m.held = !m.held;
      ASSERT_TRUE((m.held ? _spool->hold(id) : _spool->release(id)).ok());
    } else if (!is_final(m.recipients[recipient].state)) {
      const DeliveryState state = rng() % 6 == 0   ? DeliveryState::delivered
                                  : rng() % 8 == 0 ? DeliveryState::bounced
                                                   : DeliveryState::deferred;
      const bool relayed = state == DeliveryState::delivered && rng() % 2 == 0;
      outcome(id, recipient, state, 1700000000000 + rng() % 100000,
              absl::StrCat("4", round, std::string(rng() % 40, 'z')),
              rng() % 3 == 0 ? "" : absl::StrCat("mx", rng() % 100, ".example.test"), relayed);
    }
    if (round % 4 == 0) {
      drain_ok();
    }
  }
  drain_ok();
  EXPECT_GE(_spool->metrics().journal_rotations, 5u);
  EXPECT_EQ(observed(_spool->list()), _model);
  EXPECT_LE(journal_files(_dir).size(), 2u) << "superseded files are gone: only the snapshots say it";
  EXPECT_EQ(recover(), _model);
  EXPECT_EQ(recover(), _model);
}

// A journal whose outcome records end damaged, at every offset: exactly the complete ones before
// the damage count. A record with a valid CRC over a malformed outcome payload ends it too.
TEST_F(SpoolOutcomeTest, ADamagedOutcomeRecordEndsTheJournal) {
  open_spool();
  const std::string a = add_message(3);
  const std::string b = add_message(1);
  struct Step {
    std::string id;
    uint32_t recipient;
    RecipientOutcome outcome;
  };
  const std::vector<Step> steps = {
      {a, 0, {DeliveryState::deferred, 1000, "451 a", "mx.a.test", false}},
      {a, 1, {DeliveryState::deferred, 500, "451 bb", "", false}},
      {b, 0, {DeliveryState::bounced, 0, "550 gone", "mx.b.test", false}},
      {a, 0, {DeliveryState::delivered, 0, "", "mx.a.test", true}},
      {a, 2, {DeliveryState::deferred, 2000, "4xx c", "x", false}},
  };
  for (const Step& step : steps) {
    ASSERT_TRUE(_spool->record_outcome(step.id, step.recipient, step.outcome).ok());
    drain_ok();
  }
  _spool.reset();
  const std::vector<std::string> journals = journal_files(_dir);
  const std::string journal = journals.front();  // the one recovery wrote, appended to since
  const std::string bytes = read_file(journal);
  const FileScan scan =
      scan_records({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, kJournalFileId, RecordType::journal);
  ASSERT_GE(scan.records.size(), steps.size());
  std::vector<uint64_t> starts;
  for (size_t i = scan.records.size() - steps.size(); i < scan.records.size(); ++i) {
    starts.push_back(scan.records[i].offset);
  }
  const uint64_t end = scan.end_offset;
  const std::string segment = _dir + "/shard-0/seg-0000000000000001";
  const std::string segment_bytes = read_file(segment);
  auto expected_after = [&](size_t complete) {
    Model model;
    model[a].recipients.resize(3);
    model[b].recipients.resize(1);
    for (size_t i = 0; i < complete; ++i) {
      model.at(steps[i].id).apply(steps[i].recipient, steps[i].outcome);
    }
    return model;
  };
  auto recover_from = [&](const std::string& damaged) {
    for (const auto& file : journal_files(_dir)) {
      std::filesystem::remove(file);
    }
    write_file(journal, damaged);
    write_file(segment, segment_bytes);
    return recover();
  };
  ASSERT_EQ(recover_from(bytes), expected_after(steps.size()));  // the oracle can fail
  for (uint64_t offset = starts.front(); offset <= end; ++offset) {
    size_t complete = 0;
    while (complete < starts.size() && (complete + 1 < starts.size() ? starts[complete + 1] : end) <= offset) {
      ++complete;
    }
    ASSERT_EQ(recover_from(bytes.substr(0, offset)), expected_after(complete)) << "cut at " << offset;
    if (offset < end) {
      std::string garbled = bytes;
      garbled[offset] = static_cast<char>(garbled[offset] ^ 0x21);
      ASSERT_EQ(recover_from(garbled), expected_after(complete)) << "garbled at " << offset;
    }
  }
  // The third record (b's bounce) replaced by one whose CRC is right but whose reply length
  // disagrees with the payload, and by one claiming a reply over the limit; the same for the
  // remote MTA's length; and by one saying relayed on a bounce.
  struct Forgery {
    size_t at;  // of a u16 in the payload
    uint16_t value;
  };
  const size_t mta_length_at = kJournalPayloadBytes + kJournalOutcomeV2Bytes + 8;  // after "550 gone"
  for (const Forgery forgery : {Forgery{kJournalPayloadBytes + 12, 9}, Forgery{kJournalPayloadBytes + 12, kMaxReplyBytes + 1},
                                Forgery{mta_length_at, 8}, Forgery{mta_length_at, 10},
                                Forgery{mta_length_at, kMaxRemoteMtaBytes + 1}, Forgery{2, kJournalFlagRelayed}}) {
    JournalEntry entry = outcome_entry(JournalOp::bounced, b, 0, 0, 1, "550 gone");
    entry.remote_mta = "mx.b.test";
    std::string payload = payload_of(entry);
    payload[forgery.at] = static_cast<char>(forgery.value & 0xFF);
    payload[forgery.at + 1] = static_cast<char>(forgery.value >> 8);
    const RecordHeader original = decode_record_header(reinterpret_cast<const uint8_t*>(bytes.data()) + starts[2]);
    std::string record(kRecordHeaderBytes, '\0');
    RecordHeader header = original;
    header.payload_length = static_cast<uint32_t>(payload.size());
    seal_record_header(header, crc32c(payload), reinterpret_cast<uint8_t*>(record.data()));
    record += payload;
    ASSERT_EQ(record.size(), starts[3] - starts[2]);
    std::string forged = bytes;
    forged.replace(starts[2], record.size(), record);
    EXPECT_EQ(recover_from(forged), expected_after(2)) << "u16 at " << forgery.at << " = " << forgery.value;
  }
}

// The spare journal file is preallocated to journal_rotate_bytes: appends to it do not change
// its size, and recovery finds its end in the zeros.
TEST_F(SpoolOutcomeTest, TheNextJournalFileIsPreallocatedAndItsZeroTailEndsIt) {
  _options.journal_rotate_bytes = 16 << 10;
  open_spool();
  std::vector<std::string> files = journal_files(_dir);
  ASSERT_EQ(files.size(), 2u);  // recovery's, and the spare made at open (blocking)
  expect_zero_filled(files[1], _options.journal_rotate_bytes);
  const std::string id = add_message(4);
  int round = 0;
  while (_spool->metrics().journal_rotations == 0) {
    ASSERT_LT(round, 1000);
    ASSERT_TRUE((round++ % 2 == 0 ? _spool->hold(id) : _spool->release(id)).ok());
    _model.at(id).held = round % 2 == 1;
    drain_ok();
  }
  // Now in the preallocated file; the new spare is being made through the IoRequests.
  const std::string current = journal_files(_dir).front();
  EXPECT_EQ(current, files[1]);
  outcome(id, 0, DeliveryState::deferred, 42, "451 first");
  outcome(id, 3, DeliveryState::bounced, 0, "550 last");
  drain_ok();
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE((i % 2 == 0 ? _spool->hold(id) : _spool->release(id)).ok());
    _model.at(id).held = i % 2 == 0;
    drain_ok();
  }
  EXPECT_EQ(_spool->metrics().journal_rotations, 1u);
  EXPECT_EQ(std::filesystem::file_size(current), _options.journal_rotate_bytes) << "appends kept its size";
  files = journal_files(_dir);
  ASSERT_EQ(files.size(), 2u);
  expect_zero_filled(files[1], _options.journal_rotate_bytes);  // the new spare, through the IoRequests
  EXPECT_EQ(_spool->metrics().journal_prealloc_failures, 0u);
  _spool.reset();
  const std::string bytes = read_file(current);
  const FileScan scan =
      scan_records({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, kJournalFileId, RecordType::journal);
  EXPECT_FALSE(scan.torn) << "the zeros are a clean end";
  EXPECT_GT(scan.records.size(), 20u);
  EXPECT_LT(scan.end_offset, bytes.size());
  EXPECT_EQ(recover(), _model);
}

// The zeros go in as few writes as the iovec limit allows; a short one is continued where it
// ended, and a failed one leaves fallocate's extents (zeros too), logged.
TEST_F(SpoolOutcomeTest, TheSparesZerosSurviveShortAndFailedWrites) {
  _options.journal_rotate_bytes = (3 << 20) + 12345;  // not a whole number of zero chunks
  open_spool();
  const std::string id = add_message(1);
  for (const bool fail : {false, true}) {
    const uint64_t rotations = _spool->metrics().journal_rotations;
    uint64_t zero_writes = 0;
    auto short_zero_writes = [&](const IoRequest& request) -> int32_t {
      const bool zeros = request.kind == IoRequest::Kind::write && request.offset >= kFileHeaderRecordBytes &&
                         request.iov_count > 0 &&
                         std::string_view(static_cast<const char*>(request.iov[0].iov_base), request.iov[0].iov_len)
                                 .find_first_not_of('\0') == std::string_view::npos;
      if (!zeros) {
        return perform(request);
      }
      ++zero_writes;
      if (request.offset == kFileHeaderRecordBytes) {
        EXPECT_EQ(request.iov_count, 4u) << "one gathered write, not one per chunk";
      }
      return fail ? -EIO : perform(request, 999999);  // every one short
    };
    _log.clear();
    // Batches of large outcome records (rotation counts octets): few drains to the next file.
    for (int batch = 0; _spool->metrics().journal_rotations < rotations + 1; ++batch) {
      ASSERT_LT(batch, 1000);
      for (int i = 0; i < 400; ++i) {
        outcome(id, 0, DeliveryState::deferred, 1700000000000 + i, std::string(kMaxReplyBytes, 'd'));
      }
      for (const auto& completed : testing::drain_with(*_spool, _now, short_zero_writes)) {
        ASSERT_TRUE(completed.status.ok()) << completed.status;
      }
    }
    const std::vector<std::string> files = journal_files(_dir);
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(read_file(files[1]).size(), _options.journal_rotate_bytes);
    if (fail) {
      EXPECT_EQ(zero_writes, 1u) << "a failed zero write is not retried";
      ASSERT_FALSE(_log.empty());
      EXPECT_NE(_log.back().find("fallback=unwritten_extents"), std::string::npos) << _log.back();
      EXPECT_EQ(read_file(files[1]).find_first_not_of('\0', kFileHeaderRecordBytes), std::string::npos);
    } else {
      EXPECT_EQ(zero_writes, 4u) << "999999 octets a time";
      EXPECT_TRUE(_log.empty());
      expect_zero_filled(files[1], _options.journal_rotate_bytes);
    }
  }
  EXPECT_EQ(recover(), _model);
}

// A filesystem without fallocate (the power-cut FUSE fixture) or a full disk: the spare is kept
// unpreallocated (what a failed fallocate got is given back), logged, and the spool goes on.
TEST_F(SpoolOutcomeTest, AFailedPreallocationFallsBackToTheUnpreallocatedFile) {
  _options.journal_rotate_bytes = 4096;
  open_spool();
  const std::string id = add_message(2);
  for (const int error : {EOPNOTSUPP, ENOSPC}) {
    _log.clear();
    const uint64_t rotations = _spool->metrics().journal_rotations;
    const uint64_t failures = _spool->metrics().journal_prealloc_failures;
    auto fallocate_fails = [&](const IoRequest& request) -> int32_t {
      if (request.kind != IoRequest::Kind::fallocate) {
        return perform(request);
      }
      EXPECT_EQ(request.length, _options.journal_rotate_bytes);
      if (error == ENOSPC) {
        perform(request);  // as if it got some of it: the fallback must give it back
      }
      return -error;
    };
    for (int i = 0; _spool->metrics().journal_rotations < rotations + 2; ++i) {
      ASSERT_LT(i, 1000);
      ASSERT_TRUE((i % 2 == 0 ? _spool->hold(id) : _spool->release(id)).ok());
      _model.at(id).held = i % 2 == 0;
      for (const auto& completed : testing::drain_with(*_spool, _now, fallocate_fails)) {
        ASSERT_TRUE(completed.status.ok()) << completed.status;
      }
    }
    EXPECT_GE(_spool->metrics().journal_prealloc_failures, failures + 2);
    ASSERT_FALSE(_log.empty());
    const std::string name = error == ENOSPC ? "errno=ENOSPC" : "errno=EOPNOTSUPP";
    EXPECT_NE(_log.back().find("op=journal_preallocate"), std::string::npos) << _log.back();
    EXPECT_NE(_log.back().find(name), std::string::npos) << _log.back();
    EXPECT_NE(_log.back().find("fallback=unpreallocated"), std::string::npos) << _log.back();
    const std::vector<std::string> files = journal_files(_dir);
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(std::filesystem::file_size(files[1]), kFileHeaderRecordBytes) << "the spare, unpreallocated";
  }
  outcome(id, 1, DeliveryState::deferred, 5, "451 still fine");
  drain_ok();
  EXPECT_EQ(recover(), _model);
}

}  // namespace
}  // namespace sluice::spool
