#pragma once
// Output shared by the sluice-bench tools, so that every --json reads the same.
#include <string>
#include <string_view>

#include "engine/io/latency_histogram.h"

namespace sluice::bench {

// "NAME":{"count":..,"min":..,"mean":..,"p50":..,"p90":..,"p99":..,"p99_9":..,"max":..}
void append_histogram_json(std::string& out, std::string_view name, const io::LatencyHistogram& h);

}  // namespace sluice::bench
