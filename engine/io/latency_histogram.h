#pragma once
// A log-linear histogram of non-negative integers (latencies in microseconds in sluice-bench),
// in the manner of HdrHistogram: values below 2 * kSubBuckets are counted exactly; above, each
// power of two is split into kSubBuckets equal buckets. A reported quantile is the midpoint of
// the bucket holding the exact sample of that rank, clamped to the smallest and largest sample
// seen, so it is within kRelativeError of the exact value (max and min are exact). Recording is
// O(1) without allocation; merging two histograms adds their buckets (threads merge at the end).
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sluice::io {

class LatencyHistogram {
 public:
  static constexpr unsigned kPrecisionBits = 7;
  static constexpr uint64_t kSubBuckets = uint64_t{1} << kPrecisionBits;  // 128 per power of two
  // |reported - exact| <= exact * kRelativeError (half a bucket of width <= value / kSubBuckets).
  static constexpr double kRelativeError = 1.0 / (2 * kSubBuckets);

  LatencyHistogram();

  void record(uint64_t value) { record_n(value, 1); }
  void record_n(uint64_t value, uint64_t count);
  void merge(const LatencyHistogram& other);

  uint64_t count() const { return _count; }
  uint64_t min() const { return _count == 0 ? 0 : _min; }
  uint64_t max() const { return _max; }
  double mean() const { return _count == 0 ? 0.0 : static_cast<double>(_sum) / static_cast<double>(_count); }
  // The value at rank ceil(q * count) (1-based) of the sorted samples, within kRelativeError;
  // 0 when empty. q in [0, 1]: 0 gives min(), 1 gives max().
  uint64_t quantile(double q) const;

  // The bucket layout, public for the tests.
  static size_t bucket_of(uint64_t value);
  static uint64_t bucket_low(size_t bucket);
  static uint64_t bucket_width(size_t bucket);

 private:
  std::vector<uint64_t> _buckets;
  uint64_t _count = 0;
  uint64_t _sum = 0;
  uint64_t _min = UINT64_MAX;
  uint64_t _max = 0;
};

}  // namespace sluice::io
