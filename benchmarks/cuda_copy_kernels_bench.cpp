// The batch copy kernels of ferry::cuda_transport alone (no engine, no host work): GPU time of one launch
// over a batch of scattered blocks, by CUDA events, for each kernel and launch shape, next to what the copy
// engines do with the same blocks (cudaMemcpyBatchAsync, one cudaMemcpyAsync per block) and with one
// contiguous copy of the same size (the link's limit). Chooses the transport's defaults.
//
//   ferry-cuda-copy-kernels-bench --benchmark_filter='gpu0->gpu1' --benchmark_min_time=0.2s
//
// Routes: gpu0->gpu1 (the kernel runs on GPU 0 and pushes), gpu1<-gpu0 (runs on GPU 1 and pulls),
// host->gpu0 and gpu0->host (pinned host memory). Without a GPU (or a second one) each case says so.

#include <ferry/transport/cuda/detail/copy_kernel_ptx.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cuda_runtime_api.h>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

struct piece {
  const void* src;
  void* dst;
  unsigned long long length;
};

struct route {
  const char* name;
  int src; // -1: pinned host memory
  int dst;
  int runs_on; // the GPU whose stream (and SMs) do the copy
};

constexpr route routes[] = {
    {"gpu0->gpu1", 0, 1, 0},
    {"gpu1<-gpu0", 0, 1, 1},
    {"host->gpu0", -1, 0, 0},
    {"gpu0->host", 0, -1, 0},
};

constexpr std::uint64_t block_size = 64 << 10;
constexpr unsigned batch = 4096;
constexpr std::uint64_t batch_bytes = std::uint64_t{block_size} * batch;

int device_count() {
  static int n = [] {
    int c = 0;
    if (::cudaGetDeviceCount(&c) != ::cudaSuccess)
      c = 0;
    ::cudaGetLastError();
    return c;
  }();
  return n;
}

void* allocate(int device, std::size_t n) {
  void* p = nullptr;
  if (device < 0) {
    if (::cudaMallocHost(&p, n) != ::cudaSuccess)
      return nullptr;
  } else {
    ::cudaSetDevice(device);
    if (::cudaMalloc(&p, n) != ::cudaSuccess)
      return nullptr;
  }
  return p;
}

// One route's memory, kept for the whole program: a batch's source blocks and twice as many destination
// slots, the blocks going to shuffled slots.
struct setup {
  std::byte* src = nullptr;
  std::byte* dst = nullptr;
  std::vector<unsigned> slots;
  ::cudaStream_t stream = nullptr;
  ::cudaEvent_t start = nullptr, stop = nullptr;
  std::string error;
};

setup& get_setup(const route& r) {
  static std::map<std::string, std::unique_ptr<setup>> all;
  auto& s = all[r.name];
  if (s)
    return *s;
  s = std::make_unique<setup>();
  int need = std::max({r.src, r.dst, r.runs_on}) + 1;
  if (device_count() < need) {
    s->error = "needs " + std::to_string(need) + " GPUs, this host has " + std::to_string(device_count());
    return *s;
  }
  if (r.src >= 0 && r.dst >= 0 && r.src != r.dst) {
    int can = 0;
    ::cudaDeviceCanAccessPeer(&can, r.runs_on, r.runs_on == r.src ? r.dst : r.src);
    if (!can) {
      s->error = "no peer access between the GPUs";
      return *s;
    }
    ::cudaSetDevice(r.runs_on);
    ::cudaDeviceEnablePeerAccess(r.runs_on == r.src ? r.dst : r.src, 0);
    ::cudaGetLastError();
  }
  s->src = static_cast<std::byte*>(allocate(r.src, batch_bytes));
  s->dst = static_cast<std::byte*>(allocate(r.dst, 2 * batch_bytes));
  if (!s->src || !s->dst) {
    s->error = "out of memory";
    return *s;
  }
  s->slots.resize(2 * batch);
  std::iota(s->slots.begin(), s->slots.end(), 0u);
  std::shuffle(s->slots.begin(), s->slots.end(), std::mt19937(1));
  s->slots.resize(batch);
  ::cudaSetDevice(r.runs_on);
  ::cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
  ::cudaEventCreate(&s->start);
  ::cudaEventCreate(&s->stop);
  return *s;
}

