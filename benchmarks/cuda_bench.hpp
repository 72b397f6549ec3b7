#pragma once
// ferry-bench --protocol cuda: batches of blocks between two memories of this process (GPU memory, or pinned
// host memory for device -1) through ferry::cuda_transport, and, in the same run, the raw figure: the same
// blocks copied one cudaMemcpyPeerAsync (cudaMemcpyAsync for host memory) at a time on one stream.
//
//   ferry-bench --mode initiator --protocol cuda --src-device 0 --dst-device 1 --block-size 64K
//               --batch-size 4096 --duration 3 --json

#include <ferry/core.hpp>
#include <ferry/io.hpp>
#include <ferry/transfer.hpp>
#include <ferry/transport/cuda/cuda_transport.hpp>
#include <ferry/transport/cuda/device_list.hpp>
#include <ferry/transport/cuda/register_memory.hpp>

#include <nlohmann/json.hpp>

#include "latency_histogram.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cuda_runtime_api.h>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <time.h>
#include <vector>

namespace ferry_bench_cuda {

struct params {
  int src_device = 0; ///< -1: pinned host memory
  int dst_device = 1;
  std::string operation = "write"; ///< write: local = src, target = dst; read: local = dst, target = src
  std::string method = "automatic";
  std::uint64_t block_size = 64 << 10;
  unsigned batch_size = 4096;
  unsigned threads = 1;
  double duration = 3;
  std::uint64_t slice_size = 1 << 20;
  bool verify = false;
  bool json = false;
  double timeout = 10; ///< seconds one batch may take before the run fails
  ferry::cuda_kernel_shape kernel{};
  /// Set (by a signal handler) to end the run early: what was measured so far is reported (and verified).
  const std::atomic<bool>* interrupted = nullptr;
};

using clock_type = std::chrono::steady_clock;

// GPU memory on `device`, or pinned host memory for -1.
struct memory {
  void* p = nullptr;
  int device = -1;
  std::string error;
  memory(int dev, std::size_t n) : device(dev) {
    ::cudaError_t e;
    if (dev < 0) {
      e = ::cudaMallocHost(&p, n);
    } else {
      e = ::cudaSetDevice(dev);
      if (e == ::cudaSuccess)
        e = ::cudaMalloc(&p, n);
    }
    if (e != ::cudaSuccess) {
      error = std::string(dev < 0 ? "cudaMallocHost" : "cudaMalloc") + ": " + ::cudaGetErrorString(e);
      p = nullptr;
    }
  }
  memory(const memory&) = delete;
  ~memory() {
    if (!p)
      return;
    if (device < 0) {
      ::cudaFreeHost(p);
    } else {
      ::cudaSetDevice(device);
      ::cudaFree(p);
    }
  }
  std::byte* data() const { return static_cast<std::byte*>(p); }
};

struct worker {
  std::unique_ptr<memory> src, dst; // dst holds 2 * batch blocks; block i of a batch lands at slot[i]
  std::vector<std::uint64_t> slots;
  std::uint64_t local_base = 0, target_base = 0;
};

// The raw figure: every block of one batch copied with its own cudaMemcpyPeerAsync on one stream.
inline double raw_copy_gbps(const params& o, worker& w, double seconds) {
  int exec = o.src_device >= 0 ? o.src_device : o.dst_device;
  ::cudaSetDevice(exec);
  if (o.src_device >= 0 && o.dst_device >= 0 && o.src_device != o.dst_device) {
    int can = 0;
    ::cudaDeviceCanAccessPeer(&can, o.src_device, o.dst_device);
    if (can)
      ::cudaDeviceEnablePeerAccess(o.dst_device, 0);
    ::cudaGetLastError();
  }
  ::cudaStream_t st;
  ::cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  auto one = [&] {
    for (unsigned i = 0; i < o.batch_size; ++i) {
      void* d = w.dst->data() + w.slots[i] * o.block_size;
      const void* s = w.src->data() + i * o.block_size;
      if (o.src_device >= 0 && o.dst_device >= 0)
        ::cudaMemcpyPeerAsync(d, o.dst_device, s, o.src_device, o.block_size, st);
      else
        ::cudaMemcpyAsync(d, s, o.block_size, ::cudaMemcpyDefault, st);
    }
  };
  one();
  ::cudaStreamSynchronize(st);
  std::uint64_t bytes = 0;
  auto t0 = clock_type::now();
  double elapsed = 0;
  while (elapsed < seconds) {
    one();
    ::cudaStreamSynchronize(st);
    bytes += std::uint64_t{o.batch_size} * o.block_size;
    elapsed = std::chrono::duration<double>(clock_type::now() - t0).count();
  }
  ::cudaStreamDestroy(st);
  return static_cast<double>(bytes) / elapsed / 1e9;
}

// CPU seconds used so far by the calling thread.
inline double thread_cpu_seconds() {
  ::timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

inline ferry::transfer_batch make_batch(const params& o, worker& w) {
  bool write = o.operation == "write";
  ferry::transfer_batch b;
  b.reserve(o.batch_size);
  for (unsigned i = 0; i < o.batch_size; ++i) {
    std::uint64_t at = w.slots[i] * o.block_size;
    if (write)
      b.write(w.src->data() + i * o.block_size, ferry::transfer_engine<ferry::cuda_transport>::self,
              w.target_base + at, o.block_size);
    else
      b.read(w.dst->data() + at, ferry::transfer_engine<ferry::cuda_transport>::self,
             w.target_base + i * o.block_size, o.block_size);
  }
  return b;
}

inline ferry::transfer_options timeout_of(const params& o) {
  return ferry::transfer_options().with_timeout(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(o.timeout)));
}

// The 8 bytes at byte 8 * word of the source in verify round `round` of worker `t`: no two words of a run's
// sources are alike, so a block that lands in another block's slot fails the check.
inline std::uint64_t verify_word(unsigned t, std::uint64_t round, std::uint64_t word) noexcept {
  std::uint64_t x = word + (std::uint64_t{t} << 40) + (round << 56) + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// One batch of worker `t` with a source pattern of its own and a destination filled with 0xa5 first; then
// every destination slot is compared with its source block. Why it failed, or nullopt.
template<class Engine>
std::optional<std::string> verify_worker(ferry::io::io_context& ctx, Engine& engine, const params& o,
                                         worker& w, unsigned t, std::uint64_t round,
                                         ferry::transfer_options how) {
  const std::size_t batch_bytes = std::size_t{o.batch_size} * o.block_size;
  std::vector<std::byte> pattern(batch_bytes);
  for (std::size_t i = 0; i + 8 <= batch_bytes; i += 8) {
    std::uint64_t v = verify_word(t, round, i / 8);
    std::memcpy(pattern.data() + i, &v, 8);
  }
  for (std::size_t i = batch_bytes / 8 * 8; i < batch_bytes; ++i)
    pattern[i] = static_cast<std::byte>(verify_word(t, round, i) & 0xff);
  if (::cudaMemcpy(w.src->data(), pattern.data(), batch_bytes, ::cudaMemcpyDefault) != ::cudaSuccess ||
      ::cudaMemset(w.dst->data(), 0xa5, 2 * batch_bytes) != ::cudaSuccess ||
      ::cudaDeviceSynchronize() != ::cudaSuccess)
    return std::string("preparing the check: ") + ::cudaGetErrorString(::cudaGetLastError());
  auto res = ctx.run_until(engine.transfer(make_batch(o, w), how));
  if (!res.ok())
    return "the batch failed: " + res.first_error().message();
  std::vector<std::byte> got(o.block_size);
  for (unsigned i = 0; i < o.batch_size; ++i) {
    // either way block i of the source lands in slot i of the destination
    if (::cudaMemcpy(got.data(), w.dst->data() + w.slots[i] * o.block_size, o.block_size,
                     ::cudaMemcpyDefault) != ::cudaSuccess)
      return std::string("reading the destination back: ") + ::cudaGetErrorString(::cudaGetLastError());
    if (std::memcmp(got.data(), pattern.data() + std::size_t{i} * o.block_size, o.block_size) != 0) {
      std::size_t at = 0;
      while (got[at] == pattern[std::size_t{i} * o.block_size + at])
        ++at;
      return "block " + std::to_string(i) + " (destination slot " + std::to_string(w.slots[i]) + "), byte " +
             std::to_string(at) + " differs";
    }
  }
  return std::nullopt;
}

inline int run(const params& o) {
  auto devices = ferry::cuda::list_devices();
  if (!devices) {
    std::fprintf(stderr, "ferry-bench: --protocol cuda: %s\n", devices.error().message().c_str());
    return 1;
  }
  for (int d : {o.src_device, o.dst_device})
    if (d < -1 || d >= static_cast<int>(devices->size())) {
      std::fprintf(stderr,
                   "ferry-bench: device %d does not exist (this host has %zu GPUs; -1 is pinned host)\n", d,
                   devices->size());
      return 2;
    }
  ferry::cuda_copy_method method = ferry::cuda_copy_method::automatic;
  if (o.method == "kernel")
    method = ferry::cuda_copy_method::kernel;
  else if (o.method == "memcpy_batch")
    method = ferry::cuda_copy_method::memcpy_batch;
  else if (o.method == "copy_engine")
    method = ferry::cuda_copy_method::copy_engine;

  ferry::io::io_context ctx;
  ferry::engine_options eo;
  eo.name = "ferry-bench-cuda";
  eo.slice_size = static_cast<std::uint32_t>(o.slice_size);
  eo.cuda.method = method;
  eo.cuda.kernel = o.kernel;
  ferry::transfer_engine<ferry::cuda_transport> engine(ctx, eo);
  bool write = o.operation == "write";
  std::vector<worker> workers(o.threads);
  std::uint64_t batch_bytes = std::uint64_t{o.batch_size} * o.block_size;
  for (unsigned t = 0; t < o.threads; ++t) {
    auto& w = workers[t];
    w.src = std::make_unique<memory>(o.src_device, batch_bytes);
    w.dst = std::make_unique<memory>(o.dst_device, 2 * batch_bytes);
    for (auto* m : {w.src.get(), w.dst.get()})
      if (!m->p) {
        std::fprintf(stderr, "ferry-bench: %s\n", m->error.c_str());
        return 1;
      }
    // the local side is private; the target side is the engine's own segment
    memory& local = write ? *w.src : *w.dst;
    memory& target = write ? *w.dst : *w.src;
    std::size_t local_len = write ? batch_bytes : 2 * batch_bytes;
    std::size_t target_len = write ? 2 * batch_bytes : batch_bytes;
    auto l = ferry::cuda::register_memory(engine.registry(), local.p, local_len, ferry::access::none);
    auto r = ferry::cuda::register_memory(engine.registry(), target.p, target_len, ferry::access::read_write);
    if (!l || !r) {
      std::fprintf(stderr, "ferry-bench: cannot register memory: %s\n",
                   (!l ? l.error() : r.error()).message().c_str());
      return 1;
    }
    w.target_base = *r;
    w.slots.resize(o.batch_size * 2);
    std::iota(w.slots.begin(), w.slots.end(), 0);
    std::shuffle(w.slots.begin(), w.slots.end(), std::mt19937(t + 1)); // scattered over twice the batch
    w.slots.resize(o.batch_size);
  }

  // why: every worker's blocks are checked before the measured run and again after it, so a copy that goes
  // wrong only once the loops have run a while fails too; the run itself is not slowed by checking
  auto verify_all = [&](std::uint64_t round) -> int {
    for (unsigned t = 0; t < o.threads; ++t)
      if (auto bad = verify_worker(ctx, engine, o, workers[t], t, round, timeout_of(o))) {
        std::fprintf(stderr, "ferry-bench: verify failed (worker %u, %s): %s\n", t,
                     round == 0 ? "before the run" : "after the run", bad->c_str());
        return bad->rfind("the batch failed", 0) == 0 ? 1 : 3;
      }
    return 0;
  };
  if (o.verify)
    if (int code = verify_all(0); code != 0)
      return code;

  // warm up, then measure
  std::uint64_t bytes = 0, batches = 0;
  latency_histogram latencies;
  std::string failure;
  auto loop = [&](worker& w, clock_type::time_point end, bool measured) -> ferry::task<> {
    do {
      auto b = make_batch(o, w);
      auto t0 = clock_type::now();
      auto res = co_await engine.transfer(std::move(b), timeout_of(o));
      auto t1 = clock_type::now();
      if (!res.ok()) {
        failure = res.first_error().message();
        co_return;
      }
      if (measured) {
        bytes += res.bytes();
        ++batches;
        latencies.record(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
    } while (clock_type::now() < end && failure.empty() && !(o.interrupted && o.interrupted->load()));
  };
  auto run_all = [&](double seconds, bool measured) {
    auto end = clock_type::now() +
               std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
    std::vector<ferry::task<>> loops;
    for (auto& w : workers)
      loops.push_back(loop(w, end, measured));
    ctx.run_until(ferry::when_all(std::move(loops)));
  };
  run_all(0.3, false);
  auto t0 = clock_type::now();
  double cpu0 = thread_cpu_seconds();
  run_all(o.duration, true);
  double loop_cpu = thread_cpu_seconds() - cpu0;
  double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (!failure.empty()) {
    std::fprintf(stderr, "ferry-bench: a batch failed: %s\n", failure.c_str());
    return 1;
  }
  if (o.verify)
    if (int code = verify_all(1); code != 0)
      return code;
  const bool interrupted = o.interrupted && o.interrupted->load();
  if (interrupted) {
    if (batches == 0) {
      std::fprintf(stderr, "ferry-bench: interrupted before a measured batch completed\n");
      return 1;
    }
    std::fprintf(stderr, "ferry-bench: interrupted; what was measured in %.2f s follows (no raw copy)\n",
                 seconds);
  }
  double raw = interrupted ? 0.0 : raw_copy_gbps(o, workers[0], std::min(o.duration, 2.0));
  double gbps = static_cast<double>(bytes) / seconds / 1e9;
  auto name_of = [&](int d) {
    return d < 0 ? std::string("pinned host") : (*devices)[static_cast<std::size_t>(d)].name;
  };
  if (o.json) {
    nlohmann::json j{
        {"throughput_gbps", gbps},
        {"bytes", bytes},
        {"seconds", seconds},
        {"batches", batches},
        {"batches_per_second", static_cast<double>(batches) / seconds},
        {"latency_us",
         {{"p50", latencies.percentile(0.5)},
          {"p99", latencies.percentile(0.99)},
          {"mean", latencies.mean()},
          {"min", latencies.min()},
          {"max", latencies.max()}}},
        {"protocol", "cuda"},
        {"operation", o.operation},
        {"block_size", o.block_size},
        {"batch_size", o.batch_size},
        {"local_blocks", o.batch_size},
        {"threads", o.threads},
        {"connections", 0},
        {"copy_threads", 0},
        {"slice_size", o.slice_size},
        {"verify", o.verify},
        {"target", "self"},
        {"io_backend", ferry::io::to_string(ctx.backend())},
        {"src_device", o.src_device},
        {"dst_device", o.dst_device},
        {"src", name_of(o.src_device)},
        {"dst", name_of(o.dst_device)},
        {"method", o.method},
        {"kernel",
         {{"name", o.kernel.kernel == ferry::cuda_copy_kernel::warp_per_piece         ? "warp"
                   : o.kernel.kernel == ferry::cuda_copy_kernel::block_per_piece_deep ? "block8"
                                                                                      : "block"},
          {"threads", o.kernel.threads},
          {"blocks_per_sm", o.kernel.blocks_per_sm},
          {"piece_bytes", o.kernel.piece_bytes}}},
        {"raw_copy_gbps", raw},
        {"ratio_to_raw", raw > 0 ? gbps / raw : 0.0},
        // CPU time of the thread that runs the engine's loop (all the host work of the batches)
        {"loop_cpu_us_per_batch", batches ? loop_cpu * 1e6 / static_cast<double>(batches) : 0.0},
        {"loop_cpu_share", seconds > 0 ? loop_cpu / seconds : 0.0},
    };
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ferry-bench: cuda %s, %s (%d) to %s (%d), method %s, slice %llu B\n", o.operation.c_str(),
                name_of(o.src_device).c_str(), o.src_device, name_of(o.dst_device).c_str(), o.dst_device,
                o.method.c_str(), static_cast<unsigned long long>(o.slice_size));
    std::printf("%-8s %-9s %10s %6s %7s %9s %9s %10s %10s %10s\n", "protocol", "operation", "block_size",
                "batch", "threads", "GB/s", "raw_GB/s", "batches/s", "p50_us", "p99_us");
    std::printf("%-8s %-9s %10llu %6u %7u %9.3f %9.3f %10.1f %10.0f %10.0f\n", "cuda", o.operation.c_str(),
                static_cast<unsigned long long>(o.block_size), o.batch_size, o.threads, gbps, raw,
                static_cast<double>(batches) / seconds, latencies.percentile(0.5),
                latencies.percentile(0.99));
  }
  return 0;
}

} // namespace ferry_bench_cuda
