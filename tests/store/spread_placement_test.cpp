#include "ferry/store/spread_placement.hpp"

#include <doctest/doctest.h>

using namespace ferry::store;

TEST_SUITE("spread_placement") {
  TEST_CASE("pieces go to distinct hosts first, the freest segment of each host") {
    std::vector<segment_view> segs{
        {0, "h1", 100, 90}, {1, "h1", 100, 95}, {2, "h2", 100, 10}, {3, "h3", 100, 50}};
    spread_placement p;
    std::vector<segment_id> out;
    p.place({.piece_size = 5, .count = 4}, segs, out);
    REQUIRE(out.size() == 4);
    CHECK(out[0] == 1);
    CHECK(out[1] == 3);
    CHECK(out[2] == 2);
    CHECK(out[3] == 0); // hosts ran out: a distinct segment of a used host
  }
}
