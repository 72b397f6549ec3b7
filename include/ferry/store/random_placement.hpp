#pragma once
#include "ferry/store/detail/xorshift.hpp"
#include "ferry/store/placement_request.hpp"
#include "ferry/store/segment_view.hpp"

#include <algorithm>
#include <span>
#include <vector>

namespace ferry::store {

/// Uniformly random distinct segments.
///
///   store::master<store::prefix_aware_policy, store::random_placement> m;
class random_placement {
public:
  void place(const placement_request& req, std::span<const segment_view> candidates,
             std::vector<segment_id>& out) {
    scratch_.assign(candidates.begin(), candidates.end());
    for (std::size_t i = 0; i < scratch_.size() && out.size() < req.count; ++i) {
      std::swap(scratch_[i], scratch_[i + rng_() % (scratch_.size() - i)]);
      out.push_back(scratch_[i].id);
    }
  }

private:
  std::vector<segment_view> scratch_;
  detail::xorshift rng_;
};

} // namespace ferry::store
