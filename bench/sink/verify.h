#pragma once
// `sluice-bench sink --verify SENDER_JSON --json SINK_JSON`: end-to-end accounting of a run.
// Every id the sender got 250 for must have arrived at the sink exactly once and intact.
#include <string>

namespace sluice::bench {

// Prints the counts (accepted, received, intact, missing, duplicated, corrupt, unexpected) and
// the first ids of each problem; returns 0 when nothing accepted is missing, duplicated or
// corrupt, 1 when something is, 2 when a file cannot be read.
int run_verify(const std::string& sender_path, const std::string& sink_path);

}  // namespace sluice::bench
