// The group-commit state machine of ShardSpool against real files: a ticket completes only on
// the fdatasync completion that covers it, one fdatasync in flight, pacing, ordering after the
// write CQEs, short writes, and write / fdatasync errors failing exactly the covered tickets.
#include <sys/resource.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "gtest/gtest.h"
#include "spool/spool.h"
#include "spool/spool_testing.h"

namespace sluice::spool {
namespace {

using testing::drain;
using testing::perform;
using testing::wait_for_ready_segments;

class SpoolCommitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/spool_commit_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    _dir = pattern;
    _options.dir = _dir;
    _options.shard = 0;
    _options.segment_bytes = 256 << 10;
    _options.commit_interval_us = 1000;
    _options.commit_batch_bytes = 64 << 10;
    // The step-by-step tests below follow the unlinked protocol (an fdatasync after its write's
    // CQE); the Linked* tests set it back to the relay's default.
    _options.link_fdatasync = false;
    // fdatasync latencies as the tests choose them (0 unless a test advances _clock_us).
    _options.clock_us = [this] { return _clock_us; };
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
    ASSERT_TRUE(wait_for_ready_segments(*_spool));
  }
  uint64_t append(std::string body, std::string* id_out = nullptr) {
    const std::string id = _ids.next(1700000000000);
    if (id_out != nullptr) {
      *id_out = id;
    }
    Envelope envelope;
    envelope.sender = "sender@example.test";
    envelope.recipients = {"a@example.test", "b@example.test"};
    envelope.client_address = "127.0.0.1";
    envelope.client_helo = "client.example.test";
    auto ticket = _spool->append_message(id, 1700000000000, std::move(envelope), body.size(), std::move(body));
    EXPECT_TRUE(ticket.ok()) << ticket.status();
    return ticket.value_or(0);
  }
  std::vector<IoRequest> collect(uint64_t now_us) {
    std::vector<IoRequest> requests;
    _spool->collect_io(now_us, requests);
    return requests;
  }
  static size_t count_kind(const std::vector<IoRequest>& requests, IoRequest::Kind kind) {
    size_t count = 0;
    for (const auto& request : requests) {
      count += request.kind == kind ? 1 : 0;
    }
    return count;
  }

  std::string _dir;
  uint64_t _clock_us = 0;
  SpoolOptions _options;
  std::unique_ptr<ShardSpool> _spool;
  IdGenerator _ids{0, 1700000000000};
};

TEST_F(SpoolCommitTest, TicketCompletesOnlyOnFdatasyncCompletion) {
  open_spool();
  std::string id;
  const uint64_t ticket = append("Subject: x\r\n\r\nhello\r\n", &id);
  std::vector<Completed> done;

  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(requests[0].kind, IoRequest::Kind::write);  // the write first, no fdatasync yet
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  EXPECT_TRUE(done.empty()) << "a write completion must not release the ticket";
  EXPECT_FALSE(_spool->find(id).has_value());

  requests = collect(1);
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(requests[0].kind, IoRequest::Kind::fdatasync);
  EXPECT_TRUE(collect(2).empty()) << "nothing more while the fdatasync runs";
  EXPECT_TRUE(done.empty());
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, ticket);
  EXPECT_TRUE(done[0].status.ok());
  EXPECT_EQ(done[0].queue_id, id);
  ASSERT_TRUE(_spool->find(id).has_value());
  EXPECT_EQ(_spool->read_message(id).value(), "Subject: x\r\n\r\nhello\r\n");
  EXPECT_TRUE(_spool->idle());
  EXPECT_EQ(_spool->metrics().fsyncs, 1u);
}

TEST_F(SpoolCommitTest, OneFdatasyncInFlightAndLateMessagesJoinTheNextOne) {
  open_spool();
  const uint64_t first = append("first\r\n");
  std::vector<Completed> done;
  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 1u);
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  auto sync = collect(0);
  ASSERT_EQ(count_kind(sync, IoRequest::Kind::fdatasync), 1u);

  const uint64_t second = append("second\r\n");
  const uint64_t third = append("third\r\n");
  // Long after the pacing interval, still nothing: the first fdatasync has not completed.
  EXPECT_TRUE(collect(1000000).empty());
  _spool->on_io_complete(sync[0].op_id, perform(sync[0]), done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, first);

  requests = collect(1000000);
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(requests[0].kind, IoRequest::Kind::write);
  EXPECT_EQ(requests[0].iov_count, 4u) << "both records in one gathered write";
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  sync = collect(1000001);
  ASSERT_EQ(count_kind(sync, IoRequest::Kind::fdatasync), 1u);
  EXPECT_EQ(done.size(), 1u);
  _spool->on_io_complete(sync[0].op_id, perform(sync[0]), done);
  ASSERT_EQ(done.size(), 3u);
  EXPECT_EQ(done[1].ticket, second);
  EXPECT_EQ(done[2].ticket, third);
  EXPECT_EQ(_spool->metrics().fsyncs, 2u);
  EXPECT_EQ(_spool->metrics().messages_per_fsync_sum, 3u);
  EXPECT_EQ(_spool->metrics().messages_per_fsync_count, 2u);
}

