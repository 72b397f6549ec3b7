#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <thread>

TEST_SUITE("sync_wait") {
  TEST_CASE("sync_wait returns the value of a task") {
    CHECK(ferry::sync_wait([]() -> ferry::task<int> { co_return 5; }()) == 5);
  }

  TEST_CASE("sync_wait works for void and rethrows") {
    int n = 0;
    ferry::sync_wait([&]() -> ferry::task<> {
      ++n;
      co_return;
    }());
    CHECK(n == 1);
    CHECK_THROWS_AS(ferry::sync_wait([]() -> ferry::task<> {
                      throw std::logic_error("x");
                      co_return;
                    }()),
                    std::logic_error);
  }

  TEST_CASE("sync_wait blocks until work finished on another thread") {
    ferry::thread_pool pool(2);
    auto caller = std::this_thread::get_id();
    for (int i = 0; i < 200; ++i) {
      auto id = ferry::sync_wait([&]() -> ferry::task<std::thread::id> {
        co_await pool.schedule();
        co_return std::this_thread::get_id();
      }());
      REQUIRE(id != caller);
    }
  }

  TEST_CASE("sync_wait accepts any awaitable, not only tasks") {
    struct ready_seven {
      bool await_ready() const noexcept { return true; }
      void await_suspend(std::coroutine_handle<>) const noexcept {}
      int await_resume() const noexcept { return 7; }
    };
    CHECK(ferry::sync_wait(ready_seven{}) == 7);
  }
}
