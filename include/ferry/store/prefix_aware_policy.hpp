#pragma once
#include "ferry/store/detail/chunked_array.hpp"
#include "ferry/store/detail/fifo_ghost.hpp"
#include "ferry/store/detail/index_list.hpp"
#include "ferry/store/entry_hint.hpp"

#include <cstddef>
#include <cstdint>

namespace ferry::store {

/// The master's default: prefix-aware, frequency-aware eviction for KV-cache blocks.
///
/// - A block is only useful while every block before it in its chain is cached, so only chain tails
///   (blocks with no cached successor) are evicted while any evictable tail exists.
/// - Segmented LRU: a first read moves a block from the probation segment to the protected one (at most
///   80% of the blocks); eviction takes probation first. A ghost FIFO remembers twice as many evicted
///   blocks, and a block that returns while remembered enters the protected segment directly.
/// - A partially filled chain end (which a longer prompt hashes differently) is evicted first.
///
///   store::master<store::prefix_aware_policy> m;   // the default
class prefix_aware_policy {
public:
  void insert(std::uint32_t id, const entry_hint& hint) {
    nodes_.resize(id + 1);
    node& n = nodes_[id];
    n = node{};
    if (hint.parent != entry_hint::no_parent && hint.parent < nodes_.size() && nodes_[hint.parent].present) {
      n.parent = hint.parent;
      node& p = nodes_[hint.parent];
      n.next_sibling = p.first_child;
      if (p.first_child != detail::no_index)
        nodes_[p.first_child].prev_sibling = id;
      p.first_child = id;
    }
    n.present = true;
    if (ghost_.take(hint.key_hash)) {
      n.protected_ = true;
      protected_.push_back(links_of(), id);
      rebalance();
    } else if (hint.partial_tail) {
      probation_.push_front(links_of(), id);
    } else {
      probation_.push_back(links_of(), id);
    }
    ghost_.set_limit(2 * size());
  }

  void touch(std::uint32_t id) {
    node& n = nodes_[id];
    if (n.protected_) {
      protected_.move_to_back(links_of(), id);
      return;
    }
    probation_.erase(links_of(), id);
    n.protected_ = true;
    protected_.push_back(links_of(), id);
    rebalance();
  }

  void erase(std::uint32_t id, std::uint64_t key_hash, bool evicted) {
    node& n = nodes_[id];
    (n.protected_ ? protected_ : probation_).erase(links_of(), id);
    if (n.parent != detail::no_index) {
      node& p = nodes_[n.parent];
      if (p.first_child == id)
        p.first_child = n.next_sibling;
      if (n.prev_sibling != detail::no_index)
        nodes_[n.prev_sibling].next_sibling = n.next_sibling;
      if (n.next_sibling != detail::no_index)
        nodes_[n.next_sibling].prev_sibling = n.prev_sibling;
    }
    // why: an object removed explicitly may still have cached successors; they become chain heads.
    for (auto c = n.first_child; c != detail::no_index;) {
      auto next = nodes_[c].next_sibling;
      nodes_[c].parent = nodes_[c].prev_sibling = nodes_[c].next_sibling = detail::no_index;
      c = next;
    }
    n = node{};
    if (evicted)
      ghost_.insert(key_hash);
    ghost_.set_limit(2 * size());
  }

  std::size_t size() const noexcept { return probation_.size() + protected_.size(); }

  /// True if `id` has no cached successor (it is a chain tail).
  bool is_tail(std::uint32_t id) const noexcept { return nodes_[id].first_child == detail::no_index; }

  /// The least recently used evictable chain tail, probation before protected; a block with cached
  /// successors only when no evictable tail is left. O(skipped blocks).
  template<class Pred>
  std::uint32_t victim(Pred&& evictable) {
    for (bool tails_only : {true, false})
      for (auto* segment : {&probation_, &protected_})
        for (auto id = segment->front(); id != detail::no_index; id = nodes_[id].links.next)
          if ((!tails_only || is_tail(id)) && evictable(id))
            return id;
    return detail::no_index;
  }

private:
  struct node {
    detail::list_links links;
    std::uint32_t parent = detail::no_index;
    std::uint32_t first_child = detail::no_index;
    std::uint32_t next_sibling = detail::no_index;
    std::uint32_t prev_sibling = detail::no_index;
    bool protected_ = false;
    bool present = false;
  };
  struct links_view {
    detail::chunked_array<node>* nodes;
    detail::list_links& operator[](std::uint32_t id) noexcept { return (*nodes)[id].links; }
  };
  links_view links_of() noexcept { return {&nodes_}; }

  // why: demoted blocks go to the back of probation, behind blocks never read twice.
  void rebalance() {
    while (protected_.size() * 5 > size() * 4) {
      auto id = protected_.front();
      protected_.erase(links_of(), id);
      nodes_[id].protected_ = false;
      probation_.push_back(links_of(), id);
    }
  }

  detail::chunked_array<node> nodes_;
  detail::index_list probation_;
  detail::index_list protected_;
  detail::fifo_ghost ghost_;
};

} // namespace ferry::store
