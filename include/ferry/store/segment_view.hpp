#pragma once
#include <cstdint>
#include <string_view>

namespace ferry::store {

/// Segment identifier, assigned by the master at mount.
using segment_id = std::uint32_t;

/// What a placement policy sees of one mounted segment.
///
///   double ratio = double(v.free) / double(v.capacity);
struct segment_view {
  segment_id id = 0;
  std::string_view host{};
  std::uint64_t capacity = 0;
  std::uint64_t free = 0;

  double free_ratio() const noexcept { return capacity ? double(free) / double(capacity) : 0.0; }
};

} // namespace ferry::store
