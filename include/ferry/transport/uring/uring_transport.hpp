#pragma once
/// `ferry::uring_transport`: the engine's path to its own file regions (region_registry::add_file). Each
/// slice becomes reads or writes of the region's file on the engine's loop (io_uring with O_DIRECT, see
/// ferry::uring_file); all slices of a batch are queued before the ring is entered, so one submission carries
/// many of them, and each file bounds its own queue depth. Peers reach the same file regions through the tcp
/// transport: the owner's tcp server serves them, so a caller's code is the same for a local and a remote
/// file (`ferry::file_engine`). Bounds and permissions are checked against the registry before any I/O.
/// The ring is the io_context's: SQPOLL is `io_context_options::sqpoll`, the queue depth per file
/// `uring_file_options::queue_depth`.
///
///   ferry::transfer_engine<ferry::uring_transport, ferry::shm_transport, ferry::tcp_transport> engine(ctx);

#include "ferry/core/error.hpp"
#include "ferry/core/task.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/region_registry.hpp"
#include "ferry/transfer/detail/batch_state.hpp"
#include "ferry/transfer/peer.hpp"
#include "ferry/transport/slice.hpp"
#include "ferry/transport/transport_context.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <stop_token>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

class uring_transport {
public:
  static constexpr std::string_view name = "uring";

  explicit uring_transport(transport_context& tc) noexcept : tc_(tc) {}
  uring_transport(const uring_transport&) = delete;
  uring_transport& operator=(const uring_transport&) = delete;

  /// This engine's own file regions.
  bool reaches(const peer& p, std::uint64_t offset, std::uint64_t length) const {
    return p.is_self && tc_.registry.is_file(offset, length);
  }

  // why: noexcept: running out of memory halfway through taking a slice (queued, a connection half set up)
  // must end the process, not reach the engine, which would fail a slice that is still held here
  void submit(const peer&, slice* s) noexcept {
    access wanted = s->op == transfer_op::write ? access::write : access::read;
    auto lease = tc_.registry.pin_exposed(s->remote_offset, s->length, wanted, true);
    if (!lease) {
      s->settle(lease.error());
      return;
    }
    if (!lease->file()) {
      s->settle(error(errc::invalid_state, "uring: the region is no longer a file region"));
      return;
    }
    auto& batch = batches_[s->batch];
    ++batch.slices;
    tc_.scope.spawn(run(s, std::move(*lease), batch.stop.get_token()));
  }

  /// The batch's slices start no more I/O: those waiting for one of their file's queue slots end with the
  /// batch's error as soon as the slot comes to them (when an operation ahead of them in the kernel
  /// completes, without starting their own), as do pieces not started yet; I/O already in the kernel
  /// finishes (it cannot be taken back), and the batch completes once it has.
  void abort(detail::batch_state* b) noexcept {
    if (auto it = batches_.find(b); it != batches_.end()) {
      // why: a copy: a stop callback that ran a slice to its end would erase the entry under our feet
      std::stop_source stop = it->second.stop;
      stop.request_stop();
    }
  }

  void forget(const peer&) noexcept {}

  void shutdown() noexcept {
    stopping_ = true;
    std::vector<std::stop_source> stops; // why: as in abort(), the map may change while they stop
    for (auto& [batch, live] : batches_)
      stops.push_back(live.stop);
    for (auto& s : stops)
      s.request_stop();
  }

private:
  // The slices of one batch that are with their files, and what stops them.
  struct live_batch {
    std::stop_source stop;
    std::size_t slices = 0;
  };

  task<> run(slice* s, region_registry::lease lease, std::stop_token stop) {
    result<void> r;
    if (s->batch->aborted() || stopping_) {
      r = fail(errc::cancelled, "uring");
    } else {
      file_backing* f = lease.file();
      if (s->op == transfer_op::write)
        r = co_await f->write(lease.file_offset(), std::span<const std::byte>(s->local, s->length), stop);
      else
        r = co_await f->read(lease.file_offset(), std::span<std::byte>(s->local, s->length), stop);
    }
    lease = {};
    // why: before the slice settles: the last one settled may end the batch, and a later batch may be given
    // the same address
    if (auto it = batches_.find(s->batch); it != batches_.end() && --it->second.slices == 0)
      batches_.erase(it);
    s->settle(r ? error() : r.error());
  }

  transport_context& tc_;
  std::unordered_map<detail::batch_state*, live_batch> batches_;
  bool stopping_ = false;
};

} // namespace ferry
