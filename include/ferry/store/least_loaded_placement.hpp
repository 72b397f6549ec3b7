#pragma once
#include "ferry/store/detail/xorshift.hpp"
#include "ferry/store/placement_request.hpp"
#include "ferry/store/segment_view.hpp"

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

namespace ferry::store {

/// Best of `Choices` random segments by free ratio, per piece ("power of d choices"): close to the
/// least-loaded segment without a global sort, and without every writer piling onto the same one.
///
///   store::master<store::prefix_aware_policy, store::least_loaded_placement<2>> m;   // the default
template<std::size_t Choices = 2>
class least_loaded_placement {
public:
  void place(const placement_request& req, std::span<const segment_view> candidates,
             std::vector<segment_id>& out) {
    taken_.assign(candidates.size(), false);
    std::size_t left = candidates.size();
    while (out.size() < req.count && left > 0) {
      std::size_t best = candidates.size();
      for (std::size_t draw = 0; draw < Choices; ++draw) {
        std::size_t i = rng_() % candidates.size();
        while (taken_[i])
          i = (i + 1) % candidates.size();
        if (best == candidates.size() || candidates[i].free_ratio() > candidates[best].free_ratio())
          best = i;
      }
      taken_[best] = true;
      --left;
      out.push_back(candidates[best].id);
    }
  }

private:
  std::vector<bool> taken_;
  detail::xorshift rng_;
};

} // namespace ferry::store
