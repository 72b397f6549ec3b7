#pragma once
/// `ferry::tcp_transport`: one-sided reads and writes into a peer's segment over TCP, served by the peer's
/// engine (which checks bounds and permissions). Each peer gets several connections; slices are spread over
/// them and pipelined up to a per-connection in-flight limit. Payloads go straight from and into the caller's
/// registered memory (gathered sends, direct receives): no staging copy. A connection that breaks, is reset,
/// or stops answering is dropped; its slices are retried by the engine on another connection, and the next
/// slice for it opens a fresh one, so transfers after a long idle period neither fail nor stall. Given loops
/// of their own (engine_options::tcp::io_threads), the connections are spread over them: each connection's
/// sends, receives and bookkeeping run on its loop, and slices travel there and back to the engine's loop in
/// bunches (one wake-up for all the slices waiting).
/// A connection given up while writes were in flight on it is fenced before any later request to that peer:
/// every connection's next requests, and the next notification, follow a fence naming it
/// (tcp::frame_type::fence), which the owner answers only once that connection has ended there. An abandoned
/// copy of a write, held up in the owner or on its path, can then never land after the retry, after a write
/// made later to the same bytes, or after a notification that announces them.
///
///   ferry::transfer_engine<ferry::shm_transport, ferry::tcp_transport> engine(ctx, options);

#include "ferry/core/async_scope.hpp"
#include "ferry/core/detail/steady_ns.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/io_context_pool.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/io/timer_awaiter.hpp"
#include "ferry/io/wake_signal.hpp"
#include "ferry/metadata/segment_descriptor.hpp"
#include "ferry/transfer/detail/batch_state.hpp"
#include "ferry/transfer/peer.hpp"
#include "ferry/transport/slice.hpp"
#include "ferry/transport/tcp/detail/keep_alive.hpp"
#include "ferry/transport/tcp/detail/progress.hpp"
#include "ferry/transport/tcp/detail/read_ahead.hpp"
#include "ferry/transport/tcp/frame.hpp"
#include "ferry/transport/transport_context.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

class tcp_transport {
  using clock = std::chrono::steady_clock;
  static constexpr std::size_t max_gather = 16;                  // slices sent with one sendmsg
  using finished_slices = std::vector<std::pair<slice*, error>>; // slices and their outcomes

  // Connections to one peer given up while writes were in flight on them, by tag, until the peer confirms a
  // fence for each. Shared by the peer's connections, whichever loops they run on.
  struct fence_book {
    std::mutex mutex;
    std::vector<std::uint64_t> tags;
    std::atomic<std::size_t> count{0}; // why: the writers look at this, not the lock, before every send

    void add(std::uint64_t tag) {
      std::lock_guard lock(mutex);
      if (std::find(tags.begin(), tags.end(), tag) == tags.end())
        tags.push_back(tag);
      count.store(tags.size(), std::memory_order_release);
    }
    void confirm(std::uint64_t tag) {
      std::lock_guard lock(mutex);
      std::erase(tags, tag);
      count.store(tags.size(), std::memory_order_release);
    }
    std::vector<std::uint64_t> pending() {
      std::lock_guard lock(mutex);
      return tags;
    }
  };

  // A request sent and not answered yet: a slice, or a fence (no slice) naming a connection given up.
  struct outstanding {
    slice* s = nullptr;
    std::uint64_t fence_tag = 0;
    std::uint64_t fence_id = 0; // the fence's request id
  };

  // One established connection. Its reader and writer share it; the last of them to leave settles what is
  // still in flight, so no slice is reported before the kernel is done with its memory.
  struct session {
    io::tcp_socket sock;
    std::uint64_t tag = 0; // sent with its hello; what a fence of it names
    std::deque<outstanding> in_flight;
    std::vector<std::uint64_t> fences_sent; // tags fenced on this session (its later requests follow them)
    bool broken = false;
    error reason;
    int users = 0;
    clock::time_point last_progress = clock::now(); // the last reply, or the end of a send
    // The socket's byte count (io::tcp_socket::bytes_moved) when the sweep last took it as progress.
    std::optional<std::uint64_t> bytes_seen;
    // On a loop of its own: slices whose replies came, held to be handed back to the engine's loop together.
    finished_slices done;
    std::uint64_t done_bytes = 0;
    bool hand_back_armed = false;
  };

  struct connection;

  // A loop that carries connections: the engine's own, or one of engine_options::tcp::io_threads. The state
  // of its connections is touched only there.
  struct home {
    io::io_context* loop = nullptr;
    async_scope* scope = nullptr; // the work running there
    std::unique_ptr<async_scope> own_scope;
    std::vector<connection*> connections; // for the sweep
    bool sweeping = false;
  };

  struct connection {
    home* at = nullptr;                 // where its I/O runs; fixed
    io::endpoint address;               // fixed
    std::shared_ptr<fence_book> fences; // its peer's; fixed
    std::uint64_t incarnation = 0;      // of the process the descriptor describes; checked on every connect
    bool retired = false;     // its peer's descriptor was replaced: it takes no new work and never reconnects
    bool reclaiming = false;  // retired, idle, and about to be freed
    std::deque<slice*> queue; // accepted, not yet sent
    session* current = nullptr;
    int sessions = 0; // alive: the current one and broken ones whose coroutines have not ended yet
    bool connecting = false;
    bool writing = false;
    std::uint64_t next_wire_id = 0;
    // Slices handed over by the engine's loop and not yet taken in on the connection's own.
    std::mutex inbox_mutex;
    std::vector<slice*> inbox;
    bool inbox_scheduled = false;
    // Until when (steady clock, ns) new slices pass it by: the peer refused it as busy (at its most served
    // connections). Written on the connection's loop, read on the engine's.
    std::atomic<std::int64_t> refused_until{0};
  };

