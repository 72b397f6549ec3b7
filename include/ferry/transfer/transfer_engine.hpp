#pragma once
/// `ferry::transfer_engine<Transports...>`: moves batches of bytes between this process's registered memory
/// and segments anywhere. Each request goes to the first transport in the list that reaches its target
/// (routing is resolved at compile time: no virtual call per slice), is cut into slices of
/// `engine_options::slice_size`, and its slices are spread over the transport's paths. A failed slice is
/// retried on another path within a budget; a request completes with the bytes it moved or a precise error,
/// and a batch is never successful if any byte of it failed. The engine also serves its own segment to peers
/// (`engine_options::listen`), delivers notifications, and probes peers.
///
/// Everything runs on the io_context given at construction; `transfer()` may be awaited from any coroutine on
/// any thread (it hops onto the loop and resumes there), and `submit()` serves code without coroutines.
///
///   ferry::io::io_context ctx;
///   ferry::transfer_engine<ferry::shm_transport, ferry::tcp_transport> engine(ctx, {.name = "prefill-0"});
///   engine.registry().add(buf, size, ferry::access::read_write);
///   auto decode = co_await engine.open_segment("127.0.0.2:7000");
///   ferry::transfer_batch batch;
///   batch.write(buf, *decode, 0, size);
///   auto r = co_await engine.transfer(batch, ferry::transfer_options().with_timeout(2s).with_notify("kv
///   ready"));

#include "ferry/core/async_mutex.hpp"
#include "ferry/core/async_scope.hpp"
#include "ferry/core/detail/time_after.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/detail/net_namespace.hpp"
#include "ferry/io/detail/resume_op.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/io_context_pool.hpp"
#include "ferry/io/wake_signal.hpp"
#include "ferry/memory/detail/process_start.hpp"
#include "ferry/memory/region_registry.hpp"
#include "ferry/metadata/concepts.hpp"
#include "ferry/metadata/segment_descriptor.hpp"
#include "ferry/transfer/detail/batch_state.hpp"
#include "ferry/transfer/detail/stop_relay.hpp"
#include "ferry/transfer/engine_options.hpp"
#include "ferry/transfer/notification.hpp"
#include "ferry/transfer/peer.hpp"
#include "ferry/transfer/transfer_batch.hpp"
#include "ferry/transfer/transfer_handle.hpp"
#include "ferry/transport/concepts.hpp"
#include "ferry/transport/tcp/frame.hpp"
#include "ferry/transport/tcp/tcp_server.hpp"
#include "ferry/transport/tcp/tcp_transport.hpp"
#include "ferry/transport/transport_context.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

