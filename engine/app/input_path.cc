// Input-path decisions of a shard (see input_path.h).
#include "engine/app/input_path.h"

#include <cerrno>

namespace sluice::app {

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

}  // namespace sluice::app
