// The stream against the real kernel, over loopback TCP: input arrives in order through the
// buffer ring, output leaves in order from chunks and file ranges (short sends included, to a
// peer that reads slowly), backpressure pauses and resumes the recv, connect reports success,
// refusal and its timeout, and the close protocol ends with the peer seeing our last octets and
// then FIN, the stream closed with nothing left in the kernel.
#include "engine/io/stream.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "engine/io/socket.h"

namespace sluice::io {
namespace {

constexpr uint32_t kIndex = 7;
constexpr uint32_t kGeneration = 42;
constexpr uint64_t kTestDeadlineUs = 20'000'000;  // a hang fails the test instead of blocking ctest

SocketAddress loopback(uint16_t port) {
  in_addr address{};
  address.s_addr = htonl(INADDR_LOOPBACK);
  return SocketAddress::ipv4(address, port);
}

// A stream on its own ring, and the loop that routes its completions by tag.
class StreamHarness {
 public:
  StreamHarness() {
    auto created = Ring::create_for_this_thread(RingOptions{64, 256});
    SLUICE_ASSERT(created.ok());
    ring.reset(*created);
    auto buffer_ring = BufferRing::create(ring->raw(), 1, 64, 4096);
    SLUICE_ASSERT(buffer_ring.ok());
    buffers.reset(*buffer_ring);
    stream.bind(ring.get(), buffers.get(), kIndex, kGeneration);
  }

  // Runs the ring until `done` holds (checked after every batch of completions).
  template <typename Done>
  bool run_until(Done&& done) {
    const uint64_t start = monotonic_now_us();
    while (!done()) {
      if (monotonic_now_us() - start > kTestDeadlineUs) {
        return false;
      }
      ring->submit_wait_and_reap(10'000, [&](const io_uring_cqe& cqe) { route(cqe); });
      buffers->publish();
    }
    return true;
  }

  void route(const io_uring_cqe& cqe) {
    const CompletionTag tag = completion_tag(cqe.user_data);
    if (tag == CompletionTag::ignore) {
      return;
    }
    const UserData data = UserData::decode(cqe.user_data);
    EXPECT_EQ(data.index, kIndex);
    EXPECT_EQ(data.generation, kGeneration);
    switch (tag) {
      case CompletionTag::stream_recv: {
        const RecvEvent event = stream.on_recv(cqe, [&](std::string_view bytes) { received.append(bytes); });
        if (event == RecvEvent::peer_closed) {
          peer_closed = true;
        } else if (event == RecvEvent::ended || event == RecvEvent::failed) {
          stream.advance_close();
        }
        break;
      }
      case CompletionTag::stream_send:
        stream.on_send(cqe.res);
        stream.flush();
        break;
      case CompletionTag::stream_read:
        stream.on_read(cqe.res);
        break;
      case CompletionTag::stream_connect:
        connect_result = stream.on_connect(cqe.res);
        connect_done = true;
        if (connect_result < 0) {
          stream.advance_close();
        }
        break;
      case CompletionTag::stream_close:
        stream.on_close();
        break;
      default:
        ADD_FAILURE() << "unexpected tag " << static_cast<int>(tag);
    }
  }

  static uint64_t monotonic_now_us() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<uint64_t>(now.tv_sec) * 1'000'000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
  }

