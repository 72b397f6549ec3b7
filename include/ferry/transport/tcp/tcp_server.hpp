#pragma once
/// `ferry::tcp_server`: the owner's side of the TCP transport. It accepts connections and serves each one's
/// requests in order: descriptor handshakes, reads and writes checked against the registry (bounds and
/// permissions, for every request), notifications and pings. Writes are received straight into the region and
/// reads sent straight from it; the headers of requests already waiting are taken with one receive and the
/// reads among them answered with one send. A connection that sends anything malformed is dropped; the others
/// carry on. File regions (region_registry::add_file) are served too (remote file segments), through a
/// staging buffer, at most `file_piece` bytes at a time: a write is received and written to the file piece by
/// piece, a read is read from the file and sent piece by piece.
/// Given an io_context_pool, the server serves each connection it accepts on one of the pool's loops, so that
/// the receives and sends of several connections (and the copies the kernel makes in them) use several cores;
/// the hooks and file regions are still served on the server's own loop.
/// A fence (tcp::frame_type::fence) from an initiator names the tag of one of its connections that it gave up
/// on: the server ends that connection, waits until nothing it received can still land, and only then answers
/// and serves what follows the fence. An abandoned write that was still waiting in the kernel, or stalled in
/// the middle of its payload, can then never overwrite a write the initiator made after it.
///
///   ferry::tcp_server server(ctx, registry, scope, hooks);
///   auto where = server.listen(*ferry::io::endpoint::parse("127.0.0.2:0"));

#include "ferry/core/async_scope.hpp"
#include "ferry/core/detail/steady_ns.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/aligned_buffer.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/io_context_pool.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/region_registry.hpp"
#include "ferry/transport/tcp/detail/keep_alive.hpp"
#include "ferry/transport/tcp/detail/progress.hpp"
#include "ferry/transport/tcp/detail/read_ahead.hpp"
#include "ferry/transport/tcp/detail/recent_ids.hpp"
#include "ferry/transport/tcp/frame.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <poll.h>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <sys/uio.h>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace ferry {

class tcp_server {
public:
  /// What the server asks of the engine that owns it.
  struct hooks {
    /// The current segment descriptor, as JSON (the handshake's answer).
    std::function<std::string()> descriptor;
    /// A notification arrived; false if it cannot be taken now (the sender is told errc::out_of_space).
    std::function<bool(std::string message)> notified;
  };

  /// Serves on `io`, or, given `connection_loops`, each accepted connection on one of its loops (the pool
  /// must outlive the work spawned into `scope`). A peer that stalls for `stall_timeout` in the middle of a
  /// request (its payload, or taking the replies) is dropped, releasing what the request held in use;
  /// accepted connections send keepalives after `keepalive_idle` without traffic (0: the system's setting).
  /// A connection must send its first request within `stall_timeout` of being accepted; at most
  /// `max_connections` are served at once (0: RLIMIT_NOFILE less an eighth, at least 64, kept for the rest of
  /// the process). One accepted beyond takes the place of the served connection that has waited longest for
  /// its next request, if that one has waited `evict_idle_after` at least (it is closed; its peer connects
  /// again when it needs it); else the new one is refused (see refused_connections()).
  tcp_server(io::io_context& io, region_registry& registry, async_scope& scope, hooks h,
             io::io_context_pool* connection_loops = nullptr,
             std::chrono::milliseconds stall_timeout = std::chrono::seconds(10),
             std::chrono::seconds keepalive_idle = std::chrono::seconds(30), std::size_t max_connections = 0,
             std::chrono::milliseconds evict_idle_after = std::chrono::seconds(1))
      : io_(io), registry_(registry), scope_(scope), hooks_(std::move(h)), loops_(connection_loops),
        stall_timeout_(stall_timeout), keepalive_idle_(keepalive_idle),
        max_connections_(max_connections ? max_connections : most_descriptors_to_serve()),
        evict_idle_after_(evict_idle_after) {}
  tcp_server(const tcp_server&) = delete;
  tcp_server& operator=(const tcp_server&) = delete;

