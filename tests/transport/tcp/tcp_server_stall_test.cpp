// The serving side of the tcp transport against peers that stop halfway: one that sends a write's header and
// part of its payload and then nothing, one that stops inside a header, one that asks for reads and never
// takes the replies. Each is dropped after the stall timeout, and the memory its requests held in use can be
// unregistered again. Notifications still arriving hold at most a bounded share of memory, all connections
// together.

#include "ferry/core/task.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/transfer.hpp"

#include "../../support/raw_frames.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using ferry::access;
using ferry::errc;
using ferry_test::header;

namespace {

/// A served engine whose peers may stall 300 ms, with `io_threads` threads for its connections.
struct stalled_target {
  std::vector<std::byte> region;
  ferry::io::io_context ctx;
  ferry::default_engine engine;

  explicit stalled_target(unsigned io_threads, std::size_t bytes = 1 << 20, std::size_t max_connections = 0,
                          std::chrono::milliseconds evict_idle_after = std::chrono::milliseconds::max())
      : region(bytes), engine(ctx, {.name = "target",
                                    .listen = "127.0.0.2:0",
                                    .tcp = {.io_threads = io_threads,
                                            .stall_timeout = 300ms,
                                            .max_served_connections = max_connections,
                                            .evict_idle_after = evict_idle_after}}) {
    REQUIRE(engine.registry().add(region.data(), region.size(), access::read_write));
    REQUIRE(engine.start());
  }

  /// A connection to the target, for a peer that writes frames by hand.
  ferry::task<ferry::io::tcp_socket> peer() {
    auto raw = co_await ferry::io::tcp_socket::connect(ctx, *engine.endpoint());
    REQUIRE(raw);
    co_return std::move(*raw);
  }

  /// Whether a ping on `raw` is answered (false: the target closed it, or did not answer).
  ferry::task<bool> ping(ferry::io::tcp_socket& raw, std::uint64_t id) {
    auto sent = co_await raw.send_all(header(ferry::tcp::frame_type::ping, id, 0, 0));
    if (!sent)
      co_return false;
    auto h = co_await reply(raw);
    co_return h && h->type == ferry::tcp::frame_type::pong && h->status == 0;
  }

  /// Whether a ping on `raw` is answered errc::busy, and the connection then ends: how a connection beyond
  /// the most served is refused.
  ferry::task<bool> refused(ferry::io::tcp_socket& raw, std::uint64_t id) {
    auto sent = co_await raw.send_all(header(ferry::tcp::frame_type::ping, id, 0, 0));
    if (!sent)
      co_return false;
    auto h = co_await reply(raw);
    CHECK(h);
    if (!h || h->type != ferry::tcp::frame_type::pong || h->request_id != id ||
        h->status != static_cast<std::int32_t>(errc::busy))
      co_return false;
    std::array<std::byte, 1> one;
    ferry::io::deadline give_up(ctx, 5s);
    auto n = co_await raw.recv(one, give_up.token());
    co_return !give_up.expired() && (!n || *n == 0);
  }

  /// The header of the next reply on `raw`, if one arrives within 5 s and decodes.
  ferry::task<std::optional<ferry::tcp::frame_header>> reply(ferry::io::tcp_socket& raw) {
    ferry_test::raw_header back;
    ferry::io::deadline within(ctx, 5s);
    auto got = co_await raw.recv_all(back, within.token());
    if (!got)
      co_return std::nullopt;
    auto h = ferry::tcp::decode_header(back);
    if (!h)
      co_return std::nullopt;
    co_return *h;
  }

