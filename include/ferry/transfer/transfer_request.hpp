#pragma once
/// `ferry::transfer_request`: one move of `length` bytes between local memory and a target segment.
/// `read` brings bytes from the target into `local`; `write` sends bytes from `local` to the target. `local`
/// must lie inside a region registered with the engine; `target_offset` is an offset in the target segment's
/// offset space (its descriptor lists the regions there).
///
///   ferry::transfer_request r{ferry::transfer_op::write, block_ptr, decode_seg, 4096 * i, 65536};

#include <cstdint>

namespace ferry {

enum class transfer_op : std::uint8_t {
  read,  ///< target -> local
  write, ///< local -> target
};

/// An engine's handle of a segment it can reach (its own, or one it opened).
using segment_id = std::uint32_t;

struct transfer_request {
  transfer_op op = transfer_op::read;
  void* local = nullptr;
  segment_id target = 0;
  std::uint64_t target_offset = 0;
  std::uint64_t length = 0;
};

} // namespace ferry
