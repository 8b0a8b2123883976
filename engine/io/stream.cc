#include "engine/io/stream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace sluice::io {

RecvEnd recv_end_action(int32_t res, bool cancel_pending, bool reading_paused, bool closing) {
  if (closing) {
    return RecvEnd::close;
  }
  if (res == 0) {
    return RecvEnd::half_close;
  }
  // Ends that are not the end of the stream: our own cancel for a pause, a buffer ring that ran
  // dry for a moment, or a multishot that stopped for another reason (e.g. CQ overflow). Every
  // one of them, the ENOBUFS one included, keeps a paused connection paused.
  const bool our_cancel = cancel_pending && res == -ECANCELED;
  if (res > 0 || res == -ENOBUFS || our_cancel) {
    return reading_paused ? RecvEnd::stay_paused : RecvEnd::rearm;
  }
  return RecvEnd::close;  // an error, or the end of a recv we shut down or cancelled to close
}

std::string_view stream_state_name(StreamState state) {
  switch (state) {
    case StreamState::idle:
      return "idle";
    case StreamState::connecting:
      return "connecting";
    case StreamState::open:
      return "open";
    case StreamState::closing:
      return "closing";
    case StreamState::shut_down:
      return "shut_down";
    case StreamState::close_sent:
      return "close_sent";
    case StreamState::closed:
      return "closed";
  }
  return "?";
}

void Stream::bind(Ring* ring, BufferRing* buffers, uint32_t index, uint32_t generation) {
  SLUICE_ASSERT(_state == StreamState::idle && _fd < 0, "a stream is bound before it is used");
  _ring = ring;
  _buffers = buffers;
  _index = index;
  _generation = generation;
}

// The only transitions: idle -> connecting | open; connecting -> open | closing; open ->
// closing; closing -> shut_down; shut_down -> close_sent; close_sent -> closed. (open ->
// shut_down and connecting -> shut_down pass through closing.)
void Stream::set_state(StreamState next) {
  const StreamState from = _state;
  const bool allowed =
      (from == StreamState::idle && (next == StreamState::connecting || next == StreamState::open)) ||
      (from == StreamState::connecting && (next == StreamState::open || next == StreamState::closing)) ||
      (from == StreamState::open && next == StreamState::closing) ||
      (from == StreamState::closing && next == StreamState::shut_down) ||
      (from == StreamState::shut_down && next == StreamState::close_sent) ||
      (from == StreamState::close_sent && next == StreamState::closed);
  SLUICE_ASSERT(allowed, "stream state transition not allowed");
  _state = next;
}

void Stream::adopt(int fd) {
  SLUICE_ASSERT(_ring != nullptr && fd >= 0);
  _fd = fd;
  set_state(StreamState::open);
  arm_recv();
}

