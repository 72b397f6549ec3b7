#pragma once
/// `ferry::verbs::cm_connection` and `cm_listener`: reliable-connected queue pairs set up through librdmacm
/// (the RDMA connection manager), for fabrics that want CM-managed connections (address and route
/// resolution through the kernel's IP stack, paths from the subnet manager) instead of ferry's own
/// handshake. A small private-data blob (at most 56 bytes with a connect, 196 with an accept) travels with
/// the CM messages; the region keys still come from the handshake reply over the TCP control connection.
/// The calls block for at most `timeout` and are meant for setup, off the io_context's thread.
///
///   auto c = ferry::verbs::cm_connection::connect(*ferry::io::endpoint::parse("10.0.0.2:7471"), {});
///   if (!c) std::puts(c.error().message().c_str());   // e.g. "rdma_create_event_channel: No such device"

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/transport/verbs/rc_queue_pair.hpp"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <span>
#include <utility>
#include <vector>

namespace ferry::verbs {

struct cm_options {
  std::chrono::milliseconds timeout{3000};
  qp_caps caps{};
  std::uint8_t responder_resources = 16; ///< RDMA READs the peer may have outstanding towards us
  std::uint8_t initiator_depth = 16;     ///< RDMA READs we may have outstanding
};

namespace detail {

/// Waits up to `timeout` for the next CM event on `ch` and checks that it is `wanted`; the event is
/// acknowledged, its private data copied to `private_data` (if given).
inline result<void> await_cm_event(::rdma_event_channel* ch, ::rdma_cm_event_type wanted,
                                   std::chrono::milliseconds timeout,
                                   std::vector<std::byte>* private_data = nullptr,
                                   ::rdma_cm_id** new_id = nullptr) {
  ::pollfd p{ch->fd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (r == 0)
    return fail(errc::timed_out, "rdma_cm: no event before the deadline");
  if (r < 0)
    return fail_errno(-errno, "poll on the rdma_cm channel");
  ::rdma_cm_event* ev = nullptr;
  if (::rdma_get_cm_event(ch, &ev) != 0)
    return fail_errno(-errno, "rdma_get_cm_event");
  bool ok = ev->event == wanted && ev->status == 0;
  ::rdma_cm_event_type got = ev->event;
  if (ok && private_data && ev->param.conn.private_data) {
    auto* d = static_cast<const std::byte*>(ev->param.conn.private_data);
    private_data->assign(d, d + ev->param.conn.private_data_len);
  }
  if (ok && new_id)
    *new_id = ev->id;
  ::rdma_ack_cm_event(ev);
  if (ok)
    return {};
  switch (got) {
  case RDMA_CM_EVENT_ADDR_ERROR:
    return fail(errc::peer_unreachable, "rdma_cm: address resolution failed (no RDMA device on that route?)");
  case RDMA_CM_EVENT_ROUTE_ERROR:
    return fail(errc::peer_unreachable, "rdma_cm: route resolution failed");
  case RDMA_CM_EVENT_REJECTED:
    return fail(errc::peer_unreachable, "rdma_cm: the peer rejected the connection");
  case RDMA_CM_EVENT_UNREACHABLE:
  case RDMA_CM_EVENT_CONNECT_ERROR:
    return fail(errc::peer_unreachable, "rdma_cm: the peer is unreachable");
  default:
    return fail(errc::malformed_frame, "rdma_cm: unexpected event");
  }
}

inline ::ibv_qp_init_attr cm_qp_attr(const qp_caps& caps) {
  ::ibv_qp_init_attr init{};
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = caps.max_send_wr;
  init.cap.max_send_sge = caps.max_send_sge;
  init.cap.max_recv_wr = 1;
  init.cap.max_recv_sge = 1;
  init.cap.max_inline_data = caps.max_inline_data;
  return init;
}

} // namespace detail

/// One CM-managed connection: its id (and with it the queue pair, `id()->qp`) and its event channel.
class cm_connection {
public:
  cm_connection(cm_connection&& o) noexcept
      : channel_(std::exchange(o.channel_, nullptr)), id_(std::exchange(o.id_, nullptr)),
        has_qp_(std::exchange(o.has_qp_, false)), peer_data_(std::move(o.peer_data_)) {}
  cm_connection& operator=(cm_connection&&) = delete;
  ~cm_connection() {
    if (id_) {
      if (has_qp_) {
        ::rdma_disconnect(id_);
        ::rdma_destroy_qp(id_);
      }
      ::rdma_destroy_id(id_);
    }
    if (channel_)
      ::rdma_destroy_event_channel(channel_);
  }

