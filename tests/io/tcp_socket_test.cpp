#include "backends.hpp"

#include "ferry/core/async_scope.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/io/timer_awaiter.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <numeric>
#include <optional>
#include <stop_token>
#include <string>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using ferry::io::endpoint;
using ferry::io::io_context;
using ferry::io::tcp_listener;
using ferry::io::tcp_socket;

namespace {

endpoint loopback(const char* host = "127.0.0.1") {
  return *endpoint::parse(std::string(host) + ":0");
}

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 131 + seed) & 0xff);
  return v;
}

// Accepts one connection and echoes `n` bytes back.
ferry::task<ferry::result<void>> echo_once(tcp_listener& l, std::size_t n) {
  auto s = co_await l.accept();
  if (!s)
    co_return ferry::fail(s.error());
  std::vector<std::byte> buf(n);
  if (auto r = co_await s->recv_all(buf); !r)
    co_return r;
  co_return co_await s->send_all(buf);
}

/// A socket closed while a receive on it is pending, and a new socket that takes its number and has bytes
/// waiting: the receive must end (closed or cancelled), never with the new socket's bytes.
struct closed_under_a_receive {
  int first[2] = {-1, -1}, second[2] = {-1, -1};
  tcp_socket s;
  std::vector<std::byte> buf = std::vector<std::byte>(64);
  std::optional<ferry::result<std::size_t>> got;
  bool reused = false;

  explicit closed_under_a_receive(io_context& ctx) {
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, first) == 0);
    s = tcp_socket(ctx, first[0]);
  }
  ~closed_under_a_receive() {
    for (int fd : {first[1], second[0], second[1]})
      if (fd >= 0)
        ::close(fd);
  }
  /// Closes `s`, opens the socket that takes its number, and puts bytes there.
  void close_and_reuse() {
    int number = s.native_handle();
    s.close();
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, second) == 0);
    reused = second[0] == number;
    const char stolen[] = "not yours";
    REQUIRE(::write(second[1], stolen, sizeof stolen) == static_cast<ssize_t>(sizeof stolen));
  }
  /// Once the receive has ended.
  void check() {
    CHECK(reused); // the new socket took the closed one's number
    REQUIRE(got);
    CHECK((!*got || **got == 0)); // closed or cancelled, never the new socket's bytes
    char left[32] = {};
    CHECK(::read(second[0], left, sizeof left) == 10); // still there for the new socket's owner
  }
};

} // namespace

