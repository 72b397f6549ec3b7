#pragma once
#include "ferry/store/detail/chunked_array.hpp"
#include "ferry/store/detail/fifo_ghost.hpp"
#include "ferry/store/detail/index_list.hpp"
#include "ferry/store/entry_hint.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace ferry::store {

/// S3-FIFO: new objects enter a small FIFO (a tenth of the objects); those read again move to the main
/// FIFO (CLOCK with a 2-bit counter), the rest leave and are remembered in a ghost FIFO, so that a quick
/// return goes straight to main.
///
///   store::master<store::s3fifo_policy> m;
class s3fifo_policy {
public:
  void insert(std::uint32_t id, const entry_hint& hint) {
    nodes_.resize(id + 1);
    nodes_[id].freq = 0;
    if (ghost_.take(hint.key_hash)) {
      nodes_[id].main = true;
      main_.push_back(links_of(), id);
    } else {
      nodes_[id].main = false;
      small_.push_back(links_of(), id);
    }
    ghost_.set_limit(main_.size() + small_.size());
  }
  void touch(std::uint32_t id) {
    nodes_[id].freq = static_cast<std::uint8_t>(std::min(3, nodes_[id].freq + 1));
  }
  void erase(std::uint32_t id, std::uint64_t key_hash, bool evicted) {
    auto& n = nodes_[id];
    (n.main ? main_ : small_).erase(links_of(), id);
    if (evicted && !n.main)
      ghost_.insert(key_hash);
  }
  std::size_t size() const noexcept { return main_.size() + small_.size(); }

  template<class Pred>
  std::uint32_t victim(Pred&& evictable) {
    // why: each object is moved at most a few times (its counter is at most 3) and skipped ones rotate to
    // the back, so a bounded number of steps visits everything before giving up.
    std::size_t budget = 5 * size() + 8;
    // Fronts found not evictable in a row, per queue (an evictable front starts the count again): once a
    // queue's count reaches its size, every object in it cannot be evicted, and the other queue is taken.
    std::size_t small_passed = 0, main_passed = 0;
    while (budget-- > 0 && size() > 0) {
      bool small_done = small_passed >= small_.size(), main_done = main_passed >= main_.size();
      if (small_done && main_done)
        break;
      bool from_small = !small_done && (main_done || small_.size() * 10 >= size());
      auto& queue = from_small ? small_ : main_;
      auto& passed = from_small ? small_passed : main_passed;
      auto id = queue.front();
      auto& n = nodes_[id];
      if (!evictable(id)) {
        queue.move_to_back(links_of(), id);
        ++passed;
        continue;
      }
      passed = 0;
      if (from_small && n.freq > 0) {
        small_.erase(links_of(), id);
        n.main = true;
        n.freq = 0;
        main_.push_back(links_of(), id);
        continue;
      }
      if (!from_small && n.freq > 0) {
        --n.freq;
        main_.move_to_back(links_of(), id);
        continue;
      }
      return id;
    }
    return detail::no_index;
  }

private:
  struct node {
    detail::list_links links;
    std::uint8_t freq = 0;
    bool main = false;
  };
  struct links_view {
    detail::chunked_array<node>* nodes;
    detail::list_links& operator[](std::uint32_t id) noexcept { return (*nodes)[id].links; }
  };
  links_view links_of() noexcept { return {&nodes_}; }

  detail::chunked_array<node> nodes_;
  detail::index_list small_;
  detail::index_list main_;
  detail::fifo_ghost ghost_;
};

} // namespace ferry::store
