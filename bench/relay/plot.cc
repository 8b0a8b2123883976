// The SVG of a matrix run (see plot.h). Both panels use a log scale: the limit, Sluice and Postfix
// differ by one to two orders of magnitude in rate and in latency, and a linear axis would show
// the slowest as a line on the floor.
#include "bench/relay/plot.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "absl/strings/str_format.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

constexpr double kPanelWidth = 560;
constexpr double kPanelHeight = 300;
constexpr double kLeft = 70;     // room for the axis labels
constexpr double kTop = 70;      // title and legend
constexpr double kBottom = 110;  // cell labels, rotated
constexpr double kGap = 90;      // between the panels
constexpr const char* kColours[] = {"#8c8c8c", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"};

std::string escaped(std::string_view text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// 12345 -> "12.3k", 0.25 -> "0.25".
std::string short_number(double value) {
  if (value >= 1e6) {
    return absl::StrFormat("%.1fM", value / 1e6);
  }
  if (value >= 1e4) {
    return absl::StrFormat("%.0fk", value / 1e3);
  }
  if (value >= 1e3) {
    return absl::StrFormat("%.1fk", value / 1e3);
  }
  if (value >= 10) {
    return absl::StrFormat("%.0f", value);
  }
  if (value >= 1) {
    return absl::StrFormat("%.1f", value);
  }
  return absl::StrFormat("%.2f", value);
}

// A log axis over whole decades covering [low, high].
struct LogAxis {
  double low_decade = 0;
  double high_decade = 1;
  double y(double value, double top, double height) const {
    const double v = std::log10(std::max(value, std::pow(10.0, low_decade)));
    return top + height - (v - low_decade) / (high_decade - low_decade) * height;
  }
};

LogAxis axis_for(double low, double high) {
  LogAxis axis;
  low = low > 0 ? low : 1;
  high = std::max(high, low * 10);
  axis.low_decade = std::floor(std::log10(low));
  axis.high_decade = std::ceil(std::log10(high));
  if (axis.high_decade <= axis.low_decade) {
    axis.high_decade = axis.low_decade + 1;
  }
  return axis;
}

struct Panel {
  double x = 0;  // left of the plotting area
  std::string title;
  std::string unit;
};

void draw_axis(std::string& svg, const Panel& panel, const LogAxis& axis) {
  const double top = kTop;
  str_append(&svg, "<text x=\"", panel.x + kPanelWidth / 2, "\" y=\"", top - 12,
             "\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">", escaped(panel.title), "</text>\n");
  for (double decade = axis.low_decade; decade <= axis.high_decade; ++decade) {
    for (const double step : {1.0, 2.0, 5.0}) {
      const double value = step * std::pow(10.0, decade);
      if (std::log10(value) > axis.high_decade + 1e-9) {
        break;
      }
      const double y = axis.y(value, top, kPanelHeight);
      str_append(&svg, "<line x1=\"", panel.x, "\" x2=\"", panel.x + kPanelWidth, "\" y1=\"", y, "\" y2=\"", y,
                 "\" stroke=\"", step == 1.0 ? "#cccccc" : "#eeeeee", "\"/>\n");
      str_append(&svg, "<text x=\"", panel.x - 6, "\" y=\"", y + 4, "\" text-anchor=\"end\" font-size=\"11\">",
                 short_number(value), "</text>\n");
    }
  }
  str_append(&svg, "<line x1=\"", panel.x, "\" x2=\"", panel.x, "\" y1=\"", top, "\" y2=\"", top + kPanelHeight,
             "\" stroke=\"black\"/>\n<line x1=\"", panel.x, "\" x2=\"", panel.x + kPanelWidth, "\" y1=\"",
             top + kPanelHeight, "\" y2=\"", top + kPanelHeight, "\" stroke=\"black\"/>\n");
  str_append(&svg, "<text transform=\"translate(", panel.x - 52, ",", top + kPanelHeight / 2,
             ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">", escaped(panel.unit), " (log scale)</text>\n");
}

void draw_cell_labels(std::string& svg, const Panel& panel, const std::vector<PlotCell>& cells) {
  const double group = kPanelWidth / static_cast<double>(cells.size());
  for (size_t i = 0; i < cells.size(); ++i) {
    const double x = panel.x + group * (static_cast<double>(i) + 0.5);
    const double y = kTop + kPanelHeight + 14;
    str_append(&svg, "<text transform=\"translate(", x, ",", y, ") rotate(-30)\" text-anchor=\"end\" font-size=\"11\">",
               escaped(cells[i].label), "</text>\n");
  }
}

// One panel of grouped bars: value(series) is the bar; whisker(series), when above it, a line.
template <typename Value, typename Whisker>
void draw_bars(std::string& svg, const Panel& panel, const LogAxis& axis, const std::vector<PlotCell>& cells,
               Value value, Whisker whisker) {
  const double group = kPanelWidth / static_cast<double>(cells.size());
  for (size_t i = 0; i < cells.size(); ++i) {
    const std::vector<PlotSeries>& series = cells[i].series;
    const double bar = group * 0.8 / static_cast<double>(std::max<size_t>(series.size(), 1));
    for (size_t s = 0; s < series.size(); ++s) {
      const double x = panel.x + group * static_cast<double>(i) + group * 0.1 + bar * static_cast<double>(s);
      const char* colour = kColours[s % std::size(kColours)];
      const double floor_y = kTop + kPanelHeight;
      if (series[s].failed) {
        str_append(&svg, "<text x=\"", x + bar / 2, "\" y=\"", floor_y - 6,
                   "\" text-anchor=\"middle\" font-size=\"10\" fill=\"", colour, "\">failed</text>\n");
        continue;
      }
      const double v = value(series[s]);
      const double y = axis.y(v, kTop, kPanelHeight);
      str_append(&svg, "<rect x=\"", x, "\" y=\"", y, "\" width=\"", bar * 0.92, "\" height=\"",
                 std::max(floor_y - y, 0.0), "\" fill=\"", colour, "\"><title>", escaped(series[s].name), " ",
                 escaped(cells[i].label), ": ", short_number(v), "</title></rect>\n");
      const double w = whisker(series[s]);
      double label_y = y - 4;
      if (w > v) {
        const double wy = axis.y(w, kTop, kPanelHeight);
        const double mid = x + bar * 0.46;
        str_append(&svg, "<line x1=\"", mid, "\" x2=\"", mid, "\" y1=\"", y, "\" y2=\"", wy,
                   "\" stroke=\"black\"/>\n<line x1=\"", mid - bar * 0.2, "\" x2=\"", mid + bar * 0.2, "\" y1=\"", wy,
                   "\" y2=\"", wy, "\" stroke=\"black\"/>\n");
        label_y = wy - 4;
      }
      str_append(&svg, "<text x=\"", x + bar * 0.46, "\" y=\"", label_y, "\" text-anchor=\"middle\" font-size=\"10\">",
                 short_number(v), "</text>\n");
    }
  }
  draw_cell_labels(svg, panel, cells);
}

}  // namespace

std::string plot_svg(const std::string& title, const std::vector<PlotCell>& cells) {
  const double width = kLeft + kPanelWidth + kGap + kPanelWidth + 30;
  const double height = kTop + kPanelHeight + kBottom;
  std::string svg = str_cat("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"",
                            width, "\" height=\"", height, "\" viewBox=\"0 0 ", width, " ", height,
                            "\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  str_append(&svg, "<text x=\"", width / 2, "\" y=\"22\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">",
             escaped(title), "</text>\n");
  if (cells.empty()) {
    str_append(&svg, "<text x=\"", width / 2, "\" y=\"", height / 2, "\" text-anchor=\"middle\">no cells</text>\n</svg>\n");
    return svg;
  }
  // The legend: the series of the first cell (every cell has the same ones).
  double legend_x = kLeft;
  for (size_t s = 0; s < cells.front().series.size(); ++s) {
    str_append(&svg, "<rect x=\"", legend_x, "\" y=\"32\" width=\"12\" height=\"12\" fill=\"",
               kColours[s % std::size(kColours)], "\"/><text x=\"", legend_x + 16, "\" y=\"42\" font-size=\"12\">",
               escaped(cells.front().series[s].name), "</text>\n");
    legend_x += 30 + 8 * static_cast<double>(cells.front().series[s].name.size());
  }
  str_append(&svg, "<text x=\"", legend_x + 10, "\" y=\"42\" font-size=\"11\" fill=\"#555555\">",
             "latency: bar p50, whisker p99, from send's transaction start to arrival at the sink</text>\n");
  double rate_low = 1e300, rate_high = 0, latency_low = 1e300, latency_high = 0;
  for (const PlotCell& cell : cells) {
    for (const PlotSeries& s : cell.series) {
      if (s.failed) {
        continue;
      }
      rate_low = std::min(rate_low, std::max(s.msg_per_s, 1e-3));
      rate_high = std::max(rate_high, s.msg_per_s);
      latency_low = std::min(latency_low, std::max(s.latency_p50_ms, 1e-3));
      latency_high = std::max({latency_high, s.latency_p50_ms, s.latency_p99_ms});
    }
  }
  if (rate_high == 0) {  // every series failed
    rate_low = latency_low = 1;
    rate_high = latency_high = 10;
  }
  const Panel rates{kLeft, "end-to-end throughput", "messages per second"};
  const Panel latencies{kLeft + kPanelWidth + kGap, "end-to-end latency", "milliseconds"};
  const LogAxis rate_axis = axis_for(rate_low, rate_high);
  const LogAxis latency_axis = axis_for(latency_low, latency_high);
  draw_axis(svg, rates, rate_axis);
  draw_bars(svg, rates, rate_axis, cells, [](const PlotSeries& s) { return s.msg_per_s; },
            [](const PlotSeries&) { return 0.0; });
  draw_axis(svg, latencies, latency_axis);
  draw_bars(svg, latencies, latency_axis, cells, [](const PlotSeries& s) { return s.latency_p50_ms; },
            [](const PlotSeries& s) { return s.latency_p99_ms; });
  svg += "</svg>\n";
  return svg;
}

}  // namespace sluice::bench
