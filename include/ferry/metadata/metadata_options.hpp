#pragma once
/// `ferry::metadata_options`: how a client reaches a remote metadata service.

#include <chrono>
#include <cstddef>

namespace ferry {

struct metadata_options {
  /// Looking up a server's name, connecting, and waiting for one reply: past this each fails, naming the
  /// server. A reply that keeps coming a little at a time is given up too: an HTTP exchange (etcd,
  /// ferry-metad) once it has taken twice this in all with one address, a Redis reply once it has taken this
  /// since the command went out. An address that cannot be reached passes to the next one, and an endpoint
  /// to the next endpoint (etcd), each with a time of its own; a name lookup that takes longer leaves the
  /// last addresses found in use. `milliseconds::max()`: never.
  std::chrono::milliseconds timeout{2000};
  /// The largest reply taken: a larger one fails the operation (errc::malformed_frame) once this much of it
  /// has arrived, instead of being gathered in memory (HTTP: the body; Redis: the whole reply, which may also
  /// hold at most one element per 64 bytes of this).
  std::size_t max_reply_bytes = std::size_t{256} << 20;
};

} // namespace ferry