template<transport... Transports>
requires(sizeof...(Transports) > 0 && sizeof...(Transports) < 256) class transfer_engine {
  static constexpr bool has_tcp = (std::is_same_v<Transports, tcp_transport> || ...);

public:
  /// The engine's own segment, as a target: transfers to it are copies within this process.
  static constexpr segment_id self = 0;

  transfer_engine(io::io_context& io, engine_options options = {})
      : io_(io), options_(std::move(options)), host_(read_host_id()),
        incarnation_(std::random_device{}() * 0x9e3779b97f4a7c15ull ^ std::random_device{}()),
        context_{io_, registry_, scope_, options_, host_, nullptr},
        transports_(((void)std::type_identity<Transports>{}, std::ref(context_))...) {
    peer me;
    me.id = self;
    me.is_self = true;
    me.locator = options_.name;
    peers_.push_back(std::move(me));
    if (has_tcp && options_.tcp.io_threads > 0) {
      connection_loops_ = std::make_unique<io::io_context_pool>(
          options_.tcp.io_threads, io::io_context_options{.backend = io_.backend()});
      context_.connection_loops = connection_loops_.get();
    }
  }
  transfer_engine(const transfer_engine&) = delete;
  transfer_engine& operator=(const transfer_engine&) = delete;
  /// Shuts down if shutdown() was not awaited (drives the loop on this thread to do so, also one that was
  /// stopped, which is left stopped again).
  ~transfer_engine() {
    if (!shut_down_) {
      // why: a stopped loop's background thread has ended, or is about to (it runs nothing more)
      if (background_.joinable() && !background_ended_.load(std::memory_order_acquire) && !io_.stopped()) {
        sync_wait(shutdown());
      } else {
        if (background_.joinable())
          background_.join();
        // why: a thread in a handle's wait() may be driving the loop; only one thread may at a time. It
        // leaves the turn once its run_one() returns, which the nudge makes it do, and does not take it again
        turn_->wanted.store(true, std::memory_order_release);
        nudge(io_);
        std::lock_guard turn(turn_->driving);
        // why: the application may have stopped the loop (to end a run() of its own); shutting down needs it
        // to run: run_until would throw out of this destructor
        const bool was_stopped = io_.stopped();
        if (was_stopped)
          io_.restart();
        io_.run_until(shutdown());
        if (was_stopped)
          io_.stop();
      }
    }
    if (background_.joinable())
      background_.join();
  }

  region_registry& registry() noexcept { return registry_; }
  const engine_options& options() const noexcept { return options_; }
  io::io_context& context() const noexcept { return io_; }

  /// Starts serving this segment on engine_options::listen (if set). Idempotent.
  result<void> start() {
    if (server_ || !options_.listen)
      return {};
    if constexpr (!has_tcp)
      return fail(errc::unsupported, "listen: this engine has no tcp transport");
    if (auto why = segment_descriptor::name_problem(options_.name))
      return fail(errc::invalid_argument, std::string("engine_options::name: ") + why);
    auto at = io::endpoint::parse(*options_.listen);
    if (!at)
      return fail(at.error());
    std::optional<io::endpoint> advertised;
    if (options_.advertise) {
      auto told = io::endpoint::parse(*options_.advertise + ":0");
      if (!told)
        return fail(errc::invalid_argument,
                    "engine_options::advertise: '" + *options_.advertise + "' is not an IP address");
      advertised = *told;
    }
    server_ = std::make_unique<tcp_server>(
        io_, registry_, scope_,
        tcp_server::hooks{[this] { return descriptor_json(); },
                          [this](std::string message) { return deliver(std::move(message)); }},
        connection_loops_.get(), options_.tcp.stall_timeout, options_.tcp.keepalive_idle,
        options_.tcp.max_served_connections, options_.tcp.evict_idle_after);
    auto where = server_->listen(*at, options_.tcp.congestion_control);
    if (!where) {
      server_.reset();
      return fail(where.error());
    }
    listening_ = *where;
    advertised_ = advertised;
    {
      std::lock_guard lock(described_mutex_); // the endpoints changed: made again when next asked for
      described_ = false;
    }
    return {};
  }

  /// Where this segment is served, once start() succeeded.
  std::optional<io::endpoint> endpoint() const { return listening_; }

  /// This segment's descriptor as peers see it.
  segment_descriptor descriptor() const {
    segment_descriptor d;
    d.name = options_.name;
    d.incarnation = incarnation_;
    d.host = host_;
    d.pid = static_cast<std::uint64_t>(::getpid());
    d.pid_start = detail::own_start_time();
    d.net_namespace = io::detail::net_namespace_id();
    if (listening_)
      d.endpoints.push_back({"tcp", listening_->to_string()});
    // Transports that serve peers on their own endpoint (verbs: its handshake listener) add it here.
    std::apply([&](const auto&... t) { (describe_with(t, d), ...); }, transports_);
    if (advertised_)
      for (auto& e : d.endpoints)
        rehost(e, [&](const io::endpoint& at) -> std::optional<io::endpoint> {
          return at.is_unspecified() || at == *listening_ ? advertised_->with_port(at.port()) : at;
        });
    d.regions = registry_.exposed();
    d.shm_gates = registry_.shm_gates_name();
    return d;
  }

  /// The descriptor as JSON, as peers get it in a handshake: made again only once the exposed regions
  /// changed (a segment of many regions makes a large descriptor, and every connection's hello asks for it).
  std::string descriptor_json() const {
    // why: the generation is read before the descriptor is made: a region added meanwhile leaves the text
    // labelled older than it is, and the next call makes it again; never the other way round
    const std::uint64_t generation = registry_.generation();
    std::lock_guard lock(described_mutex_);
    if (!described_ || described_generation_ != generation) {
      described_json_ = descriptor().to_json();
      described_generation_ = generation;
      described_ = true;
    }
    return described_json_;
  }

  // ---- finding peers ----

  /// Looks segments up by name in `store` (keys: prefix + name). Any ferry::metadata_store will do; one with
  /// leases (etcd, Redis, ferry-metad, the memory store, ferry::metadata_client) keeps this segment's key
  /// alive while the engine lives, so that a crashed process's segment disappears within
  /// engine_options::metadata_ttl. A ferry::metadata_client made from "p2p" leaves peers to be opened by
  /// address. The store must outlive the engine.
  /// Call it before publish(); switching stores later forgets the registration in the old one (its lease
  /// runs out).
  template<metadata_store Store>
  void use_metadata(Store& store, std::string prefix = "ferry/segments/") {
    metadata_prefix_ = std::move(prefix);
    // why: nothing of a previous store may outlive the switch (its calls capture that store)
    ++registration_generation_;
    renewal_stop_.request_stop();
    published_ = false;
    lease_.reset();
    metadata_ = {};
    if constexpr (requires { store.direct(); }) {
      if (store.direct()) {
        metadata_ = {};
        metadata_direct_ = true;
        return;
      }
    }
    metadata_direct_ = false;
    metadata_.get = [&store](std::string key) -> task<result<std::optional<std::string>>> {
      co_return co_await store.get(std::move(key));
    };
    metadata_.put = [&store](std::string key, std::string value) -> task<result<void>> {
      co_return co_await store.put(std::move(key), std::move(value));
    };
    metadata_.remove = [&store](std::string key) -> task<result<void>> {
      co_return co_await store.remove(std::move(key));
    };
    if constexpr (leasing_metadata_store<Store>) {
      metadata_.grant = [&store](std::chrono::milliseconds ttl) -> task<result<lease_id>> {
        co_return co_await store.grant(ttl);
      };
      metadata_.put_leased = [&store](std::string key, std::string value,
                                      lease_id lease) -> task<result<void>> {
        co_return co_await store.put(std::move(key), std::move(value), lease);
      };
      metadata_.keep_alive = [&store](lease_id lease) -> task<result<void>> {
        co_return co_await store.keep_alive(lease);
      };
      metadata_.revoke = [&store](lease_id lease) -> task<result<void>> {
        co_return co_await store.revoke(lease);
      };
    }
  }

  /// Publishes this segment's descriptor in the metadata store (call again after registering more regions).
  /// With a leasing store the key lives under a lease that the engine renews in the background; if the
  /// store loses it (it was down longer than the TTL, or restarted empty), the engine registers again.
  task<result<void>> publish() {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return fail(after_shutdown("publish"));
    active_call busy(*this);
    if (auto why = segment_descriptor::name_problem(options_.name))
      co_return fail(errc::invalid_argument, std::string("publish: engine_options::name: ") + why);
    if (metadata_direct_)
      co_return result<void>{}; // p2p: peers ask this engine itself (the hello handshake)
    if (!metadata_.put)
      co_return fail(errc::unsupported, "publish: no metadata store (use_metadata)");
    auto r = co_await register_segment();
    // why: a loop told to stop may still be finishing its last metadata call; start a new one regardless
    if (r && lease_ && (!renewing_ || renewal_stop_.stop_requested()) && !shut_down_) {
      renewing_ = true;
      renewal_stop_ = std::stop_source(); // why: a previous unpublish() stopped the last one for good
      scope_.spawn(keep_registered(renewal_stop_.get_token()));
    }
    co_return r;
  }

  /// Removes this segment from the metadata store (shutdown() does it too).
  task<result<void>> unpublish() {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return result<void>{}; // why: shutdown() unpublishes
    active_call busy(*this);
    co_return co_await take_back_registration();
  }

  /// The last error of keeping this segment registered (empty while the registration is current).
  error registration_error() const noexcept { return registration_error_; }

  /// Opens a segment: "host:port" asks the engine serving there for its descriptor (no server needed);
  /// any other text is a segment name looked up in the metadata store. Opening again refreshes it.
  task<result<segment_id>> open_segment(std::string locator, std::stop_token stop = {}) {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return fail(after_shutdown("open_segment"));
    active_call busy(*this);
    auto d = co_await fetch(locator, stop);
    if (!d)
      co_return fail(d.error());
    if (d->name == options_.name && d->incarnation == incarnation_)
      co_return self;
    // why: a name is unique in a metadata store, not among engines opened by address (every engine left with
    // the default name is "ferry"); found through another locator, it is the same segment only if the same
    // process serves it, or one at the same address (it restarted). A locator that now reaches a segment of
    // another name opens that one anew.
    for (auto& p : peers_)
      if (!p.is_self && p.descriptor.name == d->name &&
          (p.locator == locator || p.descriptor.incarnation == d->incarnation ||
           same_address(p.descriptor, *d))) {
        replace(p, std::move(*d), std::move(locator));
        co_return p.id;
      }
    peer p;
    p.id = static_cast<segment_id>(peers_.size());
    p.locator = std::move(locator);
    p.descriptor = std::move(*d);
    peers_.push_back(std::move(p));
    co_return peers_.back().id;
  }

  /// Fetches the descriptor of an opened segment again (after its owner restarted or changed its regions).
  task<result<void>> refresh(segment_id id, std::stop_token stop = {}) {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return fail(after_shutdown("refresh"));
    active_call busy(*this);
    if (id >= peers_.size())
      co_return fail(errc::unknown_segment, "refresh");
    if (id == self)
      co_return result<void>{};
    auto d = co_await fetch(peers_[id].locator, stop);
    if (!d)
      co_return fail(d.error());
    // why: the address may now be served by another segment (the old owner gone, its address taken); the
    // id stays bound to the segment it was opened as, and bytes meant for it never go to the other one
    if (d->name != peers_[id].descriptor.name)
      co_return fail(errc::unknown_segment, "refresh: " + peers_[id].locator + " now serves segment '" +
                                                d->name + "', not '" + peers_[id].descriptor.name + "'");
    replace(peers_[id], std::move(*d), peers_[id].locator);
    co_return result<void>{};
  }

  /// Bytes handed to the transport named `name` so far (retries included); 0 for an unknown name.
  std::uint64_t routed_bytes(std::string_view name) const noexcept {
    std::size_t i = 0;
    std::uint64_t out = 0;
    ((Transports::name == name ? (out = routed_[i], ++i) : ++i), ...);
    return out;
  }

  /// The peer behind an id, or nullptr.
  const peer* find(segment_id id) const noexcept { return id < peers_.size() ? &peers_[id] : nullptr; }

  /// The server that serves this segment to peers over tcp (to inspect it); nullptr until start() listens.
  const tcp_server* server() const noexcept { return server_.get(); }

  /// The engine's transport of type T (to inspect or configure it).
  template<class T>
  T& transport() noexcept {
    return std::get<T>(transports_);
  }

  // ---- moving bytes ----

  /// Runs a batch; completes when every request has completed or failed, on the engine's loop thread.
  /// Requests that failed because their target restarted or moved (it cannot be reached, or a new process
  /// answers at its address) or lay outside the regions the engine knew of get the target's descriptor again
  /// (by address, or from the metadata store) and, if it changed, run once more against it. If a new process
  /// now serves the target, every request of the batch to that target runs again, those that had completed
  /// too: their bytes went to (or came from) the process that is gone.
  task<batch_result> transfer(transfer_batch batch, transfer_options opts = {}) {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return refused_after_shutdown(batch, opts);
    active_call busy(*this);
    if (opts.timeout.count() < 0)
      co_return past_deadline(batch, opts);
    auto started = std::chrono::steady_clock::now();
    // why: the process that serves each target as the batch begins; a refresh during the batch (its own, or
    // another batch's) may put a new one in its place, after some of the batch's bytes went to the old one
    auto served_by = incarnations_of(batch);
    // why: the local regions stay pinned until the batch has run again after a refresh, if it does: between
    // the two runs, the caller's memory must not be unregistered (and perhaps freed, its address reused)
    std::vector<region_registry::lease> local_leases;
    batch_result out = co_await run_batch(batch, opts, local_leases);
    if ((!out.ok() || !restarted_since(served_by).empty()) && !opts.stop.stop_requested() &&
        !shut_down_.load(std::memory_order_acquire))
      co_await retry_stale(batch, opts, started, out, served_by, local_leases);
    local_leases.clear();
    fail_landed_in_replaced(batch, opts, out, served_by);
    if (opts.notify && out.ok()) {
      std::vector<segment_id> targets;
      for (auto& r : batch.requests())
        if (std::find(targets.begin(), targets.end(), r.target) == targets.end())
          targets.push_back(r.target);
      // why: the notifications count against the batch's deadline like everything else the batch does
      std::optional<io::deadline> within;
      if (!time_left(opts, started, within)) {
        out.notify_error = error(errc::timed_out, "notify: the batch's deadline passed before it was sent");
        co_return out;
      }
      std::stop_token token = within ? within->token() : opts.stop;
      for (segment_id t : targets) {
        // why: to the process the batch's bytes went to; while the notifications before this one were on
        // their way, another call may have found a new process serving this target, which never got them
        std::optional<std::uint64_t> landed_in;
        for (auto& [at, incarnation] : served_by)
          if (at == t)
            landed_in = incarnation;
        if (auto n = co_await notify_process(t, *opts.notify, token, landed_in); !n) {
          // why: with several targets, the caller learns which one did not get it (those before it did)
          const std::string to = "notify '" + peers_[t].descriptor.name + "'";
          out.notify_error = within && within->expired()
                                 ? error(errc::timed_out, to + ": the batch's deadline passed")
                                 : error(n.error().code(), to + ": " + n.error().what());
          break;
        }
      }
    }
    co_return out;
  }

private:
  /// Arms `within` with what is left of the batch's deadline, linked to its stop token (nothing to arm when
  /// the batch has no deadline); false if nothing is left.
  bool time_left(const transfer_options& opts, std::chrono::steady_clock::time_point started,
                 std::optional<io::deadline>& within) {
    if (opts.timeout.count() <= 0)
      return true;
    auto left = opts.timeout - (std::chrono::steady_clock::now() - started);
    if (left <= std::chrono::steady_clock::duration::zero())
      return false;
    within.emplace(io_, std::chrono::duration_cast<io::io_context::clock::duration>(left), opts.stop);
    return true;
  }

  /// Whether a request's error may come from a stale descriptor: the target restarted or moved, or it
  /// registered the region asked for after its descriptor was fetched.
  static bool stale_descriptor_error(const error& e) noexcept {
    return e == errc::peer_unreachable || e == errc::version_mismatch || e == errc::closed ||
           e == errc::out_of_bounds || e.code().category() == std::system_category();
  }

  using incarnations = std::vector<std::pair<segment_id, std::uint64_t>>;

  /// The incarnation each peer the batch targets has now.
  incarnations incarnations_of(const transfer_batch& batch) const {
    incarnations out;
    for (auto& r : batch.requests())
      if (r.target != self && r.target < peers_.size() &&
          std::none_of(out.begin(), out.end(), [&](const auto& p) { return p.first == r.target; }))
        out.emplace_back(r.target, peers_[r.target].descriptor.incarnation);
    return out;
  }

  /// Fails the completed requests to targets that a new process serves now, unless they ran again against it
  /// (`served_by` then names the new one): their bytes are in the process that is gone. Left so when the
  /// batch was cancelled, its deadline passed, or the target was replaced once more during the rerun.
  void fail_landed_in_replaced(const transfer_batch& batch, const transfer_options& opts, batch_result& out,
                               const incarnations& served_by) const {
    std::vector<segment_id> replaced = restarted_since(served_by);
    if (replaced.empty())
      return;
    const bool shut = shut_down_.load(std::memory_order_acquire);
    const char* why = opts.stop.stop_requested() ? "the batch was cancelled before it could run again"
                      : shut                     ? "the engine shut down before it could run again"
                             : "the batch's deadline left no time to run it again, or the "
                               "target was replaced again while it did";
    errc code = opts.stop.stop_requested() || shut ? errc::cancelled
                : opts.timeout.count() > 0         ? errc::timed_out
                                                   : errc::closed;
    for (std::size_t i = 0; i < batch.size(); ++i)
      if (out.requests[i] &&
          std::find(replaced.begin(), replaced.end(), batch.requests()[i].target) != replaced.end())
        out.requests[i] = fail(error(code, std::string("transfer: the request landed in a process that has "
                                                       "since been replaced as the target's server; ") +
                                               why));
  }

  /// The targets among `then` that a new process serves now.
  std::vector<segment_id> restarted_since(const incarnations& then) const {
    std::vector<segment_id> out;
    for (auto& [t, incarnation] : then)
      if (peers_[t].descriptor.incarnation != incarnation)
        out.push_back(t);
    return out;
  }

  task<> retry_stale(const transfer_batch& batch, const transfer_options& opts,
                     std::chrono::steady_clock::time_point started, batch_result& out,
                     incarnations& served_by, std::vector<region_registry::lease>& local_leases) {
    std::vector<segment_id> tried, changed;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      segment_id t = batch.requests()[i].target;
      if (out.requests[i] || !stale_descriptor_error(out.requests[i].error()) || t == self ||
          t >= peers_.size() || std::find(tried.begin(), tried.end(), t) != tried.end())
        continue;
      tried.push_back(t);
      // why: the lookup counts against the batch's deadline like everything else the batch does
      std::optional<io::deadline> within;
      if (!time_left(opts, started, within))
        co_return;
      std::uint64_t before = peers_[t].descriptor.incarnation;
      auto version = peers_[t].version;
      std::stop_token token = within ? within->token() : opts.stop;
      auto r = co_await refresh(t, token);
      if (r && (peers_[t].descriptor.incarnation != before || peers_[t].version != version))
        changed.push_back(t);
    }
    // why: against the processes the batch began with, whoever refreshed the descriptors since
    std::vector<segment_id> restarted = restarted_since(served_by);
    if (changed.empty() && restarted.empty())
      co_return;
    transfer_batch again;
    std::vector<std::size_t> which;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto& r = batch.requests()[i];
      bool again_here = std::find(changed.begin(), changed.end(), r.target) != changed.end();
      // why: a request that completed against the process that is gone wrote into (or read from) memory the
      // new process does not have; reporting the batch done with only the failed ones redone would be false
      bool landed_in_the_old = std::find(restarted.begin(), restarted.end(), r.target) != restarted.end();
      if ((again_here && !out.requests[i]) || landed_in_the_old) {
        again.add(r);
        which.push_back(i);
      }
    }
    transfer_options rest;
    rest.stop = opts.stop;
    if (opts.timeout.count() > 0) {
      // why: the time passed, rounded up: the run again must not be given time already gone
      auto left = opts.timeout -
                  std::chrono::ceil<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
      if (left.count() <= 0)
        co_return;
      rest.timeout = left;
    }
    // why: what runs again runs against the processes that serve its targets now
    for (auto& [t, incarnation] : served_by)
      if (std::find(restarted.begin(), restarted.end(), t) != restarted.end())
        incarnation = peers_[t].descriptor.incarnation;
    batch_result redo = co_await run_batch(again, rest, local_leases);
    for (std::size_t k = 0; k < which.size(); ++k)
      out.requests[which[k]] = std::move(redo.requests[k]);
  }

  /// One pass over a batch: validate, cut into slices, route, wait (no refresh, no notification).
  /// `local_leases`: where the pins of the batch's local regions go; they must outlive the batch (and hold
  /// until the caller is done with the memory).
  task<batch_result> run_batch(const transfer_batch& batch, const transfer_options& opts,
                               std::vector<region_registry::lease>& local_leases) {
    detail::batch_state state(io_, batch.size(), options_.retry_budget, this, &retry_slice);
    std::vector<std::size_t> on_gpu; // requests whose local memory is GPU memory

    // Validate and cut into slices.
    std::size_t slice_count = 0;
    // why: at most what one tcp frame carries: a larger slice would be refused by every target, and the
    // connection dropped under the other batches' slices on it
    std::uint64_t slice_size =
        std::clamp<std::uint64_t>(options_.slice_size, 4096, tcp::frame_header::max_data_payload);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto& r = batch.requests()[i];
      const error bad = validate(r);
      // why: one lease per local region holds it for the whole batch; a batch of thousands of blocks in one
      // buffer takes the registry's lock once, not once per block. Taken for a request that the target's
      // descriptor refuses too: refused by a stale descriptor, it runs again after a refresh
      if (r.local && r.length > 0 &&
          (local_leases.empty() || !local_leases.back().covers(r.local, r.length))) {
        auto lease = registry_.pin_local(r.local, r.length);
        if (!lease) {
          state.reject(i, bad ? bad : lease.error());
          continue;
        }
        local_leases.push_back(std::move(*lease));
      }
      if (bad) {
        state.reject(i, bad);
        continue;
      }
      if (local_leases.back().location().kind == memory_kind::cuda_device)
        on_gpu.push_back(i);
      slice_count += (r.length + slice_size - 1) / slice_size;
    }
    state.slices.resize(slice_count);
    std::size_t k = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (state.rejected(i))
        continue;
      auto& r = batch.requests()[i];
      for (std::uint64_t off = 0; off < r.length; off += slice_size) {
        slice& s = state.slices[k++];
        s.op = r.op;
        s.local = static_cast<std::byte*>(r.local) + off;
        s.target = r.target;
        s.remote_offset = r.target_offset + off;
        s.length = static_cast<std::uint32_t>(std::min(slice_size, r.length - off));
        s.request = static_cast<std::uint32_t>(i);
        s.batch = &state;
        s.local_on_gpu = !on_gpu.empty() && std::binary_search(on_gpu.begin(), on_gpu.end(), i);
      }
    }
    state.begin();

    // Deadline and cancellation abort the batch on the loop's thread.
    std::optional<io::deadline> deadline;
    auto due = io::io_context::clock::time_point::max();
    if (opts.timeout.count() > 0) {
      due = ferry::detail::time_after<io::io_context::clock>(io::io_context::clock::now(), opts.timeout);
      deadline.emplace(io_, due, opts.stop);
    }
    abort_args args{this, &state, due, opts.stop};
    state.watch_overdue(&abort_if_overdue, &args);
    detail::stop_relay relay(io_, &abort_batch, &args);
    relay.watch(deadline ? deadline->token() : opts.stop);
    // why: the relay posts the abort of a token stopped already behind this loop; no slice may start first
    if (opts.stop.stop_requested())
      abort_batch(&args);

    for (auto& s : state.slices) {
      if (state.aborted())
        s.settle(error(errc::cancelled, "transfer"));
      else if (!route(peers_[s.target], &s, 0))
        s.settle(s.local_on_gpu ? error(errc::unsupported, "transfer: the local buffer is GPU memory and no "
                                                           "transport of this engine moves GPU memory there")
                                : error(errc::unsupported, "transfer: no transport reaches the target"));
    }
    co_await state.wait();
    co_await relay.retire();
    co_return state.take_result();
  }

