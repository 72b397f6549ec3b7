// Store master throughput (put_start+put_end, get_replicas, remove; 1 and 2 threads; puts that evict prefix
// chains), the cost of one maintenance pass over a large pool, and master memory per object, measured from
// the allocator's own accounting (glibc mallinfo2: bytes in use, chunk headers included).
//
//   ferry-store-master-bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include "ferry/store/master.hpp"

#include <benchmark/benchmark.h>
#include <malloc.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

namespace store = ferry::store;
using bench_master = store::master<>;

constexpr std::uint64_t object_bytes = 4096;

// Keys as a KV-cache client would name blocks: 14 characters (short enough for std::string's inline buffer).
std::string key_of(int thread, std::int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "b%1d/%011lld", thread, static_cast<long long>(i));
  return buf;
}

std::unique_ptr<bench_master> make_master() {
  auto m = std::make_unique<bench_master>(
      store::master_config{.shards = 16, .lease_ttl = std::chrono::nanoseconds(0)});
  for (int s = 0; s < 4; ++s)
    (void)m->mount_segment({.name = std::string(1, char('a' + s)),
                            .host = std::string(1, char('h' + s)),
                            .capacity = std::uint64_t{1} << 40,
                            .owner = 1});
  return m;
}

std::unique_ptr<bench_master> shared;

void setup(const benchmark::State& state) {
  if (state.thread_index() == 0)
    shared = make_master();
}
void teardown(const benchmark::State& state) {
  if (state.thread_index() == 0)
    shared.reset();
}

std::vector<std::string> keys_for(int thread, std::int64_t n) {
  std::vector<std::string> keys;
  keys.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    keys.push_back(key_of(thread, i));
  return keys;
}

// why: each thread works on its own keys and removes what it put after timing, so the map stays at a
// steady size across iterations instead of growing with the run length.
void put_pair(benchmark::State& state) {
  constexpr std::int64_t batch = 1 << 16;
  auto keys = keys_for(state.thread_index(), batch);
  for (auto _ : state) {
    for (auto& k : keys) {
      auto w = shared->put_start(k, object_bytes);
      benchmark::DoNotOptimize(w);
      (void)shared->put_end(k);
    }
    state.PauseTiming();
    for (auto& k : keys)
      (void)shared->remove(k);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(put_pair)->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime()->Unit(
    benchmark::kMillisecond);

void get_replicas(benchmark::State& state) {
  constexpr std::int64_t batch = 1 << 16;
  auto keys = keys_for(state.thread_index(), batch);
  for (auto& k : keys)
    (void)(shared->put_start(k, object_bytes) && shared->put_end(k));
  for (auto _ : state)
    for (auto& k : keys) {
      auto r = shared->get_replicas(k);
      benchmark::DoNotOptimize(r);
    }
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(get_replicas)
    ->Setup(setup)
    ->Teardown(teardown)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void remove(benchmark::State& state) {
  constexpr std::int64_t batch = 1 << 16;
  auto keys = keys_for(state.thread_index(), batch);
  for (auto _ : state) {
    state.PauseTiming();
    for (auto& k : keys)
      (void)(shared->put_start(k, object_bytes) && shared->put_end(k));
    state.ResumeTiming();
    for (auto& k : keys)
      benchmark::DoNotOptimize(shared->remove(k));
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(remove)->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime()->Unit(
    benchmark::kMillisecond);

// Master memory per committed object: heap bytes in use after N puts, minus before, over N. The keys
// themselves are built before the first measurement, so only the master's copies count.
void memory_per_object(benchmark::State& state) {
  const auto n = state.range(0);
  auto keys = keys_for(0, n);
  double per_object = 0;
  for (auto _ : state) {
    auto m = make_master();
    auto before = mallinfo2().uordblks;
    for (auto& k : keys)
      (void)(m->put_start(k, object_bytes) && m->put_end(k));
    auto after = mallinfo2().uordblks;
    per_object = double(after - before) / double(n);
    benchmark::DoNotOptimize(m);
  }
  state.counters["bytes_per_object"] = per_object;
}
BENCHMARK(memory_per_object)->Arg(1 << 20)->Iterations(1)->Unit(benchmark::kMillisecond);

// One maintenance pass (`tick`) over a master holding N committed objects and 64 puts still pending, none of
// them due: what the periodic call costs a large pool when there is nothing to do.
void tick(benchmark::State& state) {
  const auto n = state.range(0);
  auto m = make_master();
  for (auto& k : keys_for(0, n))
    (void)(m->put_start(k, object_bytes) && m->put_end(k));
  for (auto& k : keys_for(1, 64))
    (void)m->put_start(k, object_bytes);
  for (auto _ : state) {
    auto report = m->tick();
    benchmark::DoNotOptimize(report);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(tick)->Arg(1 << 16)->Arg(1 << 20)->Unit(benchmark::kMicrosecond);

// Puts into a full pool under the prefix-aware policy, each block of a chain of `range(0)` blocks linked to
// the one before it (one hash tag per chain, so a chain lives in one shard): what eviction costs per put when
// the pool holds long prefixes. 16,384 blocks of 4 KiB fill the pool; the timed puts evict as they go.
void put_evicting_chains(benchmark::State& state) {
  const auto chain = state.range(0);
  constexpr std::int64_t pool_blocks = 1 << 14;
  auto m = std::make_unique<bench_master>(
      store::master_config{.shards = 16, .lease_ttl = std::chrono::nanoseconds(0)});
  (void)m->mount_segment({.name = "a", .host = "h", .capacity = pool_blocks * object_bytes, .owner = 1});
  std::int64_t next = 0;
  auto put_next = [&] {
    char key[48], parent[48];
    const auto c = next / chain, b = next % chain;
    std::snprintf(key, sizeof key, "{c%lld}/%lld", static_cast<long long>(c), static_cast<long long>(b));
    std::snprintf(parent, sizeof parent, "{c%lld}/%lld", static_cast<long long>(c),
                  static_cast<long long>(b - 1));
    store::put_options o;
    if (b > 0)
      o.parent = parent;
    o.depth = static_cast<std::uint32_t>(b);
    (void)(m->put_start(key, object_bytes, o) && m->put_end(key));
    ++next;
  };
  while (next < 2 * pool_blocks) // full, and evicting for a while
    put_next();
  for (auto _ : state)
    put_next();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(put_evicting_chains)->Arg(16)->Arg(256)->Arg(4096)->Unit(benchmark::kMicrosecond);

} // namespace

BENCHMARK_MAIN();