// Runs one whole batch that starts at `now_us`, each fdatasync taking `sync_us` on the fake
// clock the spool reads latencies from; returns what completed.
std::vector<Completed> commit_once(ShardSpool& spool, uint64_t now_us, uint64_t& clock_us, uint64_t sync_us) {
  std::vector<Completed> done;
  for (int round = 0; round < 100 && !spool.idle(); ++round) {
    std::vector<IoRequest> requests;
    spool.collect_io(now_us, requests);
    if (requests.empty()) {
      break;
    }
    for (const auto& request : requests) {
      if (request.kind == IoRequest::Kind::fdatasync) {
        clock_us += sync_us;
      }
      spool.on_io_complete(request.op_id, perform(request), done);
    }
  }
  return done;
}

TEST_F(SpoolCommitTest, WhileSyncsAreCheapTheNextBatchStartsAsSoonAsThePreviousEnded) {
  open_spool();  // commit_interval_us = 1000: cheap up to 250 µs
  uint64_t now = 5000;
  append("one\r\n");
  ASSERT_EQ(commit_once(*_spool, now, _clock_us, 100).size(), 1u);
  EXPECT_EQ(_spool->sync_latency_average_us(), 100u);
  EXPECT_EQ(_spool->commit_pace_us(), 0u);
  append("two\r\n");
  EXPECT_LE(_spool->next_deadline_us(), now + 1) << "no floor after a cheap sync";
  auto requests = collect(now + 1);
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].kind, IoRequest::Kind::write);
}

TEST_F(SpoolCommitTest, CostlySyncsPaceBatchesByTheirLatencyUpToTheInterval) {
  open_spool();
  uint64_t now = 5000;
  append("one\r\n");
  ASSERT_EQ(commit_once(*_spool, now, _clock_us, 400).size(), 1u);
  EXPECT_EQ(_spool->commit_pace_us(), 2 * 400u) << "kPaceSyncMultiple times the latency";
  append("two\r\n");
  EXPECT_EQ(_spool->next_deadline_us(), now + 800) << "from the start of the last batch";
  EXPECT_TRUE(collect(now + 1).empty());
  EXPECT_TRUE(collect(now + 799).empty());
  ASSERT_EQ(commit_once(*_spool, now + 800, _clock_us, 400).size(), 1u);

  // Much slower syncs: the wait never goes past commit_interval_us.
  _options.commit_interval_us = 1000;
  _spool.reset();
  _clock_us = 0;
  open_spool();
  append("three\r\n");
  ASSERT_EQ(commit_once(*_spool, now, _clock_us, 50000).size(), 1u);
  EXPECT_EQ(_spool->commit_pace_us(), _options.commit_interval_us);
  append("four\r\n");
  EXPECT_EQ(_spool->next_deadline_us(), now + _options.commit_interval_us);
  EXPECT_TRUE(collect(now + _options.commit_interval_us - 1).empty());
  EXPECT_EQ(collect(now + _options.commit_interval_us).size(), 1u);
}

// The decision follows a moving average: one slow sync among cheap ones does not start pacing,
// a run of them does, and cheap ones bring the spool back to no floor.
TEST_F(SpoolCommitTest, PacingFollowsTheMovingAverageOfSyncLatency) {
  open_spool();
  uint64_t now = 0;
  auto commit = [&](uint64_t sync_us) {
    append("m\r\n");
    now = std::max(now + 1, _spool->next_deadline_us());
    ASSERT_EQ(commit_once(*_spool, now, _clock_us, sync_us).size(), 1u);
  };
  commit(100);
  commit(1000);  // average 100 + 900/8 = 212: still cheap
  EXPECT_EQ(_spool->sync_latency_average_us(), 212u);
  EXPECT_EQ(_spool->commit_pace_us(), 0u);
  commit(1000);  // 212 + 788/8 = 310: costly
  EXPECT_EQ(_spool->sync_latency_average_us(), 310u);
  EXPECT_EQ(_spool->commit_pace_us(), 620u);
  for (int i = 0; i < 3; ++i) {
    commit(50);
  }
  EXPECT_LE(_spool->sync_latency_average_us(), 250u);
  EXPECT_EQ(_spool->commit_pace_us(), 0u);
}

TEST_F(SpoolCommitTest, ZeroCommitIntervalNeverWaitsHoweverCostlyTheSyncs) {
  _options.commit_interval_us = 0;
  open_spool();
  uint64_t now = 100;
  append("one\r\n");
  ASSERT_EQ(commit_once(*_spool, now, _clock_us, 100000).size(), 1u);
  EXPECT_EQ(_spool->commit_pace_us(), 0u);
  append("two\r\n");
  EXPECT_LE(_spool->next_deadline_us(), now);
  EXPECT_EQ(collect(now).size(), 1u);
}

