// Fences: a connection the initiator gave up while a write was in flight on it must not land that write at
// the owner after the write's retry, or after a later write to the same bytes. The owner's side is driven
// with raw frames; the initiator's through a proxy that holds back one connection's path while the others
// work.

#include "ferry/core/async_scope.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/transfer.hpp"

#include "../../support/raw_frames.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using ferry::access;
using ferry::errc;
using ferry::tcp::frame_type;
using ferry_test::header;
using ferry_test::raw_header;

namespace {

/// Connects to `at` and says hello with `tag`; yields the socket once the descriptor came back.
ferry::task<ferry::result<ferry::io::tcp_socket>> hello(ferry::io::io_context& ctx, ferry::io::endpoint at,
                                                        std::uint64_t tag) {
  auto sock = co_await ferry::io::tcp_socket::connect(ctx, at);
  if (!sock)
    co_return ferry::fail(sock.error());
  auto reply = co_await ferry::tcp_transport::exchange_on(*sock, frame_type::hello, std::string(), {}, tag);
  if (!reply)
    co_return ferry::fail(reply.error());
  co_return std::move(*sock);
}

/// Reads one reply header from `sock` (within 5 s).
ferry::task<ferry::result<ferry::tcp::frame_header>> reply_on(ferry::io::io_context& ctx,
                                                              ferry::io::tcp_socket& sock) {
  raw_header raw;
  ferry::io::deadline within(ctx, 5s);
  auto got = co_await sock.recv_all(raw, within.token());
  if (!got)
    co_return ferry::fail(got.error());
  co_return ferry::tcp::decode_header(raw);
}

/// Forwards every connection it accepts to `to`. What the initiator sends on the first one after its first
/// header (the hello) is held back until `release`: a path that stalls while the others work.
struct stalling_proxy {
  ferry::io::io_context& ctx;
  ferry::io::endpoint to;
  ferry::io::tcp_listener listener;
  ferry::async_scope scope;
  std::string address;
  std::vector<ferry::io::tcp_socket*> open;
  int accepted = 0;
  bool released = false;
  bool delivered = false; // what was held went on (or the owner's side was gone)
  std::size_t held = 0;

  stalling_proxy(ferry::io::io_context& c, ferry::io::endpoint target) : ctx(c), to(target) {
    listener = std::move(*ferry::io::tcp_listener::listen(ctx, *ferry::io::endpoint::parse("127.0.0.3:0")));
    address = listener.local_endpoint()->to_string();
    scope.spawn(accept_loop());
  }
  ferry::task<> accept_loop() {
    for (;;) {
      auto s = co_await listener.accept();
      if (!s)
        co_return;
      scope.spawn(relay(std::move(*s), ++accepted == 1));
    }
  }
  ferry::task<> relay(ferry::io::tcp_socket down, bool stall) {
    auto up = co_await ferry::io::tcp_socket::connect(ctx, to);
    if (!up)
      co_return;
    open.push_back(&down);
    open.push_back(&*up);
    co_await ferry::when_all(pump(down, *up, stall), pump(*up, down, false));
    std::erase(open, &down);
    std::erase(open, &*up);
  }
  ferry::task<> pump(ferry::io::tcp_socket& from, ferry::io::tcp_socket& into, bool stall) {
    std::vector<std::byte> buf(256 << 10), kept;
    std::size_t passed = 0;
    for (;;) {
      auto n = co_await from.recv(buf); // why: g++ 12 miscompiles co_await inside a loop or if condition
      if (!n || *n == 0)
        break;
      std::span<const std::byte> data(buf.data(), *n);
      if (stall) {
        std::size_t now = std::min(data.size(), ferry::tcp::frame_header::size - passed);
        passed += now;
        kept.insert(kept.end(), data.begin() + static_cast<std::ptrdiff_t>(now), data.end());
        held = kept.size();
        data = data.first(now);
      }
      auto sent = co_await into.send_all(data);
      if (!sent)
        break;
    }
    while (stall && !released)
      co_await ctx.sleep_for(5ms);
    if (!kept.empty())
      (void)co_await into.send_all(std::span<const std::byte>(kept));
    (void)into.shutdown(SHUT_WR);
    if (stall)
      delivered = true;
  }
  /// Lets the held bytes go and waits until they went, and a little for the owner to take them.
  ferry::task<> release() {
    released = true;
    for (int i = 0; i < 500 && !delivered; ++i)
      co_await ctx.sleep_for(10ms);
    CHECK(delivered);
    co_await ctx.sleep_for(100ms);
  }
  void close() {
    released = true;
    listener.close();
    for (auto* s : open)
      (void)s->shutdown();
    ctx.run_until(scope.join());
  }
};

/// An engine serving 1 MiB of read-write memory on 127.0.0.2, its peers allowed to stall `stall` (2 s).
struct served_region {
  std::vector<std::byte> region;
  ferry::io::io_context& ctx;
  ferry::default_engine engine;

