#pragma once
// ferry-bench --mode local --protocol file: reads or writes a file region of this process's own engine
// through the uring transport (io_uring, O_DIRECT), with `queue_depth` requests of `block_size` bytes always
// in flight (each lane of the queue submits its next request as soon as its last one completes, as fio does),
// and reports throughput, IOPS and latency as a table or one JSON object. Part of ferry-bench. Latency is
// that of one transfer of a lane: one request, or --batch-size of them when given.
//
//   ferry-bench --mode local --protocol file --file /nvme/f.dat --operation randread --block-size 4K
//               --queue-depth 64 --duration 10 [--json]

#include <ferry/core.hpp>
#include <ferry/io.hpp>
#include <ferry/transfer.hpp>
#include <ferry/transport/uring/file_engine.hpp>

#include <nlohmann/json.hpp>

#include "latency_histogram.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

namespace ferry_bench {

struct file_options {
  std::string path;
  std::string operation = "read"; // read | write | randread
  std::uint64_t block_size = 1ull << 20;
  unsigned queue_depth = 32;
  unsigned batch_size = 1;     // requests per transfer() of one lane
  std::uint64_t file_size = 0; // 0: the file's size (a new file for writes: 1 GiB)
  bool direct = true;
  bool sqpoll = false;
  double duration = 10;
  bool json = false;
  bool fixed_buffers = true; ///< register the local buffers with io_uring
  double timeout = 10;       ///< seconds one transfer() may take before the run fails
  /// Set (by a signal handler) to end the run early: what was measured so far is reported.
  const std::atomic<bool>* interrupted = nullptr;
};

namespace detail {

using clock_type = std::chrono::steady_clock;

struct file_run {
  file_run(const file_options& options, ferry::file_engine& e) : o(options), engine(e) {}
  const file_options& o;
  ferry::file_engine& engine;
  std::uint64_t region = 0;     // segment offset of the file region
  std::uint64_t blocks = 0;     // blocks of block_size in the region
  std::uint64_t next_block = 0; // sequential cursor shared by the lanes
  clock_type::time_point end_at{};
  bool measuring = false;
  std::uint64_t bytes = 0;
  std::uint64_t requests = 0;
  std::uint64_t batches = 0;
  latency_histogram latencies;
  std::string failure;
};

inline ferry::task<> lane(file_run& run, std::byte* local, unsigned seed, std::uint64_t warm_requests) {
  std::mt19937_64 rng(seed);
  const bool write = run.o.operation == "write";
  const bool random = run.o.operation == "randread";
  std::uint64_t done = 0;
  for (;;) {
    bool measured = run.measuring;
    if (measured ? clock_type::now() >= run.end_at : done >= warm_requests)
      co_return;
    if (run.o.interrupted && run.o.interrupted->load())
      co_return;
    if (!run.failure.empty())
      co_return;
    ferry::transfer_batch b;
    for (unsigned i = 0; i < run.o.batch_size; ++i) {
      std::uint64_t block = random ? rng() % run.blocks : run.next_block++ % run.blocks;
      std::uint64_t at = run.region + block * run.o.block_size;
      std::byte* mem = local + i * run.o.block_size;
      if (write)
        b.write(mem, ferry::file_engine::self, at, run.o.block_size);
      else
        b.read(mem, ferry::file_engine::self, at, run.o.block_size);
    }
    auto t0 = clock_type::now();
    auto r = co_await run.engine.transfer(
        std::move(b),
        ferry::transfer_options().with_timeout(std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::duration<double>(run.o.timeout))));
    auto t1 = clock_type::now();
    if (!r.ok()) {
      run.failure = "a " + run.o.operation + " of " + run.o.path + " failed: " + r.first_error().message();
      co_return;
    }
    done += run.o.batch_size;
    if (measured && run.measuring) {
      run.bytes += r.bytes();
      run.requests += run.o.batch_size;
      ++run.batches;
      run.latencies.record(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
  }
}

inline ferry::task<int> run_file(ferry::io::io_context& ctx, ferry::file_engine& engine,
                                 const file_options& o) {
  const bool write = o.operation == "write";
  ferry::uring_file_options fo;
  fo.permissions = write ? ferry::access::read_write : ferry::access::read;
  fo.create = write;
  fo.direct = o.direct;
  fo.queue_depth = o.queue_depth * o.batch_size;
  fo.length = o.file_size;
  if (write && fo.length == 0 && ::access(o.path.c_str(), F_OK) != 0)
    fo.length = 1ull << 30;
  auto f = ferry::uring_file::open(ctx, o.path, fo);
  if (!f) {
    std::fprintf(stderr, "ferry-bench: cannot open %s: %s\n", o.path.c_str(), f.error().message().c_str());
    co_return 1;
  }
  auto region = engine.registry().add_file(*f, fo.permissions);
  if (!region) {
    std::fprintf(stderr, "ferry-bench: cannot register %s: %s\n", o.path.c_str(),
                 region.error().message().c_str());
    co_return 1;
  }
  file_run run{o, engine};
  run.region = *region;
  run.blocks = (*f)->length() / o.block_size;
  if (run.blocks == 0) {
    std::fprintf(stderr, "ferry-bench: %s (%llu bytes) is smaller than one block\n", o.path.c_str(),
                 static_cast<unsigned long long>((*f)->length()));
    co_return 1;
  }
  std::vector<ferry::io::aligned_buffer> buffers;
  for (unsigned l = 0; l < o.queue_depth; ++l) {
    buffers.emplace_back(o.block_size * o.batch_size);
    auto& buf = buffers.back();
    for (std::size_t i = 0; i < buf.size(); i += 8)
      buf.data()[i] = static_cast<std::byte>(i * 31 + l);
    if (auto r = engine.registry().add(buf.data(), buf.size(), ferry::access::none); !r) {
      std::fprintf(stderr, "ferry-bench: cannot register local memory: %s\n", r.error().message().c_str());
      co_return 1;
    }
  }
  if (o.fixed_buffers) {
    // io_uring pins these once, instead of on every O_DIRECT operation (uring_file uses them on its own)
    std::vector<::iovec> iov;
    for (auto& b : buffers)
      iov.push_back({b.data(), b.size()});
    if (auto r = engine.context().register_buffers(iov); !r)
      std::fprintf(stderr, "ferry-bench: buffers not registered with io_uring (%s); measuring without\n",
                   r.error().message().c_str());
  }
  // Warm-up (not measured): a few requests per lane.
  {
    std::vector<ferry::task<>> lanes;
    for (unsigned l = 0; l < o.queue_depth; ++l)
      lanes.push_back(lane(run, buffers[l].data(), l + 1, 4));
    co_await ferry::when_all(std::move(lanes));
  }
  if (!run.failure.empty()) {
    std::fprintf(stderr, "ferry-bench: %s\n", run.failure.c_str());
    co_return 1;
  }
  run.measuring = true;
  auto begin = clock_type::now();
  run.end_at =
      begin + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.duration));
  {
    std::vector<ferry::task<>> lanes;
    for (unsigned l = 0; l < o.queue_depth; ++l)
      lanes.push_back(lane(run, buffers[l].data(), 1000 + l, 0));
    co_await ferry::when_all(std::move(lanes));
  }
  double seconds = std::chrono::duration<double>(clock_type::now() - begin).count();
  if (!run.failure.empty()) {
    std::fprintf(stderr, "ferry-bench: %s\n", run.failure.c_str());
    co_return 1;
  }
  if (o.interrupted && o.interrupted->load()) {
    if (run.batches == 0) {
      std::fprintf(stderr, "ferry-bench: interrupted before a measured batch completed\n");
      co_return 1;
    }
    std::fprintf(stderr, "ferry-bench: interrupted; what was measured in %.2f s follows\n", seconds);
  }
  double gbps = static_cast<double>(run.bytes) / seconds / 1e9;
  double iops = static_cast<double>(run.requests) / seconds;
  double p50 = run.latencies.percentile(0.50), p99 = run.latencies.percentile(0.99);
  if (o.json) {
    nlohmann::json j{
        {"throughput_gbps", gbps},
        {"iops", iops},
        {"bytes", run.bytes},
        {"seconds", seconds},
        {"batches", run.batches},
        {"batches_per_second", static_cast<double>(run.batches) / seconds},
        {"latency_us",
         {{"p50", p50},
          {"p99", p99},
          {"mean", run.latencies.mean()},
          {"min", run.latencies.min()},
          {"max", run.latencies.max()}}},
        {"protocol", "file"},
        {"operation", o.operation},
        {"block_size", o.block_size},
        {"batch_size", o.batch_size},
        {"queue_depth", o.queue_depth},
        {"threads", 1},
        {"slice_size", engine.options().slice_size},
        {"verify", false},
        {"target", o.path},
        {"direct", (*f)->direct()},
        {"sqpoll", o.sqpoll},
        {"fixed_buffers", o.fixed_buffers},
        {"io_backend", ferry::io::to_string(ctx.backend())},
    };
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ferry-bench: file %s %s, io backend %s%s, %s, queue depth %u, %u request(s) per transfer\n",
                o.operation.c_str(), o.path.c_str(), ferry::io::to_string(ctx.backend()),
                o.sqpoll ? " (sqpoll)" : "", (*f)->direct() ? "O_DIRECT" : "buffered", o.queue_depth,
                o.batch_size);
    std::printf("%-8s %-9s %10s %6s %9s %10s %10s %10s %14s %8s\n", "protocol", "operation", "block_size",
                "qd", "GB/s", "IOPS", "p50_us", "p99_us", "bytes", "seconds");
    std::printf("%-8s %-9s %10llu %6u %9.3f %10.0f %10.0f %10.0f %14llu %8.2f\n", "file", o.operation.c_str(),
                static_cast<unsigned long long>(o.block_size), o.queue_depth, gbps, iops, p50, p99,
                static_cast<unsigned long long>(run.bytes), seconds);
  }
  co_return 0;
}

} // namespace detail

/// Runs the local file benchmark; returns the exit status (0 ok, 1 error).
inline int run_file_bench(const file_options& o) {
  ferry::io::io_context_options io_options;
  io_options.sqpoll = o.sqpoll;
  // why: the ring must hold every lane's operations plus the loop's own
  io_options.queue_depth = std::max(256u, 2 * o.queue_depth * o.batch_size);
  ferry::io::io_context ctx(io_options);
  ferry::engine_options eo;
  eo.name = "ferry-bench-file-" + std::to_string(::getpid());
  // why: one slice per request, as fio issues one operation per block
  eo.slice_size = static_cast<std::uint32_t>(std::max<std::uint64_t>(o.block_size, eo.slice_size));
  ferry::file_engine engine(ctx, eo);
  int code = ctx.run_until(detail::run_file(ctx, engine, o));
  ctx.run_until(engine.shutdown());
  return code;
}

} // namespace ferry_bench
