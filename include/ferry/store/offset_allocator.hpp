#pragma once
#include "ferry/store/allocation.hpp"
#include "ferry/store/allocator_report.hpp"
#include "ferry/store/detail/chunked_array.hpp"
#include "ferry/store/detail/index_list.hpp"

#include <array>
#include <bit>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <vector>

namespace ferry::detail {
// why: sizes map to bins like small floats (3 mantissa bits), so every bin spans at most 12.5% of its size
// and a size class lookup is two bit scans. Rounding up on allocate guarantees any range found fits.
inline constexpr std::uint32_t mantissa_bits = 3;
inline constexpr std::uint32_t mantissa_mask = (1u << mantissa_bits) - 1;

constexpr std::uint32_t bin_round_down(std::uint64_t size) noexcept {
  if (size <= mantissa_mask)
    return static_cast<std::uint32_t>(size);
  auto high = 63u - static_cast<std::uint32_t>(std::countl_zero(size));
  auto shift = high - mantissa_bits;
  return ((shift + 1) << mantissa_bits) | static_cast<std::uint32_t>((size >> shift) & mantissa_mask);
}

constexpr std::uint32_t bin_round_up(std::uint64_t size) noexcept {
  auto bin = bin_round_down(size);
  if (size > mantissa_mask) {
    auto shift = (bin >> mantissa_bits) - 1;
    if (size & ((std::uint64_t{1} << shift) - 1))
      ++bin;
  }
  return bin;
}

constexpr std::uint64_t bin_size(std::uint32_t bin) noexcept {
  auto exp = bin >> mantissa_bits;
  std::uint64_t m = bin & mantissa_mask;
  return exp == 0 ? m : (m | (mantissa_mask + 1)) << (exp - 1);
}
} // namespace ferry::detail

namespace ferry::store {

/// A per-segment offset allocator: O(1) allocate and free over size-class bins (two-level bitmaps find a
/// non-empty bin), with neighbours merged on free. It hands out offsets; it never touches the memory.
///
///   offset_allocator a(1 << 30);
///   std::optional<allocation> r = a.allocate(64 << 10);   // nullopt when no free range is large enough
///   a.free(*r);
class offset_allocator {
public:
  /// Largest capacity handled: bins cover sizes below 2^62.
  static constexpr std::uint64_t max_capacity = std::uint64_t{1} << 62;

  explicit offset_allocator(std::uint64_t capacity) : capacity_(capacity) {
    if (capacity == 0 || capacity >= max_capacity)
      throw std::invalid_argument("offset_allocator: capacity must be in (0, 2^62)");
    insert_free(new_node(0, capacity));
  }

  offset_allocator(const offset_allocator&) = delete;
  offset_allocator& operator=(const offset_allocator&) = delete;
  offset_allocator(offset_allocator&&) = default;
  offset_allocator& operator=(offset_allocator&&) = default;

  /// A range of exactly `size` bytes, or nullopt if no free range is large enough (size 0 is refused).
  std::optional<allocation> allocate(std::uint64_t size) {
    if (size == 0 || size > capacity_)
      return std::nullopt;
    auto id = find_range(size);
    if (id == detail::no_index)
      return std::nullopt;
    // why: the node of the rest is made first, the one step that may run out of memory: a throw then leaves
    // the allocator as it was
    auto rest = nodes_[id].size > size ? new_node(nodes_[id].offset + size, nodes_[id].size - size)
                                       : detail::no_index;
    remove_free(id);
    if (rest != detail::no_index) {
      node& r = nodes_[rest];
      node& m = nodes_[id];
      r.nbr_prev = id;
      r.nbr_next = m.nbr_next;
      if (m.nbr_next != detail::no_index)
        nodes_[m.nbr_next].nbr_prev = rest;
      m.nbr_next = rest;
      m.size = size;
      insert_free(rest);
    }
    nodes_[id].used = true;
    used_ += size;
    ++allocations_;
    return allocation{nodes_[id].offset, size, id};
  }

  /// True if `allocate(size)` would succeed now.
  bool can_allocate(std::uint64_t size) const noexcept {
    return size != 0 && size <= capacity_ && find_range(size) != detail::no_index;
  }

  /// Returns a range; throws std::logic_error if it is not a live allocation of this allocator (and changes
  /// nothing then). Makes no allocation.
  void free(const allocation& a) {
    if (a.node >= nodes_.size() || !nodes_[a.node].used || nodes_[a.node].offset != a.offset ||
        nodes_[a.node].size != a.size)
      throw std::logic_error("offset_allocator::free: not a live allocation");
    auto id = a.node;
    nodes_[id].used = false;
    used_ -= a.size;
    --allocations_;
    if (auto p = nodes_[id].nbr_prev; p != detail::no_index && !nodes_[p].used) {
      remove_free(p);
      nodes_[p].size += nodes_[id].size;
      unlink_neighbour(id);
      id = p;
    }
    if (auto n = nodes_[id].nbr_next; n != detail::no_index && !nodes_[n].used) {
      remove_free(n);
      nodes_[id].size += nodes_[n].size;
      unlink_neighbour(n);
    }
    insert_free(id);
  }

