#include "ferry/store/prefix_aware_policy.hpp"

#include <doctest/doctest.h>

#include <set>

using ferry::store::entry_hint;
using ferry::store::prefix_aware_policy;

namespace {
bool any(std::uint32_t) {
  return true;
}
} // namespace

TEST_SUITE("prefix_aware_policy") {
  TEST_CASE("it only evicts chain tails, so a cached block never loses its predecessor") {
    prefix_aware_policy p;
    // Three chains of 6 blocks: ids c*10 + i, each linked to the previous one.
    std::set<std::uint32_t> cached;
    for (std::uint32_t c = 0; c < 3; ++c)
      for (std::uint32_t i = 0; i < 6; ++i) {
        std::uint32_t id = c * 10 + i;
        p.insert(id, {.key_hash = id, .parent = i ? id - 1 : entry_hint::no_parent, .depth = i});
        cached.insert(id);
      }
    p.touch(0); // chain 0's head is read: protected, but its tail still goes before it
    while (!cached.empty()) {
      auto v = p.victim(any);
      REQUIRE(v != entry_hint::no_parent);
      CHECK(cached.count(v + 1) == 0); // ids c*10+6.. are never used
      CHECK(p.is_tail(v));
      p.erase(v, v, true);
      cached.erase(v);
    }
    CHECK(p.size() == 0);
  }

  TEST_CASE("when the tail cannot be evicted it takes another tail, not the predecessor") {
    prefix_aware_policy p;
    p.insert(0, {.key_hash = 0});
    p.insert(1, {.key_hash = 1, .parent = 0});
    p.insert(2, {.key_hash = 2});
    auto v = p.victim([](std::uint32_t id) { return id != 1; });
    CHECK(v == 2);
    v = p.victim([](std::uint32_t id) { return id == 0; });
    CHECK(v == 0); // no evictable tail left: the head goes rather than nothing
  }

  TEST_CASE("a partially filled chain end is evicted before older blocks") {
    prefix_aware_policy p;
    p.insert(0, {.key_hash = 0});
    p.insert(1, {.key_hash = 1});
    p.insert(2, {.key_hash = 2, .partial_tail = true});
    CHECK(p.victim(any) == 2);
  }

  TEST_CASE("a block read twice outlives blocks read once, and a recently evicted block returns protected") {
    prefix_aware_policy p;
    for (std::uint32_t i = 0; i < 10; ++i)
      p.insert(i, {.key_hash = 100 + i});
    p.touch(0);
    CHECK(p.victim(any) == 1);
    p.erase(1, 101, true);
    p.insert(1, {.key_hash = 101}); // remembered by the ghost: protected
    for (std::uint32_t expect = 2; expect < 10; ++expect) {
      auto v = p.victim(any);
      CHECK(v == expect);
      p.erase(v, 100 + v, true);
    }
    auto last_two = p.victim(any);
    CHECK(last_two <= 1);
  }

  TEST_CASE("removing a block with cached successors turns them into chain heads") {
    prefix_aware_policy p;
    p.insert(0, {.key_hash = 0});
    p.insert(1, {.key_hash = 1, .parent = 0});
    p.insert(2, {.key_hash = 2, .parent = 0});
    CHECK_FALSE(p.is_tail(0));
    p.erase(0, 0, false);
    CHECK(p.is_tail(1));
    p.insert(0, {.key_hash = 9}); // the slot is reused by an unrelated object
    CHECK(p.is_tail(0));
    CHECK(p.size() == 3);
  }
}
