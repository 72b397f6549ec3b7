#pragma once
#include "ferry/store/segment_view.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ferry::store {

/// One placement decision: where to put `count` pieces of `piece_size` bytes, on distinct segments.
///
///   placement_request req{.piece_size = 1 << 20, .count = 2, .preferred_host = "10.0.0.7"};
struct placement_request {
  std::uint64_t piece_size = 0;
  std::size_t count = 1;
  std::optional<segment_id> preferred_segment{};
  std::string_view preferred_host{};
};

} // namespace ferry::store
