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
  /// Why a descriptor that lists this region would not parse (nullptr if it would): a zero length, a range
  /// that wraps, an over-long shared-memory name or IPC handle, a device out of range, host memory with a
  /// device. The registry refuses such a registration, which would otherwise make its segment unreadable.
  const char* problem() const noexcept {
    constexpr std::uint64_t most = ~std::uint64_t{0};
    if (length == 0 || offset > most - length)
      return "region length is zero or overflows";
    if (shm_name.size() > 255)
      return "shm_name must be a short string";
    if (!shm_name.empty() && shm_offset > most - length)
      return "shm_offset + length overflows";
    if (location.device < -1 || location.device > 1023)
      return "device must be a device ordinal";
    if (location.kind == memory_kind::host && (location.device != -1 || !location.ipc_handle.empty()))
      return "host memory has no device or IPC handle";
    if (location.ipc_handle.size() > 512)
      return "ipc_handle must be a short string";
    if (!location.ipc_handle.empty() && location.ipc_offset > most - length)
      return "ipc_offset + length overflows";
    return nullptr;
  }
  friend bool operator==(const region_descriptor&, const region_descriptor&) = default;
};

} // namespace ferry
