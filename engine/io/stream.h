#pragma once
// One TCP connection on a shard's ring, for any protocol on top (the SMTP server session today,
// the SMTP client of delivery next). It owns the socket's transport life:
//   - a multishot recv into the shard's provided-buffer ring, paused and resumed for
//     backpressure (input parked by the owner above kParkedHighOctets stops the recv until it is
//     drained below kParkedLowOctets);
//   - one send in flight, short sends resubmitted, from an output queue of byte chunks and file
//     ranges (a range is read into the stream's send buffer, then sent: one op in flight either way);
//   - connect with a timeout (IORING_OP_CONNECT linked to a LINK_TIMEOUT);
//   - the close protocol, with its state as an explicit enum whose transitions are asserted.
// It submits on the ring but never reaps: the owner routes each CQE whose tag is a stream tag to
// the matching on_* method. It knows nothing of SMTP.
//
// Close order: replies sent -> shutdown(2) (sends FIN, ends the multishot recv) -> the recv's
// final CQE -> close -> close CQE -> closed. The owner may reuse its slot only once closed():
// no CQE can come after that, so a slot's generation never meets a late completion.
#include <liburing.h>

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "engine/io/address.h"
#include "engine/io/assert.h"
#include "engine/io/buffer_ring.h"
#include "engine/io/ring.h"

namespace sluice::io {

// What to do with a connection whose multishot recv has ended (its last CQE, no F_MORE).
enum class RecvEnd : uint8_t {
  rearm,        // arm a new recv
  stay_paused,  // backpressure: leave it disarmed; resume_reading re-arms it
  half_close,   // the peer sent FIN: answer what it sent, then close
  close,        // an error, or the end of a recv we shut down: close the connection
};

// res is the CQE's result. cancel_pending: we had asked to cancel this recv for a pause.
// While the connection is paused nothing re-arms its recv, whatever the reason it ended
// (-ECANCELED from our cancel, -ENOBUFS from a dry buffer ring, a plain end of multishot):
// only resume_reading does, once the parked input drained or the owner's reason to hold it went.
RecvEnd recv_end_action(int32_t res, bool cancel_pending, bool reading_paused, bool closing);

// Input received but not handed to the protocol yet. Read from an offset: taking a slice does
// not move the rest; the consumed front is dropped when it is at least half of the buffer, so
// every octet is copied O(1) times on average however it is sliced.
class ParkedInput {
 public:
  bool empty() const { return _offset == _buffer.size(); }
  size_t size() const { return _buffer.size() - _offset; }
  std::string_view view() const { return std::string_view(_buffer).substr(_offset); }
  void append(std::string_view data) {
    compact();
    _buffer.append(data);
    _copied_octets += data.size();
  }
  void consume(size_t octets) {
    SLUICE_ASSERT(octets <= size());
    _offset += octets;
    if (empty()) {
      clear();
    }
  }
  void clear() {
    _buffer.clear();
    _offset = 0;
  }
  // Frees a large buffer once it is empty (an idle session keeps no 4 MiB of capacity).
  void release_if_large(size_t capacity_max) {
    if (empty() && _buffer.capacity() > capacity_max) {
      std::string().swap(_buffer);
      _offset = 0;
    }
  }
  // Octets copied into the buffer so far, compaction included (tests check it is linear).
  uint64_t copied_octets() const { return _copied_octets; }