  /// Starts listening on `at` and accepting in the background; yields the address actually bound. The
  /// connections accepted use `congestion_control` (empty: the system's default).
  result<io::endpoint> listen(const io::endpoint& at, std::string_view congestion_control = {}) {
    auto l = io::tcp_listener::listen(io_, at);
    if (!l)
      return fail(l.error());
    if (!congestion_control.empty())
      if (auto set = l->set_congestion_control(congestion_control); !set)
        return fail(set.error());
    listener_ = std::move(*l);
    auto where = listener_.local_endpoint();
    if (!where)
      return where;
    scope_.spawn(accept_loop());
    return where;
  }

  /// Stops accepting and drops every connection.
  void stop() {
    stop_.request_stop();
    listener_.close();
    std::lock_guard lock(sessions_mutex_);
    for (auto* s : sessions_)
      s->sock->shutdown();
  }

  /// Connections being served now.
  std::size_t connections() const {
    std::lock_guard lock(sessions_mutex_);
    return sessions_.size();
  }
  /// The most connections served at once.
  std::size_t max_connections() const noexcept { return max_connections_; }
  /// Connections refused as they were accepted, because max_connections() were being served and none of them
  /// had been idle long enough to give its place up: their first request is answered errc::busy (or, beyond
  /// a few refusals at a time, the connection is closed at once), and they are closed.
  std::uint64_t refused_connections() const noexcept { return refused_.load(std::memory_order_relaxed); }
  /// Idle connections closed to make room for new ones at max_connections().
  std::uint64_t evicted_connections() const noexcept { return evicted_.load(std::memory_order_relaxed); }

  /// The most a connection stages of a file region's data at once: larger requests move in pieces.
  static constexpr std::uint64_t file_piece = 1ull << 20;

  /// Bytes that the connections being served hold to stage file regions' data (at most file_piece each).
  std::uint64_t staging_bytes() const noexcept { return staging_bytes_.load(std::memory_order_relaxed); }

private:
  // A connection being served, as other connections see it: fences look it up by its tag.
  struct served_connection {
    io::tcp_socket* sock;
    std::uint64_t tag = 0;            // from its hello; 0: none (under sessions_mutex_)
    std::atomic<bool> fenced = false; // a fence named it, or it was evicted: it serves nothing more
    // Since when (steady clock, ns) it has waited for its next request; 0: it is serving one (or has not had
    // its first); evicted: it gave its place up. Whoever changes it from a time wins.
    std::atomic<std::int64_t> idle_since{0};
    static constexpr std::int64_t evicted = -1;
  };

  static constexpr auto accept_backoff = std::chrono::milliseconds(50);
  /// Notification bytes being received at once, over all connections.
  static constexpr std::uint64_t max_receiving_notification_bytes = 16ull << 20;

  /// A share of what notifications being received may hold, given back when it goes.
  struct notification_budget {
    std::atomic<std::uint64_t>& in_use;
    std::uint64_t bytes;
    bool granted;
    notification_budget(std::atomic<std::uint64_t>& pool, std::uint64_t n)
        : in_use(pool), bytes(n), granted(pool.fetch_add(n) + n <= max_receiving_notification_bytes) {
      if (!granted) // why: a refused message is read past through a small buffer; it holds no share
        in_use.fetch_sub(std::exchange(bytes, 0));
    }
    notification_budget(const notification_budget&) = delete;
    notification_budget& operator=(const notification_budget&) = delete;
    ~notification_budget() { in_use.fetch_sub(bytes); }
  };

  static bool out_of_resources(const error& e) noexcept {
    // why: the category by address and the errno values as they are: comparing with std::errc, or categories
    // with ==, is a call on a polymorphic object, whose type UBSan checks through a pipe, which a process
    // out of descriptors cannot open
    const std::error_code& c = e.code();
    int v = c.value();
    return &c.category() == &std::system_category() &&
           (v == EMFILE || v == ENFILE || v == ENOBUFS || v == ENOMEM);
  }

