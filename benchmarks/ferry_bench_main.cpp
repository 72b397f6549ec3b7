// ferry-bench: the transfer benchmark. One process serves a segment (--mode target); another drives batches
// of reads or writes into it (--mode initiator) over TCP or shared memory and reports throughput and batch
// latency as a table or, with --json, as one JSON object.
//
//   ferry-bench --mode target --listen 127.0.0.2:7000 [--buffer-size 1G] [--duration SECONDS]
//   ferry-bench --mode initiator --target 127.0.0.2:7000 --protocol tcp|shm --operation read|write
//               --block-size 1M --batch-size 128 --threads 1 --duration 10 [--json] [--verify]
//   ferry-bench --mode local --protocol file --file PATH --operation read|write|randread --block-size 1M
//               --queue-depth 32 --duration 10 [--json]      (a file through the uring transport;
//               file_bench.hpp)
//
// Through a metadata service instead of an address: both sides name it and the segment,
//   ferry-bench --mode target --listen 127.0.0.2:0 --metadata etcd://127.0.0.1:2379 --segment bench-0
//   ferry-bench --mode initiator --metadata etcd://127.0.0.1:2379 --segment bench-0 ...
// (memory://, http://HOST:PORT for ferry-metad, etcd://, redis://, or p2p with --segment HOST:PORT).
// --mode both runs the target and the initiator in one process (what memory:// is for).
//
// The target fills its buffer with a pattern derived from each byte's segment offset, so `--verify` of reads
// checks every byte that arrives; `--verify` of writes writes a pattern derived from (offset, iteration),
// reads the same blocks back and compares (through the same transport: that the bytes land at the offsets the
// owner means is what a read run against a fresh target checks, and the tests and examples/kv_handoff check
// on the owner's side). After a write run the initiator writes the fill pattern back over
// what it touched (unless --no-restore), so later read runs against the same target still verify.
//
// Exit status: 0 success, 1 error (target unreachable, a batch failed or moved less than it asked), 2 bad
// command line, 3 verify
// mismatch.
#include <ferry/core.hpp>
#include <ferry/io.hpp>
#include <ferry/metadata/connect_metadata.hpp>
#include <ferry/transfer.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "latency_histogram.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <stop_token>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>
#include <vector>

#if FERRY_WITH_CUDA
#include "cuda_bench.hpp"
#endif
#if FERRY_WITH_URING
#include "file_bench.hpp"
#endif

namespace {

using ferry::task;
namespace io = ferry::io;
using clock_type = std::chrono::steady_clock;

// The seed of the target's fill pattern; both sides agree on it.
constexpr std::uint64_t fill_seed = 0x6665727279626e63ull;

struct options {
  std::string mode;
  // target
  std::string listen;
  std::uint64_t buffer_size = 1ull << 30;
  std::string name = "ferry-bench-target";
  // both sides: find the segment through a metadata service (a connection string) by name
  std::string metadata;
  std::string segment;
  // initiator
  std::string target;
  std::string protocol = "tcp";
  std::string operation = "write";
  std::uint64_t block_size = 1ull << 20;
  unsigned batch_size = 128;
  unsigned local_blocks = 0; // distinct local blocks the requests of a batch cycle through (0: batch_size)
  std::uint64_t remote_blocks = 0; // distinct target blocks the requests cycle through (0: as many as fit)
  unsigned threads = 1;
  unsigned connections = 0;   // 0: max(threads, 4)
  std::string tcp_congestion; // both sides: TCP congestion control of the data connections ("": the system's)
  unsigned io_threads = ferry::tcp_options{}.io_threads; // both sides: threads carrying the tcp connections
  unsigned in_flight = ferry::tcp_options{}.in_flight_per_connection;
  std::uint64_t slice_size = ferry::engine_options{}.slice_size;
  double timeout = 10;
  bool json = false;
  int src_device = 0; // --protocol cuda
  int dst_device = 1;
  std::string cuda_method = "automatic";
  std::string cuda_kernel = "block"; // block | block8 | warp
  unsigned cuda_kernel_threads = ferry::cuda_kernel_shape{}.threads;
  unsigned cuda_blocks_per_sm = ferry::cuda_kernel_shape{}.blocks_per_sm;
  std::uint64_t cuda_piece_size = ferry::cuda_kernel_shape{}.piece_bytes;
  bool verify = false;
  bool restore = true;
  bool progress = true;
  // both: seconds to run (target: until killed when not given; initiator: 10)
  double duration = -1;
};

// ---- the data pattern ----

constexpr std::uint64_t mix(std::uint64_t x) noexcept { // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The 8 bytes at segment offsets [8 * index, 8 * index + 8).
std::uint64_t pattern_word(std::uint64_t index, std::uint64_t seed) noexcept {
  return mix(index ^ seed);
}

std::byte pattern_byte(std::uint64_t offset, std::uint64_t seed) noexcept {
  std::uint64_t w = pattern_word(offset / 8, seed);
  std::byte b[8];
  std::memcpy(b, &w, 8);
  return b[offset % 8];
}

// Writes the pattern of segment range [offset, offset + length) to dst.
void fill_pattern(std::byte* dst, std::uint64_t offset, std::size_t length, std::uint64_t seed) noexcept {
  std::size_t i = 0;
  for (; i < length && (offset + i) % 8 != 0; ++i)
    dst[i] = pattern_byte(offset + i, seed);
  for (; i + 8 <= length; i += 8) {
    std::uint64_t w = pattern_word((offset + i) / 8, seed);
    std::memcpy(dst + i, &w, 8);
  }
  for (; i < length; ++i)
    dst[i] = pattern_byte(offset + i, seed);
}

// The seed of the pattern that write --verify sends in a worker's `iteration`-th batch.
std::uint64_t write_seed(std::uint64_t iteration) noexcept {
  return mix(fill_seed + iteration + 1);
}

// Writes the complement of the pattern of [offset, offset + length) to dst: every byte differs from what a
// transfer of that range must deliver, so a block that a "successful" transfer left untouched, in whole or in
// part, fails --verify instead of passing on what an earlier batch put there.
void poison(std::byte* dst, std::uint64_t offset, std::size_t length, std::uint64_t seed) noexcept {
  fill_pattern(dst, offset, length, seed);
  for (std::size_t i = 0; i < length; ++i)
    dst[i] = ~dst[i];
}

// ---- target ----

// Set by SIGINT or SIGTERM: a target stops serving; an initiator stops measuring, restores what it wrote and
// reports what it measured.
// why: an atomic, not a volatile sig_atomic_t: the signal may land on any thread (an I/O thread, the target
// of --mode both) and is read on the main one; a lock-free atomic is safe in a handler
std::atomic<bool> stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free);
extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}
// A second SIGINT or SIGTERM ends the process the default way (SA_RESETHAND).
void stop_on_signals() {
  struct sigaction sa {};
  sa.sa_handler = &on_stop_signal;
  sa.sa_flags = SA_RESETHAND;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}
