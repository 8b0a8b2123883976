// Microbenchmark of the SMTP client's body path (issue 8): a message body in a spool segment file
// (written and fdatasync'd just before, so its pages are in the page cache, clean) sent over a
// loopback TCP connection with io_uring, three ways:
//   - read + send: IORING_OP_READ of a chunk into a buffer, then IORING_OP_SEND of it, one op in
//     flight, short sends continued: what io::Stream does for a queued file range. Run both
//     through io::Stream itself (BM_BodySendStream, the relay's own code) and as a bare loop of
//     the same ops (BM_BodySendReadSend), so that the other variants compare with a loop of
//     the same shape;
//   - splice: file -> pipe -> socket, two linked IORING_OP_SPLICEs per chunk;
//   - SEND_ZC: read, then IORING_OP_SEND_ZC from the buffer, whose next read waits for the
//     send's notification CQE; from a plain buffer and from a registered one (_FIXED).
// The receiver is the same for all: a thread that recv(2)s into a 256 KiB buffer and discards.
// Before timing, each run sends the body twice and the receiver compares every octet with the
// file; while timing it only counts, and after the loop the count must equal exactly what the
// CQEs say was sent, which must be exactly iterations x body size.
//
// Time: real time (UseRealTime), since the work is split across threads. CPU: the whole
// process's (MeasureProcessCPUTime): the sender thread, the receiver thread and io_uring's io-wq
// workers (splice always runs in one). The counters split it, in ns per message: snd_ns (the
// benchmark thread; on loopback it also runs the receiving socket's TCP processing for what it
// sends), rcv_ns (the receiver thread), wq_ns (the rest of the process: io-wq workers).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/io/address.h"
#include "engine/io/buffer_ring.h"
#include "engine/io/ring.h"
#include "engine/io/socket.h"
#include "engine/io/stream.h"
#include "engine/io/strings.h"

// liburing 2.3 carries a copy of the UAPI header older than these (kernel 6.2 ABI, in
// <linux/io_uring.h> of Debian 12's linux-libc-dev, which liburing.h does not include).
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

