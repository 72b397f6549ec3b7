#include "ferry/store/preferred_placement.hpp"

#include <doctest/doctest.h>

using namespace ferry::store;

TEST_SUITE("preferred_placement") {
  TEST_CASE("the named segment comes first, then its host, then the freest") {
    std::vector<segment_view> segs{
        {0, "h1", 100, 90}, {1, "h2", 100, 20}, {2, "h3", 100, 80}, {3, "h2", 100, 10}};
    preferred_placement p;
    std::vector<segment_id> out;
    p.place({.piece_size = 5, .count = 4, .preferred_segment = 3, .preferred_host = "h2"}, segs, out);
    CHECK(out == std::vector<segment_id>{3, 1, 0, 2});
  }
}
