#include "ferry/store/s3fifo_policy.hpp"

#include <doctest/doctest.h>

TEST_SUITE("s3fifo_policy") {
  TEST_CASE("objects read while in the small queue survive one-hit objects") {
    ferry::store::s3fifo_policy p;
    for (std::uint32_t i = 0; i < 20; ++i)
      p.insert(i, {.key_hash = i});
    for (std::uint32_t i = 0; i < 20; i += 2)
      p.touch(i);
    for (int n = 0; n < 9; ++n) {
      auto v = p.victim([](std::uint32_t) { return true; });
      CHECK(v % 2 == 1);
      p.erase(v, v, true);
    }
  }

  TEST_CASE("a key evicted from the small queue and put again enters main and outlives new keys") {
    ferry::store::s3fifo_policy p;
    for (std::uint32_t i = 0; i < 10; ++i)
      p.insert(i, {.key_hash = i});
    auto v = p.victim([](std::uint32_t) { return true; });
    CHECK(v == 0);
    p.erase(v, 0, true);
    p.insert(0, {.key_hash = 0}); // ghost hit
    for (int n = 0; n < 9; ++n) {
      auto w = p.victim([](std::uint32_t) { return true; });
      CHECK(w != 0);
      p.erase(w, w, true);
    }
    CHECK(p.size() == 1);
  }

  TEST_CASE("it gives up when nothing is evictable") {
    ferry::store::s3fifo_policy p;
    for (std::uint32_t i = 0; i < 5; ++i)
      p.insert(i, {.key_hash = i});
    CHECK(p.victim([](std::uint32_t) { return false; }) == ferry::store::entry_hint::no_parent);
  }
  TEST_CASE("objects in the small queue that cannot be evicted do not hide the main queue's") {
    ferry::store::s3fifo_policy p;
    for (std::uint32_t i = 0; i < 9; ++i) {
      p.insert(i, {.key_hash = i});
      p.touch(i);
    }
    // every object was read: the first call moves them all to main and takes one back out of it
    auto first = p.victim([](std::uint32_t) { return true; });
    CHECK(first < 9);
    p.insert(9, {.key_hash = 9}); // alone in the small queue, and (say) leased
    auto v = p.victim([](std::uint32_t id) { return id != 9; });
    CHECK(v < 9);
    CHECK(p.victim([](std::uint32_t) { return false; }) == ferry::store::entry_hint::no_parent);
  }
  TEST_CASE("an object that cannot be evicted in the main queue does not hide a hot one behind it") {
    ferry::store::s3fifo_policy p;
    for (std::uint32_t i = 0; i < 2; ++i) {
      p.insert(i, {.key_hash = i});
      p.touch(i);
    }
    p.insert(2, {.key_hash = 2});
    // 2 leaves (read never); 0 and 1 move to main
    REQUIRE(p.victim([](std::uint32_t) { return true; }) == 2);
    p.erase(2, 2, true);
    p.touch(1);
    p.touch(1); // main: 0 (pinned, say), then 1 read twice more
    CHECK(p.victim([](std::uint32_t id) { return id != 0; }) == 1);
  }
}