// Stops a target that runs in this process (--mode both) once its initiator is done.
std::atomic<bool> local_target_stop{false};

task<> serve(io::io_context& ctx, double duration, bool in_process) {
  auto until = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                       std::chrono::duration<double>(duration < 0 ? 0 : duration));
  auto stopped = [in_process] { return in_process ? local_target_stop.load() : stop_requested.load(); };
  while (!stopped() && (duration < 0 || clock_type::now() < until)) {
    (void)co_await ctx.sleep_for(std::chrono::milliseconds(50));
  }
}

// Set by a target running in this process (--mode both) once its segment can be opened.
std::atomic<bool> target_ready{false};

// The metadata client named by --metadata (p2p when none), or nullopt after printing why not.
std::optional<ferry::metadata_client> connect_metadata(const options& o) {
  if (o.metadata.empty())
    return ferry::metadata_client();
  auto client = ferry::connect_metadata(o.metadata);
  if (!client) {
    std::fprintf(stderr, "ferry-bench: --metadata %s: %s\n", o.metadata.c_str(),
                 client.error().message().c_str());
    return std::nullopt;
  }
  return std::move(*client);
}

// What the initiator opens: the segment's name with a metadata service, else the target's address.
const std::string& locator(const options& o) {
  return o.metadata.empty() ? o.target : o.segment;
}

int run_target(const options& o) {
  if (o.listen.empty()) {
    std::fprintf(stderr, "ferry-bench: --mode target needs --listen HOST:PORT\n");
    return 2;
  }
  auto meta = connect_metadata(o);
  if (!meta)
    return 1;
  auto buffer = ferry::shared_buffer::create(o.buffer_size);
  if (!buffer) {
    std::fprintf(stderr, "ferry-bench: cannot allocate %llu bytes of shared memory: %s\n",
                 static_cast<unsigned long long>(o.buffer_size), buffer.error().message().c_str());
    return 1;
  }
  io::io_context ctx;
  ferry::engine_options eo{.name = o.name, .listen = o.listen};
  eo.tcp.congestion_control = o.tcp_congestion;
  eo.tcp.io_threads = o.io_threads;
  ferry::default_engine engine(ctx, eo);
  auto offset =
      engine.registry().add(buffer->data(), buffer->size(), ferry::access::read_write, buffer->name());
  if (!offset) {
    std::fprintf(stderr, "ferry-bench: cannot register the buffer: %s\n", offset.error().message().c_str());
    return 1;
  }
  fill_pattern(buffer->data(), *offset, buffer->size(), fill_seed);
  if (auto started = engine.start(); !started) {
    std::fprintf(stderr, "ferry-bench: cannot listen on %s: %s\n", o.listen.c_str(),
                 started.error().message().c_str());
    return 1;
  }
  if (!o.metadata.empty()) {
    engine.use_metadata(*meta);
    if (auto published = ctx.run_until(engine.publish()); !published) {
      std::fprintf(stderr, "ferry-bench: cannot publish segment %s in %s: %s\n", o.name.c_str(),
                   o.metadata.c_str(), published.error().message().c_str());
      return 1;
    }
  }
  // why: with --mode both, stdout carries the initiator's report (--json) alone
  std::FILE* announce = o.mode == "both" ? stderr : stdout;
  std::fprintf(announce, "target listening on %s segment %s\n", engine.endpoint()->to_string().c_str(),
               o.name.c_str());
  std::fflush(announce);
  target_ready = true;
  std::fprintf(stderr,
               "ferry-bench: serving %zu bytes of shared memory %s (io backend %s); stop with Ctrl-C\n",
               buffer->size(), buffer->name().c_str(), io::to_string(ctx.backend()));

  // why: in --mode both the initiator owns the signals; it stops this target once it has restored its writes
  const bool in_process = o.mode == "both";
  if (!in_process)
    stop_on_signals();
  ctx.run_until(serve(ctx, o.duration, in_process));
  ctx.run_until(engine.shutdown());
  std::fprintf(stderr, "ferry-bench: target stopped\n");
  return 0;
}