public:
  /// Starts a batch without a coroutine; poll or wait on the handle. Drive the loop yourself (wait() does) or
  /// run it on another thread (run_in_background()).
  transfer_handle submit(transfer_batch batch, transfer_options opts = {}) {
    auto state = std::make_shared<transfer_handle::shared_state>();
    state->io = &io_;
    state->turn = turn_;
    // why: entering until spawned, so that shutdown() joins the scope only once no spawn is under way
    entering entry(*this);
    if (!entry.open) {
      state->set(refused_after_shutdown(batch, opts));
      return transfer_handle(std::move(state));
    }
    scope_.spawn([](transfer_engine& e, transfer_batch b, transfer_options o,
                    std::shared_ptr<transfer_handle::shared_state> s) -> task<> {
      const std::size_t requests = b.size();
      batch_result r;
      // why: an exception (out of memory) would otherwise end in the scope, and the handle wait for ever
      try {
        r = co_await e.transfer(std::move(b), std::move(o));
      } catch (...) {
        r.requests.assign(requests, result<std::uint64_t>(fail(thrown_by("transfer"))));
      }
      s->set(std::move(r));
    }(*this, std::move(batch), std::move(opts), state));
    return transfer_handle(std::move(state));
  }

  /// Runs the engine's io_context on a thread of its own until shutdown.
  void run_in_background() {
    if (background_.joinable())
      return;
    guard_.emplace(io_);
    // why: before the thread starts: a handle must not drive the loop on another thread meanwhile; one that
    // does now (its turn, in wait()) is woken by this, ends its turn and leaves the loop to the thread
    turn_->background.store(true, std::memory_order_release);
    scope_.spawn([](io::io_context& io) -> task<> { co_await io.schedule(); }(io_));
    background_ = std::thread([this] {
      {
        std::lock_guard turn(turn_->driving);
        io_.run();
      }
      background_ended_.store(true, std::memory_order_release);
    });
    io_.hand_over(background_.get_id());
  }

  // ---- notifications and liveness ----

  /// Delivers `message` to the segment's owner (it receives it from next_notification()).
  task<result<void>> notify(segment_id target, std::string message, std::stop_token stop = {}) {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return fail(after_shutdown("notify"));
    active_call busy(*this);
    co_return co_await notify_process(target, std::move(message), stop, std::nullopt);
  }

