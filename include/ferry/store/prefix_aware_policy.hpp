#pragma once
#include "ferry/store/detail/chunked_array.hpp"
#include "ferry/store/detail/fifo_ghost.hpp"
#include "ferry/store/detail/index_list.hpp"
#include "ferry/store/entry_hint.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

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
  prefix_aware_policy() = default;
  /// Starts the blocks' place numbers at `first_order` instead of 2^30; tests start them near either end of
  /// the range to reach the renumbering that keeps them ordered.
  explicit prefix_aware_policy(std::uint32_t first_order) : next_order_(first_order) {}

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
      link_back(true, id);
      rebalance();
    } else if (hint.partial_tail) {
      link_front(id);
    } else {
      link_back(false, id);
    }
    ghost_.set_limit(2 * size());
  }

  void touch(std::uint32_t id) {
    node& n = nodes_[id];
    if (n.protected_) {
      unlink(true, id);
      link_back(true, id);
      return;
    }
    unlink(false, id);
    n.protected_ = true;
    link_back(true, id);
    rebalance();
  }

  void erase(std::uint32_t id, std::uint64_t key_hash, bool evicted) {
    node& n = nodes_[id];
    unlink(n.protected_, id);
    if (n.parent != detail::no_index) {
      node& p = nodes_[n.parent];
      if (p.first_child == id)
        p.first_child = n.next_sibling;
      if (n.prev_sibling != detail::no_index)
        nodes_[n.prev_sibling].next_sibling = n.next_sibling;
      if (n.next_sibling != detail::no_index)
        nodes_[n.next_sibling].prev_sibling = n.prev_sibling;
      if (p.first_child == detail::no_index) // the parent is a chain tail now
        note_tail(p.protected_, n.parent);
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
  /// successors only when no evictable tail is left. One step when the least recently used tail can be
  /// evicted; otherwise a walk on from it.
  // why: each segment remembers where its first chain tail may be: the blocks before it have cached
  // successors. Without that, evicting a chain of L blocks tail first walked its L - 1 heads each time
  // (O(L^2)): with chains of 4,096 blocks a put into a full pool took 7.0 µs against 1.6 with chains of 16
  // (ferry-store-master-bench, put_evicting_chains); now 1.1-1.5 for both.
  template<class Pred>
  std::uint32_t victim(Pred&& evictable) {
    for (bool in_protected : {false, true}) {
      std::uint32_t& from = scan_from_[in_protected];
      while (from != detail::no_index && !is_tail(from))
        from = nodes_[from].links.next;
      for (auto id = from; id != detail::no_index; id = nodes_[id].links.next)
        if (is_tail(id) && evictable(id))
          return id;
    }
    return first_evictable(false, evictable);
  }

  /// The block victim() chooses, found by walking every block from the front of each segment: the reference
  /// its shortcut is tested against.
  template<class Pred>
  std::uint32_t victim_by_walk(Pred&& evictable) {
    if (auto id = first_evictable(true, evictable); id != detail::no_index)
      return id;
    return first_evictable(false, evictable);
  }

private:
  struct node {
    detail::list_links links;
    std::uint32_t parent = detail::no_index;
    std::uint32_t first_child = detail::no_index;
    std::uint32_t next_sibling = detail::no_index;
    std::uint32_t prev_sibling = detail::no_index;
    /// Its place in its segment: larger towards the back (compared only within one segment).
    std::uint32_t order = 0;
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
      unlink(true, id);
      nodes_[id].protected_ = false;
      link_back(false, id);
    }
  }

  /// The first block, probation before protected, that `evictable` accepts (and that is a tail, if asked).
  template<class Pred>
  std::uint32_t first_evictable(bool tails_only, Pred& evictable) {
    for (auto* seg : {&probation_, &protected_})
      for (auto id = seg->front(); id != detail::no_index; id = nodes_[id].links.next)
        if ((!tails_only || is_tail(id)) && evictable(id))
          return id;
    return detail::no_index;
  }

  detail::index_list& segment(bool in_protected) noexcept { return in_protected ? protected_ : probation_; }

  // Every change to a segment goes through these four, which keep `scan_from_` true: in each segment, the
  // blocks before scan_from_ have cached successors (no_index: every block of the segment has).
  void link_back(bool in_protected, std::uint32_t id) {
    if (next_order_ == std::numeric_limits<std::uint32_t>::max())
      renumber();
    segment(in_protected).push_back(links_of(), id);
    nodes_[id].order = next_order_++;
    if (is_tail(id))
      note_tail(in_protected, id);
  }
  void link_front(std::uint32_t id) { // probation only
    if (probation_.empty()) {
      link_back(false, id);
      return;
    }
    if (nodes_[probation_.front()].order == 0)
      renumber();
    const std::uint32_t order = nodes_[probation_.front()].order - 1;
    probation_.push_front(links_of(), id);
    nodes_[id].order = order;
    if (is_tail(id))
      note_tail(false, id);
  }
  void unlink(bool in_protected, std::uint32_t id) {
    if (scan_from_[in_protected] == id)
      scan_from_[in_protected] = nodes_[id].links.next;
    segment(in_protected).erase(links_of(), id);
  }
  /// `id`, in the given segment, has no cached successor (any more).
  void note_tail(bool in_protected, std::uint32_t id) {
    std::uint32_t& from = scan_from_[in_protected];
    if (from == detail::no_index || nodes_[id].order < nodes_[from].order)
      from = id;
  }
  /// Numbers both segments' blocks again from the middle of the range, front to back, when the numbers run
  /// out at either end (after about 2^31 moves; O(blocks)).
  void renumber() {
    std::uint32_t last = std::uint32_t{1} << 30;
    for (auto* seg : {&probation_, &protected_}) {
      std::uint32_t order = std::uint32_t{1} << 30;
      for (auto id = seg->front(); id != detail::no_index; id = nodes_[id].links.next)
        nodes_[id].order = order++;
      last = std::max(last, order);
    }
    next_order_ = last;
  }

  detail::chunked_array<node> nodes_;
  detail::index_list probation_;
  detail::index_list protected_;
  std::uint32_t scan_from_[2] = {detail::no_index, detail::no_index}; // probation, protected
  std::uint32_t next_order_ = std::uint32_t{1} << 30;
  detail::fifo_ghost ghost_;
};

} // namespace ferry::store