// ---- initiator ----

// One batch loop: its own registered memory, its own area of the target.
struct worker {
  unsigned index = 0;
  io::aligned_buffer local; // batch_size blocks
  io::aligned_buffer check; // write --verify reads back into this
  std::uint64_t area = 0;   // first target offset of this worker's area
  std::uint64_t blocks_in_area = 0;
  std::uint64_t next_block = 0; // blocks issued so far; block k lands at area + (k % blocks_in_area) * size
  std::uint64_t written = 0;    // write blocks handed to the engine, including a batch that failed
  std::uint64_t iteration = 0;
  std::vector<std::uint64_t> offsets;
  std::vector<std::byte> expected;
};

struct run_state {
  run_state(const options& opts, io::io_context& context) : o(opts), ctx(context) {}

  const options& o;
  io::io_context& ctx;
  ferry::segment_id segment = 0;
  bool write = true;
  clock_type::time_point begin{}, end_at{};
  bool stopping = false;
  int exit_code = 0;
  std::string failure;
  std::uint64_t bytes = 0;
  std::uint64_t batches = 0;
  latency_histogram latencies;

  void fail(int code, std::string why) {
    if (exit_code == 0) {
      exit_code = code;
      failure = std::move(why);
    }
    stopping = true;
  }
};

// Compares `got` with the pattern of [offset, offset + length); describes the first difference.
std::optional<std::string> mismatch(const std::byte* got, std::uint64_t offset, std::size_t length,
                                    std::uint64_t seed, std::vector<std::byte>& scratch) {
  scratch.resize(length);
  fill_pattern(scratch.data(), offset, length, seed);
  if (std::memcmp(got, scratch.data(), length) == 0)
    return std::nullopt;
  std::size_t i = 0;
  while (got[i] == scratch[i])
    ++i;
  char text[160];
  std::snprintf(text, sizeof text, "target offset %llu: byte is 0x%02x, expected 0x%02x",
                static_cast<unsigned long long>(offset + i), static_cast<unsigned>(got[i]),
                static_cast<unsigned>(scratch[i]));
  return std::string(text);
}

// How every batch runs: with a deadline, so a dead target fails the run instead of hanging it.
ferry::transfer_options batch_options(const options& o) {
  return ferry::transfer_options().with_timeout(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(o.timeout)));
}

