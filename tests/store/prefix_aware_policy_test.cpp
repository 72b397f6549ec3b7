#include "ferry/store/prefix_aware_policy.hpp"

#include <doctest/doctest.h>

#include <limits>
#include <random>
#include <set>
#include <vector>

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

  TEST_CASE(
      "the victim is the one a walk over every block finds, through inserts reads evictions and removals") {
    // Random chains (a new block continues a cached block or starts a chain), partial ends, reads, evictions
    // and explicit removals; blocks that cannot be evicted come and go; evicted keys come back (from the
    // ghost list, into the protected segment). At every eviction and every seventh step, victim() must
    // choose what the plain walk from the front of each segment chooses. The blocks' place numbers start in
    // the middle of their range, near its end (renumbered when they run out at the back) and near 0 (at the
    // front).
    for (std::uint32_t first_order :
         {std::uint32_t{1} << 30, std::numeric_limits<std::uint32_t>::max() - 3000, std::uint32_t{2}}) {
      CAPTURE(first_order);
      std::mt19937 rng(20261128);
      prefix_aware_policy p(first_order);
      std::vector<std::uint32_t> cached;
      std::vector<std::uint32_t> free_ids;
      std::uint32_t next_id = 0;
      std::set<std::uint32_t> stuck; // leased or pinned: not evictable now
      auto evictable = [&](std::uint32_t id) { return stuck.count(id) == 0; };
      auto pick = [&] {
        return cached[std::uniform_int_distribution<std::size_t>(0, cached.size() - 1)(rng)];
      };
      for (int step = 0; step < 20000; ++step) {
        const int what = std::uniform_int_distribution<int>(0, 9)(rng);
        if (cached.empty() || what <= 3) {
          std::uint32_t id = free_ids.empty() ? next_id++ : free_ids.back();
          if (!free_ids.empty())
            free_ids.pop_back();
          entry_hint h{.key_hash = id}; // a reused id is a key evicted before: it may come back protected
          if (!cached.empty() && what != 0)
            h.parent = pick();
          h.partial_tail = what == 1;
          p.insert(id, h);
          cached.push_back(id);
        } else if (what == 4) {
          p.touch(pick());
        } else if (what == 5) {
          auto id = pick();
          if (!stuck.erase(id))
            stuck.insert(id);
        } else {
          auto expected = p.victim_by_walk(evictable);
          auto v = what <= 7 ? p.victim(evictable) : pick(); // 8, 9: an explicit removal
          if (what <= 7)
            REQUIRE(v == expected);
          if (v == ferry::detail::no_index)
            continue;
          p.erase(v, v, what <= 7);
          std::erase(cached, v);
          stuck.erase(v);
          free_ids.push_back(v);
        }
        if (step % 7 == 0)
          REQUIRE(p.victim(evictable) == p.victim_by_walk(evictable));
      }
      CHECK(p.size() == cached.size());
    }
  }

  TEST_CASE("the victim stays the least recently used tail when place numbers run out at either end") {
    SUBCASE("at the back") {
      prefix_aware_policy p(std::numeric_limits<std::uint32_t>::max() - 1);
      p.insert(0, {.key_hash = 0});
      p.insert(1, {.key_hash = 1}); // the numbers run out here
      p.insert(2, {.key_hash = 2, .parent = 1});
      CHECK(p.victim(any) == 0);
      CHECK(p.victim_by_walk(any) == 0);
    }
    SUBCASE("at the front") {
      prefix_aware_policy p(1);
      p.insert(0, {.key_hash = 0});
      p.insert(1, {.key_hash = 1, .partial_tail = true}); // in front of 0
      p.insert(2, {.key_hash = 2, .partial_tail = true}); // in front of 1: the numbers run out here
      for (std::uint32_t expect : {2u, 1u, 0u}) {
        CHECK(p.victim(any) == expect);
        CHECK(p.victim_by_walk(any) == expect);
        p.erase(expect, expect, true);
      }
    }
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