private:
  /// notify() on the loop, to the process `incarnation` names (by default the one that serves `target` now);
  /// errc::version_mismatch if another one serves it by then.
  task<result<void>> notify_process(segment_id target, std::string message, std::stop_token stop,
                                    std::optional<std::uint64_t> incarnation) {
    if (shut_down_.load(std::memory_order_acquire))
      co_return fail(after_shutdown("notify"));
    if (target >= peers_.size())
      co_return fail(errc::unknown_segment, "notify");
    // why: the receiver takes the sender's name to the first newline
    if (auto why = segment_descriptor::name_problem(options_.name))
      co_return fail(errc::invalid_argument, std::string("notify: engine_options::name: ") + why);
    if (message.size() > tcp::frame_header::max_message_payload - 512)
      co_return fail(errc::invalid_argument, "notify: message too long");
    std::string payload = options_.name + "\n" + message;
    if (target == self) {
      if (!deliver(std::move(payload)))
        co_return fail(errc::out_of_space, "notify: the segment's notification queue is full");
      co_return result<void>{};
    }
    if constexpr (has_tcp) {
      auto reply =
          co_await std::get<tcp_transport>(transports_)
              .control(peers_[target], tcp::frame_type::notify, std::move(payload), stop, incarnation);
      if (!reply)
        co_return fail(reply.error());
      if (reply->header.status != 0)
        co_return fail(error(reply->header.error(), "notify: the peer refused the notification"));
      co_return result<void>{};
    } else {
      co_return fail(errc::unsupported, "notify: this engine has no tcp transport");
    }
  }