  served_region(ferry::io::io_context& c, unsigned io_threads, std::chrono::milliseconds stall = 2s)
      : region(1 << 20), ctx(c), engine(ctx, {.name = "owner",
                                              .listen = "127.0.0.2:0",
                                              .tcp = {.io_threads = io_threads, .stall_timeout = stall}}) {
    REQUIRE(engine.registry().add(region.data(), region.size(), access::read_write));
    REQUIRE(engine.start());
  }
};

/// An owner that an initiator reaches only through a stalling proxy: the descriptor it finds in `meta` names
/// the proxy's address.
struct proxied_owner {
  served_region owner;
  stalling_proxy proxy;
  ferry::memory_metadata_store meta;

  proxied_owner(ferry::io::io_context& ctx, unsigned io_threads)
      : owner(ctx, io_threads), proxy(ctx, *owner.engine.endpoint()) {}

  /// Publishes the owner's descriptor and opens the owner's segment from `initiator`.
  ferry::task<ferry::result<ferry::segment_id>>
  open_from(ferry::transfer_engine<ferry::tcp_transport>& initiator) {
    auto d = owner.engine.descriptor();
    d.endpoints = {{"tcp", proxy.address}};
    auto put = co_await meta.put("ferry/segments/owner", d.to_json());
    if (!put)
      co_return ferry::fail(put.error());
    initiator.use_metadata(meta);
    co_return co_await initiator.open_segment("owner");
  }
};

bool all_equal(std::span<const std::byte> s, std::byte v) {
  return std::all_of(s.begin(), s.end(), [v](std::byte b) { return b == v; });
}

} // namespace