  /// How long a connection that the peer refused as busy is passed by while the peer's other connections
  /// serve.
  static constexpr auto busy_backoff = std::chrono::milliseconds(500);

  struct peer_state {
    std::vector<std::unique_ptr<connection>> connections;
    unsigned next = 0;
  };

  struct control_channel {
    io::tcp_socket sock;
    io::endpoint address;
    std::uint64_t incarnation = 0; // of the process at the other end, confirmed by a hello
    // Requests take turns on the connection, in order of arrival; only the engine's loop touches these.
    struct turn_waiter {
      io::wake_signal wake; // set when the turn is handed over
      bool granted = false;
    };
    bool busy = false;
    std::deque<turn_waiter*> waiting;
  };

  /// The turn on a control channel, held until destroyed (which hands it to the next waiter).
  class control_turn {
  public:
    explicit control_turn(control_channel* ch) noexcept : ch_(ch) {}
    control_turn(control_turn&& o) noexcept : ch_(std::exchange(o.ch_, nullptr)) {}
    control_turn& operator=(control_turn&&) = delete;
    ~control_turn() {
      if (!ch_)
        return;
      if (ch_->waiting.empty()) {
        ch_->busy = false;
        return;
      }
      auto* next = ch_->waiting.front();
      ch_->waiting.pop_front();
      next->granted = true;
      next->wake.set();
    }

  private:
    control_channel* ch_;
  };

  /// Waits for the turn on `ch`, in order of arrival, until `stop` (errc::cancelled then).
  task<result<control_turn>> take_turn(control_channel& ch, std::stop_token stop) {
    if (!ch.busy) {
      ch.busy = true;
      co_return control_turn(&ch);
    }
    control_channel::turn_waiter w;
    ch.waiting.push_back(&w);
    // why: on the loop, where the turn is handed over: `granted` is read and written there alone
    co_await w.wake.wait(tc_.io, stop);
    if (w.granted)
      co_return control_turn(&ch);
    std::erase(ch.waiting, &w);
    co_return fail(errc::cancelled, "tcp: stopped while waiting for the peer's control connection");
  }

public:
  static constexpr std::string_view name = "tcp";

  /// A reply to a control request: its header and payload.
  struct control_reply {
    tcp::frame_header header;
    std::string payload;
  };

  /// Sends one request on `sock` and reads its reply (hello, notify, ping, fence: the control requests);
  /// `offset` goes in the header's offset field (a hello's or a fence's tag).
  static task<result<control_reply>> exchange_on(io::tcp_socket& sock, tcp::frame_type type,
                                                 std::string payload, std::stop_token stop,
                                                 std::uint64_t offset = 0) {
    static std::atomic<std::uint64_t> next_id{0};
    tcp::frame_header h;
    h.type = type;
    h.request_id = ++next_id;
    h.offset = offset;
    h.length = payload.size();
    std::array<std::byte, tcp::frame_header::size> raw;
    tcp::encode(h, raw);
    std::array<::iovec, 2> iov{::iovec{raw.data(), raw.size()}, ::iovec{payload.data(), payload.size()}};
    if (auto sent = co_await sock.send_all(std::span(iov.data(), payload.empty() ? 1 : 2), stop); !sent)
      co_return fail(sent.error());
    if (auto got = co_await sock.recv_all(raw, stop); !got)
      co_return fail(got.error());
    auto reply = tcp::decode_header(raw);
    if (!reply)
      co_return fail(reply.error());
    if (reply->request_id != h.request_id || static_cast<int>(reply->type) != static_cast<int>(type) + 1)
      co_return fail(errc::malformed_frame, "tcp: reply does not match the request");
    control_reply out{*reply, {}};
    out.payload.resize(reply->payload_length());
    if (!out.payload.empty())
      if (auto body = co_await sock.recv_all(std::as_writable_bytes(std::span(out.payload)), stop); !body)
        co_return fail(body.error());
    co_return out;
  }

  /// Connects to `address` and asks for the segment descriptor served there (the direct handshake).
  static task<result<segment_descriptor>> fetch_descriptor(io::io_context& io, io::endpoint address,
                                                           std::chrono::milliseconds timeout,
                                                           std::stop_token stop) {
    io::deadline within(io, timeout, stop);
    auto sock = co_await io::tcp_socket::connect(io, address, within.token());
    if (!sock)
      co_return fail(within.expired() ? error(errc::timed_out, "handshake: connect") : sock.error());
    auto reply = co_await exchange_on(*sock, tcp::frame_type::hello, std::string(), within.token());
    if (!reply)
      co_return fail(within.expired() ? error(errc::timed_out, "handshake") : reply.error());
    co_return descriptor_in(*reply);
  }

  /// The descriptor a hello's reply carries, or why it carries none.
  static result<segment_descriptor> descriptor_in(const control_reply& reply) {
    if (reply.header.status == 0)
      return segment_descriptor::parse(reply.payload);
    switch (static_cast<errc>(reply.header.status)) {
    case errc::out_of_space:
      return fail(error(reply.header.error(), "handshake: the peer's descriptor is too large to send"));
    case errc::busy:
      return fail(error(reply.header.error(),
                        "tcp: the peer serves as many connections as it may, and none has been idle long "
                        "enough to give its place up (its tcp.max_served_connections)"));
    default:
      return fail(error(reply.header.error(), "handshake: the peer refused it"));
    }
  }

  /// Says hello on a new connection (naming it by `tag`) and confirms that the process answering is the
  /// `incarnation` its descriptor describes, not one that took its address over since.
  static task<result<void>> confirm_owner(io::tcp_socket& sock, std::uint64_t incarnation,
                                          const io::deadline& within, std::uint64_t tag = 0) {
    auto hello = co_await exchange_on(sock, tcp::frame_type::hello, std::string(), within.token(), tag);
    auto d = hello ? descriptor_in(*hello) : result<segment_descriptor>(fail(hello.error()));
    if (!d)
      co_return fail(within.expired() ? error(errc::timed_out, "tcp connect: hello") : d.error());
    if (d->incarnation != incarnation)
      co_return fail(errc::version_mismatch,
                     "tcp: the segment at this address restarted; its descriptor is stale");
    co_return result<void>{};
  }

