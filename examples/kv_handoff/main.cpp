// ferry-kv-handoff: the prefill -> decode KV-cache handoff, as two processes on one machine.
//
// The decode process registers a KV buffer in shared memory, serves its segment on 127.0.0.2 and starts the
// prefill process (this same program, --role prefill). Prefill serves its own segment on 127.0.0.3 (a second
// "host" on loopback), opens the decode segment by "host:port", writes a few hundred KV blocks (16-256 KiB,
// at scattered offsets, content derived from a seed) in one batch, and has the engine notify decode once
// every byte has landed. The notification is a JSON list of the blocks. Decode then checks every byte of its
// buffer: each block holds what the seed says, and nothing outside the blocks was touched.
//
//   ferry-kv-handoff [--blocks N] [--transport tcp|shm] [--seed S] [--wait SECONDS] [--stall-prefill]
//
// --transport shm (the default) uses ferry::default_engine, which takes shared memory to a same-host peer;
// --transport tcp makes prefill use TCP only. Decode waits --wait seconds (default 60) for the notification;
// a prefill that has not ended some seconds after that is killed. --stall-prefill stops prefill (SIGSTOP)
// before it writes anything, to show that deadline. Exit status 0 means every byte was verified.
#include <ferry/core.hpp>
#include <ferry/io.hpp>
#include <ferry/transfer.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <spawn.h>
#include <stop_token>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace {

using ferry::task;
namespace io = ferry::io;
using namespace std::chrono_literals;

constexpr std::uint64_t kib = 1024;
constexpr std::uint64_t min_block = 16 * kib, max_block = 256 * kib;
constexpr std::uint64_t slot = 320 * kib; // decode reserves this much per block; prefill scatters within it

struct options {
  unsigned blocks = 256;
  std::string transport = "shm";
  std::uint64_t seed = 42;
  std::string role = "decode";
  std::string decode; // prefill: where the decode segment is served
  double wait = 60;   // decode: seconds to wait for prefill's notification
  bool stall = false; // prefill stops itself before writing (decode's deadline, shown)
};

