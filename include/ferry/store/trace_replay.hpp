#pragma once
/// Replays a KV-cache request trace (prefix block hashes per request) through a master with a chosen
/// eviction policy, and through two references computed here: LRU and the offline optimum (Belady).
/// A block counts as a hit only if it and every block before it in the request are cached.

#include "ferry/store/concepts.hpp"
#include "ferry/store/manual_clock.hpp"
#include "ferry/store/master.hpp"
#include "ferry/store/preferred_placement.hpp"

#include <cstddef>
#include <cstdint>
#include <list>
#include <queue>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace ferry::store {

/// One request of a trace: its prefix block hashes, and whether the last block is partially filled.
struct trace_request {
  std::vector<std::uint64_t> blocks;
  bool partial_tail = false;
};

/// Block hits of one replay.
struct replay_result {
  std::uint64_t hits = 0;
  std::uint64_t blocks = 0;
  double hit_ratio() const noexcept { return blocks ? double(hits) / double(blocks) : 0.0; }
};

/// Bytes given to each block in a replay (a power of two, so every freed block fits the next exactly).
inline constexpr std::uint64_t replay_block_bytes = 1 << 16;

/// Replays `trace` through a one-shard master holding `capacity_blocks` blocks, evicting with `Eviction`.
/// Every block of a request is read (a lease that ends at once) or, when absent, put and committed.
///
///   auto r = store::replay_through_master<store::prefix_aware_policy>(trace, 3000); r.hit_ratio();
template<eviction_policy Eviction>
replay_result replay_through_master(std::span<const trace_request> trace, std::size_t capacity_blocks) {
  // why: one shard and no watermark make capacity exact, as in the references.
  master<Eviction, preferred_placement, offset_allocator, manual_clock> m(
      {.shards = 1, .lease_ttl = std::chrono::nanoseconds(0), .high_watermark = 1.0, .low_watermark = 1.0});
  if (!m.mount_segment({.name = "replay", .host = "local", .capacity = capacity_blocks * replay_block_bytes}))
    throw std::invalid_argument("replay_through_master: capacity must be positive");
  replay_result r;
  std::string key, parent;
  for (auto& req : trace) {
    bool prefix = true;
    parent.clear();
    for (std::size_t i = 0; i < req.blocks.size(); ++i) {
      key = std::to_string(req.blocks[i]);
      ++r.blocks;
      if (m.get_replicas(key)) {
        r.hits += prefix;
      } else {
        prefix = false;
        put_options o{.parent = parent,
                      .depth = static_cast<std::uint32_t>(i),
                      .partial_tail = req.partial_tail && i + 1 == req.blocks.size()};
        if (m.put_start(key, replay_block_bytes, o))
          (void)m.put_end(key);
      }
      parent = key;
    }
    m.clock().advance(std::chrono::microseconds(1));
  }
  return r;
}

/// The same trace under plain LRU over block ids (computed here, independent of the master). Throws
/// std::invalid_argument for a capacity of 0, as replay_through_master does.
inline replay_result replay_lru(std::span<const trace_request> trace, std::size_t capacity_blocks) {
  if (capacity_blocks == 0)
    throw std::invalid_argument("replay_lru: capacity must be positive");
  std::list<std::uint64_t> order;
  std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> where;
  replay_result r;
  for (auto& req : trace) {
    bool prefix = true;
    for (auto b : req.blocks) {
      ++r.blocks;
      if (auto it = where.find(b); it != where.end()) {
        r.hits += prefix;
        order.splice(order.end(), order, it->second);
        continue;
      }
      prefix = false;
      if (where.size() >= capacity_blocks) {
        where.erase(order.front());
        order.pop_front();
      }
      where[b] = order.insert(order.end(), b);
    }
  }
  return r;
}

/// The same trace under the offline optimum: evict the block whose next use is furthest (Belady). Throws
/// std::invalid_argument for a capacity of 0.
inline replay_result replay_optimal(std::span<const trace_request> trace, std::size_t capacity_blocks) {
  if (capacity_blocks == 0)
    throw std::invalid_argument("replay_optimal: capacity must be positive");
  std::vector<std::uint64_t> seq;
  for (auto& req : trace)
    seq.insert(seq.end(), req.blocks.begin(), req.blocks.end());
  constexpr auto never = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> next_use(seq.size());
  std::unordered_map<std::uint64_t, std::size_t> last;
  for (std::size_t i = seq.size(); i-- > 0;) {
    auto it = last.find(seq[i]);
    next_use[i] = it == last.end() ? never : it->second;
    last[seq[i]] = i;
  }
  std::unordered_map<std::uint64_t, std::size_t> cached; // block -> its next use
  std::priority_queue<std::pair<std::size_t, std::uint64_t>> furthest;
  replay_result r;
  std::size_t i = 0;
  for (auto& req : trace) {
    bool prefix = true;
    for (auto b : req.blocks) {
      ++r.blocks;
      if (cached.contains(b)) {
        r.hits += prefix;
      } else {
        prefix = false;
        while (cached.size() >= capacity_blocks) {
          auto [use, victim] = furthest.top();
          furthest.pop();
          if (auto it = cached.find(victim); it != cached.end() && it->second == use)
            cached.erase(it);
        }
      }
      cached[b] = next_use[i];
      furthest.push({next_use[i], b});
      ++i;
    }
  }
  return r;
}

} // namespace ferry::store