  /// Sends a control request to `p` on its control connection (opened on first use, reopened once if it
  /// broke) and yields the reply. Requests to one peer are serialized. A notification goes after a fence of
  /// each connection to `p` given up with writes in flight: what it announces is not overtaken by them.
  /// Only the process `incarnation` names (by default the one `p`'s descriptor names now) gets the request;
  /// another one serving `p`'s address fails it with errc::version_mismatch.
  task<result<control_reply>> control(const peer& p, tcp::frame_type type, std::string payload,
                                      std::stop_token stop,
                                      std::optional<std::uint64_t> incarnation_of = {}) {
    auto* ep = p.descriptor.endpoint_for(name);
    auto address = ep ? io::endpoint::parse(ep->address) : result<io::endpoint>(fail(errc::invalid_argument));
    if (!address)
      co_return fail(errc::peer_unreachable, "tcp: the peer has no TCP endpoint");
    const segment_id id = p.id; // why: `p` may move while this waits (the engine's peers are a vector)
    const std::uint64_t incarnation = incarnation_of.value_or(p.descriptor.incarnation);
    auto& slot = controls_[id];
    if (!slot)
      slot = std::make_unique<control_channel>();
    control_channel& ch = *slot;
    // why: by turns that give up at the caller's stop (a batch's deadline): a request ahead that waits for a
    // peer that does not answer must not hold the batch past its deadline
    auto turn = co_await take_turn(ch, stop);
    if (!turn)
      co_return fail(turn.error());
    if (stopping_)
      co_return fail(errc::cancelled, "tcp: engine shutting down");
    // the fences a notification follows (see exchange_after_fences)
    std::shared_ptr<fence_book> book;
    if (auto it = fence_books_.find(id); type == tcp::frame_type::notify && it != fence_books_.end())
      book = it->second;
    // why: a notification sent again after its connection broke may have reached the owner the first time
    // (only its answer was lost): the same id on both tells the owner to deliver it once
    const std::uint64_t notice = type == tcp::frame_type::notify ? next_tag() : 0;
    for (int attempt = 0;; ++attempt) {
      if (!ch.sock.is_open() || ch.address != *address || ch.incarnation != incarnation) {
        ch.sock.close();
        // why: connect_timeout, as the data connections: a host that is down (its SYNs unanswered) fails a
        // probe or a notification then, not after the longer reply timeout
        io::deadline connecting(tc_.io, tc_.options.tcp.connect_timeout, stop);
        auto sock = co_await io::tcp_socket::connect(tc_.io, *address, connecting.token());
        if (!sock)
          co_return fail(connecting.expired() ? error(errc::timed_out, "tcp connect") : sock.error());
        // why: as on the data connections: a notification for bytes that landed in a process now gone must
        // not reach the one that took its address (nor a ping answer for it). The hello waits for the owner's
        // loop to write its descriptor, which may be large or busy: it gets the reply timeout
        io::deadline greeting(tc_.io, tc_.options.tcp.reply_timeout, stop);
        if (auto confirmed = co_await confirm_owner(*sock, incarnation, greeting); !confirmed)
          co_return fail(confirmed.error());
        // why: as the data connections: a control connection that sits idle for long is kept known alive,
        // and one whose peer vanished is found broken before a request waits on it
        tcp::detail::keep_alive(*sock, tc_.options.tcp.keepalive_idle);
        ch.sock = std::move(*sock);
        ch.address = *address;
        ch.incarnation = incarnation;
        if (stopping_) { // why: shutdown() came while this connected, and will not close it
          ch.sock.close();
          co_return fail(errc::cancelled, "tcp: engine shutting down");
        }
      }
      // why: as on the data connections, a fence gets twice the reply timeout (the owner may wait its stall
      // timeout for the connection it names); decided now, after the connect, during which a fence may have
      // become due
      bool fencing = book && book->count.load(std::memory_order_acquire) > 0;
      io::deadline within(tc_.io, (fencing ? 2 : 1) * tc_.options.tcp.reply_timeout, stop);
      auto reply = co_await exchange_after_fences(ch.sock, book.get(), type, payload, within.token(), notice);
      if (reply)
        co_return reply;
      ch.sock.close();
      if (stopping_) // why: shutdown() closed the connection under it
        co_return fail(errc::cancelled, "tcp: engine shutting down");
      // why: a control connection that sat idle may have been dropped by the peer (restart): reconnect once.
      if (attempt > 0 || within.token().stop_requested() || !detail::retryable(reply.error()))
        co_return fail(within.expired() ? error(errc::timed_out, "tcp: no reply from the peer")
                                        : reply.error());
    }
  }

  explicit tcp_transport(transport_context& tc) : tc_(tc) {}

  tcp_transport(const tcp_transport&) = delete;
  tcp_transport& operator=(const tcp_transport&) = delete;

  bool reaches(const peer& p, std::uint64_t, std::uint64_t) const {
    return !p.is_self && p.descriptor.endpoint_for(name) != nullptr;
  }

