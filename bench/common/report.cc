#include "bench/common/report.h"

#include "absl/strings/str_format.h"
#include "engine/io/strings.h"

namespace sluice::bench {

void append_histogram_json(std::string& out, std::string_view name, const io::LatencyHistogram& h) {
  str_append(&out, "\"", name, "\":{\"count\":", h.count(), ",\"min\":", h.min(), ",\"mean\":",
             absl::StrFormat("%.1f", h.mean()), ",\"p50\":", h.quantile(0.5), ",\"p90\":", h.quantile(0.9),
             ",\"p99\":", h.quantile(0.99), ",\"p99_9\":", h.quantile(0.999), ",\"max\":", h.max(), "}");
}

}  // namespace sluice::bench
