#pragma once
#include "ferry/store/piece.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace ferry::store {

/// Where an object's bytes live: `count()` replicas, each striped into `stripes` pieces on distinct segments.
///
///   auto set = m.get_replicas("k"); for (const piece& p : set->replica(0)) read(p);
struct replica_set {
  std::uint64_t size = 0;
  std::uint32_t stripes = 1;
  std::vector<piece> pieces;

  std::size_t count() const noexcept { return stripes ? pieces.size() / stripes : 0; }
  std::span<const piece> replica(std::size_t i) const noexcept {
    return {pieces.data() + i * stripes, stripes};
  }
};

} // namespace ferry::store