  /// Resolves `to`, creates a queue pair on the device the route leads to (with `pd`/`cq` if given, else
  /// the id's own), and connects, sending `private_data` (at most 56 bytes).
  static result<cm_connection> connect(const io::endpoint& to, cm_options options,
                                       std::span<const std::byte> private_data = {}, ::ibv_pd* pd = nullptr,
                                       ::ibv_cq* cq = nullptr) {
    if (private_data.size() > 56)
      return fail(errc::invalid_argument, "rdma_cm: at most 56 bytes of private data with a connect");
    cm_connection c;
    c.channel_ = ::rdma_create_event_channel();
    if (!c.channel_)
      return fail_errno(-errno, "rdma_create_event_channel");
    if (::rdma_create_id(c.channel_, &c.id_, nullptr, RDMA_PS_TCP) != 0)
      return fail_errno(-errno, "rdma_create_id");
    int ms = static_cast<int>(options.timeout.count());
    if (::rdma_resolve_addr(c.id_, nullptr, const_cast<::sockaddr*>(to.data()), ms) != 0)
      return fail_errno(-errno, "rdma_resolve_addr");
    if (auto r = detail::await_cm_event(c.channel_, RDMA_CM_EVENT_ADDR_RESOLVED, options.timeout); !r)
      return fail(r.error());
    if (::rdma_resolve_route(c.id_, ms) != 0)
      return fail_errno(-errno, "rdma_resolve_route");
    if (auto r = detail::await_cm_event(c.channel_, RDMA_CM_EVENT_ROUTE_RESOLVED, options.timeout); !r)
      return fail(r.error());
    auto init = detail::cm_qp_attr(options.caps);
    init.send_cq = cq;
    init.recv_cq = cq;
    if (::rdma_create_qp(c.id_, pd, &init) != 0)
      return fail_errno(-errno, "rdma_create_qp");
    c.has_qp_ = true;
    ::rdma_conn_param param{};
    param.private_data = private_data.data();
    param.private_data_len = static_cast<std::uint8_t>(private_data.size());
    param.responder_resources = options.responder_resources;
    param.initiator_depth = options.initiator_depth;
    param.retry_count = 7;
    param.rnr_retry_count = 7;
    if (::rdma_connect(c.id_, &param) != 0)
      return fail_errno(-errno, "rdma_connect");
    if (auto r =
            detail::await_cm_event(c.channel_, RDMA_CM_EVENT_ESTABLISHED, options.timeout, &c.peer_data_);
        !r)
      return fail(r.error());
    return c;
  }

  ::rdma_cm_id* id() const noexcept { return id_; }
  ::ibv_qp* qp() const noexcept { return id_ ? id_->qp : nullptr; }
  /// The private data the other side sent with its accept (or its connect, on the accepting side).
  std::span<const std::byte> peer_data() const noexcept { return peer_data_; }

private:
  friend class cm_listener;
  cm_connection() = default;
  ::rdma_event_channel* channel_ = nullptr;
  ::rdma_cm_id* id_ = nullptr;
  bool has_qp_ = false;
  std::vector<std::byte> peer_data_;
};

/// Accepts CM connections on an address.
class cm_listener {
public:
  cm_listener(cm_listener&& o) noexcept
      : channel_(std::exchange(o.channel_, nullptr)), id_(std::exchange(o.id_, nullptr)) {}
  cm_listener& operator=(cm_listener&&) = delete;
  ~cm_listener() {
    if (id_)
      ::rdma_destroy_id(id_);
    if (channel_)
      ::rdma_destroy_event_channel(channel_);
  }

  static result<cm_listener> listen(const io::endpoint& at, int backlog = 64) {
    cm_listener l;
    l.channel_ = ::rdma_create_event_channel();
    if (!l.channel_)
      return fail_errno(-errno, "rdma_create_event_channel");
    if (::rdma_create_id(l.channel_, &l.id_, nullptr, RDMA_PS_TCP) != 0)
      return fail_errno(-errno, "rdma_create_id");
    if (::rdma_bind_addr(l.id_, const_cast<::sockaddr*>(at.data())) != 0)
      return fail_errno(-errno, "rdma_bind_addr");
    if (::rdma_listen(l.id_, backlog) != 0)
      return fail_errno(-errno, "rdma_listen");
    return l;
  }

  /// Waits up to options.timeout for a connection request, creates its queue pair, and accepts with
  /// `reply` as private data (at most 196 bytes). The request's private data is in peer_data().
  result<cm_connection> accept(cm_options options, std::span<const std::byte> reply = {},
                               ::ibv_pd* pd = nullptr, ::ibv_cq* cq = nullptr) {
    if (reply.size() > 196)
      return fail(errc::invalid_argument, "rdma_cm: at most 196 bytes of private data with an accept");
    cm_connection c;
    ::rdma_cm_id* id = nullptr;
    if (auto r = detail::await_cm_event(channel_, RDMA_CM_EVENT_CONNECT_REQUEST, options.timeout,
                                        &c.peer_data_, &id);
        !r)
      return fail(r.error());
    c.id_ = id; // why: the new id reports on the listener's channel; it stays there (c owns no channel)
    auto init = detail::cm_qp_attr(options.caps);
    init.send_cq = cq;
    init.recv_cq = cq;
    if (::rdma_create_qp(id, pd, &init) != 0) {
      ::rdma_reject(id, nullptr, 0);
      return fail_errno(-errno, "rdma_create_qp");
    }
    c.has_qp_ = true;
    ::rdma_conn_param param{};
    param.private_data = reply.data();
    param.private_data_len = static_cast<std::uint8_t>(reply.size());
    param.responder_resources = options.responder_resources;
    param.initiator_depth = options.initiator_depth;
    param.rnr_retry_count = 7;
    if (::rdma_accept(id, &param) != 0)
      return fail_errno(-errno, "rdma_accept");
    if (auto r = detail::await_cm_event(channel_, RDMA_CM_EVENT_ESTABLISHED, options.timeout); !r)
      return fail(r.error());
    return c;
  }

  ::rdma_cm_id* id() const noexcept { return id_; }

private:
  cm_listener() = default;
  ::rdma_event_channel* channel_ = nullptr;
  ::rdma_cm_id* id_ = nullptr;
};

} // namespace ferry::verbs
