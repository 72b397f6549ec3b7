#include "ferry/store/random_placement.hpp"

#include <doctest/doctest.h>

#include <set>

using namespace ferry::store;

TEST_SUITE("random_placement") {
  TEST_CASE("it returns distinct segments and uses all of them over time") {
    std::vector<segment_view> segs{
        {0, "h", 100, 10}, {1, "h", 100, 70}, {2, "h", 100, 40}, {3, "h", 100, 40}};
    random_placement p;
    std::set<segment_id> seen;
    for (int i = 0; i < 200; ++i) {
      std::vector<segment_id> out;
      p.place({.piece_size = 1, .count = 2}, segs, out);
      REQUIRE(out.size() == 2);
      CHECK(out[0] != out[1]);
      seen.insert(out.begin(), out.end());
    }
    CHECK(seen.size() == 4);
  }
}