public:
  /// The next notification delivered to this segment (in arrival order), or errc::cancelled (also once the
  /// engine has shut down: notifications not taken by then are dropped with it).
  task<result<notification>> next_notification(std::stop_token stop = {}) {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return fail(after_shutdown("next_notification"));
    active_call busy(*this);
    if (!inbox_.empty()) {
      auto n = std::move(inbox_.front());
      inbox_.pop_front();
      inbox_bytes_ -= n.from.size() + n.message.size();
      co_return n;
    }
    inbox_waiter w;
    inbox_waiters_.push_back(&w);
    struct args_t {
      transfer_engine* e;
      inbox_waiter* w;
    } args{this, &w};
    detail::stop_relay relay(
        io_,
        [](void* p) noexcept {
          auto* a = static_cast<args_t*>(p);
          if (a->w->done)
            return;
          std::erase(a->e->inbox_waiters_, a->w);
          a->e->wake(*a->w);
        },
        &args);
    co_await w.wait(relay, stop);
    co_await relay.retire();
    if (!w.value)
      co_return fail(errc::cancelled, "next_notification");
    co_return std::move(*w.value);
  }

  /// Round trip of a ping to the segment's owner.
  task<result<std::chrono::nanoseconds>> probe(segment_id target, std::stop_token stop = {}) {
    if (bool open = co_await enter_unless_shut_down(); !open)
      co_return fail(after_shutdown("probe"));
    active_call busy(*this);
    if (target >= peers_.size())
      co_return fail(errc::unknown_segment, "probe");
    if (target == self)
      co_return std::chrono::nanoseconds(0);
    if constexpr (has_tcp) {
      auto t0 = std::chrono::steady_clock::now();
      auto reply = co_await std::get<tcp_transport>(transports_)
                       .control(peers_[target], tcp::frame_type::ping, std::string(), stop);
      if (!reply)
        co_return fail(reply.error());
      co_return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0);
    } else {
      co_return fail(errc::unsupported, "probe: this engine has no tcp transport");
    }
  }

  // ---- ending ----

  /// Stops serving, fails what is queued, waits for background work and for the calls under way (a lookup in
  /// a metadata store ends when the store answers or times out), and stops the background thread. Calling it
  /// again completes once the first call has. Calls made afterwards do nothing and say so (errc::cancelled),
  /// at once, on the caller's thread; calls made on other threads as it begins say so too, from the engine's
  /// loop, before the loop stops. Like every call, it completes only while the loop runs: without
  /// run_in_background(), drive the loop until it has completed (a handle's wait() drives it only until that
  /// handle is ready).
  task<> shutdown() {
    if (shut_down_.exchange(true, std::memory_order_seq_cst)) {
      co_await shut_down_already();
      co_return;
    }
    co_await enter();
    // why: a call from another thread that found the engine open as this began is on its way to the loop;
    // once there it finds the engine shut down and ends. Were the loop to stop first, it would wait for ever.
    // A short sleep, not a yield: the loop's thread leaves the core to a caller that has yet to get there.
    co_await until_none(entering_, std::chrono::microseconds(50));
    renewal_stop_.request_stop();
    if (published_)
      (void)co_await take_back_registration(); // why: best effort; a store that is down lets the lease run
                                               // out instead
    if (server_)
      server_->stop();
    std::apply([](auto&... t) { (t.shutdown(), ...); }, transports_);
    for (auto* w : std::exchange(inbox_waiters_, {}))
      wake(*w);
    co_await scope_.join();
    // why: calls their callers await (not spawned in the scope) may still be on their way: a metadata lookup
    // whose store answers on a thread of its own, a batch's last steps. They continue on this loop, which
    // must not stop first, in an engine that must not be destroyed under them.
    co_await until_none(active_, std::chrono::milliseconds(1));
    // why: a second shutdown() waits for this one (see shut_down_already)
    shutdown_complete_.store(true, std::memory_order_seq_cst);
    co_await until_none(entering_, std::chrono::microseconds(50));
    context_.connection_loops = nullptr;
    connection_loops_.reset(); // why: after the join: the work that ran there has ended or moved back here
    guard_.reset();            // the background thread, if any, ends once nothing is left to run
    shutdown_finished_.store(true, std::memory_order_seq_cst);
  }