  std::uint64_t capacity() const noexcept { return capacity_; }
  std::uint64_t used() const noexcept { return used_; }

  /// Utilization and fragmentation; walks only the highest non-empty bin.
  allocator_report report() const {
    allocator_report r{capacity_, used_, 0, free_ranges_, allocations_};
    if (top_mask_) {
      auto top = 63u - static_cast<std::uint32_t>(std::countl_zero(top_mask_));
      auto bin = top * 8 + 31u - static_cast<std::uint32_t>(std::countl_zero(std::uint32_t{leaf_mask_[top]}));
      for (auto id = bins_[bin].front(); id != detail::no_index; id = nodes_[id].bin.next)
        r.largest_free = std::max(r.largest_free, nodes_[id].size);
    }
    return r;
  }

private:
  struct node {
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
    detail::list_links bin;
    std::uint32_t nbr_prev = detail::no_index;
    std::uint32_t nbr_next = detail::no_index;
    bool used = false;
  };
  struct bin_links {
    offset_allocator* self;
    detail::list_links& operator[](std::uint32_t id) noexcept { return self->nodes_[id].bin; }
  };

  static constexpr std::uint32_t bin_count = 64 * 8;

  std::uint32_t new_node(std::uint64_t offset, std::uint64_t size) {
    std::uint32_t id;
    if (!spare_.empty()) {
      id = spare_.back();
      spare_.pop_back();
    } else {
      id = static_cast<std::uint32_t>(nodes_.size());
      // why: room for every node in the spare list, so that giving nodes back (free) never allocates and
      // cannot fail halfway through a merge
      if (spare_.capacity() < std::size_t{id} + 1)
        spare_.reserve(std::max<std::size_t>(16, 2 * (std::size_t{id} + 1)));
      nodes_.resize(id + 1);
    }
    nodes_[id] = node{offset, size, {}, detail::no_index, detail::no_index, false};
    return id;
  }

  void unlink_neighbour(std::uint32_t id) {
    node& n = nodes_[id];
    if (n.nbr_prev != detail::no_index)
      nodes_[n.nbr_prev].nbr_next = n.nbr_next;
    if (n.nbr_next != detail::no_index)
      nodes_[n.nbr_next].nbr_prev = n.nbr_prev;
    spare_.push_back(id);
  }

  void insert_free(std::uint32_t id) {
    auto bin = detail::bin_round_down(nodes_[id].size);
    bin_links links{this};
    bins_[bin].push_front(links, id);
    top_mask_ |= std::uint64_t{1} << (bin >> 3);
    leaf_mask_[bin >> 3] |= static_cast<std::uint8_t>(1u << (bin & 7));
    ++free_ranges_;
  }

  void remove_free(std::uint32_t id) {
    auto bin = detail::bin_round_down(nodes_[id].size);
    bin_links links{this};
    bins_[bin].erase(links, id);
    if (bins_[bin].empty()) {
      leaf_mask_[bin >> 3] &= static_cast<std::uint8_t>(~(1u << (bin & 7)));
      if (leaf_mask_[bin >> 3] == 0)
        top_mask_ &= ~(std::uint64_t{1} << (bin >> 3));
    }
    --free_ranges_;
  }

  // why: a bin at or above round_up(size) always fits and is found in O(1). Only when there is none can a
  // range of the size's own bin still fit (sizes that are not bin boundaries); that bin is searched whole, so
  // a request is never refused while a large enough range exists.
  std::uint32_t find_range(std::uint64_t size) const noexcept {
    if (auto bin = find_bin(detail::bin_round_up(size)); bin != detail::no_index)
      return bins_[bin].front();
    for (auto id = bins_[detail::bin_round_down(size)].front(); id != detail::no_index;
         id = nodes_[id].bin.next)
      if (nodes_[id].size >= size)
        return id;
    return detail::no_index;
  }

  /// The first non-empty bin at or above `bin`, or no_index.
  std::uint32_t find_bin(std::uint32_t bin) const noexcept {
    auto top = bin >> 3;
    if (top >= 64)
      return detail::no_index;
    auto leaf = static_cast<std::uint32_t>(leaf_mask_[top]) & (~0u << (bin & 7));
    if (leaf)
      return top * 8 + static_cast<std::uint32_t>(std::countr_zero(leaf));
    auto above = top + 1 < 64 ? top_mask_ & (~std::uint64_t{0} << (top + 1)) : 0;
    if (!above)
      return detail::no_index;
    top = static_cast<std::uint32_t>(std::countr_zero(above));
    return top * 8 +
           static_cast<std::uint32_t>(std::countr_zero(static_cast<std::uint32_t>(leaf_mask_[top])));
  }

  std::uint64_t capacity_;
  std::uint64_t used_ = 0;
  std::uint32_t free_ranges_ = 0;
  std::uint32_t allocations_ = 0;
  std::uint64_t top_mask_ = 0;
  std::array<std::uint8_t, 64> leaf_mask_{};
  std::array<detail::index_list, bin_count> bins_{};
  detail::chunked_array<node, 1024> nodes_;
  std::vector<std::uint32_t> spare_;
};

} // namespace ferry::store
