#include "ferry/transport/verbs/registration_cache.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <utility>
#include <vector>

using namespace ferry::verbs;

namespace {
// Records every registration; keys count up so that each registration is told apart.
struct recorder {
  struct range {
    std::byte* p;
    std::size_t n;
    std::uintptr_t key;
  };
  std::vector<range>* live;
  std::uint32_t next_key = 1;
  bool refuse = false;
  ferry::result<registration> register_range(std::byte* p, std::size_t n) {
    if (refuse)
      return ferry::fail(ferry::errc::out_of_space, "recorder: refused");
    std::uint32_t k = next_key++;
    live->push_back({p, n, k});
    return registration{reinterpret_cast<void*>(std::uintptr_t(k)), k, k + 1000};
  }
  void deregister(registration r) {
    std::erase_if(*live, [&](const range& x) { return x.key == reinterpret_cast<std::uintptr_t>(r.handle); });
  }
};
static_assert(registrar<recorder>);
} // namespace

TEST_SUITE("verbs registration_cache") {
  TEST_CASE("the same range and a range inside it are hits") {
    std::vector<std::byte> mem(1 << 16);
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live});
    auto a = cache.acquire(mem.data(), 4096);
    REQUIRE(a);
    auto b = cache.acquire(mem.data(), 4096);
    REQUIRE(b);
    auto c = cache.acquire(mem.data() + 100, 200);
    REQUIRE(c);
    CHECK(a->lkey() == b->lkey());
    CHECK(a->lkey() == c->lkey());
    CHECK(cache.stats().hits == 2);
    CHECK(cache.stats().misses == 1);
    CHECK(live.size() == 1);
  }

  TEST_CASE("a partial overlap registers the union once and retires the old registration") {
    std::vector<std::byte> mem(1 << 16);
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live});
    {
      auto a = cache.acquire(mem.data(), 8192);
      REQUIRE(a);
      auto key_a = a->lkey();
      auto b = cache.acquire(mem.data() + 4096, 8192); // overlaps the second half of a
      REQUIRE(b);
      CHECK(b->lkey() != key_a);
      CHECK(b->base() == mem.data());
      CHECK(b->length() == 12288);
      CHECK(cache.size() == 1);
      CHECK(cache.retired() == 1); // a still holds the old one
      CHECK(live.size() == 2);
      CHECK(a->lkey() == key_a); // still valid for its holder
    }
    CHECK(cache.retired() == 0);
    CHECK(live.size() == 1);
    CHECK(cache.stats().deregistered == 1);
    auto c = cache.acquire(mem.data() + 10000, 100); // inside the union
    REQUIRE(c);
    CHECK(cache.stats().hits == 1);
  }

  TEST_CASE("a range spanning two registrations merges them") {
    std::vector<std::byte> mem(1 << 16);
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live});
    REQUIRE(cache.acquire(mem.data(), 4096));
    REQUIRE(cache.acquire(mem.data() + 8192, 4096));
    CHECK(cache.size() == 2);
    auto m = cache.acquire(mem.data() + 2048, 8192);
    REQUIRE(m);
    CHECK(m->base() == mem.data());
    CHECK(m->length() == 12288);
    CHECK(cache.size() == 1);
    CHECK(live.size() == 1); // the unused ones were deregistered at once
  }

  TEST_CASE("adjacent ranges do not overlap and stay separate") {
    std::vector<std::byte> mem(1 << 16);
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live});
    auto a = cache.acquire(mem.data(), 4096);
    auto b = cache.acquire(mem.data() + 4096, 4096);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->lkey() != b->lkey());
    CHECK(cache.size() == 2);
    CHECK(cache.stats().misses == 2);
  }

  TEST_CASE("a failed registration leaves the cache as it was") {
    std::vector<std::byte> mem(1 << 16);
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live});
    auto a = cache.acquire(mem.data(), 4096);
    REQUIRE(a);
    cache.registrar().refuse = true;
    auto b = cache.acquire(mem.data() + 2048, 4096);
    REQUIRE_FALSE(b);
    CHECK(b.error() == ferry::errc::out_of_space);
    CHECK(cache.size() == 1);
    CHECK(live.size() == 1);
    CHECK(cache.acquire(mem.data() + 1, 10)); // still a hit
  }

  TEST_CASE("invalidated memory is never handed out again") {
    std::vector<std::byte> mem(1 << 16);
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live});
    auto a = cache.acquire(mem.data(), 4096);
    REQUIRE(a);
    auto key = a->lkey();
    cache.invalidate(mem.data() + 100, 1);
    CHECK(cache.size() == 0);
    CHECK(cache.retired() == 1);
    a->reset();
    CHECK(live.empty());
    auto b = cache.acquire(mem.data(), 4096);
    REQUIRE(b);
    CHECK(b->lkey() != key);
  }

  TEST_CASE("the bound deregisters the least recently used unused registration") {
    std::vector<std::byte> mem(1 << 16);
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live}, 2);
    REQUIRE(cache.acquire(mem.data(), 100));
    REQUIRE(cache.acquire(mem.data() + 4096, 100));
    REQUIRE(cache.acquire(mem.data(), 50)); // touch the first
    auto held = cache.acquire(mem.data() + 8192, 100);
    REQUIRE(held);
    CHECK(cache.size() == 2);
    CHECK(live.size() == 2);
    CHECK(cache.acquire(mem.data(), 10)); // the first survived
    CHECK(cache.stats().hits == 2);
  }

  TEST_CASE("empty and wrapping ranges are refused") {
    std::vector<recorder::range> live;
    registration_cache<recorder> cache(recorder{&live});
    std::byte b{};
    CHECK_FALSE(cache.acquire(&b, 0));
    CHECK_FALSE(cache.acquire(nullptr, 10));
    CHECK_FALSE(cache.acquire(&b, static_cast<std::size_t>(-1)));
  }
}
