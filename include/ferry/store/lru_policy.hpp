#pragma once
#include "ferry/store/detail/chunked_array.hpp"
#include "ferry/store/detail/index_list.hpp"
#include "ferry/store/entry_hint.hpp"

#include <cstddef>
#include <cstdint>

namespace ferry::store {

/// Least recently used first. 8 bytes an object.
///
///   store::master<store::lru_policy> m;
class lru_policy {
public:
  void insert(std::uint32_t id, const entry_hint&) {
    links_.resize(id + 1);
    order_.push_back(links_, id);
  }
  void touch(std::uint32_t id) { order_.move_to_back(links_, id); }
  void erase(std::uint32_t id, std::uint64_t, bool) { order_.erase(links_, id); }
  std::size_t size() const noexcept { return order_.size(); }

  /// The least recently used object that `evictable` accepts (O(skipped objects)).
  template<class Pred>
  std::uint32_t victim(Pred&& evictable) {
    for (auto id = order_.front(); id != detail::no_index; id = links_[id].next)
      if (evictable(id))
        return id;
    return detail::no_index;
  }

private:
  detail::chunked_array<detail::list_links> links_;
  detail::index_list order_;
};

} // namespace ferry::store
