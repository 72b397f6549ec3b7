#include "ferry/transport/cuda/cuda_transport.hpp"
#include "ferry/transport/cuda/register_memory.hpp"

#include "ferry/core/sync_wait.hpp"
#include "ferry/metadata/memory_metadata_store.hpp"
#include "ferry/transfer.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cuda_runtime_api.h>
#include <memory>
#include <numeric>
#include <random>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

using ferry::access;
using ferry::cuda_copy_method;
using ferry::errc;
using ferry::memory_kind;
using ferry::transfer_batch;
using gpu_engine = ferry::transfer_engine<ferry::cuda_transport>;

namespace {

// Skips (with the reason printed) unless the host has `n` GPUs.
bool skip_unless_gpus(int n) {
  auto devices = ferry::cuda::list_devices();
  if (!devices) {
    MESSAGE("skipped: no GPU on this host (", devices.error().message(), ")");
    return true;
  }
  if (static_cast<int>(devices->size()) < n) {
    MESSAGE("skipped: needs ", n, " GPUs, this host has ", devices->size());
    return true;
  }
  return false;
}

struct gpu_buffer {
  void* p = nullptr;
  std::size_t size = 0;
  int device = 0;
  gpu_buffer(int dev, std::size_t n) : size(n), device(dev) {
    REQUIRE(::cudaSetDevice(dev) == ::cudaSuccess);
    REQUIRE(::cudaMalloc(&p, n) == ::cudaSuccess);
  }
  gpu_buffer(const gpu_buffer&) = delete;
  ~gpu_buffer() { release(); }
  void release() {
    if (p) {
      ::cudaSetDevice(device);
      ::cudaFree(p);
      p = nullptr;
    }
  }
  std::byte* data() const { return static_cast<std::byte*>(p); }
};

struct pinned_buffer {
  void* p = nullptr;
  std::size_t size = 0;
  explicit pinned_buffer(std::size_t n) : size(n) { REQUIRE(::cudaMallocHost(&p, n) == ::cudaSuccess); }
  pinned_buffer(const pinned_buffer&) = delete;
  ~pinned_buffer() {
    if (p)
      ::cudaFreeHost(p);
  }
  std::byte* data() const { return static_cast<std::byte*>(p); }
};

// The error of a failed result, "" for a successful one (doctest prints messages of passing checks too).
template<class T>
std::string why(const ferry::result<T>& r) {
  return r ? std::string() : r.error().message();
}

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 131 + seed * 7 + (i >> 12)) & 0xff);
  return v;
}

void upload(void* dst, const std::vector<std::byte>& v) {
  REQUIRE(::cudaMemcpy(dst, v.data(), v.size(), ::cudaMemcpyDefault) == ::cudaSuccess);
}

std::vector<std::byte> download(const void* src, std::size_t n) {
  std::vector<std::byte> v(n);
  REQUIRE(::cudaMemcpy(v.data(), src, n, ::cudaMemcpyDefault) == ::cudaSuccess);
  return v;
}

template<class Engine>
std::uint64_t region_offset(Engine& e, const void* p, std::size_t n, ferry::access a, int device = -1) {
  auto r = ferry::cuda::register_memory(e.registry(), const_cast<void*>(p), n, a, device);
  REQUIRE_MESSAGE(r, why(r));
  return *r;
}

