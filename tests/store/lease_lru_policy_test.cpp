#include "ferry/store/lease_lru_policy.hpp"

#include <doctest/doctest.h>

TEST_SUITE("lease_lru_policy") {
  TEST_CASE("with more samples than objects it evicts exactly the least recently leased") {
    ferry::store::lease_lru_policy<64> p;
    for (std::uint32_t i = 0; i < 8; ++i)
      p.insert(i, {});
    for (std::uint32_t i = 0; i < 8; ++i)
      if (i != 5)
        p.touch(i);
    CHECK(p.victim([](std::uint32_t) { return true; }) == 5);
    p.erase(5, 0, true);
    CHECK(p.size() == 7);
    CHECK(p.victim([](std::uint32_t id) { return id == 3; }) == 3);
    CHECK(p.victim([](std::uint32_t) { return false; }) == ferry::store::entry_hint::no_parent);
  }
}