TEST_F(SpoolCommitTest, CommitsAtOnceWhenBatchBytesAreWaiting) {
  _options.commit_interval_us = 10000000;
  open_spool();
  append("one\r\n");
  uint64_t now = 100;
  ASSERT_EQ(commit_once(*_spool, now, _clock_us, 5000000).size(), 1u);  // costly: paced 10 s
  append("small\r\n");
  EXPECT_TRUE(collect(now + 10).empty());
  EXPECT_GT(_spool->next_deadline_us(), now + 10);
  append(std::string(_options.commit_batch_bytes, 'x'));
  EXPECT_LE(_spool->next_deadline_us(), now + 20);
  auto requests = collect(now + 20);
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].kind, IoRequest::Kind::write);
}

// ---- the linked protocol: each fdatasync goes out linked to its write (IOSQE_IO_LINK) --------

TEST_F(SpoolCommitTest, LinkedFdatasyncGoesOutWithItsWriteAndTheTicketWaitsForIt) {
  _options.link_fdatasync = true;
  open_spool();
  std::string id;
  const uint64_t ticket = append("Subject: x\r\n\r\nhello\r\n", &id);
  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].kind, IoRequest::Kind::write);
  EXPECT_TRUE(requests[0].link_next);
  EXPECT_EQ(requests[1].kind, IoRequest::Kind::fdatasync);
  EXPECT_FALSE(requests[1].link_next);
  EXPECT_EQ(requests[1].fd, requests[0].fd);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  EXPECT_TRUE(done.empty()) << "a write completion must not release the ticket";
  EXPECT_TRUE(collect(1).empty()) << "its fdatasync is already in flight: no second one";
  _clock_us += 80;
  _spool->on_io_complete(requests[1].op_id, perform(requests[1]), done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, ticket);
  EXPECT_TRUE(done[0].status.ok());
  EXPECT_TRUE(_spool->find(id).has_value());
  EXPECT_EQ(_spool->metrics().fsyncs, 1u);
  EXPECT_EQ(_spool->sync_latency_average_us(), 80u);
  EXPECT_TRUE(_spool->idle());
}

// io_uring breaks the link on a short write: the fdatasync completes -ECANCELED without having
// run. Nothing is reported; the rest goes out with an fdatasync of its own, and only that one
// releases the tickets.
TEST_F(SpoolCommitTest, LinkedShortWriteCancelsItsSyncAndTheRestGetsItsOwn) {
  _options.link_fdatasync = true;
  open_spool();
  const uint64_t ticket = append(std::string(3000, 'a') + "\r\n");
  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 2u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, perform(requests[0], 1000), done);
  EXPECT_TRUE(collect(1).empty()) << "the rest waits for the cancelled fdatasync's CQE";
  _spool->on_io_complete(requests[1].op_id, -ECANCELED, done);
  EXPECT_TRUE(done.empty());
  EXPECT_EQ(_spool->metrics().fsync_errors, 0u) << "a cancelled fdatasync is no failure";
  auto rest = collect(2);
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].kind, IoRequest::Kind::write);
  EXPECT_EQ(rest[0].offset, requests[0].offset + 1000);
  EXPECT_TRUE(rest[0].link_next);
  EXPECT_EQ(rest[1].kind, IoRequest::Kind::fdatasync);
  _spool->on_io_complete(rest[0].op_id, perform(rest[0]), done);
  EXPECT_TRUE(done.empty());
  _spool->on_io_complete(rest[1].op_id, perform(rest[1]), done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, ticket);
  EXPECT_TRUE(done[0].status.ok());
  EXPECT_EQ(_spool->metrics().fsyncs, 1u);
  EXPECT_TRUE(_spool->idle());
}

// Should a kernel run the linked fdatasync after a short write all the same, that sync covers
// only part of the records: it releases nothing.
TEST_F(SpoolCommitTest, ALinkedSyncAfterAShortWriteReleasesNothing) {
  _options.link_fdatasync = true;
  open_spool();
  const uint64_t ticket = append(std::string(3000, 'a') + "\r\n");
  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 2u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, perform(requests[0], 1000), done);
  _spool->on_io_complete(requests[1].op_id, perform(requests[1]), done);
  EXPECT_TRUE(done.empty());
  uint64_t now = 2;
  done = drain(*_spool, now);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, ticket);
  EXPECT_TRUE(done[0].status.ok());
}

// A linked fdatasync that ran after a short write and failed fails the records like any failed
// fdatasync: the rest is never written, and the next batch goes to a new segment.
TEST_F(SpoolCommitTest, ALinkedSyncThatFailsAfterAShortWriteFailsItsRecords) {
  _options.link_fdatasync = true;
  open_spool();
  const uint64_t lost = append(std::string(3000, 'a') + "\r\n");
  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 2u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, perform(requests[0], 1000), done);
  _spool->on_io_complete(requests[1].op_id, -EIO, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, lost);
  EXPECT_FALSE(done[0].status.ok());
  EXPECT_EQ(_spool->metrics().fsync_errors, 1u);
  EXPECT_EQ(count_kind(collect(1), IoRequest::Kind::write), 0u) << "the rest is never written";
  const uint64_t next = append("next\r\n");
  uint64_t now = 2;
  auto rest = drain(*_spool, now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, next);
  EXPECT_TRUE(rest[0].status.ok());
}

