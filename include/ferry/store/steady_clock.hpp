#pragma once
#include <chrono>

namespace ferry::store {

/// The real clock for a master: `std::chrono::steady_clock`.
///
///   store::master<> m;   // uses steady_clock
struct steady_clock {
  std::chrono::steady_clock::time_point now() const noexcept { return std::chrono::steady_clock::now(); }
};

} // namespace ferry::store
