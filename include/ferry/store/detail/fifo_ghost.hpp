#pragma once
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

namespace ferry::detail {

/// A bounded FIFO of recently evicted keys, remembered by a 32-bit fingerprint of their hash (about 12 bytes
/// an entry). `contains` is exact up to fingerprint collisions, which only make a policy admit a key early.
///
///   fifo_ghost g; g.set_limit(1000); g.insert(h); if (g.take(h)) promote();
class fifo_ghost {
public:
  void set_limit(std::size_t limit) {
    limit_ = limit;
    trim();
  }
  std::size_t size() const noexcept { return order_.size(); }

  /// Remembers `hash`. Out of memory, it is not remembered, and nothing else changes.
  // why: noexcept: a policy forgets an evicted object's hash here after the object is gone; a throw then
  // would leave the object half erased, and a ghost is only a hint for a later admission
  void insert(std::uint64_t hash) noexcept {
    if (limit_ == 0)
      return;
    auto fp = fingerprint(hash);
    try {
      if ((used_ + 1) * 2 > table_.size())
        rehash(std::max<std::size_t>(64, std::bit_ceil((order_.size() + 1) * 4)));
      order_.push_back(fp);
    } catch (...) {
      return;
    }
    claim(fp).count++;
    trim();
  }

  /// Removes one remembered occurrence of `hash`; true if there was one.
  bool take(std::uint64_t hash) {
    slot* s = find(fingerprint(hash));
    if (s == nullptr || s->count == 0)
      return false;
    // why: the FIFO keeps the fingerprint until it ages out; the count decides membership, and the taken
    // occurrence (counted as the oldest of its fingerprint) must not lower a later one's count as it ages out
    --s->count;
    ++s->taken;
    return true;
  }

private:
  struct slot {
    std::uint32_t fp = 0;
    std::uint32_t count = 0; // occurrences in the FIFO still remembered
    std::uint32_t taken = 0; // occurrences in the FIFO already taken, to be passed over when they age out
  };

  static std::uint32_t fingerprint(std::uint64_t h) noexcept {
    auto fp = static_cast<std::uint32_t>(h ^ (h >> 32));
    return fp == 0 ? 1 : fp;
  }

  // why: linear probing without deletion; slots whose counts fell to zero stay as markers and are dropped
  // at the next rehash, which `used_` (claimed slots) triggers before the table is half full.
  std::size_t home(std::uint32_t fp) const noexcept { return (fp * 0x9E3779B1u) & (table_.size() - 1); }

  slot* find(std::uint32_t fp) noexcept {
    if (table_.empty())
      return nullptr;
    for (std::size_t i = home(fp);; i = (i + 1) & (table_.size() - 1)) {
      if (table_[i].fp == fp)
        return &table_[i];
      if (table_[i].fp == 0)
        return nullptr;
    }
  }

  slot& claim(std::uint32_t fp) noexcept {
    std::size_t i = home(fp);
    while (table_[i].fp != 0 && table_[i].fp != fp)
      i = (i + 1) & (table_.size() - 1);
    if (table_[i].fp == 0) {
      table_[i].fp = fp;
      ++used_;
    }
    return table_[i];
  }

  // why: the new table is made before the old one is let go, so that running out of memory changes nothing
  void rehash(std::size_t n) {
    std::vector<slot> old(n, slot{});
    old.swap(table_);
    used_ = 0;
    for (auto& s : old)
      if (s.count || s.taken) {
        slot& n = claim(s.fp);
        n.count = s.count;
        n.taken = s.taken;
      }
  }

  void trim() {
    while (order_.size() > limit_) {
      if (slot* s = find(order_.front()); s && s->taken)
        --s->taken;
      else if (s && s->count)
        --s->count;
      order_.pop_front();
    }
  }

  std::deque<std::uint32_t> order_;
  std::vector<slot> table_;
  std::size_t used_ = 0;
  std::size_t limit_ = 0;
};

} // namespace ferry::detail
