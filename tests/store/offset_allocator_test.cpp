#include "ferry/store/offset_allocator.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <vector>

using ferry::store::allocation;
using ferry::store::offset_allocator;

TEST_SUITE("offset_allocator") {
  TEST_CASE("size classes round up to a bin that always fits and down to one that never overstates") {
    for (std::uint64_t size : {1ull, 7ull, 8ull, 9ull, 100ull, 4095ull, 4096ull, 65537ull, 1ull << 40}) {
      CHECK(ferry::detail::bin_size(ferry::detail::bin_round_up(size)) >= size);
      CHECK(ferry::detail::bin_size(ferry::detail::bin_round_down(size)) <= size);
    }
  }

  TEST_CASE("allocations are disjoint and freeing everything merges back into one range") {
    offset_allocator a(1 << 20);
    std::vector<allocation> live;
    std::mt19937_64 rng(7);
    for (int i = 0; i < 200; ++i) {
      auto r = a.allocate(1 + rng() % 5000);
      REQUIRE(r);
      live.push_back(*r);
    }
    std::sort(live.begin(), live.end(), [](auto& x, auto& y) { return x.offset < y.offset; });
    for (std::size_t i = 1; i < live.size(); ++i)
      CHECK(live[i - 1].offset + live[i - 1].size <= live[i].offset);
    std::shuffle(live.begin(), live.end(), rng);
    for (auto& r : live)
      a.free(r);
    auto rep = a.report();
    CHECK(rep.used == 0);
    CHECK(rep.free_ranges == 1);
    CHECK(rep.largest_free == 1 << 20);
    CHECK(rep.fragmentation() == doctest::Approx(0.0));
  }

  TEST_CASE("a full segment refuses and a freed range is reused") {
    offset_allocator a(4096);
    auto x = a.allocate(4096);
    REQUIRE(x);
    CHECK_FALSE(a.allocate(1));
    CHECK_FALSE(a.can_allocate(1));
    a.free(*x);
    CHECK(a.can_allocate(4096));
    CHECK(a.allocate(4096)->offset == 0);
  }

  TEST_CASE("the report shows fragmentation when free space is split") {
    offset_allocator a(64 * 1024);
    std::vector<allocation> blocks;
    for (int i = 0; i < 64; ++i)
      blocks.push_back(*a.allocate(1024));
    for (int i = 0; i < 64; i += 2)
      a.free(blocks[i]);
    auto rep = a.report();
    CHECK(rep.used == 32 * 1024);
    CHECK(rep.free_ranges == 32);
    CHECK(rep.largest_free == 1024);
    CHECK(rep.fragmentation() > 0.9);
    CHECK_FALSE(a.allocate(2048));
  }

  TEST_CASE("a request is never refused while a large enough free range exists") {
    // Twenty free ranges of 1000 bytes and one of 1023 share a size class; the 1023 one was freed first, so
    // it sits last in the class's list, far past where a bounded look would stop.
    REQUIRE(ferry::detail::bin_round_down(1000) == ferry::detail::bin_round_down(1023));
    constexpr std::uint64_t small = 1000, large = 1023, pad = 8, count = 20;
    offset_allocator a(large + pad + count * (small + pad));
    auto big = a.allocate(large);
    REQUIRE(big);
    REQUIRE(a.allocate(pad));
    std::vector<allocation> smalls;
    for (std::uint64_t i = 0; i < count; ++i) {
      smalls.push_back(*a.allocate(small));
      REQUIRE(a.allocate(pad)); // keeps the free ranges from merging
    }
    CHECK_FALSE(a.can_allocate(1));
    a.free(*big);
    for (auto& s : smalls)
      a.free(s);
    auto fit = a.allocate(1020);
    REQUIRE(fit);
    CHECK(fit->offset == 0);
    CHECK_FALSE(a.can_allocate(1001));
  }

  TEST_CASE("freeing something that is not a live allocation is a logic error") {
    offset_allocator a(1024);
    auto x = *a.allocate(100);
    a.free(x);
    CHECK_THROWS_AS(a.free(x), std::logic_error);
    CHECK_THROWS_AS(offset_allocator(0), std::invalid_argument);
  }
}
