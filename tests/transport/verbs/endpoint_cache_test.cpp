#include "ferry/transport/verbs/endpoint_cache.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

using namespace ferry::verbs;

namespace {
struct fake_endpoint {
  int id;
  std::size_t work = 0;
  bool retired = false;
  std::vector<int>* destroyed;
  std::size_t in_flight() const noexcept { return work; }
  void retire() noexcept { retired = true; }
  ~fake_endpoint() { destroyed->push_back(id); }
};
static_assert(cached_endpoint<fake_endpoint>);

struct maker {
  int id;
  std::vector<int>* destroyed;
  ferry::result<std::unique_ptr<fake_endpoint>> operator()() const {
    return std::unique_ptr<fake_endpoint>(new fake_endpoint{id, 0, false, destroyed});
  }
};
} // namespace

TEST_SUITE("verbs endpoint_cache") {
  TEST_CASE("endpoints are made once and found again") {
    std::vector<int> destroyed;
    endpoint_cache<int, fake_endpoint> cache(4);
    int made = 0;
    auto make = [&] {
      ++made;
      return maker{1, &destroyed}();
    };
    auto a = cache.get_or_create(1, make);
    auto b = cache.get_or_create(1, make);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(*a == *b);
    CHECK(made == 1);
    CHECK(cache.find(2) == nullptr);
  }

  TEST_CASE("SIEVE evicts the oldest endpoint not used since the hand passed") {
    std::vector<int> destroyed;
    endpoint_cache<int, fake_endpoint> cache(3);
    for (int k : {1, 2, 3})
      REQUIRE(cache.get_or_create(k, maker{k, &destroyed}));
    cache.find(1); // 1 is the oldest but was used
    REQUIRE(cache.get_or_create(4, maker{4, &destroyed}));
    CHECK(destroyed == std::vector<int>{2});
    CHECK(cache.find(1) != nullptr);
    CHECK(cache.find(3) != nullptr);
    CHECK(cache.find(4) != nullptr);
    CHECK(cache.size() == 3);
  }

  TEST_CASE("a one-off burst does not flush the endpoints in steady use") {
    std::vector<int> destroyed;
    endpoint_cache<int, fake_endpoint> cache(4);
    for (int k : {1, 2})
      REQUIRE(cache.get_or_create(k, maker{k, &destroyed}));
    for (int burst = 100; burst < 120; ++burst) {
      cache.find(1);
      cache.find(2);
      REQUIRE(cache.get_or_create(burst, maker{burst, &destroyed}));
    }
    CHECK(cache.find(1) != nullptr);
    CHECK(cache.find(2) != nullptr);
    CHECK(destroyed.size() == 18);
  }

  TEST_CASE("an evicted endpoint with work in flight drains before it is destroyed") {
    std::vector<int> destroyed;
    endpoint_cache<int, fake_endpoint> cache(1);
    auto a = cache.get_or_create(1, maker{1, &destroyed});
    REQUIRE(a);
    (*a)->work = 2;
    REQUIRE(cache.get_or_create(2, maker{2, &destroyed}));
    CHECK(cache.find(1) == nullptr); // takes no new work
    CHECK(cache.draining() == 1);
    CHECK((*a)->retired);
    CHECK(destroyed.empty());
    CHECK(cache.collect() == 0);
    (*a)->work = 1;
    CHECK(cache.collect() == 0);
    (*a)->work = 0;
    CHECK(cache.collect() == 1);
    CHECK(destroyed == std::vector<int>{1});
  }

  TEST_CASE("erase and erase_if retire endpoints the same way") {
    std::vector<int> destroyed;
    endpoint_cache<std::string, fake_endpoint> cache(8);
    for (int k = 0; k < 4; ++k)
      REQUIRE(cache.get_or_create("peer" + std::to_string(k), maker{k, &destroyed}));
    cache.erase("peer1");
    CHECK(destroyed == std::vector<int>{1});
    auto p3 = cache.find("peer3");
    p3->work = 5;
    cache.erase_if([](const std::string& k) { return k != "peer0"; });
    CHECK(cache.size() == 1);
    CHECK(cache.draining() == 1);
    p3->work = 0;
    cache.collect();
    CHECK(destroyed.size() == 3); // peer0 stays
  }

  TEST_CASE("a failed make leaves the cache unchanged") {
    std::vector<int> destroyed;
    endpoint_cache<int, fake_endpoint> cache(1);
    REQUIRE(cache.get_or_create(1, maker{1, &destroyed}));
    auto r = cache.get_or_create(2, []() -> ferry::result<std::unique_ptr<fake_endpoint>> {
      return ferry::fail(ferry::errc::peer_unreachable, "test: handshake failed");
    });
    REQUIRE_FALSE(r);
    CHECK(cache.find(1) != nullptr);
    CHECK(destroyed.empty());
  }
}