// CQEs are not ordered: the fdatasync's may come before its write's. Nothing is decided until
// the write's has come; a write error then fails the records whatever the sync said.
TEST_F(SpoolCommitTest, LinkedSyncCompletionBeforeItsWritesIsHandledAfterIt) {
  _options.link_fdatasync = true;
  open_spool();
  const uint64_t first = append("first\r\n");
  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 2u);
  ASSERT_EQ(perform(requests[0]), static_cast<int32_t>(testing::request_bytes(requests[0])));
  std::vector<Completed> done;
  _spool->on_io_complete(requests[1].op_id, perform(requests[1]), done);
  EXPECT_TRUE(done.empty()) << "the write's CQE has not come";
  _spool->on_io_complete(requests[0].op_id, static_cast<int32_t>(testing::request_bytes(requests[0])), done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, first);
  EXPECT_TRUE(done[0].status.ok());

  const uint64_t second = append("second\r\n");
  requests = collect(1);
  ASSERT_EQ(requests.size(), 2u);
  done.clear();
  _spool->on_io_complete(requests[1].op_id, -ECANCELED, done);
  _spool->on_io_complete(requests[0].op_id, -EIO, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, second);
  EXPECT_FALSE(done[0].status.ok());
  EXPECT_TRUE(_spool->idle());
}

// A failed write fails its records at once; the batch ends only when the cancelled fdatasync's
// CQE is back (its op refers to the batch), and the next batch goes to a new segment.
TEST_F(SpoolCommitTest, LinkedWriteErrorFailsAtOnceAndTheBatchWaitsForTheCancelledSync) {
  _options.link_fdatasync = true;
  open_spool();
  const uint64_t lost = append("lost\r\n");
  auto requests = collect(0);
  ASSERT_EQ(requests.size(), 2u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, -ENOSPC, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, lost);
  EXPECT_FALSE(done[0].status.ok());
  const uint64_t next = append("next\r\n");
  // (The emptied segment's unlink may go out; no write does.)
  EXPECT_EQ(count_kind(collect(1'000'000), IoRequest::Kind::write), 0u)
      << "no new batch before the cancelled fdatasync's CQE";
  EXPECT_FALSE(_spool->idle());
  _spool->on_io_complete(requests[1].op_id, -ECANCELED, done);
  EXPECT_EQ(_spool->metrics().fsync_errors, 0u);
  uint64_t now = 1'000'001;
  auto rest = drain(*_spool, now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, next);
  EXPECT_TRUE(rest[0].status.ok());
}

// The whole format through the linked protocol, short writes included (drain emulates the
// kernel's link: a short write cancels the fdatasync linked to it); recovery finds everything.
TEST_F(SpoolCommitTest, LinkedCommitsWithShortWritesRecoverEveryMessage) {
  _options.link_fdatasync = true;
  open_spool();
  std::vector<std::string> ids(40);
  uint64_t now = 0;
  size_t completed = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    append(std::string(500 + 97 * i, static_cast<char>('a' + i % 26)) + "\r\n", &ids[i]);
    if (i % 7 == 6) {
      for (const auto& c : drain(*_spool, now, 777)) {
        EXPECT_TRUE(c.status.ok());
        ++completed;
      }
    }
  }
  for (const auto& c : drain(*_spool, now, 777)) {
    EXPECT_TRUE(c.status.ok());
    ++completed;
  }
  EXPECT_EQ(completed, ids.size());
  EXPECT_EQ(_spool->metrics().fsync_errors, 0u);
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok());
  ASSERT_EQ(recovered->messages.size(), ids.size());
  EXPECT_EQ(recovered->torn_tails, 0u);
}

