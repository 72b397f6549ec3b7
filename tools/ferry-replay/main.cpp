// ferry-replay: replays a KV-cache request trace through the store master's eviction policies and
// reports block hit ratios next to LRU and the offline optimum at the same capacity.
//
//   ferry-replay --trace synthetic_trace.jsonl --capacity-blocks 3000 --policy all
//   ferry-replay --trace synthetic_trace.jsonl --capacity-blocks 3000 --policy default --json

#include "ferry/store/lease_lru_policy.hpp"
#include "ferry/store/lru_policy.hpp"
#include "ferry/store/prefix_aware_policy.hpp"
#include "ferry/store/s3fifo_policy.hpp"
#include "ferry/store/trace_replay.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using replay_fn =
    std::function<ferry::store::replay_result(std::span<const ferry::store::trace_request>, std::size_t)>;

struct policy_entry {
  std::string_view name;
  replay_fn replay;
};

const std::vector<policy_entry>& policies() {
  using namespace ferry::store;
  static const std::vector<policy_entry> all{
      {"default", replay_through_master<prefix_aware_policy>},
      {"prefix_aware", replay_through_master<prefix_aware_policy>},
      {"lru", replay_through_master<lru_policy>},
      {"lease_lru", replay_through_master<lease_lru_policy<>>},
      {"s3fifo", replay_through_master<s3fifo_policy>},
  };
  return all;
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "ferry-replay: %s\n"
               "usage: ferry-replay --trace FILE --capacity-blocks N [--policy NAME|all] [--json]\n"
               "policies: default (prefix_aware), prefix_aware, lru, lease_lru, s3fifo, all\n",
               why);
  std::exit(2);
}

std::vector<ferry::store::trace_request> load(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    usage(("cannot open trace " + path).c_str());
  std::vector<ferry::store::trace_request> trace;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos)
      continue;
    try {
      auto j = nlohmann::json::parse(line);
      ferry::store::trace_request r;
      r.blocks = j.at("hash_ids").get<std::vector<std::uint64_t>>();
      // why: 512 tokens a block; a prompt that does not fill its last block ends in a partial block.
      r.partial_tail = j.contains("input_length") && j.at("input_length").get<std::uint64_t>() % 512 != 0;
      trace.push_back(std::move(r));
    } catch (const nlohmann::json::exception& e) {
      std::fprintf(stderr, "ferry-replay: %s line %zu: %s\n", path.c_str(), number, e.what());
      std::exit(1);
    }
  }
  return trace;
}

} // namespace

int main(int argc, char** argv) {
  std::string trace_path, policy = "default";
  std::size_t capacity = 0;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        usage(("missing value after " + std::string(a)).c_str());
      return argv[++i];
    };
    if (a == "--trace")
      trace_path = value();
    else if (a == "--capacity-blocks")
      capacity = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--policy")
      policy = value();
    else if (a == "--json")
      json = true;
    else if (a == "--help" || a == "-h")
      usage("replays a request trace through the store's eviction policies");
    else
      usage(("unknown option " + std::string(a)).c_str());
  }
  if (trace_path.empty() || capacity == 0)
    usage("--trace and a positive --capacity-blocks are required");

  std::vector<const policy_entry*> chosen;
  for (auto& p : policies())
    if (policy == "all" ? p.name != "default" : p.name == policy)
      chosen.push_back(&p);
  if (chosen.empty())
    usage(("unknown policy " + policy).c_str());

  auto trace = load(trace_path);
  auto lru = ferry::store::replay_lru(trace, capacity).hit_ratio();
  auto optimal = ferry::store::replay_optimal(trace, capacity).hit_ratio();

  if (!json)
    std::printf("trace %s: %zu requests, capacity %zu blocks\n%-14s %10s %10s %10s\n", trace_path.c_str(),
                trace.size(), capacity, "policy", "hit_ratio", "lru", "optimal");
  for (auto* p : chosen) {
    auto r = p->replay(trace, capacity);
    if (json) {
      nlohmann::json j{{"policy", p->name},    {"capacity_blocks", capacity},  {"hit_ratio", r.hit_ratio()},
                       {"lru_hit_ratio", lru}, {"optimal_hit_ratio", optimal}, {"hits", r.hits},
                       {"blocks", r.blocks},   {"requests", trace.size()}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%-14s %10.4f %10.4f %10.4f\n", std::string(p->name).c_str(), r.hit_ratio(), lru, optimal);
    }
  }
  return 0;
}
