#include "ferry/store/trace_replay.hpp"

#include "ferry/store/lease_lru_policy.hpp"
#include "ferry/store/lru_policy.hpp"
#include "ferry/store/prefix_aware_policy.hpp"
#include "ferry/store/s3fifo_policy.hpp"

#include <doctest/doctest.h>

#include <random>
#include <set>

using namespace ferry::store;

namespace {
// Multi-turn sessions on top of a few shared system prompts: each turn re-sends the session's history
// and adds a few blocks; the last block is partial. Ids are prefix hashes: same prefix, same ids.
std::vector<trace_request> synthetic_trace(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uint64_t next_id = 0;
  std::vector<std::vector<std::uint64_t>> prompts(4);
  for (auto& p : prompts)
    for (int i = 0; i < 8; ++i)
      p.push_back(next_id++);
  std::vector<std::vector<std::uint64_t>> sessions;
  std::vector<trace_request> trace;
  for (int r = 0; r < 1500; ++r) {
    if (sessions.empty() || rng() % 4 == 0) {
      sessions.push_back(prompts[rng() % prompts.size()]);
    }
    auto& s = sessions[rng() % sessions.size()];
    auto turn = s;
    for (int i = 0, n = 2 + static_cast<int>(rng() % 6); i < n; ++i)
      turn.push_back(next_id++);
    turn.push_back(next_id++); // partial tail: hashed anew by the next turn
    s.insert(s.end(), turn.begin() + static_cast<long>(s.size()), turn.end() - 1);
    trace.push_back({turn, true});
  }
  return trace;
}
} // namespace

TEST_SUITE("trace_replay") {
  TEST_CASE("the master under LRU matches the independent LRU reference exactly") {
    auto trace = synthetic_trace(1);
    for (std::size_t capacity : {100, 400, 2000})
      CHECK(replay_through_master<lru_policy>(trace, capacity).hits == replay_lru(trace, capacity).hits);
  }

  TEST_CASE("the offline optimum is at or above every online policy") {
    auto trace = synthetic_trace(2);
    for (std::size_t capacity : {100, 400, 2000}) {
      auto best = replay_optimal(trace, capacity).hit_ratio();
      CHECK(best >= replay_through_master<lru_policy>(trace, capacity).hit_ratio());
      CHECK(best >= replay_through_master<lease_lru_policy<>>(trace, capacity).hit_ratio());
      CHECK(best >= replay_through_master<s3fifo_policy>(trace, capacity).hit_ratio());
      CHECK(best >= replay_through_master<prefix_aware_policy>(trace, capacity).hit_ratio());
    }
  }

  TEST_CASE("the prefix-aware policy is at or above LRU on multi-turn sessions") {
    auto trace = synthetic_trace(3);
    for (std::size_t capacity : {100, 400, 2000})
      CHECK(replay_through_master<prefix_aware_policy>(trace, capacity).hit_ratio() >=
            replay_lru(trace, capacity).hit_ratio());
  }

  TEST_CASE("a cache larger than the trace misses only first uses") {
    auto trace = synthetic_trace(4);
    std::set<std::uint64_t> seen;
    std::uint64_t first_uses = 0, blocks = 0;
    for (auto& r : trace)
      for (auto b : r.blocks) {
        first_uses += seen.insert(b).second;
        ++blocks;
      }
    auto r = replay_through_master<prefix_aware_policy>(trace, 1'000'000);
    CHECK(r.blocks == blocks);
    CHECK(r.hits == replay_optimal(trace, 1'000'000).hits);
    CHECK(r.hits <= blocks - first_uses);
  }
  TEST_CASE("a capacity of 0 is refused by every replay alike") {
    std::vector<trace_request> trace{{.blocks = {1, 2, 3}}};
    CHECK_THROWS_AS(replay_lru(trace, 0), std::invalid_argument);
    CHECK_THROWS_AS(replay_optimal(trace, 0), std::invalid_argument);
    CHECK_THROWS_AS(replay_through_master<lru_policy>(trace, 0), std::invalid_argument);
  }
}