TEST_SUITE("tcp_socket") {
  TEST_CASE("a megabyte makes a round trip through an echo server") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto ep = *l->local_endpoint();
      CHECK(ep.port() != 0);
      auto data = pattern(1 << 20, 1);
      auto client = [&]() -> ferry::task<std::vector<std::byte>> {
        auto s = co_await tcp_socket::connect(ctx, ep);
        REQUIRE(s);
        REQUIRE(co_await s->send_all(data));
        std::vector<std::byte> back(data.size());
        REQUIRE(co_await s->recv_all(back));
        co_return back;
      };
      auto [server_result, back] = ctx.run_until(ferry::when_all(echo_once(*l, data.size()), client()));
      CHECK(server_result.has_value());
      CHECK(back == data);
    });
  }

  TEST_CASE("scatter-gather sends and receives over several buffers") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto data = pattern(300000, 7);
      auto server = [&]() -> ferry::task<std::vector<std::byte>> {
        auto s = co_await l->accept();
        REQUIRE(s);
        std::vector<std::byte> a(1000), b(99000), c(200000);
        // empty buffers ask for nothing: only empty ones complete at once, and mixed in they are skipped
        std::vector<::iovec> none{{a.data(), 0}, {b.data(), 0}};
        REQUIRE(co_await s->recv_all(none));
        std::vector<::iovec> iov{{a.data(), 0},        {a.data(), a.size()}, {b.data(), 0},
                                 {b.data(), b.size()}, {c.data(), c.size()}, {c.data(), 0}};
        REQUIRE(co_await s->recv_all(iov));
        std::vector<std::byte> all(a);
        all.insert(all.end(), b.begin(), b.end());
        all.insert(all.end(), c.begin(), c.end());
        co_return all;
      };
      auto client = [&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint());
        REQUIRE(s);
        std::vector<::iovec> iov;
        for (std::size_t off = 0; off < data.size(); off += 30000)
          iov.push_back({data.data() + off, std::min<std::size_t>(30000, data.size() - off)});
        REQUIRE(co_await s->send_all(iov));
      };
      auto [received, unused] = ctx.run_until(ferry::when_all(server(), client()));
      (void)unused;
      CHECK(received == data);
    });
  }

  TEST_CASE("a peer that closes ends the stream: recv yields 0 and recv_all fails with closed") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto server = [&]() -> ferry::task<> {
        auto s = co_await l->accept();
        REQUIRE(s);
        REQUIRE(co_await s->send_all(pattern(10, 0)));
        s->close();
      };
      auto client = [&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint());
        REQUIRE(s);
        std::vector<std::byte> buf(100);
        auto r = co_await s->recv_all(buf);
        REQUIRE_FALSE(r);
        CHECK(r.error() == ferry::errc::closed);
        auto n = co_await s->recv(buf);
        REQUIRE(n);
        CHECK(*n == 0);
      };
      ctx.run_until(ferry::when_all(server(), client()));
    });
  }

  TEST_CASE("closing a socket ends its waiting receive, send and accept alike on every backend") {
    // What each waiting call ended with, per backend: the same close must not end with cancelled on one
    // backend and closed on the other.
    std::vector<std::string> outcomes;
    auto describe = [](const auto& r) -> std::string {
      if (r)
        return "ok";
      return r.error().code().message();
    };
    ferry_test::for_each_backend([&](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto peer_listener = tcp_listener::listen(ctx, loopback());
      REQUIRE(peer_listener);
      std::string got;
      ctx.run_until([&]() -> ferry::task<> {
        auto a = co_await tcp_socket::connect(ctx, *peer_listener->local_endpoint());
        REQUIRE(a);
        auto b = co_await peer_listener->accept();
        REQUIRE(b); // never reads: a's sends fill the buffers and wait
        auto c = co_await tcp_socket::connect(ctx, *peer_listener->local_endpoint());
        REQUIRE(c);
        auto d = co_await peer_listener->accept();
        REQUIRE(d); // never sends: c's receive waits
        std::optional<ferry::result<std::size_t>> one;
        std::optional<ferry::result<void>> sent;
        std::optional<ferry::result<tcp_socket>> accepted;
        std::vector<std::byte> small(16), lots(64 << 20);
        // why: named, so that the closures the coroutines refer to outlive them
        auto receive = [&]() -> ferry::task<> { one = co_await c->recv(small); };
        auto send = [&]() -> ferry::task<> { sent = co_await a->send_all(lots); };
        auto accept = [&]() -> ferry::task<> { accepted = co_await l->accept(); };
        ferry::async_scope scope;
        scope.spawn(receive());
        scope.spawn(send());
        scope.spawn(accept());
        co_await ctx.sleep_for(50ms); // every call now waits in the backend (or the kernel)
        CHECK_FALSE(one);
        CHECK_FALSE(sent);
        CHECK_FALSE(accepted);
        c->close();
        a->close();
        l->close();
        co_await scope.join();
        REQUIRE(one);
        REQUIRE(sent);
        REQUIRE(accepted);
        // a receive on a socket shut down ends with 0 bytes, as a peer's close would
        CHECK(describe(*one) == "ok");
        CHECK((!*one || **one == 0));
        // a send on a socket shut down for writing fails with EPIPE, whether it was waiting in the kernel
        // (io_uring) or in the loop (epoll), and an accept on a listener shut down with EINVAL
        REQUIRE_FALSE(*sent);
        CHECK(sent->error() == std::errc::broken_pipe);
        REQUIRE_FALSE(*accepted);
        CHECK(accepted->error() == std::errc::invalid_argument);
        got = "recv " + describe(*one) + ", send " + describe(*sent) + ", accept " + describe(*accepted);
      }());
      MESSAGE(std::string(ferry::io::to_string(ctx.backend())), ": ", got);
      outcomes.push_back(got);
    });
    REQUIRE_FALSE(outcomes.empty());
    for (const auto& o : outcomes)
      CHECK(o == outcomes.front());
  }

  TEST_CASE("a receive still queued when its socket closes never reads a socket that reuses the number") {
    ferry_test::for_each_backend([](io_context& ctx) {
      closed_under_a_receive c(ctx);
      auto receive = [&]() -> ferry::task<> { c.got = co_await c.s.recv(c.buf); };
      ctx.run_until([&]() -> ferry::task<> {
        ferry::async_scope scope;
        // why: spawned, the receive is queued and waits; closing in the same turn of the loop, before the
        // loop hands its queue to the kernel, is the case
        scope.spawn(receive());
        c.close_and_reuse();
        co_await scope.join();
      }());
      c.check();
    });
  }

  TEST_CASE(
      "a receive started by a thread that then exits completes for the thread that drives the loop next") {
    // The kernel cancels what a thread handed to io_uring when that thread exits; the loop may be driven by
    // one thread and then another (transfer handles waited for on several threads take turns).
    ferry_test::for_each_backend([](io_context& ctx) {
      int ends[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, ends) == 0);
      tcp_socket s(ctx, ends[0]);
      std::array<std::byte, 4> buf{};
      std::optional<ferry::result<std::size_t>> got;
      ferry::async_scope scope;
      auto receive = [&]() -> ferry::task<> { got = co_await s.recv(buf); }; // outlives the thread
      std::thread first([&] {
        scope.spawn(receive());
        ctx.poll(); // hands the receive to the kernel from this thread
      });
      first.join();
      REQUIRE_FALSE(got);
      REQUIRE(::write(ends[1], "ping", 4) == 4);
      ctx.run_until(scope.join());
      REQUIRE(got);
      REQUIRE_MESSAGE(*got, got->error().message());
      CHECK(**got == 4);
      CHECK(std::memcmp(buf.data(), "ping", 4) == 0);
      ::close(ends[1]);
    });
  }

  TEST_CASE("a receive handed over from another thread never reads a socket that reuses the number") {
    ferry_test::for_each_backend([](io_context& ctx) {
      closed_under_a_receive c(ctx);
      ferry::thread_pool pool(1);
      std::atomic<bool> asking{false};
      auto receive = [&]() -> ferry::task<> {
        co_await pool.schedule();
        asking = true;
        // started on the pool's thread: handed to the loop, which takes it in later
        c.got = co_await c.s.recv(c.buf);
      };
      ctx.run_until([&]() -> ferry::task<> {
        co_await ctx.schedule(); // now on the loop: this thread drives it
        ferry::async_scope scope;
        scope.spawn(receive());
        while (!asking)
          std::this_thread::yield();
        // why: the loop's thread stays in this handler while the pool's hands the receive over; the loop
        // takes it in only after the close below
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        c.close_and_reuse();
        co_await scope.join();
      }());
      c.check();
    });
  }

  TEST_CASE("a receive cancelled midway fails with cancelled and the connection stays usable") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto server = [&]() -> ferry::task<> {
        auto s = co_await l->accept();
        REQUIRE(s);
        co_await ctx.sleep_for(30ms);
        REQUIRE(co_await s->send_all(pattern(64, 3)));
        std::vector<std::byte> one(1);
        co_await s->recv(one); // wait for the client to finish
      };
      auto client = [&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint());
        REQUIRE(s);
        std::vector<std::byte> buf(64);
        std::stop_source stop;
        ferry::async_scope canceller;
        auto spawned_1 = [&]() -> ferry::task<> {
          co_await ctx.sleep_for(5ms);
          stop.request_stop();
        };
        canceller.spawn(spawned_1());
        auto r = co_await s->recv(buf, stop.get_token());
        REQUIRE_FALSE(r);
        CHECK(r.error() == ferry::errc::cancelled);
        co_await canceller.join();
        REQUIRE(co_await s->recv_all(buf));
        CHECK(buf == pattern(64, 3));
      };
      ctx.run_until(ferry::when_all(server(), client()));
    });
  }

  TEST_CASE("a deadline bounds a receive that never gets data") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      ctx.run_until([&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint());
        REQUIRE(s);
        auto peer = co_await l->accept();
        REQUIRE(peer);
        ferry::io::deadline dl(ctx, 20ms);
        std::vector<std::byte> buf(8);
        auto r = co_await s->recv(buf, dl.token());
        REQUIRE_FALSE(r);
        CHECK(dl.expired());
      }());
    });
  }

  TEST_CASE("a bad descriptor gives a clear error, not a crash") {
    ferry_test::for_each_backend([](io_context& ctx) {
      tcp_socket bad(ctx, 1'000'000);
      std::vector<std::byte> buf(8);
      auto r = ctx.run_until(bad.recv(buf));
      REQUIRE_FALSE(r);
      CHECK(r.error() == std::errc::bad_file_descriptor);
      CHECK(r.error().message().rfind("recv: ", 0) == 0);
    });
  }

  TEST_CASE("connecting where nobody listens is refused with the reason") {
    ferry_test::for_each_backend([](io_context& ctx) {
      endpoint dead;
      {
        auto l = tcp_listener::listen(ctx, loopback());
        REQUIRE(l);
        dead = *l->local_endpoint();
      }
      auto s = ctx.run_until(tcp_socket::connect(ctx, dead));
      REQUIRE_FALSE(s);
      CHECK(s.error() == std::errc::connection_refused);
      CHECK(s.error().message().find("connect") == 0);
    });
  }

  TEST_CASE(
      "a congestion control set on the listener is inherited by accepted connections and an unknown one is "
      "refused with the reason") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      REQUIRE(l->set_congestion_control("reno"));
      auto refused = l->set_congestion_control("no-such-algorithm");
      REQUIRE_FALSE(refused);
      CHECK(refused.error() == ferry::errc::invalid_argument);
      CHECK(refused.error().message().find("\"no-such-algorithm\"") != std::string::npos);
      CHECK(refused.error().message().find("tcp_available_congestion_control") != std::string::npos);
      ctx.run_until([&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint());
        REQUIRE(s);
        auto peer = co_await l->accept();
        REQUIRE(peer);
        CHECK(peer->congestion_control() == "reno");
        REQUIRE(s->set_congestion_control("reno"));
        CHECK(s->congestion_control() == "reno");
        // the connection still carries bytes both ways after the switch
        auto data = pattern(256 << 10, 5);
        std::vector<std::byte> got(data.size());
        auto [sent, received] = co_await ferry::when_all(s->send_all(data), peer->recv_all(got));
        CHECK(sent.has_value());
        CHECK(received.has_value());
        CHECK(got == data);
      }());
    });
  }

  TEST_CASE("a batched receive completes a payload that trickles in, and small receives work after it") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto data = pattern((1 << 20) + 333, 8);
      std::vector<std::byte> got(data.size()), tail(10);
      ctx.run_until([&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint());
        REQUIRE(s);
        auto peer = co_await l->accept();
        REQUIRE(peer);
        auto sender = [&]() -> ferry::task<bool> {
          // pieces smaller and larger than the batch, with pauses, the last one shorter than the batch
          std::span<const std::byte> rest(data);
          for (std::size_t piece :
               {std::size_t{1000}, std::size_t{300 << 10}, std::size_t{70 << 10}, std::size_t{600 << 10}}) {
            auto sent = co_await s->send_all(rest.first(piece));
            if (!sent)
              co_return false;
            rest = rest.subspan(piece);
            co_await ctx.sleep_for(20ms);
          }
          auto sent = co_await s->send_all(rest);
          if (!sent)
            co_return false;
          co_await ctx.sleep_for(20ms);
          auto small = co_await s->send_all(std::span(data).first(tail.size()));
          co_return small.has_value();
        };
        auto receiver = [&]() -> ferry::task<bool> {
          auto big = co_await peer->recv_all_batched(got, 128 << 10);
          if (!big)
            co_return false;
          // the low-water mark is back to 1: ten bytes are enough to complete a receive
          ferry::io::deadline within(ctx, 2s);
          auto small = co_await peer->recv_all(tail, within.token());
          co_return small.has_value();
        };
        auto [sent, received] = co_await ferry::when_all(sender(), receiver());
        CHECK(sent);
        CHECK(received);
      }());
      CHECK(got == data);
      CHECK(std::equal(tail.begin(), tail.end(), data.begin()));
    });
  }

  TEST_CASE(
      "a socket's byte count moves with what it sends and receives, also in the middle of one receive") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto data = pattern(1 << 20, 5);
      std::vector<std::byte> got(data.size());
      ctx.run_until([&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint());
        REQUIRE(s);
        auto peer = co_await l->accept();
        REQUIRE(peer);
        // why: the kernel counts the handshake's SYN as one byte acknowledged on the side that connected
        const std::uint64_t s0 = s->bytes_moved(), peer0 = peer->bytes_moved();
        CHECK(s0 <= 1);
        CHECK(peer0 <= 1);
        // half of the payload arrives; the receive of all of it is still waiting, and the count says so
        REQUIRE(co_await s->send_all(std::span(data).first(data.size() / 2)));
        std::uint64_t midway = 0;
        bool received_all_midway = true;
        bool all_received = false;
        auto receiver = [&]() -> ferry::task<bool> {
          auto all = co_await peer->recv_all(got);
          all_received = true;
          co_return all.has_value();
        };
        auto sender = [&]() -> ferry::task<bool> {
          ferry::io::deadline within(ctx, 2s);
          while (peer->bytes_moved() - peer0 < data.size() / 2 && !within.token().stop_requested())
            co_await ctx.sleep_for(1ms);
          midway = peer->bytes_moved();
          received_all_midway = all_received;
          auto rest = co_await s->send_all(std::span(data).subspan(data.size() / 2));
          co_return rest.has_value();
        };
        auto [received, sent] = co_await ferry::when_all(receiver(), sender());
        CHECK(received);
        CHECK(sent);
        CHECK(midway - peer0 == data.size() / 2);
        CHECK_FALSE(received_all_midway); // the count moved while the one receive was still waiting
        CHECK(peer->bytes_moved() - peer0 == data.size());
        // what the sender moved counts once the receiver's kernel acknowledged it
        ferry::io::deadline within(ctx, 2s);
        while (s->bytes_moved() - s0 != data.size() && !within.token().stop_requested())
          co_await ctx.sleep_for(1ms);
        CHECK(s->bytes_moved() - s0 == data.size());
      }());
      CHECK(got == data);
    });
  }

  TEST_CASE("distinct loopback addresses act as distinct hosts") {
    ferry_test::for_each_backend([](io_context& ctx) {
      auto l = tcp_listener::listen(ctx, loopback("127.0.0.2"));
      REQUIRE(l);
      ctx.run_until([&]() -> ferry::task<> {
        auto s = co_await tcp_socket::connect(ctx, *l->local_endpoint(), {}, loopback("127.0.0.3"));
        REQUIRE(s);
        auto peer = co_await l->accept();
        REQUIRE(peer);
        auto remote = peer->remote_endpoint();
        REQUIRE(remote);
        CHECK(remote->to_string().rfind("127.0.0.3:", 0) == 0);
        CHECK(peer->local_endpoint()->to_string().rfind("127.0.0.2:", 0) == 0);
      }());
    });
  }

  TEST_CASE("a thousand connections echo concurrently") {
    ferry_test::for_each_backend([](io_context& ctx) {
      constexpr int connections = 1000;
      auto l = tcp_listener::listen(ctx, loopback());
      REQUIRE(l);
      auto ep = *l->local_endpoint();
      ferry::async_scope servers;
      auto serve = [&](tcp_socket s) -> ferry::task<> {
        std::vector<std::byte> buf(4096);
        for (;;) {
          auto n = co_await s.recv(buf);
          if (!n || *n == 0)
            co_return;
          if (auto ok = co_await s.send_all(std::span(buf).first(*n)); !ok)
            co_return;
        }
      };
      auto acceptor = [&]() -> ferry::task<> {
        for (int i = 0; i < connections; ++i) {
          auto s = co_await l->accept();
          REQUIRE(s);
          servers.spawn(serve(std::move(*s)));
        }
      };
      auto client = [&](int id) -> ferry::task<bool> {
        auto s = co_await tcp_socket::connect(ctx, ep);
        if (!s)
          co_return false;
        auto msg = pattern(1000, static_cast<unsigned>(id));
        for (int round = 0; round < 3; ++round) {
          if (auto ok = co_await s->send_all(msg); !ok)
            co_return false;
          std::vector<std::byte> back(msg.size());
          if (auto ok = co_await s->recv_all(back); !ok)
            co_return false;
          if (back != msg)
            co_return false;
        }
        co_return true;
      };
      std::vector<ferry::task<bool>> clients;
      for (int i = 0; i < connections; ++i)
        clients.push_back(client(i));
      auto [unused, oks] = ctx.run_until(ferry::when_all(acceptor(), ferry::when_all(std::move(clients))));
      (void)unused;
      CHECK(std::count(oks.begin(), oks.end(), true) == connections);
      ctx.run_until(servers.join());
    });
  }
}
