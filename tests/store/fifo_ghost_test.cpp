#include "ferry/store/detail/fifo_ghost.hpp"

#include <doctest/doctest.h>

TEST_SUITE("fifo_ghost") {
  TEST_CASE("a key is remembered until it ages out, and taken once") {
    ferry::detail::fifo_ghost g;
    g.set_limit(2);
    g.insert(1);
    g.insert(2);
    CHECK(g.take(1));
    CHECK_FALSE(g.take(1));
    g.insert(3); // 1 ages out
    CHECK(g.take(2));
    CHECK(g.take(3));
  }

  TEST_CASE("a taken occurrence that ages out does not forget a later one of the same key") {
    ferry::detail::fifo_ghost g;
    g.set_limit(2);
    g.insert(7);
    CHECK(g.take(7));
    g.insert(7);
    g.insert(8); // the taken 7 ages out; the second 7 is still within the limit
    CHECK(g.size() == 2);
    CHECK(g.take(7));
    CHECK(g.take(8));
  }

  TEST_CASE("taken occurrences survive a rehash") {
    ferry::detail::fifo_ghost g;
    g.set_limit(1000);
    g.insert(42);
    CHECK(g.take(42));
    for (std::uint64_t k = 100; k < 400; ++k) // grows the table several times
      g.insert(k);
    g.insert(42);
    g.set_limit(300); // the taken 42 and the oldest others age out
    CHECK(g.take(42));
  }
}
