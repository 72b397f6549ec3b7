#pragma once
#include <atomic>
#include <chrono>

namespace ferry::store {

/// A clock that moves only when told, for deterministic tests of leases, heartbeats and timeouts.
///
///   store::master<..., store::manual_clock> m; m.clock().advance(std::chrono::seconds(5));
class manual_clock {
public:
  using time_point = std::chrono::steady_clock::time_point;

  time_point now() const noexcept {
    return time_point(std::chrono::nanoseconds(ns_.load(std::memory_order_acquire)));
  }
  void advance(std::chrono::nanoseconds d) noexcept { ns_.fetch_add(d.count(), std::memory_order_acq_rel); }

private:
  // why: starts far from zero so that "deadline = now - something" never wraps below the epoch.
  std::atomic<std::chrono::nanoseconds::rep> ns_{std::chrono::nanoseconds(std::chrono::hours(24)).count()};
};

} // namespace ferry::store