private:
  /// Sleeps on the loop, a `period` at a time, until `count` is 0 (calls of other threads or of this loop
  /// that shutdown() waits for).
  task<> until_none(const std::atomic<std::size_t>& count, io::io_context::clock::duration period) {
    while (count.load(std::memory_order_seq_cst) != 0)
      co_await io_.sleep_for(period);
  }

  /// A shutdown() after the first: completes once the first has (at once if it has). From another thread, it
  /// counts as entering while it looks, so that the first lets the loop stop only after this one is on it;
  /// one that finds the first past that point waits on its own thread for the first's last steps.
  task<> shut_down_already() {
    if (!io_.running_in_this_thread()) {
      entering_.fetch_add(1, std::memory_order_seq_cst);
      if (shutdown_complete_.load(std::memory_order_seq_cst)) {
        entering_.fetch_sub(1, std::memory_order_seq_cst);
        // why: the loop may stop any moment now, so this cannot wait on it; what is left takes no long
        while (!shutdown_finished_.load(std::memory_order_seq_cst))
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        co_return;
      }
      co_await enter();
      entering_.fetch_sub(1, std::memory_order_seq_cst);
    }
    // why: on the loop, a pending timer keeps it running until the first shutdown() has finished
    while (!shutdown_finished_.load(std::memory_order_seq_cst))
      co_await io_.sleep_for(std::chrono::milliseconds(1));
  }

  /// unpublish() on the engine's loop; shutdown() calls it after it has set shut_down_.
  task<result<void>> take_back_registration() {
    // why: a registration still in flight (a renewal that re-registers) sees the new generation and undoes
    // itself instead of publishing again
    ++registration_generation_;
    renewal_stop_.request_stop();
    if (!published_)
      co_return result<void>{};
    published_ = false;
    result<void> r;
    if (lease_) {
      lease_id lease = *std::exchange(lease_, std::nullopt);
      r = co_await metadata_.revoke(lease);
    } else {
      r = co_await remove_own_registration(metadata_prefix_ + options_.name);
    }
    co_await enter();
    co_return r;
  }

  /// Puts the descriptor, under a (new, if needed) lease when the store has leases (a store that turns out to
  /// have none gets a plain put). Gives up, undoing what it did, if unpublish() came meanwhile.
  task<result<void>> register_segment() {
    const std::uint64_t generation = registration_generation_;
    std::string key = metadata_prefix_ + options_.name;
    auto superseded = [&] { return generation != registration_generation_ || shut_down_; };
    // why: one registration at a time (publish() again, or the renewal's, while one is under way): two would
    // each take a lease, and the key could end under the one nobody renews
    auto turn = co_await registering_.lock();
    co_await enter();
    if (superseded())
      co_return fail(errc::cancelled, "publish: unpublished meanwhile");
    if (metadata_.grant && options_.metadata_ttl.count() > 0) {
      for (int attempt = 0; attempt < 2; ++attempt) {
        std::optional<lease_id> fresh;
        if (!lease_) {
          auto granted = co_await metadata_.grant(options_.metadata_ttl);
          co_await enter();
          if (!granted && granted.error() == errc::unsupported)
            break; // a metadata_client over a backend without leases
          if (!granted)
            co_return fail(granted.error());
          if (superseded()) {
            (void)co_await metadata_.revoke(*granted);
            co_await enter();
            co_return fail(errc::cancelled, "publish: unpublished meanwhile");
          }
          lease_ = fresh = *granted;
        }
        lease_id lease = *lease_;
        auto r = co_await metadata_.put_leased(key, descriptor_json(), lease);
        co_await enter();
        if (superseded()) {
          if (r && fresh)
            (void)co_await metadata_.revoke(lease);
          co_await enter();
          co_return fail(errc::cancelled, "publish: unpublished meanwhile");
        }
        if (r) {
          published_ = true;
          co_return r;
        }
        if (r.error() != errc::not_found) {
          // why: a lease taken here with no key under it must not stay: the renewal would keep it alive and
          // never put the key again, and the segment would stay unfindable with nothing said. Without it, the
          // renewal's next turn registers again.
          if (fresh) {
            (void)co_await metadata_.revoke(*fresh);
            co_await enter();
            if (lease_ == fresh)
              lease_.reset();
          }
          co_return r;
        }
        lease_.reset(); // the lease ran out meanwhile: take a new one
      }
      if (lease_)
        co_return fail(errc::invalid_state, "publish: the metadata store keeps losing this segment's lease");
    }
    auto r = co_await metadata_.put(key, descriptor_json());
    co_await enter();
    if (superseded()) {
      if (r)
        (void)co_await remove_own_registration(key);
      co_await enter();
      co_return fail(errc::cancelled, "publish: unpublished meanwhile");
    }
    if (r)
      published_ = true;
    co_return r;
  }

  /// Removes `key` (registered without a lease) unless it now holds another process's descriptor: a
  /// successor that published under this name while this engine was going must stay findable.
  task<result<void>> remove_own_registration(const std::string& key) {
    auto held = co_await metadata_.get(key);
    co_await enter();
    if (held && *held)
      if (auto d = segment_descriptor::parse(**held); d && d->incarnation != incarnation_)
        co_return result<void>{};
    auto r = co_await metadata_.remove(key);
    co_await enter();
    co_return r;
  }

  /// Renews the lease every third of its TTL; registers again when the store lost it.
  task<> keep_registered(std::stop_token stop) {
    auto period =
        std::max<std::chrono::milliseconds>(options_.metadata_ttl / 3, std::chrono::milliseconds(10));
    while (!stop.stop_requested()) {
      auto slept = co_await io_.sleep_for(period, stop);
      if (!slept || stop.stop_requested())
        break;
      if (!published_)
        continue;
      result<void> r = fail(errc::not_found, "no lease");
      if (lease_) {
        r = co_await metadata_.keep_alive(*lease_);
        co_await enter();
      }
      if (stop.stop_requested() || !published_)
        break;
      if (!r && r.error() == errc::not_found) {
        lease_.reset();
        r = co_await register_segment();
        co_await enter();
      }
      registration_error_ = r ? error{} : r.error();
    }
    // why: only the loop of the current renewal clears the flag; a stopped one may end after a new one began
    if (stop == renewal_stop_.get_token())
      renewing_ = false;
  }

  struct inbox_waiter {
    std::coroutine_handle<> handle;
    std::optional<notification> value;
    bool done = false;
    io::detail::resume_op resume;
    auto wait(detail::stop_relay& relay, std::stop_token stop) noexcept {
      struct awaiter {
        inbox_waiter& w;
        detail::stop_relay& relay;
        std::stop_token stop;
        bool await_ready() const noexcept { return w.done; }
        void await_suspend(std::coroutine_handle<> h) {
          w.handle = h;
          relay.watch(std::move(stop));
        }
        void await_resume() const noexcept {}
      };
      return awaiter{*this, relay, std::move(stop)};
    }
  };

  /// Resumes a waiter of next_notification() from the loop (once).
  void wake(inbox_waiter& w) noexcept {
    w.done = true;
    w.resume.handle = w.handle;
    io_.post(&w.resume);
  }

  /// Continues on the loop's thread.
  /// The error of a call made after shutdown(): it does nothing (and does not wait for the engine's loop,
  /// which may no longer run).
  static error after_shutdown(const char* what) {
    return error(errc::cancelled, std::string(what) + ": the engine has shut down");
  }
  /// Makes a thread blocked in the loop's run_one() return, running nothing else.
  static void nudge(io::io_context& io) {
    struct nothing : io::detail::op_base {};
    auto* op = new nothing;
    op->complete_ = [](io::detail::op_base* o) noexcept { delete static_cast<nothing*>(o); };
    io.post(op);
  }

  /// A batch whose timeout is negative: its deadline passed before it began (a timeout worked out as what is
  /// left of a larger budget, say). Nothing moves, rather than everything with no deadline at all.
  static batch_result past_deadline(const transfer_batch& batch, const transfer_options& opts) {
    const error why(errc::timed_out,
                    "transfer: the deadline passed before the batch began (negative timeout)");
    batch_result out;
    out.requests.assign(batch.size(), fail(why));
    if (opts.notify)
      out.notify_error = why;
    return out;
  }

  static batch_result refused_after_shutdown(const transfer_batch& batch, const transfer_options& opts) {
    batch_result out;
    out.requests.assign(batch.size(), fail(after_shutdown("transfer")));
    if (opts.notify)
      out.notify_error = after_shutdown("notify");
    return out;
  }

  auto enter() noexcept {
    struct hop {
      io::io_context& io;
      io::detail::resume_op op;
      bool await_ready() const noexcept { return io.running_in_this_thread(); }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        op.handle = h;
        io.post(&op);
      }
      void await_resume() const noexcept {}
    };
    return hop{io_, {}};
  }

  /// A call from another thread on its way into the engine: counted while the engine was open when it
  /// looked, so that shutdown() lets the loop stop only after it arrived (and found the engine shut down).
  class entering {
  public:
    explicit entering(transfer_engine& e) noexcept : e_(e) {
      if (e_.shut_down_.load(std::memory_order_acquire))
        return; // why: refused at once, without touching the count shutdown() waits on
      // why: sequentially consistent with shutdown()'s store and load: either this sees the engine shut down,
      // or shutdown() sees this entering and waits for it
      e_.entering_.fetch_add(1, std::memory_order_seq_cst);
      counted_ = true;
      open = !e_.shut_down_.load(std::memory_order_seq_cst);
    }
    entering(const entering&) = delete;
    entering& operator=(const entering&) = delete;
    ~entering() {
      if (counted_)
        e_.entering_.fetch_sub(1, std::memory_order_seq_cst);
    }
    bool open = false;

  private:
    transfer_engine& e_;
    bool counted_ = false;
  };

  /// A call under way on the engine's loop, from the moment it found the engine open until it returns:
  /// shutdown() completes only once none is.
  class active_call {
  public:
    explicit active_call(transfer_engine& e) noexcept : e_(e) {
      e_.active_.fetch_add(1, std::memory_order_acq_rel);
    }
    active_call(const active_call&) = delete;
    active_call& operator=(const active_call&) = delete;
    ~active_call() { e_.active_.fetch_sub(1, std::memory_order_acq_rel); }

  private:
    transfer_engine& e_;
  };

  /// Continues on the loop's thread unless the engine has shut down or is shutting down; true if the call
  /// may go on. A call from another thread counts as entering until it is on the loop, and looks again there.
  auto enter_unless_shut_down() noexcept {
    struct hop {
      transfer_engine& e;
      io::detail::resume_op op{};
      std::optional<entering> entry{};
      bool open = true;
      bool await_ready() noexcept {
        if (e.io_.running_in_this_thread()) {
          open = !e.shut_down_.load(std::memory_order_acquire);
          return true;
        }
        entry.emplace(e);
        open = entry->open;
        return !open;
      }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        op.handle = h;
        e.io_.post(&op);
      }
      bool await_resume() noexcept {
        if (op.handle) // it came over from another thread: it looks again, then no longer counts
          open = !e.shut_down_.load(std::memory_order_seq_cst);
        entry.reset();
        return open;
      }
    };
    return hop{*this};
  }

  error validate(const transfer_request& r) const {
    if (r.length == 0)
      return error(errc::invalid_argument, "transfer: empty request");
    if (!r.local)
      return error(errc::invalid_argument, "transfer: no local buffer");
    if (r.target >= peers_.size())
      return error(errc::unknown_segment, "transfer: segment was never opened");
    const peer& p = peers_[r.target];
    access wanted = r.op == transfer_op::write ? access::write : access::read;
    if (p.is_self) {
      // why: the registry checks every slice again at copy time, but only the whole range tells a request
      // that wraps around the offset space or runs from one region into the next from one that fits
      if (auto fits = registry_.check_exposed(r.target_offset, r.length, wanted); !fits)
        return error(fits.error().code(), std::string("transfer: ") + fits.error().what());
      return {};
    }
    auto* region = p.descriptor.region_for(r.target_offset, r.length);
    if (!region)
      return error(errc::out_of_bounds, "transfer: range outside the target's regions");
    if (!allows(region->permissions, wanted))
      return error(errc::permission_denied, "transfer: the target region does not permit this");
    return {};
  }

  template<std::size_t I = 0>
  bool route(const peer& p, slice* s, std::size_t first) {
    if constexpr (I < sizeof...(Transports)) {
      auto& t = std::get<I>(transports_);
      using T = std::tuple_element_t<I, std::tuple<Transports...>>;
      constexpr bool carries_gpu_memory = moves_gpu_memory<T>;
      if (I >= first && (!s->local_on_gpu || carries_gpu_memory)) {
        // why: a transport that throws (out of memory, or one of the user's own) has not taken the slice; the
        // slice fails with the reason. Letting it through would leave the slices submitted before it in
        // flight under a batch that unwinds, or end the process where a retry routes the slice (retry_slice
        // is noexcept)
        try {
          if (t.reaches(p, s->remote_offset, s->length)) {
            s->transport = static_cast<std::uint8_t>(I);
            t.submit(p, s);
            routed_[I] += s->length;
            return true;
          }
        } catch (...) {
          s->settle(thrown_by(T::name));
          return true;
        }
      }
      return route<I + 1>(p, s, first);
    } else {
      return false;
    }
  }

  /// The exception being handled, as an error that names `who` threw it.
  static error thrown_by(std::string_view who) noexcept {
    try {
      try {
        throw;
      } catch (const std::exception& e) {
        return error(errc::internal, std::string(who) + " threw: " + e.what());
      } catch (...) {
        return error(errc::internal, std::string(who) + " threw an exception that is not a std::exception");
      }
    } catch (...) { // why: no memory left even for the message
      return error(errc::internal, "a transport threw");
    }
  }

  static bool retry_slice(void* self_ptr, slice* s, const error& why) noexcept {
    auto* self = static_cast<transfer_engine*>(self_ptr);
    // why: a transport that cannot reach the peer at all hands the slice to the next one that can.
    std::size_t first = why == errc::peer_unreachable ? s->transport + 1u : s->transport;
    return self->route(self->peers_[s->target], s, first);
  }

  struct abort_args {
    transfer_engine* engine;
    detail::batch_state* state;
    io::io_context::clock::time_point due; // the deadline's; max(): none
    std::stop_token stop;
  };
  static void abort_batch(void* p) noexcept {
    auto* a = static_cast<abort_args*>(p);
    // why: by the clock, not by the deadline's timer having fired: the loop may not have turned to it yet
    bool expired = io::io_context::clock::now() >= a->due;
    a->state->abort(expired ? error(errc::timed_out, "transfer: deadline passed")
                            : error(errc::cancelled, "transfer: cancelled"));
    std::apply([&](auto&... t) { (t.abort(a->state), ...); }, a->engine->transports_);
  }

  /// The batch's deadline or its caller's stop, looked at directly (see batch_state::overdue); aborts the
  /// batch as the loop would once it turned.
  static bool abort_if_overdue(void* p) noexcept {
    auto* a = static_cast<abort_args*>(p);
    if (!a->stop.stop_requested() && io::io_context::clock::now() < a->due)
      return false;
    abort_batch(p);
    return true;
  }

  task<result<segment_descriptor>> fetch(std::string locator, std::stop_token stop) {
    if (auto address = io::endpoint::parse(locator)) {
      if constexpr (has_tcp) {
        auto d = co_await tcp_transport::fetch_descriptor(
            io_, *address, options_.tcp.connect_timeout + options_.tcp.reply_timeout, stop);
        if (d)
          reach_wildcards(*d, &*address);
        co_return d;
      } else {
        co_return fail(errc::unsupported, "open_segment: a direct handshake needs the tcp transport");
      }
    }
    if (!metadata_.get)
      co_return fail(errc::unknown_segment,
                     "open_segment: '" + locator +
                         "' is not HOST:PORT and there is no metadata store (use_metadata)");
    auto text = co_await lookup(metadata_prefix_ + locator, stop);
    if (!text)
      co_return fail(text.error());
    if (!*text)
      co_return fail(errc::unknown_segment,
                     "open_segment: no segment '" + locator + "' in the metadata store");
    // why: the bound a peer's handshake has; parsing is what costs memory, many times the text's size
    if ((*text)->size() > tcp::frame_header::max_descriptor_payload)
      co_return fail(errc::malformed_frame, "open_segment: the metadata store holds " +
                                                std::to_string((*text)->size()) + " bytes for '" + locator +
                                                "', more than a segment descriptor may be");
    auto d = segment_descriptor::parse(**text);
    if (!d)
      co_return fail(
          error(d.error().code(), "open_segment: the metadata store holds a malformed descriptor for '" +
                                      locator + "': " + d.error().message()));
    reach_wildcards(*d, nullptr);
    co_return d;
  }

  // Rewrites the "host:port" that starts endpoint `e` (a transport may add "#..." after it, as verbs does)
  // through `f`; an endpoint `f` answers nullopt for is marked for removal (false). Other forms stay.
  template<class F>
  static bool rehost(transport_endpoint& e, F f) {
    auto hash = e.address.find('#');
    std::string rest = hash == std::string::npos ? std::string() : e.address.substr(hash);
    auto at = io::endpoint::parse(std::string_view(e.address).substr(0, hash));
    if (!at)
      return true;
    auto to = f(*at);
    if (!to)
      return false;
    e.address = to->to_string() + rest;
    return true;
  }

  // An owner that listens on every address (0.0.0.0, [::]) and advertises none names no host. Opened by
  // address, the one it answered at reaches it; from this machine and network namespace, loopback does; from
  // elsewhere (another host, or a container of this one with a network of its own) nothing known does, and
  // such an endpoint is dropped: it would connect to a process here instead.
  void reach_wildcards(segment_descriptor& d, const io::endpoint* answered_at) const {
    std::erase_if(d.endpoints, [&](transport_endpoint& e) {
      return !rehost(e, [&](const io::endpoint& at) -> std::optional<io::endpoint> {
        if (!at.is_unspecified())
          return at;
        if (answered_at)
          return answered_at->with_port(at.port());
        if (!d.host.empty() && d.host == host_ && same_network(d))
          return io::endpoint::loopback(at.family()).with_port(at.port());
        return std::nullopt;
      });
    });
  }

  /// Whether loopback reaches `d`'s owner from here (on its host): the same network namespace, or one of the
  /// two unknown (an owner that does not say: as before network namespaces were told apart).
  static bool same_network(const segment_descriptor& d) noexcept {
    const std::uint64_t own = io::detail::net_namespace_id();
    return d.net_namespace == 0 || own == 0 || d.net_namespace == own;
  }

  /// The metadata store's value of `key`, on the engine's loop (a store may answer on a thread of its own).
  /// Given up at `stop` (errc::cancelled): a store call cannot be taken back, so it goes on in the background
  /// and its answer is dropped.
  task<result<std::optional<std::string>>> lookup(std::string key, std::stop_token stop) {
    if (!stop.stop_possible()) {
      auto r = co_await metadata_.get(std::move(key));
      co_await enter();
      co_return r;
    }
    struct pending {
      std::optional<result<std::optional<std::string>>> answer;
      io::wake_signal answered;
    };
    auto p = std::make_shared<pending>();
    scope_.spawn([](transfer_engine& e, decltype(metadata_calls::get) get, std::string k,
                    std::shared_ptr<pending> p) -> task<> {
      result<std::optional<std::string>> r;
      try {
        r = co_await get(std::move(k));
      } catch (const std::exception& x) { // why: the caller may have gone; it must not be left waiting
        r = fail(errc::invalid_state, std::string("open_segment: the metadata store failed: ") + x.what());
      }
      co_await e.enter();
      p->answer = std::move(r);
      p->answered.set();
    }(*this, metadata_.get, std::move(key), p));
    co_await p->answered.wait(io_, stop);
    if (!p->answer)
      co_return fail(errc::cancelled, "open_segment: stopped before the metadata store answered");
    co_return std::move(*p->answer);
  }

  /// Whether two descriptors are served at the same tcp address (a restarted process of the same name, say);
  /// a wildcard address (0.0.0.0, [::]) names no one host.
  static bool same_address(const segment_descriptor& a, const segment_descriptor& b) {
    auto* x = a.endpoint_for("tcp");
    auto* y = b.endpoint_for("tcp");
    auto wildcard = [](const std::string& at) {
      return at.rfind("0.0.0.0:", 0) == 0 || at.rfind("[::]:", 0) == 0;
    };
    return x && y && x->address == y->address && !wildcard(x->address);
  }

  void replace(peer& p, segment_descriptor d, std::string locator) {
    p.locator = std::move(locator);
    if (d == p.descriptor)
      return;
    std::apply([&](auto&... t) { (t.forget(p), ...); }, transports_);
    p.descriptor = std::move(d);
    ++p.version;
  }

  /// Hands a notification to a waiter or queues it; false (refused) when the queue is full.
  bool deliver(std::string payload) {
    notification n;
    auto nl = payload.find('\n');
    n.from = payload.substr(0, nl);
    n.message = nl == std::string::npos ? std::string() : payload.substr(nl + 1);
    if (!inbox_waiters_.empty()) {
      inbox_waiter* w = inbox_waiters_.front();
      inbox_waiters_.erase(inbox_waiters_.begin());
      w->value = std::move(n);
      wake(*w);
      return true;
    }
    // why: peers may notify faster than this process takes notifications; the queue must not grow without
    // bound
    std::size_t bytes = n.from.size() + n.message.size();
    if (inbox_.size() >= options_.max_pending_notifications ||
        inbox_bytes_ + bytes > options_.max_pending_notification_bytes)
      return false;
    inbox_bytes_ += bytes;
    inbox_.push_back(std::move(n));
    return true;
  }

  template<class T>
  static void describe_with(const T& t, segment_descriptor& d) {
    if constexpr (requires { t.describe(d); })
      t.describe(d);
  }

  static std::string read_host_id() {
    std::ifstream f("/proc/sys/kernel/random/boot_id");
    std::string id;
    std::getline(f, id);
    return id;
  }

  io::io_context& io_;
  engine_options options_;
  std::string host_;
  std::uint64_t incarnation_;
  region_registry registry_;
  // descriptor_json()'s last text, and the registry's generation it was made at
  mutable std::mutex described_mutex_;
  mutable bool described_ = false;
  mutable std::uint64_t described_generation_ = 0;
  mutable std::string described_json_;
  async_scope scope_;
  transport_context context_;
  std::tuple<Transports...> transports_;
  std::vector<peer> peers_;
  std::array<std::uint64_t, sizeof...(Transports)> routed_{};
  std::unique_ptr<io::io_context_pool> connection_loops_; // tcp.io_threads > 0: where data connections run
  std::unique_ptr<tcp_server> server_;
  std::optional<io::endpoint> listening_;
  std::optional<io::endpoint> advertised_; // engine_options::advertise, parsed when start() listens
  std::string metadata_prefix_ = "ferry/segments/";
  struct metadata_calls {
    std::function<task<result<std::optional<std::string>>>(std::string)> get;
    std::function<task<result<void>>(std::string, std::string)> put;
    std::function<task<result<void>>(std::string)> remove;
    std::function<task<result<lease_id>>(std::chrono::milliseconds)> grant;
    std::function<task<result<void>>(std::string, std::string, lease_id)> put_leased;
    std::function<task<result<void>>(lease_id)> keep_alive;
    std::function<task<result<void>>(lease_id)> revoke;
  };
  metadata_calls metadata_;
  bool metadata_direct_ = false;
  bool published_ = false;
  bool renewing_ = false;
  std::uint64_t registration_generation_ = 0;
  async_mutex registering_; // register_segment() one at a time
  std::optional<lease_id> lease_;
  std::stop_source renewal_stop_;
  error registration_error_;
  std::deque<notification> inbox_;
  std::size_t inbox_bytes_ = 0;
  std::vector<inbox_waiter*> inbox_waiters_;
  std::thread background_;
  // The turn to drive the loop, shared with the handles (which may outlive the engine).
  // why: handles look at it when they wait, not when they were made: a batch submitted before
  // run_in_background() must not be driven from the waiting thread as well
  std::shared_ptr<transfer_handle::driver_turn> turn_ = std::make_shared<transfer_handle::driver_turn>();
  std::atomic<bool> background_ended_{false}; // the background thread's run() returned
  std::optional<io::io_context::work_guard> guard_;
  // why: atomic: calls made after shutdown() look at it on their caller's thread, where they must not hop to
  // a loop that may no longer run
  std::atomic<bool> shut_down_{false};
  std::atomic<std::size_t> entering_{0};       // calls from other threads on their way to the loop
  std::atomic<std::size_t> active_{0};         // calls under way on the loop (active_call)
  std::atomic<bool> shutdown_complete_{false}; // shutdown() waits only for second shutdown()s to get here
  std::atomic<bool> shutdown_finished_{false}; // shutdown() has returned, or is returning
};

} // namespace ferry