int Stream::connect(const SocketAddress& peer, uint64_t timeout_ms, const SocketAddress* source) {
  SLUICE_ASSERT(_ring != nullptr && _state == StreamState::idle);
  const int fd = ::socket(peer.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) {
    return -errno;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // pipelined commands must not wait
  if (source != nullptr) {
    // Without NO_PORT, bind(2) would pick the port alone and tie each source address to about
    // 28,000 connections in all instead of that many per destination.
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (::bind(fd, source->get(), source->length) != 0) {
      const int error = errno;
      ::close(fd);
      return -error;
    }
  }
  _fd = fd;
  _peer = peer;  // the kernel reads the address until the CQE
  _connect_timeout.tv_sec = static_cast<int64_t>(timeout_ms / 1000);
  _connect_timeout.tv_nsec = static_cast<int64_t>(timeout_ms % 1000) * 1'000'000;
  set_state(StreamState::connecting);
  auto [connect, timeout] = _ring->linked_pair();
  io_uring_prep_connect(connect, _fd, _peer.get(), _peer.length);
  connect->flags |= IOSQE_IO_LINK;
  io_uring_sqe_set_data64(connect, user_data(CompletionTag::stream_connect));
  io_uring_prep_link_timeout(timeout, &_connect_timeout, 0);
  io_uring_sqe_set_data64(timeout, completion_user_data(CompletionTag::ignore, 0, 0));
  _connect_in_flight = true;
  return 0;
}

int32_t Stream::on_connect(int32_t res) {
  SLUICE_ASSERT(_connect_in_flight);
  _connect_in_flight = false;
  if (_state != StreamState::connecting) {
    // begin_close() or force_close() ran meanwhile: whatever the connect did, nothing is sent.
    drop_output();
    advance_close();
    return res < 0 ? res : -ECANCELED;
  }
  if (res < 0) {
    // The link timeout cancels the connect: -ECANCELED means it took too long.
    _last_error = res == -ECANCELED ? -ETIMEDOUT : res;
    set_state(StreamState::closing);
    drop_output();  // queued meanwhile (e.g. a pipelined first command): it has nowhere to go
    return _last_error;
  }
  set_state(StreamState::open);
  arm_recv();
  return 0;
}

void Stream::arm_recv() {
  SLUICE_ASSERT(_state == StreamState::open && !_recv_armed, "one recv per stream, none after close");
  io_uring_sqe* sqe = _ring->sqe();
  io_uring_prep_recv_multishot(sqe, _fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = _buffers->group_id();
  io_uring_sqe_set_data64(sqe, user_data(CompletionTag::stream_recv));
  _recv_armed = true;
}

RecvEvent Stream::on_recv_end(int32_t res) {
  SLUICE_ASSERT(_recv_armed);
  _recv_armed = false;
  const bool cancel_pending = _recv_cancel_pending;
  _recv_cancel_pending = false;
  switch (recv_end_action(res, cancel_pending, _reading_paused, closing())) {
    case RecvEnd::rearm:
      arm_recv();
      return RecvEvent::more;
    case RecvEnd::stay_paused:
      return RecvEvent::more;  // resume_reading() arms it again
    case RecvEnd::half_close:
      _peer_closed = true;
      return RecvEvent::peer_closed;
    case RecvEnd::close:
      break;
  }
  // An error, or the end of a recv we shut down or cancelled: nobody is listening any more.
  if (closing()) {
    return RecvEvent::ended;
  }
  _last_error = res;
  drop_output();
  set_state(StreamState::closing);
  return RecvEvent::failed;
}

bool Stream::park(std::string_view data) {
  if (_parked.size() + data.size() > kParkedOctetsMax) {
    return false;
  }
  _parked.append(data);
  if (_parked.size() >= kParkedHighOctets) {
    pause_reading();
  }
  return true;
}

void Stream::pause_reading() {
  if (_reading_paused || !reading()) {
    return;
  }
  _reading_paused = true;
  if (_recv_armed && !_recv_cancel_pending) {
    _recv_cancel_pending = true;
    io_uring_sqe* sqe = _ring->sqe();
    io_uring_prep_cancel64(sqe, user_data(CompletionTag::stream_recv), 0);
    io_uring_sqe_set_data64(sqe, completion_user_data(CompletionTag::ignore, 0, 0));
  }
}

void Stream::resume_reading(bool hold) {
  if (!_reading_paused || !reading() || hold || _parked.size() >= kParkedLowOctets) {
    return;
  }
  _reading_paused = false;
  if (!_recv_armed) {
    arm_recv();
  }  // else the cancelled recv's final CQE re-arms it (on_recv_end)
}

bool Stream::queue_file_range(int fd, uint64_t offset, uint64_t length) {
  SLUICE_ASSERT(fd >= 0);
  if (closing() || _state == StreamState::idle) {
    return false;  // e.g. the peer reset the connection in this same batch of completions
  }
  if (length == 0) {
    return true;
  }
  if (!_open.empty()) {
    _queued_chunk_octets += _open.size();
    _queue.push_back(Chunk{std::move(_open), {}});
    _open.clear();
  }
  _queue.push_back(Chunk{std::string(), FileRange{fd, offset, length}});
  return true;
}

// Takes the next thing to send into _sending (or starts reading it from its file). False when
// there is nothing.
bool Stream::next_send_source() {
  if (_reading.length > 0) {
    submit_read();
    return true;
  }
  if (!_queue.empty()) {
    Chunk chunk = std::move(_queue.front());
    _queue.pop_front();
    if (chunk.file.length > 0) {
      _reading = chunk.file;
      submit_read();
      return true;
    }
    _queued_chunk_octets -= chunk.bytes.size();
    _sending = std::move(chunk.bytes);
  } else if (!_open.empty()) {
    _sending.swap(_open);
    _open.clear();
  } else {
    return false;
  }
  _sending_offset = 0;
  submit_send();
  return true;
}

void Stream::flush() {
  if (_send_in_flight || _read_in_flight || _connect_in_flight || _state < StreamState::open ||
      _state >= StreamState::shut_down) {
    return;
  }
  if (!next_send_source() && closing()) {
    advance_close();
  }
}

void Stream::submit_send() {
  SLUICE_ASSERT(!_send_in_flight && !_read_in_flight && _state >= StreamState::open &&
                    _state < StreamState::close_sent && _sending_offset < _sending.size(),
                "one send in flight, none after the close was issued");
  io_uring_sqe* sqe = _ring->sqe();
  io_uring_prep_send(sqe, _fd, _sending.data() + _sending_offset, _sending.size() - _sending_offset, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, user_data(CompletionTag::stream_send));
  _send_in_flight = true;
}

void Stream::submit_read() {
  SLUICE_ASSERT(!_send_in_flight && !_read_in_flight && _reading.length > 0);
  const size_t octets = static_cast<size_t>(std::min<uint64_t>(_reading.length, kFileChunkOctets));
  _sending.resize(octets);
  _sending_offset = 0;
  io_uring_sqe* sqe = _ring->sqe();
  io_uring_prep_read(sqe, _reading.fd, _sending.data(), static_cast<unsigned>(octets), _reading.offset);
  io_uring_sqe_set_data64(sqe, user_data(CompletionTag::stream_read));
  _read_in_flight = true;
}

bool Stream::on_read(int32_t res) {
  SLUICE_ASSERT(_read_in_flight);
  _read_in_flight = false;
  if (_read_dropped) {
    // drop_output() ran while this read was in flight: its octets are not sent.
    _read_dropped = false;
    _sending.clear();
    release_idle_buffers();
    if (closing()) {
      advance_close();
    } else {
      flush();
    }
    return true;
  }
  if (res <= 0) {
    // A file that ends before its range, or a read error: what follows cannot be sent in order.
    _last_error = res < 0 ? res : -EIO;
    force_close();
    return false;
  }
  _sending.resize(static_cast<size_t>(res));
  _reading.offset += static_cast<uint64_t>(res);
  _reading.length -= static_cast<uint64_t>(res);
  if (_state >= StreamState::shut_down) {
    advance_close();  // forced meanwhile
    return true;
  }
  submit_send();
  return true;
}

bool Stream::on_send(int32_t res) {
  SLUICE_ASSERT(_send_in_flight);
  _send_in_flight = false;
  if (res < 0) {
    if (!closing()) {  // else it failed because we shut the socket down ourselves
      _last_error = res;
    }
    drop_output();
    if (!closing()) {
      set_state(StreamState::closing);
    }
    advance_close();
    return false;
  }
  _sending_offset += static_cast<size_t>(res);
  if (_sending_offset < _sending.size() && _state < StreamState::shut_down) {
    submit_send();  // short send: the rest, in order
    return true;
  }
  _sending.clear();
  _sending_offset = 0;
  release_idle_buffers();
  if (_state >= StreamState::shut_down) {
    advance_close();
  }
  return true;
}

void Stream::drop_output() {
  _open.clear();
  _queue.clear();
  _queued_chunk_octets = 0;
  _reading = FileRange{};
  _read_dropped = _read_in_flight;  // its CQE must not send what it read
}

// An idle connection keeps no large buffers: the one just sent and the open one are released
// above kIdleBufferCapacity, except between the chunks of a file range (reused for each).
void Stream::release_idle_buffers() {
  if (_reading.length > 0) {
    return;
  }
  if (_sending.empty() && _sending.capacity() > kIdleBufferCapacity) {
    std::string().swap(_sending);
  }
  if (_open.empty() && _open.capacity() > kIdleBufferCapacity) {
    std::string().swap(_open);
  }
}

void Stream::begin_close() {
  if (_state == StreamState::idle) {
    return;  // never opened (connect() failed at socket(2)): nothing to close
  }
  if (_state == StreamState::open) {
    // We read nothing more: stop the recv now rather than draining a peer that keeps sending.
    shutdown(_fd, SHUT_RD);
    set_state(StreamState::closing);
  } else if (_state == StreamState::connecting) {
    set_state(StreamState::closing);  // the connect's CQE comes first, then the close
  }
}

void Stream::force_close() {
  if (_state == StreamState::open || _state == StreamState::connecting) {
    set_state(StreamState::closing);
  }
  drop_output();
  if (_state == StreamState::closing) {
    shutdown_socket();
  }
  advance_close();
}

// A plain shutdown(2), not IORING_OP_SHUTDOWN: that op always runs in an io-wq worker, which
// looks the fd number up late; by then we may have closed it and another shard may have
// accepted a new connection on the same number, which the late shutdown would kill.
void Stream::shutdown_socket() {
  set_state(StreamState::shut_down);
  shutdown(_fd, SHUT_RDWR);
  if (_recv_armed) {
    // Normally the shutdown ends the multishot recv; cancel it too so its final CQE comes.
    io_uring_sqe* sqe = _ring->sqe();
    io_uring_prep_cancel64(sqe, user_data(CompletionTag::stream_recv), 0);
    io_uring_sqe_set_data64(sqe, completion_user_data(CompletionTag::ignore, 0, 0));
  }
  if (_connect_in_flight) {
    io_uring_sqe* sqe = _ring->sqe();
    io_uring_prep_cancel64(sqe, user_data(CompletionTag::stream_connect), 0);
    io_uring_sqe_set_data64(sqe, completion_user_data(CompletionTag::ignore, 0, 0));
  }
}

void Stream::advance_close() {
  if (_state < StreamState::closing || _state >= StreamState::close_sent) {
    return;
  }
  if (_send_in_flight || _read_in_flight) {
    return;  // its CQE comes back here
  }
  if (_state == StreamState::closing) {
    if (!_open.empty() || !_queue.empty() || _reading.length > 0) {
      return;  // flush() sends the rest first
    }
    shutdown_socket();
  }
  if (_recv_armed || _connect_in_flight) {
    return;  // its final CQE comes back here
  }
  SLUICE_ASSERT(quiescent());
  set_state(StreamState::close_sent);
  io_uring_sqe* sqe = _ring->sqe();
  io_uring_prep_close(sqe, _fd);
  io_uring_sqe_set_data64(sqe, user_data(CompletionTag::stream_close));
}

void Stream::on_close() {
  set_state(StreamState::closed);
  _fd = -1;
}

}  // namespace sluice::io