  // why: noexcept: running out of memory halfway through taking a slice (queued, a connection half set up)
  // must end the process, not reach the engine, which would fail a slice that is still held here
  void submit(const peer& p, slice* s) noexcept {
    if (stopping_) {
      s->settle(error(errc::cancelled, "tcp: engine shutting down"));
      return;
    }
    auto* ps = state_for(p);
    if (!ps) {
      s->settle(error(errc::peer_unreachable, "tcp: the peer's endpoint is not a host:port"));
      return;
    }
    const std::size_t n = ps->connections.size();
    std::size_t path = s->attempt == 0 ? ps->next++ % n : (s->path + 1u) % n;
    // why: a connection the peer refused as busy a moment ago would be refused again: the slice goes to the
    // next one that was not, if there is one
    std::int64_t now = 0; // why: read only once a connection was ever refused, not per slice
    for (std::size_t k = 0; k < n; ++k) {
      const std::int64_t until =
          ps->connections[(path + k) % n]->refused_until.load(std::memory_order_relaxed);
      if (until != 0 && now == 0)
        now = ferry::detail::steady_ns();
      if (until <= now) {
        path = (path + k) % n;
        break;
      }
    }
    s->path = static_cast<std::uint16_t>(path);
    hand_over(*ps->connections[s->path], s);
  }

  /// Settles the queued slices of aborted batches (`b` was just aborted) and drops the connections that have
  /// some of them in flight (the other batches' slices there are retried).
  void abort(detail::batch_state*) {
    if (stopping_)
      return;
    // why: by the batch's flag rather than its address: on a connection's own loop this runs later, when the
    // address could already belong to a new batch
    for (auto& h : homes_)
      on_home(*h, [this, at = h.get()] {
        for (connection* c : snapshot(*at))
          drop_aborted(*c);
      });
  }

  void forget(const peer& p) {
    auto it = peers_.find(p.id);
    if (it == peers_.end())
      return;
    // why: later, also on the engine's loop: the slices retire() fails are retried at once, and must find the
    // descriptor that replaces this one (the engine takes it after forget() returns) and the new connections,
    // not the ones being retired, each hop of which would use up a retry
    if (!stopping_) // why: once stopping, the loops of their own may be gone; shutdown() failed everything
      for (auto& c : it->second.connections)
        c->at->scope->spawn([](tcp_transport& t, connection& of) -> task<> {
          co_await of.at->loop->schedule();
          if (!t.stopping_)
            t.retire(of);
        }(*this, *c));
    // why: keep the connection objects while reader/writer coroutines may still refer to them: each is freed
    // once it is idle (reclaim_if_idle); new ones are addressed from the refreshed descriptor.
    retired_.push_back(std::move(it->second));
    peers_.erase(it);
  }

  /// Connection objects this transport holds: those of its peers and retired ones not freed yet (on the
  /// engine's loop).
  std::size_t connections_held() const noexcept {
    std::size_t n = 0;
    for (auto& [id, ps] : peers_)
      n += ps.connections.size();
    for (auto& ps : retired_)
      n += ps.connections.size();
    return n;
  }

  /// Drops every connection and fails everything queued; background work ends (join the engine's scope).
  void shutdown() {
    stopping_ = true;
    stop_.request_stop();
    for (auto& h : homes_) {
      if (h->loop == &tc_.io)
        close_connections(*h);
      else
        tc_.scope.spawn(close_home(*h));
    }
    for (auto& [id, ch] : controls_)
      ch->sock.close();
  }

private:
  // ---- the engine's loop ----

  /// exchange_on, after a fence of each connection `book` (if any) holds (see control()).
  task<result<control_reply>> exchange_after_fences(io::tcp_socket& sock, fence_book* book,
                                                    tcp::frame_type type, std::string payload,
                                                    std::stop_token stop, std::uint64_t offset = 0) {
    std::vector<std::uint64_t> tags = book ? book->pending() : std::vector<std::uint64_t>();
    for (std::uint64_t tag : tags) {
      auto fenced = co_await exchange_on(sock, tcp::frame_type::fence, std::string(), stop, tag);
      if (!fenced)
        co_return fenced;
      if (fenced->header.status != 0)
        co_return fail(errc::malformed_frame, "tcp: a fence refused");
      book->confirm(tag);
    }
    co_return co_await exchange_on(sock, type, std::move(payload), stop, offset);
  }

  peer_state* state_for(const peer& p) {
    if (auto it = peers_.find(p.id); it != peers_.end())
      return &it->second;
    auto* ep = p.descriptor.endpoint_for(name);
    auto address = ep ? io::endpoint::parse(ep->address) : result<io::endpoint>(fail(errc::invalid_argument));
    if (!address)
      return nullptr;
    if (homes_.empty())
      set_up_homes();
    peer_state ps;
    // why: kept across a refreshed descriptor, whose connections must still fence those given up before
    auto& fences = fence_books_[p.id];
    if (!fences)
      fences = std::make_shared<fence_book>();
    unsigned n = std::max(1u, tc_.options.tcp.connections_per_peer);
    for (unsigned i = 0; i < n; ++i) {
      auto c = std::make_unique<connection>();
      c->address = *address;
      c->fences = fences;
      c->incarnation = p.descriptor.incarnation;
      // why: with loops of their own, a peer's connections go round them, starting where the last peer's
      // ended, so that every loop carries its share
      c->at = homes_[homes_.size() == 1 ? 0 : 1 + next_home_++ % (homes_.size() - 1)].get();
      on_home(*c->at, [this, c = c.get()] { join_home(*c); });
      ps.connections.push_back(std::move(c));
    }
    return &peers_.emplace(p.id, std::move(ps)).first->second;
  }

  /// homes_[0] is the engine's loop; with io_threads, one home a loop of the pool follows it.
  void set_up_homes() {
    auto own = std::make_unique<home>();
    own->loop = &tc_.io;
    own->scope = &tc_.scope;
    homes_.push_back(std::move(own));
    if (tc_.connection_loops)
      for (std::size_t i = 0; i < tc_.connection_loops->size(); ++i) {
        auto h = std::make_unique<home>();
        h->loop = &tc_.connection_loops->at(i);
        h->own_scope = std::make_unique<async_scope>();
        h->scope = h->own_scope.get();
        homes_.push_back(std::move(h));
      }
  }

