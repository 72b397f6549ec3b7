// ferry's awaitables work from a coroutine type that ferry knows nothing about.
#include "backends.hpp"

#include "ferry/core/manual_scheduler.hpp"
#include "ferry/core/resume_on.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/io/timer_awaiter.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <coroutine>
#include <exception>
#include <vector>

using namespace std::chrono_literals;

namespace {

/// The smallest eager, fire-and-forget coroutine an application might have: no ferry types inside.
struct fire_and_forget {
  struct promise_type {
    fire_and_forget get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

} // namespace

TEST_SUITE("foreign coroutines") {
  TEST_CASE("a coroutine of another type awaits a socket read, a timer and when_all") {
    ferry_test::for_each_backend([](ferry::io::io_context& ctx) {
      auto l = ferry::io::tcp_listener::listen(ctx, *ferry::io::endpoint::parse("127.0.0.1:0"));
      REQUIRE(l);
      bool done = false;
      std::size_t got = 0;
      bool slept = false;
      int sum = 0;
      auto app = [&]() -> fire_and_forget {
        auto s = co_await ferry::io::tcp_socket::connect(ctx, *l->local_endpoint());
        auto peer = co_await l->accept();
        if (!s || !peer)
          co_return;
        std::vector<std::byte> msg(5, std::byte{1}), buf(5);
        co_await peer->send_all(msg);
        auto n = co_await s->recv(buf); // a ferry socket read
        got = n ? *n : 0;
        slept = (co_await ctx.sleep_for(1ms)).has_value(); // a ferry timer
        auto one = []() -> ferry::task<int> { co_return 1; };
        auto [a, b] = co_await ferry::when_all(one(), one()); // when_all
        sum = a + b;
        done = true;
      };
      app();
      while (!done && ctx.run_one()) {
      }
      CHECK(done);
      CHECK(got == 5);
      CHECK(slept);
      CHECK(sum == 2);
    });
  }

  TEST_CASE("a foreign coroutine names the scheduler it resumes on") {
    ferry_test::for_each_backend([](ferry::io::io_context& ctx) {
      ferry::manual_scheduler sched;
      bool resumed = false;
      auto app = [&]() -> fire_and_forget {
        auto r = co_await ferry::resume_on(sched, ctx.sleep_for(1ms));
        resumed = r.has_value();
      };
      app();
      while (ctx.run_one()) {
      }
      CHECK_FALSE(resumed); // the timer fired, but the continuation waits for its scheduler
      CHECK(sched.run_one());
      CHECK(resumed);
    });
  }
}
