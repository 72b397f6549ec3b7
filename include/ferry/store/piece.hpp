#pragma once
#include "ferry/store/segment_view.hpp"

#include <cstdint>

namespace ferry::store {

/// One contiguous part of a replica: `length` bytes at `offset` of a segment.
///
///   for (const piece& p : set.replica(0)) engine.read(p.segment, p.offset, p.length, dst);
struct piece {
  segment_id segment = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;

  friend bool operator==(const piece&, const piece&) = default;
};

} // namespace ferry::store
