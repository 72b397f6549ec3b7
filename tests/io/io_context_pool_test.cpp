#include "backends.hpp"

#include "ferry/core/async_scope.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/io_context_pool.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/io/timer_awaiter.hpp"

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <set>
#include <thread>

using namespace std::chrono_literals;
using ferry::io::io_context;

TEST_SUITE("io_context_pool") {
  TEST_CASE("each loop of a pool runs on a thread of its own, with timers, and next() goes round them") {
    ferry_test::for_each_backend([](io_context& ctx) {
      std::set<std::thread::id> seen;
      bool back_home = false;
      {
        ferry::io::io_context_pool pool(3, {.backend = ctx.backend()});
        REQUIRE(pool.size() == 3);
        CHECK(&pool.next() == &pool.at(0));
        CHECK(&pool.next() == &pool.at(1));
        CHECK(&pool.next() == &pool.at(2));
        CHECK(&pool.next() == &pool.at(0));
        ctx.run_until([&]() -> ferry::task<> {
          for (std::size_t i = 0; i < pool.size(); ++i) {
            co_await pool.at(i).schedule();
            CHECK(pool.at(i).running_in_this_thread());
            auto slept = co_await pool.at(i).sleep_for(1ms); // a timer of that loop
            CHECK(slept);
            seen.insert(std::this_thread::get_id());
          }
          co_await ctx.schedule();
          back_home = ctx.running_in_this_thread();
        }());
      } // joins the threads: nothing is left on them
      CHECK(seen.size() == 3);
      CHECK(seen.count(std::this_thread::get_id()) == 0);
      CHECK(back_home);
    });
  }

  TEST_CASE("a socket handed to a pool's loop is served there") {
    ferry_test::for_each_backend([](io_context& ctx) {
      ferry::io::io_context_pool pool(1, {.backend = ctx.backend()});
      auto listener = ferry::io::tcp_listener::listen(ctx, *ferry::io::endpoint::parse("127.0.0.2:0"));
      REQUIRE(listener);
      auto where = listener->local_endpoint();
      REQUIRE(where);
      ctx.run_until([&]() -> ferry::task<> {
        ferry::async_scope scope;
        auto peer = [&]() -> ferry::task<> {
          auto c = co_await ferry::io::tcp_socket::connect(ctx, *where);
          REQUIRE(c);
          std::array<std::byte, 5> hello{std::byte{'h'}, std::byte{'e'}, std::byte{'l'}, std::byte{'l'},
                                         std::byte{'o'}};
          REQUIRE(co_await c->send_all(hello));
          std::array<std::byte, 5> echoed{};
          REQUIRE(co_await c->recv_all(echoed));
          CHECK(echoed == hello);
        };
        scope.spawn(peer());
        auto s = co_await listener->accept();
        REQUIRE(s);
        s->move_to(pool.at(0));
        CHECK(&s->context() == &pool.at(0));
        co_await pool.at(0).schedule();
        std::array<std::byte, 5> got{};
        auto r = co_await s->recv_all(got); // on the pool's loop
        CHECK(r);
        auto w = co_await s->send_all(got);
        CHECK(w);
        s->close();
        co_await ctx.schedule();
        co_await scope.join();
      }());
    });
  }
}
