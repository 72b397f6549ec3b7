#pragma once
#include "ferry/store/placement_request.hpp"
#include "ferry/store/segment_view.hpp"

#include <algorithm>
#include <span>
#include <vector>

namespace ferry::store {

/// The requested segment first, then segments on the requested host, then the rest by free ratio.
/// A writer that names its own segment keeps its KV cache local when it fits.
///
///   m.put_start("k", n, {.preferred_segment = my_segment, .preferred_host = "10.0.0.7"});
class preferred_placement {
public:
  void place(const placement_request& req, std::span<const segment_view> candidates,
             std::vector<segment_id>& out) {
    order_.assign(candidates.begin(), candidates.end());
    auto rank = [&](const segment_view& v) {
      if (req.preferred_segment && v.id == *req.preferred_segment)
        return 0;
      return !req.preferred_host.empty() && v.host == req.preferred_host ? 1 : 2;
    };
    std::stable_sort(order_.begin(), order_.end(), [&](const segment_view& a, const segment_view& b) {
      auto ra = rank(a), rb = rank(b);
      return ra != rb ? ra < rb : a.free_ratio() > b.free_ratio();
    });
    for (std::size_t i = 0; i < order_.size() && out.size() < req.count; ++i)
      out.push_back(order_[i].id);
  }

private:
  std::vector<segment_view> order_;
};

} // namespace ferry::store
