#pragma once
#include "ferry/store/put_options.hpp"

#include <cstdint>
#include <string>

namespace ferry::store {

/// A memory segment a client contributes to the pool.
///
///   auto id = m.mount_segment({.name = "node7/dram0", .host = "10.0.0.7", .capacity = 64ull << 30, .owner =
///   7});
struct segment_spec {
  std::string name{};
  std::string host{};
  std::uint64_t capacity = 0;
  /// The client whose expiry unmounts the segment (0 = none: it stays until unmounted).
  client_id owner = 0;
};

} // namespace ferry::store