// The content of KV block `block`: 8-byte words of a hash of (seed, block, word).
std::uint64_t kv_word(std::uint64_t seed, std::uint64_t block, std::uint64_t word) {
  // why: the added constant (splitmix64's) keeps the word whose key is 0 from being 0, which a buffer that
  // starts zeroed would hold without a write
  std::uint64_t x = (seed ^ (block << 40) ^ word) + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void fill_block(std::byte* dst, std::uint64_t length, std::uint64_t seed, std::uint64_t block) {
  for (std::uint64_t w = 0; w < length / 8; ++w) {
    std::uint64_t v = kv_word(seed, block, w);
    std::memcpy(dst + w * 8, &v, 8);
  }
}

bool block_matches(const std::byte* got, std::uint64_t length, std::uint64_t seed, std::uint64_t block) {
  for (std::uint64_t w = 0; w < length / 8; ++w) {
    std::uint64_t v = kv_word(seed, block, w);
    if (std::memcmp(got + w * 8, &v, 8) != 0)
      return false;
  }
  return true;
}

/// One KV block of the handoff: where it lands in decode's segment, and how long it is.
struct planned_block {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  friend bool operator==(const planned_block&, const planned_block&) = default;
};

// The handoff's plan, which both sides compute from the seed: block k has a random length (16-256 KiB, in
// 4 KiB steps) and lands at a random 4 KiB-aligned place in a shuffled slot of the buffer at segment offset
// `base`.
std::vector<planned_block> plan(std::uint64_t seed, unsigned count, std::uint64_t base) {
  std::mt19937_64 rng(seed);
  std::vector<unsigned> slots(count);
  std::iota(slots.begin(), slots.end(), 0u);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<planned_block> out;
  for (unsigned k = 0; k < count; ++k) {
    std::uint64_t length = min_block + rng() % ((max_block - min_block) / (4 * kib) + 1) * (4 * kib);
    std::uint64_t within = rng() % ((slot - length) / (4 * kib) + 1) * (4 * kib);
    out.push_back({base + slots[k] * slot + within, length});
  }
  return out;
}

std::int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ---- prefill: write the blocks, then notify ----

template<class Engine>
task<int> prefill(Engine& engine, const options& o) {
  if (o.stall)
    ::raise(SIGSTOP);
  ferry::result<ferry::segment_id> decode;
  {
    io::deadline limit(engine.context(), 30s);
    decode = co_await engine.open_segment(o.decode, limit.token());
  }
  if (!decode) {
    std::fprintf(stderr, "prefill: cannot open the decode segment at %s: %s\n", o.decode.c_str(),
                 decode.error().message().c_str());
    co_return 1;
  }
  const ferry::segment_descriptor& d = engine.find(*decode)->descriptor;
  if (d.regions.empty() || d.regions.front().length / o.blocks < slot) {
    std::fprintf(stderr, "prefill: the decode segment has no room for %u blocks\n", o.blocks);
    co_return 1;
  }
  const ferry::region_descriptor& kv = d.regions.front();

  const std::vector<planned_block> planned = plan(o.seed, o.blocks, kv.offset);
  nlohmann::json blocks = nlohmann::json::array();
  std::uint64_t total = 0;
  for (const auto& b : planned) {
    blocks.push_back({b.offset, b.length});
    total += b.length;
  }

  // The KV blocks as prefill computed them, contiguous in local memory registered with the engine.
  io::aligned_buffer source(total);
  if (auto r = engine.registry().add(source.data(), source.size(), ferry::access::none); !r) {
    std::fprintf(stderr, "prefill: cannot register memory: %s\n", r.error().message().c_str());
    co_return 1;
  }
  ferry::transfer_batch batch;
  std::uint64_t at = 0;
  for (unsigned k = 0; k < o.blocks; ++k) {
    fill_block(source.data() + at, planned[k].length, o.seed, k);
    batch.write(source.data() + at, *decode, planned[k].offset, planned[k].length);
    at += planned[k].length;
  }

  // Same host and shared memory: default_engine copies straight into decode's memory; otherwise TCP.
  bool shm = o.transport == "shm" && d.host == engine.descriptor().host && !kv.shm_name.empty();
  nlohmann::json note{{"seed", o.seed},
                      {"transport", shm ? "shm" : "tcp"},
                      {"submitted_ns", monotonic_ns()},
                      {"blocks", std::move(blocks)}};
  ferry::batch_result r = co_await engine.transfer(
      std::move(batch), ferry::transfer_options().with_timeout(30s).with_notify(note.dump()));
  if (!r.ok()) {
    std::fprintf(stderr, "prefill: the handoff failed: %s\n", r.first_error().message().c_str());
    co_return 1;
  }
  // The path the bytes took, as the engine counted them: the note above named the one expected.
  const std::uint64_t over_shm = engine.routed_bytes("shm"), over_tcp = engine.routed_bytes("tcp");
  std::printf("prefill: %llu bytes written, %llu over shm and %llu over tcp\n",
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(over_shm),
              static_cast<unsigned long long>(over_tcp));
  if ((shm ? over_tcp : over_shm) != 0 || (shm ? over_shm : over_tcp) < total) {
    std::fprintf(stderr, "prefill: the bytes did not all go over %s, as the note to decode says\n",
                 shm ? "shm" : "tcp");
    co_return 1;
  }
  co_return 0;
}

template<class Engine>
int run_prefill(const options& o) {
  io::io_context ctx;
  Engine engine(ctx, {.name = "prefill", .listen = "127.0.0.3:0"});
  if (auto s = engine.start(); !s) {
    std::fprintf(stderr, "prefill: cannot listen on 127.0.0.3: %s\n", s.error().message().c_str());
    return 1;
  }
  int code = ctx.run_until(prefill(engine, o));
  ctx.run_until(engine.shutdown());
  return code;
}

// ---- decode: start prefill, wait for its notification, verify ----

// Polls the child; if it exits before it has notified us, cancels the wait for the notification.
task<> watch_child(io::io_context& ctx, pid_t child, int& status, bool& exited, const bool& notified,
                   std::stop_source& cancel) {
  while (!notified) {
    if (::waitpid(child, &status, WNOHANG) == child) {
      exited = true;
      cancel.request_stop();
      co_return;
    }
    co_await ctx.sleep_for(20ms);
  }
}

task<ferry::result<ferry::notification>> receive(io::io_context& ctx, ferry::default_engine& engine,
                                                 double wait, std::stop_source& cancel, bool& notified,
                                                 std::chrono::steady_clock::time_point& arrived) {
  io::deadline limit(
      ctx, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(wait)),
      cancel.get_token());
  auto n = co_await engine.next_notification(limit.token());
  arrived = std::chrono::steady_clock::now();
  notified = true;
  co_return n;
}

