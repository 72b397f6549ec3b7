// The master when memory runs out: each allocation that an operation makes is made to fail in turn (the
// n-th one throws std::bad_alloc), and the master must come out of every such failure whole: the operation
// either happened or did not, no space is lost or handed out twice, and every policy's bookkeeping still
// matches the objects (it evicts, reads and removes them all afterwards). The allocations are counted by this
// binary's own operator new (this test is a binary of its own), which fails only when a test arms it, on the
// arming thread.

#include "ferry/store/lease_lru_policy.hpp"
#include "ferry/store/lru_policy.hpp"
#include "ferry/store/manual_clock.hpp"
#include "ferry/store/master.hpp"
#include "ferry/store/prefix_aware_policy.hpp"
#include "ferry/store/s3fifo_policy.hpp"
#include "ferry/store/spread_placement.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {
// -1: never fail; n >= 0: the allocation after n more succeeds fails, once.
thread_local long allocations_before_failure = -1;
thread_local bool failed_one = false; // the armed failure happened

void* allocate(std::size_t n) {
  if (allocations_before_failure == 0) {
    allocations_before_failure = -1;
    failed_one = true;
    throw std::bad_alloc();
  }
  if (allocations_before_failure > 0)
    --allocations_before_failure;
  if (void* p = std::malloc(n ? n : 1))
    return p;
  throw std::bad_alloc();
}
void* allocate_aligned(std::size_t n, std::align_val_t a) {
  auto align = static_cast<std::size_t>(a);
  if (n > SIZE_MAX - align)
    throw std::bad_alloc();
  if (void* p = std::aligned_alloc(align, (n + align - 1) / align * align))
    return p;
  throw std::bad_alloc();
}
} // namespace

