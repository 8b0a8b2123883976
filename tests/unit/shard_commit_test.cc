// The shard's own commit logic, with the spool's I/O taken through the seam (ShardContext::
// spool_io): a real shard thread, real SMTP clients over loopback, a real spool on disk, and the
// test deciding when each segment fdatasync completes and with what result. Proves at the shard
// level what the spool tests prove below it: "250 queued" is sent only after the fdatasync that
// covers the message completed, and a failed fdatasync gives 451 4.3.0 to exactly the sessions
// whose messages it covered (and the message is not in the queue), while the next commit works.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/app/client_limits.h"
#include "engine/app/shard.h"
#include "engine/io/clock.h"
#include "engine/io/ring.h"
#include "engine/io/socket.h"
#include "spool/spool.h"
#include "spool/spool_testing.h"

namespace sluice::app {
namespace {

constexpr int kReplyWaitMs = 10'000;  // a reply that never comes fails here, not as a hang

io::SocketAddress loopback(uint16_t port) {
  in_addr address{};
  address.s_addr = htonl(INADDR_LOOPBACK);
  return io::SocketAddress::ipv4(address, port);
}

bool is_segment_fd(int fd) {
  char target[4096];
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  return n > 0 && std::string_view(target, static_cast<size_t>(n)).find("/seg-") != std::string_view::npos;
}

// Takes the shard's spool requests. Every request is performed at once and its result given
// back, except the fdatasyncs of segment files: those are held until the test releases them,
// with the real fdatasync's result or an injected error. All results go back through one
// thread that owns a ring (for the doorbell) and posts them to the shard.
class HeldSpoolIo : public SpoolIoPort {
 public:
  struct Held {
    spool::IoRequest request;
  };

  void start(Shard* shard) {
    _shard = shard;
    _pump = std::thread([this] { pump(); });
  }
  void stop() {
    {
      std::lock_guard lock(_mutex);
      _stopping = true;
    }
    _changed.notify_all();
    _pump.join();
  }

  void submit(const spool::IoRequest& request) override {  // on the shard's thread
    std::lock_guard lock(_mutex);
    _incoming.push_back(request);
    _changed.notify_all();
  }

  // Waits for the next held segment fdatasync.
  std::optional<spool::IoRequest> wait_held(int timeout_ms = kReplyWaitMs) {
    std::unique_lock lock(_mutex);
    if (!_changed.wait_for(lock, std::chrono::milliseconds(timeout_ms), [this] { return !_held.empty(); })) {
      return std::nullopt;
    }
    spool::IoRequest request = _held.front();
    _held.pop_front();
    return request;
  }
  size_t held_count() {
    std::lock_guard lock(_mutex);
    return _held.size();
  }
  // Runs `work` on the shard's thread (posted by the pump, which owns the doorbell's ring).
  void run_on_shard(std::function<void(Shard&)> work) {
    std::lock_guard lock(_mutex);
    _work.push_back(std::move(work));
    _changed.notify_all();
  }
  // Completes a held request: performed (its real result) or failed with `error`.
  void release(const spool::IoRequest& request, int32_t error = 0) {
    std::lock_guard lock(_mutex);
    _releases.push_back({request, error});
    _changed.notify_all();
  }

 private:
  void pump() {
    auto created = io::Ring::create_for_this_thread(io::RingOptions{64, 256});
    ASSERT_TRUE(created.ok());
    std::unique_ptr<io::Ring> ring(*created);
    std::unique_lock lock(_mutex);
    while (true) {
      _changed.wait(lock, [this] { return _stopping || !_incoming.empty() || !_releases.empty() || !_work.empty(); });
      if (_stopping) {
        return;
      }
      std::vector<std::function<void(Shard&)>> posts;
      while (!_incoming.empty()) {
        const spool::IoRequest request = _incoming.front();
        _incoming.pop_front();
        if (request.kind == spool::IoRequest::Kind::fdatasync && is_segment_fd(request.fd)) {
          _held.push_back(request);
          _changed.notify_all();
          continue;
        }
        const int32_t result = spool::testing::perform(request);
        posts.push_back([op_id = request.op_id, result](Shard& shard) { shard.complete_spool_io(op_id, result); });
      }
      while (!_releases.empty()) {
        const auto [request, error] = _releases.front();
        _releases.pop_front();
        const int32_t result = error != 0 ? error : spool::testing::perform(request);
        posts.push_back([op_id = request.op_id, result](Shard& shard) { shard.complete_spool_io(op_id, result); });
      }
      while (!_work.empty()) {
        posts.push_back(std::move(_work.front()));
        _work.pop_front();
      }
      lock.unlock();
      for (auto& work : posts) {
        auto* control = new ControlRequest{std::move(work)};
        while (!_shard->post(control)) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the control ring is full
        }
        io::prep_doorbell(ring->sqe(), _shard->ring_fd(), Shard::doorbell_user_data());
      }
      ring->submit_wait_and_reap(0, [](const io_uring_cqe&) {});
      lock.lock();
    }
  }

