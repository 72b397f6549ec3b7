#pragma once
/// `ferry::detail::region_holding`: in regions sorted by offset (anything with `offset` and `length`), the
/// one that holds [offset, offset + length) whole, or nullptr. Used by segment descriptors and verbs
/// handshakes.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ferry::detail {

template<class Region>
const Region* region_holding(const std::vector<Region>& regions, std::uint64_t offset,
                             std::uint64_t length) noexcept {
  std::size_t lo = 0, hi = regions.size();
  while (lo < hi) { // first region starting after offset
    std::size_t mid = (lo + hi) / 2;
    if (regions[mid].offset <= offset)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == 0)
    return nullptr;
  const Region& r = regions[lo - 1];
  bool inside = offset >= r.offset && length <= r.length && offset - r.offset <= r.length - length;
  return inside ? &r : nullptr;
}

} // namespace ferry::detail