// Each file's fdatasync waits for its own writes only, and the files of one batch sync
// concurrently (serial syncs would add the journal's sync to every 250's wait).
TEST_F(SpoolCommitTest, EachFilesFdatasyncWaitsForItsOwnWritesAndTheyRunConcurrently) {
  open_spool();
  std::string kept;
  append("message\r\n", &kept);
  uint64_t now = 0;
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  // A message and a journal record: two files, two writes in one batch.
  const uint64_t message = append("another\r\n");
  const uint64_t hold = _spool->hold(kept).value();
  auto requests = collect(now + 1000000);
  ASSERT_EQ(requests.size(), 2u);
  ASSERT_EQ(count_kind(requests, IoRequest::Kind::write), 2u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[1].op_id, perform(requests[1]), done);
  auto first_sync = collect(now + 2000000);
  ASSERT_EQ(first_sync.size(), 1u) << "the written file's fdatasync, not the other's";
  ASSERT_EQ(first_sync[0].kind, IoRequest::Kind::fdatasync);
  EXPECT_EQ(first_sync[0].fd, requests[1].fd);
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  auto second_sync = collect(now + 2000001);
  ASSERT_EQ(second_sync.size(), 1u) << "issued while the first is still in flight";
  ASSERT_EQ(second_sync[0].kind, IoRequest::Kind::fdatasync);
  EXPECT_EQ(second_sync[0].fd, requests[0].fd);
  EXPECT_TRUE(done.empty());
  EXPECT_TRUE(collect(now + 2000002).empty()) << "no new batch while this one runs";
  _spool->on_io_complete(second_sync[0].op_id, perform(second_sync[0]), done);
  ASSERT_EQ(done.size(), 1u);
  _spool->on_io_complete(first_sync[0].op_id, perform(first_sync[0]), done);
  ASSERT_EQ(done.size(), 2u);
  const bool in_either_order =
      (done[0].ticket == message && done[1].ticket == hold) || (done[0].ticket == hold && done[1].ticket == message);
  EXPECT_TRUE(in_either_order);
  EXPECT_TRUE(done[0].status.ok());
  EXPECT_TRUE(done[1].status.ok());
  EXPECT_TRUE(_spool->idle());
}

TEST_F(SpoolCommitTest, ShortWritesAreResubmittedAndNoFdatasyncBeforeTheRest) {
  open_spool();
  std::vector<std::string> ids(3);
  std::vector<std::string> bodies = {std::string(1000, 'a') + "\r\n", "b\r\n", std::string(3000, 'c') + "\r\n"};
  for (size_t i = 0; i < bodies.size(); ++i) {
    append(bodies[i], &ids[i]);
  }
  std::vector<Completed> done;
  uint64_t now = 0;
  size_t writes = 0;
  for (int round = 0; round < 1000 && !_spool->idle(); ++round) {
    auto requests = collect(now++);
    for (const auto& request : requests) {
      if (request.kind == IoRequest::Kind::write) {
        ++writes;
        EXPECT_TRUE(done.empty());
        _spool->on_io_complete(request.op_id, perform(request, 333), done);  // 333 octets at a time
      } else {
        ASSERT_EQ(request.kind, IoRequest::Kind::fdatasync);
        _spool->on_io_complete(request.op_id, perform(request), done);
      }
    }
  }
  EXPECT_GT(writes, 10u);
  ASSERT_EQ(done.size(), 3u);
  EXPECT_EQ(_spool->metrics().fsyncs, 1u);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_TRUE(done[i].status.ok());
    EXPECT_EQ(_spool->read_message(ids[i]).value(), bodies[i]);
  }
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok());
  EXPECT_EQ(recovered->messages.size(), 3u);
}

TEST_F(SpoolCommitTest, WriteErrorFailsExactlyTheCoveredTicketsAndMovesToANewSegment) {
  open_spool();
  std::string good;
  append("good\r\n", &good);
  uint64_t now = 0;
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  const uint64_t good_segment = _spool->find(good)->location.segment_id;

  std::string lost1, lost2, late;
  const uint64_t t1 = append("lost one\r\n", &lost1);
  const uint64_t t2 = append("lost two\r\n", &lost2);
  auto requests = collect(now + 1000000);
  ASSERT_EQ(requests.size(), 1u);
  const uint64_t t3 = append("appended while the write was in flight\r\n", &late);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, -ENOSPC, done);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].ticket, t1);
  EXPECT_EQ(done[1].ticket, t2);
  EXPECT_EQ(done[0].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(done[1].status.ok());
  EXPECT_EQ(_spool->metrics().write_errors, 1u);

  auto rest = drain(*_spool, now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, t3);
  EXPECT_TRUE(rest[0].status.ok());
  ASSERT_TRUE(_spool->find(late).has_value());
  EXPECT_NE(_spool->find(late)->location.segment_id, good_segment) << "never append after a hole";
  EXPECT_FALSE(_spool->find(lost1).has_value());
  const uint64_t after = append("after\r\n");
  auto after_done = drain(*_spool, now);
  ASSERT_EQ(after_done.size(), 1u);
  EXPECT_EQ(after_done[0].ticket, after);
  EXPECT_TRUE(after_done[0].status.ok());

  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok());
  ASSERT_EQ(recovered->messages.size(), 3u);
  EXPECT_EQ(recovered->messages[0].id, good);
  EXPECT_EQ(recovered->messages[1].id, late);
}