  /// Runs `f` on the loop of `h`: at once when that is the engine's loop (where this is called), else soon.
  template<class F>
  void on_home(home& h, F f) {
    if (h.loop == &tc_.io) {
      f();
      return;
    }
    h.scope->spawn([](home& at, F fn) -> task<> {
      co_await at.loop->schedule();
      fn();
    }(h, std::move(f)));
  }

  /// Gives `s` to its connection: directly on the engine's loop, else through the connection's inbox.
  void hand_over(connection& c, slice* s) {
    if (c.at->loop == &tc_.io) {
      enqueue(c, s);
      return;
    }
    if (away_++ == 0)
      busy_.emplace(tc_.io);
    bool wake;
    {
      std::lock_guard lock(c.inbox_mutex);
      c.inbox.push_back(s);
      wake = !std::exchange(c.inbox_scheduled, true);
    }
    if (wake)
      c.at->scope->spawn(take_inbox(c));
  }

  /// Settles the slices that connections on other loops finished.
  task<> settle_finished() {
    co_await tc_.io.schedule();
    finished_slices done;
    {
      std::lock_guard lock(finished_mutex_);
      done.swap(finished_);
      finished_scheduled_ = false;
    }
    away_ -= done.size();
    if (away_ == 0)
      busy_.reset();
    for (auto& [s, e] : done)
      s->settle(e); // may resubmit it (a retry), here on the engine's loop
  }

  /// Ends the work on a loop of its own: fails what its connections hold, waits for its coroutines, and
  /// comes back to the engine's loop (so that the engine's scope is joined here).
  task<> close_home(home& h) {
    io::io_context::work_guard keep(tc_.io); // why: see busy_
    co_await h.loop->schedule();
    close_connections(h);
    std::exception_ptr failed; // why: whatever happened there, end on the engine's loop (its scope's joiner)
    try {
      co_await h.scope->join();
    } catch (...) {
      failed = std::current_exception();
    }
    co_await tc_.io.schedule();
    if (failed)
      std::rethrow_exception(failed);
  }

  // ---- a connection's own loop ----

  /// Settles `s`: at once on the engine's loop, else handed back to it (one wake-up for many slices).
  void finish(connection& c, slice* s, error e) {
    if (c.at->loop == &tc_.io) {
      s->settle(e);
      return;
    }
    finished_slices one{{s, std::move(e)}};
    hand_back(one);
  }
  /// Settles every slice of `slices` with `reason`, as finish() does, handing them back together.
  template<class Slices>
  void finish_all(connection& c, const Slices& slices, const error& reason) {
    if (c.at->loop == &tc_.io) {
      for (slice* s : slices)
        s->settle(reason);
      return;
    }
    finished_slices back;
    back.reserve(slices.size());
    for (slice* s : slices)
      back.emplace_back(s, reason);
    hand_back(back);
  }
  /// Hands slices finished on a loop of their own back to the engine's loop, all with one wake-up.
  void hand_back(finished_slices& done) {
    if (done.empty())
      return;
    bool wake;
    {
      std::lock_guard lock(finished_mutex_);
      finished_.insert(finished_.end(), std::make_move_iterator(done.begin()),
                       std::make_move_iterator(done.end()));
      wake = !std::exchange(finished_scheduled_, true);
    }
    done.clear();
    if (wake)
      tc_.scope.spawn(settle_finished());
  }

  task<> take_inbox(connection& c) {
    co_await c.at->loop->schedule();
    std::vector<slice*> arrived;
    {
      std::lock_guard lock(c.inbox_mutex);
      arrived.swap(c.inbox);
      c.inbox_scheduled = false;
    }
    for (slice* s : arrived)
      enqueue(c, s);
    reclaim_if_idle(c);
  }

  void join_home(connection& c) {
    home& h = *c.at;
    h.connections.push_back(&c);
    if (!h.sweeping && !stopping_) {
      h.sweeping = true;
      h.scope->spawn(sweep(h));
    }
  }

  void drop_aborted(connection& c) {
    std::deque<slice*> keep, drop;
    for (slice* s : c.queue)
      (s->batch->aborted() ? drop : keep).push_back(s);
    c.queue.swap(keep);
    finish_all(c, drop, error(errc::cancelled, "tcp"));
    if (session* sn = c.current)
      if (std::any_of(sn->in_flight.begin(), sn->in_flight.end(),
                      [](const outstanding& o) { return o.s && o.s->batch->aborted(); }))
        // why: other batches' slices on this connection are retried; the aborted batch reports its reason
        break_current(c, error(errc::closed, "tcp: connection dropped to abort a batch"));
  }

  /// Settles every slice queued on `c` (not sent yet) with `reason`.
  void fail_queued(connection& c, const error& reason) {
    auto q = std::move(c.queue);
    c.queue.clear();
    finish_all(c, q, reason);
  }

  void retire(connection& c) {
    c.retired = true;
    fail_queued(c, error(errc::closed, "tcp: the peer's descriptor changed")); // retried with the new one
    break_current(c, error(errc::closed, "tcp: the peer's descriptor changed"));
    reclaim_if_idle(c);
  }

  /// On the connection's loop: once a retired connection holds nothing (no session, no connect under way,
  /// nothing queued or handed over), it leaves its loop's list and is freed on the engine's loop.
  void reclaim_if_idle(connection& c) {
    if (!c.retired || !reclaimable(c)) // why: not retired is the common case, on every session's end: no lock
      return;
    c.reclaiming = true;
    // why: later, on the same loop: the coroutine that calls this (a session's last user, say) is still
    // running and refers to `c` until it ends
    c.at->scope->spawn([](tcp_transport& t, connection& of) -> task<> {
      co_await of.at->loop->schedule();
      of.reclaiming = false;
      if (!t.reclaimable(of))
        co_return;
      of.reclaiming = true;
      std::erase(of.at->connections, &of);
      if (of.at->loop == &t.tc_.io) {
        t.free_retired(of);
        co_return;
      }
      t.tc_.scope.spawn([](tcp_transport& owner, connection& gone) -> task<> {
        co_await owner.tc_.io.schedule();
        owner.free_retired(gone);
      }(t, of));
    }(*this, c));
  }

