// Microbenchmark of the spool's append and group commit (issue 9 section 4): `batch` messages of
// 1 KiB in wire form (two recipients each) appended to one shard's spool, then its I/O run until
// every ticket has completed, which is when the relay may say 250. A batch stands for the
// messages that arrive during one fdatasync: the spool covers them all with one, so the cost per
// message falls with the batch, and the counter fsyncs_per_msg shows that it did.
//
// The spool is a sans-I/O state machine; here its requests are performed synchronously
// (spool/spool_testing.h: pwritev, fdatasync, fallocate), not through io_uring as in the shard,
// so the figures are the format's CPU and the disk's fdatasync, without the ring's batching.
// BM_SpoolAppendCommitNoDisk answers each fdatasync with success without making it: the CPU cost
// of the spool itself (encoding, checksums, index, tickets), writes still going to the page cache.
// The directory is under /var/tmp (a disk; /tmp may be tmpfs, whose fdatasync costs nothing).
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "spool/message_id.h"
#include "spool/spool.h"
#include "spool/spool_testing.h"

namespace {

namespace spool = sluice::spool;

constexpr size_t kBodyOctets = 1024;
constexpr uint64_t kArrivalMs = 1764700000000;

std::string body_1k() {
  std::string body =
      "From: Sender <sender@example.test>\r\nTo: <a@example.org>\r\nSubject: spool microbenchmark\r\n\r\n";
  while (body.size() + 78 <= kBodyOctets) {
    body += "The quick brown fox jumps over the lazy dog, and then some more words here.\r\n";
  }
  body.resize(kBodyOctets - 2, 'x');
  return body + "\r\n";
}

// One spool in a fresh directory for the length of a benchmark run, removed afterwards.
class BenchSpool {
 public:
  explicit BenchSpool(benchmark::State& state) {
    char pattern[] = "/var/tmp/sluice-spool-bench-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
      state.SkipWithError("mkdtemp under /var/tmp failed");
      return;
    }
    _dir = pattern;
    spool::SpoolOptions options;
    options.dir = _dir;
    options.shard = 0;
    options.commit_interval_us = 0;  // commit as soon as the batch is in: no pacing wait
    auto recovered = spool::recover_shard(_dir, 0);
    if (!recovered.ok()) {
      state.SkipWithError("recover_shard failed");
      return;
    }
    auto opened = spool::ShardSpool::open(options, *std::move(recovered));
    if (!opened.ok() || !spool::testing::wait_for_ready_segments(**opened)) {
      state.SkipWithError("the spool did not open with its segments ready");
      return;
    }
    _spool = *std::move(opened);
  }
  ~BenchSpool() {
    _spool.reset();
    if (!_dir.empty()) {
      std::filesystem::remove_all(_dir);
    }
  }
  spool::ShardSpool* get() { return _spool.get(); }

 private:
  std::string _dir;
  std::unique_ptr<spool::ShardSpool> _spool;
};

// Appends one message; when the current segment is full and the next is still being made (the
// preallocator's thread), waits for it outside the timing, as a real shard would answer 451 and
// the client retry.
bool append_one(benchmark::State& state, spool::ShardSpool& spool, spool::IdGenerator& ids, const std::string& body) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    spool::Envelope envelope;
    envelope.sender = "sender@example.test";
    envelope.recipients = {"a@example.org", "b@example.org"};
    envelope.client_address = "127.0.0.1";
    envelope.client_helo = "client.example.test";
    auto ticket = spool.append_message(ids.next(kArrivalMs), kArrivalMs, std::move(envelope), body.size(), body);
    if (ticket.ok()) {
      return true;
    }
    state.PauseTiming();
    const bool ready = spool::testing::wait_for_ready_segments(spool, 1);
    state.ResumeTiming();
    if (!ready) {
      return false;
    }
  }
  return false;
}

template <typename Complete>
void run_append_commit(benchmark::State& state, Complete&& complete) {
  const size_t batch = static_cast<size_t>(state.range(0));
  BenchSpool bench_spool(state);
  spool::ShardSpool* spool = bench_spool.get();
  if (spool == nullptr) {
    return;
  }
  const std::string body = body_1k();
  spool::IdGenerator ids(0, kArrivalMs);
  uint64_t now_us = 1;
  uint64_t durable = 0;
  const uint64_t fsyncs_before = spool->metrics().fsyncs;
  for (auto _ : state) {
    for (size_t i = 0; i < batch; ++i) {
      if (!append_one(state, *spool, ids, body)) {
        state.SkipWithError("append_message failed");
        return;
      }
    }
    for (const spool::Completed& done : spool::testing::drain_with(*spool, now_us, complete)) {
      if (!done.status.ok()) {
        state.SkipWithError("a ticket completed with an error");
        return;
      }
      durable += done.ticket != 0 && !done.queue_id.empty() ? 1 : 0;
    }
  }
  const uint64_t messages = state.iterations() * batch;
  if (durable != messages) {
    state.SkipWithError("not every appended message was made durable exactly once");
    return;
  }
  state.SetItemsProcessed(static_cast<int64_t>(messages));
  state.SetBytesProcessed(static_cast<int64_t>(messages * body.size()));
  state.counters["fsyncs_per_msg"] =
      static_cast<double>(spool->metrics().fsyncs - fsyncs_before) / static_cast<double>(messages);
}

void BM_SpoolAppendCommit(benchmark::State& state) {
  run_append_commit(state, [](const spool::IoRequest& request) { return spool::testing::perform(request); });
}
BENCHMARK(BM_SpoolAppendCommit)->Arg(1)->Arg(16)->Arg(128)->UseRealTime();

void BM_SpoolAppendCommitNoDisk(benchmark::State& state) {
  run_append_commit(state, [](const spool::IoRequest& request) {
    const bool sync = request.kind == spool::IoRequest::Kind::fdatasync || request.kind == spool::IoRequest::Kind::fsync;
    return sync ? 0 : spool::testing::perform(request);
  });
}
BENCHMARK(BM_SpoolAppendCommitNoDisk)->Arg(1)->Arg(128);

}  // namespace