::cudaKernel_t kernel(const char* name) {
  static ::cudaLibrary_t library = [] {
    ::cudaLibrary_t l = nullptr;
    if (::cudaLibraryLoadData(&l, ferry::cuda::detail::copy_kernel_ptx, nullptr, nullptr, 0, nullptr, nullptr,
                              0) != ::cudaSuccess)
      l = nullptr;
    return l;
  }();
  ::cudaKernel_t k = nullptr;
  if (!library || ::cudaLibraryGetKernel(&k, library, name) != ::cudaSuccess)
    return nullptr;
  return k;
}

// Times `issue` (which queues work on s.stream) by events; one launch or copy set per iteration.
template<class Issue>
void time_on_stream(benchmark::State& state, setup& s, std::uint64_t bytes, Issue issue) {
  issue(); // warm up (first-launch costs, peer mappings)
  ::cudaStreamSynchronize(s.stream);
  for (auto _ : state) {
    ::cudaEventRecord(s.start, s.stream);
    issue();
    ::cudaEventRecord(s.stop, s.stream);
    ::cudaEventSynchronize(s.stop);
    float ms = 0;
    ::cudaEventElapsedTime(&ms, s.start, s.stop);
    state.SetIterationTime(ms / 1e3);
  }
  if (::cudaError_t e = ::cudaGetLastError(); e != ::cudaSuccess)
    state.SkipWithError(::cudaGetErrorString(e));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
  state.counters["GB/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * bytes) / 1e9, benchmark::Counter::kIsRate);
}

// A kernel over the batch cut into pieces of piece_bytes; grid 0 = one CUDA block per piece (capped at
// 65535), else `grid` blocks per SM.
void kernel_case(benchmark::State& state, route r, const char* name, unsigned threads, unsigned grid_per_sm,
                 std::uint64_t piece_bytes) {
  auto& s = get_setup(r);
  if (!s.error.empty())
    return state.SkipWithError(s.error.c_str());
  ::cudaSetDevice(r.runs_on);
  ::cudaKernel_t k = kernel(name);
  if (!k)
    return state.SkipWithError("cannot load the kernel");
  std::vector<piece> pieces;
  for (unsigned i = 0; i < batch; ++i)
    for (std::uint64_t off = 0; off < block_size; off += piece_bytes)
      pieces.push_back({s.src + i * block_size + off, s.dst + s.slots[i] * block_size + off,
                        std::min(piece_bytes, block_size - off)});
  piece* device_pieces = nullptr;
  ::cudaMalloc(reinterpret_cast<void**>(&device_pieces), pieces.size() * sizeof(piece));
  ::cudaMemcpy(device_pieces, pieces.data(), pieces.size() * sizeof(piece), ::cudaMemcpyHostToDevice);
  int sms = 0;
  ::cudaDeviceGetAttribute(&sms, ::cudaDevAttrMultiProcessorCount, r.runs_on);
  unsigned long long n = pieces.size();
  unsigned g = grid_per_sm == 0 ? static_cast<unsigned>(std::min<std::size_t>(pieces.size(), 65535))
                                : grid_per_sm * static_cast<unsigned>(sms);
  void* args[] = {&device_pieces, &n};
  time_on_stream(state, s, batch_bytes, [&] {
    ::cudaLaunchKernel(reinterpret_cast<const void*>(k), ::dim3(g), ::dim3(threads), args, 0, s.stream);
  });
  state.counters["grid"] = g;
  ::cudaFree(device_pieces);
}

void per_block_copies(benchmark::State& state, route r) {
  auto& s = get_setup(r);
  if (!s.error.empty())
    return state.SkipWithError(s.error.c_str());
  ::cudaSetDevice(r.runs_on);
  time_on_stream(state, s, batch_bytes, [&] {
    for (unsigned i = 0; i < batch; ++i)
      ::cudaMemcpyAsync(s.dst + s.slots[i] * block_size, s.src + i * block_size, block_size,
                        ::cudaMemcpyDefault, s.stream);
  });
}

void memcpy_batch(benchmark::State& state, route r) {
#if CUDART_VERSION >= 13000
  auto& s = get_setup(r);
  if (!s.error.empty())
    return state.SkipWithError(s.error.c_str());
  ::cudaSetDevice(r.runs_on);
  std::vector<void*> dsts(batch);
  std::vector<const void*> srcs(batch);
  std::vector<std::size_t> sizes(batch, block_size);
  for (unsigned i = 0; i < batch; ++i) {
    dsts[i] = s.dst + s.slots[i] * block_size;
    srcs[i] = s.src + i * block_size;
  }
  ::cudaMemcpyAttributes attr{};
  attr.srcAccessOrder = ::cudaMemcpySrcAccessOrderStream;
  std::size_t attr_index = 0;
  time_on_stream(state, s, batch_bytes, [&] {
    ::cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), batch, &attr, &attr_index, 1, s.stream);
  });