  /// A retired connection that holds nothing and is not being freed already.
  bool reclaimable(connection& c) {
    std::lock_guard lock(c.inbox_mutex);
    return c.retired && !c.reclaiming && !c.connecting && c.sessions == 0 && !c.current && c.queue.empty() &&
           c.inbox.empty() && !c.inbox_scheduled && !stopping_;
  }

  /// On the engine's loop: frees a retired connection that left its loop's list.
  void free_retired(connection& c) {
    for (auto it = retired_.begin(); it != retired_.end(); ++it) {
      auto& list = it->connections;
      auto found = std::find_if(list.begin(), list.end(), [&](auto& owned) { return owned.get() == &c; });
      if (found == list.end())
        continue;
      list.erase(found);
      if (list.empty())
        retired_.erase(it);
      return;
    }
  }

  /// The connections of `h` as they are now. why: what a loop over them does to one (failing its slices,
  /// which are retried at once) may add a connection to the list on the way, with a backend that completes
  /// an operation in the call that starts it
  static std::vector<connection*> snapshot(const home& h) { return h.connections; }

  void close_connections(home& h) {
    for (connection* c : snapshot(h)) {
      fail_queued(*c, error(errc::cancelled, "tcp: engine shutting down"));
      if (c->current)
        break_current(*c, error(errc::cancelled, "tcp: engine shutting down"));
    }
  }

  void enqueue(connection& c, slice* s) {
    if (stopping_) {
      finish(c, s, error(errc::cancelled, "tcp: engine shutting down"));
      return;
    }
    if (c.retired) { // why: handed over before it was retired; the retry goes to the peer's new connections
      finish(c, s, error(errc::closed, "tcp: the peer's descriptor changed"));
      return;
    }
    c.queue.push_back(s);
    if (c.current)
      kick(c);
    else if (!c.connecting) {
      c.connecting = true;
      c.at->scope->spawn(connect(c));
    }
  }

  task<> connect(connection& c) {
    io::io_context& loop = *c.at->loop;
    io::deadline within(loop, tc_.options.tcp.connect_timeout, stop_.get_token());
    auto sock = co_await io::tcp_socket::connect(loop, c.address, within.token());
    if (!sock && within.expired())
      sock = fail(errc::timed_out, "tcp connect");
    if (sock && !tc_.options.tcp.congestion_control.empty())
      if (auto set = sock->set_congestion_control(tc_.options.tcp.congestion_control); !set)
        sock = fail(set.error());
    std::uint64_t tag = next_tag();
    if (sock && !stopping_) {
      // why: the address may now be served by a restarted process whose regions differ; bytes must never
      // land by a stale descriptor. As on the control connection, the hello waits for the owner's loop to
      // write its descriptor, which may be large or busy: it gets the reply timeout, not what is left of the
      // connect's
      io::deadline greeting(loop, tc_.options.tcp.reply_timeout, stop_.get_token());
      if (auto confirmed = co_await confirm_owner(*sock, c.incarnation, greeting, tag); !confirmed)
        sock = fail(confirmed.error());
    }
    c.connecting = false;
    if (c.retired && sock) {
      // the peer's descriptor changed meanwhile: this address may no longer serve that segment
      sock = fail(errc::closed, "tcp: the peer's descriptor changed");
    }
    if (!sock && sock.error() == errc::busy)
      c.refused_until.store(ferry::detail::steady_ns() + std::chrono::nanoseconds(busy_backoff).count(),
                            std::memory_order_relaxed);
    if (!sock || stopping_) {
      error e = !sock ? sock.error() : error(errc::cancelled, "tcp: engine shutting down");
      fail_queued(c, e); // retries go to another connection
      reclaim_if_idle(c);
      co_return;
    }
    tcp::detail::keep_alive(*sock, tc_.options.tcp.keepalive_idle);
    auto* sn = new session{};
    sn->sock = std::move(*sock);
    sn->tag = tag;
    sn->users = 1; // the reader
    ++c.sessions;
    c.current = sn;
    c.at->scope->spawn(reader(c, *sn));
    kick(c);
  }

  void kick(connection& c) {
    session* sn = c.current;
    if (!sn || c.writing || c.queue.empty() || sn->in_flight.size() >= limit())
      return;
    c.writing = true;
    ++sn->users;
    c.at->scope->spawn(writer(c, *sn));
  }

  std::size_t limit() const noexcept { return std::max(1u, tc_.options.tcp.in_flight_per_connection); }

  task<> writer(connection& c, session& sn) {
    std::array<std::array<std::byte, tcp::frame_header::size>, max_gather> headers;
    std::vector<std::array<std::byte, tcp::frame_header::size>> fence_headers;
    std::vector<::iovec> iov;
    iov.reserve(2 * max_gather);
    while (!sn.broken && !c.queue.empty() && sn.in_flight.size() < limit()) {
      iov.clear();
      if (c.fences->count.load(std::memory_order_acquire) != 0)
        add_fences(c, sn, fence_headers, iov);
      std::size_t n = 0;
      while (n < max_gather && !c.queue.empty() && sn.in_flight.size() < limit()) {
        slice* s = c.queue.front();
        c.queue.pop_front();
        if (s->batch->aborted()) {
          finish(c, s, error(errc::cancelled, "tcp"));
          continue;
        }
        s->wire_id = ++c.next_wire_id;
        tcp::frame_header h;
        h.type = s->op == transfer_op::write ? tcp::frame_type::write : tcp::frame_type::read;
        h.request_id = s->wire_id;
        h.offset = s->remote_offset;
        h.length = s->length;
        tcp::encode(h, headers[n]);
        iov.push_back({headers[n].data(), headers[n].size()});
        if (s->op == transfer_op::write)
          iov.push_back({s->local, s->length});
        if (sn.in_flight.empty())
          sn.last_progress = clock::now();
        sn.in_flight.push_back({s});
        ++n;
      }
      if (iov.empty())
        continue;
      auto sent = co_await sn.sock.send_all(iov);
      if (!sent) {
        break_session(c, sn, sent.error());
        break;
      }
      sn.last_progress = clock::now(); // why: a long send is progress too; only silence counts as a stall
    }
    if (c.current == &sn)
      c.writing = false;
    release(c, sn);
  }