  /// Reads `length` bytes of a payload that is refused, through `scratch`, so the stream stays in step.
  static task<result<void>> read_past(tcp::detail::read_ahead& in, io::tcp_socket& sock,
                                      std::vector<std::byte>& scratch, std::uint64_t length,
                                      std::stop_token stop) {
    scratch.resize(static_cast<std::size_t>(std::min<std::uint64_t>(length, 256 * 1024)));
    for (std::uint64_t left = length; left > 0;) {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, scratch.size()));
      if (auto ok = co_await in.take(sock, std::span(scratch).first(n), stop); !ok)
        co_return ok;
      left -= n;
    }
    co_return result<void>{};
  }

  task<> accept_loop() {
    while (!stop_.stop_requested()) {
      auto s = co_await listener_.accept(stop_.get_token());
      if (!s) {
        if (stop_.stop_requested() || !listener_.is_open())
          co_return;
        // why: out of descriptors or memory, the connection stays queued and the listener stays readable:
        // accepting again at once would spin on the loop; the process gets a moment to close some first
        if (out_of_resources(s.error())) {
          if (auto slept = co_await io_.sleep_for(accept_backoff, stop_.get_token()); !slept)
            co_return;
        }
        continue; // a connection reset before accept, say: keep serving
      }
      if (connections() >= max_connections_ && !evict_idlest()) {
        // why: not left in the backlog: the peer learns now, and why; the process keeps descriptors for
        // everything else it does (a few refusals at a time, each for a moment; beyond, a bare close)
        refused_.fetch_add(1, std::memory_order_relaxed);
        if (refusing_ < most_refusing_at_once)
          scope_.spawn(refuse(std::move(*s)));
        else
          s->close();
        continue;
      }
      tcp::detail::keep_alive(*s, keepalive_idle_);
      scope_.spawn(serve(std::move(*s)));
    }
  }

  /// Answers the first request of a connection accepted beyond the most served with errc::busy, and closes
  /// it: its peer learns why it is not served, rather than finding the connection closed, which it would take
  /// for a broken one. A peer that says nothing within refusal_patience gets the close alone.
  task<> refuse(io::tcp_socket sock) {
    ++refusing_;
    io::deadline within(io_, std::min(stall_timeout_, refusal_patience), stop_.get_token());
    std::array<std::byte, tcp::frame_header::size> raw;
    if (auto got = co_await sock.recv_all(raw, within.token()); got) {
      auto h = tcp::decode_header(raw);
      // why: only a request with no payload behind it (every peer's first, a hello, is one): unread bytes
      // would make the close a reset, which can destroy the answer before the peer reads it
      if (h && static_cast<int>(h->type) % 2 == 1 && h->payload_length() == 0) {
        tcp::frame_header answer;
        answer.type = static_cast<tcp::frame_type>(static_cast<int>(h->type) + 1);
        answer.request_id = h->request_id;
        answer.offset = h->offset;
        answer.status = static_cast<std::int32_t>(errc::busy);
        tcp::encode(answer, raw);
        if (auto sent = co_await sock.send_all(raw, within.token()); sent)
          (void)sock.shutdown(SHUT_WR); // why: a FIN after the answer, so the peer reads it before the end
      }
    }
    sock.close();
    --refusing_;
  }

  /// Closes the served connection that has waited longest for its next request, if it has waited
  /// evict_idle_after_ at least; true if one was. The new connection then takes its place (the count is one
  /// over until the evicted one has ended on its loop).
  // why: peers keep their connections open between transfers; with many peers, most of the connections at
  // the limit are idle, and a new peer should not be refused for them. An evicted peer reconnects when it
  // needs the connection again, as after any connection that broke.
  bool evict_idlest() {
    // why: a wait longer than a steady clock of nanoseconds spans (centuries) is "never", as max() is
    if (evict_idle_after_ >=
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::hours(24 * 365 * 100)))
      return false;
    const std::int64_t latest =
        ferry::detail::steady_ns() -
        std::chrono::duration_cast<std::chrono::nanoseconds>(evict_idle_after_).count();
    std::lock_guard lock(sessions_mutex_);
    std::vector<std::pair<std::int64_t, served_connection*>> idle;
    for (auto* c : sessions_)
      if (std::int64_t t = c->idle_since.load(std::memory_order_acquire); t > 0 && t <= latest)
        idle.emplace_back(t, c);
    std::sort(idle.begin(), idle.end());
    for (auto [since, c] : idle) {
      // why: one whose next request has arrived, and that has not woken to it yet, is not idle: closing it
      // would cost its peer a retry
      ::pollfd p{c->sock->native_handle(), POLLIN, 0};
      if (::poll(&p, 1, 0) != 0)
        continue;
      // why: it may be taking a request right now; then it keeps serving, and the next is tried
      if (!c->idle_since.compare_exchange_strong(since, served_connection::evicted,
                                                 std::memory_order_acq_rel))
        continue;
      c->fenced.store(true, std::memory_order_release);
      c->sock->shutdown(); // why: wakes it where it waits; it ends on its own loop
      evicted_.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    return false;
  }

  task<> serve(io::tcp_socket sock) {
    // why: while the connection is served on another loop, this one may have nothing in flight; its run()
    // must not return before the connection comes back here to end
    io::io_context::work_guard keep(io_);
    served_connection me{&sock};
    {
      std::lock_guard lock(sessions_mutex_);
      sessions_.push_back(&me);
    }
    io::io_context* home = &io_;
    if (loops_) {
      home = &loops_->next();
      sock.move_to(*home);
      co_await home->schedule();
    }
    std::exception_ptr failed; // why: whatever happens, the socket closes on its loop and this ends on io_
    try {
      co_await serve_requests(me, *home);
    } catch (...) {
      failed = std::current_exception();
    }
    {
      // why: after this, stop() no longer touches the socket, which closes on the loop that served it; and a
      // fence that waits for this connection sees it gone only now, when nothing it received can land any
      // more
      std::lock_guard lock(sessions_mutex_);
      std::erase(sessions_, &me);
    }
    sock.close();
    // why: the scope's last finisher resumes whoever joins it: end on the server's loop
    if (home != &io_)
      co_await io_.schedule();
    if (failed)
      std::rethrow_exception(failed);
  }

  /// Continues on the server's own loop, where the hooks and file regions are served (no-op when `home` is
  /// it).
  task<> to_own_loop(io::io_context& home) {
    if (&home != &io_)
      co_await io_.schedule();
  }
  /// Continues on `home` again.
  static task<> back_to(io::io_context& home) {
    if (!home.running_in_this_thread())
      co_await home.schedule();
  }
  template<class T>
  struct is_task : std::false_type {};
  template<class T>
  struct is_task<task<T>> : std::true_type {};
  /// What `work` yields: its task's value, or its plain result.
  template<class R>
  using yielded_t = typename std::conditional_t<is_task<R>::value, R, task<R>>::value_type;
  /// Runs `work` on the server's own loop (a hook, or a file region's I/O, whose task it awaits there) and
  /// yields its result on `home` again. An exception it throws is rethrown on `home` too: what the
  /// connection's coroutines hold there (its deadlines, its socket) must unwind on the loop they belong to.
  template<class Work, class R = std::invoke_result_t<Work&>>
  task<yielded_t<R>> on_own_loop(io::io_context& home, Work work) {
    co_await to_own_loop(home);
    std::optional<yielded_t<R>> out;
    std::exception_ptr thrown;
    try {
      if constexpr (is_task<R>::value)
        out.emplace(co_await work());
      else
        out.emplace(work());
    } catch (...) {
      thrown = std::current_exception();
    }
    co_await back_to(home);
    if (thrown)
      std::rethrow_exception(thrown);
    co_return std::move(*out);
  }

  // Replies waiting to be sent together: headers, payloads, and the leases that keep those payloads valid.
  // why: a client keeps several requests in flight per connection; the reads among the requests already
  // received are answered with one send, which saves a system call and a turn of the loop per reply.
  struct pending_replies {
    static constexpr std::size_t max_replies = 16;
    std::array<std::array<std::byte, tcp::frame_header::size>, max_replies> headers;
    std::array<::iovec, 2 * max_replies> iov;
    std::size_t count = 0, iov_count = 0;
    std::vector<region_registry::lease> leases;
  };

  static void queue(pending_replies& p, const tcp::frame_header& h, const void* payload, std::size_t length) {
    tcp::encode(h, p.headers[p.count]);
    p.iov[p.iov_count++] = {p.headers[p.count].data(), tcp::frame_header::size};
    if (length)
      p.iov[p.iov_count++] = {const_cast<void*>(payload), length};
    ++p.count;
  }

  task<bool> flush(io::tcp_socket& sock, pending_replies& p, io::io_context& home) {
    if (p.count == 0)
      co_return true;
    std::optional<io::deadline> within;
    auto sent = co_await sock.send_all(std::span<const ::iovec>(p.iov.data(), p.iov_count),
                                       bounded(within, sock, home));
    p.count = p.iov_count = 0;
    p.leases.clear();
    co_return sent.has_value();
  }

  /// A token that stops once this step of a request went on for stall_timeout with the connection moving
  /// less than tcp::detail::least_progress either way.
  // why: a peer that sends a header and then nothing, or stops reading our replies (a zero window is probed
  // for ever), would otherwise hold the memory the request addressed in use for good: the region could
  // never be unregistered. Progress, not the whole step, is what is bounded: a 64 MiB payload, or a send of
  // sixteen such read replies, over a slow or shared link may take far longer than the timeout and still
  // be moving.
  std::stop_token bounded(std::optional<io::deadline>& within, io::tcp_socket& sock, io::io_context& home) {
    // why: no parent token: stop() shuts the sockets down anyway, and linking every request's deadline to the
    // server's one stop source would have every connection's thread take that source's lock per request
    within.emplace(home, stall_timeout_, tcp::detail::progress_of(sock));
    return within->token();
  }

  /// Ends the connection tagged `tag` (not `me`) and waits until it has ended; false if it did not within the
  /// stall timeout. A tag no connection carries (it ended, or never reached this process) is fenced already.
  task<bool> fence(std::uint64_t tag, served_connection& me, io::io_context& home) {
    if (tag == 0)
      co_return true;
    auto give_up = std::chrono::steady_clock::now() + stall_timeout_;
    for (;;) {
      {
        std::lock_guard lock(sessions_mutex_);
        auto it = std::find_if(sessions_.begin(), sessions_.end(),
                               [&](served_connection* s) { return s != &me && s->tag == tag; });
        if (it == sessions_.end())
          co_return true;
        if (!(*it)->fenced.exchange(true))
          (*it)->sock->shutdown(); // why: wakes it wherever it waits; bytes already received are still read
      }
      // why: two connections fencing each other would otherwise each wait for the other until the timeout
      if (std::chrono::steady_clock::now() >= give_up || me.fenced.load(std::memory_order_acquire) ||
          stop_.stop_requested())
        co_return false;
      // why: a fence is rare (an initiator gave up a connection); polling keeps the serving path free of it
      co_await home.sleep_for(std::chrono::milliseconds(1), stop_.get_token());
    }
  }

  task<> serve_requests(served_connection& me, io::io_context& home) {
    io::tcp_socket& sock = *me.sock;
    std::array<std::byte, tcp::frame_header::size> out;
    std::vector<std::byte> scratch;
    staging_buffer staging(staging_bytes_); // file regions: what travels between the socket and the file
    tcp::detail::read_ahead in;             // request headers already received
    pending_replies replies;
    bool first = true; // why: a peer that connects and says nothing holds a descriptor; it gets stall_timeout
    while (!stop_.stop_requested() && !me.fenced.load(std::memory_order_acquire)) {
      // why: replies wait only while more requests are already here; before waiting for the peer, send them
      if (in.size() < tcp::frame_header::size || replies.count == pending_replies::max_replies) {
        bool sent = co_await flush(sock, replies, home);
        if (!sent)
          co_return;
      }
      // why: a peer may stay idle between requests as long as it likes, but one that sent part of a header
      // and then nothing is stalled in a request, and is dropped after the stall timeout like the others
      if (in.size() == 0 && !first) {
        std::int64_t since = ferry::detail::steady_ns();
        me.idle_since.store(since, std::memory_order_release);
        auto some = co_await in.fill(sock, 1);
        // why: a connection evicted meanwhile serves nothing more, even a request that had arrived: its peer
        // sees the connection end and sends the request again on another
        if (!me.idle_since.compare_exchange_strong(since, 0, std::memory_order_acq_rel) || !some)
          co_return; // evicted, closed, reset or stopped
      }
      first = false;
      std::optional<io::deadline> header_within;
      std::stop_token header_stop;
      if (in.size() < tcp::frame_header::size)
        header_stop = bounded(header_within, sock, home);
      auto got = co_await in.fill(sock, tcp::frame_header::size, header_stop);
      if (!got)
        co_return; // closed, reset, stopped or stalled
      auto raw = in.take_header();
      auto h = tcp::decode_header(raw);
      if (!h && h.error() == errc::version_mismatch) {
        // why: a peer that speaks another version of the protocol is told so, in a header of this version
        // (whose version byte its decoder refuses with its own version_mismatch), instead of finding the
        // connection closed, which it would take for a broken one and retry
        co_await flush(sock, replies, home);
        tcp::frame_header refusal;
        refusal.type = tcp::frame_type::hello_reply;
        refusal.request_id = tcp::detail::get_le(raw.data() + 16, 8);
        refusal.status = static_cast<std::int32_t>(errc::version_mismatch);
        std::optional<io::deadline> within;
        (void)co_await send(sock, refusal, out, nullptr, 0, bounded(within, sock, home));
        co_return;
      }
      if (!h || static_cast<int>(h->type) % 2 == 0) {
        co_await flush(sock, replies, home);
        co_return; // malformed, or a reply: drop the connection
      }
      // why: a fence named this connection while its requests were already here: none of them may land now
      if (me.fenced.load(std::memory_order_acquire))
        co_return;
      tcp::frame_header reply;
      reply.type = static_cast<tcp::frame_type>(static_cast<int>(h->type) + 1);
      reply.request_id = h->request_id;
      reply.offset = h->offset;
      std::optional<region_registry::lease> file_lease; // a read of a file region
      if (h->type == tcp::frame_type::read) {
        auto lease = registry_.pin_exposed(h->offset, h->length, access::read, true);
        if (lease && !lease->file()) {
          // Memory: sent straight from the region, together with the replies around it.
          reply.length = h->length;
          queue(replies, reply, lease->data(), h->length);
          replies.leases.push_back(std::move(*lease));
          continue;
        }
        if (!lease) {
          reply.status = status_of(lease.error());
          queue(replies, reply, nullptr, 0);
          continue;
        }
        file_lease.emplace(std::move(*lease));
      }
      // Everything else is answered in order, after the replies before it.
      bool flushed = co_await flush(sock, replies, home);
      if (!flushed)
        co_return;
      std::optional<io::deadline> within;
      std::stop_token step = bounded(within, sock, home);
      switch (h->type) {
      case tcp::frame_type::hello: {
        if (h->offset != 0) {
          std::lock_guard lock(sessions_mutex_);
          me.tag = h->offset;
        }
        std::string d = co_await on_own_loop(home, [this] { return hooks_.descriptor(); });
        step = bounded(within, sock, home); // why: the server's own work is no stall of the peer
        if (d.size() > tcp::frame_header::max_descriptor_payload) { // why: no peer would take it; say why
          reply.status = static_cast<std::int32_t>(errc::out_of_space);
          d.clear();
        }
        reply.length = d.size();
        if (auto ok = co_await send(sock, reply, out, d.data(), d.size(), step); !ok)
          co_return;
        break;
      }
      case tcp::frame_type::ping:
        if (auto ok = co_await send(sock, reply, out, nullptr, 0, step); !ok)
          co_return;
        break;
      case tcp::frame_type::fence: {
        bool ended = co_await fence(h->offset, me, home);
        // why: what follows the fence on this connection must not be served before it: drop it instead
        if (!ended)
          co_return;
        step = bounded(within, sock, home); // why: the wait above may have used most of the first deadline
        if (auto ok = co_await send(sock, reply, out, nullptr, 0, step); !ok)
          co_return;
        break;
      }
      case tcp::frame_type::notify: {
        // why: the engine bounds the notifications it keeps, but not those still arriving, each of which
        // would hold its buffer for as long as its sender stalls: those are bounded here, all connections
        // together; beyond, a message is read past and refused
        notification_budget held(receiving_notification_bytes_, h->length);
        if (!held.granted) {
          reply.status = static_cast<std::int32_t>(errc::out_of_space);
          if (auto ok = co_await read_past(in, sock, scratch, h->length, step); !ok)
            co_return;
        } else {
          std::string message(h->length, '\0');
          if (auto ok = co_await in.take(sock, std::as_writable_bytes(std::span(message)), step); !ok)
            co_return;
          const std::uint64_t id = h->offset;
          bool taken = co_await on_own_loop(home, [this, &message, id] {
            if (id != 0 && delivered_notices_.contains(id))
              return true; // sent again after its answer was lost: delivered once already
            bool ok = !hooks_.notified || hooks_.notified(std::move(message));
            if (ok && id != 0)
              delivered_notices_.remember(id);
            return ok;
          });
          step = bounded(within, sock, home);
          if (!taken)
            reply.status = static_cast<std::int32_t>(errc::out_of_space);
        }
        if (auto ok = co_await send(sock, reply, out, nullptr, 0, step); !ok)
          co_return;
        break;
      }
      case tcp::frame_type::write: {
        auto lease = registry_.pin_exposed(h->offset, h->length, access::write, true);
        if (lease && lease->file()) {
          std::optional<error> failed;
          for (std::uint64_t done = 0; done < h->length;) {
            const std::uint64_t at = lease->file_offset() + done;
            auto piece = staging.hold(piece_at(at, h->length - done));
            if (auto ok = co_await in.take(sock, piece, step); !ok)
              co_return;
            // why: after a piece failed, the rest of the payload is still taken (the stream stays in step)
            // and the write refused with the first error
            if (!failed) {
              auto written = co_await on_own_loop(
                  home, [&] { return lease->file()->write(at, piece, stop_.get_token()); });
              if (!written)
                failed = written.error();
            }
            // why: the stall timeout bounds each piece, not the whole request; and the time the file took is
            // the server's, not a stall of the peer: the next piece (or the reply) gets a deadline of its own
            step = bounded(within, sock, home);
            done += piece.size();
          }
          if (failed)
            reply.status = status_of(*failed);
        } else if (lease) {
          if (auto ok = co_await in.take(sock, std::span(lease->data(), h->length), step); !ok)
            co_return;
        } else {
          // why: the payload is already on its way; consume it so the stream stays in step, then refuse.
          reply.status = status_of(lease.error());
          if (auto ok = co_await read_past(in, sock, scratch, h->length, step); !ok)
            co_return;
        }
        if (auto ok = co_await send(sock, reply, out, nullptr, 0, step); !ok)
          co_return;
        break;
      }
      case tcp::frame_type::read: {
        // A file region: read from the file into the staging buffer, then sent, a piece at a time. The first
        // piece is read before the reply goes, so that a file that fails at once is answered with its error,
        // and so is one that has shrunk below the range since it was registered. A read of more than one
        // piece says so in its reply, and its outcome follows the payload: a later piece that cannot be read
        // is answered with its error there, and the connection carries on.
        if (auto now = file_lease->file()->size_now(); now && *now < file_lease->file_offset() + h->length) {
          reply.status = static_cast<std::int32_t>(errc::out_of_bounds);
          if (auto ok = co_await send(sock, reply, out, nullptr, 0, step); !ok)
            co_return;
          break;
        }
        const bool in_pieces = piece_at(file_lease->file_offset(), h->length) < h->length;
        std::optional<error> failed;
        for (std::uint64_t done = 0; done < h->length;) {
          const std::uint64_t at = file_lease->file_offset() + done;
          auto piece = staging.hold(piece_at(at, h->length - done));
          if (!failed) {
            auto got = co_await on_own_loop(
                home, [&] { return file_lease->file()->read(at, piece, stop_.get_token()); });
            // why: the file's time is the server's, not a stall of the peer
            step = bounded(within, sock, home);
            if (!got && done != 0 && stop_.stop_requested())
              co_return; // why: the server is stopping; the peer sees the connection end
            if (!got)
              failed = got.error();
          }
          if (done == 0) {
            if (failed) {
              reply.status = status_of(*failed);
            } else {
              reply.length = h->length;
              reply.flags = in_pieces ? tcp::frame_header::status_follows : 0;
            }
            if (auto ok = co_await send(sock, reply, out, piece.data(), failed ? 0 : piece.size(), step); !ok)
              co_return;
            if (failed)
              break;
          } else {
            // why: the reply promised the whole length; after a piece that could not be read the rest is
            // sent as zeros, never as other bytes of this buffer, and the status that follows fails the read
            if (failed)
              std::memset(piece.data(), 0, piece.size());
            std::array<::iovec, 1> iov{::iovec{piece.data(), piece.size()}};
            if (auto ok = co_await sock.send_all(std::span(iov), step); !ok)
              co_return;
          }
          done += piece.size();
        }
        if (in_pieces && reply.status == 0) {
          tcp::frame_header outcome;
          outcome.type = tcp::frame_type::read_reply;
          outcome.request_id = h->request_id;
          outcome.offset = h->offset;
          outcome.status = failed ? status_of(*failed) : 0;
          if (auto ok = co_await send(sock, outcome, out, nullptr, 0, step); !ok)
            co_return;
        }
        break;
      }
      default:
        co_return;
      }
    }
  }

  static task<bool> send(io::tcp_socket& sock, const tcp::frame_header& h,
                         std::array<std::byte, tcp::frame_header::size>& buf, const void* payload,
                         std::size_t length, std::stop_token stop) {
    tcp::encode(h, buf);
    std::array<::iovec, 2> iov{::iovec{buf.data(), buf.size()}, ::iovec{const_cast<void*>(payload), length}};
    auto sent = co_await sock.send_all(std::span(iov.data(), length ? 2 : 1), std::move(stop));
    co_return sent.has_value();
  }

  /// The piece of a file region's request that starts at file offset `at`, `left` bytes before its end: up
  /// to the next multiple of file_piece, so that every piece after the first is aligned in the file.
  static std::uint64_t piece_at(std::uint64_t at, std::uint64_t left) noexcept {
    return std::min(left, file_piece - at % file_piece);
  }

  /// A connection's staging buffer, counted in the server's staging_bytes().
  class staging_buffer {
  public:
    explicit staging_buffer(std::atomic<std::uint64_t>& total) noexcept : total_(total) {}
    staging_buffer(const staging_buffer&) = delete;
    staging_buffer& operator=(const staging_buffer&) = delete;
    ~staging_buffer() { total_.fetch_sub(buffer_.size(), std::memory_order_relaxed); }
    /// `length` bytes (at most file_piece) of the buffer, grown to hold them.
    std::span<std::byte> hold(std::uint64_t length) {
      if (buffer_.size() < length) {
        io::aligned_buffer larger(static_cast<std::size_t>(length));
        total_.fetch_add(larger.size() - buffer_.size(), std::memory_order_relaxed);
        buffer_ = std::move(larger);
      }
      return buffer_.bytes().first(static_cast<std::size_t>(length));
    }

  private:
    std::atomic<std::uint64_t>& total_;
    io::aligned_buffer buffer_;
  };

  static std::int32_t status_of(const error& e) noexcept {
    // why: a status the peer's decoder knows (errc::internal is this process's own business)
    if (e.code().category() == ferry_category() && e.code().value() <= static_cast<int>(errc::short_transfer))
      return e.code().value();
    if (e.code() == std::errc::no_space_on_device) // a file region's disk is full
      return static_cast<std::int32_t>(errc::out_of_space);
    return static_cast<std::int32_t>(errc::invalid_state);
  }

  io::io_context& io_;
  region_registry& registry_;
  async_scope& scope_;
  hooks hooks_;
  io::io_context_pool* loops_;
  std::chrono::milliseconds stall_timeout_;
  std::chrono::seconds keepalive_idle_;
  std::size_t max_connections_;
  std::chrono::milliseconds evict_idle_after_;
  std::atomic<std::uint64_t> evicted_{0};
  std::atomic<std::uint64_t> refused_{0};
  /// The ids of the notifications delivered last (on the server's loop only).
  tcp::detail::recent_ids delivered_notices_;
  /// Refusals being answered now (on the server's loop only).
  std::size_t refusing_ = 0;
  static constexpr std::size_t most_refusing_at_once = 16;
  static constexpr auto refusal_patience = std::chrono::milliseconds(1000);
  io::tcp_listener listener_;
  std::stop_source stop_;
  static std::size_t most_descriptors_to_serve() noexcept {
    ::rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY)
      return std::size_t{1} << 20;
    auto limit = static_cast<std::size_t>(r.rlim_cur);
    auto kept = std::max<std::size_t>(limit / 8, 64);
    return limit > kept + 16 ? limit - kept : 16;
  }

  mutable std::mutex sessions_mutex_;
  std::vector<served_connection*> sessions_;
  std::atomic<std::uint64_t> receiving_notification_bytes_{0};
  std::atomic<std::uint64_t> staging_bytes_{0};
};

} // namespace ferry
