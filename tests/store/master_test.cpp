#include "ferry/store/master.hpp"

#include "ferry/store/lru_policy.hpp"
#include "ferry/store/manual_clock.hpp"
#include "ferry/store/spread_placement.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using ferry::errc;
namespace store = ferry::store;

namespace {
using test_master =
    store::master<store::lru_policy, store::spread_placement, store::offset_allocator, store::manual_clock>;

store::master_config no_watermark(std::size_t shards = 4) {
  return {.shards = shards,
          .lease_ttl = 1s,
          .put_timeout = 10s,
          .client_ttl = 3s,
          .high_watermark = 1.0,
          .low_watermark = 1.0};
}

// why: builds the string in place; `"lit" + std::to_string(i)` trips a false -Wrestrict in GCC 12.
std::string named(std::string prefix, long i) {
  prefix += std::to_string(i);
  return prefix;
}

bool put(test_master& m, const std::string& key, std::uint64_t size, store::put_options o = {}) {
  return m.put_start(key, size, o) && m.put_end(key);
}
} // namespace

TEST_SUITE("master") {
  TEST_CASE("a committed object is readable, immutable and removable") {
    test_master m(no_watermark());
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1 << 20, .owner = 1}));
    auto w = m.put_start("k", 1000);
    REQUIRE(w);
    CHECK(w->count() == 1);
    CHECK(w->pieces[0].length == 1000);
    CHECK_FALSE(m.exists("k"));
    REQUIRE(m.put_end("k"));
    CHECK(m.exists("k"));
    auto r = m.get_replicas("k");
    REQUIRE(r);
    CHECK(r->pieces == w->pieces);
    m.clock().advance(2s);
    CHECK(m.remove("k"));
    CHECK_FALSE(m.exists("k"));
    CHECK(m.stats().used == 0);
  }

  TEST_CASE("bad calls get precise errors") {
    test_master m(no_watermark());
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1 << 20, .owner = 1}));
    CHECK(m.put_end("nothing").error() == errc::not_found);
    REQUIRE(m.put_start("k", 10));
    CHECK(m.put_start("k", 10).error() == errc::already_exists);
    CHECK(m.get_replicas("k").error() == errc::not_ready);
    CHECK(m.remove("k").error() == errc::invalid_state);
    REQUIRE(m.put_end("k"));
    CHECK(m.put_end("k").error() == errc::invalid_state);
    CHECK(m.put_revoke("k").error() == errc::invalid_state);
    CHECK(m.put_start("", 10).error() == errc::invalid_argument);
    CHECK(m.put_start("z", 0).error() == errc::invalid_argument);
    CHECK(m.mount_segment({.name = "a", .host = "h", .capacity = 1}).error() == errc::already_exists);
    CHECK(m.mount_segment({.name = "b", .host = "h", .capacity = 0}).error() == errc::invalid_argument);
    CHECK(m.unmount_segment(99).error() == errc::unknown_segment);
    CHECK(m.remove("missing").error() == errc::not_found);
  }

  TEST_CASE("a leased object cannot be removed until the lease ends") {
    test_master m(no_watermark());
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1 << 20, .owner = 1}));
    REQUIRE(put(m, "k", 100));
    REQUIRE(m.get_replicas("k"));
    CHECK(m.remove("k").error() == errc::busy);
    m.clock().advance(999ms);
    CHECK(m.remove("k").error() == errc::busy);
    m.clock().advance(1ms);
    CHECK(m.remove("k"));
  }

  TEST_CASE("a revoked put frees its space") {
    test_master m(no_watermark());
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1000, .owner = 1}));
    REQUIRE(m.put_start("k", 1000));
    CHECK(m.stats().used == 1000);
    REQUIRE(m.put_revoke("k"));
    CHECK(m.stats().used == 0);
    CHECK(m.put_end("k").error() == errc::not_found);
  }

  TEST_CASE("replicas are best effort on distinct segments, and none is an out-of-space error") {
    test_master m(no_watermark());
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1000, .owner = 1}));
    REQUIRE(m.mount_segment({.name = "b", .host = "h2", .capacity = 1000, .owner = 2}));
    auto w = m.put_start("k", 600, {.replicas = 3});
    REQUIRE(w);
    CHECK(w->count() == 2);
    CHECK(w->pieces[0].segment != w->pieces[1].segment);
    // both segments hold 400 free bytes; the pending object cannot be evicted
    CHECK(m.put_start("j", 600).error() == errc::out_of_space);
  }

  TEST_CASE("a striped replica spreads its pieces over distinct segments") {
    test_master m(no_watermark());
    for (int i = 0; i < 3; ++i)
      REQUIRE(m.mount_segment({.name = named("s", i), .host = named("h", i), .capacity = 1000}));
    auto w = m.put_start("k", 1001, {.stripes = 3});
    REQUIRE(w);
    REQUIRE(w->count() == 1);
    std::set<store::segment_id> segs;
    std::uint64_t total = 0;
    for (auto& p : w->replica(0)) {
      segs.insert(p.segment);
      total += p.length;
    }
    CHECK(segs.size() == 3);
    CHECK(total == 1001);
    CHECK(m.put_start("x", 10, {.stripes = 4}).error() == errc::out_of_space);
  }

  TEST_CASE("a full pool evicts unleased objects, never leased, pending or pinned ones") {
    test_master m(no_watermark(1));
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 500, .owner = 1}));
    REQUIRE(put(m, "old", 100));
    REQUIRE(put(m, "leased", 100));
    REQUIRE(put(m, "hard", 100, {.hard_pin = true}));
    REQUIRE(put(m, "soft", 100, {.soft_pin = 1h}));
    REQUIRE(m.put_start("pending", 100));
    REQUIRE(m.get_replicas("leased"));
    REQUIRE(m.put_start("new", 100));
    CHECK_FALSE(m.exists("old"));
    CHECK(m.exists("leased"));
    CHECK(m.exists("hard"));
    CHECK(m.exists("soft"));
    CHECK(m.stats().evicted == 1);
    // once "new" is read too, only the soft-pinned object is left to evict: it goes rather than failing
    REQUIRE(m.put_end("new"));
    REQUIRE(m.get_replicas("new"));
    m.clock().advance(10ms);
    REQUIRE(m.put_start("newer", 100));
    CHECK_FALSE(m.exists("soft"));
    // now nothing can be evicted
    CHECK(m.put_start("newest", 100).error() == errc::out_of_space);
  }

  TEST_CASE("crossing the high watermark evicts down to the low watermark") {
    test_master m({.shards = 2, .lease_ttl = 1s, .high_watermark = 0.8, .low_watermark = 0.5});
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1000, .owner = 1}));
    for (int i = 0; i < 8; ++i)
      REQUIRE(put(m, named("k", i), 100));
    CHECK(m.stats().used == 800);
    REQUIRE(m.put_start("k8", 100));
    CHECK(m.stats().used <= 500);
    CHECK(m.stats().evicted >= 4);
  }

  TEST_CASE("a put that never commits is reclaimed after the timeout") {
    test_master m(no_watermark());
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1000, .owner = 1}));
    REQUIRE(m.put_start("k", 300));
    m.clock().advance(9s);
    m.heartbeat(1);
    CHECK(m.tick().puts_reclaimed == 0);
    m.clock().advance(1s);
    m.heartbeat(1);
    CHECK(m.tick().puts_reclaimed == 1);
    CHECK(m.put_end("k").error() == errc::not_found);
    CHECK(m.stats().used == 0);
  }

  TEST_CASE("each pass reclaims exactly the puts that are due among many committed revoked and reused ones") {
    test_master m(no_watermark(1)); // one shard: every put in one reclaim queue
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1 << 30, .owner = 1}));
    // Early puts, all at one time: 3,000 (enough to rebuild the queue), every 100th left pending and each
    // one before it revoked, so that the pending one takes the revoked one's slot with the same deadline.
    std::size_t pending_early = 0;
    for (long i = 0; i < 3000; ++i) {
      auto key = named("early", i);
      REQUIRE(m.put_start(key, 100));
      if (i % 100 == 0)
        ++pending_early;
      else if (i % 100 == 99)
        REQUIRE(m.put_revoke(key));
      else
        REQUIRE(m.put_end(key));
    }
    m.clock().advance(5s);
    m.heartbeat(1);
    for (long i = 0; i < 40; ++i) // 5 s later: not due when the early ones are
      REQUIRE(m.put_start(named("late", i), 100));
    REQUIRE(m.put_end("late0"));
    m.clock().advance(5s);
    m.heartbeat(1);
    auto first = m.tick();
    CHECK(first.puts_reclaimed == pending_early);
    CHECK(m.stats().pending == 39);
    CHECK(m.stats().objects == 3000 - pending_early - 30 + 40);
    CHECK(m.exists("early1"));
    CHECK(m.put_end("early0").error() == errc::not_found);
    CHECK(m.tick().puts_reclaimed == 0); // nothing more is due
    REQUIRE(m.put_end("late1"));
    m.clock().advance(5s);
    m.heartbeat(1);
    CHECK(m.tick().puts_reclaimed == 38);
    CHECK(m.stats().pending == 0);
    CHECK(m.exists("late0"));
    CHECK(m.exists("late1"));
    CHECK(m.stats().used == 100 * m.stats().objects);
  }

  TEST_CASE("puts started and ended many times at one instant on one slot are reclaimed once and quickly") {
    test_master m(no_watermark(1));
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1 << 20, .owner = 1}));
    // The clock never moves: every put takes the same slot with the same deadline. Were the entries of the
    // ended ones kept as matching the next, the reclaim queue would grow with every put and each rebuild
    // would walk all of it (200,000 puts: some 10^10 steps).
    for (int i = 0; i < 100000; ++i) {
      REQUIRE(m.put_start("k", 100));
      REQUIRE(m.put_revoke("k"));
      REQUIRE(m.put_start("k", 100));
      REQUIRE(m.put_end("k"));
      REQUIRE(m.remove("k"));
    }
    REQUIRE(m.put_start("k", 100));
    m.clock().advance(10s);
    m.heartbeat(1);
    CHECK(m.tick().puts_reclaimed == 1);
    CHECK(m.stats().objects == 0);
  }

  TEST_CASE("an expired client's pending puts are reclaimed before they are due") {
    test_master m(no_watermark(1));
    REQUIRE(m.mount_segment({.name = "b", .host = "h2", .capacity = 1 << 20, .owner = 2}));
    m.heartbeat(1); // a writer without a segment of its own
    REQUIRE(m.put_start("of-1", 100, {.owner = 1}));
    REQUIRE(m.put_start("of-2", 100, {.owner = 2}));
    REQUIRE(m.put_start("of-none", 100));
    m.clock().advance(2s);
    m.heartbeat(2);
    m.clock().advance(2s); // client 1 silent for 4 s > 3 s; the puts are due only after 10 s
    auto r = m.tick();
    CHECK(r.clients_expired == 1);
    CHECK(r.puts_reclaimed == 1);
    CHECK(m.put_end("of-1").error() == errc::not_found);
    CHECK(m.put_end("of-2"));
    CHECK(m.put_end("of-none"));
  }

  TEST_CASE("an expired client's segments leave the pool and objects left without replicas disappear") {
    test_master m(no_watermark());
    auto a = m.mount_segment({.name = "a", .host = "h1", .capacity = 1000, .owner = 1});
    auto b = m.mount_segment({.name = "b", .host = "h2", .capacity = 1000, .owner = 2});
    REQUIRE((a && b));
    REQUIRE(put(m, "both", 100, {.replicas = 2}));
    REQUIRE(put(m, "only_a", 100, {.preferred_segment = *a}));
    auto where = m.get_replicas("only_a");
    REQUIRE(where);
    m.clock().advance(2s);
    m.heartbeat(2);
    m.clock().advance(2s); // client 1 silent for 4s > 3s; client 2 for 2s
    auto r = m.tick();
    CHECK(r.clients_expired == 1);
    CHECK(m.exists("both"));
    CHECK(m.get_replicas("both")->count() == 1);
    CHECK(m.exists("only_a") == (where->pieces[0].segment != *a));
    CHECK(m.stats().segments == 1);
  }

  TEST_CASE(
      "unmounting the segment with the only replica of a leased object is refused until the lease ends") {
    test_master m(no_watermark());
    auto a = m.mount_segment({.name = "a", .host = "h1", .capacity = 1000, .owner = 1});
    REQUIRE(a);
    REQUIRE(put(m, "k", 100));
    REQUIRE(m.get_replicas("k"));
    CHECK(m.unmount_segment(*a).error() == errc::busy);
    CHECK(m.exists("k"));
    m.clock().advance(1s);
    CHECK(m.unmount_segment(*a));
    CHECK_FALSE(m.exists("k"));
    CHECK(m.put_start("k", 10).error() == errc::out_of_space);
  }

  TEST_CASE("batch forms answer element by element") {
    test_master m(no_watermark());
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1000, .owner = 1}));
    std::vector<store::put_request> puts{{"x", 10}, {"y", 10}, {"x", 10}};
    auto started = m.batch_put_start(puts);
    CHECK(started[0]);
    CHECK(started[1]);
    CHECK(started[2].error() == errc::already_exists);
    std::vector<std::string_view> keys{"x", "y", "z"};
    auto ended = m.batch_put_end(keys);
    CHECK(ended[0]);
    CHECK(ended[1]);
    CHECK_FALSE(ended[2]);
    CHECK(m.batch_exists(keys) == std::vector<bool>{true, true, false});
    auto got = m.batch_get_replicas(keys);
    CHECK(got[0]);
    CHECK(got[1]);
    CHECK(got[2].error() == errc::not_found);
    m.clock().advance(1s);
    auto removed = m.batch_remove(keys);
    CHECK(removed[0]);
    CHECK(removed[1]);
    CHECK(removed[2].error() == errc::not_found);
    CHECK(m.batch_put_revoke(keys)[0].error() == errc::not_found);
  }

  TEST_CASE("prefix chains sharing a hash tag land in one shard and are evicted tail first") {
    store::master<store::prefix_aware_policy, store::spread_placement, store::offset_allocator,
                  store::manual_clock>
        m({.shards = 8, .lease_ttl = 0s, .high_watermark = 1.0, .low_watermark = 1.0});
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1000}));
    std::string prev;
    for (int i = 0; i < 10; ++i) {
      std::string key = named("{chat7}/", i);
      REQUIRE(m.put_start(key, 100, {.parent = prev, .depth = static_cast<std::uint32_t>(i)}));
      REQUIRE(m.put_end(key));
      prev = key;
    }
    for (int i = 0; i < 10; ++i)
      REQUIRE(m.get_replicas(named("{chat7}/", i)));
    REQUIRE(m.put_start("other", 300));
    for (int i = 0; i < 7; ++i)
      CHECK(m.exists(named("{chat7}/", i)));
    for (int i = 7; i < 10; ++i)
      CHECK_FALSE(m.exists(named("{chat7}/", i)));
  }

  TEST_CASE("concurrent writers, readers and removers keep the accounting exact") {
    store::master<store::lru_policy> m({.shards = 8, .lease_ttl = 0s});
    REQUIRE(m.mount_segment({.name = "a", .host = "h1", .capacity = 1 << 30}));
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 2000; ++i) {
          auto key = std::to_string(t) + named("/", i);
          if (!m.put_start(key, 64) || !m.put_end(key) || !m.get_replicas(key))
            ++failures;
          if (i % 2 == 0 && !m.remove(key))
            ++failures;
        }
      });
    for (auto& th : threads)
      th.join();
    CHECK(failures == 0);
    CHECK(m.stats().objects == 4000);
    CHECK(m.stats().used == 4000 * 64);
    CHECK(m.segment_report(0)->allocations == 4000);
  }
  TEST_CASE("a put no segment could ever hold is refused before anything is evicted") {
    test_master m(no_watermark(1));
    for (int i = 0; i < 2; ++i)
      REQUIRE(m.mount_segment({.name = named("s", i), .host = named("h", i), .capacity = 1000}));
    for (int i = 0; i < 10; ++i)
      REQUIRE(put(m, named("k", i), 200));
    auto huge = m.put_start("huge", std::uint64_t{1} << 40);
    CHECK(huge.error() == errc::out_of_space);
    CHECK(huge.error().message().find("could ever hold") != std::string::npos);
    CHECK(m.put_start("over_one", 1500).error() == errc::out_of_space); // fits the pool, not one segment
    CHECK(m.put_start("wraps", UINT64_MAX, {.stripes = 2}).error() == errc::out_of_space);
    CHECK(m.stats().evicted == 0);
    CHECK(m.stats().objects == 10);
    REQUIRE(m.put_start("fits", 1000)); // a piece that fits an emptied segment still evicts for it
    CHECK(m.stats().evicted >= 5);
  }

  TEST_CASE("an object smaller than its stripes is striped over the pieces it fills, none empty") {
    test_master m(no_watermark());
    for (int i = 0; i < 3; ++i)
      REQUIRE(m.mount_segment({.name = named("s", i), .host = named("h", i), .capacity = 1000}));
    auto w = m.put_start("k", 4, {.stripes = 3});
    REQUIRE(w);
    CHECK(w->stripes == 2);
    REQUIRE(w->count() == 1);
    CHECK(w->pieces.size() == 2);
    for (auto& p : w->pieces)
      CHECK(p.length == 2);
    REQUIRE(m.put_end("k"));
    auto r = m.get_replicas("k");
    REQUIRE(r);
    CHECK(r->stripes == 2);
    CHECK(r->pieces == w->pieces);
    CHECK(m.stats().used == 4);
  }

  TEST_CASE("segments and puts without an owner (client 0) never expire") {
    test_master m(no_watermark());
    auto a = m.mount_segment({.name = "a", .host = "h1", .capacity = 1000});
    REQUIRE(a);
    REQUIRE(put(m, "kept", 100));
    REQUIRE(m.put_start("pending", 100));
    m.clock().advance(5s); // past client_ttl (3 s), before put_timeout (10 s)
    auto r = m.tick();
    CHECK(r.clients_expired == 0);
    CHECK(r.puts_reclaimed == 0);
    CHECK(m.exists("kept"));
    CHECK(m.segment_report(*a));
    CHECK(m.put_end("pending"));
  }

  TEST_CASE("a segment larger than the allocator handles is refused, not thrown") {
    test_master m(no_watermark());
    auto r = m.mount_segment({.name = "big", .host = "h1", .capacity = std::uint64_t{1} << 62});
    CHECK(r.error() == errc::invalid_argument);
    CHECK(m.stats().segments == 0);
  }
}