TEST_SUITE("tcp fence") {
  TEST_CASE("a fence ends the connection it names before what follows it is served") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      ferry::io::io_context ctx;
      served_region owner(ctx, io_threads);
      ctx.run_until([&]() -> ferry::task<> {
        auto at = *owner.engine.endpoint();
        // A: a write of 4 KiB of 0x11 whose payload stops after 100 bytes, as if its path stalled
        auto a = co_await hello(ctx, at, 77);
        REQUIRE(a);
        auto old_write = header(frame_type::write, 1, 0, 4096);
        REQUIRE(co_await a->send_all(old_write));
        std::vector<std::byte> old(4096, std::byte{0x11});
        REQUIRE(co_await a->send_all(std::span(old).first(100)));
        co_await ctx.sleep_for(50ms);
        // B: a fence of A, then a write of 0x22 to the same bytes, sent together
        auto b = co_await hello(ctx, at, 78);
        REQUIRE(b);
        std::vector<std::byte> fresh(4096, std::byte{0x22});
        auto fence = header(frame_type::fence, 1, 77, 0);
        auto write = header(frame_type::write, 2, 0, fresh.size());
        std::array<::iovec, 3> both{::iovec{fence.data(), fence.size()}, ::iovec{write.data(), write.size()},
                                    ::iovec{fresh.data(), fresh.size()}};
        REQUIRE(co_await b->send_all(std::span<const ::iovec>(both)));
        auto fenced = co_await reply_on(ctx, *b);
        REQUIRE(fenced);
        CHECK(fenced->type == frame_type::fence_reply);
        CHECK(fenced->request_id == 1);
        CHECK(fenced->status == 0);
        auto written = co_await reply_on(ctx, *b);
        REQUIRE(written);
        CHECK(written->type == frame_type::write_reply);
        CHECK(written->status == 0);
        // the rest of A's payload arrives late: it must not land over B's write
        (void)co_await a->send_all(std::span(old).subspan(100));
        std::array<std::byte, 1> one;
        ferry::io::deadline within(ctx, 5s);
        auto n = co_await a->recv(one, within.token()); // A was hung up on
        CHECK_FALSE(within.expired());
        CHECK((!n || *n == 0));
        co_await ctx.sleep_for(50ms);
        CHECK(all_equal(std::span(owner.region).first(4096), std::byte{0x22}));
        // a fence of a connection that ended, or that the owner never saw, is answered at once
        auto fence_ended = header(frame_type::fence, 3, 77, 0),
             fence_unknown = header(frame_type::fence, 4, 12345, 0);
        REQUIRE(co_await b->send_all(fence_ended));
        REQUIRE(co_await b->send_all(fence_unknown));
        auto again = co_await reply_on(ctx, *b);
        auto unknown = co_await reply_on(ctx, *b);
        REQUIRE(again);
        REQUIRE(unknown);
        CHECK((again->type == frame_type::fence_reply && again->request_id == 3 && again->status == 0));
        CHECK((unknown->type == frame_type::fence_reply && unknown->request_id == 4 && unknown->status == 0));
      }());
    }
  }

  TEST_CASE("a fenced connection is closed: a write sent on it afterwards is not served") {
    ferry::io::io_context ctx;
    served_region owner(ctx, 0);
    ctx.run_until([&]() -> ferry::task<> {
      auto at = *owner.engine.endpoint();
      auto a = co_await hello(ctx, at, 90);
      REQUIRE(a);
      auto b = co_await hello(ctx, at, 91);
      REQUIRE(b);
      // B fences A; A's write, sent right after, finds A fenced and is dropped with it
      auto fence = header(frame_type::fence, 1, 90, 0);
      REQUIRE(co_await b->send_all(fence));
      auto fenced = co_await reply_on(ctx, *b);
      REQUIRE(fenced);
      CHECK(fenced->status == 0);
      std::vector<std::byte> late(4096, std::byte{0x33});
      auto write = header(frame_type::write, 1, 8192, late.size());
      (void)co_await a->send_all(write);
      (void)co_await a->send_all(late);
      auto r = co_await reply_on(ctx, *a);
      CHECK_FALSE(r);
      CHECK(all_equal(std::span(owner.region).subspan(8192, 4096), std::byte{0}));
    }());
  }

  TEST_CASE("a write retried after its connection stalled is fenced: the stalled copy never lands later") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      ferry::io::io_context ctx;
      proxied_owner at(ctx, io_threads);
      auto& owner = at.owner;
      auto& proxy = at.proxy;
      ferry::transfer_engine<ferry::tcp_transport> initiator(
          ctx, {.name = "initiator",
                .tcp = {.connections_per_peer = 2, .io_threads = io_threads, .reply_timeout = 200ms}});
      std::vector<std::byte> first(64 << 10, std::byte{0x11}), second(64 << 10, std::byte{0x22});
      REQUIRE(initiator.registry().add(first.data(), first.size(), access::none));
      REQUIRE(initiator.registry().add(second.data(), second.size(), access::none));
      ctx.run_until([&]() -> ferry::task<> {
        auto seg = co_await at.open_from(initiator);
        REQUIRE(seg);
        // the first connection's path stalls with the write on it; the write is retried on the second
        ferry::transfer_batch one;
        one.write(first.data(), *seg, 0, first.size());
        auto r1 = co_await initiator.transfer(one, ferry::transfer_options().with_timeout(5s));
        CHECK_MESSAGE(r1.ok(), r1.first_error().message());
        CHECK(proxy.held >= first.size());
        // a later write to the same bytes
        ferry::transfer_batch two;
        two.write(second.data(), *seg, 0, second.size());
        auto r2 = co_await initiator.transfer(two, ferry::transfer_options().with_timeout(5s));
        CHECK_MESSAGE(r2.ok(), r2.first_error().message());
        CHECK(all_equal(std::span(owner.region).first(second.size()), std::byte{0x22}));
        // the stalled path lets go: the copy it held must not land now
        co_await proxy.release();
      }());
      CHECK(all_equal(std::span(owner.region).first(second.size()), std::byte{0x22}));
      proxy.close();
    }
  }

  TEST_CASE("a fence whose connection does not end within the stall timeout drops the fencing connection") {
    ferry::io::io_context ctx;
    // why: connections on threads of their own, while the owner's own loop (this thread) is kept busy
    served_region owner(ctx, 2, 300ms);
    ctx.run_until([&]() -> ferry::task<> {
      auto at = *owner.engine.endpoint();
      auto a = co_await hello(ctx, at, 5);
      REQUIRE(a);
      auto b = co_await hello(ctx, at, 6);
      REQUIRE(b);
      // A asks for the descriptor again: its connection waits for the owner's loop, which this thread holds
      auto again = header(frame_type::hello, 2, 5, 0);
      REQUIRE(co_await a->send_all(again));
      std::this_thread::sleep_for(
          500ms); // why: time for A's thread to take the hello in, on a loaded machine
      auto fence = header(frame_type::fence, 1, 5, 0);
      REQUIRE(::send(b->native_handle(), fence.data(), fence.size(), 0) ==
              static_cast<ssize_t>(fence.size()));
      std::this_thread::sleep_for(1s); // A cannot end meanwhile: the fence gives up after 300 ms
      // B was dropped without an answer: what it sent after the fence can never be served
      auto r = co_await reply_on(ctx, *b);
      CHECK_FALSE(r);
    }());
  }

  TEST_CASE("a notification after a write whose connection stalled is not overtaken by that write") {
    ferry::io::io_context ctx;
    proxied_owner at(ctx, 0);
    auto& owner = at.owner;
    auto& proxy = at.proxy;
    // no retries: the write fails once its connection is given up, and only the notification follows it
    ferry::transfer_engine<ferry::tcp_transport> initiator(
        ctx, {.name = "initiator", .retry_budget = 0, .tcp = {.reply_timeout = 1s}});
    std::vector<std::byte> stale(64 << 10, std::byte{0x11});
    REQUIRE(initiator.registry().add(stale.data(), stale.size(), access::none));
    std::vector<std::byte> seen; // the owner's region once the notification was taken
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await at.open_from(initiator);
      REQUIRE(seg);
      ferry::transfer_batch w;
      w.write(stale.data(), *seg, 0, stale.size());
      auto r = co_await initiator.transfer(w);
      CHECK_FALSE(r.ok());
      CHECK(proxy.held >= stale.size());
      auto sent = co_await initiator.notify(*seg, "kv ready");
      REQUIRE_MESSAGE(sent, sent.error().message());
      auto n = co_await owner.engine.next_notification();
      REQUIRE(n);
      seen.assign(owner.region.begin(), owner.region.begin() + static_cast<std::ptrdiff_t>(stale.size()));
      // the stalled path lets go: the write it held must not land after the notification
      co_await proxy.release();
    }());
    REQUIRE(seen.size() == stale.size());
    CHECK(std::equal(seen.begin(), seen.end(), owner.region.begin()));
    proxy.close();
  }
}
