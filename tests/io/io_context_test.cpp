#include "backends.hpp"

#include "../support/refuse_syscall.hpp"

#include "ferry/core/async_scope.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/timer_awaiter.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using ferry::io::io_backend;
using ferry::io::io_context;

namespace {

/// The descriptors of this process that are epoll instances.
std::vector<int> epoll_descriptors() {
  std::vector<int> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string() == "anon_inode:[eventpoll]")
      out.push_back(std::stoi(e.path().filename().string()));
  }
  return out;
}

} // namespace

TEST_SUITE("io_context") {
  TEST_CASE("schedule resumes on the loop and run returns when work runs out") {
    ferry_test::for_each_backend([](io_context& ctx) {
      int steps = 0;
      ferry::async_scope scope;
      auto spawned_1 = [&]() -> ferry::task<> {
        for (int i = 0; i < 100; ++i) {
          co_await ctx.schedule();
          ++steps;
        }
      };
      scope.spawn(spawned_1());
      CHECK(ctx.run() == 100);
      CHECK(steps == 100);
      CHECK(ctx.run() == 0);
      ctx.run_until(scope.join());
    });
  }

  TEST_CASE("poll runs only what is ready and never blocks") {
    ferry_test::for_each_backend([](io_context& ctx) {
      bool slept = false;
      ferry::async_scope scope;
      auto spawned_2 = [&]() -> ferry::task<> {
        auto r = co_await ctx.sleep_for(2s);
        slept = r.has_value();
      };
      scope.spawn(spawned_2());
      auto t0 = std::chrono::steady_clock::now();
      ctx.poll();
      CHECK(std::chrono::steady_clock::now() - t0 < 1s);
      CHECK_FALSE(slept);
      ctx.run_until(scope.join());
      CHECK(slept);
    });
  }

  TEST_CASE("run_one runs exactly one handler") {
    ferry_test::for_each_backend([](io_context& ctx) {
      int a = 0;
      ferry::async_scope scope;
      auto spawned_3 = [&]() -> ferry::task<> {
        co_await ctx.schedule();
        ++a;
      };
      for (int i = 0; i < 3; ++i)
        scope.spawn(spawned_3());
      CHECK(ctx.run_one() == 1);
      CHECK(a == 1);
      CHECK(ctx.poll() == 2);
      CHECK(a == 3);
      ctx.run_until(scope.join());
    });
  }

  TEST_CASE("work scheduled from other threads runs on the loop's thread") {
    ferry_test::for_each_backend([](io_context& ctx) {
      ferry::thread_pool pool(2);
      std::atomic<int> on_loop{0};
      auto loop_thread = std::this_thread::get_id();
      auto hop = [&]() -> ferry::task<> {
        co_await pool.schedule();
        co_await ctx.schedule();
        if (std::this_thread::get_id() == loop_thread)
          on_loop.fetch_add(1);
      };
      ferry::async_scope scope;
      for (int i = 0; i < 500; ++i)
        scope.spawn(hop());
      ctx.run_until(scope.join());
      CHECK(on_loop.load() == 500);
    });
  }

  TEST_CASE("run_until returns when the work it drives ends on another thread") {
    ferry_test::for_each_backend([](io_context& ctx) {
      ferry::thread_pool pool(1);
      auto elsewhere = [&]() -> ferry::task<int> {
        co_await pool.schedule(); // the work ends on the pool's thread, not the loop's
        co_return 7;
      };
      for (int i = 0; i < 200; ++i)
        REQUIRE(ctx.run_until(elsewhere()) == 7);
    });
  }

  TEST_CASE("run_until gives the result of work that ended while the context was stopped") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto at_once = []() -> ferry::task<int> { co_return 5; };
      ctx.stop();
      CHECK(ctx.run_until(at_once()) == 5);
      ctx.restart();
      CHECK(ctx.poll() == 0); // nothing of it was left queued
      CHECK(ctx.run_until(at_once()) == 5);
    });
  }

  TEST_CASE("run_until stopped while its work waits gives the work up without freeing it, and a later run "
            "finishes it") {
    ferry_test::for_each_backend([](io_context& ctx) {
      bool finished = false;
      std::stop_source cancel;
      auto waits = [&]() -> ferry::task<> {
        // a timer in the loop, pointing into this frame
        [[maybe_unused]] auto slept = co_await ctx.sleep_for(10s, cancel.get_token());
        finished = true;
      };
      std::thread stopper([&] {
        std::this_thread::sleep_for(20ms);
        ctx.stop();
      });
      CHECK_THROWS_WITH_AS(ctx.run_until(waits()), doctest::Contains("stopped before the work finished"),
                           std::runtime_error);
      stopper.join();
      CHECK_FALSE(finished);
      cancel.request_stop();
      ctx.restart();
      ctx.run(); // the timer's cancellation resumes the frame, which finishes and frees itself
      CHECK(finished);
    });
  }

  TEST_CASE("run_until whose loop fails gives its unfinished work up without freeing it, and a later run "
            "finishes it") {
    auto before = epoll_descriptors();
    io_context ctx({.backend = io_backend::epoll});
    auto after = epoll_descriptors();
    std::vector<int> made;
    for (int fd : after)
      if (std::find(before.begin(), before.end(), fd) == before.end())
        made.push_back(fd);
    REQUIRE(made.size() == 1); // the context's epoll instance
    const int epoll_fd = made.front();
    bool finished = false;
    std::stop_source cancel;
    auto waits = [&]() -> ferry::task<> {
      // a timer in the loop, pointing into this frame
      [[maybe_unused]] auto slept = co_await ctx.sleep_for(2s, cancel.get_token());
      finished = true;
    };
    // The backend fails: its epoll instance is, for a moment, a descriptor that is not one.
    const int saved = ::dup(epoll_fd);
    REQUIRE(saved >= 0);
    const int not_epoll = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE(not_epoll >= 0);
    REQUIRE(::dup2(not_epoll, epoll_fd) == epoll_fd);
    CHECK_THROWS_AS(ctx.run_until(waits()), std::system_error);
    CHECK_FALSE(finished);
    REQUIRE(::dup2(saved, epoll_fd) == epoll_fd); // the backend works again
    ::close(saved);
    ::close(not_epoll);
    cancel.request_stop();
    auto started = std::chrono::steady_clock::now();
    ctx.run(); // the timer's cancellation resumes the frame, which finishes and frees itself
    CHECK(finished);
    CHECK(std::chrono::steady_clock::now() - started < 1s);
  }

  TEST_CASE("stop makes run return from another thread, and restart lets it run again") {
    ferry_test::for_each_backend([](io_context& ctx) {
      io_context::work_guard guard(ctx); // without it run() would return at once
      std::thread stopper([&] {
        std::this_thread::sleep_for(20ms);
        ctx.stop();
      });
      ctx.run();
      stopper.join();
      CHECK(ctx.stopped());
      ctx.restart();
      guard.reset();
      CHECK(ctx.run() == 0);
    });
  }

  TEST_CASE("an explicit io_uring request fails with the reason when io_uring is unavailable") {
#if FERRY_WITH_URING
    // A child process installs a seccomp filter that refuses io_uring_setup, as container runtimes do.
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::unsetenv("FERRY_IO_BACKEND"); // the fallback decision is what is tested here
      if (!ferry_test::refuse_syscall(__NR_io_uring_setup, EPERM))
        ::_exit(10);
      int code = 0;
      try {
        io_context forced({.backend = io_backend::uring});
        code = 12; // must not succeed
      } catch (const std::system_error& e) {
        if (std::string(e.what()).find("kernel.io_uring_disabled") == std::string::npos)
          code = 13;
      }
      // automatic falls back to epoll, says why, and still works.
      io_context fallback;
      if (fallback.backend() != io_backend::epoll)
        code = 14;
      if (fallback.backend_note().find("using epoll") == std::string::npos)
        code = 15;
      int ran = 0;
      fallback.run_until([&]() -> ferry::task<> {
        co_await fallback.sleep_for(1ms);
        ++ran;
      }());
      if (ran != 1)
        code = 16;
      ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
#else
    CHECK_THROWS_AS(io_context({.backend = io_backend::uring}), std::system_error);
#endif
  }

  TEST_CASE("FERRY_IO_BACKEND selects the backend of an automatic context") {
    ::setenv("FERRY_IO_BACKEND", "epoll", 1);
    io_context ctx;
    ::unsetenv("FERRY_IO_BACKEND");
    CHECK(ctx.backend() == io_backend::epoll);
  }
}