// Checks the whole buffer (at segment offset `base`): every block holds its content, every other byte is
// still zero.
bool verify(const std::byte* kv, std::uint64_t size, std::uint64_t base, const nlohmann::json& note,
            std::uint64_t& bytes) {
  std::uint64_t seed = note.at("seed").get<std::uint64_t>();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> by_offset; // (offset, block index)
  const auto& blocks = note.at("blocks");
  for (std::uint64_t k = 0; k < blocks.size(); ++k)
    by_offset.emplace_back(blocks[k][0].get<std::uint64_t>() - base, k);
  std::sort(by_offset.begin(), by_offset.end());
  std::uint64_t at = 0;
  bytes = 0;
  for (auto [offset, k] : by_offset) {
    std::uint64_t length = blocks[k][1].get<std::uint64_t>();
    if (offset < at || offset > size || length > size - offset) {
      std::fprintf(stderr, "decode: block %llu lies outside the buffer or overlaps another\n",
                   static_cast<unsigned long long>(k));
      return false;
    }
    for (; at < offset; ++at)
      if (kv[at] != std::byte{0}) {
        std::fprintf(stderr, "decode: byte %llu outside every block was changed\n",
                     static_cast<unsigned long long>(at));
        return false;
      }
    if (!block_matches(kv + offset, length, seed, k)) {
      std::fprintf(stderr, "decode: block %llu (offset %llu, %llu bytes) does not hold what prefill wrote\n",
                   static_cast<unsigned long long>(k), static_cast<unsigned long long>(offset),
                   static_cast<unsigned long long>(length));
      return false;
    }
    at = offset + length;
    bytes += length;
  }
  for (; at < size; ++at)
    if (kv[at] != std::byte{0}) {
      std::fprintf(stderr, "decode: byte %llu outside every block was changed\n",
                   static_cast<unsigned long long>(at));
      return false;
    }
  return true;
}

// Waits up to `grace` for the child to end; after that kills it (a stopped or stuck prefill never holds
// decode up). Whether it ended by itself.
bool reap(pid_t child, int& status, std::chrono::milliseconds grace) {
  auto until = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < until) {
    if (::waitpid(child, &status, WNOHANG) == child)
      return true;
    ::usleep(20'000);
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  return false;
}

int run_decode(const options& o, const char* self) {
  auto kv = ferry::shared_buffer::create(o.blocks * slot); // zero-filled
  if (!kv) {
    std::fprintf(stderr, "decode: cannot allocate the KV buffer: %s\n", kv.error().message().c_str());
    return 1;
  }
  io::io_context ctx;
  ferry::default_engine engine(ctx, {.name = "decode", .listen = "127.0.0.2:0"});
  auto region = engine.registry().add(kv->data(), kv->size(), ferry::access::read_write, kv->name());
  if (!region) {
    std::fprintf(stderr, "decode: cannot register the KV buffer: %s\n", region.error().message().c_str());
    return 1;
  }
  if (auto s = engine.start(); !s) {
    std::fprintf(stderr, "decode: cannot listen on 127.0.0.2: %s\n", s.error().message().c_str());
    return 1;
  }
  std::string address = engine.endpoint()->to_string();
  std::printf("decode: %zu-byte KV buffer served at %s; starting prefill (%u blocks, %s, seed %llu)\n",
              kv->size(), address.c_str(), o.blocks, o.transport.c_str(),
              static_cast<unsigned long long>(o.seed));
  std::fflush(stdout);

  std::string blocks = std::to_string(o.blocks), seed = std::to_string(o.seed);
  std::vector<const char*> args{
      self,           "--role", "prefill",    "--decode",    address.c_str(),    "--blocks",
      blocks.c_str(), "--seed", seed.c_str(), "--transport", o.transport.c_str()};
  if (o.stall)
    args.push_back("--stall-prefill");
  args.push_back(nullptr);
  pid_t child = 0;
  if (int e = ::posix_spawn(&child, self, nullptr, nullptr, const_cast<char**>(args.data()), environ);
      e != 0) {
    std::fprintf(stderr, "decode: cannot start prefill (%s): %s\n", self, std::strerror(e));
    return 1;
  }

  int status = 0;
  bool exited = false, notified = false;
  std::stop_source cancel;
  std::chrono::steady_clock::time_point arrived;
  auto [n, watched] =
      ctx.run_until(ferry::when_all(receive(ctx, engine, o.wait, cancel, notified, arrived),
                                    watch_child(ctx, child, status, exited, notified, cancel)));
  (void)watched;
  if (!exited && !reap(child, status, 10s))
    std::fprintf(stderr, "decode: prefill had not ended 10 s after %s; killed it\n",
                 n ? "it notified" : "the wait for it ended");
  bool prefill_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!n) {
    std::fprintf(stderr, "decode: no notification from prefill (%s)%s\n", n.error().message().c_str(),
                 prefill_ok ? "" : "; prefill failed");
    return 1;
  }

  nlohmann::json note = nlohmann::json::parse(n->message, nullptr, false);
  if (note.is_discarded() || !note.contains("blocks") || !note.contains("seed")) {
    std::fprintf(stderr, "decode: the notification from %s is not a block list\n", n->from.c_str());
    return 1;
  }
  // why: what decode asked prefill for, not only what the note says was sent: a note that lists fewer blocks
  // (or another seed) would otherwise verify as well as the full handoff
  if (!note["blocks"].is_array() || note["blocks"].size() != o.blocks ||
      note["seed"] != nlohmann::json(o.seed)) {
    std::fprintf(stderr, "decode: the note lists %zu blocks of seed %s; decode asked for %u of seed %llu\n",
                 note["blocks"].size(), note["seed"].dump().c_str(), o.blocks,
                 static_cast<unsigned long long>(o.seed));
    return 1;
  }
  // why: the blocks decode checks are the ones it asked for (their places and lengths follow from the seed),
  // not whatever the note lists: blocks of no length, say, would verify trivially
  std::vector<planned_block> listed;
  for (const auto& b : note["blocks"])
    if (b.is_array() && b.size() == 2 && b[0].is_number_unsigned() && b[1].is_number_unsigned())
      listed.push_back({b[0].get<std::uint64_t>(), b[1].get<std::uint64_t>()});
  if (listed != plan(o.seed, o.blocks, *region)) {
    std::fprintf(stderr, "decode: the note's blocks are not the ones the seed plans (places and lengths)\n");
    return 1;
  }
  // Both processes run on this machine, so they share the monotonic clock.
  auto handoff =
      std::chrono::nanoseconds(arrived.time_since_epoch().count() - note.value("submitted_ns", 0ll));
  auto t0 = std::chrono::steady_clock::now();
  std::uint64_t bytes = 0;
  bool ok = verify(kv->data(), kv->size(), *region, note, bytes);
  auto checking = std::chrono::steady_clock::now() - t0;
  ctx.run_until(engine.shutdown());

  double seconds = std::chrono::duration<double>(handoff).count();
  std::printf("decode: %zu blocks, %llu bytes from %s over %s in %.2f ms (%.2f GB/s, submit to notified)\n",
              note["blocks"].size(), static_cast<unsigned long long>(bytes), n->from.c_str(),
              note.value("transport", "?").c_str(), seconds * 1e3,
              static_cast<double>(bytes) / seconds / 1e9);
  if (!ok || !prefill_ok) {
    std::printf("decode: NOT verified%s\n", prefill_ok ? "" : " (prefill failed)");
    return 1;
  }
  std::printf("decode: verified every byte of the %zu-byte buffer in %.1f ms\n", kv->size(),
              std::chrono::duration<double, std::milli>(checking).count());
  return 0;
}

