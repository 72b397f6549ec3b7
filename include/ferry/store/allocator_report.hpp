#pragma once
#include <cstdint>

namespace ferry::store {

/// Utilization and fragmentation of one segment allocator.
///
///   auto r = alloc.report(); log(r.used * 100 / r.capacity, r.fragmentation());
struct allocator_report {
  std::uint64_t capacity = 0;
  std::uint64_t used = 0;
  std::uint64_t largest_free = 0;
  std::uint32_t free_ranges = 0;
  std::uint32_t allocations = 0;

  std::uint64_t free() const noexcept { return capacity - used; }
  double utilization() const noexcept { return capacity ? double(used) / double(capacity) : 0.0; }
  /// 0 when all free space is one range, towards 1 as it splinters into small ranges.
  double fragmentation() const noexcept { return free() ? 1.0 - double(largest_free) / double(free()) : 0.0; }
};

} // namespace ferry::store
