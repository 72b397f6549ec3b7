#include "ferry/store/least_loaded_placement.hpp"

#include <doctest/doctest.h>

using namespace ferry::store;

TEST_SUITE("least_loaded_placement") {
  TEST_CASE("with as many choices as segments it picks the freest, distinct segments") {
    std::vector<segment_view> segs{{0, "h", 100, 10}, {1, "h", 100, 70}, {2, "h", 100, 40}};
    least_loaded_placement<64> p;
    std::vector<segment_id> out;
    p.place({.piece_size = 5, .count = 2}, segs, out);
    REQUIRE(out.size() == 2);
    CHECK(out[0] == 1);
    CHECK(out[1] != 1);
  }

  TEST_CASE("with two choices the fullest segment is chosen less often than the freest") {
    std::vector<segment_view> segs{{0, "h", 100, 5}, {1, "h", 100, 50}, {2, "h", 100, 95}};
    least_loaded_placement<2> p;
    int counts[3] = {0, 0, 0};
    for (int i = 0; i < 3000; ++i) {
      std::vector<segment_id> out;
      p.place({.piece_size = 1, .count = 1}, segs, out);
      ++counts[out.at(0)];
    }
    CHECK(counts[2] > counts[1]);
    CHECK(counts[1] > counts[0]);
  }
}
