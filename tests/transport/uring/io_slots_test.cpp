#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/transport/uring/detail/io_slots.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <vector>

using ferry::io::io_context;

TEST_SUITE("io_slots") {
  TEST_CASE("at most the limit hold a slot at once, and waiters get theirs in arrival order") {
    io_context ctx;
    ferry::detail::io_slots slots(ctx, 2);
    std::vector<int> order;
    std::size_t most = 0;
    auto user = [&](int id) -> ferry::task<> {
      co_await slots.acquire();
      order.push_back(id);
      most = std::max(most, slots.in_use());
      co_await ctx.schedule(); // hold the slot across a trip through the loop
      co_await ctx.schedule();
      slots.release();
    };
    std::vector<ferry::task<>> users;
    for (int i = 0; i < 6; ++i)
      users.push_back(user(i));
    ctx.run_until(ferry::when_all(std::move(users)));
    CHECK(most == 2);
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5});
    CHECK(slots.in_use() == 0);
  }
}
