#pragma once
/// `ferry::slice`: the unit a transport moves — a piece of one request, at most the engine's slice size.
/// A transport that accepts a slice settles it exactly once, with success or an error, through `settle()`;
/// until then the local memory and the slice stay valid.

#include "ferry/core/error.hpp"
#include "ferry/transfer/transfer_request.hpp"

#include <cstddef>
#include <cstdint>

namespace ferry {

namespace detail {
class batch_state;
}

struct slice {
  transfer_op op = transfer_op::read;
  std::byte* local = nullptr;
  segment_id target = 0;
  std::uint64_t remote_offset = 0;
  std::uint32_t length = 0;
  std::uint32_t request = 0;  ///< index of its request in the batch
  std::uint16_t attempt = 0;  ///< 0 for the first try; the path differs on each retry
  std::uint16_t path = 0;     ///< which of the transport's paths (connection, thread ...) carries it
  std::uint8_t transport = 0; ///< index of the engine's transport that holds it
  bool local_on_gpu = false;  ///< `local` is GPU memory: only a transport that moves GPU memory may take it
  detail::batch_state* batch = nullptr;
  // For the transport that holds it:
  std::uint64_t wire_id = 0;
  slice* next = nullptr;

  /// Reports the outcome (a default-constructed error for success). Exactly once per submission.
  inline void settle(error e = {}) noexcept;
};

} // namespace ferry

#include "ferry/transfer/detail/batch_state.hpp" // defines slice::settle