 private:
  void compact() {
    if (_offset > 0 && _offset * 2 >= _buffer.size()) {
      _copied_octets += _buffer.size() - _offset;
      _buffer.erase(0, _offset);
      _offset = 0;
    }
  }
  std::string _buffer;
  size_t _offset = 0;
  uint64_t _copied_octets = 0;
};

// The completion tags of a shard's ring (the top octet of user_data, see UserData). The stream
// tags carry the owner's slot index and generation.
enum class CompletionTag : uint8_t {
  ignore = 0,  // fire-and-forget ops (cancels, a refusal's send and close, a connect's timeout)
  accept,
  stream_recv,
  stream_send,
  stream_read,  // a file range being read into the send buffer
  stream_connect,
  stream_close,
  spool,
  doorbell,
  log,
  dns_poll,     // a poll of one of the resolver's sockets: index = fd, generation = the arm's
  bounce_read,  // a DSN's original being read from its segment: index = the read's slot
};

inline uint64_t completion_user_data(CompletionTag tag, uint32_t index, uint32_t generation) {
  return UserData{static_cast<uint8_t>(tag), index, generation}.encode();
}
inline CompletionTag completion_tag(uint64_t user_data) {
  return static_cast<CompletionTag>(user_data >> 56);
}

enum class StreamState : uint8_t {
  idle,        // no socket
  connecting,  // connect in flight (with its timeout)
  open,        // reading and writing
  closing,     // nothing more is read; queued output still goes out, then the shutdown
  shut_down,   // shutdown(2) done: waiting for the final CQEs of the recv and the send
  close_sent,  // close(2) in flight
  closed,      // the close CQE came: nothing of this stream is in the kernel any more
};
std::string_view stream_state_name(StreamState state);

// What the end of a recv CQE means for the owner.
enum class RecvEvent : uint8_t {
  more,         // the multishot goes on (or was re-armed, or stays paused): nothing to do
  peer_closed,  // the peer half-closed (FIN): it may still read; answer, then close
  ended,        // the end of a recv we shut down or cancelled to close: call advance_close()
  failed,       // an error (or an end we did not ask for): the stream is now closing, its
                // output dropped (last_error() says why): call advance_close()
};

class Stream {
 public:
  static constexpr size_t kParkedOctetsMax = 4 << 20;     // hard cap on parked input: beyond it, refuse
  static constexpr size_t kParkedHighOctets = 256 << 10;  // parked input that pauses the recv...
  static constexpr size_t kParkedLowOctets = 64 << 10;    // ...until it is drained below this
  static constexpr size_t kFileChunkOctets = 64 << 10;    // a file range is sent this much at a time
  static constexpr size_t kIdleBufferCapacity = 1024;     // above this, buffers are released when empty

  // ring, buffers: the shard's; index and generation: the owner's slot, carried in user_data.
  void bind(Ring* ring, BufferRing* buffers, uint32_t index, uint32_t generation);
  StreamState state() const { return _state; }
  int fd() const { return _fd; }

  // ---- opening ----
  // An accepted socket: open, reading armed.
  void adopt(int fd);
  // A new non-blocking socket connecting to `peer`, at most timeout_ms, from `source` (its
  // address; the port is chosen at connect time) or, when null, wherever the kernel routes.
  // Errors of socket(2) and bind(2) are returned at once (the stream stays idle); the outcome
  // comes to on_connect().
  int connect(const SocketAddress& peer, uint64_t timeout_ms, const SocketAddress* source = nullptr);
  // The connect's CQE: 0 when connected (reading armed), else -errno (-ETIMEDOUT for the
  // timeout; -ECANCELED when the owner closed the stream before it connected). After a failure
  // the stream is closing with its output dropped: call advance_close().
  int32_t on_connect(int32_t res);

  // ---- input ----
  // A recv CQE: its octets (if any, and the stream is still open) go to on_data, then the
  // buffer is recycled; the end of the multishot is handled (re-armed or left paused).
  template <typename OnData>
  RecvEvent on_recv(const io_uring_cqe& cqe, OnData&& on_data) {
    if (cqe.res > 0 && (cqe.flags & IORING_CQE_F_BUFFER)) {
      const uint16_t buffer_id = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
      const std::span<const char> data = _buffers->data(buffer_id, static_cast<uint32_t>(cqe.res));
      if (reading()) {
        on_data(std::string_view(data.data(), data.size()));
      }
      _buffers->recycle(buffer_id);
    }
    if (cqe.flags & IORING_CQE_F_MORE) {
      return RecvEvent::more;
    }
    return on_recv_end(cqe.res);
  }
  bool reading() const { return _state == StreamState::open && !_peer_closed; }
  bool peer_closed() const { return _peer_closed; }
  // Input the owner could not hand on yet, in order. park() refuses (false) past
  // kParkedOctetsMax and pauses the recv above kParkedHighOctets.
  ParkedInput& parked() { return _parked; }
  const ParkedInput& parked() const { return _parked; }
  bool park(std::string_view data);
  // Stop the recv (cancelled if armed) until resume_reading().
  void pause_reading();
  // Re-arms the recv if paused and the parked input is below kParkedLowOctets; `hold` is the
  // owner's own reason to keep it paused (e.g. a body budget).
  void resume_reading(bool hold = false);
  bool reading_paused() const { return _reading_paused; }

