#pragma once
#include <cstddef>
#include <cstdint>

namespace ferry::store {

/// A snapshot of a master's counters.
///
///   auto s = m.stats(); log(s.objects, s.used * 100 / s.capacity);
struct master_stats {
  std::size_t objects = 0;
  std::size_t pending = 0;
  std::size_t segments = 0;
  std::uint64_t capacity = 0;
  std::uint64_t used = 0;
  std::uint64_t evicted = 0;
};

} // namespace ferry::store
