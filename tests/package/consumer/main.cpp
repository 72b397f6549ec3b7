// A program that uses ferry the way an application does: through find_package(ferry) and its headers only.
#include <ferry/core.hpp>
#include <ferry/io.hpp>

#include <chrono>
#include <cstdio>

int main() {
  using namespace std::chrono_literals;
  ferry::io::io_context ctx;
  int v = ctx.run_until([&]() -> ferry::task<int> {
    auto slept = co_await ctx.sleep_for(1ms);
    auto [a, b] = co_await ferry::when_all([]() -> ferry::task<int> { co_return 20; }(),
                                           []() -> ferry::task<int> { co_return 22; }());
    co_return slept ? a + b : -1;
  }());
  std::printf("consumer: io backend %s, result %d\n", ferry::io::to_string(ctx.backend()), v);
#if CONSUMER_HAS_URING
  if (ctx.backend() != ferry::io::io_backend::uring && ctx.backend_note().empty())
    return 2;
#endif
  return v == 42 ? 0 : 1;
}