// why: every form, so that no form of the sanitizers' runtime is linked beside these
void* operator new(std::size_t n) {
  return allocate(n);
}
void* operator new[](std::size_t n) {
  return allocate(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t n, std::align_val_t a) {
  return allocate_aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return allocate_aligned(n, a);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(n, a);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(n, a);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}

using namespace std::chrono_literals;
using ferry::errc;
namespace store = ferry::store;

namespace {

constexpr std::uint64_t block = 4096;
constexpr std::uint64_t blocks = 16; // the one segment's capacity, in blocks

template<class Policy>
using test_master =
    store::master<Policy, store::spread_placement, store::offset_allocator, store::manual_clock>;

store::master_config config() {
  return {.shards = 1, // why: one shard, so that each setup below leaves its free-slot list where it means to
          .lease_ttl = 1s,
          .put_timeout = 10s,
          .client_ttl = 3s,
          .high_watermark = 1.0,
          .low_watermark = 1.0};
}

std::string key(const char* prefix, int i) {
  std::string k = prefix;
  k += std::to_string(i);
  return k;
}

/// Ten committed objects of one block (c0-c9, the ones with a parent chained under the one before, for the
/// prefix-aware policy), c3 read once, and one pending put (p0): 11 of the 16 blocks. Sixteen objects put and
/// removed before leave the free-slot list full, so that the next object dropped grows it.
template<class Policy>
void fill(test_master<Policy>& m) {
  REQUIRE(m.mount_segment({.name = "a", .host = "h", .capacity = blocks * block}));
  for (int i = 0; i < 10; ++i) {
    store::put_options o;
    const std::string parent = i > 0 ? key("c", i - 1) : std::string();
    o.parent = parent;
    REQUIRE(m.put_start(key("c", i), block, o));
    REQUIRE(m.put_end(key("c", i)));
  }
  REQUIRE(m.get_replicas("c3"));
  REQUIRE(m.put_start("p0", block));
  for (int i = 0; i < 16; ++i)
    REQUIRE(m.put_start(key("t", i), 1));
  for (int i = 0; i < 16; ++i)
    REQUIRE(m.put_revoke(key("t", i)));
  m.clock().advance(2s); // the read's lease has ended
}

/// fill(), and a second and third segment, the second owned by client 7, and objects o0-o3 with a replica on
/// each of the three: when client 7 expires, each keeps two.
template<class Policy>
void with_owned_segment(test_master<Policy>& m) {
  fill(m);
  REQUIRE(m.mount_segment({.name = "b", .host = "h2", .capacity = blocks * block, .owner = 7}));
  REQUIRE(m.mount_segment({.name = "c", .host = "h3", .capacity = blocks * block}));
  for (int i = 0; i < 4; ++i) {
    auto w = m.put_start(key("o", i), block, {.replicas = 3});
    REQUIRE(w);
    REQUIRE(w->count() == 3);
    REQUIRE(m.put_end(key("o", i)));
  }
}

/// One pending put (p0) in a master that holds nothing else: its commit is the policy's first insert.
template<class Policy>
void only_pending(test_master<Policy>& m) {
  REQUIRE(m.mount_segment({.name = "a", .host = "h", .capacity = blocks * block}));
  REQUIRE(m.put_start("p0", block));
}

/// Every object can still be read and removed, every pending put revoked, and then the pool holds its whole
/// capacity again: as many blocks as it has room for, side by side, and one more that evicts one of them.
template<class Policy>
void check_whole(test_master<Policy>& m, const std::vector<std::string>& keys) {
  for (auto& k : keys) {
    if (m.exists(k)) {
      auto r = m.get_replicas(k);
      REQUIRE_MESSAGE(r, k);
      m.clock().advance(2s);
      REQUIRE_MESSAGE(m.remove(k), k);
    } else if (auto revoked = m.put_revoke(k); !revoked) {
      REQUIRE_MESSAGE(revoked.error() == errc::not_found, k, ": ", revoked.error().message());
    }
  }
  auto s = m.stats();
  CHECK(s.objects == 0);
  CHECK(s.pending == 0);
  CHECK(s.used == 0);
  const auto evicted_before = s.evicted;
  std::vector<std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>> taken;
  const auto room = static_cast<int>(s.capacity / block);
  for (int i = 0; i < room; ++i) {
    auto w = m.put_start(key("r", i), block);
    REQUIRE_MESSAGE(w, w.error().message());
    REQUIRE(m.put_end(key("r", i)));
    taken.emplace_back(w->pieces[0].segment, w->pieces[0].offset, w->pieces[0].length);
  }
  std::sort(taken.begin(), taken.end());
  for (std::size_t i = 1; i < taken.size(); ++i) // no range handed out twice
    if (std::get<0>(taken[i - 1]) == std::get<0>(taken[i]))
      CHECK(std::get<1>(taken[i - 1]) + std::get<2>(taken[i - 1]) <= std::get<1>(taken[i]));
  CHECK(m.stats().evicted == evicted_before);
  auto more = m.put_start("r-more", block);
  REQUIRE_MESSAGE(more, more.error().message());
  CHECK(m.stats().evicted == evicted_before + 1);
  CHECK(m.stats().objects == static_cast<std::size_t>(room)); // one fewer of the first ones, and the new one
}

/// Runs `op` (true: it reported success) on a filled master with its n-th allocation failing, for n = 0, 1,
/// ... until it makes no more allocations than that; after each failure `after` checks what the operation
/// promises, then the master is checked whole. Returns how many allocation points were tried.
/// why: `op` uses no test macros, whose own allocations would be counted and fail instead of the master's
template<class Policy>
int fail_each_allocation(const std::function<bool(test_master<Policy>&)>& op,
                         const std::function<void(test_master<Policy>&)>& after,
                         void (*setup)(test_master<Policy>&) = &fill<Policy>) {
  std::vector<std::string> keys{"p0", "new", "big"};
  for (int i = 0; i < 10; ++i)
    keys.push_back(key("c", i));
  for (int i = 0; i < 4; ++i)
    keys.push_back(key("o", i));
  for (long n = 0;; ++n) {
    CAPTURE(n);
    test_master<Policy> m(config());
    setup(m);
    bool threw = false, done = false;
    failed_one = false;
    allocations_before_failure = n;
    try {
      done = op(m);
    } catch (const std::bad_alloc&) {
      threw = true;
    }
    allocations_before_failure = -1;
    if (!failed_one) { // the operation made n allocations or fewer: each was made to fail once
      CHECK(done);
      return static_cast<int>(n);
    }
    // why: a failure the standard library absorbed (a sort's scratch buffer, asked for without throwing)
    // lets the operation succeed; the master must be whole then too
    if (threw)
      after(m);
    else
      CHECK(done);
    check_whole(m, keys);
  }
}

} // namespace

TEST_SUITE("master") {
  TEST_CASE_TEMPLATE("an allocation that fails anywhere in an operation leaves the master whole", Policy,
                     store::lru_policy, store::lease_lru_policy<>, store::s3fifo_policy,
                     store::prefix_aware_policy) {
    using M = test_master<Policy>;
    auto nothing = [](M&) {};
    int points = 0;
    SUBCASE("a put that fits: it did not start") {
      points = fail_each_allocation<Policy>([](M& m) { return m.put_start("new", block).has_value(); },
                                            [](M& m) {
                                              CHECK(m.put_end("new").error() == errc::not_found);
                                              CHECK(m.stats().objects == 11);
                                            });
    }
    SUBCASE("a put that evicts: it did not start, and what it evicted is gone whole") {
      points = fail_each_allocation<Policy>(
          [](M& m) {
            store::put_options o;
            o.parent = "c9";
            return m.put_start("big", 8 * block, o).has_value();
          },
          [](M& m) { CHECK(m.put_end("big").error() == errc::not_found); });
    }
    SUBCASE("a first commit: the put is still pending and can be committed") {
      points = fail_each_allocation<Policy>([](M& m) { return m.put_end("p0").has_value(); },
                                            [](M& m) {
                                              CHECK_FALSE(m.exists("p0"));
                                              REQUIRE(m.put_end("p0"));
                                            },
                                            &only_pending<Policy>);
    }
    SUBCASE("a read") {
      points = fail_each_allocation<Policy>([](M& m) { return m.get_replicas("c4").has_value(); }, nothing);
    }
    SUBCASE("a removal: the object is still there") {
      points = fail_each_allocation<Policy>([](M& m) { return m.remove("c5").has_value(); },
                                            [](M& m) { CHECK(m.exists("c5")); });
    }
    SUBCASE("a revoked put: it is still pending") {
      points = fail_each_allocation<Policy>([](M& m) { return m.put_revoke("p0").has_value(); },
                                            [](M& m) { CHECK(m.stats().pending == 1); });
    }
    SUBCASE("a maintenance pass that reclaims a put and expires a client whose segment goes") {
      points = fail_each_allocation<Policy>(
          [](M& m) {
            m.clock().advance(20s);
            auto report = m.tick();
            return report.puts_reclaimed == 1 && report.clients_expired == 1;
          },
          [](M& m) {
            // the pass may have stopped part-way; the next one finishes what it left
            auto next = m.tick();
            (void)next;
            CHECK(m.stats().segments == 2);
            CHECK(m.stats().pending == 0);
          },
          &with_owned_segment<Policy>);
    }
    SUBCASE("an eviction to a target") {
      points = fail_each_allocation<Policy>([](M& m) { return m.evict_to(4 * block) > 0; }, nothing);
    }
    MESSAGE("allocation points tried: ", points);
    CHECK(points > 0);
  }
}
