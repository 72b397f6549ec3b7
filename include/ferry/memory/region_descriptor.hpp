#pragma once
/// `ferry::region_descriptor`: what a peer learns about one exposed region of a segment: where it sits in the
/// segment's offset space, how long it is, what peers may do, and — for shared-memory regions — the object a
/// same-host peer can map (and the gate its owner keeps it behind); for GPU memory, its device and the CUDA
/// IPC handle a same-host peer can open.
///
///   for (auto& r : descriptor.regions) if (r.contains(offset, length)) ...

#include "ferry/memory/access.hpp"
#include "ferry/memory/memory_kind.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace ferry {

/// The most regions one segment exposes (what a descriptor carries; the registry refuses more).
inline constexpr std::size_t max_exposed_regions = std::size_t{1} << 16;

struct region_descriptor {
  std::uint64_t offset = 0; ///< start in the segment's offset space
  std::uint64_t length = 0;
  access permissions = access::none;
  std::string shm_name;         ///< shared-memory object backing the region; empty when it is private memory
  std::uint64_t shm_offset = 0; ///< where the region starts inside that object
  memory_location location;     ///< GPU or pinned memory: its kind, device and IPC handle
  /// A shared region's gate (shared memory, or GPU memory with an IPC handle) in the owner's shm_gates table
  /// (no_gate: none, and then no peer maps it) and the epoch it was opened with.
  std::uint32_t shm_gate = no_gate;
  std::uint64_t shm_epoch = 0;
  static constexpr std::uint32_t no_gate = 0xffffffffu;

  /// True when [offset, offset + length) lies inside this region (no overflow).
  bool contains(std::uint64_t at, std::uint64_t len) const noexcept {
    return at >= offset && len <= length && at - offset <= length - len;
  }
  friend bool operator==(const region_descriptor&, const region_descriptor&) = default;
};

} // namespace ferry
