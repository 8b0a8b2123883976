#include "engine/io/latency_histogram.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sluice::io {
namespace {

// The exact quantile by the histogram's definition: the sample of rank ceil(q * n).
uint64_t exact_quantile(std::vector<uint64_t> sorted, double q) {
  const size_t rank = std::max<size_t>(1, static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size()))));
  return sorted[std::min(rank, sorted.size()) - 1];
}

void expect_within_error(const LatencyHistogram& histogram, std::vector<uint64_t> samples) {
  std::sort(samples.begin(), samples.end());
  for (const double q : {0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0}) {
    const double exact = static_cast<double>(exact_quantile(samples, q));
    const double reported = static_cast<double>(histogram.quantile(q));
    EXPECT_LE(std::abs(reported - exact), exact * LatencyHistogram::kRelativeError) << "q=" << q;
  }
  EXPECT_EQ(histogram.min(), samples.front());
  EXPECT_EQ(histogram.max(), samples.back());
  EXPECT_EQ(histogram.count(), samples.size());
}

TEST(LatencyHistogram, EmptyIsZero) {
  LatencyHistogram histogram;
  EXPECT_EQ(histogram.count(), 0u);
  EXPECT_EQ(histogram.quantile(0.5), 0u);
  EXPECT_EQ(histogram.max(), 0u);
  EXPECT_EQ(histogram.min(), 0u);
  EXPECT_EQ(histogram.mean(), 0.0);
}

TEST(LatencyHistogram, SmallValuesAreExact) {
  LatencyHistogram histogram;
  std::vector<uint64_t> samples;
  for (uint64_t v = 0; v < 2 * LatencyHistogram::kSubBuckets; ++v) {
    histogram.record(v);
    samples.push_back(v);
  }
  EXPECT_EQ(histogram.quantile(0.5), exact_quantile(samples, 0.5));
  EXPECT_EQ(histogram.quantile(0.9), exact_quantile(samples, 0.9));
  EXPECT_DOUBLE_EQ(histogram.mean(), 127.5);
}

TEST(LatencyHistogram, BucketsTileTheRangeAndBoundTheError) {
  // Every bucket starts where the previous one ended, and is at most 1/kSubBuckets of its values.
  for (size_t bucket = 1; bucket < LatencyHistogram::bucket_of(UINT64_MAX); ++bucket) {
    ASSERT_EQ(LatencyHistogram::bucket_low(bucket),
              LatencyHistogram::bucket_low(bucket - 1) + LatencyHistogram::bucket_width(bucket - 1))
        << bucket;
    if (bucket >= 2 * LatencyHistogram::kSubBuckets) {
      ASSERT_LE(LatencyHistogram::bucket_width(bucket) * LatencyHistogram::kSubBuckets,
                LatencyHistogram::bucket_low(bucket));
    }
  }
  for (const uint64_t v : {uint64_t{0}, uint64_t{255}, uint64_t{256}, uint64_t{1000}, uint64_t{123456789},
                           uint64_t{1} << 40, UINT64_MAX}) {
    const size_t bucket = LatencyHistogram::bucket_of(v);
    EXPECT_LE(LatencyHistogram::bucket_low(bucket), v);
    EXPECT_GE(LatencyHistogram::bucket_low(bucket) + (LatencyHistogram::bucket_width(bucket) - 1), v);
  }
}

TEST(LatencyHistogram, QuantilesWithinStatedErrorOnSkewedSamples) {
  // Log-normal-ish latencies from 10 us to seconds, with a heavy tail: the shape a bench sees.
  std::mt19937_64 random(42);
  std::lognormal_distribution<double> distribution(6.0, 1.5);
  LatencyHistogram histogram;
  std::vector<uint64_t> samples;
  for (int i = 0; i < 100'000; ++i) {
    const uint64_t v = static_cast<uint64_t>(distribution(random));
    histogram.record(v);
    samples.push_back(v);
  }
  expect_within_error(histogram, samples);
}

TEST(LatencyHistogram, MergeEqualsRecordingEverything) {
  std::mt19937_64 random(7);
  std::uniform_int_distribution<uint64_t> distribution(0, 50'000'000);
  LatencyHistogram a;
  LatencyHistogram b;
  LatencyHistogram all;
  std::vector<uint64_t> samples;
  for (int i = 0; i < 20'000; ++i) {
    const uint64_t v = distribution(random);
    (i % 3 == 0 ? a : b).record(v);
    all.record(v);
    samples.push_back(v);
  }
  a.merge(b);
  expect_within_error(a, samples);
  for (const double q : {0.5, 0.9, 0.99, 0.999}) {
    EXPECT_EQ(a.quantile(q), all.quantile(q));
  }
  EXPECT_DOUBLE_EQ(a.mean(), all.mean());
}

TEST(LatencyHistogram, RecordNCountsRepeats) {
  LatencyHistogram histogram;
  histogram.record_n(1000, 99);
  histogram.record_n(1'000'000, 1);
  EXPECT_EQ(histogram.count(), 100u);
  EXPECT_LE(std::abs(static_cast<double>(histogram.quantile(0.99)) - 1000.0), 1000.0 * LatencyHistogram::kRelativeError);
  EXPECT_EQ(histogram.quantile(0.999), 1'000'000u);
  EXPECT_EQ(histogram.max(), 1'000'000u);
}

}  // namespace
}  // namespace sluice::io
