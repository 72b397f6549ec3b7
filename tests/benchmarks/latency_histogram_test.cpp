#include "latency_histogram.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

TEST_SUITE("latency_histogram") {
  TEST_CASE("percentiles are the nearest rank's latency to within 1%, the ends exact") {
    std::mt19937_64 rng(7);
    std::lognormal_distribution<double> spread(4.0, 1.5); // µs: about 55 with a long tail
    std::vector<double> all;
    latency_histogram h;
    for (int i = 0; i < 100000; ++i) {
      double us = spread(rng);
      all.push_back(us);
      h.record(us);
    }
    std::sort(all.begin(), all.end());
    auto nearest_rank = [&](double p) {
      auto rank = static_cast<std::size_t>(p * static_cast<double>(all.size()) + 0.999999);
      return all[std::clamp<std::size_t>(rank, 1, all.size()) - 1];
    };
    for (double p : {0.01, 0.25, 0.5, 0.9, 0.99, 0.999}) {
      CAPTURE(p);
      CHECK(h.percentile(p) == doctest::Approx(nearest_rank(p)).epsilon(0.01));
    }
    CHECK(h.percentile(0) == all.front());
    CHECK(h.percentile(1) == all.back());
    CHECK(h.min() == all.front());
    CHECK(h.max() == all.back());
    CHECK(h.count() == all.size());
    double sum = 0;
    for (double v : all)
      sum += v;
    CHECK(h.mean() == doctest::Approx(sum / static_cast<double>(all.size())));
  }

  TEST_CASE("a few samples, odd ones and none") {
    latency_histogram none;
    CHECK(none.percentile(0.5) == 0);
    CHECK(none.mean() == 0);
    latency_histogram h;
    h.record(100);
    CHECK(h.percentile(0.5) == 100);
    CHECK(h.percentile(0.99) == 100);
    h.record(-1);    // counts as 0
    h.record(1e300); // beyond the last bucket: kept in it, and the maximum stays exact
    CHECK(h.count() == 3);
    CHECK(h.min() == 0);
    CHECK(h.max() == 1e300);
    CHECK(h.percentile(0.5) == doctest::Approx(100).epsilon(0.01));
    CHECK(h.percentile(0.99) == 1e300);
  }
}
