#include "ferry/transport/verbs/nic_selector.hpp"

#include <doctest/doctest.h>

#include <map>
#include <set>
#include <vector>

using namespace ferry::verbs;

namespace {
// Two sockets, two PCIe switches each, one NIC per switch (a common 4-NIC, 8-GPU server).
std::vector<nic_place> four_nics() {
  return {{"mlx5_0", 0, 0, true}, {"mlx5_1", 0, 1, true}, {"mlx5_2", 1, 2, true}, {"mlx5_3", 1, 3, true}};
}
auto all_usable = [](std::size_t) { return true; };
} // namespace

TEST_SUITE("verbs nic_selector") {
  TEST_CASE("ranks: same PCIe switch, then same NUMA node, then the rest") {
    nic_selector sel(four_nics());
    auto t = sel.tiers({.numa_node = 1, .pci_group = 2});
    REQUIRE(t.size() == 3);
    CHECK(t[0] == std::vector<std::size_t>{2});
    CHECK(t[1] == std::vector<std::size_t>{3});
    CHECK(t[2] == std::vector<std::size_t>{0, 1});
    auto host = sel.tiers({.numa_node = 0});
    REQUIRE(host.size() == 2);
    CHECK(host[0] == std::vector<std::size_t>{0, 1});
  }

  TEST_CASE("host memory slices are sprayed over the NICs of its NUMA node") {
    nic_selector sel(four_nics());
    std::map<std::size_t, int> count;
    for (std::uint64_t k = 0; k < 100; ++k)
      ++count[*sel.pick({.numa_node = 1}, k, all_usable)];
    CHECK(count.size() == 2);
    CHECK(count[2] == 50);
    CHECK(count[3] == 50);
  }

  TEST_CASE("unknown placement sprays over every active NIC") {
    auto nics = four_nics();
    nics[3].active = false;
    nic_selector sel(nics);
    std::set<std::size_t> used;
    for (std::uint64_t k = 0; k < 12; ++k)
      used.insert(*sel.pick({}, k, all_usable));
    CHECK(used == std::set<std::size_t>{0, 1, 2});
  }

  TEST_CASE("paused NICs are skipped and the next rank serves when a whole rank is paused") {
    nic_selector sel(four_nics());
    auto not_2 = [](std::size_t n) { return n != 2; };
    for (std::uint64_t k = 0; k < 4; ++k)
      CHECK(*sel.pick({.numa_node = 1}, k, not_2) == 3);
    auto none_on_1 = [](std::size_t n) { return n < 2; };
    std::set<std::size_t> used;
    for (std::uint64_t k = 0; k < 4; ++k)
      used.insert(*sel.pick({.numa_node = 1}, k, none_on_1));
    CHECK(used == std::set<std::size_t>{0, 1});
    CHECK_FALSE(sel.pick({.numa_node = 1}, 0, [](std::size_t) { return false; }));
  }

  TEST_CASE("a retry avoids the NIC that failed when another is usable") {
    nic_selector sel(four_nics());
    for (std::uint64_t k = 0; k < 6; ++k)
      CHECK(*sel.pick({.numa_node = 1}, k, all_usable, 2) == 3);
    // only NIC 2 in the best rank and it failed: a worse rank is tried first
    auto c = sel.pick({.numa_node = 1, .pci_group = 2}, 0, all_usable, 2);
    CHECK(*c == 3);
    // the failed NIC is the only usable one at all: it is still offered
    CHECK(*sel.pick(
              {}, 0, [](std::size_t n) { return n == 2; }, 2) == 2);
  }

  TEST_CASE("a user priority matrix overrides the topology") {
    // node 0 prefers NIC 3, then NICs 0 and 1; NIC 2 never serves node 0. Node 1 has no row.
    nic_selector sel(four_nics(), {{1, 1, -1, 0}});
    auto t = sel.tiers({.numa_node = 0, .pci_group = 0});
    REQUIRE(t.size() == 2);
    CHECK(t[0] == std::vector<std::size_t>{3});
    CHECK(t[1] == std::vector<std::size_t>{0, 1});
    CHECK(*sel.pick({.numa_node = 0}, 7, all_usable) == 3);
    auto no3 = [](std::size_t n) { return n != 3; };
    for (std::uint64_t k = 0; k < 4; ++k)
      CHECK(*sel.pick({.numa_node = 0}, k, no3) != 2);
    auto t1 = sel.tiers({.numa_node = 1});
    CHECK(t1[0] == std::vector<std::size_t>{2, 3});
  }

  TEST_CASE("the NUMA node of touched host memory is known") {
    std::vector<char> page(8192, 1);
    int node = numa_node_of(page.data());
    if (node < 0)
      MESSAGE("move_pages is not permitted here; the placement of buffers is unknown");
    CHECK(node >= -1);
  }
}