// Writes `blocks` blocks of `bs` bytes from `src` (block i at i * bs) to scattered places of the engine's own
// segment at `dst_base` (block i at perm[i] * bs), reads them back into `back`, and checks every byte.
void scatter_round_trip(ferry::io::io_context& ctx, gpu_engine& engine, std::byte* src,
                        std::uint64_t dst_base, std::byte* back, std::size_t blocks, std::size_t bs,
                        unsigned seed) {
  auto data = pattern(blocks * bs, seed);
  upload(src, data);
  std::vector<std::size_t> perm(blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  transfer_batch w;
  for (std::size_t i = 0; i < blocks; ++i)
    w.write(src + i * bs, gpu_engine::self, dst_base + perm[i] * bs, bs);
  auto wr = ctx.run_until(engine.transfer(std::move(w)));
  REQUIRE_MESSAGE(wr.ok(), wr.first_error().message());
  CHECK(wr.bytes() == blocks * bs);
  transfer_batch r;
  for (std::size_t i = 0; i < blocks; ++i)
    r.read(back + i * bs, gpu_engine::self, dst_base + perm[i] * bs, bs);
  auto rd = ctx.run_until(engine.transfer(std::move(r)));
  REQUIRE_MESSAGE(rd.ok(), rd.first_error().message());
  auto got = download(back, blocks * bs);
  CHECK(got == data);
}

const char* method_name(cuda_copy_method m) {
  switch (m) {
  case cuda_copy_method::automatic:
    return "automatic";
  case cuda_copy_method::kernel:
    return "kernel";
  case cuda_copy_method::memcpy_batch:
    return "memcpy_batch";
  case cuda_copy_method::copy_engine:
    return "copy_engine";
  }
  return "?";
}

// Waits up to `limit` for `pid` to exit; false if it is still running.
bool wait_exit(pid_t pid, std::chrono::seconds limit, int& status) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (::waitpid(pid, &status, WNOHANG) == pid)
      return true;
    ::usleep(20000);
  }
  return false;
}

constexpr cuda_copy_method all_methods[] = {cuda_copy_method::automatic, cuda_copy_method::kernel,
                                            cuda_copy_method::memcpy_batch, cuda_copy_method::copy_engine};

} // namespace

