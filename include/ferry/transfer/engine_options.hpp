#pragma once
/// `ferry::engine_options`: how a transfer engine is set up — its segment name, where it serves peers, how
/// requests are cut into slices and retried, and the knobs of each transport.
///
///   ferry::engine_options o{.name = "decode-0", .listen = "127.0.0.2:0"};

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace ferry {

struct tcp_options {
  /// Connections opened to each peer; slices are spread over them.
  unsigned connections_per_peer = 4;
  /// Requests sent on one connection before its replies come back (back-pressure beyond that).
  unsigned in_flight_per_connection = 8;
  /// Threads of their own for the engine's TCP connections, those it opens for data and those it accepts:
  /// each connection's sends and receives run on one of them. 0: on the engine's own loop. The engine's own
  /// state is only touched on its loop either way: the descriptor a handshake returns, notifications, file
  /// regions and the settling of every slice (an initiator's control connection, for handshakes,
  /// notifications and probes, stays on the engine's loop too).
  // why: moving bytes over a socket is the kernel copying them, on the thread that asks; with one thread for
  // every connection an engine moves at most what one core copies (see BENCHMARKS.md, "More cores").
  unsigned io_threads = 0;
  std::chrono::milliseconds connect_timeout{3000};
  /// A connection with requests outstanding that neither answered one nor moved 64 KiB either way for this
  /// long is dropped and its slices retried (noticed up to twice this long after it went silent; a fence,
  /// which the owner may hold up to its stall timeout, is given twice as long). A large slice over a slow
  /// link takes as long as it takes, as long as it moves.
  std::chrono::milliseconds reply_timeout{10000};
  /// Data connections, opened and accepted, that sit idle this long send TCP keepalives (then every third of
  /// this, dropped after 3 unanswered): middleboxes keep the connection's state through idle periods, and a
  /// peer that vanished is noticed without waiting for a transfer to fail. 0: the system's keepalive.
  std::chrono::seconds keepalive_idle{30};
  /// Serving: a peer that stalls this long in the middle of a request (moves less than 64 KiB of its payload,
  /// or of the replies, in this time) is dropped, and the memory that request held in use is released
  /// (noticed up to twice this long after it went silent). One that keeps moving, however slowly beyond
  /// that, is served.
  std::chrono::milliseconds stall_timeout{10000};
  /// The TCP congestion control algorithm of this engine's data connections, the ones it opens and the ones
  /// it accepts ("reno", "cubic", "dctcp", "bbr" ...); empty: the system's default
  /// (net.ipv4.tcp_congestion_control). An algorithm the kernel refuses fails start() and connections with
  /// the reason.
  // why: an algorithm that paces in the kernel (bbr without the fq qdisc) arms a timer per packet; on links
  // inside a cluster, or on loopback, that costs a large share of the sender's CPU (see BENCHMARKS.md).
  std::string congestion_control;
  /// Serving: connections served at once, at most, so that peers cannot take every descriptor of this
  /// process. Each peer engine holds connections_per_peer + 1. 0: the process's descriptor limit
  /// (RLIMIT_NOFILE) less an eighth of it (at least 64) kept for everything else, when the engine starts
  /// listening. A connection accepted beyond takes the place of the one that has waited longest for its next
  /// request, if that one has waited `evict_idle_after` at least (it is closed, and its peer connects again
  /// when it needs it); if none has, the new one is refused: its hello is answered errc::busy, and it is
  /// closed (the peer's slices move to its other connections, which pass a refused one by for a moment, or
  /// fail as busy with the reason once their retries run out). Beyond 16 refusals at once, or for a peer
  /// that says nothing within a second, the connection is closed without an answer.
  std::size_t max_served_connections = 0;
  /// See max_served_connections; `std::chrono::milliseconds::max()`: never evict.
  std::chrono::milliseconds evict_idle_after{1000};
};

struct shm_options {
  /// Threads that copy between this process's memory and peers' shared memory.
  unsigned copy_threads = 1;
};

/// How the cuda transport moves a batch of blocks between two memories (GPU or pinned host).
enum class cuda_copy_method : std::uint8_t {
  automatic,    ///< per batch: copy engines for large blocks, one kernel launch for small ones
  kernel,       ///< always one copy-kernel launch per batch
  memcpy_batch, ///< always one cudaMemcpyBatchAsync call per batch (CUDA 12.8+)
  copy_engine,  ///< always one cudaMemcpyAsync per block, spread over the device's streams
};

/// Which copy kernel moves a batch of small blocks (see transport/cuda/detail/copy_kernel.cu).
enum class cuda_copy_kernel : std::uint8_t {
  block_per_piece,      ///< one CUDA block copies a piece, 4 loads in flight per thread
  block_per_piece_deep, ///< one CUDA block copies a piece, 8 loads in flight per thread
  warp_per_piece,       ///< one warp copies a piece, 8 loads in flight per lane
};

/// How the copy kernel is launched.
struct cuda_kernel_shape {
  cuda_copy_kernel kernel = cuda_copy_kernel::block_per_piece;
  /// Threads per CUDA block.
  unsigned threads = 512;
  /// CUDA blocks per SM of the device; 0: one CUDA block per piece.
  unsigned blocks_per_sm = 0;
  /// Blocks are cut into pieces of at most this many bytes, the unit of work of a CUDA block or warp.
  std::uint32_t piece_bytes = 64u << 10;
};

struct cuda_options {
  /// Streams per device that copies are spread over.
  unsigned streams_per_device = 4;
  /// automatic: a batch whose blocks average at least this many bytes goes to the copy engines.
  std::uint64_t copy_engine_threshold = 2u << 20;
  /// automatic: how batches of small blocks move (kernel or memcpy_batch).
  cuda_copy_method small_blocks = cuda_copy_method::kernel;
  /// Forces one method for every batch (benchmarks); automatic chooses per batch.
  cuda_copy_method method = cuda_copy_method::automatic;
  /// The copy kernel and its launch shape.
  cuda_kernel_shape kernel{};
};

struct engine_options {
  /// The name of this engine's segment (how peers find it in a metadata store).
  std::string name = "ferry";
  /// "host:port" to serve this segment to peers over TCP (port 0: any); nullopt: serve nobody.
  std::optional<std::string> listen;
  /// The IP address peers are told to reach this segment at (the port is the one listened on); nullopt: the
  /// listen address. Set it when listening on every address (0.0.0.0, [::]): a peer that finds the segment in
  /// a metadata store has no other way to know where it is served (one that opens it by "host:port" uses
  /// that host).
  std::optional<std::string> advertise;
  /// Requests longer than this are cut into slices of this size, spread over paths (taken as 4 KiB if
  /// smaller, as 64 MiB, the most one tcp frame carries, if larger).
  std::uint32_t slice_size = 1u << 20;
  /// Times a failed slice is retried on another path before its request fails (at most 65535). A slice a
  /// transport finds it cannot take to the peer at all (errc::peer_unreachable) goes on to the next
  /// transport that reaches it without using this up.
  unsigned retry_budget = 3;
  /// Lifetime of this segment's key in a metadata store with leases, renewed every third of it while the
  /// engine lives: a process that dies vanishes from the store within this time. Zero: no lease.
  std::chrono::milliseconds metadata_ttl{10000};
  /// Notifications kept for next_notification() at most: this many, holding this many bytes. Beyond, a
  /// peer's notification is refused (its sender gets errc::out_of_space) until the engine takes some.
  std::size_t max_pending_notifications = 4096;
  std::size_t max_pending_notification_bytes = 64u << 20;
  tcp_options tcp{};
  shm_options shm{};
  cuda_options cuda{};
};

} // namespace ferry
