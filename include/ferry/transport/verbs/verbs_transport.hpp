#pragma once
/// `ferry::verbs_transport`: one-sided RDMA READ and WRITE over reliable-connected queue pairs, on every RDMA
/// NIC of the host. A peer is reached when it advertises an "rdma" endpoint in its segment descriptor (its
/// verbs handshake listener) and this host has a usable NIC; otherwise `reaches()` is false and the engine's
/// next transport serves. Slices are sprayed over the NICs nearest the buffer (nic_selector), posted as
/// chained work requests (wr_chain) into the rkey the peer handed out for the region, and a failed
/// completion re-routes the slice to another NIC within the engine's retry budget; a NIC that keeps failing
/// is paused and re-admitted after a cooldown (path_health).
///
/// Connections: per (peer, local NIC) an endpoint with `qps_per_endpoint` queue pairs, created on first use
/// and kept in a bounded SIEVE cache whose eviction drains in-flight work. The QPN/PSN/LID/GID handshake and
/// the region keys travel over a TCP control connection to the peer's verbs listener; when either side
/// closes it, the other tears its queue pairs down. A peer whose handshake fails is left to the other
/// transports for a cooldown, so a broken peer causes no reconnect storm.
///
///   ferry::transfer_engine<ferry::verbs_transport, ferry::shm_transport, ferry::tcp_transport> e(ctx, o);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/transfer/detail/batch_state.hpp"
#include "ferry/transfer/peer.hpp"
#include "ferry/transport/concepts.hpp"
#include "ferry/transport/slice.hpp"
#include "ferry/transport/transport_context.hpp"
#include "ferry/transport/verbs/completion_worker.hpp"
#include "ferry/transport/verbs/device_list.hpp"
#include "ferry/transport/verbs/endpoint_cache.hpp"
#include "ferry/transport/verbs/handshake.hpp"
#include "ferry/transport/verbs/mr_registrar.hpp"
#include "ferry/transport/verbs/nic_context.hpp"
#include "ferry/transport/verbs/nic_selector.hpp"
#include "ferry/transport/verbs/path_health.hpp"
#include "ferry/transport/verbs/rc_queue_pair.hpp"
#include "ferry/transport/verbs/registration_cache.hpp"
#include "ferry/transport/verbs/send_queue_tracker.hpp"
#include "ferry/transport/verbs/verbs_options.hpp"
#include "ferry/transport/verbs/wr_chain.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

namespace verbs::detail {

/// The "rdma" endpoint address: "host:port#nics" (the verbs listener and how many NICs serve there).
struct rdma_address {
  std::string listener;
  std::uint16_t nics = 1;
};

inline result<rdma_address> parse_rdma_address(std::string_view text) {
  rdma_address a;
  auto hash = text.rfind('#');
  a.listener = std::string(text.substr(0, hash));
  if (hash != std::string_view::npos) {
    unsigned n = 0;
    auto digits = text.substr(hash + 1);
    if (digits.empty() || digits.size() > 5)
      return fail(errc::malformed_frame, "verbs: rdma endpoint must be host:port#nics");
    for (char c : digits) {
      if (c < '0' || c > '9')
        return fail(errc::malformed_frame, "verbs: rdma endpoint must be host:port#nics");
      n = n * 10 + static_cast<unsigned>(c - '0');
    }
    if (n == 0 || n > 0xffff)
      return fail(errc::malformed_frame, "verbs: rdma endpoint names no NIC");
    a.nics = static_cast<std::uint16_t>(n);
  }
  if (auto ep = io::endpoint::parse(a.listener); !ep)
    return fail(ep.error());
  return a;
}

/// Handshake frames on the control connection: a 4-byte little-endian length, then the message.
inline task<result<void>> send_handshake(io::tcp_socket& sock, const handshake_message& m,
                                         std::stop_token stop) {
  auto body = m.encode();
  std::vector<std::byte> frame(4 + body.size());
  for (int i = 0; i < 4; ++i)
    frame[static_cast<std::size_t>(i)] = static_cast<std::byte>((body.size() >> (8 * i)) & 0xff);
  std::copy(body.begin(), body.end(), frame.begin() + 4);
  co_return co_await sock.send_all(std::span<const std::byte>(frame), std::move(stop));
}

inline task<result<handshake_message>> receive_handshake(io::tcp_socket& sock, std::stop_token stop) {
  std::array<std::byte, 4> head{};
  auto got = co_await sock.recv_all(head, stop);
  if (!got)
    co_return fail(got.error());
  std::size_t n = 0;
  for (int i = 0; i < 4; ++i)
    n |= static_cast<std::size_t>(head[static_cast<std::size_t>(i)]) << (8 * i);
  if (n > handshake_message::max_size)
    co_return fail(errc::malformed_frame, "verbs handshake: frame too long");
  std::vector<std::byte> body(n);
  auto all = co_await sock.recv_all(body, stop);
  if (!all)
    co_return fail(all.error());
  co_return handshake_message::decode(body);
}

} // namespace verbs::detail