TEST_SUITE("cuda_transport") {
  TEST_CASE("GPU regions travel in segment descriptors with their device and IPC handle") {
    ferry::segment_descriptor d;
    d.name = "gpu-owner";
    d.incarnation = 9;
    d.host = "h";
    ferry::region_descriptor r;
    r.offset = 0;
    r.length = 1 << 20;
    r.permissions = access::read_write;
    r.location = {memory_kind::cuda_device, 1, std::string(128, 'a'), 4096};
    d.regions.push_back(r);
    ferry::region_descriptor pinned;
    pinned.offset = 1 << 20;
    pinned.length = 4096;
    pinned.permissions = access::read;
    pinned.location.kind = memory_kind::cuda_host;
    d.regions.push_back(pinned);
    auto back = ferry::segment_descriptor::parse(d.to_json());
    REQUIRE_MESSAGE(back, why(back));
    CHECK(*back == d);
    CHECK(back->regions[0].location.device == 1);
    CHECK(back->regions[1].location.kind == memory_kind::cuda_host);

    std::string bad = d.to_json();
    bad.replace(bad.find("cuda_device"), 11, "tpu_device!");
    auto refused = ferry::segment_descriptor::parse(bad);
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == errc::malformed_frame);

    ::cudaIpcMemHandle_t h{};
    for (std::size_t i = 0; i < sizeof h.reserved; ++i)
      h.reserved[i] = static_cast<char>(i * 37);
    ::cudaIpcMemHandle_t h2{};
    REQUIRE(ferry::cuda::from_hex(ferry::cuda::to_hex(h), h2));
    CHECK(std::memcmp(h.reserved, h2.reserved, sizeof h.reserved) == 0);
    CHECK_FALSE(ferry::cuda::from_hex("zz", h2));
    CHECK_FALSE(ferry::cuda::from_hex(std::string(128, 'G'), h2));
  }

  TEST_CASE("memory CUDA does not know is refused at registration, naming why") {
    std::vector<std::byte> plain(4096);
    ferry::region_registry registry;
    auto r = ferry::cuda::register_memory(registry, plain.data(), plain.size(), access::read_write);
    REQUIRE_FALSE(r);
    MESSAGE("registering pageable host memory: ", r.error().message());
    if (ferry::cuda::list_devices())
      CHECK(r.error() == errc::invalid_argument);
    else
      CHECK(std::string(r.error().what()) == "cudaPointerGetAttributes");
    CHECK(registry.size() == 0);
  }

  TEST_CASE("host memory is left to the other transports") {
    ferry::io::io_context ctx;
    ferry::transfer_engine<ferry::cuda_transport, ferry::shm_transport> engine(ctx);
    std::vector<std::byte> target(1 << 16), local(1 << 16);
    auto data = pattern(local.size(), 3);
    std::memcpy(local.data(), data.data(), data.size());
    auto off = engine.registry().add(target.data(), target.size(), access::read_write);
    REQUIRE(off);
    REQUIRE(engine.registry().add(local.data(), local.size(), access::none));
    transfer_batch b;
    b.write(local.data(), engine.self, *off, local.size());
    auto r = ctx.run_until(engine.transfer(std::move(b)));
    REQUIRE_MESSAGE(r.ok(), r.first_error().message());
    CHECK(engine.routed_bytes("cuda") == 0);
    CHECK(engine.routed_bytes("shm") == local.size());
    CHECK(target == data);
  }

  TEST_CASE("registration records the kind and device, and refuses memory of another device") {
    if (skip_unless_gpus(1))
      return;
    ferry::region_registry registry;
    gpu_buffer g(0, 1 << 20);
    pinned_buffer h(1 << 20);
    auto off = ferry::cuda::register_memory(registry, g.p, g.size, access::read_write, 0);
    REQUIRE_MESSAGE(off, why(off));
    auto on_host = ferry::cuda::register_memory(registry, h.p, h.size, access::read);
    REQUIRE_MESSAGE(on_host, why(on_host));
    auto regions = registry.exposed();
    REQUIRE(regions.size() == 2);
    CHECK(regions[0].location.kind == memory_kind::cuda_device);
    CHECK(regions[0].location.device == 0);
    CHECK(regions[0].location.ipc_handle.size() == 128);
    CHECK(regions[1].location.kind == memory_kind::cuda_host);
    CHECK(regions[1].location.ipc_handle.empty());

    ferry::region_registry other;
    auto wrong = ferry::cuda::register_memory(other, g.p, g.size, access::read_write, 1);
    REQUIRE_FALSE(wrong);
    MESSAGE("device 0 memory registered as device 1: ", wrong.error().message());
    CHECK(wrong.error() == errc::invalid_argument);
    auto past_end = ferry::cuda::register_memory(other, g.data() + 4096, g.size, access::read_write);
    REQUIRE_FALSE(past_end);
    CHECK(past_end.error() == errc::out_of_bounds);
  }

  TEST_CASE("GPU to GPU in one process: scattered blocks arrive intact with every copy method") {
    if (skip_unless_gpus(1))
      return;
    int count = 0;
    ::cudaGetDeviceCount(&count);
    int dst_dev = count > 1 ? 1 : 0;
    if (count < 2)
      MESSAGE("only one GPU: copies stay on device 0 (peer copies not covered here)");
    for (auto m : all_methods) {
      CAPTURE(method_name(m));
      ferry::io::io_context ctx;
      ferry::engine_options o;
      o.cuda.method = m;
      gpu_engine engine(ctx, o);
      // 64 KiB blocks (the KV-cache case), odd-sized unaligned blocks, and 4 MiB blocks (cut into slices)
      struct shape {
        std::size_t blocks, bs;
      };
      for (shape s : {shape{512, 64 << 10}, shape{97, 1000}, shape{8, 4 << 20}}) {
        CAPTURE(s.bs);
        gpu_buffer src(0, s.blocks * s.bs), back(0, s.blocks * s.bs), dst(dst_dev, s.blocks * s.bs);
        region_offset(engine, src.p, src.size, access::none);
        region_offset(engine, back.p, back.size, access::none);
        auto base = region_offset(engine, dst.p, dst.size, access::read_write, dst_dev);
        scatter_round_trip(ctx, engine, src.data(), base, back.data(), s.blocks, s.bs, 11);
        CHECK(engine.routed_bytes("cuda") > 0);
        REQUIRE(engine.registry().remove(src.p));
        REQUIRE(engine.registry().remove(back.p));
        REQUIRE(engine.registry().remove(dst.p));
      }
    }
  }

  TEST_CASE("GPU to pinned host memory and back") {
    if (skip_unless_gpus(1))
      return;
    for (auto m : all_methods) {
      CAPTURE(method_name(m));
      ferry::io::io_context ctx;
      ferry::engine_options o;
      o.cuda.method = m;
      gpu_engine engine(ctx, o);
      const std::size_t blocks = 256, bs = 64 << 10;
      gpu_buffer src(0, blocks * bs), back(0, blocks * bs);
      pinned_buffer host(blocks * bs);
      region_offset(engine, src.p, src.size, access::none);
      region_offset(engine, back.p, back.size, access::none);
      auto base = region_offset(engine, host.p, host.size, access::read_write);
      scatter_round_trip(ctx, engine, src.data(), base, back.data(), blocks, bs, 5);
    }
  }

  TEST_CASE("a batch mixing host and device blocks moves every block") {
    if (skip_unless_gpus(1))
      return;
    ferry::io::io_context ctx;
    gpu_engine engine(ctx);
    const std::size_t bs = 64 << 10;
    gpu_buffer dev_src(0, 4 * bs), dev_dst(0, 4 * bs);
    pinned_buffer host_src(4 * bs), host_dst(4 * bs);
    std::vector<std::byte> pageable(4 * bs);
    auto a = pattern(4 * bs, 1), b = pattern(4 * bs, 2), c = pattern(4 * bs, 3);
    upload(dev_src.p, a);
    std::memcpy(host_src.p, b.data(), b.size());
    std::memcpy(pageable.data(), c.data(), c.size());
    region_offset(engine, dev_src.p, dev_src.size, access::none);
    REQUIRE(engine.registry().add(pageable.data(), pageable.size(), access::none));
    region_offset(engine, host_src.p, host_src.size, access::none);
    auto to_dev = region_offset(engine, dev_dst.p, dev_dst.size, access::read_write);
    auto to_host = region_offset(engine, host_dst.p, host_dst.size, access::read_write);
    transfer_batch w;
    // device -> device, pinned -> device, pageable -> device, device -> pinned, pinned -> pinned
    w.write(dev_src.data(), engine.self, to_dev + 0 * bs, bs);
    w.write(host_src.data(), engine.self, to_dev + 1 * bs, bs);
    w.write(pageable.data(), engine.self, to_dev + 2 * bs, bs);
    w.write(dev_src.data() + bs, engine.self, to_host + 0 * bs, bs);
    w.write(host_src.data() + bs, engine.self, to_host + 1 * bs, bs);
    w.write(pageable.data() + bs, engine.self, to_host + 2 * bs, bs);
    auto r = ctx.run_until(engine.transfer(std::move(w)));
    REQUIRE_MESSAGE(r.ok(), r.first_error().message());
    auto on_dev = download(dev_dst.p, 3 * bs);
    CHECK(std::equal(on_dev.begin(), on_dev.begin() + bs, a.begin()));
    CHECK(std::equal(on_dev.begin() + bs, on_dev.begin() + 2 * bs, b.begin()));
    CHECK(std::equal(on_dev.begin() + 2 * bs, on_dev.begin() + 3 * bs, c.begin()));
    CHECK(std::memcmp(host_dst.data(), a.data() + bs, bs) == 0);
    CHECK(std::memcmp(host_dst.data() + bs, b.data() + bs, bs) == 0);
    CHECK(std::memcmp(host_dst.data() + 2 * bs, c.data() + bs, bs) == 0);
  }

  TEST_CASE("out-of-bounds offsets are refused before any copy is launched") {
    if (skip_unless_gpus(1))
      return;
    ferry::io::io_context ctx;
    gpu_engine engine(ctx);
    const std::size_t bs = 64 << 10;
    gpu_buffer src(0, 4 * bs), dst(0, 4 * bs);
    upload(dst.p, pattern(4 * bs, 8));
    upload(src.p, pattern(4 * bs, 9));
    region_offset(engine, src.p, src.size, access::none);
    auto base = region_offset(engine, dst.p, dst.size, access::read_write);
    transfer_batch w;
    w.write(src.data(), engine.self, base + 3 * bs + 1, bs);   // runs past the end by one byte
    w.write(src.data(), engine.self, base + (1ull << 40), bs); // nowhere near a region
    w.write(src.data() + 3 * bs, engine.self, base, 2 * bs);   // local range leaves its region
    auto r = ctx.run_until(engine.transfer(std::move(w)));
    REQUIRE(r.requests.size() == 3);
    for (auto& q : r.requests) {
      REQUIRE_FALSE(q);
      CHECK(q.error() == errc::out_of_bounds);
    }
    MESSAGE("out of bounds: ", r.first_error().message());
    CHECK(download(dst.p, 4 * bs) == pattern(4 * bs, 8)); // nothing was written
  }

  TEST_CASE("freed GPU memory is refused with an error instead of a fault") {
    if (skip_unless_gpus(1))
      return;
    ferry::io::io_context ctx;
    gpu_engine engine(ctx);
    const std::size_t n = 1 << 20;
    gpu_buffer src(0, n);
    auto dst = std::make_unique<gpu_buffer>(0, n);
    region_offset(engine, src.p, n, access::none);
    auto base = region_offset(engine, dst->p, n, access::read_write);
    dst->release(); // freed behind the registry's back
    transfer_batch w;
    w.write(src.data(), engine.self, base, n);
    auto r = ctx.run_until(engine.transfer(std::move(w)));
    REQUIRE_FALSE(r.ok());
    MESSAGE("write into freed memory: ", r.first_error().message());
    CHECK(r.first_error() == errc::invalid_argument);
    CHECK(::cudaDeviceSynchronize() == ::cudaSuccess); // the context is still healthy
  }

  TEST_CASE("a GPU fault while a batch is queued ends the batch with the fault's error, never a hang") {
    if (skip_unless_gpus(1))
      return;
    // In a process of its own: the fault breaks that process's CUDA context.
    int out[2];
    REQUIRE(::pipe(out) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    char mode[] = "fault", dev[] = "0";
    char* argv[] = {const_cast<char*>(FERRY_CUDA_IPC_PEER), mode, dev, nullptr};
    pid_t pid = -1;
    REQUIRE(::posix_spawn(&pid, FERRY_CUDA_IPC_PEER, &fa, nullptr, argv, environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    int status = 0;
    bool exited = wait_exit(pid, std::chrono::seconds(30), status);
    if (!exited) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    std::string line;
    char c;
    while (::read(out[0], &c, 1) == 1 && c != '\n')
      line.push_back(c);
    ::close(out[0]);
    MESSAGE("the faulting process printed: ", line);
    REQUIRE_MESSAGE(exited, "the batch did not end within 30 s of the fault");
    CHECK(line.rfind("batch failed in ", 0) == 0);
    CHECK(line.find("illegal memory access") != std::string::npos); // CUDA's words, through ferry's error
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }

  TEST_CASE("GPU memory of another process is reached through CUDA IPC and refused once it exited") {
    if (skip_unless_gpus(1))
      return;
    int count = 0;
    ::cudaGetDeviceCount(&count);
    int child_dev = count > 1 ? 1 : 0;
    const std::size_t n = 8 << 20;
    // The peer process: GPU memory with pattern(seed 4), served until its stdin closes.
    int to_child[2], from_child[2];
    REQUIRE(::pipe(to_child) == 0);
    REQUIRE(::pipe(from_child) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    posix_spawn_file_actions_addclose(&fa, to_child[1]);
    posix_spawn_file_actions_addclose(&fa, from_child[0]);
    std::string dev_arg = std::to_string(child_dev), size_arg = std::to_string(n);
    char* argv[] = {const_cast<char*>(FERRY_CUDA_IPC_PEER), dev_arg.data(), size_arg.data(), nullptr};
    pid_t pid = -1;
    REQUIRE(::posix_spawn(&pid, FERRY_CUDA_IPC_PEER, &fa, nullptr, argv, environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    ::close(to_child[0]);
    ::close(from_child[1]);
    auto read_line = [&] {
      std::string line;
      char c;
      while (::read(from_child[0], &c, 1) == 1 && c != '\n')
        line.push_back(c);
      return line;
    };
    std::string line = read_line();
    REQUIRE_MESSAGE(line.rfind("listening ", 0) == 0, "the IPC peer did not start: ", line);
    std::string address = line.substr(10);

    ferry::io::io_context ctx;
    ferry::memory_metadata_store forged_store; // why: before the engine, which must not outlive it
    using ipc_engine = ferry::transfer_engine<ferry::cuda_transport, ferry::tcp_transport>;
    auto engine = std::make_unique<ipc_engine>(ctx);
    MESSAGE("ipc peer at ", address);
    // why: every step has a deadline, so that a fault shows up as an error instead of a hang
    const auto within = ferry::transfer_options().with_timeout(std::chrono::seconds(10));
    ferry::result<ferry::segment_id> seg = ferry::fail(errc::timed_out, "open_segment");
    {
      ferry::io::deadline limit(ctx, std::chrono::seconds(10));
      seg = ctx.run_until(engine->open_segment(address, limit.token()));
    }
    REQUIRE_MESSAGE(seg, why(seg));
    const ferry::segment_descriptor desc = engine->find(*seg)->descriptor;
    REQUIRE(desc.regions.size() == 2); // the memory, and a spare region the peer unregisters on request
    CHECK(desc.regions[0].location.kind == memory_kind::cuda_device);
    CHECK(desc.regions[0].location.device == child_dev);
    CHECK_FALSE(desc.regions[0].location.ipc_handle.empty());
    std::string stale = desc.to_json();

    gpu_buffer mine(0, n), back(0, n);
    region_offset(*engine, mine.p, n, access::none);
    region_offset(*engine, back.p, n, access::none);
    // read what the peer holds, write new bytes, read them back
    transfer_batch r1;
    r1.read(back.data(), *seg, desc.regions[0].offset, n);
    MESSAGE("opened; reading the peer's GPU memory");
    auto got1 = ctx.run_until(engine->transfer(std::move(r1), within));
    REQUIRE_MESSAGE(got1.ok(), got1.first_error().message());
    CHECK(download(back.p, n) == pattern(n, 4));
    auto fresh = pattern(n, 12);
    upload(mine.p, fresh);
    transfer_batch w;
    for (std::size_t i = 0; i < 64; ++i) // scattered 128 KiB blocks
      w.write(mine.data() + i * (n / 64), *seg, desc.regions[0].offset + (63 - i) * (n / 64), n / 64);
    MESSAGE("read; writing scattered blocks");
    auto wr = ctx.run_until(engine->transfer(std::move(w), within));
    REQUIRE_MESSAGE(wr.ok(), wr.first_error().message());
    transfer_batch r2;
    r2.read(back.data(), *seg, desc.regions[0].offset, n);
    REQUIRE(ctx.run_until(engine->transfer(std::move(r2), within)).ok());
    MESSAGE("written and read back; the peer exits");
    auto got2 = download(back.p, n);
    bool all = true;
    for (std::size_t i = 0; i < 64; ++i)
      all = all && std::equal(fresh.begin() + i * (n / 64), fresh.begin() + (i + 1) * (n / 64),
                              got2.begin() + (63 - i) * (n / 64));
    CHECK(all);
    CHECK(engine->routed_bytes("cuda") >= 3 * n);
    CHECK(engine->routed_bytes("tcp") == 0);

    // A descriptor whose region lies past the end of the peer's allocation (its ipc_offset forged) is refused
    // before any copy, and the engine's CUDA context stays usable.
    {
      ferry::segment_descriptor forged = desc;
      forged.name = "forged";
      forged.regions[0].location.ipc_offset = std::uint64_t{1} << 40;
      REQUIRE(ferry::sync_wait(forged_store.put("ferry/segments/forged", forged.to_json())));
      engine->use_metadata(forged_store);
      auto bad = ctx.run_until(engine->open_segment("forged"));
      REQUIRE(bad);
      transfer_batch past;
      past.read(back.data(), *bad, forged.regions[0].offset, 4096);
      auto refused = ctx.run_until(engine->transfer(std::move(past), within));
      REQUIRE_FALSE(refused.ok());
      CHECK_MESSAGE(refused.first_error() == errc::out_of_bounds, refused.first_error().message());
      transfer_batch again;
      again.read(back.data(), *seg, desc.regions[0].offset, n);
      auto fine = ctx.run_until(engine->transfer(std::move(again), within));
      CHECK_MESSAGE(fine.ok(), fine.first_error().message());
      CHECK(::cudaDeviceSynchronize() == ::cudaSuccess);
    }

    // The peer unregisters its spare GPU region and frees it. While a copy holds a pass through the region's
    // gate it may not; once it has, no copy goes into the freed memory (the mapping is still open here).
    {
      transfer_batch into_spare; // the spare region is mapped here before it goes
      into_spare.write(mine.data(), *seg, desc.regions[1].offset, 4096);
      auto mapped = ctx.run_until(engine->transfer(std::move(into_spare), within));
      REQUIRE_MESSAGE(mapped.ok(), mapped.first_error().message());
    }
    {
      REQUIRE_FALSE(desc.shm_gates.empty());
      const auto& spare = desc.regions[1];
      REQUIRE(spare.shm_gate != ferry::region_descriptor::no_gate);
      auto gates = ferry::shm_gates::attach(desc.shm_gates);
      REQUIRE_MESSAGE(gates, why(gates));
      auto pass = gates->enter(spare.shm_gate, spare.shm_epoch, ferry::gate_claim::of(spare));
      REQUIRE_MESSAGE(pass, why(pass));
      auto say = [&](const char* text) { REQUIRE(::write(to_child[1], text, std::strlen(text)) > 0); };
      say("unregister\n");
      auto answer = read_line();
      CHECK_MESSAGE(answer.rfind("refused: ", 0) == 0, answer);
      *pass = {};
      say("unregister\n");
      answer = read_line();
      REQUIRE_MESSAGE(answer == "unregistered and freed", answer);
      transfer_batch late;
      late.write(mine.data(), *seg, spare.offset, 4096);
      auto kept_out = ctx.run_until(engine->transfer(std::move(late), within));
      REQUIRE_FALSE(kept_out.ok());
      CHECK_MESSAGE(kept_out.first_error() == errc::out_of_bounds, kept_out.first_error().message());
      MESSAGE("a write into unregistered and freed GPU memory: ", kept_out.first_error().message());
      CHECK(::cudaDeviceSynchronize() == ::cudaSuccess);
    }

    // The peer exits: its GPU memory is gone, and nothing may be reported as copied into it.
    ::close(to_child[1]);
    ::close(from_child[0]);
    int status = 0;
    bool exited = wait_exit(pid, std::chrono::seconds(20), status);
    if (exited) {
      transfer_batch after;
      after.write(mine.data(), *seg, desc.regions[0].offset, 4096);
      auto how = ferry::transfer_options().with_timeout(std::chrono::seconds(5));
      auto dead = ctx.run_until(engine->transfer(std::move(after), how));
      REQUIRE_FALSE(dead.ok());
      MESSAGE("write to the exited process (cached handle): ", dead.first_error().message());
    } else {
      MESSAGE("the peer has not exited while this process keeps its memory open; closing the mapping");
    }
    engine.reset(); // closes the IPC mapping
    if (!exited) {
      exited = wait_exit(pid, std::chrono::seconds(20), status);
      if (!exited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
      }
    }
    REQUIRE(exited);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));

    // A fresh engine given the stale descriptor, without the pid that would tell it the process ended:
    // opening the IPC handle itself must fail, and say which call failed.
    auto parsed = ferry::segment_descriptor::parse(stale);
    REQUIRE(parsed);
    parsed->pid = 0;
    parsed->endpoints.clear();
    ferry::memory_metadata_store store;
    ferry::io::io_context ctx2;
    gpu_engine late(ctx2);
    late.use_metadata(store);
    REQUIRE(ctx2.run_until(store.put("ferry/segments/" + parsed->name, parsed->to_json())));
    auto seg2 = ctx2.run_until(late.open_segment(parsed->name));
    REQUIRE_MESSAGE(seg2, why(seg2));
    region_offset(late, mine.p, n, access::none);
    transfer_batch w2;
    w2.write(mine.data(), *seg2, parsed->regions[0].offset, 4096);
    MESSAGE("peer gone; opening its stale handle");
    auto refused = ctx2.run_until(late.transfer(std::move(w2), within));
    REQUIRE_FALSE(refused.ok());
    MESSAGE("stale IPC handle: ", refused.first_error().message());
    CHECK(std::string(refused.requests[0].error().what()) == "cudaIpcOpenMemHandle");
    CHECK(::cudaDeviceSynchronize() == ::cudaSuccess);
  }
}
