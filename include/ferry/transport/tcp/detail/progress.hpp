#pragma once
// `ferry::tcp::detail::progress_of`: what counts as a TCP connection making progress, for the serving side's
// stall timeout and the initiator's reply timeout alike.

#include "ferry/io/deadline.hpp"
#include "ferry/io/tcp_socket.hpp"

#include <cstdint>

namespace ferry::tcp::detail {

/// A connection that moved less than this, both ways together, over a whole timeout is stalled.
// why: a peer that trickles a byte now and then would otherwise hold what its request pinned for ever; any
// link that still carries a transfer moves far more than 64 KiB in seconds
inline constexpr std::uint64_t least_progress = 64 * 1024;

/// The progress of the connection `sock` (which must outlive what uses it): the bytes it moved.
inline io::progress progress_of(const io::tcp_socket& sock) {
  return {[&sock] { return sock.bytes_moved(); }, least_progress};
}

} // namespace ferry::tcp::detail