TEST_F(SpoolCommitTest, FdatasyncErrorFailsExactlyTheCoveredTicketsAndIsNeverRetriedAsSuccess) {
  open_spool();
  std::string first_id;
  const uint64_t first = append("first\r\n", &first_id);
  std::vector<Completed> done;
  auto requests = collect(0);
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  auto sync = collect(0);
  ASSERT_EQ(sync.size(), 1u);
  const uint64_t during = append("during the failing fdatasync\r\n");
  _spool->on_io_complete(sync[0].op_id, -EIO, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, first);
  EXPECT_FALSE(done[0].status.ok());
  EXPECT_EQ(_spool->metrics().fsync_errors, 1u);
  EXPECT_FALSE(_spool->find(first_id).has_value());

  uint64_t now = 10;
  auto rest = drain(*_spool, now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, during);
  EXPECT_TRUE(rest[0].status.ok());
  for (const auto& completed : rest) {
    EXPECT_NE(completed.ticket, first) << "a failed fdatasync's ticket completed again";
  }
}

TEST_F(SpoolCommitTest, JournalWriteErrorFailsItsTicketsAndTheJournalContinues) {
  open_spool();
  std::string id;
  append("m\r\n", &id);
  uint64_t now = 0;
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  const uint64_t held = _spool->hold(id).value();
  auto requests = collect(now + 1000000);
  ASSERT_EQ(requests.size(), 1u);
  const uint64_t released = _spool->release(id).value();
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, -EIO, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, held);
  EXPECT_FALSE(done[0].status.ok());
  auto rest = drain(*_spool, now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, released);
  EXPECT_TRUE(rest[0].status.ok());
  // The journal stays readable: the release was written where the failed hold would have gone.
  const uint64_t removed = _spool->remove(id).value();
  rest = drain(*_spool, now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, removed);
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok());
  EXPECT_TRUE(recovered->messages.empty());
}

// "A removal takes effect only when its journal record is durable": delivery relies on it (the
// bounce is durable before the original leaves).
TEST_F(SpoolCommitTest, ARemovalTakesEffectOnlyWhenItsRecordIsDurable) {
  open_spool();
  std::string id;
  append("m\r\n", &id);
  uint64_t now = 0;
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  const uint64_t segment = _spool->find(id)->location.segment_id;
  const uint64_t removed = _spool->remove(id).value();
  EXPECT_TRUE(_spool->find(id).has_value()) << "still there until the record is durable";
  EXPECT_EQ(_spool->size(), 1u);
  EXPECT_EQ(_spool->remove(id).status().code(), absl::StatusCode::kNotFound) << "already on its way";
  auto requests = collect(now + 1'000'000);
  ASSERT_EQ(requests.size(), 1u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  EXPECT_TRUE(done.empty());
  requests = collect(now + 2'000'000);
  ASSERT_EQ(count_kind(requests, IoRequest::Kind::fdatasync), 1u);
  EXPECT_TRUE(_spool->find(id).has_value()) << "written, not yet synced";
  EXPECT_GE(_spool->segment_fd(segment), 0);
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, removed);
  EXPECT_TRUE(done[0].status.ok());
  EXPECT_FALSE(_spool->find(id).has_value());
  EXPECT_EQ(_spool->size(), 0u);

  // A removal whose fdatasync fails leaves the message in place, and it can be removed again.
  std::string second;
  append("n\r\n", &second);
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  ASSERT_TRUE(_spool->remove(second).ok());
  requests = collect(now + 3'000'000);
  ASSERT_EQ(requests.size(), 1u);
  done.clear();
  _spool->on_io_complete(requests[0].op_id, perform(requests[0]), done);
  requests = collect(now + 4'000'000);
  ASSERT_EQ(requests.size(), 1u);
  _spool->on_io_complete(requests[0].op_id, -EIO, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_FALSE(done[0].status.ok());
  EXPECT_TRUE(_spool->find(second).has_value());
  const uint64_t again = _spool->remove(second).value();
  auto rest = drain(*_spool, now);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, again);
  EXPECT_TRUE(rest[0].status.ok());
  EXPECT_FALSE(_spool->find(second).has_value());
}

// Hold and release change the index when durable, and only then.
TEST_F(SpoolCommitTest, HoldAndReleaseChangeTheIndexWhenDurable) {
  open_spool();
  std::string id;
  append("m\r\n", &id);
  uint64_t now = 0;
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  ASSERT_TRUE(_spool->hold(id).ok());
  EXPECT_EQ(_spool->find(id)->status, MessageStatus::queued);
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  EXPECT_EQ(_spool->find(id)->status, MessageStatus::held);
  ASSERT_TRUE(_spool->release(id).ok());
  EXPECT_EQ(_spool->find(id)->status, MessageStatus::held);
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  EXPECT_EQ(_spool->find(id)->status, MessageStatus::queued);
}

// testing::drain, but every request goes through `fault` first: it returns the result to
// report instead (and then the request is not performed), or nullopt.
template <typename Fault>
std::vector<Completed> drain_with_faults(ShardSpool& spool, uint64_t& now_us, Fault&& fault) {
  return testing::drain_with(
      spool, now_us,
      [&fault](const IoRequest& request) {
        const std::optional<int32_t> injected = fault(request);
        return injected ? *injected : perform(request);
      },
      100000);
}