class verbs_transport {
  using local_cache = verbs::registration_cache<verbs::mr_registrar>;

  struct nic_slot {
    std::unique_ptr<verbs::nic_context> ctx;
    std::unique_ptr<local_cache> local;
    std::unique_ptr<verbs::completion_worker> worker;
    // Exposed regions registered for peers: (base, length, access) -> memory region.
    std::map<std::tuple<std::uintptr_t, std::uint64_t, std::uint8_t>, ::ibv_mr*> exposed;
    // Requests posted and not yet completed on all of its queue pairs. why: a flush completes every one of
    // them, signaled or not, so their total must fit the completion queue or it overflows.
    std::size_t outstanding = 0;
  };

  struct posted {
    slice* s = nullptr;
    local_cache::ref reg;
  };

  struct endpoint_key {
    segment_id peer = 0;
    std::uint32_t nic = 0;
    std::uint64_t version = 0;
    friend bool operator==(const endpoint_key&, const endpoint_key&) = default;
  };
  struct key_hash {
    std::size_t operator()(const endpoint_key& k) const noexcept {
      return std::hash<std::uint64_t>()((std::uint64_t(k.peer) << 32 | k.nic) ^
                                        (k.version * 0x9e3779b97f4a7c15ull));
    }
  };
  struct qp_ref;

  struct endpoint {
    enum class phase : std::uint8_t { connecting, ready, failed, retired };
    phase state = phase::connecting;
    endpoint_key key;
    std::vector<std::unique_ptr<verbs::rc_queue_pair>> qps;
    std::vector<verbs::send_queue_tracker<posted>> fifo; // per queue pair, in posting order
    verbs::handshake_message remote;
    io::tcp_socket control;
    std::deque<slice*> waiting; // accepted, not yet posted
    std::size_t posted_count = 0;
    unsigned tasks = 0; // coroutines and callbacks using it now
    std::size_t next_qp = 0;
    std::unordered_map<std::uint64_t, qp_ref>* index = nullptr;

    ~endpoint() {
      if (index)
        for (auto& q : qps)
          index->erase(std::uint64_t(key.nic) << 32 | q->qpn());
    }
    std::size_t in_flight() const noexcept { return posted_count + waiting.size() + tasks; }
    /// Evicted: no new work; the control connection closes once posted work completed.
    void retire() noexcept {
      if (state == phase::ready || state == phase::connecting)
        state = phase::retired;
    }
  };

  struct qp_ref {
    endpoint* ep = nullptr;
    std::size_t qp = 0;
  };

  // why: shared with the loop's queue, where a posted flush may outlive the transport at teardown
  struct flush_op : io::detail::op_base {
    verbs_transport* self = nullptr;
    std::shared_ptr<flush_op> keep; // set while posted
  };

public:
  static constexpr std::string_view name = "verbs";

  /// The options engines give their verbs transport (read from the environment on first use). Set them
  /// before constructing an engine: `ferry::verbs_transport::defaults().qps_per_endpoint = 4;`
  static verbs::verbs_options& defaults() {
    static verbs::verbs_options options = verbs::verbs_options::from_environment();
    return options;
  }

  explicit verbs_transport(transport_context& tc) : verbs_transport(tc, defaults()) {}

  verbs_transport(transport_context& tc, verbs::verbs_options options)
      : tc_(tc), options_(std::move(options)), selector_(std::vector<verbs::nic_place>{}),
        health_(0, options_.health, clock_), endpoints_(options_.max_endpoints) {
    flush_->self = this;
    flush_->complete_ = &run_flush;
    open_devices();
    // why: before any peer can handshake: a peer reaches an exposed region through its key without asking
    // this process; once the region is unregistered (and perhaps freed) the NIC must refuse that key before
    // remove() returns
    withdrawals_ =
        tc_.registry.on_withdrawal([this](region_registry::withdrawn_range gone) { withdraw(gone); });
    if (enabled())
      start_listening();
  }
  verbs_transport(const verbs_transport&) = delete;
  verbs_transport& operator=(const verbs_transport&) = delete;
  ~verbs_transport() {
    withdrawals_.reset();
    flush_->self = nullptr;
    for (auto& n : nics_)
      if (n.worker)
        n.worker->stop();
    endpoints_.erase_if([](const endpoint_key&) { return true; });
    // why: queue pairs must go before the completion queues and protection domains they use
    endpoints_.for_each_draining([](endpoint& e) { e.qps.clear(); });
    for (auto& n : nics_)
      for (auto& [k, mr] : n.exposed)
        ::ibv_dereg_mr(mr);
  }