namespace {

using sluice::str_cat;
namespace io = sluice::io;

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;
constexpr size_t kRelayChunkOctets = io::Stream::kFileChunkOctets;  // 64 KiB
constexpr size_t kReceiveBufferOctets = 256 * kKiB;
constexpr auto kWaitMax = std::chrono::seconds(10);  // no completion or no octets this long: a defect

absl::Status errno_status(const char* what, int error) {
  return absl::InternalError(str_cat(what, ": ", std::strerror(error)));
}

uint64_t clock_ns(clockid_t clock) {
  timespec now{};
  clock_gettime(clock, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(now.tv_nsec);
}

// ---- the body: a spool-like file on the spool's disk, its pages in the page cache ----

class BodyFile {
 public:
  // /var/tmp: ext4 on the same disk as the spools (not tmpfs, whose pages splice differently).
  static absl::StatusOr<std::unique_ptr<BodyFile>> create(size_t octets) {
    char path[] = "/var/tmp/sluice-body-XXXXXX";
    const int fd = mkstemp(path);
    if (fd < 0) {
      return errno_status("mkstemp", errno);
    }
    unlink(path);
    auto file = std::unique_ptr<BodyFile>(new BodyFile(fd));
    std::mt19937_64 rng(octets);
    file->_contents.resize(octets);
    for (size_t i = 0; i < octets; i += sizeof(uint64_t)) {
      const uint64_t word = rng();
      std::memcpy(file->_contents.data() + i, &word, std::min(sizeof(word), octets - i));
    }
    if (pwrite(fd, file->_contents.data(), octets, 0) != static_cast<ssize_t>(octets) || fdatasync(fd) != 0) {
      return errno_status("writing the body file", errno);
    }
    std::string check(octets, '\0');  // warm and check the page cache
    if (pread(fd, check.data(), octets, 0) != static_cast<ssize_t>(octets) || check != file->_contents) {
      return absl::InternalError("the body file does not read back");
    }
    return file;
  }
  ~BodyFile() { close(_fd); }
  int fd() const { return _fd; }
  size_t size() const { return _contents.size(); }
  const std::string& contents() const { return _contents; }

 private:
  explicit BodyFile(int fd) : _fd(fd) {}
  int _fd;
  std::string _contents;
};

// ---- the receiver: identical for every variant ----

class Receiver {
 public:
  Receiver(int fd, const std::string* expected) : _fd(fd), _expected(expected), _thread([this] { run(); }) {
    pthread_getcpuclockid(_thread.native_handle(), &_cpu_clock);
  }
  ~Receiver() {
    _thread.join();  // the sender's shutdown(SHUT_WR) ends it
    close(_fd);
  }
  void set_verify(bool on) { _verify.store(on); }
  uint64_t received() const { return _received.load(std::memory_order_acquire); }
  bool mismatch() const { return _mismatch.load(); }
  uint64_t cpu_ns() const { return clock_ns(_cpu_clock); }
  // Until `octets` have come in total: false if they do not within kWaitMax.
  bool wait_for(uint64_t octets) const {
    const auto deadline = std::chrono::steady_clock::now() + kWaitMax;
    while (received() < octets) {
      if (std::chrono::steady_clock::now() > deadline) {
        return false;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return true;
  }

 private:
  void run() {
    auto buffer = std::make_unique<char[]>(kReceiveBufferOctets);
    uint64_t position = 0;
    for (;;) {
      const ssize_t n = recv(_fd, buffer.get(), kReceiveBufferOctets, 0);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) {
          continue;
        }
        return;
      }
      if (_verify.load(std::memory_order_relaxed) && !matches(buffer.get(), static_cast<size_t>(n), position)) {
        _mismatch.store(true);
      }
      position += static_cast<uint64_t>(n);
      _received.store(position, std::memory_order_release);
    }
  }
  // The stream is the body over and over: octet p is the body's octet p mod size.
  bool matches(const char* data, size_t length, uint64_t position) const {
    const size_t size = _expected->size();
    while (length > 0) {
      const size_t at = static_cast<size_t>(position % size);
      const size_t piece = std::min(length, size - at);
      if (std::memcmp(data, _expected->data() + at, piece) != 0) {
        return false;
      }
      data += piece;
      length -= piece;
      position += piece;
    }
    return true;
  }

  int _fd;
  const std::string* _expected;
  std::atomic<uint64_t> _received{0};
  std::atomic<bool> _verify{true};
  std::atomic<bool> _mismatch{false};
  clockid_t _cpu_clock{};
  std::thread _thread;
};

// ---- the connection: an outbound socket as the relay opens one, and its receiver ----

struct Connection {
  int sender = -1;
  std::unique_ptr<Receiver> receiver;

  // blocking: leave O_NONBLOCK off the sender. The relay's sockets are non-blocking, but a splice
  // into a full non-blocking socket can end -EAGAIN, and io_uring arms no poll for a splice (its
  // op table has no pollout; it always runs in an io-wq worker), so the splice variant uses a
  // blocking socket: the worker waits for room.
  static absl::StatusOr<std::unique_ptr<Connection>> open(const std::string* expected, bool blocking) {
    auto loopback = io::parse_ip("127.0.0.1");
    if (!loopback.ok()) {
      return loopback.status();
    }
    auto listener = io::open_listener(*loopback);
    if (!listener.ok()) {
      return listener.status();
    }
    auto bound = io::local_address(*listener);
    if (!bound.ok()) {
      close(*listener);
      return bound.status();
    }
    auto connection = std::make_unique<Connection>();
    connection->sender = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    const int one = 1;
    setsockopt(connection->sender, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // as Stream::connect
    if (connect(connection->sender, bound->get(), bound->length) != 0) {
      const int error = errno;
      close(*listener);
      return errno_status("connect", error);
    }
    const int accepted = accept4(*listener, nullptr, nullptr, SOCK_CLOEXEC);  // blocking: the receiver
    const int accept_error = errno;
    close(*listener);
    if (accepted < 0) {
      return errno_status("accept4", accept_error);
    }
    if (!blocking) {
      fcntl(connection->sender, F_SETFL, fcntl(connection->sender, F_GETFL) | O_NONBLOCK);
    }
    connection->receiver = std::make_unique<Receiver>(accepted, expected);
    return connection;
  }
  ~Connection() {
    if (sender >= 0) {
      shutdown(sender, SHUT_WR);
    }
    receiver.reset();
    if (sender >= 0) {
      close(sender);
    }
  }
};

// ---- the sender's ring ----

enum Op : uint64_t { kRead = 1, kSend, kSpliceIn, kSpliceOut, kSendZc };

struct Completion {
  uint64_t user_data = 0;
  int32_t res = 0;
  uint32_t flags = 0;
};

// The shard's Ring (same set-up flags), and the CQEs reaped but not handled yet, in order.
class Sender {
 public:
  static absl::StatusOr<std::unique_ptr<Sender>> create() {
    io::RingOptions options;
    options.sq_entries = 64;
    options.cq_entries = 256;
    auto ring = io::Ring::create_for_this_thread(options);
    if (!ring.ok()) {
      return ring.status();
    }
    return std::unique_ptr<Sender>(new Sender(*ring));
  }
  ~Sender() { delete _ring; }
  io::Ring& ring() { return *_ring; }

  absl::StatusOr<Completion> next() {
    const auto deadline = std::chrono::steady_clock::now() + kWaitMax;
    while (_reaped.empty()) {
      _ring->submit_wait_and_reap(100'000, [&](const io_uring_cqe& cqe) {
        _reaped.push_back(Completion{cqe.user_data, cqe.res, cqe.flags});
      });
      if (_reaped.empty() && std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError("no completion for 10 s");
      }
    }
    Completion completion = _reaped.front();
    _reaped.pop_front();
    return completion;
  }
  // The next CQE, which must be `op`'s (one op in flight): its result, or an error for res < 0.
  absl::StatusOr<int32_t> result_of(Op op) {
    auto completion = next();
    if (!completion.ok()) {
      return completion.status();
    }
    if (completion->user_data != op) {
      return absl::InternalError(str_cat("completion of op ", completion->user_data, " while waiting for ", uint64_t{op}));
    }
    if (completion->res < 0) {
      return errno_status(str_cat("op ", uint64_t{op}).c_str(), -completion->res);
    }
    return completion->res;
  }

  // Per message, for the counters.
  uint64_t ops = 0;
  uint64_t short_sends = 0;
  uint64_t notifications = 0;
  uint64_t copied_notifications = 0;
  uint64_t notification_wait_ns = 0;  // from a SEND_ZC's result to its chunk's last notification

 private:
  explicit Sender(io::Ring* ring) : _ring(ring) {}
  io::Ring* _ring;
  std::deque<Completion> _reaped;
};

// A page-aligned buffer, as the kernel pins and maps it for SEND_ZC and registered buffers.
struct AlignedBuffer {
  explicit AlignedBuffer(size_t octets) : data(static_cast<char*>(std::aligned_alloc(4096, round_up(octets)))) {}
  ~AlignedBuffer() { std::free(data); }
  static size_t round_up(size_t n) { return (n + 4095) / 4096 * 4096; }
  char* data;
};

// Reads [offset, offset + length) of the file into buffer: the octets read (> 0), or an error.
absl::StatusOr<size_t> read_chunk(Sender& s, const BodyFile& body, char* buffer, size_t length, uint64_t offset,
                                  int fixed_index = -1) {
  io_uring_sqe* sqe = s.ring().sqe();
  if (fixed_index >= 0) {
    io_uring_prep_read_fixed(sqe, body.fd(), buffer, static_cast<unsigned>(length), offset, fixed_index);
  } else {
    io_uring_prep_read(sqe, body.fd(), buffer, static_cast<unsigned>(length), offset);
  }
  io_uring_sqe_set_data64(sqe, kRead);
  ++s.ops;
  auto res = s.result_of(kRead);
  if (!res.ok()) {
    return res.status();
  }
  if (*res == 0) {
    return absl::DataLossError("the body file ends before its range");
  }
  return static_cast<size_t>(*res);
}

// ---- (a) read + send, as io::Stream: one op in flight ----

absl::Status send_read_send(Sender& s, int socket, const BodyFile& body, char* buffer, size_t chunk) {
  for (uint64_t offset = 0; offset < body.size();) {
    auto got = read_chunk(s, body, buffer, std::min<uint64_t>(chunk, body.size() - offset), offset);
    if (!got.ok()) {
      return got.status();
    }
    for (size_t sent = 0; sent < *got;) {
      io_uring_sqe* sqe = s.ring().sqe();
      io_uring_prep_send(sqe, socket, buffer + sent, *got - sent, MSG_NOSIGNAL);
      io_uring_sqe_set_data64(sqe, kSend);
      ++s.ops;
      auto res = s.result_of(kSend);
      if (!res.ok()) {
        return res.status();
      }
      sent += static_cast<size_t>(*res);
      s.short_sends += sent < *got ? 1 : 0;
    }
    offset += *got;
  }
  return absl::OkStatus();
}

// ---- (b) splice: file -> pipe -> socket, two linked splices per chunk ----

struct Pipe {
  int read_end = -1;
  int write_end = -1;
  size_t capacity = 0;
  static absl::StatusOr<Pipe> open() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      return errno_status("pipe2", errno);
    }
    Pipe pipe{fds[0], fds[1], 0};
    // As large as an unprivileged process may make it (fs.pipe-max-size).
    size_t wanted = 1 * kMiB;
    std::ifstream("/proc/sys/fs/pipe-max-size") >> wanted;
    const int capacity = fcntl(pipe.write_end, F_SETPIPE_SZ, static_cast<int>(wanted));
    if (capacity < 0) {
      const int error = errno;
      pipe.close_both();
      return errno_status("F_SETPIPE_SZ", error);
    }
    pipe.capacity = static_cast<size_t>(capacity);
    return pipe;
  }
  void close_both() {
    close(read_end);
    close(write_end);
  }
};