  Shard* _shard = nullptr;
  std::thread _pump;
  std::mutex _mutex;
  std::condition_variable _changed;
  std::deque<spool::IoRequest> _incoming;
  std::deque<spool::IoRequest> _held;
  std::deque<std::pair<spool::IoRequest, int32_t>> _releases;
  std::deque<std::function<void(Shard&)>> _work;
  bool _stopping = false;
};

// A blocking SMTP client with a timeout on every read.
class Client {
 public:
  explicit Client(uint16_t port) {
    _fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const io::SocketAddress address = loopback(port);
    EXPECT_EQ(::connect(_fd, address.get(), address.length), 0);
  }
  ~Client() { ::close(_fd); }
  void send(std::string_view text) {
    ASSERT_EQ(::send(_fd, text.data(), text.size(), MSG_NOSIGNAL), static_cast<ssize_t>(text.size()));
  }
  // One whole reply (its last line "NNN " ...), or "" if none came within timeout_ms.
  std::string reply(int timeout_ms = kReplyWaitMs) {
    while (true) {
      if (const size_t end = complete_reply_end(); end != std::string::npos) {
        std::string reply = _buffer.substr(0, end);
        _buffer.erase(0, end);
        return reply;
      }
      pollfd wait{_fd, POLLIN, 0};
      if (::poll(&wait, 1, timeout_ms) != 1) {
        return "";
      }
      char chunk[4096];
      const ssize_t n = ::recv(_fd, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        return "";
      }
      _buffer.append(chunk, static_cast<size_t>(n));
    }
  }
  // Sends a whole transaction up to the end of data; returns without waiting for its answer.
  void send_message(std::string_view tag) {
    EXPECT_EQ(reply().substr(0, 3), "220");
    send("EHLO client.test\r\n");
    EXPECT_EQ(reply().substr(0, 3), "250");
    send("MAIL FROM:<sender@client.test>\r\n");
    EXPECT_EQ(reply().substr(0, 3), "250");
    send("RCPT TO:<rcpt@example.test>\r\n");
    EXPECT_EQ(reply().substr(0, 3), "250");
    send("DATA\r\n");
    EXPECT_EQ(reply().substr(0, 3), "354");
    send("Subject: " + std::string(tag) + "\r\n\r\nbody of " + std::string(tag) + "\r\n.\r\n");
  }

 private:
  size_t complete_reply_end() const {
    size_t start = 0;
    while (true) {
      const size_t eol = _buffer.find("\r\n", start);
      if (eol == std::string::npos) {
        return std::string::npos;
      }
      if (eol - start >= 4 && _buffer[start + 3] == ' ') {
        return eol + 2;
      }
      start = eol + 2;
    }
  }
  int _fd = -1;
  std::string _buffer;
};

class ShardCommitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/sluice-shard-commit-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    _dir = pattern;
    auto lock = spool::SpoolLock::acquire(_dir);
    ASSERT_TRUE(lock.ok()) << lock.status();
    _lock.emplace(std::move(*lock));
    auto floor = spool::load_and_bump_floor(_dir, io::wall_ms());
    ASSERT_TRUE(floor.ok());
    auto recovered = spool::recover_shard(_dir, 0);
    ASSERT_TRUE(recovered.ok()) << recovered.status();
    spool::SpoolOptions options;
    options.dir = _dir;
    options.segment_bytes = 1 << 20;
    auto opened = spool::ShardSpool::open(options, std::move(*recovered));
    ASSERT_TRUE(opened.ok()) << opened.status();
    ASSERT_TRUE(spool::testing::wait_for_ready_segments(**opened));

