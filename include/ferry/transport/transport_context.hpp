#pragma once
/// `ferry::transport_context`: what an engine gives each of its transports — the loop they run on, the
/// registry of local memory, the scope their background work lives in, and the engine's options.

#include "ferry/core/async_scope.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/io_context_pool.hpp"
#include "ferry/memory/region_registry.hpp"
#include "ferry/transfer/engine_options.hpp"

#include <string>

namespace ferry {

struct transport_context {
  io::io_context& io;
  region_registry& registry;
  async_scope& scope;
  const engine_options& options;
  /// This host's identity (boot id); peers with the same one can share memory.
  const std::string& host;
  /// Loops of their own for the TCP data connections (engine_options::tcp::io_threads), or nullptr: they run
  /// on `io`. They outlive the work spawned into `scope`.
  io::io_context_pool* connection_loops = nullptr;
};

} // namespace ferry