  /// Why the transport reaches nobody ("" when it has usable NICs).
  const std::string& disabled_reason() const noexcept { return disabled_; }
  bool enabled() const noexcept { return disabled_.empty(); }
  /// The opened NICs.
  std::size_t nic_count() const noexcept { return nics_.size(); }
  /// Where peers handshake with this process ("" when it serves no RDMA endpoint).
  const std::string& address() const noexcept { return address_; }

  /// Adds this process's "rdma" endpoint to its segment descriptor.
  void describe(segment_descriptor& d) const {
    if (!address_.empty())
      d.endpoints.push_back({"rdma", address_ + "#" + std::to_string(nics_.size())});
  }

  /// False without a usable NIC, for this process's own segment, for a peer without an "rdma" endpoint, and
  /// for a peer cooling down after a failed handshake.
  bool reaches(const peer& p, std::uint64_t, std::uint64_t) const {
    if (!enabled() || stopping_ || p.is_self || !p.descriptor.endpoint_for("rdma"))
      return false;
    if (auto it = peer_paused_.find(p.id); it != peer_paused_.end() && clock_.now() < it->second)
      return false;
    return health_.any_usable();
  }

  // why: noexcept: running out of memory halfway through taking a slice (queued, a connection half set up)
  // must end the process, not reach the engine, which would fail a slice that is still held here
  void submit(const peer& p, slice* s) noexcept {
    if (stopping_ || s->batch->aborted()) {
      s->settle(error(errc::cancelled, "verbs"));
      return;
    }
    auto* rdma = p.descriptor.endpoint_for("rdma");
    if (!enabled() || !rdma) {
      s->settle(error(errc::peer_unreachable, "verbs: the peer offers no RDMA endpoint"));
      return;
    }
    auto address = verbs::detail::parse_rdma_address(rdma->address);
    if (!address) {
      s->settle(error(errc::peer_unreachable, "verbs: the peer's RDMA endpoint is malformed"));
      return;
    }
    // why: one move_pages call per slice (about a microsecond) against slices of a megabyte or so
    verbs::buffer_place place{verbs::numa_node_of(s->local), -1};
    std::optional<std::size_t> avoid;
    if (s->attempt > 0)
      avoid = s->path;
    auto nic = selector_.pick(
        place, spray_++, [&](std::size_t n) { return health_.usable(n); }, avoid);
    if (!nic) {
      s->settle(error(errc::peer_unreachable, "verbs: every NIC is paused"));
      return;
    }
    s->path = static_cast<std::uint16_t>(*nic);
    endpoint_key key{p.id, static_cast<std::uint32_t>(*nic), p.version};
    bool made = false;
    auto ep = endpoints_.get_or_create(key, [&]() -> result<std::unique_ptr<endpoint>> {
      auto e = std::make_unique<endpoint>();
      e->key = key;
      e->index = &by_qpn_;
      made = true;
      return e;
    });
    if (!ep) {
      s->settle(ep.error());
      return;
    }
    endpoint* e = *ep;
    e->waiting.push_back(s);
    close_idle_retired(); // an endpoint the cache just evicted may be idle already
    if (made) {
      ++e->tasks;
      auto remote_nic = static_cast<std::uint32_t>(*nic % address->nics);
      tc_.scope.spawn(connect(e, address->listener, remote_nic));
    } else if (e->state == endpoint::phase::ready) {
      schedule_flush();
    }
  }

  /// Settles the slices of `b` not yet posted; posted ones settle when their completions arrive (RDMA work
  /// cannot be recalled from the NIC).
  void abort(detail::batch_state* b) noexcept {
    auto drop = [&](endpoint& e) {
      std::deque<slice*> keep;
      for (slice* s : std::exchange(e.waiting, {}))
        if (s->batch == b)
          s->settle(error(errc::cancelled, "verbs"));
        else
          keep.push_back(s);
      e.waiting.insert(e.waiting.end(), keep.begin(), keep.end());
    };
    endpoints_.for_each([&](const endpoint_key&, endpoint& e) { drop(e); });
    endpoints_.for_each_draining(drop);
  }

  void forget(const peer& p) {
    peer_paused_.erase(p.id);
    endpoints_.erase_if([&](const endpoint_key& k) { return k.peer == p.id; });
    close_idle_retired();
  }