    auto network = io::Network::parse("127.0.0.0/8");
    ASSERT_TRUE(network.ok());
    _context.settings.hostname = "mx.shard-test";
    _context.settings.relay_networks = io::NetworkList({*network});
    _context.client_limits = &_limits;
    _context.draining = &_draining;
    _context.sessions_open = &_sessions_open;
    _context.spool_io = &_io;
    _context.delivery_enabled = false;  // these tests hold the spool's I/O: no outcome records in between
    auto listener = io::open_listener(loopback(0));
    ASSERT_TRUE(listener.ok());
    _port = io::local_address(*listener)->port();
    _shard = std::make_unique<Shard>(0, &_context, std::vector<int>{*listener}, std::move(*opened), *floor);
    _thread = std::thread([this] { _shard->run(); });
    while (!_shard->ready()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    _io.start(_shard.get());
  }

  void TearDown() override {
    _draining.store(true);
    // Whatever is still held completes, so the shard can drain.
    while (auto held = _io.wait_held(200)) {
      _io.release(*held);
    }
    _thread.join();
    _io.stop();
    _shard.reset();
    _lock.reset();
    std::filesystem::remove_all(_dir);
  }

  // The queue index, read on the shard's thread.
  size_t queued() {
    auto answer = std::make_shared<std::promise<size_t>>();
    auto future = answer->get_future();
    _io.run_on_shard([answer](Shard& shard) { answer->set_value(shard.spool().size()); });
    return future.get();
  }

  uint64_t transactions() const { return _shard->metrics().transactions_total.load(); }

  bool wait_transactions(uint64_t count) {
    for (int i = 0; i < kReplyWaitMs && transactions() < count; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return transactions() >= count;
  }

  std::string _dir;
  std::optional<spool::SpoolLock> _lock;
  ClientLimits _limits{100, 100'000};
  std::atomic<bool> _draining{false};
  std::atomic<int64_t> _sessions_open{0};
  HeldSpoolIo _io;
  ShardContext _context;
  uint16_t _port = 0;
  std::unique_ptr<Shard> _shard;
  std::thread _thread;
};

TEST_F(ShardCommitTest, QueuedIsSentOnlyAfterTheCoveringFdatasync) {
  Client client(_port);
  client.send_message("one");
  const std::optional<spool::IoRequest> sync = _io.wait_held();
  ASSERT_TRUE(sync.has_value()) << "no segment fdatasync was issued for the message";
  // The record is written, its fdatasync not done: nothing may be answered yet.
  EXPECT_EQ(client.reply(300), "") << "answered before the fdatasync completed";
  _io.release(*sync);
  const std::string reply = client.reply();
  EXPECT_TRUE(reply.starts_with("250 2.0.0 Ok: queued as ")) << reply;
}

TEST_F(ShardCommitTest, FailedFdatasyncAnswers451ToExactlyTheSessionsItCovered) {
  // A's commit is in flight (its fdatasync held) while B and C finish their messages: they wait
  // for the next commit, which covers both of them.
  Client a(_port);
  a.send_message("a");
  const std::optional<spool::IoRequest> first = _io.wait_held();
  ASSERT_TRUE(first.has_value());
  Client b(_port);
  Client c(_port);
  b.send_message("b");
  c.send_message("c");
  ASSERT_TRUE(wait_transactions(3)) << "B and C did not reach the spool";
  _io.release(*first);
  EXPECT_EQ(a.reply().substr(0, 3), "250");

  const std::optional<spool::IoRequest> second = _io.wait_held();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(_io.held_count(), 0u) << "B and C were to share one commit";
  EXPECT_EQ(b.reply(300), "");
  _io.release(*second, -EIO);
  EXPECT_EQ(b.reply(), "451 4.3.0 Error: queue file write error\r\n");
  EXPECT_EQ(c.reply(), "451 4.3.0 Error: queue file write error\r\n");
  EXPECT_EQ(queued(), 1u) << "only A's message is in the queue";

  // The sessions go on, and the next commit (on a fresh segment) works.
  Client d(_port);
  d.send_message("d");
  const std::optional<spool::IoRequest> third = _io.wait_held();
  ASSERT_TRUE(third.has_value());
  EXPECT_NE(third->fd, second->fd) << "after a failed fdatasync the segment is not written again";
  _io.release(*third);
  EXPECT_EQ(d.reply().substr(0, 3), "250");
  b.send("NOOP\r\n");
  EXPECT_EQ(b.reply().substr(0, 3), "250");
  EXPECT_EQ(queued(), 2u);
}

}  // namespace
}  // namespace sluice::app
