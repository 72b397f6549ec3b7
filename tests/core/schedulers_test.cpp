#include "ferry/core/async_scope.hpp"
#include "ferry/core/concepts.hpp"
#include "ferry/core/inline_scheduler.hpp"
#include "ferry/core/manual_scheduler.hpp"
#include "ferry/core/resume_on.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <thread>
#include <vector>

static_assert(ferry::scheduler<ferry::inline_scheduler&>);
static_assert(ferry::scheduler<ferry::manual_scheduler&>);
static_assert(ferry::scheduler<ferry::thread_pool&>);
static_assert(ferry::awaitable<ferry::task<int>>);
static_assert(!ferry::awaitable<int>);

TEST_SUITE("schedulers") {
  TEST_CASE("the inline scheduler continues on the same thread without suspending") {
    auto id = ferry::sync_wait([]() -> ferry::task<std::thread::id> {
      co_await ferry::inline_scheduler{}.schedule();
      co_return std::this_thread::get_id();
    }());
    CHECK(id == std::this_thread::get_id());
  }

  TEST_CASE("the manual scheduler runs nothing until told, in FIFO order") {
    ferry::manual_scheduler sched;
    ferry::async_scope scope;
    std::vector<int> order;
    auto spawned_1 = [&](int v) -> ferry::task<> {
      co_await sched.schedule();
      order.push_back(v);
    };
    for (int i = 0; i < 3; ++i)
      scope.spawn(spawned_1(i));
    CHECK(order.empty());
    CHECK(sched.pending() == 3);
    CHECK(sched.run_one());
    CHECK(order == std::vector<int>{0});
    CHECK(sched.run_all() == 2);
    CHECK(order == std::vector<int>{0, 1, 2});
    CHECK_FALSE(sched.run_one());
    ferry::sync_wait(scope.join());
  }

  TEST_CASE("the thread pool resumes work on its workers") {
    ferry::thread_pool pool(2);
    CHECK(pool.size() == 2);
    bool on_worker = ferry::sync_wait([&]() -> ferry::task<bool> {
      co_await pool.schedule();
      co_return pool.on_worker();
    }());
    CHECK(on_worker);
    CHECK_FALSE(pool.on_worker());
  }

  TEST_CASE("a pool destroyed by work running on one of its own workers lets that worker go") {
    auto pool = std::make_unique<ferry::thread_pool>(2);
    bool done = ferry::sync_wait([&]() -> ferry::task<bool> {
      co_await pool->schedule();
      pool.reset(); // on a worker of the pool being destroyed: no join of itself, no terminate
      co_return true;
    }());
    CHECK(done);
    CHECK(pool == nullptr);
  }

  TEST_CASE("resume_on continues on the named scheduler instead of inline") {
    ferry::manual_scheduler sched;
    ferry::async_scope scope;
    bool resumed = false;
    auto ready = []() -> ferry::task<int> { co_return 3; };
    auto spawned_2 = [&]() -> ferry::task<> {
      int v = co_await ferry::resume_on(sched, ready());
      resumed = v == 3;
    };
    scope.spawn(spawned_2());
    CHECK_FALSE(resumed); // parked on the manual scheduler, not resumed inline
    CHECK(sched.run_one());
    CHECK(resumed);
    ferry::sync_wait(scope.join());
  }

  TEST_CASE("resume_on moves the continuation to a pool thread") {
    ferry::thread_pool pool(1);
    auto id = ferry::sync_wait([&]() -> ferry::task<std::thread::id> {
      co_await ferry::resume_on(pool, []() -> ferry::task<> { co_return; }());
      co_return std::this_thread::get_id();
    }());
    CHECK(id != std::this_thread::get_id());
  }
}
