#include "ferry/core/async_scope.hpp"
#include "ferry/core/manual_scheduler.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"
#include "ferry/core/when_all.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

TEST_SUITE("when_all") {
  ferry::task<int> value(int v) {
    co_return v;
  }

  TEST_CASE("the variadic form yields a tuple in argument order") {
    auto [a, b, c] = ferry::sync_wait(
        ferry::when_all(value(1), value(2), []() -> ferry::task<std::string> { co_return "three"; }()));
    CHECK(a == 1);
    CHECK(b == 2);
    CHECK(c == "three");
  }

  TEST_CASE("void results become monostate") {
    int n = 0;
    auto bump = [&]() -> ferry::task<> {
      ++n;
      co_return;
    };
    auto [x, y] = ferry::sync_wait(ferry::when_all(bump(), value(9)));
    (void)x;
    CHECK(y == 9);
    CHECK(n == 1);
  }

  TEST_CASE("all children run concurrently before any finishes") {
    ferry::manual_scheduler sched;
    int started = 0;
    auto child = [&](int v) -> ferry::task<int> {
      ++started;
      co_await sched.schedule();
      co_return v;
    };
    std::vector<ferry::task<int>> children;
    for (int i = 0; i < 5; ++i)
      children.push_back(child(i));
    std::vector<int> out;
    bool done = false;
    auto parent = [&]() -> ferry::task<> {
      out = co_await ferry::when_all(std::move(children));
      done = true;
    };
    ferry::async_scope scope;
    scope.spawn(parent());
    CHECK(started == 5);
    CHECK(sched.pending() == 5);
    CHECK_FALSE(done);
    CHECK(sched.run_one());
    CHECK_FALSE(done);
    CHECK(sched.run_all() == 4);
    CHECK(done);
    CHECK(out == std::vector<int>{0, 1, 2, 3, 4});
    ferry::sync_wait(scope.join());
  }

  TEST_CASE("the range form works over a thousand tasks on a thread pool") {
    ferry::thread_pool pool(2);
    std::atomic<int> running{0};
    auto work = [&](int i) -> ferry::task<int> {
      co_await pool.schedule();
      running.fetch_add(1);
      co_return i * 2;
    };
    std::vector<ferry::task<int>> tasks;
    for (int i = 0; i < 1000; ++i)
      tasks.push_back(work(i));
    auto out = ferry::sync_wait(ferry::when_all(std::move(tasks)));
    REQUIRE(out.size() == 1000);
    for (int i = 0; i < 1000; ++i)
      CHECK(out[static_cast<std::size_t>(i)] == i * 2);
    CHECK(running.load() == 1000);
  }

  TEST_CASE("an exception is rethrown only after every child has finished") {
    int finished = 0;
    auto ok = [&]() -> ferry::task<> {
      ++finished;
      co_return;
    };
    auto bad = [&]() -> ferry::task<> {
      ++finished;
      throw std::runtime_error("child failed");
      co_return;
    };
    std::vector<ferry::task<>> tasks;
    tasks.push_back(ok());
    tasks.push_back(bad());
    tasks.push_back(ok());
    CHECK_THROWS_WITH_AS(ferry::sync_wait(ferry::when_all(std::move(tasks))), "child failed",
                         std::runtime_error);
    CHECK(finished == 3);
  }

  TEST_CASE("an empty range completes at once") {
    std::vector<ferry::task<int>> none;
    CHECK(ferry::sync_wait(ferry::when_all(std::move(none))).empty());
  }
}
