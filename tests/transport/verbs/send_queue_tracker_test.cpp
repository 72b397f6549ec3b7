#include "ferry/transport/verbs/send_queue_tracker.hpp"

#include <doctest/doctest.h>

#include <utility>
#include <vector>

using namespace ferry::verbs;

namespace {
struct record {
  std::vector<std::pair<int, ::ibv_wc_status>> seen;
  auto done() {
    return [this](int& item, ::ibv_wc_status s) { seen.emplace_back(item, s); };
  }
};
auto id_of = [](const int& i) { return static_cast<std::uint64_t>(i); };
} // namespace

TEST_SUITE("verbs send_queue_tracker") {
  TEST_CASE("a signaled completion reports every request posted before it") {
    send_queue_tracker<int> t;
    for (int i = 1; i <= 8; ++i)
      t.push(i);
    record r;
    CHECK(t.complete(4, IBV_WC_SUCCESS, id_of, r.done()) == 4);
    CHECK(r.seen.size() == 4);
    CHECK(r.seen.front().first == 1);
    CHECK(r.seen.back().first == 4);
    CHECK(t.size() == 4);
    CHECK(t.complete(8, IBV_WC_SUCCESS, id_of, r.done()) == 4);
    CHECK(t.empty());
  }

  TEST_CASE("an error hits its own request: earlier ones succeeded and later ones flush one by one") {
    send_queue_tracker<int> t;
    for (int i = 1; i <= 5; ++i)
      t.push(i);
    record r;
    CHECK(t.complete(3, IBV_WC_RETRY_EXC_ERR, id_of, r.done()) == 3);
    REQUIRE(r.seen.size() == 3);
    CHECK(r.seen[0].second == IBV_WC_SUCCESS);
    CHECK(r.seen[1].second == IBV_WC_SUCCESS);
    CHECK(r.seen[2] == std::pair<int, ::ibv_wc_status>{3, IBV_WC_RETRY_EXC_ERR});
    CHECK(t.complete(4, IBV_WC_WR_FLUSH_ERR, id_of, r.done()) == 1);
    CHECK(t.complete(5, IBV_WC_WR_FLUSH_ERR, id_of, r.done()) == 1);
    CHECK(r.seen.back() == std::pair<int, ::ibv_wc_status>{5, IBV_WC_WR_FLUSH_ERR});
    CHECK(t.empty());
  }

  TEST_CASE("a completion for work that is not outstanding changes nothing") {
    send_queue_tracker<int> t;
    t.push(1);
    t.push(2);
    record r;
    CHECK(t.complete(99, IBV_WC_SUCCESS, id_of, r.done()) == 0);
    CHECK(r.seen.empty());
    CHECK(t.size() == 2);
  }

  TEST_CASE("work pushed from the completion callback is kept in order") {
    send_queue_tracker<int> t;
    t.push(1);
    record r;
    CHECK(t.complete(1, IBV_WC_SUCCESS, id_of, [&](int& i, ::ibv_wc_status s) {
      r.seen.emplace_back(i, s);
      t.push(10 + i);
    }) == 1);
    CHECK(t.size() == 1);
    CHECK(t.complete(11, IBV_WC_SUCCESS, id_of, r.done()) == 1);
    std::vector<int> dropped;
    t.push(7);
    t.clear([&](int& i) { dropped.push_back(i); });
    CHECK(dropped == std::vector<int>{7});
  }
}
