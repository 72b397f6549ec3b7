#pragma once
#include <chrono>
#include <cstddef>

namespace ferry::store {

/// Tunables of a master.
///
///   store::master<> m({.shards = 64, .lease_ttl = std::chrono::seconds(2)});
struct master_config {
  /// Independent locks over the object index; more shards, less contention.
  std::size_t shards = 16;
  /// How long a read lease (from get_replicas) protects an object from eviction and removal.
  std::chrono::nanoseconds lease_ttl = std::chrono::seconds(5);
  /// A put not committed within this time is reclaimed by `tick()`.
  std::chrono::nanoseconds put_timeout = std::chrono::seconds(30);
  /// A client silent for this long expires with `tick()`: its segments leave the pool.
  std::chrono::nanoseconds client_ttl = std::chrono::seconds(10);
  /// Eviction starts when used/capacity exceeds this, and frees down to `low_watermark`.
  double high_watermark = 0.95;
  double low_watermark = 0.85;
  /// Evict soft-pinned objects when nothing else is left.
  bool evict_soft_pinned = true;
};

} // namespace ferry::store