// Moves `octets` already in the pipe to the socket.
absl::Status drain_pipe(Sender& s, const Pipe& pipe, int socket, size_t octets) {
  while (octets > 0) {
    io_uring_sqe* sqe = s.ring().sqe();
    io_uring_prep_splice(sqe, pipe.read_end, -1, socket, -1, static_cast<unsigned>(octets), 0);
    io_uring_sqe_set_data64(sqe, kSpliceOut);
    ++s.ops;
    auto res = s.result_of(kSpliceOut);
    if (!res.ok()) {
      return res.status();
    }
    if (*res == 0) {
      return absl::InternalError("splice out of the pipe moved nothing");
    }
    octets -= static_cast<size_t>(*res);
    ++s.short_sends;
  }
  return absl::OkStatus();
}

absl::Status send_splice(Sender& s, int socket, const BodyFile& body, const Pipe& pipe, size_t chunk) {
  const size_t step = std::min(chunk, pipe.capacity);
  for (uint64_t offset = 0; offset < body.size();) {
    const auto length = static_cast<unsigned>(std::min<uint64_t>(step, body.size() - offset));
    auto [in, out] = s.ring().linked_pair();
    io_uring_prep_splice(in, body.fd(), static_cast<int64_t>(offset), pipe.write_end, -1, length, 0);
    in->flags |= IOSQE_IO_LINK;
    io_uring_sqe_set_data64(in, kSpliceIn);
    io_uring_prep_splice(out, pipe.read_end, -1, socket, -1, length, 0);
    io_uring_sqe_set_data64(out, kSpliceOut);
    s.ops += 2;
    auto in_done = s.next();
    if (!in_done.ok()) {
      return in_done.status();
    }
    auto out_done = s.next();
    if (!out_done.ok()) {
      return out_done.status();
    }
    if (in_done->user_data != kSpliceIn || out_done->user_data != kSpliceOut) {
      return absl::InternalError("splice completions out of order");
    }
    if (in_done->res <= 0) {
      return in_done->res < 0 ? errno_status("splice from the file", -in_done->res)
                              : absl::DataLossError("the body file ends before its range");
    }
    // A short splice from the file fails the link: the second is cancelled and what the first
    // moved is still in the pipe. A short second leaves the rest there too.
    const auto moved_in = static_cast<size_t>(in_done->res);
    size_t moved_out = 0;
    if (out_done->res >= 0) {
      moved_out = static_cast<size_t>(out_done->res);
    } else if (!(out_done->res == -ECANCELED && moved_in < length)) {
      return errno_status("splice to the socket", -out_done->res);
    }
    if (moved_out > moved_in) {
      return absl::InternalError("spliced out more than in");
    }
    if (auto status = drain_pipe(s, pipe, socket, moved_in - moved_out); !status.ok()) {
      return status;
    }
    offset += moved_in;
  }
  return absl::OkStatus();
}

