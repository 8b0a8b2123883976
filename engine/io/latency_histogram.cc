#include "engine/io/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "engine/io/assert.h"

namespace sluice::io {

namespace {

constexpr uint64_t kS = LatencyHistogram::kSubBuckets;
// Values below 2S are exact (indices 0 .. 2S-1); a value with highest bit b >= P+1 has exponent
// e = b - P >= 1 and mantissa m = v >> e in [S, 2S): index e*S + m, in [(e+1)S, (e+2)S).
constexpr size_t kBuckets = (64 - LatencyHistogram::kPrecisionBits + 1) * kS;

}  // namespace

LatencyHistogram::LatencyHistogram() : _buckets(kBuckets, 0) {}

size_t LatencyHistogram::bucket_of(uint64_t value) {
  if (value < 2 * kS) {
    return static_cast<size_t>(value);
  }
  const unsigned high_bit = 63 - static_cast<unsigned>(std::countl_zero(value));
  const unsigned exponent = high_bit - kPrecisionBits;
  return static_cast<size_t>(exponent * kS + (value >> exponent));
}

uint64_t LatencyHistogram::bucket_low(size_t bucket) {
  if (bucket < 2 * kS) {
    return bucket;
  }
  const uint64_t exponent = bucket / kS - 1;
  const uint64_t mantissa = bucket - exponent * kS;
  return mantissa << exponent;
}

uint64_t LatencyHistogram::bucket_width(size_t bucket) {
  return bucket < 2 * kS ? 1 : uint64_t{1} << (bucket / kS - 1);
}

void LatencyHistogram::record_n(uint64_t value, uint64_t count) {
  if (count == 0) {
    return;
  }
  _buckets[bucket_of(value)] += count;
  _count += count;
  _sum += value * count;
  _min = std::min(_min, value);
  _max = std::max(_max, value);
}

void LatencyHistogram::merge(const LatencyHistogram& other) {
  if (other._count == 0) {
    return;
  }
  for (size_t i = 0; i < kBuckets; ++i) {
    _buckets[i] += other._buckets[i];
  }
  _count += other._count;
  _sum += other._sum;
  _min = std::min(_min, other._min);
  _max = std::max(_max, other._max);
}

uint64_t LatencyHistogram::quantile(double q) const {
  if (_count == 0) {
    return 0;
  }
  SLUICE_ASSERT(q >= 0.0 && q <= 1.0, "a quantile is in [0, 1]");
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(_count))));
  if (rank >= _count) {
    return _max;
  }
  if (rank == 1) {
    return _min;
  }
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += _buckets[i];
    if (seen >= rank) {
      const uint64_t middle = bucket_low(i) + (bucket_width(i) - 1) / 2;
      return std::clamp(middle, _min, _max);
    }
  }
  return _max;
}

}  // namespace sluice::io
