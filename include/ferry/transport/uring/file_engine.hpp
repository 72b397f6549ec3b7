#pragma once
/// `ferry::file_engine`: the default engine plus file regions — its own files through io_uring, same-host
/// peers' shared memory directly, and everything else (remote memory and remote files alike) over TCP.
///
///   ferry::file_engine engine(ctx, {.listen = "127.0.0.2:0"});
///   auto f = ferry::uring_file::open(ctx, "/nvme/kv.bin");
///   auto at = engine.registry().add_file(*f, ferry::access::read_write);

#include "ferry/transfer/transfer_engine.hpp"
#include "ferry/transport/shm/shm_transport.hpp"
#include "ferry/transport/tcp/tcp_transport.hpp"
#include "ferry/transport/uring/uring_file.hpp"
#include "ferry/transport/uring/uring_transport.hpp"

namespace ferry {

using file_engine = transfer_engine<uring_transport, shm_transport, tcp_transport>;

} // namespace ferry