size_t journal_file_count(const std::string& dir) {
  size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/shard-0")) {
    count += parse_journal_name(entry.path().filename().string()).has_value() ? 1 : 0;
  }
  return count;
}

// A journal that cannot get its next file (the disk refuses to create one) must not leave its
// waiting records unanswered forever (a drain would never end, the admin never answered), nor
// collect a half-made file per retry.
TEST_F(SpoolCommitTest, WhenNoJournalFileCanBeMadeTheWaitingRecordsFail) {
  open_spool();
  std::string id;
  append("m\r\n", &id);
  uint64_t now = 0;
  ASSERT_EQ(drain(*_spool, now).size(), 1u);
  const uint64_t hold = _spool->hold(id).value();
  auto requests = collect(now + 1'000'000);
  ASSERT_EQ(requests.size(), 1u);
  std::vector<Completed> done;
  _spool->on_io_complete(requests[0].op_id, -EIO, done);  // the journal file is sealed
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].ticket, hold);
  const uint64_t waiting = _spool->hold(id).value();  // waits for the next file, which uses the spare
  // The spare is used up; every later attempt at the next one fails at its header write.
  auto full_disk = [](const IoRequest& request) -> std::optional<int32_t> {
    if (request.kind == IoRequest::Kind::write && request.iov_count == 1 &&
        request.iov[0].iov_len == kFileHeaderRecordBytes) {
      return -ENOSPC;
    }
    return std::nullopt;
  };
  auto rest = drain_with_faults(*_spool, now, full_disk);
  // The waiting hold went into the spare's file with the rotation and is durable...
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].ticket, waiting);
  EXPECT_TRUE(rest[0].status.ok());
  // ...now seal that one too: nothing can take the next record.
  const uint64_t release = _spool->release(id).value();
  requests = collect(now + 2'000'000);
  ASSERT_FALSE(requests.empty());
  done.clear();
  for (const auto& request : requests) {
    _spool->on_io_complete(request.op_id,
                           request.kind == IoRequest::Kind::write && request.iov_count == 1 &&
                                   request.iov[0].iov_len == kFileHeaderRecordBytes
                               ? -ENOSPC
                               : -EIO,
                           done);
  }
  const uint64_t stuck = _spool->hold(id).value();
  rest = drain_with_faults(*_spool, now, full_disk);
  EXPECT_TRUE(_spool->idle()) << "nothing left waiting forever";
  bool release_failed = false;
  bool stuck_failed = false;
  for (const auto& completed : done) {
    release_failed |= completed.ticket == release && !completed.status.ok();
  }
  for (const auto& completed : rest) {
    release_failed |= completed.ticket == release && !completed.status.ok();
    stuck_failed |= completed.ticket == stuck && !completed.status.ok();
    EXPECT_FALSE(completed.status.ok()) << completed.ticket;
  }
  EXPECT_TRUE(release_failed);
  EXPECT_TRUE(stuck_failed);
  EXPECT_GE(_spool->metrics().journal_spare_failures, kSpareFailuresMax);
  EXPECT_LE(journal_file_count(_dir), 3u) << "no half-made journal file per retry";
}

// A segment whose unlink failed is still on disk: snapshots must keep saying its messages are
// gone, or they come back at the next start (after a checkpoint dropped the older journals).
TEST_F(SpoolCommitTest, AFailedSegmentUnlinkNeverBringsItsMessagesBack) {
  _options.segment_bytes = 64 << 10;
  _options.journal_rotate_bytes = 1024;
  open_spool();
  std::vector<std::string> ids;
  uint64_t now = 0;
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(wait_for_ready_segments(*_spool, 1));
    std::string id;
    append(std::string(20000, 'a') + "\r\n", &id);
    ids.push_back(id);
    ASSERT_EQ(drain(*_spool, now).size(), 1u);
  }
  const uint64_t first_segment = _spool->find(ids.front())->location.segment_id;
  std::vector<std::string> removed;
  for (const auto& id : ids) {
    if (_spool->find(id)->location.segment_id == first_segment) {
      ASSERT_TRUE(_spool->remove(id).ok());
      removed.push_back(id);
    }
  }
  auto unlink_fails = [](const IoRequest& request) -> std::optional<int32_t> {
    if (request.kind == IoRequest::Kind::unlink && std::string(request.path).find("/seg-") != std::string::npos) {
      return -EIO;  // not performed: the file stays
    }
    return std::nullopt;
  };
  drain_with_faults(*_spool, now, unlink_fails);
  // Enough journal traffic for rotations (each with a directory fsync and a checkpoint).
  for (int i = 0; i < 60; ++i) {
    ASSERT_TRUE((i % 2 == 0 ? _spool->hold(ids.back()) : _spool->release(ids.back())).ok());
    drain_with_faults(*_spool, now, unlink_fails);
  }
  EXPECT_GE(_spool->metrics().journal_rotations, 2u);
  _spool.reset();
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  for (const auto& message : recovered->messages) {
    for (const auto& id : removed) {
      EXPECT_NE(message.id, id) << "a removed message came back";
    }
  }
  EXPECT_EQ(recovered->messages.size(), ids.size() - removed.size());
}

