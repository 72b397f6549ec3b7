#pragma once
/// Everything of ferry's transfer engine: memory registration, segments, the tcp and shm transports, batches.
#include "ferry/memory/access.hpp"
#include "ferry/memory/region_registry.hpp"
#include "ferry/memory/shared_buffer.hpp"
#include "ferry/metadata/memory_metadata_store.hpp"
#include "ferry/metadata/segment_descriptor.hpp"
#include "ferry/transfer/transfer_batch.hpp"
#include "ferry/transfer/transfer_engine.hpp"
#include "ferry/transport/shm/shm_transport.hpp"
#include "ferry/transport/tcp/tcp_transport.hpp"

namespace ferry {
/// The engine most programs want: shared memory to same-host peers and to itself, TCP to everyone else.
using default_engine = transfer_engine<shm_transport, tcp_transport>;
} // namespace ferry