template<class Engine>
task<bool> one_batch(Engine& engine, run_state& s, worker& w, bool measured) {
  const options& o = s.o;
  const std::uint64_t seed = s.write ? write_seed(w.iteration) : fill_seed;
  ferry::transfer_batch batch;
  batch.reserve(o.batch_size);
  for (unsigned i = 0; i < o.batch_size; ++i) {
    std::uint64_t at = w.area + (w.next_block + i) % w.blocks_in_area * o.block_size;
    std::byte* local = w.local.data() + (i % o.local_blocks) * o.block_size;
    w.offsets[i] = at;
    if (o.verify) {
      if (s.write)
        fill_pattern(local, at, o.block_size, seed);
      else
        poison(local, at, o.block_size, seed);
    }
    if (s.write)
      batch.write(local, s.segment, at, o.block_size);
    else
      batch.read(local, s.segment, at, o.block_size);
  }
  if (s.write)
    w.written = std::max(w.written, w.next_block + o.batch_size); // restored even if this batch fails
  const ferry::transfer_options how = batch_options(o);
  auto t0 = clock_type::now();
  ferry::batch_result r = co_await engine.transfer(std::move(batch), how);
  auto t1 = clock_type::now();
  if (!r.ok()) {
    s.fail(1, "batch " + std::to_string(w.iteration) + " of worker " + std::to_string(w.index) +
                  " failed: " + r.first_error().message());
    co_return false;
  }
  // why: a batch that succeeded moved every byte asked; anything less is a defect to report, not a figure
  const std::uint64_t asked = static_cast<std::uint64_t>(o.batch_size) * o.block_size;
  if (r.bytes() != asked) {
    s.fail(1, "batch " + std::to_string(w.iteration) + " of worker " + std::to_string(w.index) +
                  " succeeded but moved " + std::to_string(r.bytes()) + " of " + std::to_string(asked) +
                  " bytes");
    co_return false;
  }
  if (measured) {
    s.bytes += r.bytes();
    ++s.batches;
    s.latencies.record(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  if (o.verify) {
    const std::byte* got = w.local.data();
    if (s.write) {
      ferry::transfer_batch back;
      for (unsigned i = 0; i < o.batch_size; ++i) {
        poison(w.check.data() + i * o.block_size, w.offsets[i], o.block_size, seed);
        back.read(w.check.data() + i * o.block_size, s.segment, w.offsets[i], o.block_size);
      }
      ferry::batch_result rb = co_await engine.transfer(std::move(back), how);
      if (!rb.ok()) {
        s.fail(1, "reading back for --verify failed: " + rb.first_error().message());
        co_return false;
      }
      got = w.check.data();
    }
    for (unsigned i = 0; i < o.batch_size; ++i)
      if (auto bad = mismatch(got + i * o.block_size, w.offsets[i], o.block_size, seed, w.expected)) {
        s.fail(3, "verify failed (" + std::string(s.write ? "write, then read back" : "read") + ", worker " +
                      std::to_string(w.index) + ", batch " + std::to_string(w.iteration) + "): " + *bad);
        co_return false;
      }
  }
  w.next_block += o.batch_size;
  ++w.iteration;
  co_return true;
}

template<class Engine>
task<> batch_loop(Engine& engine, run_state& s, worker& w) {
  while (!s.stopping && !stop_requested && clock_type::now() < s.end_at) {
    bool ok = co_await one_batch(engine, s, w, true);
    if (!ok)
      break;
  }
}

// A progress line, refreshed twice a second until `stop`.
task<> show_progress(run_state& s, std::stop_token stop) {
  while (!stop.stop_requested()) {
    auto slept = co_await s.ctx.sleep_for(std::chrono::milliseconds(500), stop);
    if (!slept)
      break;
    double secs = std::chrono::duration<double>(clock_type::now() - s.begin).count();
    std::printf("\r\033[K  %5.1f s  %8.3f GB/s  %9.1f batches/s  %llu batches", secs,
                static_cast<double>(s.bytes) / secs / 1e9, static_cast<double>(s.batches) / secs,
                static_cast<unsigned long long>(s.batches));
    std::fflush(stdout);
  }
  std::printf("\r\033[K");
  std::fflush(stdout);
}

template<class Engine>
task<> run_measured(Engine& engine, run_state& s, std::vector<worker>& workers, bool progress) {
  std::vector<task<>> loops;
  for (auto& w : workers)
    loops.push_back(batch_loop(engine, s, w));
  if (!progress) {
    co_await ferry::when_all(std::move(loops));
    co_return;
  }
  std::stop_source done;
  co_await ferry::when_all(
      [](std::vector<task<>> all, std::stop_source& d) -> task<> {
        co_await ferry::when_all(std::move(all));
        d.request_stop();
      }(std::move(loops), done),
      show_progress(s, done.get_token()));
}

// Writes the fill pattern back over every block the workers wrote.
template<class Engine>
task<ferry::result<void>> restore(Engine& engine, run_state& s, std::vector<worker>& workers) {
  const options& o = s.o;
  const ferry::transfer_options how = batch_options(o);
  for (auto& w : workers) {
    std::uint64_t touched = std::min(w.written, w.blocks_in_area) * o.block_size;
    std::uint64_t chunk = w.local.size();
    for (std::uint64_t done = 0; done < touched; done += chunk) {
      std::uint64_t n = std::min(chunk, touched - done);
      fill_pattern(w.local.data(), w.area + done, n, fill_seed);
      ferry::transfer_batch b;
      b.write(w.local.data(), s.segment, w.area + done, n);
      auto r = co_await engine.transfer(std::move(b), how);
      if (!r.ok())
        co_return ferry::fail(r.first_error());
    }
  }
  co_return ferry::result<void>{};
}

// After a write run (unless --no-restore): restore(); false after saying why it could not.
template<class Engine>
task<bool> restore_after_writes(Engine& engine, run_state& s, std::vector<worker>& workers) {
  if (!s.write || !s.o.restore)
    co_return true;
  auto restored = co_await restore(engine, s, workers);
  if (!restored)
    std::fprintf(stderr,
                 "ferry-bench: could not restore the target's fill pattern (a read --verify against this "
                 "target will fail): %s\n",
                 restored.error().message().c_str());
  co_return restored.has_value();
}

// The largest region of the target that permits the operation.
const ferry::region_descriptor* pick_region(const ferry::segment_descriptor& d, ferry::access wanted) {
  const ferry::region_descriptor* best = nullptr;
  for (auto& r : d.regions)
    if (ferry::allows(r.permissions, wanted) && (!best || r.length > best->length))
      best = &r;
  return best;
}

// Checks that shared memory really reaches the target: same host, a shared region, and one we can map.
std::optional<std::string> shm_unusable(const ferry::segment_descriptor& target, const std::string& own_host,
                                        const ferry::region_descriptor& region, bool write) {
  if (target.host.empty() || target.host != own_host)
    return "the target runs on another host (its boot id differs from ours); use --protocol tcp";
  if (region.shm_name.empty())
    return "the target's region is private memory, not shared memory; use --protocol tcp";
  int fd = ::shm_open(region.shm_name.c_str(), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0);
  if (fd < 0)
    return "cannot open the target's shared memory " + region.shm_name + ": " + std::strerror(errno) +
           "; use --protocol tcp";
  ::close(fd);
  return std::nullopt;
}

// The congestion control the initiator's tcp connections use: the one asked for, or the system's default.
std::string congestion_in_use(const options& o) {
  if (!o.tcp_congestion.empty())
    return o.tcp_congestion;
  std::string name;
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_congestion_control", "r")) {
    char line[64] = {};
    if (std::fgets(line, sizeof line, f))
      name = line;
    std::fclose(f);
  }
  while (!name.empty() && (name.back() == '\n' || name.back() == ' '))
    name.pop_back();
  return name;
}

template<class Engine>
task<int> initiate(io::io_context& ctx, Engine& engine, const options& o, bool shm) {
  const bool write = o.operation == "write";
  auto timeout =
      std::chrono::duration_cast<io::io_context::clock::duration>(std::chrono::duration<double>(o.timeout));
  ferry::result<ferry::segment_id> seg;
  {
    io::deadline within(ctx, timeout);
    seg = co_await engine.open_segment(locator(o), within.token());
  }
  if (!seg) {
    std::fprintf(stderr, "ferry-bench: cannot open the target segment at %s: %s\n", locator(o).c_str(),
                 seg.error().message().c_str());
    co_return 1;
  }
  const ferry::segment_descriptor& target = engine.find(*seg)->descriptor;
  const ferry::region_descriptor* region =
      pick_region(target, write ? ferry::access::write : ferry::access::read);
  if (!region) {
    std::fprintf(stderr, "ferry-bench: segment %s at %s exposes no region that permits %s\n",
                 target.name.c_str(), locator(o).c_str(), o.operation.c_str());
    co_return 1;
  }
  if (shm)
    if (auto why = shm_unusable(target, engine.descriptor().host, *region, write)) {
      std::fprintf(stderr, "ferry-bench: --protocol shm: %s\n", why->c_str());
      co_return 1;
    }
  std::uint64_t area_size = region->length / o.threads;
  std::uint64_t blocks_in_area = area_size / o.block_size;
  if (blocks_in_area == 0) {
    std::fprintf(
        stderr,
        "ferry-bench: the target's region (%llu bytes) cannot hold one block of %llu bytes per thread; "
        "start the target with a larger --buffer-size\n",
        static_cast<unsigned long long>(region->length), static_cast<unsigned long long>(o.block_size));
    co_return 2;
  }
  if (o.remote_blocks > blocks_in_area) {
    // why: cutting the number down would make requests share target blocks that were asked to be distinct
    std::fprintf(
        stderr,
        "ferry-bench: --remote-blocks %llu: the target's region (%llu bytes) holds %llu blocks of "
        "%llu bytes per thread; start the target with --buffer-size %llu or more\n",
        static_cast<unsigned long long>(o.remote_blocks), static_cast<unsigned long long>(region->length),
        static_cast<unsigned long long>(blocks_in_area), static_cast<unsigned long long>(o.block_size),
        static_cast<unsigned long long>(o.block_size * o.remote_blocks * o.threads));
    co_return 2;
  }
  if (o.remote_blocks)
    blocks_in_area = o.remote_blocks;
  if (!o.remote_blocks && blocks_in_area < o.batch_size) {
    // why: the requests of one batch would then share target blocks, and the throughput would count bytes
    // that moved through the same memory twice; --remote-blocks asks for that on purpose
    std::fprintf(stderr,
                 "ferry-bench: the target's region (%llu bytes) holds %llu blocks of %llu bytes per thread, "
                 "fewer than a batch of %u; start the target with --buffer-size %llu or more, or reuse "
                 "target blocks on purpose with --remote-blocks\n",
                 static_cast<unsigned long long>(region->length),
                 static_cast<unsigned long long>(blocks_in_area),
                 static_cast<unsigned long long>(o.block_size), o.batch_size,
                 static_cast<unsigned long long>(o.block_size * o.batch_size * o.threads));
    co_return 2;
  }

  std::vector<worker> workers(o.threads);
  for (unsigned t = 0; t < o.threads; ++t) {
    worker& w = workers[t];
    w.index = t;
    w.local = io::aligned_buffer(o.block_size * o.local_blocks);
    if (auto r = engine.registry().add(w.local.data(), w.local.size(), ferry::access::none); !r) {
      std::fprintf(stderr, "ferry-bench: cannot register local memory: %s\n", r.error().message().c_str());
      co_return 1;
    }
    if (o.verify && write) {
      w.check = io::aligned_buffer(o.block_size * o.batch_size);
      if (auto r = engine.registry().add(w.check.data(), w.check.size(), ferry::access::none); !r) {
        std::fprintf(stderr, "ferry-bench: cannot register local memory: %s\n", r.error().message().c_str());
        co_return 1;
      }
    }
    w.area = region->offset + t * area_size;
    w.blocks_in_area = blocks_in_area;
    w.offsets.resize(o.batch_size);
  }

  run_state s(o, ctx);
  s.segment = *seg;
  s.write = write;
  // Warm up: connections opened, shared memory mapped, pages touched; not measured.
  {
    std::vector<task<bool>> warm;
    for (auto& w : workers)
      warm.push_back(one_batch(engine, s, w, false));
    co_await ferry::when_all(std::move(warm));
  }
  if (s.exit_code != 0) {
    (void)co_await restore_after_writes(engine, s, workers); // why: the failed batch may have written part
    std::fprintf(stderr, "ferry-bench: %s\n", s.failure.c_str());
    co_return s.exit_code;
  }

  double duration = o.duration < 0 ? 10 : o.duration;
  s.begin = clock_type::now();
  s.end_at =
      s.begin + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(duration));
  co_await run_measured(engine, s, workers, o.progress && !o.json && ::isatty(STDOUT_FILENO));
  double seconds = std::chrono::duration<double>(clock_type::now() - s.begin).count();

  // why: after a failed batch too (its blocks may hold part of what it wrote); a target that died fails the
  // first restoring batch at once, or within --timeout
  if (stop_requested)
    std::fprintf(stderr, "ferry-bench: interrupted; what was measured in %.2f s follows\n", seconds);
  const bool restored = co_await restore_after_writes(engine, s, workers);
  if (s.exit_code != 0) {
    std::fprintf(stderr, "ferry-bench: %s\n", s.failure.c_str());
    co_return s.exit_code;
  }

  if (s.batches == 0) {
    if (stop_requested)
      std::fprintf(stderr, "ferry-bench: interrupted before a measured batch completed\n");
    else
      std::fprintf(stderr, "ferry-bench: no batch completed within --duration %.3f s; nothing was measured\n",
                   duration);
    co_return 1;
  }
  // why: the engine takes a transport that reaches the target; with --protocol shm that must have been shared
  // memory for every byte, or the figures would be TCP's under shm's name
  const std::uint64_t over_shm = engine.routed_bytes("shm"), over_tcp = engine.routed_bytes("tcp");
  if (shm && over_tcp != 0) {
    std::fprintf(stderr,
                 "ferry-bench: --protocol shm: %llu bytes went over tcp (shared memory did not reach the "
                 "target for them); no figures reported\n",
                 static_cast<unsigned long long>(over_tcp));
    co_return 1;
  }

  double gbps = static_cast<double>(s.bytes) / seconds / 1e9;
  double per_second = static_cast<double>(s.batches) / seconds;
  double p50 = s.latencies.percentile(0.50), p99 = s.latencies.percentile(0.99);
  const char* protocol = shm ? "shm" : "tcp";
  unsigned connections = engine.options().tcp.connections_per_peer;
  if (o.json) {
    nlohmann::json j{
        {"throughput_gbps", gbps},
        {"bytes", s.bytes},
        {"seconds", seconds},
        {"batches", s.batches},
        {"batches_per_second", per_second},
        {"latency_us",
         {{"p50", p50},
          {"p99", p99},
          {"mean", s.latencies.mean()},
          {"min", s.latencies.min()},
          {"max", s.latencies.max()}}},
        {"protocol", protocol},
        {"operation", o.operation},
        {"block_size", o.block_size},
        {"batch_size", o.batch_size},
        {"local_blocks", o.local_blocks},
        {"remote_blocks", workers.front().blocks_in_area},
        {"threads", o.threads},
        {"connections", connections},
        {"tcp_congestion", shm ? std::string() : congestion_in_use(o)},
        {"io_threads", shm ? 0u : o.io_threads},
        {"copy_threads", shm ? o.threads : 0u},
        {"slice_size", o.slice_size},
        {"verify", o.verify},
        {"routed_bytes", {{"shm", over_shm}, {"tcp", over_tcp}}},
        {"target", locator(o)},
        {"metadata", o.metadata.empty() ? "p2p" : o.metadata},
        {"io_backend", io::to_string(ctx.backend())},
    };
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::string paths =
        shm ? std::to_string(o.threads) + " copy thread(s)"
            : std::to_string(connections) + " tcp connection(s) (" + congestion_in_use(o) + ")";
    std::printf("ferry-bench: %s %s to %s (segment %s), io backend %s, %s, slice %llu B%s\n", protocol,
                o.operation.c_str(), locator(o).c_str(), target.name.c_str(), io::to_string(ctx.backend()),
                paths.c_str(), static_cast<unsigned long long>(o.slice_size),
                o.verify ? ", verified (throughput includes checking)" : "");
    std::printf("%-8s %-9s %10s %6s %7s %9s %10s %10s %10s %14s %8s\n", "protocol", "operation", "block_size",
                "batch", "threads", "GB/s", "batches/s", "p50_us", "p99_us", "bytes", "seconds");
    std::printf("%-8s %-9s %10llu %6u %7u %9.3f %10.1f %10.0f %10.0f %14llu %8.2f\n", protocol,
                o.operation.c_str(), static_cast<unsigned long long>(o.block_size), o.batch_size, o.threads,
                gbps, per_second, p50, p99, static_cast<unsigned long long>(s.bytes), seconds);
  }
  co_return restored ? 0 : 1; // why: the figures stand, but the target was left other than it was found
}

