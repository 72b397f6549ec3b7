#pragma once
#include "ferry/store/detail/index_list.hpp"

#include <cstdint>

namespace ferry::store {

/// What an eviction policy learns about an object when it becomes evictable (at commit).
///
///   policy.insert(id, entry_hint{.key_hash = h, .parent = parent_id, .depth = 3});
struct entry_hint {
  std::uint64_t key_hash = 0;
  /// The policy id of the block before this one in its prefix chain, or `no_parent`.
  std::uint32_t parent = detail::no_index;
  /// Position in the prefix chain (0 for a chain head).
  std::uint32_t depth = 0;
  /// The block is the partially filled end of a chain: a longer prompt will hash it differently.
  bool partial_tail = false;

  static constexpr std::uint32_t no_parent = detail::no_index;
};

} // namespace ferry::store