  /// Waits, up to 5 s, for the target to hang up on `raw`, as it does once the stall timeout passed.
  ferry::task<> hangs_up(ferry::io::tcp_socket& raw) {
    std::array<std::byte, 1> one;
    ferry::io::deadline give_up(ctx, 5s);
    auto n = co_await raw.recv(one, give_up.token());
    CHECK_FALSE(give_up.expired());
    CHECK((!n || *n == 0));
  }
};

/// A file region in memory whose reads and writes each take `delay` on the loop they run on: a slow disk.
class slow_file final : public ferry::file_backing {
public:
  slow_file(ferry::io::io_context& ctx, std::size_t bytes, std::chrono::milliseconds delay)
      : ctx_(ctx), bytes_(bytes), delay_(delay) {}
  std::uint64_t length() const noexcept override { return bytes_.size(); }
  ferry::task<ferry::result<void>> read(std::uint64_t offset, std::span<std::byte> into,
                                        std::stop_token stop) override {
    if (auto slept = co_await ctx_.sleep_for(delay_, stop); !slept)
      co_return ferry::fail(slept.error());
    std::memcpy(into.data(), bytes_.data() + offset, into.size());
    co_return ferry::result<void>{};
  }
  ferry::task<ferry::result<void>> write(std::uint64_t offset, std::span<const std::byte> from,
                                         std::stop_token stop) override {
    ++writes_started_;
    if (auto slept = co_await ctx_.sleep_for(delay_, stop); !slept)
      co_return ferry::fail(slept.error());
    std::memcpy(bytes_.data() + offset, from.data(), from.size());
    co_return ferry::result<void>{};
  }
  const std::vector<std::byte>& bytes() const { return bytes_; }
  int writes_started() const { return writes_started_; }

private:
  int writes_started_ = 0;
  ferry::io::io_context& ctx_;
  std::vector<std::byte> bytes_;
  std::chrono::milliseconds delay_;
};

/// An initiator engine of `connections` connections per peer, with `bytes` of patterned data to write and as
/// many to read back into, both registered.
struct patterned_initiator {
  std::vector<std::byte> data, back;
  ferry::default_engine engine;

  patterned_initiator(ferry::io::io_context& ctx, unsigned connections, std::size_t bytes)
      : data(bytes), back(bytes),
        engine(ctx, {.name = "initiator", .tcp = {.connections_per_peer = connections}}) {
    for (std::size_t i = 0; i < data.size(); ++i)
      data[i] = static_cast<std::byte>(i * 13 + 7);
    REQUIRE(engine.registry().add(data.data(), data.size(), access::none));
    REQUIRE(engine.registry().add(back.data(), back.size(), access::none));
  }

  /// Opens `t`'s segment, and waits (up to 2 s) for the handshake's connection to end there.
  ferry::task<ferry::segment_id> open(stalled_target& t) {
    auto seg = co_await engine.open_segment(t.engine.endpoint()->to_string());
    REQUIRE(seg);
    for (int i = 0; i < 200 && t.engine.server()->connections() != 0; ++i)
      co_await t.ctx.sleep_for(10ms);
    REQUIRE(t.engine.server()->connections() == 0);
    co_return *seg;
  }
};

} // namespace

