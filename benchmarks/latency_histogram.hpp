#pragma once
/// `latency_histogram`: the latencies of a benchmark's batches or operations, in constant memory however long
/// the run and however many it completes: the exact count, mean, minimum and maximum, and percentiles to
/// within 1% (logarithmic buckets 1% wide).
///
///   latency_histogram h;
///   h.record(12.5);               // microseconds
///   double p99 = h.percentile(0.99);

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

class latency_histogram {
public:
  /// Adds one latency, in microseconds (a negative or NaN one counts as 0).
  void record(double us) {
    if (!(us >= 0))
      us = 0;
    min_ = count_ == 0 ? us : std::min(min_, us);
    max_ = count_ == 0 ? us : std::max(max_, us);
    ++count_;
    sum_ += us;
    ++buckets_[bucket_of(us)];
  }

  std::uint64_t count() const noexcept { return count_; }
  double mean() const noexcept { return count_ ? sum_ / static_cast<double>(count_) : 0.0; }
  double min() const noexcept { return min_; }
  double max() const noexcept { return max_; }

  /// The latency that a fraction `p` of the recorded ones do not exceed (nearest rank), to within 1%; the
  /// exact minimum and maximum at the ends. 0 when nothing was recorded.
  double percentile(double p) const {
    if (count_ == 0)
      return 0;
    // why: the tolerance keeps 0.99 * 100 (98.99999...) from rounding up to rank 100
    auto rank = static_cast<std::uint64_t>(p * static_cast<double>(count_) + 0.999999);
    rank = std::clamp<std::uint64_t>(rank, 1, count_);
    if (rank == 1)
      return min_;
    if (rank == count_)
      return max_;
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      seen += buckets_[b];
      if (seen >= rank)
        return std::clamp(middle_of(b), min_, max_);
    }
    return max_;
  }

private:
  // Bucket 0 holds latencies under `lowest_us`; bucket b >= 1 holds [lowest * growth^(b-1), lowest *
  // growth^b); the last also everything above. 10 ns to about 150 days in 3,500 buckets.
  static constexpr double lowest_us = 0.01;
  static constexpr double growth = 1.01;
  static constexpr std::size_t bucket_count = 3500;

  static std::size_t bucket_of(double us) noexcept {
    if (us < lowest_us)
      return 0;
    double b = 1 + std::floor(std::log(us / lowest_us) / std::log(growth));
    return b >= static_cast<double>(bucket_count - 1) ? bucket_count - 1 : static_cast<std::size_t>(b);
  }
  static double middle_of(std::size_t b) noexcept {
    if (b == 0)
      return lowest_us / 2;
    return lowest_us * std::pow(growth, static_cast<double>(b) - 0.5);
  }

  std::vector<std::uint64_t> buckets_ = std::vector<std::uint64_t>(bucket_count);
  std::uint64_t count_ = 0;
  double sum_ = 0;
  double min_ = 0;
  double max_ = 0;
};
