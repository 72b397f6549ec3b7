#pragma once
#include <cstdint>

namespace ferry::store {

/// A range handed out by a segment allocator; `node` is the allocator's handle for an O(1) free.
///
///   if (auto a = alloc.allocate(4096)) { use(a->offset); alloc.free(*a); }
struct allocation {
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint32_t node = 0;
};

} // namespace ferry::store