TEST_SUITE("tcp_server") {
  TEST_CASE("a peer that connects and never sends a request is dropped after the stall timeout") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        co_await t.hangs_up(raw);
        co_await t.ctx.sleep_for(50ms);
        CHECK(t.engine.server()->connections() == 0);
      }());
    }
  }

  TEST_CASE("connections beyond the most served are refused as busy when accepted, and served again once one "
            "ends") {
    stalled_target t(0, 1 << 20, 4);
    REQUIRE(t.engine.server()->max_connections() == 4);
    t.ctx.run_until([&]() -> ferry::task<> {
      auto ping = [&](ferry::io::tcp_socket& raw, std::uint64_t id) { return t.ping(raw, id); };
      std::vector<ferry::io::tcp_socket> served;
      for (std::uint64_t i = 0; i < 4; ++i) {
        served.push_back(co_await t.peer());
        CHECK(co_await ping(served.back(), i + 1));
      }
      CHECK(t.engine.server()->connections() == 4);
      auto beyond = co_await t.peer();
      CHECK(co_await t.refused(beyond, 9)); // answered busy, then closed by the target
      CHECK(t.engine.server()->refused_connections() == 1);
      // one that says nothing is closed all the same, within a second
      auto silent = co_await t.peer();
      co_await t.hangs_up(silent);
      CHECK(t.engine.server()->refused_connections() == 2);
      served.front().close();
      co_await t.ctx.sleep_for(100ms);
      auto next = co_await t.peer();
      CHECK(co_await ping(next, 10));
      for (auto& s : served)
        CHECK(co_await ping(s, 11) == s.is_open());
    }());
  }

  TEST_CASE("at the most served connections, a new one takes the place of the one idle longest, whose peer "
            "reconnects") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      // why: 600 ms, far more than the few ms between the first ping and the third connection, also on a
      // loaded machine
      stalled_target t(io_threads, 1 << 20, 2, 600ms);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto ping = [&](ferry::io::tcp_socket& raw, std::uint64_t id) { return t.ping(raw, id); };
        auto first = co_await t.peer();
        CHECK(co_await ping(first, 1));
        co_await t.ctx.sleep_for(50ms);
        auto second = co_await t.peer();
        CHECK(co_await ping(second, 2));
        // both are idle, neither for 600 ms yet: a third is refused
        auto early = co_await t.peer();
        CHECK(co_await t.refused(early, 3));
        CHECK(t.engine.server()->refused_connections() == 1);
        CHECK(t.engine.server()->evicted_connections() == 0);
        co_await t.ctx.sleep_for(700ms);
        // now both have waited long enough: the one idle longest gives its place up
        auto third = co_await t.peer();
        CHECK(co_await ping(third, 4));
        CHECK(t.engine.server()->evicted_connections() == 1);
        CHECK_FALSE(co_await ping(first, 5)); // closed by the target
        CHECK(co_await ping(second, 6));      // served still: it was idle less long
        CHECK(t.engine.server()->refused_connections() == 1);
      }());
    }
  }

  TEST_CASE("a peer whose idle connection was given to another transfers again without an error") {
    stalled_target t(2, 1 << 20, 2, 200ms);
    auto initiator = [](ferry::io::io_context& ctx, const char* name) {
      return std::make_unique<ferry::default_engine>(
          ctx, ferry::engine_options{.name = name, .tcp = {.connections_per_peer = 1}});
    };
    auto a = initiator(t.ctx, "a"), b = initiator(t.ctx, "b"), c = initiator(t.ctx, "c");
    std::vector<std::byte> data(64 << 10), back(64 << 10);
    for (std::size_t i = 0; i < data.size(); ++i)
      data[i] = static_cast<std::byte>(i * 7 + 1);
    for (auto* e : {a.get(), b.get(), c.get()}) {
      REQUIRE(e->registry().add(data.data(), data.size(), access::none));
      REQUIRE(e->registry().add(back.data(), back.size(), access::none));
    }
    t.ctx.run_until([&]() -> ferry::task<> {
      // why: a connection the peer closed counts until the target's loop has seen it end; each step waits
      // for that, so that what the next one finds is known
      auto served_settle_at = [&](std::size_t n) -> ferry::task<bool> {
        for (int i = 0; i < 200 && t.engine.server()->connections() != n; ++i)
          co_await t.ctx.sleep_for(10ms);
        co_return t.engine.server()->connections() == n;
      };
      // the handshakes first: each is a connection of its own, closed once the descriptor came
      std::vector<ferry::segment_id> segs;
      for (auto* e : {a.get(), b.get(), c.get()}) {
        auto seg = co_await e->open_segment(t.engine.endpoint()->to_string());
        REQUIRE(seg);
        segs.push_back(*seg);
      }
      REQUIRE(co_await served_settle_at(0));
      auto round_trip = [&](ferry::default_engine& e, std::uint64_t at) -> ferry::task<bool> {
        const ferry::segment_id seg = segs[&e == a.get() ? 0 : &e == b.get() ? 1 : 2];
        ferry::transfer_batch w;
        w.write(data.data(), seg, at, data.size());
        auto wr = co_await e.transfer(w, ferry::transfer_options().with_timeout(10s));
        CHECK_MESSAGE(wr.ok(), wr.first_error().message());
        ferry::transfer_batch r;
        std::fill(back.begin(), back.end(), std::byte{0});
        r.read(back.data(), seg, at, back.size());
        auto rr = co_await e.transfer(r, ferry::transfer_options().with_timeout(10s));
        CHECK_MESSAGE(rr.ok(), rr.first_error().message());
        co_return wr.ok() && rr.ok() && back == data;
      };
      CHECK(co_await round_trip(*a, 0));
      CHECK(co_await served_settle_at(1));
      CHECK(co_await round_trip(*b, 1 << 16));
      CHECK(co_await served_settle_at(2));
      co_await t.ctx.sleep_for(300ms);
      CHECK(co_await round_trip(*c, 2 << 16)); // takes a's place
      CHECK(co_await served_settle_at(2));
      CHECK(t.engine.server()->evicted_connections() == 1);
      CHECK(co_await round_trip(*a, 3 << 16)); // a connects again and takes b's place
      CHECK(co_await served_settle_at(2));
      CHECK(t.engine.server()->evicted_connections() == 2);
      CHECK(t.engine.server()->refused_connections() == 0);
    }());
  }

  TEST_CASE("a transfer to a target at its most served connections, none idle, fails as busy with the reason "
            "and succeeds once one is free") {
    stalled_target t(2, 1 << 20, 2); // never evicts
    patterned_initiator p(t.ctx, 1, 64 << 10);
    auto &data = p.data, &back = p.back;
    auto& e = p.engine;
    t.ctx.run_until([&]() -> ferry::task<> {
      auto seg = std::optional(co_await p.open(t));
      std::vector<ferry::io::tcp_socket> held;
      for (std::uint64_t i = 0; i < 2; ++i) {
        held.push_back(co_await t.peer());
        REQUIRE(co_await t.ping(held.back(), i + 1));
      }
      const auto started = std::chrono::steady_clock::now();
      ferry::transfer_batch w;
      w.write(data.data(), *seg, 0, data.size());
      auto wr = co_await e.transfer(w, ferry::transfer_options().with_timeout(5s));
      CHECK(std::chrono::steady_clock::now() - started < 4s); // refused at once, not left to its deadline
      REQUIRE_FALSE(wr.ok());
      CHECK_MESSAGE(wr.first_error() == errc::busy, wr.first_error().message());
      CHECK_MESSAGE(wr.first_error().message().find("max_served_connections") != std::string::npos,
                    wr.first_error().message());
      CHECK(t.engine.server()->refused_connections() >= 1);
      // a handshake is refused the same way
      auto again = co_await ferry::tcp_transport::fetch_descriptor(t.ctx, *t.engine.endpoint(), 2000ms, {});
      REQUIRE_FALSE(again);
      CHECK_MESSAGE(again.error() == errc::busy, again.error().message());
      // once a connection is free, the next transfer goes through, byte for byte
      held.front().close();
      for (int i = 0; i < 200 && t.engine.server()->connections() != 1; ++i)
        co_await t.ctx.sleep_for(10ms);
      ferry::transfer_batch w2;
      w2.write(data.data(), *seg, 0, data.size());
      auto wr2 = co_await e.transfer(w2, ferry::transfer_options().with_timeout(5s));
      CHECK_MESSAGE(wr2.ok(), wr2.first_error().message());
      ferry::transfer_batch r;
      r.read(back.data(), *seg, 0, back.size());
      auto rr = co_await e.transfer(r, ferry::transfer_options().with_timeout(5s));
      CHECK_MESSAGE(rr.ok(), rr.first_error().message());
      CHECK(back == data);
    }());
  }

  TEST_CASE("slices on a connection that a target at its most served connections refused move to the "
            "initiator's other connection to it") {
    stalled_target t(2, 4 << 20, 2);          // never evicts
    patterned_initiator p(t.ctx, 4, 2 << 20); // three of its four connections are refused
    auto &data = p.data, &back = p.back;
    auto& e = p.engine;
    t.ctx.run_until([&]() -> ferry::task<> {
      auto seg = std::optional(co_await p.open(t));
      auto held =
          co_await t.peer(); // one place of two taken: one of the initiator's two connections is refused
      REQUIRE(co_await t.ping(held, 1));
      constexpr std::size_t block = 64 << 10;
      ferry::transfer_batch w;
      for (std::size_t at = 0; at < data.size(); at += block)
        w.write(data.data() + at, *seg, at, block);
      auto wr = co_await e.transfer(w, ferry::transfer_options().with_timeout(10s));
      CHECK_MESSAGE(wr.ok(), wr.first_error().message());
      const auto refused = t.engine.server()->refused_connections();
      CHECK(refused >= 1);
      // the next batch passes the refused connections by (for a moment), instead of being refused again
      ferry::transfer_batch r;
      for (std::size_t at = 0; at < back.size(); at += block)
        r.read(back.data() + at, *seg, at, block);
      auto rr = co_await e.transfer(r, ferry::transfer_options().with_timeout(10s));
      CHECK_MESSAGE(rr.ok(), rr.first_error().message());
      CHECK(back == data);
      CHECK(t.engine.server()->refused_connections() == refused);
    }());
  }

  TEST_CASE("a file region slower than the stall timeout is answered: the server's own work is no stall of "
            "the peer") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads);
      auto file = std::make_shared<slow_file>(t.ctx, 8192, 700ms); // more than twice the 300 ms stall timeout
      auto at = t.engine.registry().add_file(file, access::read_write);
      REQUIRE(at);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        std::vector<std::byte> payload(4096, std::byte{0x5a});
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::write, 1, *at, payload.size())));
        REQUIRE(co_await raw.send_all(payload));
        auto h = co_await t.reply(raw);
        REQUIRE(h);
        CHECK(h->type == ferry::tcp::frame_type::write_reply);
        CHECK(h->status == 0);
        CHECK(std::equal(payload.begin(), payload.end(), file->bytes().begin()));
        // and a read of it, whose reply waits for the slow read of the file
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::read, 2, *at, payload.size())));
        h = co_await t.reply(raw);
        REQUIRE(h);
        CHECK(h->type == ferry::tcp::frame_type::read_reply);
        CHECK(h->status == 0);
        REQUIRE(h->length == payload.size());
        std::vector<std::byte> got(payload.size());
        ferry::io::deadline within(t.ctx, 5s);
        REQUIRE(co_await raw.recv_all(got, within.token()));
        CHECK(got == payload);
      }());
    }
  }

  TEST_CASE("a file region's I/O in progress stops with the server: the engine's shutdown does not wait it "
            "out") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads);
      auto file = std::make_shared<slow_file>(t.ctx, 8192, 30s);
      auto at = t.engine.registry().add_file(file, access::read_write);
      REQUIRE(at);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        std::vector<std::byte> payload(4096, std::byte{0x6b});
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::write, 1, *at, payload.size())));
        REQUIRE(co_await raw.send_all(payload));
        for (int i = 0; i < 500 && file->writes_started() == 0; ++i)
          co_await t.ctx.sleep_for(10ms);
        REQUIRE(file->writes_started() == 1);
        const auto stopping = std::chrono::steady_clock::now();
        co_await t.engine.shutdown();
        CHECK(std::chrono::steady_clock::now() - stopping < 5s); // not the file's 30 s
        co_await t.hangs_up(raw);                                // the write is not answered as done
        CHECK(std::all_of(file->bytes().begin(), file->bytes().end(),
                          [](std::byte b) { return b == std::byte{0}; }));
      }());
    }
  }

  TEST_CASE("a hook that throws ends only its connection, on the connection's own loop, and says why at the "
            "end") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      ferry::io::io_context ctx;
      ferry::region_registry registry;
      auto loops = io_threads ? std::make_unique<ferry::io::io_context_pool>(io_threads) : nullptr;
      ferry::async_scope scope;
      std::atomic<int> asked{0};
      ferry::tcp_server::hooks hooks;
      hooks.descriptor = [&asked]() -> std::string {
        if (asked++ == 0)
          throw std::runtime_error("no descriptor now");
        return "{}";
      };
      ferry::tcp_server server(ctx, registry, scope, std::move(hooks), loops.get(), 300ms);
      auto at = server.listen(*ferry::io::endpoint::parse("127.0.0.2:0"));
      REQUIRE(at);
      ctx.run_until([&]() -> ferry::task<> {
        for (int peer = 0; peer < 2; ++peer) {
          auto raw = co_await ferry::io::tcp_socket::connect(ctx, *at);
          REQUIRE(raw);
          REQUIRE(co_await raw->send_all(header(ferry::tcp::frame_type::hello, 1, 0, 0)));
          ferry_test::raw_header back;
          ferry::io::deadline within(ctx, 5s);
          auto got = co_await raw->recv_all(back, within.token());
          CHECK_FALSE(within.expired());
          if (peer == 0) {
            CHECK_FALSE(got); // the first one's hook threw: its connection ends
          } else {
            REQUIRE(got); // the next is answered
            auto h = ferry::tcp::decode_header(back);
            REQUIRE(h);
            CHECK(h->type == ferry::tcp::frame_type::hello_reply);
            CHECK(h->length == 2);
          }
        }
      }());
      server.stop();
      CHECK_THROWS_WITH(ctx.run_until(scope.join()), "no descriptor now");
    }
  }

  TEST_CASE("a peer that stops in the middle of a write's payload is dropped and the region is released") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::write, 1, 0, 4096)));
        std::vector<std::byte> part(100, std::byte{9});
        REQUIRE(co_await raw.send_all(part));
        co_await t.ctx.sleep_for(100ms);
        // the write holds the region while its payload is awaited
        auto busy = t.engine.registry().remove(t.region.data());
        REQUIRE_FALSE(busy);
        CHECK(busy.error() == errc::busy);
        co_await t.hangs_up(raw);
        co_await t.ctx.sleep_for(50ms);
        CHECK(t.engine.registry().remove(t.region.data()).has_value());
      }());
    }
  }

  TEST_CASE("notifications still arriving hold a bounded share of memory, and one beyond it is refused") {
    stalled_target t(0);
    t.ctx.run_until([&]() -> ferry::task<> {
      // sixteen peers each announce a 1 MiB notification and stop after its first bytes: the bound is held
      std::vector<ferry::io::tcp_socket> stalled;
      for (std::uint64_t i = 0; i < 16; ++i) {
        auto raw = co_await t.peer();
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::notify, i + 1, 0, 1 << 20)));
        std::vector<std::byte> part(100, std::byte{'x'});
        REQUIRE(co_await raw.send_all(part));
        stalled.push_back(std::move(raw));
      }
      co_await t.ctx.sleep_for(50ms);
      auto raw = co_await t.peer();
      auto notify = [&](std::uint64_t id, std::string text) -> ferry::task<ferry::tcp::frame_header> {
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::notify, id, 0, text.size())));
        REQUIRE(co_await raw.send_all(std::as_bytes(std::span(text))));
        ferry_test::raw_header back;
        REQUIRE(co_await raw.recv_all(back));
        auto h = ferry::tcp::decode_header(back);
        REQUIRE(h);
        co_return *h;
      };
      auto refused = co_await notify(100, "peer\nrefused");
      CHECK(refused.type == ferry::tcp::frame_type::notify_reply);
      CHECK(refused.error() == errc::out_of_space);
      // the stalled peers are dropped after the stall timeout, which gives their share back; the refused
      // notification's connection was kept in step and serves the next one
      co_await t.ctx.sleep_for(800ms);
      auto taken = co_await notify(101, "peer\ntaken");
      CHECK(taken.status == 0);
      auto n = co_await t.engine.next_notification();
      REQUIRE(n);
      CHECK(n->message == "taken");
    }());
  }

  TEST_CASE("a notification sent again under its id, after its answer was lost, is delivered once") {
    stalled_target t(0);
    t.ctx.run_until([&]() -> ferry::task<> {
      auto notify = [&](ferry::io::tcp_socket& raw, std::uint64_t id, std::string text) -> ferry::task<int> {
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::notify, 7, id, text.size())));
        REQUIRE(co_await raw.send_all(std::as_bytes(std::span(text))));
        auto h = co_await t.reply(raw);
        REQUIRE(h);
        CHECK(h->type == ferry::tcp::frame_type::notify_reply);
        co_return h->status;
      };
      auto first = co_await t.peer();
      CHECK(co_await notify(first, 555, "peer\nonce") == 0);
      first.close(); // as if its answer had been lost with the connection: the sender tries again on another
      auto second = co_await t.peer();
      CHECK(co_await notify(second, 555, "peer\nonce") == 0); // answered, not delivered again
      CHECK(co_await notify(second, 556, "peer\nnext") == 0);
      CHECK(co_await notify(second, 0, "peer\nno id") == 0); // without an id (an older peer): each delivered
      CHECK(co_await notify(second, 0, "peer\nno id") == 0);
      std::vector<std::string> got;
      for (int i = 0; i < 4; ++i) {
        auto n = co_await t.engine.next_notification();
        REQUIRE(n);
        got.push_back(n->message);
      }
      CHECK(got == std::vector<std::string>{"once", "next", "no id", "no id"});
      ferry::io::deadline soon(t.ctx, 50ms);
      auto none = co_await t.engine.next_notification(soon.token());
      CHECK_FALSE(none); // nothing more: "once" came once
    }());
  }

  TEST_CASE(
      "a peer that sends a large write's payload slowly but steadily is served past the stall timeout") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads, 16 << 20);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        std::vector<std::byte> payload(t.region.size());
        for (std::size_t i = 0; i < payload.size(); ++i)
          payload[i] = static_cast<std::byte>(i * 7 + 1);
        // 16 MiB at 1 MiB every 60 ms: about a second, more than three stall timeouts, and never 300 ms
        // silent
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::write, 1, 0, payload.size())));
        for (std::size_t at = 0; at < payload.size(); at += 1 << 20) {
          REQUIRE(co_await raw.send_all(std::span(payload).subspan(at, 1 << 20)));
          co_await t.ctx.sleep_for(60ms);
        }
        auto h = co_await t.reply(raw);
        REQUIRE(h);
        CHECK(h->type == ferry::tcp::frame_type::write_reply);
        CHECK(h->status == 0);
        CHECK(t.region == payload);
      }());
    }
  }

  TEST_CASE("a peer that takes a large read's reply slowly but steadily is served past the stall timeout") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads, 16 << 20);
      for (std::size_t i = 0; i < t.region.size(); ++i)
        t.region[i] = static_cast<std::byte>(i * 5 + 3);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        raw.set_buffer_sizes(256 << 10); // why: the reply must not fit in the sockets between the two ends
        REQUIRE(co_await raw.send_all(header(ferry::tcp::frame_type::read, 1, 0, t.region.size())));
        ferry_test::raw_header back;
        REQUIRE(co_await raw.recv_all(back));
        auto h = ferry::tcp::decode_header(back);
        REQUIRE(h);
        CHECK(h->type == ferry::tcp::frame_type::read_reply);
        REQUIRE(h->status == 0);
        // 16 MiB taken at 1 MiB every 60 ms
        std::vector<std::byte> got(t.region.size());
        for (std::size_t at = 0; at < got.size(); at += 1 << 20) {
          ferry::io::deadline within(t.ctx, 5s);
          REQUIRE(co_await raw.recv_all(std::span(got).subspan(at, 1 << 20), within.token()));
          co_await t.ctx.sleep_for(60ms);
        }
        CHECK(got == t.region);
      }());
    }
  }

  TEST_CASE("a peer that stops in the middle of a request header is dropped after the stall timeout") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        auto h = header(ferry::tcp::frame_type::write, 1, 0, 4096);
        REQUIRE(co_await raw.send_all(std::span(h).first(10)));
        co_await t.hangs_up(raw);
      }());
    }
  }

  TEST_CASE("a peer that never takes the replies to its reads is dropped and the region is released") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      stalled_target t(io_threads);
      t.ctx.run_until([&]() -> ferry::task<> {
        auto raw = co_await t.peer();
        raw.set_buffer_sizes(64 << 10); // why: a small window fills fast
        // 256 reads of the whole region: far more than the sockets between the two ends hold
        std::vector<std::byte> asks;
        for (std::uint64_t id = 1; id <= 256; ++id) {
          auto h = header(ferry::tcp::frame_type::read, id, 0, t.region.size());
          asks.insert(asks.end(), h.begin(), h.end());
        }
        REQUIRE(co_await raw.send_all(asks));
        co_await t.ctx.sleep_for(100ms);
        auto busy = t.engine.registry().remove(t.region.data());
        REQUIRE_FALSE(busy);
        CHECK(busy.error() == errc::busy);
        // the target gives up on replies nobody takes; without reading, this side sees only that the
        // connection count went to zero and the region is free again
        bool released = false;
        for (int i = 0; i < 40 && !released; ++i) {
          auto removed = t.engine.registry().remove(t.region.data());
          released = removed.has_value();
          if (!released) {
            CHECK(removed.error() == errc::busy);
            co_await t.ctx.sleep_for(50ms);
          }
        }
        CHECK(released);
        CHECK(t.engine.registry().size() == 0);
      }());
    }
  }
}
