#include "ferry/core/detail/time_after.hpp"

#include <doctest/doctest.h>

#include <chrono>

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

TEST_SUITE("core") {
  TEST_CASE("a deadline after a timeout too long for the clock is never, not a time in the past") {
    const auto now = clock_type::now();
    CHECK(ferry::detail::time_after<clock_type>(now, 5ms) == now + 5ms);
    CHECK(ferry::detail::time_after<clock_type>(now, 0ms) == now);
    CHECK(ferry::detail::time_after<clock_type>(now, -5ms) == now);
    CHECK(ferry::detail::time_after<clock_type>(now, std::chrono::milliseconds::max()) ==
          clock_type::time_point::max());
    CHECK(ferry::detail::time_after<clock_type>(now, std::chrono::hours::max()) ==
          clock_type::time_point::max());
    // twice a timeout of max(): saturated twice, never wrapped
    auto once = ferry::detail::time_after<clock_type>(now, std::chrono::milliseconds::max());
    CHECK(ferry::detail::time_after<clock_type>(once, std::chrono::milliseconds::max()) ==
          clock_type::time_point::max());
    CHECK(ferry::detail::time_after<clock_type>(now, std::chrono::hours(24 * 365)) > now);
  }
}
