#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <stdexcept>
#include <string>

TEST_SUITE("task") {
  ferry::task<int> forty_two() {
    co_return 42;
  }
  ferry::task<int> add_one(int depth) {
    if (depth == 0)
      co_return 0;
    co_return 1 + co_await add_one(depth - 1);
  }

  TEST_CASE("a task does not run until it is awaited") {
    bool ran = false;
    auto body = [&]() -> ferry::task<> {
      ran = true;
      co_return;
    };
    auto t = body();
    CHECK_FALSE(ran);
    ferry::sync_wait(std::move(t));
    CHECK(ran);
  }

  TEST_CASE("values propagate through nested tasks") {
    auto outer = []() -> ferry::task<std::string> {
      int v = co_await forty_two();
      co_return std::to_string(v);
    };
    CHECK(ferry::sync_wait(outer()) == "42");
  }

  TEST_CASE("move-only values are returned") {
    auto t = []() -> ferry::task<std::unique_ptr<int>> { co_return std::make_unique<int>(7); };
    auto p = ferry::sync_wait(t());
    REQUIRE(p);
    CHECK(*p == 7);
  }

  TEST_CASE("exceptions propagate to the awaiter") {
    auto thrower = []() -> ferry::task<int> {
      throw std::runtime_error("boom");
      co_return 0;
    };
    auto catcher = [&]() -> ferry::task<std::string> {
      try {
        co_await thrower();
      } catch (const std::runtime_error& e) {
        co_return e.what();
      }
      co_return "not thrown";
    };
    CHECK(ferry::sync_wait(catcher()) == "boom");
    CHECK_THROWS_AS(ferry::sync_wait(thrower()), std::runtime_error);
  }

  TEST_CASE("a deep chain of awaits does not grow the stack") {
#if defined(__clang__) || defined(__OPTIMIZE__)
    // why: 100k nested frames would overflow an 8 MiB stack without symmetric transfer.
    CHECK(ferry::sync_wait(add_one(100000)) == 100000);
#else
    // g++ turns symmetric transfer into a tail call only when optimizing; an -O0 build checks a shallow
    // chain.
    MESSAGE("g++ without optimization: symmetric transfer is not a tail call, checking depth 1000 only");
    CHECK(ferry::sync_wait(add_one(1000)) == 1000);
#endif
  }

  TEST_CASE("a task can be awaited as an lvalue") {
    auto outer = []() -> ferry::task<int> {
      auto t = forty_two();
      co_return co_await t;
    };
    CHECK(ferry::sync_wait(outer()) == 42);
  }

  TEST_CASE("an unawaited task is destroyed without running") {
    auto flag = std::make_shared<int>(0);
    {
      auto t = [](std::shared_ptr<int> f) -> ferry::task<> {
        *f = 1;
        co_return;
      }(flag);
      CHECK(flag.use_count() == 2); // the frame holds a copy
    }
    CHECK(flag.use_count() == 1);
    CHECK(*flag == 0);
  }
}