// ---- (c) SEND_ZC from the read buffer ----

// Sends buffer[0, length) with SEND_ZC, then waits for every notification: only then may the
// buffer be read into again.
absl::Status send_zc_chunk(Sender& s, int socket, const char* buffer, size_t length, int fixed_index) {
  size_t sent = 0;
  uint64_t notifications_due = 0;
  bool result_due = false;
  const auto submit = [&] {
    io_uring_sqe* sqe = s.ring().sqe();
    if (fixed_index >= 0) {
      io_uring_prep_send_zc_fixed(sqe, socket, buffer + sent, length - sent, MSG_NOSIGNAL, IORING_SEND_ZC_REPORT_USAGE,
                                  static_cast<unsigned>(fixed_index));
    } else {
      io_uring_prep_send_zc(sqe, socket, buffer + sent, length - sent, MSG_NOSIGNAL, IORING_SEND_ZC_REPORT_USAGE);
    }
    io_uring_sqe_set_data64(sqe, kSendZc);
    ++s.ops;
    result_due = true;
  };
  submit();
  uint64_t result_at_ns = 0;
  while (result_due || notifications_due > 0) {
    auto completion = s.next();
    if (!completion.ok()) {
      return completion.status();
    }
    if (completion->user_data != kSendZc) {
      return absl::InternalError("unexpected completion during SEND_ZC");
    }
    if (completion->flags & IORING_CQE_F_NOTIF) {
      // res: IORING_NOTIF_USAGE_ZC_COPIED when the kernel copied after all (loopback does).
      --notifications_due;
      ++s.notifications;
      if (notifications_due == 0 && !result_due) {
        s.notification_wait_ns += clock_ns(CLOCK_MONOTONIC) - result_at_ns;
      }
      s.copied_notifications += (static_cast<uint32_t>(completion->res) & IORING_NOTIF_USAGE_ZC_COPIED) ? 1 : 0;
      continue;
    }
    result_due = false;
    notifications_due += (completion->flags & IORING_CQE_F_MORE) ? 1 : 0;
    result_at_ns = clock_ns(CLOCK_MONOTONIC);
    if (completion->res < 0) {
      return errno_status("send_zc", -completion->res);
    }
    sent += static_cast<size_t>(completion->res);
    if (sent < length) {
      ++s.short_sends;
      submit();  // the rest, from the same buffer: no need to wait for the notification first
    }
  }
  return absl::OkStatus();
}