  /// Stops serving, fails what is not yet posted and flushes what is (those slices settle as their flush
  /// completions arrive).
  void shutdown() noexcept {
    if (stopping_)
      return;
    stopping_ = true;
    stop_.request_stop();
    if (listener_)
      listener_->close();
    for (auto* s : sessions_)
      (void)s->shutdown();
    auto stop_endpoint = [](endpoint& e) {
      for (slice* s : std::exchange(e.waiting, {}))
        s->settle(error(errc::cancelled, "verbs: shutting down"));
      (void)e.control.shutdown();
      for (auto& q : e.qps)
        q->flush();
    };
    endpoints_.for_each([&](const endpoint_key&, endpoint& e) { stop_endpoint(e); });
    endpoints_.for_each_draining(stop_endpoint);
  }

private:
  // ---- setup ----

  void open_devices() {
    if (!options_.enabled) {
      disabled_ = "verbs: disabled by configuration";
      return;
    }
    auto devices = verbs::list_devices();
    if (devices.empty()) {
      disabled_ = "verbs: no RDMA device on this host";
      return;
    }
    std::vector<verbs::nic_place> places;
    std::string last_error;
    for (auto& d : devices) {
      if (!options_.devices.empty() &&
          std::find(options_.devices.begin(), options_.devices.end(), d.name) == options_.devices.end())
        continue;
      auto nic = verbs::nic_context::open(d.name, options_.nic);
      if (!nic) {
        last_error = d.name + ": " + nic.error().message();
        continue;
      }
      nic_slot slot;
      slot.ctx = std::move(*nic);
      slot.local =
          std::make_unique<local_cache>(verbs::mr_registrar{slot.ctx->pd()}, options_.max_registrations);
      places.push_back({d.name, slot.ctx->numa_node(), -1, true});
      nics_.push_back(std::move(slot));
    }
    if (nics_.empty()) {
      disabled_ =
          "verbs: no usable RDMA NIC" + (last_error.empty() ? std::string() : " (" + last_error + ")");
      return;
    }
    health_ = verbs::path_health<std::chrono::steady_clock>(nics_.size(), options_.health, clock_);
    bool any = false;
    for (std::size_t i = 0; i < nics_.size(); ++i) {
      nics_[i].worker = std::make_unique<verbs::completion_worker>(
          tc_.io, *nics_[i].ctx, i, verbs::completion_sink{this, &on_completions, &on_event}, options_.spin);
      if (auto r = nics_[i].worker->start(); !r) {
        places[i].active = false; // nobody would reap its completions
        nics_[i].worker.reset();
      } else {
        any = true;
      }
    }
    if (!any)
      disabled_ = "verbs: no completion worker could start";
    selector_ = verbs::nic_selector(std::move(places), options_.priority);
  }

  void start_listening() {
    if (!tc_.options.listen)
      return; // initiating only: peers cannot reach this segment over RDMA
    auto at = io::endpoint::parse(*tc_.options.listen);
    if (!at)
      return;
    auto l = io::tcp_listener::listen(tc_.io, at->with_port(0));
    if (!l)
      return;
    listener_.emplace(std::move(*l));
    if (auto where = listener_->local_endpoint())
      address_ = where->to_string();
    tc_.scope.spawn(accept_loop());
  }

  // ---- initiating side ----

  task<> connect(endpoint* e, std::string listener, std::uint32_t remote_nic) {
    auto r = co_await handshake(e, listener, remote_nic);
    if (!r || stopping_ || e->state == endpoint::phase::retired) {
      if (!r && !stopping_)
        peer_paused_[e->key.peer] = clock_.now() + options_.peer_cooldown;
      e->state = endpoint::phase::failed;
      // why: a peer that cannot be reached over RDMA now gets its slices through the next transport
      // (peer_unreachable); an endpoint evicted while connecting lets them try verbs again (closed)
      error why = !r ? error(errc::peer_unreachable, "verbs: connecting to the peer failed")
                     : error(errc::closed, "verbs: the endpoint was retired while connecting");
      for (slice* s : std::exchange(e->waiting, {}))
        s->settle(why);
      (void)e->control.shutdown();
      --e->tasks;
      endpoints_.erase(e->key, e);
      endpoints_.collect();
      co_return;
    }
    e->state = endpoint::phase::ready;
    schedule_flush();
    // The control connection stays open while the queue pairs live; its end means the peer tore down.
    std::array<std::byte, 1> b{};
    auto n = co_await e->control.recv(b, stop_.get_token());
    (void)n;
    if (e->state == endpoint::phase::ready)
      endpoint_failed(*e);
    --e->tasks;
    endpoints_.collect();
  }