options parse(int argc, char** argv) {
  options o;
  auto usage = [] {
    std::fprintf(stderr,
                 "usage: ferry-kv-handoff [--blocks N] [--transport tcp|shm] [--seed S] [--wait SECONDS] "
                 "[--stall-prefill]\n");
    std::exit(2);
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: ferry-kv-handoff [--blocks N] [--transport tcp|shm] [--seed S] [--wait SECONDS] "
                  "[--stall-prefill]\n");
      std::exit(0);
    }
    if (a == "--stall-prefill") {
      o.stall = true;
      continue;
    }
    if (i + 1 >= argc)
      usage();
    std::string v = argv[++i];
    if (a == "--blocks")
      o.blocks = static_cast<unsigned>(std::strtoul(v.c_str(), nullptr, 10));
    else if (a == "--transport")
      o.transport = v;
    else if (a == "--seed")
      o.seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (a == "--role")
      o.role = v;
    else if (a == "--decode")
      o.decode = v;
    else if (a == "--wait")
      o.wait = std::strtod(v.c_str(), nullptr);
    else
      usage();
  }
  if (o.blocks == 0 || o.blocks > 4096 || !(o.wait > 0) || (o.transport != "tcp" && o.transport != "shm") ||
      (o.role != "decode" && o.role != "prefill") || (o.role == "prefill" && o.decode.empty()))
    usage();
  return o;
}

} // namespace

int main(int argc, char** argv) {
  options o = parse(argc, argv);
  if (o.role == "prefill")
    return o.transport == "tcp" ? run_prefill<ferry::transfer_engine<ferry::tcp_transport>>(o)
                                : run_prefill<ferry::default_engine>(o);
  return run_decode(o, "/proc/self/exe");
}
