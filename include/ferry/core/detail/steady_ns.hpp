#pragma once
// The steady clock as a count of nanoseconds: what atomics that hold a time store.

#include <chrono>
#include <cstdint>

namespace ferry::detail {

inline std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

} // namespace ferry::detail
