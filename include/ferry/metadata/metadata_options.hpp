#pragma once
/// `ferry::metadata_options`: how a client reaches a remote metadata service.

#include <chrono>

namespace ferry {

struct metadata_options {
  /// Connecting, and waiting for one reply: past this an operation fails naming the server.
  std::chrono::milliseconds timeout{2000};
};

} // namespace ferry
