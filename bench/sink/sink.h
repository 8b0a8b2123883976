#pragma once
// `sluice-bench sink`: the receiving SMTP server of the load tools. One thread drives the
// server's own smtp::ServerSession on the engine's ring, streams and timer wheel (its driver is
// small, because the real shard is tied to the spool): every message is "stored" by counting it
// and checking its id and checksum (bench/sink/ids.h), then answered 250. Faults (bench/sink/
// faults.h) go through SessionHost's verdict hooks and ServerSettings::offer, so the protocol
// is the server's in every other respect.
//
//   sluice-bench sink --listen H:P [--listen H:P ...] [--json FILE] [faults...]
//   sluice-bench sink --verify SENDER_JSON --json SINK_JSON
//
// --json FILE is written when the sink stops (SIGINT or SIGTERM). --verify compares it with the
// sender's ids (a JSON object with "accepted_ids": ["RUN-N", ...] and/or "accepted_id_ranges":
// {"RUN": [[lo, hi], ...]}, the ids the sender got 250 for) and exits 1 when an accepted message is
// missing, duplicated or corrupt.
namespace sluice::bench {

int run_sink(int argc, char** argv);  // argv[0] is "sink" (or the program's name)

}  // namespace sluice::bench
