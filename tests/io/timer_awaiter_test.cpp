#include "backends.hpp"

#include "ferry/core/async_scope.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/timer_awaiter.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <stop_token>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using ferry::io::io_context;
using clock_type = std::chrono::steady_clock;

TEST_SUITE("timers") {
  TEST_CASE("sleep_for completes no earlier than asked") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto t0 = clock_type::now();
      auto r = ctx.run_until(ctx.sleep_for(20ms));
      CHECK(r.has_value());
      CHECK(clock_type::now() - t0 >= 20ms);
    });
  }

  TEST_CASE("timers fire in deadline order") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::vector<int> order;
      ferry::async_scope scope;
      auto spawned_1 = [&](int d) -> ferry::task<> {
        co_await ctx.sleep_for(std::chrono::milliseconds(d));
        order.push_back(d);
      };
      for (int ms : {30, 10, 20})
        scope.spawn(spawned_1(ms));
      ctx.run_until(scope.join());
      CHECK(order == std::vector<int>{10, 20, 30});
    });
  }

  TEST_CASE("a sleep cancelled midway completes at once as cancelled and never fires later") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::stop_source stop;
      int resumed = 0;
      ferry::result<void> r;
      ferry::async_scope scope;
      auto spawned_2 = [&]() -> ferry::task<> {
        r = co_await ctx.sleep_for(10s, stop.get_token());
        ++resumed;
      };
      scope.spawn(spawned_2());
      auto t0 = clock_type::now();
      ctx.run_until([&]() -> ferry::task<> {
        co_await ctx.sleep_for(5ms);
        stop.request_stop();
        co_await scope.join();
      }());
      CHECK(clock_type::now() - t0 < 5s);
      REQUIRE_FALSE(r);
      CHECK(r.error() == ferry::errc::cancelled);
      // Run the loop past when the timer would have fired: nothing resumes twice, nothing is left.
      ctx.run_until(ctx.sleep_for(20ms));
      CHECK(resumed == 1);
      CHECK(ctx.run() == 0);
    });
  }

  TEST_CASE("a stop requested from another thread cancels a sleep") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::stop_source stop;
      std::thread t([&] {
        std::this_thread::sleep_for(10ms);
        stop.request_stop();
      });
      auto r = ctx.run_until(ctx.sleep_for(10s, stop.get_token()));
      t.join();
      REQUIRE_FALSE(r);
      CHECK(r.error() == ferry::errc::cancelled);
    });
  }

  TEST_CASE("a sleep whose token is already stopped does not wait") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::stop_source stop;
      stop.request_stop();
      auto r = ctx.run_until(ctx.sleep_for(10s, stop.get_token()));
      CHECK(r.error() == ferry::errc::cancelled);
    });
  }

  TEST_CASE("ten thousand concurrent timers all complete") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::vector<ferry::task<ferry::result<void>>> sleeps;
      auto one = [&](int i) -> ferry::task<ferry::result<void>> {
        co_return co_await ctx.sleep_for(std::chrono::microseconds(i % 997));
      };
      for (int i = 0; i < 10000; ++i)
        sleeps.push_back(one(i));
      auto results = ctx.run_until(ferry::when_all(std::move(sleeps)));
      int ok = 0;
      for (auto& r : results)
        ok += r.has_value();
      CHECK(ok == 10000);
    });
  }

  TEST_CASE("a deadline stops its token when it expires and says so") {
    ferry_test::for_each_backend([](io_context& ctx) {
      ferry::io::deadline dl(ctx, 10ms);
      auto r = ctx.run_until(ctx.sleep_for(10s, dl.token()));
      REQUIRE_FALSE(r);
      CHECK(dl.expired());
    });
  }

  TEST_CASE("a deadline destroyed before it expires leaves nothing behind") {
    ferry_test::for_each_backend([](io_context& ctx) {
      {
        ferry::io::deadline dl(ctx, 10s);
        CHECK_FALSE(dl.token().stop_requested());
      }
      CHECK(ctx.run() == 0); // no timer left: run returns at once
    });
  }

  TEST_CASE("a deadline follows its parent token") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::stop_source parent;
      ferry::io::deadline dl(ctx, 10s, parent.get_token());
      parent.request_stop();
      CHECK(dl.token().stop_requested());
      CHECK_FALSE(dl.expired());
    });
  }
  TEST_CASE(
      "a deadline given a progress count waits while the count moves and fires a period after it stops") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::uint64_t count = 0;
      int reads = 0;
      ferry::io::deadline dl(ctx, 100ms, ferry::io::progress{[&] {
                               ++reads;
                               return count;
                             }});
      auto t0 = clock_type::now();
      // the count moves every 20 ms for 400 ms: four periods, and the deadline holds
      auto moving = [&]() -> ferry::task<> {
        for (int i = 0; i < 20; ++i) {
          co_await ctx.sleep_for(20ms);
          ++count;
        }
      };
      ctx.run_until(moving());
      auto stopped_moving = clock_type::now();
      CHECK_FALSE(dl.token().stop_requested());
      auto r = ctx.run_until(ctx.sleep_for(2s, dl.token()));
      REQUIRE_FALSE(r);
      CHECK(dl.expired());
      auto silent = clock_type::now() - stopped_moving;
      CHECK(silent >= 95ms); // never before a whole period without progress (5 ms: when the count last moved)
      CHECK(silent < 400ms);
      CHECK(reads >= 4);
      // one reading half a period in, then one a period: as many as the whole time holds (sleeps run late on
      // a loaded machine), and no more
      CHECK(reads <= (clock_type::now() - t0) / 100ms + 2);
    });
  }

  TEST_CASE("a deadline given a progress count that never moves fires after one and a half periods") {
    ferry_test::for_each_backend([](io_context& ctx) {
      ferry::io::deadline dl(ctx, 100ms, ferry::io::progress{[] { return std::uint64_t{7}; }});
      auto t0 = clock_type::now();
      auto r = ctx.run_until(ctx.sleep_for(2s, dl.token()));
      REQUIRE_FALSE(r);
      CHECK(dl.expired());
      CHECK(clock_type::now() - t0 >= 150ms);
      CHECK(clock_type::now() - t0 < 600ms);
    });
  }

  TEST_CASE("a count that moves less than the least progress asked for is a stall") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::uint64_t count = 0;
      ferry::io::deadline dl(ctx, 100ms, ferry::io::progress{[&] { return count; }, 1000});
      auto t0 = clock_type::now();
      // a trickle: one unit every 10 ms, some 10 a period against the 1000 asked for
      auto trickle = [&]() -> ferry::task<> {
        for (int i = 0; i < 100 && !dl.token().stop_requested(); ++i) {
          co_await ctx.sleep_for(10ms);
          ++count;
        }
      };
      ctx.run_until(trickle());
      CHECK(dl.expired());
      CHECK(clock_type::now() - t0 >= 150ms);
      CHECK(clock_type::now() - t0 < 600ms);
    });
  }

  TEST_CASE("an operation that ends within half its stall period never reads the progress count") {
    ferry_test::for_each_backend([](io_context& ctx) {
      int reads = 0;
      {
        ferry::io::deadline dl(ctx, 100ms, ferry::io::progress{[&] {
                                 ++reads;
                                 return std::uint64_t{0};
                               }});
        CHECK(ctx.run_until(ctx.sleep_for(20ms, dl.token())).has_value());
      }
      CHECK(reads == 0);
      CHECK(ctx.run() == 0); // the withdrawn timer left nothing behind
    });
  }
}
