#include "ferry/store/lru_policy.hpp"

#include <doctest/doctest.h>

TEST_SUITE("lru_policy") {
  TEST_CASE("the least recently used evictable object is the victim") {
    ferry::store::lru_policy p;
    for (std::uint32_t i = 0; i < 4; ++i)
      p.insert(i, {});
    p.touch(0);
    CHECK(p.victim([](std::uint32_t) { return true; }) == 1);
    CHECK(p.victim([](std::uint32_t id) { return id != 1; }) == 2);
    p.erase(1, 0, true);
    CHECK(p.size() == 3);
    CHECK(p.victim([](std::uint32_t) { return false; }) == ferry::store::entry_hint::no_parent);
  }
}
