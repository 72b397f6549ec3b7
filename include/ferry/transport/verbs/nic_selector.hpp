#pragma once
/// `ferry::verbs::nic_selector`: which NIC carries a slice. NICs are ranked for the memory a slice touches:
/// one behind the same PCIe switch as the buffer's device first, then one on the buffer's NUMA node, then the
/// rest; a user-supplied priority matrix (per NUMA node, a rank per NIC) replaces that ranking. Slices are
/// sprayed round-robin over the best-ranked NICs that are usable; when none of a rank is, the next rank
/// serves. A retry avoids the NIC that just failed when another one is usable.
///
///   ferry::verbs::nic_selector sel(nics);
///   auto nic = sel.pick({.numa_node = 1}, slice_number, [&](std::size_t n) { return health.usable(n); });

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <sys/syscall.h>
#include <unistd.h>
#include <vector>

namespace ferry::verbs {

/// Where a NIC sits.
struct nic_place {
  std::string name;   ///< e.g. "mlx5_0"
  int numa_node = -1; ///< -1: unknown
  int pci_group = -1; ///< an id of the PCIe switch it hangs off; -1: unknown
  bool active = true; ///< a port is up
};

/// Where a buffer sits: its NUMA node (host memory) or the PCIe switch of the GPU that holds it.
struct buffer_place {
  int numa_node = -1;
  int pci_group = -1;
};

/// The NUMA node holding the page at `p` (-1 if unknown or not yet touched).
inline int numa_node_of(const void* p) noexcept {
  void* page = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(4095));
  int status = -1;
  // why: move_pages with no target nodes only reports where each page is; no libnuma needed
  long r = ::syscall(SYS_move_pages, 0, 1UL, &page, nullptr, &status, 0);
  return r == 0 && status >= 0 ? status : -1;
}

class nic_selector {
public:
  /// `priority[numa_node][nic]`: a rank (lower is preferred; negative: never use this NIC for that node).
  /// Rows may be missing (those nodes use the topology ranking).
  explicit nic_selector(std::vector<nic_place> nics, std::vector<std::vector<int>> priority = {})
      : nics_(std::move(nics)), priority_(std::move(priority)) {}

  std::size_t size() const noexcept { return nics_.size(); }
  const nic_place& operator[](std::size_t i) const noexcept { return nics_[i]; }

  /// The NICs for `place`, best rank first; each inner list is one rank in NIC order. Inactive NICs and
  /// those the matrix excludes are left out.
  std::vector<std::vector<std::size_t>> tiers(buffer_place place) const {
    std::vector<int> rank(nics_.size(), -1);
    const std::vector<int>* row = nullptr;
    if (place.numa_node >= 0 && static_cast<std::size_t>(place.numa_node) < priority_.size() &&
        !priority_[static_cast<std::size_t>(place.numa_node)].empty())
      row = &priority_[static_cast<std::size_t>(place.numa_node)];
    for (std::size_t i = 0; i < nics_.size(); ++i) {
      if (!nics_[i].active)
        continue;
      if (row)
        rank[i] = i < row->size() ? (*row)[i] : -1;
      else if (place.pci_group >= 0 && nics_[i].pci_group == place.pci_group)
        rank[i] = 0;
      else if (place.numa_node >= 0 && nics_[i].numa_node == place.numa_node)
        rank[i] = 1;
      else
        rank[i] = 2;
    }
    std::vector<std::vector<std::size_t>> out;
    int max_rank = -1;
    for (int r : rank)
      max_rank = std::max(max_rank, r);
    for (int r = 0; r <= max_rank; ++r) {
      std::vector<std::size_t> tier;
      for (std::size_t i = 0; i < nics_.size(); ++i)
        if (rank[i] == r)
          tier.push_back(i);
      if (!tier.empty())
        out.push_back(std::move(tier));
    }
    return out;
  }

  /// The NIC for the `k`-th slice at `place`: round-robin within the best rank that has a usable NIC,
  /// avoiding `avoid` (the NIC a retry failed on) unless it is the only usable one. nullopt: none usable.
  template<class Usable>
  std::optional<std::size_t> pick(buffer_place place, std::uint64_t k, Usable&& usable,
                                  std::optional<std::size_t> avoid = std::nullopt) const {
    std::optional<std::size_t> fallback;
    for (auto& tier : tiers(place)) {
      std::vector<std::size_t> ok;
      for (std::size_t n : tier)
        if (usable(n))
          ok.push_back(n);
      if (ok.empty())
        continue;
      std::size_t choice = ok[k % ok.size()];
      if (avoid && choice == *avoid) {
        if (ok.size() > 1)
          return ok[(k + 1) % ok.size()];
        if (!fallback)
          fallback = choice; // only the failing NIC in this rank: try a worse rank first
        continue;
      }
      return choice;
    }
    return fallback;
  }

private:
  std::vector<nic_place> nics_;
  std::vector<std::vector<int>> priority_;
};

} // namespace ferry::verbs