  // ---- output ----
  // Where the owner appends octets to send; they follow everything queued before.
  std::string& output() { return _open; }
  // A range of a file, sent after everything queued before; fd must stay open until it is sent.
  // False (nothing queued) once the stream is closing: the peer is gone or the owner closed it.
  bool queue_file_range(int fd, uint64_t offset, uint64_t length);
  // Octets queued in memory and not yet handed to the kernel (file ranges excluded).
  size_t queued_octets() const { return _open.size() + _queued_chunk_octets; }
  bool output_in_flight() const { return _send_in_flight || _read_in_flight; }
  bool output_idle() const { return !_send_in_flight && !_read_in_flight && _open.empty() && _queue.empty(); }
  // Starts sending the queued output if nothing is in flight; when closing and all is sent,
  // continues the close.
  void flush();
  // The send CQE: false when the send failed (the stream is then closing, its output dropped:
  // call advance_close()), else true. A short send is continued by the stream itself; after a
  // complete one the stream waits for the owner's next flush() (so that the owner can add to
  // the output first).
  bool on_send(int32_t res);
  bool on_read(int32_t res);  // the read of a file range: as on_send
  int32_t last_error() const { return _last_error; }

  // ---- closing ----
  // Nothing more is read (shutdown SHUT_RD at once, so a peer that keeps sending is not
  // drained); queued output still goes out, then the shutdown and the close.
  void begin_close();
  // Ends it now, dropping queued output: shutdown makes a pending send and the recv complete.
  void force_close();
  // Drops the output not yet handed to the kernel (the peer is gone); a file read in flight
  // completes without being sent.
  void drop_output();
  // Issues the next close step when the previous ones completed; idempotent.
  void advance_close();
  void on_close();
  bool closing() const { return _state >= StreamState::closing; }
  bool shut_down() const { return _state >= StreamState::shut_down; }
  bool closed() const { return _state == StreamState::closed; }
  // Nothing of the stream is in the kernel (the owner's slot may be freed once closed()).
  bool quiescent() const { return !_recv_armed && !_send_in_flight && !_read_in_flight && !_connect_in_flight; }

 private:
  struct FileRange {
    int fd = -1;
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  struct Chunk {
    std::string bytes;  // empty for a file range
    FileRange file;
  };
  void set_state(StreamState next);
  void arm_recv();
  RecvEvent on_recv_end(int32_t res);
  void submit_send();
  void submit_read();
  void shutdown_socket();
  void release_idle_buffers();
  bool next_send_source();
  uint64_t user_data(CompletionTag tag) const { return completion_user_data(tag, _index, _generation); }

  Ring* _ring = nullptr;
  BufferRing* _buffers = nullptr;
  uint32_t _index = 0;
  uint32_t _generation = 0;
  int _fd = -1;
  StreamState _state = StreamState::idle;
  bool _recv_armed = false;
  bool _recv_cancel_pending = false;
  bool _reading_paused = false;
  bool _peer_closed = false;
  bool _send_in_flight = false;
  bool _read_in_flight = false;
  bool _connect_in_flight = false;
  bool _read_dropped = false;  // drop_output() while a file read was in flight
  int32_t _last_error = 0;
  ParkedInput _parked;
  // Output: _sending is in the kernel's hands (or being read into from a file); _queue holds
  // chunks behind it (only when file ranges are queued); _open collects new octets.
  std::string _sending;
  size_t _sending_offset = 0;
  FileRange _reading;  // the rest of the file range being sent
  std::deque<Chunk> _queue;
  size_t _queued_chunk_octets = 0;
  std::string _open;
  __kernel_timespec _connect_timeout{};
  SocketAddress _peer;
};

}  // namespace sluice::io
