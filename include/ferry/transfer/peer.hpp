#pragma once
/// `ferry::peer`: an engine's view of a segment it can reach — the descriptor it was given and whether the
/// segment is the engine's own (then transfers are plain copies in this process).

#include "ferry/metadata/segment_descriptor.hpp"
#include "ferry/transfer/transfer_request.hpp"

#include <cstdint>
#include <string>

namespace ferry {

struct peer {
  segment_id id = 0;
  segment_descriptor descriptor;
  bool is_self = false;
  /// How the segment was opened: its name in the metadata store, or "host:port" for a direct handshake.
  std::string locator;
  /// Bumped whenever the descriptor is replaced (the owner restarted or changed its regions).
  std::uint64_t version = 0;
};

} // namespace ferry