absl::Status send_send_zc(Sender& s, int socket, const BodyFile& body, char* buffer, size_t chunk, int fixed_index) {
  for (uint64_t offset = 0; offset < body.size();) {
    auto got = read_chunk(s, body, buffer, std::min<uint64_t>(chunk, body.size() - offset), offset, fixed_index);
    if (!got.ok()) {
      return got.status();
    }
    if (auto status = send_zc_chunk(s, socket, buffer, *got, fixed_index); !status.ok()) {
      return status;
    }
    offset += *got;
  }
  return absl::OkStatus();
}

// ---- (a') the relay's own io::Stream, a file range queued and flushed ----

class StreamSender {
 public:
  static absl::StatusOr<std::unique_ptr<StreamSender>> create(Sender* s, int socket) {
    auto buffers = io::BufferRing::create(s->ring().raw(), 0, 64, 4096);
    if (!buffers.ok()) {
      return buffers.status();
    }
    auto self = std::unique_ptr<StreamSender>(new StreamSender(s, *buffers));
    self->_stream.bind(&s->ring(), self->_buffers.get(), 0, 1);
    self->_stream.adopt(socket);  // arms its recv, which sees nothing: the receiver never writes
    return self;
  }

  absl::Status send(const BodyFile& body) {
    if (!_stream.queue_file_range(body.fd(), 0, body.size())) {
      return absl::InternalError("the stream refused the file range");
    }
    uint64_t sent = 0;
    _stream.flush();
    while (!_stream.output_idle()) {
      auto completion = _s->next();
      if (!completion.ok()) {
        return completion.status();
      }
      ++_s->ops;
      switch (io::completion_tag(completion->user_data)) {
        case io::CompletionTag::stream_read:
          if (!_stream.on_read(completion->res)) {
            return errno_status("stream read", -_stream.last_error());
          }
          break;
        case io::CompletionTag::stream_send:
          if (!_stream.on_send(completion->res)) {
            return errno_status("stream send", -_stream.last_error());
          }
          sent += static_cast<uint64_t>(completion->res);
          break;
        default:
          return absl::InternalError(str_cat("unexpected stream completion ", completion->user_data));
      }
      if (!_stream.output_in_flight()) {
        _stream.flush();  // as the owner does after a complete send
      }
    }
    if (sent != body.size()) {
      return absl::InternalError(str_cat("the stream sent ", sent, " of ", body.size()));
    }
    return absl::OkStatus();
  }