  task<result<void>> handshake(endpoint* e, std::string listener, std::uint32_t remote_nic) {
    auto& nic = *nics_[e->key.nic].ctx;
    auto at = io::endpoint::parse(listener);
    if (!at)
      co_return fail(at.error());
    io::deadline within(tc_.io, options_.connect_timeout, stop_.get_token());
    auto sock = co_await io::tcp_socket::connect(tc_.io, *at, within.token());
    if (!sock)
      co_return fail(sock.error());
    e->control = std::move(*sock);
    e->control.set_no_delay(true);
    verbs::handshake_message req;
    req.kind = verbs::handshake_kind::request;
    req.nic = e->key.nic;
    req.peer_nic = remote_nic;
    req.nic_count = static_cast<std::uint16_t>(nics_.size());
    fill_address(req, nic);
    for (unsigned i = 0; i < std::max(1u, options_.qps_per_endpoint); ++i) {
      auto q = verbs::rc_queue_pair::create(nic, options_.caps);
      if (!q)
        co_return fail(q.error());
      req.qps.push_back({(*q)->qpn(), (*q)->psn()});
      e->qps.push_back(std::move(*q));
    }
    e->fifo =
        decltype(e->fifo)(e->qps.size()); // why: not resize: a tracker is move-only and its move may throw
    auto sent = co_await verbs::detail::send_handshake(e->control, req, within.token());
    if (!sent)
      co_return fail(sent.error());
    auto reply = co_await verbs::detail::receive_handshake(e->control, within.token());
    if (!reply)
      co_return fail(reply.error());
    if (reply->kind != verbs::handshake_kind::reply)
      co_return fail(errc::peer_unreachable, "verbs: the peer refused the handshake");
    if (reply->qps.size() != e->qps.size())
      co_return fail(errc::malformed_frame, "verbs: the peer answered with another number of queue pairs");
    if (reply->link_layer != nic.link_layer())
      co_return fail(errc::unsupported, "verbs: link layers differ (InfiniBand cannot talk to RoCE)");
    for (std::size_t i = 0; i < e->qps.size(); ++i) {
      auto params = qp_params_for(nic, *reply, reply->qps[i]);
      auto c = e->qps[i]->connect(params);
      if (!c)
        co_return fail(c.error());
      by_qpn_[std::uint64_t(e->key.nic) << 32 | e->qps[i]->qpn()] = {e, i};
    }
    e->remote = std::move(*reply);
    co_return result<void>{};
  }

  static void fill_address(verbs::handshake_message& m, const verbs::nic_context& nic) {
    m.port = nic.port();
    m.mtu = static_cast<std::uint8_t>(nic.active_mtu());
    m.link_layer = nic.roce() ? 2 : 1;
    m.gid_index = static_cast<std::uint8_t>(nic.gid_selected().index);
    m.lid = nic.lid();
    m.gid = nic.gid();
  }

  static verbs::qp_params qp_params_for(const verbs::nic_context& nic, const verbs::handshake_message& peer,
                                        const verbs::qp_endpoint& remote) {
    verbs::qp_params p;
    p.port = nic.port();
    p.mtu = static_cast<::ibv_mtu>(std::min<int>(nic.active_mtu(), peer.mtu));
    p.remote_qpn = remote.qpn;
    p.remote_psn = remote.psn;
    p.roce = nic.roce();
    p.remote_lid = peer.lid;
    p.remote_gid = peer.gid;
    p.gid_index = static_cast<std::uint8_t>(nic.gid_selected().index);
    p.max_rd_atomic = static_cast<std::uint8_t>(std::clamp(nic.max_qp_rd_atom(), 1, 16));
    return p;
  }

  void schedule_flush() noexcept {
    if (flush_->keep)
      return;
    flush_->keep = flush_;
    tc_.io.post(flush_.get());
  }
  static void run_flush(io::detail::op_base* op) noexcept {
    auto* f = static_cast<flush_op*>(op);
    auto keep = std::move(f->keep);
    auto* self = f->self;
    if (!self)
      return;
    // why: posting may fail endpoints, which changes the cache; pick them first
    std::vector<endpoint*> ready;
    self->endpoints_.for_each([&](const endpoint_key&, endpoint& e) {
      if (e.state == endpoint::phase::ready && !e.waiting.empty()) {
        ++e.tasks; // keeps it alive (draining at worst) until it is posted to
        ready.push_back(&e);
      }
    });
    for (endpoint* e : ready) {
      if (e->state == endpoint::phase::ready)
        self->post_waiting(*e);
      --e->tasks;
    }
    self->close_idle_retired();
    self->endpoints_.collect();
  }