  /// Puts a fence at the head of `iov` for each connection of the peer given up with writes in flight that
  /// this session has not fenced yet: the owner serves what follows only once those have ended there.
  void add_fences(connection& c, session& sn,
                  std::vector<std::array<std::byte, tcp::frame_header::size>>& raw,
                  std::vector<::iovec>& iov) {
    raw.clear();
    std::vector<std::uint64_t> tags = c.fences->pending();
    std::erase_if(tags, [&](std::uint64_t t) {
      return std::find(sn.fences_sent.begin(), sn.fences_sent.end(), t) != sn.fences_sent.end();
    });
    raw.resize(tags.size()); // why: sized once, so that the iovecs below keep pointing at the headers
    for (std::size_t i = 0; i < tags.size(); ++i) {
      tcp::frame_header h;
      h.type = tcp::frame_type::fence;
      h.request_id = ++c.next_wire_id;
      h.offset = tags[i];
      tcp::encode(h, raw[i]);
      iov.push_back({raw[i].data(), raw[i].size()});
      if (sn.in_flight.empty())
        sn.last_progress = clock::now();
      sn.in_flight.push_back({nullptr, tags[i], h.request_id});
      sn.fences_sent.push_back(tags[i]);
    }
  }

  task<> reader(connection& c, session& sn) {
    tcp::detail::read_ahead in; // reply headers already received (several replies are often waiting)
    const bool away = c.at->loop != &tc_.io;
    while (!sn.broken) {
      if (away && in.size() < tcp::frame_header::size && !sn.done.empty())
        hold_or_hand_back(c, sn); // about to wait for the next reply
      auto got = co_await in.fill(sn.sock, tcp::frame_header::size);
      if (sn.broken)
        break;
      if (!got) {
        break_session(c, sn, got.error());
        break;
      }
      auto h = tcp::decode_header(in.take_header());
      if (!h) {
        break_session(c, sn, h.error());
        break;
      }
      if (sn.in_flight.empty()) {
        break_session(c, sn, error(errc::malformed_frame, "tcp: a reply to no request"));
        break;
      }
      if (outstanding f = sn.in_flight.front(); !f.s) {
        // a fence: the connection it named has ended at the owner
        if (h->type != tcp::frame_type::fence_reply || h->request_id != f.fence_id || h->status != 0) {
          break_session(c, sn, error(errc::malformed_frame, "tcp: reply does not match the fence"));
          break;
        }
        c.fences->confirm(f.fence_tag);
        sn.in_flight.pop_front();
        sn.last_progress = clock::now();
        kick(c);
        continue;
      }
      slice* s = sn.in_flight.front().s;
      auto expected =
          s->op == transfer_op::write ? tcp::frame_type::write_reply : tcp::frame_type::read_reply;
      if (h->request_id != s->wire_id || h->type != expected ||
          (h->type == tcp::frame_type::read_reply && h->status == 0 && h->length != s->length)) {
        break_session(c, sn, error(errc::malformed_frame, "tcp: reply does not match the request"));
        break;
      }
      if (h->payload_length() > 0) {
        // why: about to wait for a payload, which may take long (64 MiB over a slow link): replies already
        // finished, perhaps of other batches, are handed back on time meanwhile, not after it
        if (away && !sn.done.empty())
          hold_or_hand_back(c, sn);
        auto body = co_await in.take(sn.sock, std::span(s->local, s->length));
        if (sn.broken)
          break; // released below, after the kernel is done with s->local
        if (!body) {
          break_session(c, sn, body.error());
          break;
        }
      }
      std::int32_t status = h->status;
      if (h->flags == tcp::frame_header::status_follows) {
        // why: the owner sent the payload before it knew whether all of it could be read (a file region
        // read in pieces); the read's outcome follows, and bytes that came without it are not the region's
        sn.last_progress = clock::now();
        auto more = co_await in.fill(sn.sock, tcp::frame_header::size);
        if (sn.broken)
          break;
        if (!more) {
          break_session(c, sn, more.error());
          break;
        }
        auto end = tcp::decode_header(in.take_header());
        if (!end) {
          break_session(c, sn, end.error());
          break;
        }
        if (end->type != tcp::frame_type::read_reply || end->request_id != s->wire_id || end->flags != 0 ||
            end->length != 0) {
          break_session(c, sn,
                        error(errc::malformed_frame, "tcp: a read's status does not follow its payload"));
          break;
        }
        status = end->status;
      }
      sn.in_flight.pop_front();
      sn.last_progress = clock::now();
      error outcome =
          status == 0 ? error{} : error(std::error_code(status, ferry_category()), "tcp: target refused");
      if (away) {
        sn.done.emplace_back(s, std::move(outcome));
        sn.done_bytes += s->length;
      } else {
        finish(c, s, std::move(outcome));
      }
      kick(c);
    }
    hand_back_held(sn);
    release(c, sn);
  }

