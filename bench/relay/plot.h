#pragma once
// `--plot FILE.svg` of `sluice-bench relay` and `compare`: one picture of a matrix run, written
// as SVG directly (no gnuplot needed). Two panels side by side: end-to-end msg/s per cell (bars,
// one per series: the limit, Sluice, the peer) and the end-to-end latency per cell (p50 bar with
// a p99 whisker), each with its axis, gridlines, values on the bars and a legend.
#include <string>
#include <vector>

namespace sluice::bench {

struct PlotSeries {
  std::string name;          // "limit", "sluice", "postfix"
  double msg_per_s = 0;      // end to end
  double latency_p50_ms = 0;
  double latency_p99_ms = 0;
  bool failed = false;       // the cell did not complete for this series: drawn as "failed"
};

struct PlotCell {
  std::string label;  // "1k x1 rcpt, 100/conn"
  std::vector<PlotSeries> series;  // the same names in the same order in every cell
};

// A complete standalone SVG document (UTF-8). Text is XML-escaped.
std::string plot_svg(const std::string& title, const std::vector<PlotCell>& cells);

}  // namespace sluice::bench
