#pragma once
/// `ferry::gate_claim`: what the owner of a shared region vouches for behind its gate (`ferry::shm_gates`):
/// the object behind the region (its shared-memory name or CUDA IPC handle, hashed), where the region starts
/// in it, how long it is, where it sits in the segment and what peers may do there. The owner writes it into
/// its table when it opens the gate; a same-host peer compares it with the region its descriptor describes
/// before it copies. A descriptor that says otherwise, forged or garbled, then gets no copy: it cannot send
/// a peer's copies into another object, another place in it, more bytes or with more access than the owner
/// exposed. The table is the owner's to write: a peer attaches none that others may write, and maps through
/// it only objects of the table's user (CUDA IPC memory: only its own user's).
///
///   owner: gates.open_gate(ferry::gate_claim::of(region));
///   peer:  gates.enter(region.shm_gate, region.shm_epoch, ferry::gate_claim::of(region));

#include "ferry/memory/region_descriptor.hpp"

#include <cstdint>
#include <string_view>

namespace ferry {

struct gate_claim {
  std::uint64_t object = 0;         ///< hash of the shared object's name, or of the CUDA IPC handle
  std::uint64_t object_offset = 0;  ///< where the region starts in that object
  std::uint64_t length = 0;         ///< the region's length
  std::uint64_t segment_offset = 0; ///< where the region sits in the segment's offset space
  std::uint64_t permissions = 0;    ///< the region's access, as its number

  /// The claim that describes `r` (its shared-memory object if it names one, else its IPC allocation).
  static gate_claim of(const region_descriptor& r) noexcept {
    const bool shared = !r.shm_name.empty();
    return {hash(shared ? r.shm_name : r.location.ipc_handle), shared ? r.shm_offset : r.location.ipc_offset,
            r.length, r.offset, static_cast<std::uint64_t>(r.permissions)};
  }
  /// FNV-1a, 64 bits: the same in every process and build, unlike std::hash.
  static std::uint64_t hash(std::string_view s) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : s) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
    return h;
  }
  friend bool operator==(const gate_claim&, const gate_claim&) = default;
};

} // namespace ferry