// Rotation counts what was appended after the file's snapshot: a snapshot larger than the
// limit must not make every new file due at once (a full rewrite after every batch).
TEST_F(SpoolCommitTest, ALargeSnapshotDoesNotMakeEveryFileRotate) {
  _options.journal_rotate_bytes = 2048;
  open_spool();
  std::vector<std::string> ids;
  uint64_t now = 0;
  for (int i = 0; i < 60; ++i) {
    std::string id;
    append("m\r\n", &id);
    ids.push_back(id);
  }
  drain(*_spool, now);
  for (const auto& id : ids) {  // 60 holds: a snapshot of 60 records, ~3.6 KiB, over the limit
    ASSERT_TRUE(_spool->hold(id).ok());
  }
  drain(*_spool, now);
  for (int i = 0; i < 3; ++i) {  // past the limit once more: the snapshot is written
    ASSERT_TRUE(_spool->release(ids[0]).ok());
    ASSERT_TRUE(_spool->hold(ids[0]).ok());
    drain(*_spool, now);
  }
  const uint64_t rotations = _spool->metrics().journal_rotations;
  ASSERT_GE(rotations, 1u);
  for (int i = 0; i < 10; ++i) {  // ten small batches, 600 octets: under the limit since then
    ASSERT_TRUE(_spool->release(ids[1]).ok());
    drain(*_spool, now);
  }
  EXPECT_LE(_spool->metrics().journal_rotations, rotations + 1);
}

TEST_F(SpoolCommitTest, RecordsLargerThanASegmentAreRefusedAtOnce) {
  open_spool();
  auto ticket =
      _spool->append_message(_ids.next(1700000000000), 1, Envelope{}, 1, std::string(_options.segment_bytes, 'x'));
  EXPECT_EQ(ticket.status().code(), absl::StatusCode::kResourceExhausted);
  auto bad_id = _spool->append_message("not-an-id", 1, Envelope{}, 1, "x");
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(_spool->idle());
}

TEST_F(SpoolCommitTest, SegmentsRollOverAndEmptiedSealedSegmentsAreUnlinked) {
  _options.segment_bytes = 64 << 10;
  open_spool();
  std::vector<std::string> ids;
  uint64_t now = 0;
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(wait_for_ready_segments(*_spool, 1));
    std::string id;
    append(std::string(5000, static_cast<char>('a' + i % 26)) + "\r\n", &id);
    ids.push_back(id);
    auto done = drain(*_spool, now);
    ASSERT_EQ(done.size(), 1u);
    ASSERT_TRUE(done[0].status.ok());
  }
  EXPECT_GE(_spool->metrics().segments_used, 3u);
  const uint64_t first_segment = _spool->find(ids.front())->location.segment_id;
  const std::string first_path = _dir + "/shard-0/" + [&] {
    char name[32];
    std::snprintf(name, sizeof(name), "seg-%016llx", static_cast<unsigned long long>(first_segment));
    return std::string(name);
  }();
  ASSERT_TRUE(std::filesystem::exists(first_path));
  for (const auto& id : ids) {
    if (_spool->find(id)->location.segment_id == first_segment) {
      ASSERT_TRUE(_spool->remove(id).ok());
    }
  }
  drain(*_spool, now);
  EXPECT_FALSE(std::filesystem::exists(first_path));
  EXPECT_EQ(_spool->segment_fd(first_segment), -1);
  EXPECT_GE(_spool->metrics().segments_unlinked, 1u);
  for (const auto& id : ids) {
    if (auto info = _spool->find(id)) {
      EXPECT_EQ(_spool->read_message(id)->size(), 5002u);
    }
  }
}

// With the file size limit below a segment, preallocation fails (like ENOSPC): appends get
// UNAVAILABLE at once. When the limit goes, the spool recovers by itself.
TEST_F(SpoolCommitTest, NoSegmentReadyIsUnavailableAndRecoversBySelf) {
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit original;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &original), 0);
  rlimit small = original;
  small.rlim_cur = 16 << 10;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  auto recovered = recover_shard(_dir, 0);
  ASSERT_TRUE(recovered.ok());
  auto spool = ShardSpool::open(_options, *std::move(recovered));
  ASSERT_TRUE(spool.ok());
  _spool = *std::move(spool);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto refused = _spool->append_message(_ids.next(1700000000000), 1, Envelope{}, 1, "x\r\n");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(_spool->metrics().unavailable, 1u);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &original), 0);
  ASSERT_TRUE(wait_for_ready_segments(*_spool, 1));
  append("x\r\n");
  uint64_t now = 0;
  auto done = drain(*_spool, now);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done[0].status.ok());
  EXPECT_GT(_spool->free_bytes(), 0u);
  EXPECT_FALSE(_spool->below_min_free());
}

}  // namespace
}  // namespace sluice::spool