  // why: slices accepted in one pass of the loop are posted together, one chain (one doorbell) per queue pair
  void post_waiting(endpoint& e) noexcept {
    ++e.tasks;
    auto& nic = nics_[e.key.nic];
    for (std::size_t round = 0; round < e.qps.size() && !e.waiting.empty(); ++round) {
      std::size_t q = e.next_qp++ % e.qps.size();
      auto& qp = *e.qps[q];
      std::size_t room = qp.limits().max_wr > e.fifo[q].size() ? qp.limits().max_wr - e.fifo[q].size() : 0;
      std::size_t cq_room = static_cast<std::size_t>(nic.ctx->cq_entries());
      cq_room = cq_room > nic.outstanding ? cq_room - nic.outstanding : 0;
      room = std::min(room, cq_room);
      if (room == 0)
        continue;
      verbs::chain_limits limits = qp.limits();
      limits.max_wr = static_cast<std::uint32_t>(room);
      verbs::wr_chain chain(limits);
      std::vector<posted> batch;
      std::size_t share = (e.waiting.size() + e.qps.size() - round - 1) / (e.qps.size() - round);
      while (!e.waiting.empty() && !chain.full() && batch.size() < share) {
        slice* s = e.waiting.front();
        e.waiting.pop_front();
        if (s->batch->aborted()) {
          s->settle(error(errc::cancelled, "verbs"));
          continue;
        }
        auto bounds = tc_.registry.local_extent(s->local, s->length);
        if (!bounds) {
          s->settle(bounds.error());
          continue;
        }
        if (stale_local_pending_.load(std::memory_order_acquire))
          retire_stale_local();
        auto reg = nic.local->acquire(bounds->first, bounds->second);
        if (!reg) {
          s->settle(reg.error());
          continue;
        }
        auto* region = e.remote.region_for(s->remote_offset, s->length);
        if (!region) {
          s->settle(error(errc::out_of_bounds, "verbs: range outside the regions the peer registered"));
          continue;
        }
        verbs::local_sge piece{s->local, s->length, reg->lkey()};
        auto added = chain.add(s->op, std::span(&piece, 1), *region, s->remote_offset,
                               reinterpret_cast<std::uint64_t>(s));
        if (!added) {
          s->settle(added.error());
          continue;
        }
        batch.push_back({s, std::move(*reg)});
      }
      if (batch.empty())
        continue;
      ::ibv_send_wr* bad = nullptr;
      auto* head = chain.finish();
      auto r = qp.post(head, &bad);
      std::size_t accepted = batch.size();
      if (!r) // requests from `bad` on were not posted
        accepted = bad ? static_cast<std::size_t>(bad - head) : 0;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (i < accepted) {
          e.fifo[q].push(std::move(batch[i]));
          ++e.posted_count;
          ++nic.outstanding;
        } else {
          slice* s = batch[i].s;
          batch[i].reg.reset();
          s->settle(error(errc::closed, "verbs: posting to the queue pair failed"));
        }
      }
      if (!r)
        endpoint_failed(e);
    }
    --e.tasks;
  }

  // ---- completions (on the loop's thread) ----

  static void on_completions(void* owner, std::size_t nic, std::span<const ::ibv_wc> wcs) noexcept {
    auto* self = static_cast<verbs_transport*>(owner);
    for (auto& wc : wcs) {
      auto it = self->by_qpn_.find(std::uint64_t(nic) << 32 | wc.qp_num);
      if (it == self->by_qpn_.end())
        continue; // a queue pair serving a peer (its work is the peer's), or one already gone
      endpoint& e = *it->second.ep;
      auto& fifo = e.fifo[it->second.qp];
      ++e.tasks;
      fifo.complete(
          wc.wr_id, wc.status, [](const posted& x) { return reinterpret_cast<std::uint64_t>(x.s); },
          [&](posted& x, ::ibv_wc_status status) {
            --e.posted_count;
            --self->nics_[nic].outstanding;
            x.reg.reset();
            if (status == IBV_WC_SUCCESS) {
              self->health_.on_success(nic);
              x.s->settle();
              return;
            }
            if (verbs::is_path_fault(status))
              self->health_.on_failure(nic);
            if (verbs::classify(status) == verbs::completion_verdict::retry_elsewhere)
              self->endpoint_failed(e);
            x.s->settle(verbs::completion_error(status));
          });
      --e.tasks;
    }
    self->close_idle_retired();
    self->endpoints_.collect();
    self->schedule_flush();
  }

  static void on_event(void* owner, std::size_t nic, const verbs::device_event& ev) noexcept {
    auto* self = static_cast<verbs_transport*>(owner);
    switch (ev.type) {
    case IBV_EVENT_DEVICE_FATAL:
    case IBV_EVENT_PORT_ERR: {
      self->health_.pause(nic);
      std::vector<endpoint*> on_nic;
      self->endpoints_.for_each([&](const endpoint_key& k, endpoint& e) {
        if (k.nic == nic)
          on_nic.push_back(&e);
      });
      for (endpoint* e : on_nic) {
        ++e->tasks;
        self->endpoint_failed(*e);
        --e->tasks;
      }
      break;
    }
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
      if (auto it = self->by_qpn_.find(std::uint64_t(nic) << 32 | ev.qp_num); it != self->by_qpn_.end())
        self->endpoint_failed(*it->second.ep);
      break;
    default:
      break;
    }
    self->endpoints_.collect();
  }

  /// The endpoint's queue pairs failed or its peer left: it takes no more work, what it holds is flushed
  /// (and retried by the engine on another path), both sides tear down (the control connection closes).
  void endpoint_failed(endpoint& e) noexcept {
    if (e.state == endpoint::phase::failed)
      return;
    e.state = endpoint::phase::failed;
    for (auto& q : e.qps)
      q->flush();
    (void)e.control.shutdown();
    std::deque<slice*> waiting = std::exchange(e.waiting, {});
    endpoints_.erase(e.key, &e); // drains: its flushed completions still arrive
    for (slice* s : waiting)
      s->settle(error(errc::closed, "verbs: the endpoint failed"));
  }

  void close_idle_retired() noexcept {
    endpoints_.for_each_draining([](endpoint& e) {
      if (e.state == endpoint::phase::retired && e.posted_count == 0 && e.waiting.empty())
        (void)e.control.shutdown();
    });
  }

  // ---- serving side ----

  task<> accept_loop() {
    while (!stopping_) {
      auto s = co_await listener_->accept(stop_.get_token());
      if (!s) {
        if (stopping_ || !listener_->is_open())
          co_return;
        continue;
      }
      tc_.scope.spawn(serve(std::move(*s)));
    }
  }

  task<> serve(io::tcp_socket sock) {
    sessions_.push_back(&sock);
    std::vector<std::unique_ptr<verbs::rc_queue_pair>> qps;
    io::deadline within(tc_.io, options_.connect_timeout, stop_.get_token());
    auto req = co_await verbs::detail::receive_handshake(sock, within.token());
    if (req && req->kind == verbs::handshake_kind::request) {
      auto reply = answer(*req, qps);
      auto sent = co_await verbs::detail::send_handshake(sock, reply, within.token());
      if (sent && reply.kind == verbs::handshake_kind::reply) {
        // The queue pairs live as long as the peer keeps the control connection.
        std::array<std::byte, 1> b{};
        auto n = co_await sock.recv(b, stop_.get_token());
        (void)n;
      }
    }
    qps.clear();
    std::erase(sessions_, &sock);
  }

  verbs::handshake_message answer(const verbs::handshake_message& req,
                                  std::vector<std::unique_ptr<verbs::rc_queue_pair>>& qps) {
    verbs::handshake_message reply;
    auto reject = [&](const char* why) {
      verbs::handshake_message r;
      r.kind = verbs::handshake_kind::reject;
      r.reason = why;
      qps.clear();
      return r;
    };
    if (stopping_ || req.peer_nic >= nics_.size())
      return reject("no such NIC");
    auto& slot = nics_[req.peer_nic];
    auto& nic = *slot.ctx;
    if ((req.link_layer == 2) != nic.roce())
      return reject("link layers differ");
    reply.kind = verbs::handshake_kind::reply;
    reply.nic = req.peer_nic;
    reply.nic_count = static_cast<std::uint16_t>(nics_.size());
    fill_address(reply, nic);
    for (auto& remote : req.qps) {
      auto q = verbs::rc_queue_pair::create(nic, options_.caps);
      if (!q)
        return reject("cannot create a queue pair");
      auto c = (*q)->connect(qp_params_for(nic, req, remote));
      if (!c)
        return reject("cannot connect a queue pair");
      reply.qps.push_back({(*q)->qpn(), (*q)->psn()});
      qps.push_back(std::move(*q));
    }
    // Every exposed region, registered with the NIC for exactly the access it grants.
    // why: held while the keys are made and handed over: a region withdrawn meanwhile has its key taken
    // back (withdraw()) only after this, not before it is stored
    std::lock_guard exposing(exposed_mutex_);
    auto regions = tc_.registry.exposed();
    std::map<std::tuple<std::uintptr_t, std::uint64_t, std::uint8_t>, ::ibv_mr*> keep;
    for (auto& r : regions) {
      auto l = tc_.registry.pin_exposed(r.offset, r.length, r.permissions, false, true);
      if (!l)
        continue;
      auto key = std::make_tuple(reinterpret_cast<std::uintptr_t>(l->data()), r.length,
                                 static_cast<std::uint8_t>(r.permissions));
      ::ibv_mr* mr = nullptr;
      if (auto it = slot.exposed.find(key); it != slot.exposed.end()) {
        mr = it->second;
        slot.exposed.erase(it);
      } else {
        // why: the NIC enforces the region's permissions; remote write needs local write as well
        int flags = IBV_ACCESS_RELAXED_ORDERING;
        if (allows(r.permissions, access::read))
          flags |= IBV_ACCESS_REMOTE_READ;
        if (allows(r.permissions, access::write))
          flags |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
        mr = ::ibv_reg_mr(nic.pd(), l->data(), r.length, flags);
        if (!mr)
          continue; // not reachable over RDMA; the peer's slices for it fail over to another transport
      }
      keep.emplace(key, mr);
      reply.regions.push_back(
          {r.offset, r.length, reinterpret_cast<std::uint64_t>(l->data()), mr->rkey, r.permissions});
    }
    // why: a region no longer exposed must not stay reachable through a key handed out earlier
    for (auto& [k, mr] : slot.exposed)
      ::ibv_dereg_mr(mr);
    slot.exposed = std::move(keep);
    return reply;
  }

  /// On the loop's thread: retires, on every NIC, the local registrations of memory withdrawn meanwhile.
  void retire_stale_local() {
    std::vector<region_registry::withdrawn_range> gone;
    {
      std::lock_guard lock(stale_local_mutex_);
      gone.swap(stale_local_);
      stale_local_pending_.store(false, std::memory_order_relaxed);
    }
    for (auto& n : nics_)
      if (n.local)
        for (const auto& g : gone)
          n.local->invalidate(reinterpret_cast<const void*>(g.start), static_cast<std::size_t>(g.length));
  }

  /// Memory that stopped being registered as it was (any thread). Exposed: deregisters, on every NIC, the
  /// keys handed out for it, so that a peer's READ or WRITE with one fails from now on. Any: its local
  /// registrations are retired before the next one is handed out (the loop's thread does that, before it
  /// takes one), so that memory allocated again at those addresses is never reached through the old pages.
  void withdraw(region_registry::withdrawn_range gone) {
    {
      std::lock_guard lock(stale_local_mutex_);
      stale_local_.push_back(gone);
      stale_local_pending_.store(true, std::memory_order_release);
    }
    if (!gone.exposed)
      return;
    std::lock_guard lock(exposed_mutex_);
    for (auto& n : nics_)
      for (auto it = n.exposed.begin(); it != n.exposed.end();) {
        auto [start, length, how] = it->first;
        (void)how;
        const bool overlaps = start < gone.start + gone.length && gone.start < start + length;
        if (!overlaps) {
          ++it;
          continue;
        }
        ::ibv_dereg_mr(it->second);
        it = n.exposed.erase(it);
      }
  }

  transport_context& tc_;
  verbs::verbs_options options_;
  std::string disabled_;
  std::vector<nic_slot> nics_;
  verbs::nic_selector selector_;
  std::chrono::steady_clock clock_;
  verbs::path_health<std::chrono::steady_clock> health_;
  std::unordered_map<std::uint64_t, qp_ref> by_qpn_; // (nic << 32 | qpn) -> endpoint's queue pair
  // why: after by_qpn_ and nics_: endpoints go first (their queue pairs before the NICs' queues and domains)
  verbs::endpoint_cache<endpoint_key, endpoint, key_hash> endpoints_;
  std::unordered_map<segment_id, std::chrono::steady_clock::time_point> peer_paused_;
  std::optional<io::tcp_listener> listener_;
  std::string address_;
  std::vector<io::tcp_socket*> sessions_;
  std::stop_source stop_;
  std::shared_ptr<flush_op> flush_ = std::make_shared<flush_op>();
  bool stopping_ = false;
  std::uint64_t spray_ = 0;
  // nic_slot::exposed: the handshake (the engine's loop) and withdraw() (any thread)
  std::mutex exposed_mutex_;
  // Local memory withdrawn since the loop last looked, whose registrations it retires before the next
  // acquire (the local caches are the loop's alone).
  std::mutex stale_local_mutex_;
  std::vector<region_registry::withdrawn_range> stale_local_;
  std::atomic<bool> stale_local_pending_{false};
  // why: last, so destroyed first; reset at the start of the destructor as well
  region_registry::withdrawal_watch withdrawals_;
};

static_assert(transport<verbs_transport>);

} // namespace ferry