 private:
  StreamSender(Sender* s, io::BufferRing* buffers) : _s(s), _buffers(buffers) {}
  Sender* _s;
  std::unique_ptr<io::BufferRing> _buffers;
  io::Stream _stream;
};

// ---- the harness shared by every variant ----

enum class Variant { stream, read_send, splice, send_zc, send_zc_fixed };

void run_body_send(benchmark::State& state, Variant variant) {
  const auto size = static_cast<size_t>(state.range(0));
  const size_t chunk = state.range(1) > 0 ? static_cast<size_t>(state.range(1)) : kRelayChunkOctets;
  auto body = BodyFile::create(size);
  if (!body.ok()) {
    state.SkipWithError(std::string(body.status().message()).c_str());
    return;
  }
  auto connection = Connection::open(&(*body)->contents(), /*blocking=*/variant == Variant::splice);
  if (!connection.ok()) {
    state.SkipWithError(std::string(connection.status().message()).c_str());
    return;
  }
  auto sender = Sender::create();
  if (!sender.ok()) {
    state.SkipWithError(std::string(sender.status().message()).c_str());
    return;
  }
  Sender& s = **sender;
  const int socket = (*connection)->sender;
  Receiver& receiver = *(*connection)->receiver;
  AlignedBuffer buffer(chunk);
  absl::StatusOr<Pipe> pipe = absl::UnavailableError("no pipe");
  std::unique_ptr<StreamSender> stream;
  int fixed_index = -1;
  if (variant == Variant::splice) {
    pipe = Pipe::open();
    if (!pipe.ok()) {
      state.SkipWithError(std::string(pipe.status().message()).c_str());
      return;
    }
    state.SetLabel(str_cat("pipe ", pipe->capacity / kKiB, " KiB"));
  } else if (variant == Variant::stream) {
    auto created = StreamSender::create(&s, socket);
    if (!created.ok()) {
      state.SkipWithError(std::string(created.status().message()).c_str());
      return;
    }
    stream = std::move(*created);
  } else if (variant == Variant::send_zc_fixed) {
    iovec registered{buffer.data, AlignedBuffer::round_up(chunk)};
    if (const int rc = io_uring_register_buffers(s.ring().raw(), &registered, 1); rc < 0) {
      state.SkipWithError(str_cat("io_uring_register_buffers: ", std::strerror(-rc)).c_str());
      return;
    }
    fixed_index = 0;
  }
  const auto send_once = [&]() -> absl::Status {
    switch (variant) {
      case Variant::stream:
        return stream->send(**body);
      case Variant::read_send:
        return send_read_send(s, socket, **body, buffer.data, chunk);
      case Variant::splice:
        return send_splice(s, socket, **body, *pipe, chunk);
      case Variant::send_zc:
      case Variant::send_zc_fixed:
        return send_send_zc(s, socket, **body, buffer.data, chunk, fixed_index);
    }
    return absl::InternalError("no such variant");
  };
  const auto fail = [&](const absl::Status& status) {
    state.SkipWithError(std::string(status.message()).c_str());
    if (pipe.ok()) {
      pipe->close_both();
    }
  };

  // Correctness first: two bodies, every octet compared by the receiver.
  for (int i = 0; i < 2; ++i) {
    if (auto status = send_once(); !status.ok()) {
      return fail(status);
    }
  }
  if (!receiver.wait_for(2 * size) || receiver.mismatch() || receiver.received() != 2 * size) {
    return fail(absl::DataLossError(str_cat("the receiver got ", receiver.received(), " of ", 2 * size,
                                            receiver.mismatch() ? ", wrong octets" : "")));
  }
  receiver.set_verify(false);
  s.ops = s.short_sends = s.notifications = s.copied_notifications = s.notification_wait_ns = 0;

  // The process's clock is read outside the threads' (first before, last after), so that the
  // rest (wq_ns) is never negative.
  const uint64_t process_cpu_before = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
  const uint64_t sender_cpu_before = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  const uint64_t receiver_cpu_before = receiver.cpu_ns();
  for (auto _ : state) {
    if (auto status = send_once(); !status.ok()) {
      return fail(status);
    }
  }
  const auto sender_cpu = static_cast<double>(clock_ns(CLOCK_THREAD_CPUTIME_ID) - sender_cpu_before);
  const auto receiver_cpu = static_cast<double>(receiver.cpu_ns() - receiver_cpu_before);
  const auto process_cpu = static_cast<double>(clock_ns(CLOCK_PROCESS_CPUTIME_ID) - process_cpu_before);

  const uint64_t expected = (2 + static_cast<uint64_t>(state.iterations())) * size;
  if (!receiver.wait_for(expected) || receiver.received() != expected) {
    return fail(absl::DataLossError(str_cat("the receiver got ", receiver.received(), " of ", expected)));
  }
  if (pipe.ok()) {
    pipe->close_both();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
  using benchmark::Counter;
  state.counters["snd_ns"] = Counter(sender_cpu, Counter::kAvgIterations);
  state.counters["rcv_ns"] = Counter(receiver_cpu, Counter::kAvgIterations);
  state.counters["wq_ns"] = Counter(process_cpu - sender_cpu - receiver_cpu, Counter::kAvgIterations);
  state.counters["ops"] = Counter(static_cast<double>(s.ops), Counter::kAvgIterations);
  state.counters["short"] = Counter(static_cast<double>(s.short_sends), Counter::kAvgIterations);
  if (variant == Variant::send_zc || variant == Variant::send_zc_fixed) {
    state.counters["notif_wait_ns"] = Counter(static_cast<double>(s.notification_wait_ns), Counter::kAvgIterations);
    state.counters["zc_copied"] =
        s.notifications == 0 ? 0.0 : static_cast<double>(s.copied_notifications) / static_cast<double>(s.notifications);
  }
}

void BM_BodySendStream(benchmark::State& state) {
  run_body_send(state, Variant::stream);
}
void BM_BodySendReadSend(benchmark::State& state) {
  run_body_send(state, Variant::read_send);
}
void BM_BodySendSplice(benchmark::State& state) {
  run_body_send(state, Variant::splice);
}
void BM_BodySendZc(benchmark::State& state) {
  run_body_send(state, Variant::send_zc);
}
void BM_BodySendZcFixed(benchmark::State& state) {
  run_body_send(state, Variant::send_zc_fixed);
}

constexpr int64_t kBodySizes[] = {16 * 1024, 100 * 1024, 1024 * 1024};

// Args: body octets, chunk octets: the relay's 64 KiB, then 256 KiB and 1 MiB where they make a
// difference (a chunk at least the body's size is one op pair per body).
void body_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"size", "chunk"});
  for (const int64_t size : kBodySizes) {
    int64_t previous = 0;
    for (const int64_t chunk : {int64_t{64 * 1024}, int64_t{256 * 1024}, int64_t{1024 * 1024}}) {
      if (previous < size) {
        b->Args({size, chunk});
      }
      previous = chunk;
    }
  }
  b->UseRealTime()->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
}
void relay_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"size", "chunk"});
  for (const int64_t size : kBodySizes) {
    b->Args({size, static_cast<int64_t>(kRelayChunkOctets)});
  }
  b->UseRealTime()->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_BodySendStream)->Apply(relay_sizes);
BENCHMARK(BM_BodySendReadSend)->Apply(body_sizes);
BENCHMARK(BM_BodySendSplice)->Apply(body_sizes);
BENCHMARK(BM_BodySendZc)->Apply(body_sizes);
BENCHMARK(BM_BodySendZcFixed)->Apply(body_sizes);

}  // namespace