#else
  state.SkipWithError("cudaMemcpyBatchAsync needs CUDA 13 here");
#endif
}

// The same number of bytes in one contiguous copy: what the link gives the copy engines.
void contiguous_copy(benchmark::State& state, route r) {
  auto& s = get_setup(r);
  if (!s.error.empty())
    return state.SkipWithError(s.error.c_str());
  ::cudaSetDevice(r.runs_on);
  time_on_stream(state, s, batch_bytes,
                 [&] { ::cudaMemcpyAsync(s.dst, s.src, batch_bytes, ::cudaMemcpyDefault, s.stream); });
}

int register_all() {
  struct shape {
    const char* kernel;
    unsigned threads;
    unsigned grid_per_sm;
    std::uint64_t piece;
  };
  const shape shapes[] = {
      {ferry::cuda::detail::copy_kernel_name, 512, 0, 64 << 10},
      {ferry::cuda::detail::copy_kernel_name, 512, 4, 64 << 10},
      {ferry::cuda::detail::copy_kernel_name, 1024, 2, 64 << 10},
      {ferry::cuda::detail::copy_kernel_name, 256, 0, 16 << 10},
      {ferry::cuda::detail::copy_kernel_u8_name, 512, 0, 64 << 10},
      {ferry::cuda::detail::copy_kernel_u8_name, 256, 0, 32 << 10},
      {ferry::cuda::detail::copy_kernel_u8_name, 512, 2, 64 << 10},
      {ferry::cuda::detail::copy_kernel_u8_name, 256, 8, 32 << 10},
      {ferry::cuda::detail::copy_kernel_warps_name, 512, 2, 16 << 10},
      {ferry::cuda::detail::copy_kernel_warps_name, 512, 4, 8 << 10},
      {ferry::cuda::detail::copy_kernel_warps_name, 256, 8, 8 << 10},
      {ferry::cuda::detail::copy_kernel_warps_name, 1024, 2, 4 << 10},
  };
  for (const route& r : routes) {
    std::string base = std::string(r.name) + "/4096x64KiB/";
    for (const shape& sh : shapes) {
      std::string n = base + sh.kernel + "/threads:" + std::to_string(sh.threads) +
                      "/grid:" + (sh.grid_per_sm ? std::to_string(sh.grid_per_sm) + "perSM" : "perPiece") +
                      "/piece:" + std::to_string(sh.piece >> 10) + "KiB";
      benchmark::RegisterBenchmark(n.c_str(), kernel_case, r, sh.kernel, sh.threads, sh.grid_per_sm, sh.piece)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
    benchmark::RegisterBenchmark((base + "cudaMemcpyBatchAsync").c_str(), memcpy_batch, r)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((base + "cudaMemcpyAsync_per_block").c_str(), per_block_copies, r)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string(r.name) + "/256MiB_contiguous/cudaMemcpyAsync").c_str(),
                                 contiguous_copy, r)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
  return 0;
}

const int registered = register_all();

} // namespace

BENCHMARK_MAIN();