template<class Engine>
int run_initiator(const options& o, bool shm) {
  auto meta = connect_metadata(o);
  if (!meta)
    return 1;
  io::io_context ctx;
  ferry::engine_options eo;
  eo.name = "ferry-bench-initiator-" + std::to_string(::getpid());
  eo.slice_size = static_cast<std::uint32_t>(o.slice_size);
  eo.tcp.connections_per_peer = o.connections ? o.connections : std::max(o.threads, 4u);
  eo.tcp.in_flight_per_connection = o.in_flight;
  eo.tcp.io_threads = o.io_threads;
  eo.tcp.congestion_control = o.tcp_congestion;
  eo.shm.copy_threads = o.threads;
  Engine engine(ctx, eo);
  if (!o.metadata.empty())
    engine.use_metadata(*meta);
  int code = ctx.run_until(initiate(ctx, engine, o, shm));
  ctx.run_until(engine.shutdown());
  return code;
}

} // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"ferry-bench: measures ferry's transfer engine between a target that serves a segment and an "
               "initiator that reads or writes it in batches.",
               "ferry-bench"};
  app.add_option("--mode", o.mode, "target: serve a segment; initiator: drive transfers into one")
      ->required()
      ->check(CLI::IsMember({"target", "initiator", "both", "local"}));
  app.add_option("--listen", o.listen, "target: HOST:PORT to serve on (port 0: any)");
  app.add_option("--buffer-size", o.buffer_size, "target: bytes of shared memory to serve (suffixes K, M, G)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option("--name", o.name, "target: the segment's name")->capture_default_str();
  app.add_option("--target", o.target, "initiator: HOST:PORT of the target");
  app.add_option("--metadata", o.metadata,
                 "both sides: find the segment through this metadata service (memory://, http://HOST:PORT, "
                 "etcd://HOST:PORT[,...][/PREFIX], redis://HOST:PORT, p2p) instead of --target");
  app.add_option(
      "--segment", o.segment,
      "with --metadata: the segment's name (target: publishes it; initiator: opens it; p2p: HOST:PORT)");
  app.add_option("--protocol", o.protocol, "initiator: tcp (even on the same host) or shm (same host only)")
      ->check(CLI::IsMember({"tcp", "shm", "cuda", "file"}))
      ->capture_default_str();
  app.add_option(
         "--operation", o.operation,
         "initiator: read or write; local: read (the default there), randread or write (overwrites the "
         "file or device)")
      ->check(CLI::IsMember({"read", "write", "randread"}))
      ->capture_default_str();
  app.add_option("--block-size", o.block_size, "initiator: bytes per request (suffixes K, M, G)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "initiator: requests per batch")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "initiator: concurrent batch loops (and shm copy threads)")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--connections", o.connections,
                 "initiator: tcp connections to the target (default max(threads, 4))")
      ->check(CLI::Range(1u, 1024u));
  app.add_option("--tcp-congestion", o.tcp_congestion,
                 "both sides: TCP congestion control of the data connections, e.g. reno or cubic (default: "
                 "the system's, net.ipv4.tcp_congestion_control)");
  app.add_option("--io-threads", o.io_threads,
                 "both sides: threads that carry the tcp data connections, each connection on one (0: the "
                 "engine's own thread)")
      ->check(CLI::Range(0u, 256u))
      ->capture_default_str();
  app.add_option("--in-flight", o.in_flight, "initiator: tcp requests in flight per connection")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--slice-size", o.slice_size, "initiator: requests are cut into slices of this size")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(std::uint64_t{4096}, std::uint64_t{ferry::tcp::frame_header::max_data_payload}))
      ->capture_default_str();
  app.add_option("--timeout", o.timeout,
                 "initiator: seconds a batch (or the handshake) may take before it fails")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--duration", o.duration,
                 "seconds to run (initiator: default 10; target: until SIGINT/SIGTERM)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--json", o.json, "initiator: print one JSON object instead of the table");
  app.add_option("--src-device", o.src_device, "cuda: GPU the bytes come from (-1: pinned host memory)")
      ->capture_default_str();
  app.add_option("--dst-device", o.dst_device, "cuda: GPU the bytes go to (-1: pinned host memory)")
      ->capture_default_str();
  app.add_option("--cuda-method", o.cuda_method, "cuda: how batches move")
      ->check(CLI::IsMember({"automatic", "kernel", "memcpy_batch", "copy_engine"}))
      ->capture_default_str();
  app.add_option("--cuda-kernel", o.cuda_kernel,
                 "cuda: the copy kernel (block: a CUDA block per piece, block8: the same with deeper loads, "
                 "warp: a warp per piece)")
      ->check(CLI::IsMember({"block", "block8", "warp"}))
      ->capture_default_str();
  app.add_option("--cuda-kernel-threads", o.cuda_kernel_threads, "cuda: threads per CUDA block of the kernel")
      ->check(CLI::Range(32u, 1024u))
      ->capture_default_str();
  app.add_option("--cuda-blocks-per-sm", o.cuda_blocks_per_sm,
                 "cuda: the kernel's CUDA blocks per SM (0: one per piece)")
      ->capture_default_str();
  app.add_option("--cuda-piece-size", o.cuda_piece_size, "cuda: the kernel's unit of work, in bytes")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option(
      "--local-blocks", o.local_blocks,
      "initiator: distinct local blocks a batch's requests cycle through (default: one per request; "
      "1 reuses one hot block, as iperf3 reuses its buffer)");
  app.add_option(
         "--remote-blocks", o.remote_blocks,
         "initiator: distinct target blocks the requests cycle through (default: as many as the target's "
         "region holds; 1 makes every request use one hot block of the target, as iperf3's receiver "
         "reuses its buffer)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40));
  app.add_flag("--verify", o.verify, "initiator: check every byte end to end");
  app.add_flag("!--no-restore", o.restore,
               "initiator: leave written data in place (default: rewrite the fill pattern)");
  app.add_flag("!--no-progress", o.progress, "initiator: no progress line, even on a terminal");
  // --mode local --protocol file (file_bench.hpp)
  std::string file_path;
  unsigned queue_depth = 32;
  std::uint64_t file_size = 0;
  bool sqpoll = false, buffered = false, no_fixed_buffers = false;
  app.add_option("--file", file_path, "local: the file or block device to read or write");
  app.add_option("--queue-depth", queue_depth, "local: requests in flight")->check(CLI::Range(1u, 4096u));
  app.add_option("--file-size", file_size, "local: bytes of the file to use (a new file for writes: 1G)")
      ->transform(CLI::AsSizeValue(false));
  app.add_flag("--sqpoll", sqpoll, "local: a kernel thread polls the io_uring submission queue");
  app.add_flag("--buffered", buffered, "local: no O_DIRECT");
  app.add_flag("--no-fixed-buffers", no_fixed_buffers,
               "local: do not register the buffers with io_uring (each O_DIRECT operation pins its pages)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  ::signal(SIGPIPE, SIG_IGN);
  if (!o.metadata.empty() && o.segment.empty()) {
    std::fprintf(stderr, "ferry-bench: --metadata needs --segment NAME\n");
    return 2;
  }
  if (!o.metadata.empty() && o.mode != "initiator")
    o.name = o.segment;
  if (o.mode == "target" && o.duration == 0) {
    std::fprintf(stderr, "ferry-bench: --duration 0 would stop the target at once; leave it out to serve "
                         "until SIGINT/SIGTERM\n");
    return 2;
  }
  if (o.mode == "target")
    return run_target(o);
  if (o.block_size == 0) {
    std::fprintf(stderr, "ferry-bench: --block-size must be at least 1\n");
    return 2;
  }
  if (o.duration == 0) {
    std::fprintf(stderr, "ferry-bench: --duration must be more than 0 seconds (it is what is measured)\n");
    return 2;
  }
  if (o.mode == "local" || o.protocol == "file" || o.operation == "randread") {
#if FERRY_WITH_URING
    if (o.mode != "local" || o.protocol != "file" || file_path.empty()) {
      std::fprintf(stderr, "ferry-bench: files are measured with --mode local --protocol file --file PATH\n");
      return 2;
    }
    ferry_bench::file_options fo{file_path,
                                 // why: a file or device named without --operation is only read, never
                                 // overwritten with the benchmark's pattern
                                 app.count("--operation") ? o.operation : std::string("read"), o.block_size,
                                 queue_depth, app.count("--batch-size") ? o.batch_size : 1u, file_size,
                                 !buffered, sqpoll, o.duration < 0 ? 10 : o.duration, o.json};
    fo.fixed_buffers = !no_fixed_buffers;
    fo.timeout = o.timeout;
    if (o.verify) {
      // why: a file's content is whatever it holds; accepting the flag and checking nothing would read as
      // verified
      std::fprintf(stderr, "ferry-bench: --verify checks tcp, shm and cuda transfers, not --protocol file\n");
      return 2;
    }
    fo.interrupted = &stop_requested;
    stop_on_signals();
    try {
      return ferry_bench::run_file_bench(fo);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry-bench: %s\n", e.what());
      return 1;
    }
#else
    std::fprintf(stderr, "ferry-bench: built without ferry::uring (liburing); no file benchmarks\n");
    return 2;
#endif
  }
  if (o.protocol == "cuda") {
#if FERRY_WITH_CUDA
    // why: both memories live in this process; no target process is involved
    ferry_bench_cuda::params p{o.src_device, o.dst_device, o.operation, o.cuda_method,
                               o.block_size, o.batch_size, o.threads,   o.duration < 0 ? 10 : o.duration,
                               o.slice_size, o.verify,     o.json};
    p.kernel.kernel = o.cuda_kernel == "warp"     ? ferry::cuda_copy_kernel::warp_per_piece
                      : o.cuda_kernel == "block8" ? ferry::cuda_copy_kernel::block_per_piece_deep
                                                  : ferry::cuda_copy_kernel::block_per_piece;
    p.kernel.threads = o.cuda_kernel_threads;
    p.kernel.blocks_per_sm = o.cuda_blocks_per_sm;
    p.kernel.piece_bytes = static_cast<std::uint32_t>(o.cuda_piece_size);
    p.timeout = o.timeout;
    p.interrupted = &stop_requested;
    stop_on_signals();
    return ferry_bench_cuda::run(p);
#else
    std::fprintf(stderr, "ferry-bench: built without the CUDA toolkit; --protocol cuda is not available\n");
    return 2;
#endif
  }
  std::thread local_target;
  std::atomic<int> local_target_code{0};
  if (o.mode == "both") {
    if (o.metadata.empty() || o.metadata == "p2p") {
      std::fprintf(stderr, "ferry-bench: --mode both needs --metadata (memory:// is the usual one)\n");
      return 2;
    }
    if (o.listen.empty())
      o.listen = "127.0.0.1:0";
    options target_options = o;
    target_options.duration = -1; // serves until the initiator is done
    local_target =
        std::thread([&local_target_code, target_options] { local_target_code = run_target(target_options); });
    while (!target_ready && local_target_code == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  } else if (locator(o).empty()) {
    std::fprintf(stderr,
                 "ferry-bench: --mode initiator needs --target HOST:PORT or --metadata with --segment\n");
    return 2;
  }
  struct stop_local_target {
    std::thread& t;
    ~stop_local_target() {
      if (t.joinable()) {
        local_target_stop = true;
        t.join();
      }
    }
  } stop_local{local_target};
  if (local_target_code != 0)
    return local_target_code;
  if (o.local_blocks == 0 || o.local_blocks > o.batch_size)
    o.local_blocks = o.batch_size;
  if (o.verify && o.remote_blocks != 0 && o.remote_blocks < o.batch_size) {
    std::fprintf(stderr,
                 "ferry-bench: --verify needs a distinct target block per request (--remote-blocks >= "
                 "--batch-size)\n");
    return 2;
  }
  if (o.verify && o.local_blocks != o.batch_size) {
    std::fprintf(stderr,
                 "ferry-bench: --verify needs one local block per request (leave --local-blocks out)\n");
    return 2;
  }
  stop_on_signals();
  try {
    if (o.protocol == "shm")
      return run_initiator<ferry::transfer_engine<ferry::shm_transport, ferry::tcp_transport>>(o, true);
    return run_initiator<ferry::transfer_engine<ferry::tcp_transport>>(o, false);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-bench: %s\n", e.what());
    return 1;
  }
}
