#include "ferry/core/async_scope.hpp"
#include "ferry/core/manual_scheduler.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <stop_token>
#include <utility>

TEST_SUITE("async_scope") {
  TEST_CASE("spawned work starts at once and join waits for all of it") {
    ferry::manual_scheduler sched;
    ferry::async_scope scope;
    int finished = 0;
    auto work = [&]() -> ferry::task<> {
      co_await sched.schedule();
      ++finished;
    };
    for (int i = 0; i < 3; ++i)
      scope.spawn(work());
    CHECK(scope.active() == 3);
    bool joined = false;
    auto joiner = [&]() -> ferry::task<> {
      co_await scope.join();
      joined = true;
    };
    ferry::async_scope outer;
    outer.spawn(joiner());
    CHECK_FALSE(joined);
    sched.run_one();
    sched.run_one();
    CHECK_FALSE(joined);
    sched.run_one();
    CHECK(joined);
    CHECK(finished == 3);
    ferry::sync_wait(outer.join());
  }

  TEST_CASE("join resumes only once the finished work and what it held are gone") {
    // why: the joiner may go on to destroy what the work's parameters still refer to (its io_context)
    struct held {
      bool* alive;
      explicit held(bool* a) : alive(a) {}
      held(held&& o) noexcept : alive(std::exchange(o.alive, nullptr)) {}
      ~held() {
        if (alive)
          *alive = false;
      }
    };
    ferry::manual_scheduler sched;
    ferry::async_scope scope;
    bool alive = true, alive_at_join = true;
    auto work = [](ferry::manual_scheduler& s, held) -> ferry::task<> { co_await s.schedule(); };
    scope.spawn(work(sched, held(&alive)));
    auto joiner = [&]() -> ferry::task<> {
      co_await scope.join();
      alive_at_join = alive;
    };
    ferry::async_scope outer;
    outer.spawn(joiner());
    sched.run_one(); // the work ends, and its end resumes the joiner
    CHECK_FALSE(alive_at_join);
    ferry::sync_wait(outer.join());
  }

  TEST_CASE("join completes at once when nothing runs, and the scope can be reused") {
    ferry::async_scope scope;
    ferry::sync_wait(scope.join());
    int n = 0;
    auto spawned_1 = [&]() -> ferry::task<> {
      ++n;
      co_return;
    };
    scope.spawn(spawned_1());
    ferry::sync_wait(scope.join());
    CHECK(n == 1);
    CHECK(scope.active() == 0);
  }

  TEST_CASE("join rethrows the first exception of spawned work") {
    ferry::async_scope scope;
    auto spawned_2 = []() -> ferry::task<> {
      throw std::runtime_error("spawned failure");
      co_return;
    };
    scope.spawn(spawned_2());
    CHECK_THROWS_WITH(ferry::sync_wait(scope.join()), "spawned failure");
  }

  TEST_CASE("request_stop reaches work that took the scope's token") {
    ferry::manual_scheduler sched;
    ferry::async_scope scope;
    bool saw_stop = false;
    auto spawned_3 = [&](std::stop_token token) -> ferry::task<> {
      co_await sched.schedule();
      saw_stop = token.stop_requested();
    };
    scope.spawn(spawned_3(scope.token()));
    scope.request_stop();
    sched.run_all();
    ferry::sync_wait(scope.join());
    CHECK(saw_stop);
  }

  TEST_CASE("thousands of pieces finishing on pool threads are all joined") {
    ferry::thread_pool pool(2);
    ferry::async_scope scope;
    std::atomic<int> n{0};
    auto spawned_4 = [&]() -> ferry::task<> {
      co_await pool.schedule();
      n.fetch_add(1);
    };
    for (int i = 0; i < 5000; ++i)
      scope.spawn(spawned_4());
    ferry::sync_wait(scope.join());
    CHECK(n.load() == 5000);
  }
}
