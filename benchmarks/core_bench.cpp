// Micro-benchmarks of ferry's core and io_context, with a raw liburing NOP round trip in the same binary as
// the limit to compare against.
#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/operation.hpp"
#include "ferry/io/timer_awaiter.hpp"

#include <benchmark/benchmark.h>

#include <chrono>
#include <vector>

#if FERRY_WITH_URING
#include <liburing.h>
#endif

namespace {

using ferry::io::io_backend;
using ferry::io::io_context;

ferry::task<int> leaf(int v) {
  co_return v;
}

void task_create_and_await(benchmark::State& state) {
  auto body = [&]() -> ferry::task<> {
    for (auto _ : state)
      benchmark::DoNotOptimize(co_await leaf(1));
  };
  ferry::sync_wait(body());
}
BENCHMARK(task_create_and_await);

void when_all_fan_out_1k(benchmark::State& state) {
  auto body = [&]() -> ferry::task<> {
    for (auto _ : state) {
      std::vector<ferry::task<int>> tasks;
      tasks.reserve(1000);
      for (int i = 0; i < 1000; ++i)
        tasks.push_back(leaf(i));
      auto out = co_await ferry::when_all(std::move(tasks));
      benchmark::DoNotOptimize(out.data());
    }
  };
  ferry::sync_wait(body());
  state.SetItemsProcessed(state.iterations() * 1000);
}
BENCHMARK(when_all_fan_out_1k);

io_backend backend_arg(const benchmark::State& state) {
  return state.range(0) == 0 ? io_backend::epoll : io_backend::uring;
}
void name_backend(benchmark::State& state, const io_context& ctx) {
  state.SetLabel(to_string(ctx.backend()));
}

void io_context_schedule_round_trip(benchmark::State& state) {
  io_context ctx({.backend = backend_arg(state)});
  name_backend(state, ctx);
  auto body = [&]() -> ferry::task<> {
    for (auto _ : state)
      co_await ctx.schedule();
  };
  ctx.run_until(body());
}

void io_context_nop_round_trip(benchmark::State& state) {
  io_context ctx({.backend = backend_arg(state)});
  name_backend(state, ctx);
  auto body = [&]() -> ferry::task<> {
    ferry::io::detail::io_op nop;
    nop.code_ = ferry::io::detail::op_code::nop;
    for (auto _ : state)
      benchmark::DoNotOptimize(co_await ferry::io::operation<void>(ctx, nop, "nop"));
  };
  ctx.run_until(body());
}

void io_context_timer_zero(benchmark::State& state) {
  io_context ctx({.backend = backend_arg(state)});
  name_backend(state, ctx);
  auto body = [&]() -> ferry::task<> {
    for (auto _ : state)
      benchmark::DoNotOptimize(co_await ctx.sleep_for(std::chrono::nanoseconds(0)));
  };
  ctx.run_until(body());
}

void io_context_timer_10us(benchmark::State& state) {
  io_context ctx({.backend = backend_arg(state)});
  name_backend(state, ctx);
  auto body = [&]() -> ferry::task<> {
    for (auto _ : state)
      benchmark::DoNotOptimize(co_await ctx.sleep_for(std::chrono::microseconds(10)));
  };
  ctx.run_until(body());
}

#if FERRY_WITH_URING
constexpr long backends_max = 1;
#else
constexpr long backends_max = 0;
#endif
BENCHMARK(io_context_schedule_round_trip)->DenseRange(0, backends_max);
BENCHMARK(io_context_nop_round_trip)->DenseRange(0, backends_max);
BENCHMARK(io_context_timer_zero)->DenseRange(0, backends_max);
BENCHMARK(io_context_timer_10us)->DenseRange(0, backends_max);

#if FERRY_WITH_URING
// The limit: one NOP through a bare ring, submitted and reaped, with nothing of ferry in between.
void raw_liburing_nop_round_trip(benchmark::State& state) {
  ::io_uring ring;
  if (::io_uring_queue_init(256, &ring, 0) < 0) {
    state.SkipWithError("io_uring_queue_init failed");
    return;
  }
  for (auto _ : state) {
    ::io_uring_sqe* sqe = ::io_uring_get_sqe(&ring);
    ::io_uring_prep_nop(sqe);
    ::io_uring_submit_and_wait(&ring, 1);
    ::io_uring_cqe* cqe = nullptr;
    ::io_uring_peek_cqe(&ring, &cqe);
    benchmark::DoNotOptimize(cqe->res);
    ::io_uring_cqe_seen(&ring, cqe);
  }
  ::io_uring_queue_exit(&ring);
}
BENCHMARK(raw_liburing_nop_round_trip);
#endif

} // namespace

BENCHMARK_MAIN();
