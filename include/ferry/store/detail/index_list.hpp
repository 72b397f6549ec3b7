#pragma once
#include "ferry/store/detail/chunked_array.hpp"

#include <cstdint>
#include <limits>

namespace ferry::detail {

inline constexpr std::uint32_t no_index = std::numeric_limits<std::uint32_t>::max();

/// The links of an id in one of several index_lists that share a link table.
struct list_links {
  std::uint32_t prev = no_index;
  std::uint32_t next = no_index;
};

/// An intrusive doubly-linked list of u32 ids whose links live in a shared table, so that a policy keeps
/// 8 bytes per entry instead of a heap node. An id is in at most one list of a table at a time.
///
///   chunked_array<list_links> links; index_list lru; lru.push_back(links, 5); lru.pop_front(links);
class index_list {
public:
  std::uint32_t front() const noexcept { return head_; }
  std::uint32_t back() const noexcept { return tail_; }
  std::uint32_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

  template<class Links>
  void push_back(Links&& links, std::uint32_t id) noexcept {
    links[id] = {tail_, no_index};
    if (tail_ != no_index)
      links[tail_].next = id;
    else
      head_ = id;
    tail_ = id;
    ++size_;
  }

  template<class Links>
  void push_front(Links&& links, std::uint32_t id) noexcept {
    links[id] = {no_index, head_};
    if (head_ != no_index)
      links[head_].prev = id;
    else
      tail_ = id;
    head_ = id;
    ++size_;
  }

  template<class Links>
  void erase(Links&& links, std::uint32_t id) noexcept {
    auto [prev, next] = links[id];
    if (prev != no_index)
      links[prev].next = next;
    else
      head_ = next;
    if (next != no_index)
      links[next].prev = prev;
    else
      tail_ = prev;
    links[id] = {};
    --size_;
  }

  template<class Links>
  void move_to_back(Links&& links, std::uint32_t id) noexcept {
    if (tail_ == id)
      return;
    erase(links, id);
    push_back(links, id);
  }

private:
  std::uint32_t head_ = no_index;
  std::uint32_t tail_ = no_index;
  std::uint32_t size_ = 0;
};

} // namespace ferry::detail