  std::unique_ptr<Ring> ring;
  std::unique_ptr<BufferRing> buffers;
  Stream stream;
  std::string received;
  bool peer_closed = false;
  bool connect_done = false;
  int32_t connect_result = 1;
};

// A listener on 127.0.0.1:<ephemeral> and a connected pair: `peer` is a blocking client socket,
// the accepted one is returned for the stream.
struct Pair {
  int listener = -1;
  int peer = -1;
  int accepted = -1;
  uint16_t port = 0;
  Pair() {
    auto opened = open_listener(loopback(0));
    SLUICE_ASSERT(opened.ok());
    listener = *opened;
    port = local_address(listener)->port();
    peer = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const SocketAddress address = loopback(port);
    SLUICE_ASSERT(::connect(peer, address.get(), address.length) == 0);
    pollfd wait{listener, POLLIN, 0};
    SLUICE_ASSERT(::poll(&wait, 1, 5000) == 1);
    accepted = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    SLUICE_ASSERT(accepted >= 0);
  }
  ~Pair() {
    ::close(peer);
    ::close(listener);
  }
};

std::string pattern(size_t octets, char seed) {
  std::string out(octets, '\0');
  for (size_t i = 0; i < octets; ++i) {
    out[i] = static_cast<char>(seed + static_cast<char>(i % 251));
  }
  return out;
}

// A temporary file (already unlinked) holding `contents`; -1 on failure.
int unlinked_file_with(std::string_view contents) {
  char path[] = "/tmp/sluice-stream-test-XXXXXX";
  const int file = ::mkstemp(path);
  if (file < 0) {
    return -1;
  }
  ::unlink(path);
  if (::pwrite(file, contents.data(), contents.size(), 0) != static_cast<ssize_t>(contents.size())) {
    ::close(file);
    return -1;
  }
  return file;
}

// Reads from a blocking socket until EOF; returns everything.
std::string read_to_eof(int fd, size_t read_size = 65536, int pause_us = 0) {
  std::string all;
  std::string buffer(read_size, '\0');
  while (true) {
    const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    if (n <= 0) {
      return all;
    }
    all.append(buffer.data(), static_cast<size_t>(n));
    if (pause_us > 0) {
      usleep(static_cast<useconds_t>(pause_us));
    }
  }
}

TEST(StreamTest, InputArrivesInOrderAndPeerCloseIsReported) {
  StreamHarness h;
  Pair pair;
  h.stream.adopt(pair.accepted);
  EXPECT_EQ(h.stream.state(), StreamState::open);
  const std::string sent = pattern(200'000, 'a');  // many buffer-ring buffers
  std::thread writer([&] {
    ASSERT_EQ(::send(pair.peer, sent.data(), sent.size(), 0), static_cast<ssize_t>(sent.size()));
    ::shutdown(pair.peer, SHUT_WR);
  });
  ASSERT_TRUE(h.run_until([&] { return h.peer_closed; }));
  writer.join();
  EXPECT_EQ(h.received, sent);
  EXPECT_TRUE(h.stream.peer_closed());
  EXPECT_FALSE(h.stream.reading());
  h.stream.begin_close();
  h.stream.flush();
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  EXPECT_TRUE(h.stream.quiescent());
}

// Chunks and file ranges leave in the order they were queued, whole, to a peer that reads
// slowly (so sends are short and the kernel's buffer fills), and then the peer sees FIN.
TEST(StreamTest, OutputOfChunksAndFileRangesLeavesInOrderThenFin) {
  StreamHarness h;
  Pair pair;
  h.stream.adopt(pair.accepted);
  const std::string contents = pattern(3'000'000, 'F');  // several kFileChunkOctets reads
  const int file = unlinked_file_with(contents);
  ASSERT_GE(file, 0);

  std::string expected;
  h.stream.output().append("HEAD\r\n");
  expected += "HEAD\r\n";
  h.stream.queue_file_range(file, 10, 2'000'000);
  expected += contents.substr(10, 2'000'000);
  const std::string middle = pattern(1'000'000, 'm');
  h.stream.output().append(middle);
  expected += middle;
  h.stream.queue_file_range(file, 2'500'000, 500'000);
  expected += contents.substr(2'500'000, 500'000);
  h.stream.output().append(".\r\n");
  expected += ".\r\n";
  EXPECT_EQ(h.stream.queued_octets(), 6u + middle.size() + 3u);  // file ranges are not in memory

  std::string got;
  std::thread reader([&] { got = read_to_eof(pair.peer, 4096, 50); });
  h.stream.flush();
  h.stream.begin_close();  // after the output: the close waits for it
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  reader.join();
  ::close(file);
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "output out of order or damaged";
  EXPECT_TRUE(h.stream.quiescent());
}

// A file that ends before its range cannot be sent in order: the stream closes instead of
// sending what follows.
TEST(StreamTest, FileRangePastTheEndClosesTheStream) {
  StreamHarness h;
  Pair pair;
  h.stream.adopt(pair.accepted);
  const int file = unlinked_file_with("abc");
  ASSERT_GE(file, 0);
  h.stream.queue_file_range(file, 0, 10);
  h.stream.output().append("AFTER");
  std::string got;
  std::thread reader([&] { got = read_to_eof(pair.peer); });
  h.stream.flush();
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  reader.join();
  ::close(file);
  EXPECT_EQ(got, "abc") << "nothing after the short file range may be sent";
  EXPECT_EQ(h.stream.last_error(), -EIO);
}

// Parked input above the high watermark stops the recv: what the peer sends then stays in the
// kernel until resume_reading(), once the parked input is drained below the low watermark.
TEST(StreamTest, ParkingAboveTheHighWatermarkPausesTheRecvUntilResumed) {
  StreamHarness h;
  Pair pair;
  h.stream.adopt(pair.accepted);
  const std::string first = pattern(Stream::kParkedHighOctets, 'p');
  ASSERT_TRUE(h.stream.park(first));
  EXPECT_TRUE(h.stream.reading_paused());
  // The cancel completes: the recv is no longer armed and nothing re-arms it.
  ASSERT_TRUE(h.run_until([&] { return h.stream.quiescent(); }));
  ASSERT_EQ(::send(pair.peer, "later", 5, 0), 5);
  for (int i = 0; i < 20; ++i) {
    h.ring->submit_wait_and_reap(5'000, [&](const io_uring_cqe& cqe) { h.route(cqe); });
  }
  EXPECT_EQ(h.received, "") << "a paused stream read input";
  h.stream.resume_reading();
  EXPECT_TRUE(h.stream.reading_paused()) << "parked input is still above the low watermark";
  h.stream.parked().consume(h.stream.parked().size());
  h.stream.resume_reading(/*hold=*/true);
  EXPECT_TRUE(h.stream.reading_paused()) << "the owner's hold keeps it paused";
  h.stream.resume_reading();
  EXPECT_FALSE(h.stream.reading_paused());
  ASSERT_TRUE(h.run_until([&] { return h.received == "later"; }));
  EXPECT_FALSE(h.stream.park(pattern(Stream::kParkedOctetsMax + 1, 'x'))) << "the hard cap refuses";
  h.stream.force_close();
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
}

TEST(StreamTest, ConnectSucceedsAndCarriesBytesBothWays) {
  StreamHarness h;
  auto opened = open_listener(loopback(0));
  ASSERT_TRUE(opened.ok());
  const int listener = *opened;
  const uint16_t port = local_address(listener)->port();
  ASSERT_EQ(h.stream.connect(loopback(port), 5'000), 0);
  EXPECT_EQ(h.stream.state(), StreamState::connecting);
  ASSERT_TRUE(h.run_until([&] { return h.connect_done; }));
  ASSERT_EQ(h.connect_result, 0);
  EXPECT_EQ(h.stream.state(), StreamState::open);
  pollfd wait{listener, POLLIN, 0};
  ASSERT_EQ(::poll(&wait, 1, 5000), 1);
  const int server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(server, 0);
  ASSERT_EQ(::send(server, "220 hi\r\n", 8, 0), 8);
  ASSERT_TRUE(h.run_until([&] { return h.received == "220 hi\r\n"; }));
  h.stream.output().append("QUIT\r\n");
  h.stream.flush();
  h.stream.begin_close();
  std::string got;
  std::thread reader([&] { got = read_to_eof(server); });
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  reader.join();
  EXPECT_EQ(got, "QUIT\r\n");
  ::close(server);
  ::close(listener);
}

TEST(StreamTest, ConnectToAClosedPortIsRefused) {
  StreamHarness h;
  // A port nobody listens on: bind one, learn its number, close it.
  auto opened = open_listener(loopback(0));
  ASSERT_TRUE(opened.ok());
  const uint16_t port = local_address(*opened)->port();
  ::close(*opened);
  ASSERT_EQ(h.stream.connect(loopback(port), 5'000), 0);
  ASSERT_TRUE(h.run_until([&] { return h.connect_done; }));
  EXPECT_EQ(h.connect_result, -ECONNREFUSED);
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
}

// A listener whose accept queue is full drops new SYNs: the connect hangs until its timeout.
TEST(StreamTest, ConnectThatHangsEndsAtItsTimeout) {
  StreamHarness h;
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  SocketAddress any = loopback(0);
  ASSERT_EQ(::bind(listener, any.get(), any.length), 0);
  ASSERT_EQ(::listen(listener, 0), 0);
  const uint16_t port = local_address(listener)->port();
  // Fill the backlog (never accepted).
  std::vector<int> fillers;
  for (int i = 0; i < 4; ++i) {
    const int filler = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const SocketAddress address = loopback(port);
    ::connect(filler, address.get(), address.length);
    fillers.push_back(filler);
  }
  usleep(100'000);
  const uint64_t start = StreamHarness::monotonic_now_us();
  ASSERT_EQ(h.stream.connect(loopback(port), 300), 0);
  ASSERT_TRUE(h.run_until([&] { return h.connect_done; }));
  const uint64_t elapsed_ms = (StreamHarness::monotonic_now_us() - start) / 1000;
  EXPECT_EQ(h.connect_result, -ETIMEDOUT);
  EXPECT_GE(elapsed_ms, 250u) << "ended before its timeout";
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  for (int filler : fillers) {
    ::close(filler);
  }
  ::close(listener);
}

// force_close() while a send is stuck on a peer that reads nothing: the close still completes.
TEST(StreamTest, ForceCloseEndsAStuckSend) {
  StreamHarness h;
  Pair pair;
  int small = 4096;
  ::setsockopt(pair.accepted, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  h.stream.adopt(pair.accepted);
  h.stream.output().append(pattern(8 << 20, 's'));
  h.stream.flush();
  for (int i = 0; i < 10; ++i) {
    h.ring->submit_wait_and_reap(5'000, [&](const io_uring_cqe& cqe) { h.route(cqe); });
  }
  EXPECT_TRUE(h.stream.output_in_flight()) << "the peer reads nothing: the send should be stuck";
  h.stream.force_close();
  EXPECT_EQ(h.stream.queued_octets(), 0u);
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  EXPECT_TRUE(h.stream.quiescent());
}

// drop_output() while a file range's read is in flight resets the range; on_read then
// subtracts from the reset length (underflow) and the next flush reads "the rest" from fd -1:
// EBADF, a forced close, and the output queued after the drop is lost.
TEST(StreamTest, DropOutputDuringAFileReadKeepsLaterOutput) {
  StreamHarness h;
  Pair pair;
  h.stream.adopt(pair.accepted);
  const int file = unlinked_file_with(pattern(1000, 'f'));
  ASSERT_GE(file, 0);
  h.stream.queue_file_range(file, 0, 1000);
  h.stream.flush();  // the read is prepared (in flight from the stream's view)
  ASSERT_TRUE(h.stream.output_in_flight());
  h.stream.drop_output();
  h.stream.output().append("NEXT");
  ASSERT_TRUE(h.run_until([&] { return !h.stream.output_in_flight() && h.stream.output_idle(); }) ||
              h.stream.closing());
  EXPECT_EQ(h.stream.last_error(), 0) << "forced close after drop_output: " << h.stream.last_error();
  EXPECT_FALSE(h.stream.closing());
  std::string got;
  std::thread reader([&] { got = read_to_eof(pair.peer); });
  if (!h.stream.closing()) {
    h.stream.begin_close();
    h.stream.flush();
  }
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  reader.join();
  ::close(file);
  EXPECT_TRUE(got.size() >= 4 && got.substr(got.size() - 4) == "NEXT") << "got " << got.size() << " octets";
}

// The documented contract after a failed connect is "call advance_close()"; with
// output queued meanwhile (e.g. a pipelined greeting reply), advance_close waits for a flush()
// that nobody owes, and the stream never closes.
TEST(StreamTest, FailedConnectWithQueuedOutputCloses) {
  StreamHarness h;
  auto opened = open_listener(loopback(0));
  ASSERT_TRUE(opened.ok());
  const uint16_t port = local_address(*opened)->port();
  ::close(*opened);
  ASSERT_EQ(h.stream.connect(loopback(port), 5'000), 0);
  h.stream.output().append("EHLO x\r\n");
  ASSERT_TRUE(h.run_until([&] { return h.connect_done; }));
  EXPECT_EQ(h.connect_result, -ECONNREFUSED);
  const uint64_t start = StreamHarness::monotonic_now_us();
  while (!h.stream.closed() && StreamHarness::monotonic_now_us() - start < 2'000'000) {
    h.ring->submit_wait_and_reap(10'000, [&](const io_uring_cqe& cqe) { h.route(cqe); });
  }
  EXPECT_TRUE(h.stream.closed()) << "stuck in " << stream_state_name(h.stream.state());
}

// What a peer can cause must not reach an assertion: a body queued after the stream closed
// itself (a reset seen in the same batch), a close of a stream whose socket(2) failed.
TEST(StreamTest, QueueingOnAClosingStreamOrClosingAnIdleOneIsRefusedQuietly) {
  StreamHarness h;
  h.stream.begin_close();  // idle: never opened
  EXPECT_EQ(h.stream.state(), StreamState::idle);
  Pair pair;
  h.stream.adopt(pair.accepted);
  h.stream.begin_close();
  const int file = unlinked_file_with("body");
  ASSERT_GE(file, 0);
  EXPECT_FALSE(h.stream.queue_file_range(file, 0, 4));
  h.stream.flush();
  ASSERT_TRUE(h.run_until([&] { return h.stream.closed(); }));
  ::close(file);
}

}  // namespace
}  // namespace sluice::io
