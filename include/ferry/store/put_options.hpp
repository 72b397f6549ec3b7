#pragma once
#include "ferry/store/segment_view.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ferry::store {

/// Client identifier (the owner of segments and of pending puts).
using client_id = std::uint64_t;

/// How to place and keep one object.
///
///   m.put_start("{chat:7}/blk/3", 1 << 20, {.replicas = 2, .parent = "{chat:7}/blk/2", .depth = 3});
struct put_options {
  /// Replicas wanted; fewer are accepted when segments run out (at least one).
  std::uint32_t replicas = 1;
  /// Pieces per replica, each on a distinct segment (1 = not striped; at most 255). Pieces are the size
  /// divided by this, rounded up, so a small object may fill fewer.
  std::uint32_t stripes = 1;
  std::optional<segment_id> preferred_segment{};
  std::string_view preferred_host{};
  /// The key of the previous block of a prefix chain (KV cache), for prefix-aware eviction. It is linked
  /// when it lives in the same shard (same key, or same `{hash tag}`).
  std::string_view parent{};
  std::uint32_t depth = 0;
  /// This block is the partially filled end of its chain.
  bool partial_tail = false;
  /// Soft pin: evicted only when nothing else can be, until this much time after commit (0 = none).
  std::chrono::nanoseconds soft_pin{0};
  /// Hard pin: never evicted (still removable).
  bool hard_pin = false;
  /// The writer; its pending puts are reclaimed when it expires (0 = none).
  client_id owner = 0;
};

} // namespace ferry::store
