#pragma once
// A deadline `d` after `from` that saturates: a timeout too long for the clock (milliseconds::max(), say)
// is the clock's last time point, "never", instead of wrapping into the past.

#include <chrono>

namespace ferry::detail {

template<class Clock, class Rep, class Period>
typename Clock::time_point time_after(typename Clock::time_point from, std::chrono::duration<Rep, Period> d) {
  if (d <= d.zero())
    return from;
  // why: compared as doubles: converting `d` to the clock's unit first could overflow already
  const std::chrono::duration<double> room = Clock::time_point::max() - from;
  if (std::chrono::duration<double>(d) >= room)
    return Clock::time_point::max();
  return from + std::chrono::duration_cast<typename Clock::duration>(d);
}

} // namespace ferry::detail
