#pragma once
// A binary min-heap of timers by deadline that knows each timer's slot, so a cancelled timer is removed in
// O(log n) without a search and without allocating a node per timer.

#include "ferry/io/detail/io_op.hpp"

#include <cstddef>
#include <utility>
#include <vector>

namespace ferry::io::detail {

class timer_heap {
public:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

  bool empty() const noexcept { return heap_.empty(); }
  std::size_t size() const noexcept { return heap_.size(); }
  timer_op* top() const noexcept { return heap_.front(); }

  void push(timer_op* t) {
    t->heap_index_ = heap_.size();
    heap_.push_back(t);
    sift_up(t->heap_index_);
  }

  /// Removes `t` if it is in the heap; returns whether it was.
  bool remove(timer_op* t) noexcept {
    std::size_t i = t->heap_index_;
    if (i >= heap_.size() || heap_[i] != t)
      return false;
    std::size_t last = heap_.size() - 1;
    if (i != last) {
      place(i, heap_[last]);
      heap_.pop_back();
      if (!sift_up(i))
        sift_down(i);
    } else {
      heap_.pop_back();
    }
    t->heap_index_ = npos;
    return true;
  }

private:
  void place(std::size_t i, timer_op* t) noexcept {
    heap_[i] = t;
    t->heap_index_ = i;
  }
  bool sift_up(std::size_t i) noexcept {
    bool moved = false;
    while (i > 0) {
      std::size_t parent = (i - 1) / 2;
      if (!(heap_[i]->deadline_ < heap_[parent]->deadline_))
        break;
      timer_op* p = heap_[parent];
      place(parent, heap_[i]);
      place(i, p);
      i = parent;
      moved = true;
    }
    return moved;
  }
  void sift_down(std::size_t i) noexcept {
    for (;;) {
      std::size_t l = 2 * i + 1, r = l + 1, m = i;
      if (l < heap_.size() && heap_[l]->deadline_ < heap_[m]->deadline_)
        m = l;
      if (r < heap_.size() && heap_[r]->deadline_ < heap_[m]->deadline_)
        m = r;
      if (m == i)
        return;
      timer_op* t = heap_[m];
      place(m, heap_[i]);
      place(i, t);
      i = m;
    }
  }

  std::vector<timer_op*> heap_;
};

} // namespace ferry::io::detail
