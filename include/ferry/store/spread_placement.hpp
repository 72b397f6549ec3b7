#pragma once
#include "ferry/store/placement_request.hpp"
#include "ferry/store/segment_view.hpp"

#include <algorithm>
#include <span>
#include <string_view>
#include <vector>

namespace ferry::store {

/// Pieces on distinct hosts where possible (a host failure then costs at most one replica), each host's
/// freest segment first; falls back to distinct segments of already used hosts when hosts run out.
///
///   store::master<store::prefix_aware_policy, store::spread_placement> m;
class spread_placement {
public:
  void place(const placement_request& req, std::span<const segment_view> candidates,
             std::vector<segment_id>& out) {
    order_.assign(candidates.begin(), candidates.end());
    std::stable_sort(order_.begin(), order_.end(), [](const segment_view& a, const segment_view& b) {
      return a.free_ratio() > b.free_ratio();
    });
    hosts_.clear();
    used_.assign(order_.size(), false);
    for (std::size_t i = 0; i < order_.size() && out.size() < req.count; ++i) {
      if (std::find(hosts_.begin(), hosts_.end(), order_[i].host) != hosts_.end())
        continue;
      hosts_.push_back(order_[i].host);
      used_[i] = true;
      out.push_back(order_[i].id);
    }
    for (std::size_t i = 0; i < order_.size() && out.size() < req.count; ++i)
      if (!used_[i])
        out.push_back(order_[i].id);
  }

private:
  std::vector<segment_view> order_;
  std::vector<std::string_view> hosts_;
  std::vector<bool> used_;
};

} // namespace ferry::store
