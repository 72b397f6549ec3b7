#pragma once
#include "ferry/store/detail/chunked_array.hpp"
#include "ferry/store/detail/index_list.hpp"
#include "ferry/store/entry_hint.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ferry::store {

/// Approximate LRU ordered by the last lease grant, as the reference system evicts: sample `Samples`
/// objects and evict the one whose last read is oldest. O(Samples) per victim, no list to maintain on reads.
///
///   store::master<store::lease_lru_policy<16>> m;
template<std::size_t Samples = 16>
class lease_lru_policy {
public:
  void insert(std::uint32_t id, const entry_hint&) {
    slots_.resize(id + 1);
    slots_[id] = {++stamp_, static_cast<std::uint32_t>(present_.size())};
    present_.push_back(id);
  }
  void touch(std::uint32_t id) { slots_[id].stamp = ++stamp_; }
  void erase(std::uint32_t id, std::uint64_t, bool) {
    auto pos = slots_[id].position;
    present_[pos] = present_.back();
    slots_[present_[pos]].position = pos;
    present_.pop_back();
  }
  std::size_t size() const noexcept { return present_.size(); }

  template<class Pred>
  std::uint32_t victim(Pred&& evictable) {
    auto best = detail::no_index;
    // why: when few objects remain or most are leased, sampling can miss the evictable ones; a bounded
    // number of extra draws keeps the cost O(Samples) while a final scan keeps the answer complete.
    for (std::size_t draw = 0; draw < Samples * 4 && !present_.empty(); ++draw) {
      auto id = present_[next_random() % present_.size()];
      if (evictable(id) && (best == detail::no_index || slots_[id].stamp < slots_[best].stamp))
        best = id;
      if (draw + 1 >= Samples && best != detail::no_index)
        break;
    }
    if (best == detail::no_index)
      for (auto id : present_)
        if (evictable(id) && (best == detail::no_index || slots_[id].stamp < slots_[best].stamp))
          best = id;
    return best;
  }

private:
  struct slot {
    std::uint64_t stamp = 0;
    std::uint32_t position = 0;
  };
  std::uint64_t next_random() noexcept {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_;
  }

  detail::chunked_array<slot> slots_;
  std::vector<std::uint32_t> present_;
  std::uint64_t stamp_ = 0;
  std::uint64_t rng_ = 0x9E3779B97F4A7C15ull;
};

} // namespace ferry::store