  // why: every hand-back wakes the engine's thread, and with small slices over one connection that wake-up
  // per reply costs more than the transfer gains from the thread. Replies are handed back once 1 MiB of them
  // is held, once nothing is in flight (so no batch waits on them), or at the latest `hand_back_delay` later.
  static constexpr std::uint64_t hand_back_bytes = 1 << 20;
  static constexpr auto hand_back_delay = std::chrono::microseconds(200);

  void hold_or_hand_back(connection& c, session& sn) {
    if (sn.in_flight.empty() || sn.done_bytes >= hand_back_bytes) {
      hand_back_held(sn);
    } else if (!sn.hand_back_armed) {
      sn.hand_back_armed = true;
      ++sn.users;
      c.at->scope->spawn(hand_back_later(c, sn));
    }
  }
  void hand_back_held(session& sn) {
    hand_back(sn.done);
    sn.done_bytes = 0;
  }
  task<> hand_back_later(connection& c, session& sn) {
    co_await c.at->loop->sleep_for(hand_back_delay, stop_.get_token());
    sn.hand_back_armed = false;
    hand_back_held(sn);
    release(c, sn);
  }

  /// Marks `sn` broken; if it is still the connection's current session, detaches it, and queued slices go
  /// to a fresh connection. A session that was already replaced leaves its successor alone.
  void break_session(connection& c, session& sn, error reason) {
    if (!sn.broken) {
      sn.broken = true;
      sn.reason = reason;
      sn.sock.shutdown();
      // why: a write sent and not answered may still land at the owner, whenever what holds it up lets go;
      // before this is settled (and retried), the peer's next requests are made to follow a fence of it
      if (std::any_of(sn.in_flight.begin(), sn.in_flight.end(),
                      [](const outstanding& o) { return o.s && o.s->op == transfer_op::write; }))
        c.fences->add(sn.tag);
    }
    if (c.current != &sn)
      return;
    c.current = nullptr;
    c.writing = false;
    if (!c.queue.empty() && !c.connecting && !stopping_ && !c.retired) {
      c.connecting = true;
      c.at->scope->spawn(connect(c));
    } else if (stopping_) {
      fail_queued(c, error(errc::cancelled, "tcp: engine shutting down"));
    }
  }
  void break_current(connection& c, error reason) {
    if (c.current)
      break_session(c, *c.current, reason);
  }

  /// The last user of a session settles what it still holds and closes it.
  void release(connection& c, session& sn) {
    if (--sn.users > 0)
      return;
    hand_back(sn.done); // replies held to be handed back (none once the reader has ended)
    std::vector<slice*> pending;
    for (const outstanding& o : sn.in_flight)
      if (o.s)
        pending.push_back(o.s);
    error reason = sn.broken ? sn.reason : error(errc::closed, "tcp");
    sn.sock.close();
    delete &sn;
    --c.sessions;
    finish_all(c, pending, reason);
    reclaim_if_idle(c);
  }

  /// Drops the connections of `h` that have requests outstanding and have not answered within the reply
  /// timeout.
  task<> sweep(home& h) {
    auto timeout = tc_.options.tcp.reply_timeout;
    auto every =
        std::clamp<clock::duration>(timeout / 4, std::chrono::milliseconds(10), std::chrono::seconds(1));
    while (!stopping_) {
      auto slept = co_await h.loop->sleep_for(every, stop_.get_token());
      if (!slept)
        break;
      auto now = clock::now();
      for (connection* c : snapshot(h)) {
        session* sn = c->current;
        if (!sn || sn->in_flight.empty())
          continue;
        // why: the owner answers a fence once the connection it names has ended, which it waits for up to its
        // stall timeout (as long as a reply timeout by default): give a fence twice the time before giving up
        auto allowed = sn->in_flight.front().s ? timeout : 2 * timeout;
        if (now - sn->last_progress <= allowed / 2)
          continue;
        // why: a reply that is long in coming may still be on its way, or a long send still going out (a
        // 64 MiB slice, or eight of them gathered, over a slow or shared link): as long as the stream moves,
        // the target is alive. The first reading has nothing to compare with and counts as progress.
        std::uint64_t moved = sn->sock.bytes_moved();
        if (io::progress::moved(sn->bytes_seen, moved, tcp::detail::least_progress)) {
          sn->bytes_seen = moved;
          sn->last_progress = now;
          continue;
        }
        if (now - sn->last_progress > allowed)
          break_current(*c, error(errc::timed_out,
                                  "tcp: no reply from the target, and hardly a byte moved either way"));
      }
    }
  }

  /// A tag for a new connection: unique to it among this process's connections, never 0.
  std::uint64_t next_tag() {
    std::uint64_t t = tag_base_ + tag_count_.fetch_add(1, std::memory_order_relaxed);
    return t != 0 ? t : next_tag();
  }

  transport_context& tc_;
  std::unordered_map<segment_id, peer_state> peers_;
  std::unordered_map<segment_id, std::shared_ptr<fence_book>> fence_books_;
  // why: random, so that the tags of different initiators (and of this one before a restart) hardly ever meet
  std::uint64_t tag_base_ = (std::uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  std::atomic<std::uint64_t> tag_count_{1};
  std::vector<peer_state> retired_;
  std::unordered_map<segment_id, std::unique_ptr<control_channel>> controls_;
  std::vector<std::unique_ptr<home>> homes_; // set up with the first peer
  std::size_t next_home_ = 0;
  // Slices that connections on other loops finished, waiting to be settled on the engine's loop.
  std::mutex finished_mutex_;
  finished_slices finished_;
  bool finished_scheduled_ = false;
  // Slices handed to loops of their own and not settled yet. While there are some, the engine's loop is kept
  // running (run() returns when nothing is left to do, and their completion is still to come).
  std::size_t away_ = 0;
  std::optional<io::io_context::work_guard> busy_;
  std::atomic<bool> stopping_{false};
  std::stop_source stop_;
};

} // namespace ferry
