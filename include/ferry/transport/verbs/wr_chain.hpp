#pragma once
/// `ferry::verbs::wr_chain`: a chain of RDMA READ / WRITE work requests posted with one ibv_post_send. Each
/// request is checked before it is built: the remote range must lie inside the peer's region and the region
/// must permit the operation, the scatter/gather list must fit the queue pair's SGE limit, and the chain must
/// fit the send queue. Small writes go inline (the CPU copies the payload into the work request: no DMA read
/// of local memory, lower latency). Only every `signal_every`-th request and the last one ask for a
/// completion: on a reliable-connected queue pair completions arrive in order, so a signaled completion also
/// reports every unsignaled request before it (and an error completes the failing request whether signaled
/// or not).
///
///   ferry::verbs::wr_chain chain({.max_sge = 4, .max_inline = 220, .signal_every = 16, .max_wr = 128});
///   chain.add(ferry::transfer_op::write, pieces, region, offset, wr_id);
///   ibv_post_send(qp, chain.finish(), &bad);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/transfer/transfer_request.hpp"
#include "ferry/transport/verbs/handshake.hpp"

#include <cstddef>
#include <cstdint>
#include <infiniband/verbs.h>
#include <span>
#include <vector>

namespace ferry::verbs {

struct chain_limits {
  std::uint32_t max_sge = 1;    ///< scatter/gather entries per request (the queue pair's max_send_sge)
  std::uint32_t max_inline = 0; ///< writes up to this many bytes go inline (the queue pair's max_inline_data)
  std::uint32_t signal_every = 16;      ///< at most this many requests in a row without a completion
  std::uint32_t max_wr = 128;           ///< requests in one chain (room left in the send queue)
  std::uint32_t max_message = 1u << 30; ///< bytes per request (the port's max_msg_sz)
};

/// A piece of local registered memory.
struct local_sge {
  const std::byte* addr = nullptr;
  std::uint32_t length = 0;
  std::uint32_t lkey = 0;
};

class wr_chain {
public:
  explicit wr_chain(chain_limits limits) : limits_(sanitize(limits)) {
    wrs_.reserve(limits_.max_wr);
    sges_.reserve(static_cast<std::size_t>(limits_.max_wr) * limits_.max_sge);
  }
  wr_chain(const wr_chain&) = delete;
  wr_chain& operator=(const wr_chain&) = delete;

  /// Adds an RDMA READ (remote -> local pieces) or WRITE (local pieces -> remote) of the pieces' total length
  /// at `remote_offset` of the segment, which must lie in `region`. `wr_id` comes back in its completion.
  result<void> add(transfer_op op, std::span<const local_sge> local, const remote_region& region,
                   std::uint64_t remote_offset, std::uint64_t wr_id) {
    if (wrs_.size() >= limits_.max_wr)
      return fail(errc::busy, "verbs: the work request chain is full (send queue room)");
    if (local.empty())
      return fail(errc::invalid_argument, "verbs: a work request needs at least one local piece");
    if (local.size() > limits_.max_sge)
      return fail(errc::invalid_argument, "verbs: more local pieces than the queue pair's SGE limit");
    std::uint64_t total = 0;
    for (auto& s : local) {
      if (!s.addr || s.length == 0)
        return fail(errc::invalid_argument, "verbs: an empty local piece");
      total += s.length;
    }
    if (total > limits_.max_message)
      return fail(errc::invalid_argument, "verbs: work request longer than the port's message size");
    bool inside = remote_offset >= region.offset && total <= region.length &&
                  remote_offset - region.offset <= region.length - total;
    if (!inside)
      return fail(errc::out_of_bounds, "verbs: remote range outside the peer's region");
    if (!allows(region.permissions, op == transfer_op::write ? access::write : access::read))
      return fail(errc::permission_denied, "verbs: the peer's region does not permit this");

    std::size_t first = sges_.size();
    for (auto& s : local)
      sges_.push_back({reinterpret_cast<std::uint64_t>(s.addr), s.length, s.lkey});
    ::ibv_send_wr wr{};
    wr.wr_id = wr_id;
    wr.sg_list = sges_.data() + first; // why: capacity was reserved up front, so this never moves
    wr.num_sge = static_cast<int>(local.size());
    wr.opcode = op == transfer_op::write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
    wr.wr.rdma.remote_addr = region.addr + (remote_offset - region.offset);
    wr.wr.rdma.rkey = region.rkey;
    // why: inline is for sends and writes only; a read's payload arrives from the peer
    if (op == transfer_op::write && total <= limits_.max_inline)
      wr.send_flags |= IBV_SEND_INLINE;
    if (++since_signal_ >= limits_.signal_every) {
      wr.send_flags |= IBV_SEND_SIGNALED;
      since_signal_ = 0;
    }
    wrs_.push_back(wr);
    return {};
  }

  /// Links the chain (the last request always signaled) and returns its head; nullptr when empty. Valid
  /// until the chain is added to or cleared.
  ::ibv_send_wr* finish() noexcept {
    if (wrs_.empty())
      return nullptr;
    for (std::size_t i = 0; i + 1 < wrs_.size(); ++i)
      wrs_[i].next = &wrs_[i + 1];
    wrs_.back().next = nullptr;
    if (!(wrs_.back().send_flags & IBV_SEND_SIGNALED)) {
      wrs_.back().send_flags |= IBV_SEND_SIGNALED;
      since_signal_ = 0;
    }
    return wrs_.data();
  }

  void clear() noexcept {
    wrs_.clear();
    sges_.clear();
    since_signal_ = 0;
  }

  std::size_t size() const noexcept { return wrs_.size(); }
  bool empty() const noexcept { return wrs_.empty(); }
  bool full() const noexcept { return wrs_.size() >= limits_.max_wr; }
  std::span<const ::ibv_send_wr> requests() const noexcept { return wrs_; }
  /// Requests that will produce a completion.
  std::size_t signaled() const noexcept {
    std::size_t n = 0;
    for (auto& w : wrs_)
      n += (w.send_flags & IBV_SEND_SIGNALED) ? 1 : 0;
    return n;
  }
  const chain_limits& limits() const noexcept { return limits_; }

private:
  static chain_limits sanitize(chain_limits l) noexcept {
    if (l.max_sge == 0)
      l.max_sge = 1;
    if (l.signal_every == 0)
      l.signal_every = 1;
    if (l.max_wr == 0)
      l.max_wr = 1;
    if (l.max_message == 0)
      l.max_message = 1;
    return l;
  }

  chain_limits limits_;
  std::vector<::ibv_send_wr> wrs_;
  std::vector<::ibv_sge> sges_;
  std::uint32_t since_signal_ = 0;
};

} // namespace ferry::verbs
