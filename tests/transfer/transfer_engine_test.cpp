#include "ferry/core/async_scope.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/transfer.hpp"

#include "../support/forked_child.hpp"
#include "../support/own_pid_namespace.hpp"
#include "../support/raw_frames.hpp"
#include "../support/refuse_syscall.hpp"
#include "../support/socket_ends.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <span>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using ferry::access;
using ferry::errc;
using ferry::transfer_batch;
using tcp_engine = ferry::transfer_engine<ferry::tcp_transport>;
using clock_type = std::chrono::steady_clock;

namespace engine_test {
/// A transport ahead of tcp that takes the slices for the second MiB of any peer's segment and throws when
/// handed one, as an application's own transport might, or any transport out of memory.
// why: outside the anonymous namespace, as verbs_test::rdma_advertiser: with internal linkage g++ 12 reports
// a false maybe-uninitialized in the engine's notification handler
struct throwing_transport {
  static constexpr std::string_view name = "thrower";
  explicit throwing_transport(ferry::transport_context&) {}
  bool reaches(const ferry::peer& p, std::uint64_t offset, std::uint64_t) const {
    return !p.is_self && offset >= (1 << 20);
  }
  void submit(const ferry::peer&, ferry::slice*) { throw std::runtime_error("no room for the slice"); }
  void abort(ferry::detail::batch_state*) noexcept {}
  void forget(const ferry::peer&) {}
  void shutdown() noexcept {}
};
static_assert(ferry::transport<throwing_transport>);

/// A transport ahead of tcp that takes every slice to another process and finds it cannot reach the peer
/// after all (as shared memory does when the owner's objects cannot be opened from here).
struct unreachable_transport {
  static constexpr std::string_view name = "unreachable";
  std::size_t handed = 0;
  explicit unreachable_transport(ferry::transport_context&) {}
  bool reaches(const ferry::peer& p, std::uint64_t, std::uint64_t) const { return !p.is_self; }
  void submit(const ferry::peer&, ferry::slice* s) noexcept {
    ++handed;
    s->settle(ferry::error(ferry::errc::peer_unreachable, "unreachable: no way there from here"));
  }
  void abort(ferry::detail::batch_state*) noexcept {}
  void forget(const ferry::peer&) {}
  void shutdown() noexcept {}
};
static_assert(ferry::transport<unreachable_transport>);
} // namespace engine_test

namespace {

std::byte pattern_at(std::size_t i, unsigned seed) {
  return static_cast<std::byte>((i * 131 + seed) & 0xff);
}

/// Whether a socket can bind ::1 here (IPv6 may be off).
bool ipv6_loopback_usable() {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ::sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<::sockaddr*>(&a), sizeof a) == 0;
  if (fd >= 0)
    ::close(fd);
  return ok;
}

void fill(std::span<std::byte> s, unsigned seed, std::size_t base = 0) {
  for (std::size_t i = 0; i < s.size(); ++i)
    s[i] = pattern_at(base + i, seed);
}

/// A target engine in a child process (forked before the parent starts threads). Its buffer holds
/// pattern(seed 7); it serves until killed; its line is the address it serves on.
ferry_test::forked_child spawn_target(const std::string& listen, std::size_t size, bool shared,
                                      unsigned io_threads = 0) {
  return ferry_test::forked_child::start([&](auto report) {
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "child", .listen = listen, .tcp = {.io_threads = io_threads}});
    ferry::shared_buffer shm;
    std::vector<std::byte> plain;
    std::byte* data;
    if (shared) {
      shm = std::move(*ferry::shared_buffer::create(size));
      data = shm.data();
    } else {
      plain.resize(size);
      data = plain.data();
    }
    fill({data, size}, 7);
    auto added = engine.registry().add(data, size, access::read_write, shared ? shm.name() : std::string());
    auto started = added ? engine.start() : ferry::result<void>(ferry::fail(added.error()));
    if (!started) {
      std::fprintf(stderr, "target child: %s\n", started.error().message().c_str());
      ::_exit(3);
    }
    report(engine.endpoint()->to_string());
    ferry::io::io_context::work_guard forever(ctx);
    ctx.run();
  });
}

/// A server that completes the handshake with a valid descriptor of `region_bytes`, and then either never
/// answers anything (a hung peer), or, given a `pace`, serves reads and writes slowly: it moves each payload
/// 1 MiB at a time with a pause of `pace` after each MiB (a peer behind a slow or shared link).
struct hand_made_target {
  ferry::io::io_context& ctx;
  std::optional<std::chrono::milliseconds> pace;
  std::vector<std::byte> region;
  ferry::io::tcp_listener listener;
  ferry::async_scope scope;
  std::vector<ferry::io::tcp_socket*> open;
  std::size_t accepted = 0; // connections accepted so far
  std::string address;
  // With a pace: a write's reply is held until the next read's reply goes, and both go in one send (the
  // initiator then receives them together).
  bool replies_together = false;
  // With a pace: a read's reply says that the read's status follows its payload, and this header (its
  // request id added to the read's) follows it.
  std::optional<ferry::tcp::frame_header> status_after_read;

  explicit hand_made_target(ferry::io::io_context& c, std::optional<std::chrono::milliseconds> slowly = {},
                            std::size_t region_bytes = 1 << 20)
      : ctx(c), pace(slowly), region(region_bytes) {
    listener = std::move(*ferry::io::tcp_listener::listen(ctx, *ferry::io::endpoint::parse("127.0.0.4:0")));
    address = listener.local_endpoint()->to_string();
    scope.spawn(accept_loop());
  }
  std::string descriptor() const {
    ferry::segment_descriptor d;
    d.name = "silent";
    d.incarnation = 1;
    d.host = "elsewhere";
    d.endpoints = {{"tcp", address}};
    d.regions = {{0, region.size(), access::read_write, "", 0, {}}};
    return d.to_json();
  }
  ferry::task<> accept_loop() {
    for (;;) {
      auto s = co_await listener.accept();
      if (!s)
        co_return;
      ++accepted;
      scope.spawn(serve(std::move(*s)));
    }
  }
  /// Moves `bytes` a MiB at a time, pausing `pace` after each; false once the socket fails.
  ferry::task<bool> slowly(ferry::io::tcp_socket& s, std::span<std::byte> bytes, bool receive) {
    for (std::size_t at = 0; at < bytes.size(); at += 1 << 20) {
      auto piece = bytes.subspan(at, std::min<std::size_t>(1 << 20, bytes.size() - at));
      ferry::result<void> moved;
      if (receive)
        moved = co_await s.recv_all(piece);
      else
        moved = co_await s.send_all(piece);
      if (!moved)
        co_return false;
      co_await ctx.sleep_for(*pace);
    }
    co_return true;
  }
  ferry::task<> serve(ferry::io::tcp_socket s) {
    open.push_back(&s);
    std::array<std::byte, ferry::tcp::frame_header::size> raw;
    std::vector<std::byte> sink(1 << 20), held;
    for (;;) {
      auto got = co_await s.recv_all(raw); // why: g++ 12 miscompiles co_await inside a loop or if condition
      if (!got)
        break;
      auto h = ferry::tcp::decode_header(raw);
      if (!h)
        break;
      ferry::tcp::frame_header reply;
      reply.request_id = h->request_id;
      if (h->type == ferry::tcp::frame_type::hello) {
        auto d = descriptor();
        reply.type = ferry::tcp::frame_type::hello_reply;
        reply.length = d.size();
        ferry::tcp::encode(reply, raw);
        co_await s.send_all(raw);
        co_await s.send_all(std::as_bytes(std::span(d)));
      } else if (pace && h->type == ferry::tcp::frame_type::write && h->offset + h->length <= region.size()) {
        if (auto ok = co_await slowly(s, std::span(region).subspan(h->offset, h->length), true); !ok)
          break;
        reply.type = ferry::tcp::frame_type::write_reply;
        ferry::tcp::encode(reply, raw);
        if (replies_together) {
          held.insert(held.end(), raw.begin(), raw.end());
          continue;
        }
        co_await s.send_all(raw);
      } else if (pace && h->type == ferry::tcp::frame_type::read && h->offset + h->length <= region.size()) {
        reply.type = ferry::tcp::frame_type::read_reply;
        reply.length = h->length;
        reply.flags = status_after_read ? ferry::tcp::frame_header::status_follows : 0;
        ferry::tcp::encode(reply, raw);
        held.insert(held.end(), raw.begin(), raw.end());
        co_await s.send_all(std::span(held));
        held.clear();
        if (auto ok = co_await slowly(s, std::span(region).subspan(h->offset, h->length), false); !ok)
          break;
        if (status_after_read) {
          auto after = *status_after_read;
          after.request_id += h->request_id;
          ferry::tcp::encode(after, raw);
          if (auto ok = co_await s.send_all(raw); !ok)
            break;
        }
      } else if (h->payload_length() > 0) {
        if (auto ok = co_await s.recv_all(std::span(sink).first(h->payload_length())); !ok)
          break;
      }
    }
    std::erase(open, &s);
  }
  void close() {
    listener.close();
    for (auto* s : open)
      s->shutdown();
    ctx.run_until(scope.join());
  }
};

/// A target serving `bytes` of read-write memory on 127.0.0.2 and a tcp-only initiator with as much local
/// memory, on one io_context.
struct served_pair {
  std::vector<std::byte> remote, local; // first: they outlive the engines
  ferry::io::io_context ctx;
  ferry::default_engine target;
  tcp_engine initiator;

  explicit served_pair(std::size_t bytes, ferry::engine_options initiator_options = {.name = "initiator"},
                       ferry::engine_options target_options = {.name = "target", .listen = "127.0.0.2:0"})
      : remote(bytes), local(bytes), target(ctx, std::move(target_options)),
        initiator(ctx, std::move(initiator_options)) {
    REQUIRE(target.registry().add(remote.data(), remote.size(), access::read_write));
    REQUIRE(target.start());
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
  }
  std::string address() const { return target.endpoint()->to_string(); }
};

/// A forked target on `listen` (its connections on `io_threads` of their own, as the initiator's) is killed
/// while a 512 MiB batch writes to it: the batch fails before its deadline; a target restarted on the same
/// address serves the next batch.
void kill_mid_batch_then_restart(const std::string& listen, unsigned io_threads) {
  auto child = spawn_target(listen, 64 << 20, false, io_threads);
  std::string address = child.line();
  ferry::io::io_context ctx;
  tcp_engine initiator(ctx,
                       {.name = "initiator",
                        .slice_size = 256 * 1024,
                        .tcp = {.io_threads = io_threads, .connect_timeout = 500ms, .reply_timeout = 2s}});
  std::vector<std::byte> local(64 << 20);
  fill(local, 1);
  REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
  auto seg = ctx.run_until(initiator.open_segment(address));
  REQUIRE(seg);
  ferry::batch_result killed;
  auto t0 = clock_type::now();
  ctx.run_until([&]() -> ferry::task<> {
    ferry::async_scope killer;
    auto kill_soon = [&]() -> ferry::task<> {
      co_await ctx.sleep_for(5ms);
      child.kill();
    };
    killer.spawn(kill_soon());
    transfer_batch big;
    for (int round = 0; round < 8; ++round)
      big.write(local.data(), *seg, 0, local.size());
    killed = co_await initiator.transfer(big, ferry::transfer_options().with_timeout(20s));
    co_await killer.join();
  }());
  CHECK(clock_type::now() - t0 < 15s);
  REQUIRE_FALSE(killed.ok());
  MESSAGE("batch to a killed target (io threads ", io_threads, "): ", killed.first_error().message());
  auto restarted = spawn_target(address, 64 << 20, false, io_threads);
  REQUIRE(restarted.line() == address);
  transfer_batch next;
  next.write(local.data(), *seg, 0, 1 << 20).read(local.data() + (1 << 20), *seg, 8 << 20, 1 << 20);
  auto r = ctx.run_until(initiator.transfer(next, ferry::transfer_options().with_timeout(10s)));
  CHECK_MESSAGE(r.ok(), r.first_error().message());
  for (std::size_t i = 0; i < (1 << 20); i += 997)
    REQUIRE(local[(1 << 20) + i] == pattern_at((8 << 20) + i, 7));
}

/// How replace_mid_batch() replaces the target.
enum class replacement {
  old_goes,                // the old process shuts down
  reopened,                // the old process stays; the initiator opens the segment again meanwhile
  reopened_then_cancelled, // as reopened, and then the batch is cancelled
};

/// A batch of two writes to the segment "kv": the small first one lands in the process that serves it; then,
/// while the large second write is under way, a new process takes the name over. With old_goes, the old
/// process goes and the batch finds the new one when it looks the segment up again; with reopened, the old
/// one stays and the initiator opens the segment again meanwhile (as another batch's retry would), so the
/// batch's later slices reach the new process and none fails. Either way the batch may only succeed if the
/// new process has every byte of both writes; cancelled before it could write them again, it must not report
/// the first write done.
void replace_mid_batch(replacement how) {
  const bool old_goes = how == replacement::old_goes;
  std::stop_source cancel;
  constexpr std::size_t small = 64 << 10, large = 64 << 20, region = large + (1 << 20);
  ferry::io::io_context ctx;
  ferry::memory_metadata_store meta;
  std::vector<std::byte> old_kv(region), new_kv(region), src(small + large); // outlive the engines
  fill(src, 31);
  auto serve_kv = [&](std::vector<std::byte>& kv, const char* listen) {
    auto e =
        std::make_unique<ferry::default_engine>(ctx, ferry::engine_options{.name = "kv", .listen = listen});
    e->use_metadata(meta);
    REQUIRE(e->registry().add(kv.data(), kv.size(), access::read_write));
    REQUIRE(e->start());
    return e;
  };
  auto old_target = serve_kv(old_kv, "127.0.0.2:0");
  std::unique_ptr<ferry::default_engine> new_target;
  tcp_engine initiator(ctx, {.name = "initiator", .tcp = {.connections_per_peer = 1}});
  initiator.use_metadata(meta);
  REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
  auto landed = [&](const std::vector<std::byte>& kv, std::size_t at, std::size_t from, std::size_t n) {
    return std::memcmp(kv.data() + at, src.data() + from, n) == 0;
  };
  ferry::batch_result r;
  ctx.run_until([&]() -> ferry::task<> {
    REQUIRE(co_await old_target->publish());
    auto seg = co_await initiator.open_segment("kv");
    REQUIRE(seg);
    transfer_batch b;
    b.write(src.data(), *seg, 0, small).write(src.data() + small, *seg, 1 << 20, large);
    ferry::async_scope replace;
    auto replace_once_the_first_landed = [&]() -> ferry::task<> {
      // why: once part of the second write is in, the first one's reply has long been taken
      while (!landed(old_kv, 0, 0, small) || !landed(old_kv, 1 << 20, small, 4 << 20))
        co_await ctx.schedule();
      REQUIRE(co_await old_target->unpublish());
      new_target = serve_kv(new_kv, "127.0.0.3:0");
      REQUIRE(co_await new_target->publish());
      if (old_goes) {
        co_await old_target->shutdown();
      } else {
        auto again = co_await initiator.open_segment("kv");
        REQUIRE(again);
        CHECK(*again == *seg);
        if (how == replacement::reopened_then_cancelled)
          cancel.request_stop();
      }
    };
    replace.spawn(replace_once_the_first_landed());
    r = co_await initiator.transfer(
        b, ferry::transfer_options().with_timeout(20s).with_stop(cancel.get_token()));
    co_await replace.join();
  }());
  REQUIRE_MESSAGE(!landed(old_kv, 1 << 20, small, large), "the second write ended before the replacement");
  if (how == replacement::reopened_then_cancelled) {
    REQUIRE_FALSE(r.ok());
    REQUIRE(landed(old_kv, 0, 0, small)); // it landed, in the process that no longer serves "kv"
    REQUIRE_FALSE(r.requests[0]);
    CHECK(r.requests[0].error() == errc::cancelled);
    CHECK(r.requests[0].error().message().find("since been replaced") != std::string::npos);
    return;
  }
  REQUIRE_MESSAGE(r.ok(), r.first_error().message());
  CHECK(landed(new_kv, 0, 0, small));
  CHECK(landed(new_kv, 1 << 20, small, large));
}

/// The memory store with the delays of a remote one: a lease takes 5 ms to grant, the first leased put 30 ms
/// and later ones 5 ms (so that two registrations under way at once would land out of order). It can also
/// lose the next lease it is asked to keep alive (with the keys under it, as a store down longer than the
/// TTL does), and fail the next leased puts as a store that does not answer in time.
struct slow_store {
  explicit slow_store(ferry::io::io_context& c) : ctx(c) {}
  ferry::io::io_context& ctx;
  ferry::memory_metadata_store inner;
  int leased_puts = 0;
  bool lose_next_lease = false;
  int leased_puts_to_fail = 0;

  ferry::task<ferry::result<std::optional<std::string>>> get(std::string key) {
    co_return co_await inner.get(std::move(key));
  }
  ferry::task<ferry::result<void>> put(std::string key, std::string value) {
    co_return co_await inner.put(std::move(key), std::move(value));
  }
  ferry::task<ferry::result<void>> remove(std::string key) {
    co_return co_await inner.remove(std::move(key));
  }
  ferry::task<ferry::result<std::vector<std::pair<std::string, std::string>>>> list(std::string prefix) {
    co_return co_await inner.list(std::move(prefix));
  }
  ferry::task<ferry::result<ferry::lease_id>> grant(std::chrono::milliseconds ttl) {
    (void)co_await ctx.sleep_for(5ms);
    co_return co_await inner.grant(ttl);
  }
  ferry::task<ferry::result<void>> keep_alive(ferry::lease_id lease) {
    if (std::exchange(lose_next_lease, false)) {
      (void)co_await inner.revoke(lease);
      co_return ferry::fail(errc::not_found, "store: no such lease");
    }
    co_return co_await inner.keep_alive(lease);
  }
  ferry::task<ferry::result<void>> revoke(ferry::lease_id lease) { co_return co_await inner.revoke(lease); }
  ferry::task<ferry::result<void>> put(std::string key, std::string value, ferry::lease_id lease) {
    (void)co_await ctx.sleep_for(++leased_puts == 1 ? 30ms : 5ms);
    if (leased_puts_to_fail > 0) {
      --leased_puts_to_fail;
      co_return ferry::fail(errc::timed_out, "store: no answer in time");
    }
    co_return co_await inner.put(std::move(key), std::move(value), lease);
  }
};
static_assert(ferry::leasing_metadata_store<slow_store>);

/// An engine "kv" that publishes its segment in a slow_store under a lease of 150 ms.
struct kv_on_slow_store {
  ferry::io::io_context ctx;
  slow_store store{ctx};
  ferry::default_engine kv{ctx, {.name = "kv", .listen = "127.0.0.2:0", .metadata_ttl = 150ms}};

  kv_on_slow_store() {
    REQUIRE(kv.start());
    kv.use_metadata(store);
  }
  /// Four TTLs later, the segment is in the store and the engine reports no trouble; then it shuts down.
  void check_registered_four_ttls_later() {
    ctx.run_until([](ferry::io::io_context& c) -> ferry::task<> { (void)co_await c.sleep_for(600ms); }(ctx));
    auto held = ferry::sync_wait(store.inner.get("ferry/segments/kv"));
    REQUIRE(held);
    CHECK(held->has_value());
    CHECK_FALSE(kv.registration_error());
    ctx.run_until(kv.shutdown());
  }
};

/// An engine named `name`, listening on `listen`, that serves `kv` read-write.
std::unique_ptr<ferry::default_engine> serve_memory(ferry::io::io_context& ctx, const char* name,
                                                    const std::string& listen, std::vector<std::byte>& kv) {
  auto e =
      std::make_unique<ferry::default_engine>(ctx, ferry::engine_options{.name = name, .listen = listen});
  REQUIRE(e->registry().add(kv.data(), kv.size(), access::read_write));
  REQUIRE(e->start());
  return e;
}

/// An engine on a loop of its own, its data connections on another (io_threads 1): the test can hold up its
/// main loop, where it answers handshakes, notifications and pings, while its memory still takes bytes.
struct engine_with_held_loop {
  ferry::io::io_context ctx;
  ferry::default_engine engine;
  std::atomic<bool> held{false}, release{false};
  std::thread holder;

  engine_with_held_loop(const char* name, const char* listen, std::vector<std::byte>& kv)
      : engine(ctx, {.name = name, .listen = listen, .tcp = {.io_threads = 1}}) {
    REQUIRE(engine.registry().add(kv.data(), kv.size(), access::read_write));
    REQUIRE(engine.start());
    engine.run_in_background();
  }
  ~engine_with_held_loop() { let_go(); }
  /// Holds the main loop (up to 30 s) from now until let_go().
  void hold() {
    holder = std::thread([this] {
      ferry::sync_wait([](engine_with_held_loop& me) -> ferry::task<> {
        co_await me.ctx.schedule();
        me.held = true;
        for (auto until = clock_type::now() + 30s; !me.release && clock_type::now() < until;)
          std::this_thread::sleep_for(1ms);
      }(*this));
    });
    while (!held)
      std::this_thread::sleep_for(1ms);
  }
  void let_go() {
    release = true;
    if (holder.joinable())
      holder.join();
  }
};

/// Opens the segment at `address` and writes all of `src` to its offset 0; the segment's id.
ferry::task<ferry::segment_id> open_and_write(tcp_engine& initiator, std::string address,
                                              std::vector<std::byte>& src) {
  auto seg = co_await initiator.open_segment(std::move(address));
  REQUIRE(seg);
  transfer_batch batch;
  batch.write(src.data(), *seg, 0, src.size());
  auto r = co_await initiator.transfer(batch);
  REQUIRE_MESSAGE(r.ok(), r.first_error().message());
  co_return *seg;
}

/// Whether this process maps the shared-memory object `name` (as /dev/shm/NAME in /proc/self/maps).
bool maps_object(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find("/dev/shm" + name) != std::string::npos)
      return true;
  return false;
}

/// A forked same-host target serving a shared 1 MiB region, and a local engine that finds segments through
/// a metadata store, with 1 MiB of its own to write from.
struct same_host_writer {
  ferry_test::forked_child child = spawn_target("127.0.0.2:0", 1 << 20, true);
  ferry::io::io_context ctx;
  ferry::memory_metadata_store store;
  ferry::default_engine engine{ctx, {.name = "local", .tcp = {.connect_timeout = 500ms}}};
  std::vector<std::byte> buf = std::vector<std::byte>(1 << 20);
  bool ready = false;

  same_host_writer() {
    engine.use_metadata(store);
    fill(buf, 17);
    ready = engine.registry().add(buf.data(), buf.size(), access::none).has_value();
  }
  /// The target's descriptor, as it hands it out.
  ferry::result<ferry::segment_descriptor> descriptor() {
    return ctx.run_until(
        ferry::tcp_transport::fetch_descriptor(ctx, *ferry::io::endpoint::parse(child.line()), 5s, {}));
  }
};

/// An engine that exposes 1 MiB and has 1 MiB of its own memory (holding pattern `seed`), and a batch that
/// writes the latter into the former, in the engine's own segment.
struct own_segment_write {
  ferry::io::io_context ctx;
  ferry::default_engine engine{ctx, {.name = "self"}};
  std::vector<std::byte> exposed = std::vector<std::byte>(1 << 20), local = std::vector<std::byte>(1 << 20);
  transfer_batch w;

  explicit own_segment_write(unsigned seed) {
    fill(local, seed);
    REQUIRE(engine.registry().add(exposed.data(), exposed.size(), access::read_write));
    REQUIRE(engine.registry().add(local.data(), local.size(), access::none));
    w.write(local.data(), engine.self, 0, local.size());
  }
};

/// How write_to_a_target_that_ended() goes about it.
struct ended_target_case {
  bool incarnation_zero = false; // the target is found through a metadata store that holds its descriptor
                                 // with incarnation 0 (as a descriptor made elsewhere may have it)
  bool left_unreaped = false;    // the killed target stays a zombie (its parent, this process, waits)
  bool unmapped_before_writing = false; // its memory must be unmapped before anything is sent to it again
};

/// A same-host target with a shared region is written once through shared memory and then killed; a
/// second write must fail (nothing serves the segment), never land in the memory it left behind. 0 when
/// so, else a code saying what went wrong. Also checks that the dead owner's memory is unmapped: after the
/// failed write, or (`unmapped_before_writing`) within a few seconds without one.
int write_to_a_target_that_ended(ended_target_case how = {}) {
  same_host_writer setup;
  auto& [child, ctx, store, engine, buf, ready] = setup;
  if (!ready)
    return 10;
  std::string locator = child.line();
  if (how.incarnation_zero) {
    auto d = setup.descriptor();
    if (!d)
      return 16;
    d->incarnation = 0;
    if (!ferry::sync_wait(store.put("ferry/segments/" + d->name, d->to_json())))
      return 17;
    locator = d->name;
  }
  auto seg = ctx.run_until(engine.open_segment(locator));
  if (!seg)
    return 11;
  const std::string object = engine.find(*seg)->descriptor.regions.front().shm_name;
  const std::string gates = engine.find(*seg)->descriptor.shm_gates;
  transfer_batch w;
  w.write(buf.data(), *seg, 0, buf.size());
  if (!ctx.run_until(engine.transfer(w)).ok() || engine.routed_bytes("shm") != buf.size())
    return 12;
  if (!maps_object(object) || !maps_object(gates))
    return 13;
  if (how.left_unreaped)
    child.kill_leaving_zombie();
  else
    child.kill();
  if (how.unmapped_before_writing) {
    auto until = std::chrono::steady_clock::now() + 5s;
    while ((maps_object(object) || maps_object(gates)) && std::chrono::steady_clock::now() < until)
      ctx.run_until(ctx.sleep_for(20ms));
    if (maps_object(object) || maps_object(gates))
      return 18; // its memory (and /dev/shm's) is held for a process that is gone
    // and with nothing mapped any more, nothing is left to look after: the loop runs out of work (a stop
    // after 3 s says it did not)
    std::atomic<bool> ran_out{false};
    std::thread watchdog([&] {
      for (int i = 0; i < 300 && !ran_out; ++i)
        std::this_thread::sleep_for(10ms);
      if (!ran_out)
        setup.ctx.stop(); // why: setup's, not the binding's: clang 14 does not capture structured bindings
    });
    ctx.run();
    ran_out = !ctx.stopped();
    watchdog.join();
    if (!ran_out)
      return 19;
    ctx.restart();
  }
  auto again = ctx.run_until(engine.transfer(w, ferry::transfer_options().with_timeout(5s)));
  if (again.ok())
    return 14; // reported done, with nobody to read it
  if (maps_object(object) || maps_object(gates))
    return 15; // still mapped
  return 0;
}

/// A same-host target dies while a copy to it waits (here: for the owner to finish closing the region's gate,
/// which the test holds closing): the copy then goes into memory nobody reads, and must not be reported done.
/// 0 when so, else a code.
int target_dies_while_a_copy_waits() {
  same_host_writer setup;
  auto& [child, ctx, store, engine, buf, ready] = setup;
  if (!ready)
    return 10;
  auto seg = ctx.run_until(engine.open_segment(child.line()));
  if (!seg)
    return 11;
  const auto& d = engine.find(*seg)->descriptor;
  const std::uint32_t gate = d.regions.front().shm_gate;
  const std::uint64_t epoch = d.regions.front().shm_epoch;
  transfer_batch w;
  w.write(buf.data(), *seg, 0, buf.size());
  if (!ctx.run_until(engine.transfer(w)).ok() || engine.routed_bytes("shm") != buf.size())
    return 12;
  // why: as in the gates' own test: the owner's table holds, after its magic and namespace, the gates
  // (epoch << 2 | state, 2 meaning closing) and then the tickets (pid << 32 | gate + 1)
  int fd = ::shm_open(d.shm_gates.c_str(), O_RDWR, 0);
  if (fd < 0)
    return 13;
  const std::size_t span = 16 + 8 * (ferry::shm_gates::gate_count + ferry::shm_gates::ticket_count);
  void* table = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (table == MAP_FAILED)
    return 14;
  auto* words = static_cast<std::atomic<std::uint64_t>*>(table);
  auto& word = words[2 + gate];
  if (word.load() != ((epoch << 2) | 1))
    return 15;
  word.store((epoch << 2) | 2); // the owner, held up in the middle of closing the gate
  std::atomic<bool> copy_waited{false};
  std::thread owner_dies([&] {
    // once the copy waits at the gate (its ticket marked with it), the owner dies, and the gate opens again
    auto until = std::chrono::steady_clock::now() + 2s;
    while (!copy_waited && std::chrono::steady_clock::now() < until) {
      for (std::uint32_t i = 0; i < ferry::shm_gates::ticket_count; ++i)
        if (static_cast<std::uint32_t>(words[2 + ferry::shm_gates::gate_count + i].load()) == gate + 1)
          copy_waited = true;
      std::this_thread::yield();
    }
    setup.child.kill(); // why: setup's, not the binding's: clang 14 does not capture structured bindings
    word.store((epoch << 2) | 1);
  });
  fill(buf, 19);
  auto again = ctx.run_until(engine.transfer(w, ferry::transfer_options().with_timeout(5s)));
  owner_dies.join();
  ::munmap(table, span);
  if (!copy_waited)
    return 16;
  return again.ok() ? 17 : 0; // 17: reported done, with nobody to read it
}

/// Makes pidfd_open fail with ENOSYS in this process and its children, as an old kernel or a seccomp profile
/// does; 0 when it does, else a code.
int block_pidfd_open() {
  if (!ferry_test::refuse_syscall(SYS_pidfd_open, ENOSYS))
    return 9;
  if (::syscall(SYS_pidfd_open, ::getpid(), 0) >= 0 || errno != ENOSYS)
    return 8;
  return 0;
}

/// Run as process 1 of a PID namespace of its own: a same-host target with a shared region is looked at
/// (its descriptor put in a metadata store; with `written_to_before`, also written once through shared
/// memory) and killed, and the kernel gives its process id to another process, a sleeper. A write must fail
/// (nothing serves the segment), never land in the memory the target left behind because the sleeper lives
/// under its pid. 0 when so, else a code.
int write_to_a_target_whose_pid_was_reused(bool written_to_before) {
  same_host_writer setup;
  auto& [child, ctx, store, engine, buf, ready] = setup;
  if (!ready)
    return 10;
  auto d = setup.descriptor();
  if (!d || d->pid == 0 || d->pid_start == 0 || d->regions.empty())
    return 16;
  // why: the target is killed, and no process of this namespace is left to clear what it leaves behind
  struct clear_left {
    std::vector<std::string> names;
    ~clear_left() {
      for (auto& n : names)
        ::shm_unlink(n.c_str());
    }
  } left_behind{{d->regions.front().shm_name, d->shm_gates}};
  if (!ferry::sync_wait(store.put("ferry/segments/" + d->name, d->to_json())))
    return 17;
  auto seg = ctx.run_until(engine.open_segment(d->name));
  if (!seg)
    return 11;
  transfer_batch w;
  w.write(buf.data(), *seg, 0, buf.size());
  if (written_to_before) {
    // a copy through shared memory first: this process looked at the target while it lived
    if (!ctx.run_until(engine.transfer(w)).ok() || engine.routed_bytes("shm") != buf.size())
      return 12;
    fill(buf, 18);
  }
  child.kill();
  // why: start times count clock ticks (10 ms); a real reuse of an id comes once the ids went all the way
  // round, far later than the next tick
  std::this_thread::sleep_for(30ms);
  // the next process of this namespace gets the target's id
  if (!ferry_test::next_pid_is(static_cast<pid_t>(d->pid)))
    return ferry_test::no_own_pid_namespace;
  pid_t sleeper = ::fork();
  if (sleeper == 0) {
    ::pause();
    ::_exit(0);
  }
  struct end_sleeper {
    pid_t pid;
    ~end_sleeper() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } ended{sleeper};
  if (sleeper != static_cast<pid_t>(d->pid))
    return 22;
  auto r = ctx.run_until(engine.transfer(w, ferry::transfer_options().with_timeout(5s)));
  if (r.ok())
    return 14; // reported done, with nobody to read it
  // the memory the target left behind still holds what the target put there
  int fd = ::shm_open(d->regions.front().shm_name.c_str(), O_RDONLY, 0);
  if (fd < 0)
    return 18;
  void* left = ::mmap(nullptr, buf.size(), PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (left == MAP_FAILED)
    return 19;
  bool written = std::memcmp(left, buf.data(), buf.size()) == 0;
  ::munmap(left, buf.size());
  return written ? 15 : 0;
}

} // namespace

TEST_SUITE("transfer_engine") {
  TEST_CASE("a slice size larger than a tcp frame carries is taken as the largest one, and bytes move") {
    ferry::io::io_context ctx;
    std::vector<std::byte> remote((65 << 20) + 4096), src(remote.size()), back(remote.size());
    fill(src, 43);
    ferry::default_engine target(ctx, {.name = "target", .listen = "127.0.0.2:0"});
    tcp_engine initiator(ctx, {.name = "initiator", .slice_size = 128u << 20});
    REQUIRE(target.registry().add(remote.data(), remote.size(), access::read_write));
    REQUIRE(target.start());
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    REQUIRE(initiator.registry().add(back.data(), back.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch w, r;
      w.write(src.data(), *seg, 0, src.size());
      r.read(back.data(), *seg, 0, back.size());
      auto wr = co_await initiator.transfer(w, ferry::transfer_options().with_timeout(60s));
      REQUIRE_MESSAGE(wr.ok(), wr.first_error().message());
      auto rr = co_await initiator.transfer(r, ferry::transfer_options().with_timeout(60s));
      REQUIRE_MESSAGE(rr.ok(), rr.first_error().message());
    }());
    CHECK(remote == src);
    CHECK(back == src);
  }

  TEST_CASE("writes and reads move every byte between two engines over tcp") {
    std::string listen = "127.0.0.2:0";
    SUBCASE("IPv4") {}
    SUBCASE("IPv6") {
      if (!ipv6_loopback_usable()) {
        MESSAGE("IPv6 is off on this machine: only IPv4 ran");
        return;
      }
      listen = "[::1]:0";
    }
    ferry::io::io_context ctx;
    ferry::default_engine target(ctx, {.name = "target", .listen = listen});
    tcp_engine initiator(ctx, {.name = "initiator", .slice_size = 64 * 1024});
    std::vector<std::byte> remote(4 << 20), src((2 << 20) + 123), back(src.size());
    fill(src, 3);
    REQUIRE(target.registry().add(remote.data(), remote.size(), access::read_write));
    REQUIRE(target.start());
    CHECK(target.endpoint()->to_string().starts_with(listen.substr(0, listen.size() - 1)));
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    REQUIRE(initiator.registry().add(back.data(), back.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch w;
      w.write(src.data(), *seg, 1000, 1 << 20)
          .write(src.data() + (1 << 20), *seg, 1000 + (1 << 20), src.size() - (1 << 20));
      auto wr = co_await initiator.transfer(w);
      REQUIRE_MESSAGE(wr.ok(), wr.first_error().message());
      CHECK(wr.bytes() == src.size());
      transfer_batch r;
      r.read(back.data(), *seg, 1000, back.size());
      auto rr = co_await initiator.transfer(r);
      REQUIRE_MESSAGE(rr.ok(), rr.first_error().message());
      CHECK(*rr.requests[0] == back.size());
    }());
    CHECK(back == src);
    CHECK(std::equal(src.begin(), src.end(), remote.begin() + 1000));
    CHECK(initiator.routed_bytes("tcp") == 2 * src.size());
  }

  TEST_CASE("the congestion control asked for is used on both ends of every data connection") {
    served_pair p(2 << 20,
                  {.name = "initiator", .slice_size = 64 * 1024, .tcp = {.congestion_control = "reno"}},
                  {.name = "target", .listen = "127.0.0.2:0", .tcp = {.congestion_control = "reno"}});
    std::span<std::byte> src(p.local.data(), 1 << 20), back(p.local.data() + (1 << 20), 1 << 20);
    fill(src, 9);
    p.ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      transfer_batch w;
      w.write(src.data(), *seg, 0, src.size());
      auto wr = co_await p.initiator.transfer(w);
      REQUIRE_MESSAGE(wr.ok(), wr.first_error().message());
      transfer_batch r;
      r.read(back.data(), *seg, 0, back.size());
      auto rr = co_await p.initiator.transfer(r);
      REQUIRE_MESSAGE(rr.ok(), rr.first_error().message());
    }());
    CHECK(std::equal(back.begin(), back.end(), src.begin(), src.end()));
    // Both engines live in this process: every socket of it with the target's address at one end is one end
    // of a data connection (the handshake's connection is closed by now).
    auto ends = ferry_test::congestion_controls_towards(*p.target.endpoint());
    CHECK(ends.size() >= 2);
    for (auto& name : ends)
      CHECK(name == "reno");
  }

  TEST_CASE(
      "a congestion control the kernel refuses fails start() and transfers with the reason, never a hang") {
    ferry::io::io_context ctx;
    ferry::default_engine refused(
        ctx, {.name = "target", .listen = "127.0.0.2:0", .tcp = {.congestion_control = "no-such-algorithm"}});
    auto started = refused.start();
    REQUIRE_FALSE(started);
    CHECK(started.error().message().find("no-such-algorithm") != std::string::npos);

    served_pair p(1 << 20, {.name = "initiator", .tcp = {.congestion_control = "no-such-algorithm"}});
    auto t0 = clock_type::now();
    auto r = p.ctx.run_until([&]() -> ferry::task<ferry::batch_result> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      transfer_batch w;
      w.write(p.local.data(), *seg, 0, p.local.size());
      co_return co_await p.initiator.transfer(w, ferry::transfer_options().with_timeout(5s));
    }());
    REQUIRE_FALSE(r.ok());
    CHECK(r.first_error() == errc::invalid_argument);
    CHECK(r.first_error().message().find("no-such-algorithm") != std::string::npos);
    CHECK(clock_type::now() - t0 < 4s);
  }

  TEST_CASE("every data connection sends keepalives on both ends after the idle time asked for") {
    served_pair p(1 << 20, {.name = "initiator", .slice_size = 64 * 1024, .tcp = {.keepalive_idle = 12s}},
                  {.name = "target", .listen = "127.0.0.2:0", .tcp = {.keepalive_idle = 12s}});
    p.ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      transfer_batch w;
      w.write(p.local.data(), *seg, 0, p.local.size());
      auto r = co_await p.initiator.transfer(w);
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      REQUIRE(co_await p.initiator.probe(*seg)); // and the control connection, which a probe opens
    }());
    auto fds = ferry_test::sockets_towards(*p.target.endpoint());
    CHECK(fds.size() >= 4); // both ends of every data connection and of the control connection
    for (int fd : fds) {
      int on = 0, idle = 0, interval = 0, probes = 0;
      ::socklen_t n = sizeof(int);
      REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, &n) == 0);
      REQUIRE(::getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &n) == 0);
      REQUIRE(::getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, &n) == 0);
      REQUIRE(::getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, &n) == 0);
      CHECK(on == 1);
      CHECK(idle == 12);
      CHECK(interval == 4);
      CHECK(probes == 3);
    }
  }

  TEST_CASE("a same-host peer in another process is reached through shared memory, never tcp") {
    auto child = spawn_target("127.0.0.2:0", 8 << 20, true);
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "local", .shm = {.copy_threads = 2}});
    std::vector<std::byte> buf(4 << 20), back(4 << 20);
    fill(buf, 11);
    REQUIRE(engine.registry().add(buf.data(), buf.size(), access::none));
    REQUIRE(engine.registry().add(back.data(), back.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await engine.open_segment(child.line());
      REQUIRE(seg);
      transfer_batch before;
      before.read(back.data(), *seg, 0, back.size());
      REQUIRE((co_await engine.transfer(before)).ok());
      for (std::size_t i = 0; i < back.size(); i += 4099)
        REQUIRE(back[i] == pattern_at(i, 7));
      transfer_batch w, r;
      w.write(buf.data(), *seg, 4 << 20, buf.size());
      r.read(back.data(), *seg, 4 << 20, back.size());
      REQUIRE((co_await engine.transfer(w)).ok());
      REQUIRE((co_await engine.transfer(r)).ok());
    }());
    CHECK(back == buf);
    CHECK(engine.routed_bytes("shm") == 3 * buf.size());
    CHECK(engine.routed_bytes("tcp") == 0);
  }

  TEST_CASE("bytes for a same-host target that restarted go to the new process, not the old memory") {
    auto first = spawn_target("127.0.0.2:0", 1 << 20, true);
    std::string address = first.line();
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "local"});
    std::vector<std::byte> buf(1 << 20), back(1 << 20);
    fill(buf, 21);
    REQUIRE(engine.registry().add(buf.data(), buf.size(), access::none));
    REQUIRE(engine.registry().add(back.data(), back.size(), access::none));
    auto seg = ctx.run_until(engine.open_segment(address));
    REQUIRE(seg);
    transfer_batch w, r;
    w.write(buf.data(), *seg, 0, buf.size());
    r.read(back.data(), *seg, 0, back.size());
    REQUIRE(ctx.run_until(engine.transfer(w)).ok());
    CHECK(engine.routed_bytes("shm") == buf.size());
    first.kill();
    auto second = spawn_target(address, 1 << 20, true);
    REQUIRE(second.line() == address);
    auto again = ctx.run_until(engine.transfer(w));
    REQUIRE_MESSAGE(again.ok(), again.first_error().message());
    REQUIRE(ctx.run_until(engine.transfer(r)).ok());
    CHECK(back == buf); // the new process has the bytes
    // the engine noticed the restart (the old process is gone; a new one answers at its address) and took
    // the new descriptor, whose shared memory it then uses
    CHECK(engine.find(*seg)->descriptor.pid == static_cast<std::uint64_t>(second.pid()));
    CHECK(engine.routed_bytes("shm") >= 3 * buf.size());
  }

  TEST_CASE(
      "a same-host target that ended is not written through its orphaned shared memory, which is unmapped") {
    CHECK(write_to_a_target_that_ended() == 0);
    CHECK(write_to_a_target_that_ended({.left_unreaped = true}) == 0);
  }

  TEST_CASE("a copy that waited while its same-host target died is not reported done") {
    CHECK(target_dies_while_a_copy_waits() == 0);
  }

  TEST_CASE("the memory of a same-host target that ended is unmapped without waiting for a transfer to it") {
    CHECK(write_to_a_target_that_ended({.unmapped_before_writing = true}) == 0);
  }

  TEST_CASE(
      "a same-host descriptor whose region names a FIFO, not shared memory, does not block the engine") {
    // why: a descriptor comes from the network or a metadata store; opening a FIFO to read waits for a
    // writer, and the engine's loop would wait with it
    same_host_writer setup;
    auto& [child, ctx, store, engine, buf, ready] = setup;
    REQUIRE(ready);
    auto d = setup.descriptor();
    REQUIRE(d);
    REQUIRE_FALSE(d->regions.empty());
    const std::string fifo = "/ferry-test-fifo-" + std::to_string(::getpid());
    REQUIRE(::mkfifo(("/dev/shm" + fifo).c_str(), 0600) == 0);
    struct remove_fifo {
      std::string path;
      ~remove_fifo() { ::unlink(path.c_str()); }
    } removed{"/dev/shm" + fifo};
    d->regions.front().shm_name = fifo;
    d->regions.front().permissions = access::read; // why: read-only regions are opened read-only
    REQUIRE(ferry::sync_wait(store.put("ferry/segments/" + d->name, d->to_json())));
    auto seg = ctx.run_until(engine.open_segment(d->name));
    REQUIRE(seg);
    transfer_batch r;
    r.read(buf.data(), *seg, 0, buf.size());
    auto got = ctx.run_until(engine.transfer(r, ferry::transfer_options().with_timeout(10s)));
    // shared memory refuses it at once, and the bytes come over tcp from the target the descriptor names
    CHECK_MESSAGE(got.ok(), got.first_error().message());
    CHECK(engine.routed_bytes("tcp") == buf.size());
  }

  TEST_CASE("a same-host target that ended is noticed also when its descriptor names incarnation 0") {
    CHECK(write_to_a_target_that_ended({.incarnation_zero = true}) == 0);
  }

  TEST_CASE("a same-host target whose process id the kernel gave to another process is noticed as ended") {
    // with a pidfd, and without one (an old kernel, a seccomp profile), where the process id is all there is;
    // the id given away before the first copy to the target, and after it
    for (int round = 0; round < 4; ++round) {
      const bool without_pidfd = round & 1, written_to_before = round & 2;
      CAPTURE(without_pidfd);
      CAPTURE(written_to_before);
      int code = ferry_test::in_own_pid_namespace([&] {
        if (int blocked = without_pidfd ? block_pidfd_open() : 0; blocked != 0)
          return blocked;
        return write_to_a_target_whose_pid_was_reused(written_to_before);
      });
      if (code == ferry_test::no_own_pid_namespace) {
        MESSAGE("skipped: this host does not let a new PID namespace mount its own /proc or choose its next "
                "process id");
        return;
      }
      CHECK(code == 0);
    }
  }

  TEST_CASE(
      "without pidfd_open (an old kernel, a seccomp profile), a same-host target that ended is noticed too") {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      if (int blocked = block_pidfd_open(); blocked != 0)
        ::_exit(blocked);
      // why: without a pidfd, a target that exited and waits to be reaped still answers kill(pid, 0)
      int code = write_to_a_target_that_ended();
      if (code == 0)
        code = 20 + write_to_a_target_that_ended({.left_unreaped = true, .unmapped_before_writing = true});
      ::_exit(code == 20 ? 0 : code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }

  TEST_CASE("transfers to the engine's own segment are copies within the process") {
    own_segment_write self(5);
    auto& [ctx, engine, exposed, local, w] = self;
    auto r = ctx.run_until(engine.transfer(w));
    REQUIRE(r.ok());
    CHECK(exposed == local);
    CHECK(engine.routed_bytes("shm") == local.size());
  }

  TEST_CASE("memory registered as GPU memory is never handed to the shm or tcp transport") {
    // why: host memory stands in for GPU memory here (only the registration says what it is), so that the
    // refusal is checked on hosts without a GPU; on a real GPU a CPU copy or send() of it would fault
    ferry::io::io_context ctx;
    ferry::default_engine target(ctx, {.name = "target", .listen = "127.0.0.2:0"});
    tcp_engine initiator(ctx, {.name = "initiator"});
    std::vector<std::byte> gpu_like(1 << 16), host(1 << 16), local_gpu_like(1 << 16), local(1 << 16);
    const ferry::memory_location on_gpu{ferry::memory_kind::cuda_device, 0, {}, 0};
    auto gpu_off = target.registry().add(gpu_like.data(), gpu_like.size(), access::read_write, on_gpu);
    REQUIRE(gpu_off);
    auto host_off = target.registry().add(host.data(), host.size(), access::read_write);
    REQUIRE(host_off);
    REQUIRE(target.registry().add(local.data(), local.size(), access::none));
    REQUIRE(target.registry().add(local_gpu_like.data(), local_gpu_like.size(), access::none, on_gpu));
    REQUIRE(target.start());
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    REQUIRE(initiator.registry().add(local_gpu_like.data(), local_gpu_like.size(), access::none, on_gpu));
    fill(local, 9);
    ctx.run_until([&]() -> ferry::task<> {
      // In process (the shm transport copies with the CPU).
      transfer_batch self;
      self.write(local.data(), target.self, *gpu_off, 4096);           // 0: into GPU memory
      self.write(local_gpu_like.data(), target.self, *host_off, 4096); // 1: out of GPU memory
      self.write(local.data(), target.self, *host_off, 4096);          // 2: host to host: fine
      auto r = co_await target.transfer(self);
      CHECK_FALSE(r.ok());
      CHECK(r.requests[0].error() == errc::unsupported);
      MESSAGE("into GPU memory, in process: ", r.requests[0].error().message());
      CHECK(r.requests[1].error() == errc::unsupported);
      MESSAGE("out of GPU memory, in process: ", r.requests[1].error().message());
      CHECK(r.requests[2].value() == 4096);
      // Over tcp: the owner refuses to send() or recv() GPU memory; the initiator refuses to send from it.
      auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch remote;
      remote.write(local.data(), *seg, *gpu_off, 4096);           // 0
      remote.read(local.data(), *seg, *gpu_off, 4096);            // 1
      remote.write(local_gpu_like.data(), *seg, *host_off, 4096); // 2
      remote.write(local.data(), *seg, *host_off, 4096);          // 3: fine
      auto t = co_await initiator.transfer(remote);
      CHECK_FALSE(t.ok());
      for (int i : {0, 1, 2}) {
        CHECK(t.requests[i].error() == errc::unsupported);
        MESSAGE("over tcp, request ", i, ": ", t.requests[i].error().message());
      }
      CHECK(t.requests[3].value() == 4096);
    }());
    CHECK(std::equal(host.begin(), host.begin() + 4096, local.begin()));
  }

  TEST_CASE("bad requests fail precisely while the rest of the batch succeeds") {
    ferry::io::io_context ctx;
    ferry::default_engine target(ctx, {.name = "target", .listen = "127.0.0.2:0"});
    tcp_engine initiator(ctx, {.name = "initiator"});
    std::vector<std::byte> rw(1 << 16), ro(1 << 16), local(1 << 16), stray(100);
    REQUIRE(target.registry().add(rw.data(), rw.size(), access::read_write));
    REQUIRE(target.registry().add(ro.data(), ro.size(), access::read));
    REQUIRE(target.start());
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch b;
      b.write(local.data(), *seg, 0, 4096);              // 0: fine
      b.write(local.data(), 99, 0, 4096);                // 1: unknown segment
      b.write(local.data(), *seg, (1 << 16) - 10, 4096); // 2: out of bounds
      b.write(local.data(), *seg, 1 << 16, 4096);        // 3: read-only region
      b.write(stray.data(), *seg, 0, 100);               // 4: local buffer not registered
      b.write(local.data(), *seg, 0, 0);                 // 5: empty
      b.read(local.data(), *seg, 1 << 16, 4096);         // 6: reading the read-only region: fine
      auto r = co_await initiator.transfer(b);
      CHECK_FALSE(r.ok());
      CHECK(r.requests[0].value() == 4096);
      CHECK(r.requests[1].error() == errc::unknown_segment);
      CHECK(r.requests[2].error() == errc::out_of_bounds);
      CHECK(r.requests[3].error() == errc::permission_denied);
      CHECK(r.requests[4].error() == errc::out_of_bounds);
      CHECK(r.requests[5].error() == errc::invalid_argument);
      CHECK(r.requests[6].value() == 4096);
      CHECK(r.first_error() == errc::unknown_segment);
      CHECK(r.first_error().message().rfind("request 1 of 7: ", 0) == 0); // which request it was
    }());
  }

  TEST_CASE("the owner enforces bounds even when the initiator's descriptor is stale") {
    served_pair p(1 << 16);
    p.ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      REQUIRE(p.target.registry().remove(p.remote.data())); // the initiator still believes the region exists
      transfer_batch b;
      b.write(p.local.data(), *seg, 0, 4096);
      auto version = p.initiator.find(*seg)->version;
      auto r = co_await p.initiator.transfer(b);
      REQUIRE_FALSE(r.ok());
      CHECK(r.requests[0].error() == errc::out_of_bounds);
      // the owner refused; the initiator then fetched the descriptor again, which has no region any more
      CHECK(p.initiator.find(*seg)->version > version);
      CHECK(p.initiator.find(*seg)->descriptor.regions.empty());
      auto again = co_await p.initiator.transfer(b); // refused up front now
      CHECK(again.requests[0].error() == errc::out_of_bounds);
      CHECK(again.first_error().message().find("outside the target's regions") != std::string::npos);
    }());
  }

  TEST_CASE("a region the target registered after it was opened is reached by refreshing its descriptor") {
    std::vector<std::byte> later(1 << 16); // outlives the engines
    served_pair p(1 << 16);
    p.ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      auto at = p.target.registry().add(later.data(), later.size(), access::read_write);
      REQUIRE(at);
      fill(p.local, 77);
      transfer_batch b;
      b.write(p.local.data(), *seg, *at, 4096);
      auto r = co_await p.initiator.transfer(b);
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      CHECK(std::equal(later.begin(), later.begin() + 4096, p.local.begin()));
    }());
  }

  TEST_CASE("a batch under way survives its target's descriptor being fetched again") {
    // The target registers another region and the initiator opens the segment again (as a refresh after
    // another batch's failure would): the connections made with the old descriptor are retired, and what was
    // queued on them moves to the new ones, without using up its retries.
    constexpr std::size_t bytes = 64 << 20, block = 64 << 10;
    std::vector<std::byte> later(1 << 16); // outlives the engines
    served_pair p(bytes, {.name = "initiator", .retry_budget = 3});
    fill(p.local, 41);
    ferry::batch_result r;
    p.ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      transfer_batch b;
      for (std::size_t at = 0; at < bytes; at += block) // far more than the connections take in flight
        b.write(p.local.data() + at, *seg, at, block);
      ferry::async_scope both;
      auto run = [&]() -> ferry::task<> { r = co_await p.initiator.transfer(b); };
      auto reopen = [&]() -> ferry::task<> {
        REQUIRE(p.target.registry().add(later.data(), later.size(), access::read_write));
        auto again = co_await p.initiator.open_segment(p.address());
        REQUIRE(again);
        CHECK(*again == *seg);
      };
      both.spawn(run());
      both.spawn(reopen());
      co_await both.join();
    }());
    CHECK_MESSAGE(r.ok(), r.first_error().message());
    CHECK(p.remote == p.local);
  }

  TEST_CASE("the connections of a replaced descriptor are freed once idle, with or without io threads") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      std::vector<std::vector<std::byte>> later(6, std::vector<std::byte>(4096)); // outlive the engines
      served_pair p(1 << 20, {.name = "initiator", .tcp = {.io_threads = io_threads}});
      fill(p.local, 43);
      auto& tcp = p.initiator.transport<ferry::tcp_transport>();
      const std::size_t per_peer = p.initiator.options().tcp.connections_per_peer;
      p.ctx.run_until([&]() -> ferry::task<> {
        auto seg = co_await p.initiator.open_segment(p.address());
        REQUIRE(seg);
        transfer_batch b;
        b.write(p.local.data(), *seg, 0, p.local.size());
        for (auto& region : later) {
          REQUIRE((co_await p.initiator.transfer(b)).ok());
          // the target's descriptor changes; the initiator takes it, and its connections are replaced
          REQUIRE(p.target.registry().add(region.data(), region.size(), access::read_write));
          REQUIRE(co_await p.initiator.refresh(*seg));
        }
        REQUIRE((co_await p.initiator.transfer(b)).ok());
        for (int i = 0; i < 200 && tcp.connections_held() > per_peer; ++i)
          (void)co_await p.ctx.sleep_for(5ms);
      }());
      CHECK(tcp.connections_held() == per_peer); // before: per_peer more for every replaced descriptor
      CHECK(p.remote == p.local);
    }
  }

  TEST_CASE("a segment of twenty thousand regions is opened and reached to its last region") {
    // Its descriptor (about 1.2 MB) is larger than a notification may be; a hello's reply carries it.
    constexpr std::size_t regions = 20000, each = 64;
    std::vector<std::byte> many(regions * each), local(each); // outlive the engines
    served_pair p(1 << 16);
    std::uint64_t last = 0;
    for (std::size_t i = 0; i < regions; ++i) {
      auto at = p.target.registry().add(many.data() + i * each, each, access::read_write);
      REQUIRE(at);
      last = *at;
    }
    fill(local, 53);
    REQUIRE(p.initiator.registry().add(local.data(), local.size(), access::none));
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE_MESSAGE(seg, seg.error().message());
    CHECK(p.initiator.find(*seg)->descriptor.regions.size() == regions + 1);
    CHECK(p.initiator.find(*seg)->descriptor.to_json().size() >
          ferry::tcp::frame_header::max_message_payload);
    transfer_batch b;
    b.write(local.data(), *seg, last, each);
    auto r = p.ctx.run_until(p.initiator.transfer(b));
    REQUIRE_MESSAGE(r.ok(), r.first_error().message());
    CHECK(std::equal(local.begin(), local.end(), many.end() - each));
  }

  TEST_CASE("a corrupt frame or an absurd length drops only that connection") {
    served_pair p(1 << 20);
    auto& ctx = p.ctx;
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      transfer_batch b;
      b.write(p.local.data(), *seg, 0, p.local.size());
      REQUIRE((co_await p.initiator.transfer(b)).ok()); // connections established
      std::array<std::byte, ferry::tcp::frame_header::size> junk;
      junk.fill(std::byte{0x5a});
      ferry::tcp::frame_header absurd;
      absurd.type = ferry::tcp::frame_type::write;
      absurd.length = 1ull << 50;
      std::array<std::byte, ferry::tcp::frame_header::size> huge;
      ferry::tcp::encode(absurd, huge);
      for (auto* bad : {&junk, &huge}) {
        auto raw = co_await ferry::io::tcp_socket::connect(ctx, *p.target.endpoint());
        REQUIRE(raw);
        REQUIRE(co_await raw->send_all(*bad));
        std::array<std::byte, 1> one;
        auto n = co_await raw->recv(one); // the target hangs up
        CHECK((!n || *n == 0));
      }
      auto r = co_await p.initiator.transfer(b); // everyone else is still served
      CHECK(r.ok());
    }());
  }

  TEST_CASE("a peer that speaks another protocol version is told so before the target hangs up") {
    served_pair p(1 << 20);
    auto& ctx = p.ctx;
    ctx.run_until([&]() -> ferry::task<> {
      for (std::byte version : {std::byte{2}, std::byte{4}}) {
        auto raw = co_await ferry::io::tcp_socket::connect(ctx, *p.target.endpoint());
        REQUIRE(raw);
        auto hello = ferry_test::header(ferry::tcp::frame_type::hello, 77, 0, 0);
        hello[4] = version;
        REQUIRE(co_await raw->send_all(hello));
        ferry_test::raw_header answer;
        REQUIRE(co_await raw->recv_all(answer));
        auto h = ferry::tcp::decode_header(answer); // in the target's version
        REQUIRE(h);
        CHECK(h->request_id == 77);
        CHECK(h->error() == errc::version_mismatch);
        std::array<std::byte, 1> one;
        auto n = co_await raw->recv(one); // and then it hangs up
        CHECK((!n || *n == 0));
      }
    }());
    // an initiator that gets such an answer in another version than its own fails with that reason, at once
    ferry::io::io_context ctx2;
    auto listener = ferry::io::tcp_listener::listen(ctx2, *ferry::io::endpoint::parse("127.0.0.4:0"));
    REQUIRE(listener);
    auto answer_in_another_version = [](ferry::io::tcp_listener& l) -> ferry::task<> {
      auto s = co_await l.accept();
      REQUIRE(s);
      ferry_test::raw_header got;
      REQUIRE(co_await s->recv_all(got));
      auto refusal = ferry_test::header(ferry::tcp::frame_type::hello_reply, 1, 0, 0);
      refusal[4] = std::byte{4};
      co_await s->send_all(refusal);
    };
    auto [fetched, unused] = ctx2.run_until(
        ferry::when_all(ferry::tcp_transport::fetch_descriptor(ctx2, *listener->local_endpoint(), 5s, {}),
                        answer_in_another_version(*listener)));
    (void)unused;
    REQUIRE_FALSE(fetched);
    CHECK(fetched.error() == errc::version_mismatch);
  }

  TEST_CASE("a batch whose reply came with the start of a large read's reply is not held back by that read") {
    // The target sends a small write's reply and the header of a 16 MiB read's reply together, then the
    // read's bytes at 1 MiB per 60 ms (about a second). The write's batch ends when its reply is in, with
    // its connection run on an I/O thread of its own, which hands replies back to the engine in bunches.
    ferry::io::io_context ctx;
    hand_made_target slow(ctx, 60ms, (16 << 20) + (64 << 10));
    slow.replies_together = true;
    tcp_engine initiator(ctx, {.name = "initiator",
                               .slice_size = 16 << 20,
                               .retry_budget = 0,
                               .tcp = {.connections_per_peer = 1, .io_threads = 1, .reply_timeout = 5s}});
    std::vector<std::byte> local(64 << 10), back(16 << 20);
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    REQUIRE(initiator.registry().add(back.data(), back.size(), access::read_write));
    auto seg = ctx.run_until(initiator.open_segment(slow.address));
    REQUIRE(seg);
    transfer_batch w, r;
    w.write(local.data(), *seg, 16 << 20, local.size());
    r.read(back.data(), *seg, 0, back.size());
    auto timed = [](tcp_engine& e, transfer_batch& b, clock_type::duration& took) -> ferry::task<bool> {
      auto t0 = clock_type::now();
      auto got = co_await e.transfer(b, ferry::transfer_options().with_timeout(20s));
      took = clock_type::now() - t0;
      co_return got.ok();
    };
    clock_type::duration write_took{}, read_took{};
    auto [wrote, read] =
        ctx.run_until(ferry::when_all(timed(initiator, w, write_took), timed(initiator, r, read_took)));
    CHECK(wrote);
    CHECK(read);
    CHECK(read_took >= 800ms);
    CHECK(write_took < 400ms); // its payload takes 60 ms, and its reply is handed back within 200 us
    slow.close();
  }

  TEST_CASE("a read whose status follows its payload ends with that status and never with a status that "
            "does not match it") {
    ferry::io::io_context ctx;
    hand_made_target t(ctx, 1ms, 3 << 20);
    for (std::size_t i = 0; i < t.region.size(); ++i)
      t.region[i] = static_cast<std::byte>(i * 7 + 1);
    tcp_engine initiator(ctx, {.name = "initiator",
                               .slice_size = 16 << 20,
                               .retry_budget = 0,
                               .tcp = {.connections_per_peer = 1, .reply_timeout = 5s}});
    std::vector<std::byte> back(3 << 20);
    REQUIRE(initiator.registry().add(back.data(), back.size(), access::read_write));
    auto seg = ctx.run_until(initiator.open_segment(t.address));
    REQUIRE(seg);
    auto read_all = [&]() {
      std::fill(back.begin(), back.end(), std::byte{0});
      transfer_batch r;
      r.read(back.data(), *seg, 0, back.size());
      return ctx.run_until(initiator.transfer(r, ferry::transfer_options().with_timeout(10s)));
    };
    ferry::tcp::frame_header after;
    after.type = ferry::tcp::frame_type::read_reply;
    SUBCASE("a status of 0: the read is done") {
      t.status_after_read = after;
      auto r = read_all();
      CHECK_MESSAGE(r.ok(), r.first_error().message());
      CHECK(back == t.region);
    }
    SUBCASE("an error: the read fails with it, though all its bytes came, and the connection carries on") {
      after.status = static_cast<std::int32_t>(errc::out_of_bounds);
      t.status_after_read = after;
      auto r = read_all();
      REQUIRE_FALSE(r.ok());
      CHECK(r.requests[0].error() == errc::out_of_bounds);
      const auto connections = t.accepted;
      t.status_after_read.reset();
      auto again = read_all();
      CHECK_MESSAGE(again.ok(), again.first_error().message());
      CHECK(back == t.region);
      CHECK(t.accepted == connections); // the same connection served it
    }
    SUBCASE("a status of another request, of another type or with a payload: the read fails") {
      SUBCASE("another request") {
        after.request_id = 1;
      }
      SUBCASE("another type") {
        after.type = ferry::tcp::frame_type::write_reply;
      }
      SUBCASE("a payload") {
        after.length = 16;
      }
      t.status_after_read = after;
      auto r = read_all();
      REQUIRE_FALSE(r.ok());
      CHECK(r.requests[0].error() == errc::malformed_frame);
      MESSAGE(r.first_error().message());
    }
    t.close();
  }

  TEST_CASE("cancelling one batch does not fail another batch that shares its connection") {
    // Both batches' slices are in flight on the one connection to a target that never answers. Cancelling B
    // drops that connection; A's slices are retried, so A ends at its own deadline, not as "cancelled".
    ferry::io::io_context ctx;
    hand_made_target silent(ctx);
    tcp_engine initiator(ctx, {.name = "initiator",
                               .slice_size = 64 * 1024,
                               .tcp = {.connections_per_peer = 1, .in_flight_per_connection = 8}});
    std::vector<std::byte> local(1 << 20);
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    auto seg = ctx.run_until(initiator.open_segment(silent.address));
    REQUIRE(seg);
    std::stop_source stop;
    transfer_batch a, b;
    a.write(local.data(), *seg, 0, 128 * 1024);
    b.write(local.data() + (128 << 10), *seg, 128 * 1024, 128 * 1024);
    auto canceller = [&]() -> ferry::task<> {
      co_await ctx.sleep_for(50ms);
      stop.request_stop();
    };
    auto [ra, rb, unused] = ctx.run_until(ferry::when_all(
        initiator.transfer(a, ferry::transfer_options().with_timeout(500ms)),
        initiator.transfer(b, ferry::transfer_options().with_stop(stop.get_token())), canceller()));
    (void)unused;
    REQUIRE_FALSE(rb.ok());
    CHECK(rb.first_error() == errc::cancelled);
    REQUIRE_FALSE(ra.ok());
    CHECK(ra.first_error() == errc::timed_out);
    silent.close();
  }

  TEST_CASE("an engine that has shut down moves nothing and says so") {
    own_segment_write self(1);
    auto& [ctx, engine, exposed, local, w] = self;
    ctx.run_until(engine.shutdown());
    auto r = ctx.run_until(engine.transfer(w));
    CHECK_FALSE(r.ok());
    CHECK(r.bytes() == 0);
  }

  TEST_CASE("a negative timeout is a deadline already passed: the batch fails at once and moves nothing") {
    own_segment_write self(9);
    auto& [ctx, engine, exposed, local, w] = self;
    // a caller's budget worked out as what is left of it, and it ran out
    auto r = ctx.run_until(engine.transfer(w, ferry::transfer_options().with_timeout(-1ms).with_notify("x")));
    REQUIRE_FALSE(r.ok());
    CHECK(r.requests[0].error() == errc::timed_out);
    CHECK(r.notify_error == errc::timed_out);
    CHECK(r.bytes() == 0);
    CHECK(std::all_of(exposed.begin(), exposed.end(), [](std::byte b) { return b == std::byte{0}; }));
    auto h = engine.submit(w, ferry::transfer_options().with_timeout(-5s));
    CHECK(h.wait().requests[0].error() == errc::timed_out);
  }

  TEST_CASE("an engine destroyed while its loop is stopped still shuts down, and leaves the loop stopped") {
    ferry::io::io_context ctx;
    {
      ferry::default_engine engine(ctx, {.name = "stopped", .listen = "127.0.0.2:0"});
      REQUIRE(engine.start());
      ctx.stop(); // as an application ends a run() of its own
    }
    CHECK(ctx.stopped());
    // with a background thread, which a stop ends too (checked in a child: a hang would be the failure)
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::alarm(20);
      {
        ferry::io::io_context own;
        ferry::default_engine engine(own, {.name = "stopped", .listen = "127.0.0.2:0"});
        if (!engine.start())
          ::_exit(2);
        engine.run_in_background();
        own.stop(); // destroyed at once: the background thread's run() may not have returned yet
      }
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }

  TEST_CASE("an engine destroyed while another thread waits on one of its handles ends that batch") {
    auto silent = ferry_test::forked_child::start([](auto report) {
      ferry::io::io_context c;
      hand_made_target t(c);
      report(t.address);
      ferry::io::io_context::work_guard forever(c);
      c.run();
    });
    ferry::io::io_context ctx; // outlives the waiting thread, which drives it until the engine wants it
    std::vector<std::byte> local(1 << 20);
    std::optional<ferry::batch_result> got;
    std::thread waiter;
    {
      tcp_engine engine(ctx, {.name = "initiator"});
      REQUIRE(engine.registry().add(local.data(), local.size(), access::none));
      auto seg = ctx.run_until(engine.open_segment(silent.line()));
      REQUIRE(seg);
      transfer_batch w;
      w.write(local.data(), *seg, 0, local.size());
      auto h = engine.submit(w); // no deadline, to a target that never answers
      waiter = std::thread([h, &got]() mutable { got = h.wait(); });
      std::this_thread::sleep_for(100ms); // it drives the loop now, waiting in run_one()
    } // the destructor takes the turn from it, and shuts the engine down, which ends the batch
    waiter.join();
    REQUIRE(got);
    REQUIRE_FALSE(got->ok());
    CHECK(got->requests[0].error() == errc::cancelled);
    CHECK_FALSE(ctx.stopped());
  }

  TEST_CASE("a target that never answers fails the batch at its deadline") {
    ferry::io::io_context ctx;
    hand_made_target silent(ctx);
    tcp_engine initiator(ctx, {.name = "initiator", .tcp = {.reply_timeout = 60s}});
    std::vector<std::byte> local(1 << 20);
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    auto t0 = clock_type::now();
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(silent.address);
      REQUIRE(seg);
      transfer_batch b;
      b.read(local.data(), *seg, 0, local.size());
      auto r = co_await initiator.transfer(b, ferry::transfer_options().with_timeout(300ms));
      REQUIRE_FALSE(r.ok());
      CHECK(r.requests[0].error() == errc::timed_out);
    }());
    CHECK(clock_type::now() - t0 < 5s);
    silent.close();
  }

  TEST_CASE("a target that stops answering is dropped after the reply timeout and the batch fails") {
    ferry::io::io_context ctx;
    hand_made_target silent(ctx);
    tcp_engine initiator(ctx, {.name = "initiator", .retry_budget = 1, .tcp = {.reply_timeout = 100ms}});
    std::vector<std::byte> local(1 << 16);
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(silent.address);
      REQUIRE(seg);
      transfer_batch b;
      b.write(local.data(), *seg, 0, local.size());
      auto r = co_await initiator.transfer(b);
      REQUIRE_FALSE(r.ok());
      CHECK(r.requests[0].error() == errc::timed_out);
    }());
    silent.close();
  }

  TEST_CASE(
      "a target that moves a large slice slowly but steadily is not taken for one that stopped answering") {
    ferry::io::io_context ctx;
    hand_made_target slow(ctx, 60ms, 16 << 20);
    tcp_engine initiator(ctx, {.name = "initiator",
                               .slice_size = 16 << 20,
                               .retry_budget = 0,
                               .tcp = {.connections_per_peer = 1, .reply_timeout = 300ms}});
    std::vector<std::byte> local(16 << 20), back(16 << 20);
    fill(local, 4);
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    REQUIRE(initiator.registry().add(back.data(), back.size(), access::read_write));
    auto t0 = clock_type::now();
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(slow.address);
      REQUIRE(seg);
      // each way: 16 MiB in one slice at 1 MiB per 60 ms, about a second, and never 300 ms without a byte
      transfer_batch w;
      w.write(local.data(), *seg, 0, local.size());
      auto wrote = co_await initiator.transfer(w, ferry::transfer_options().with_timeout(20s));
      CHECK_MESSAGE(wrote.ok(), wrote.first_error().message());
      transfer_batch r;
      r.read(back.data(), *seg, 0, back.size());
      auto read = co_await initiator.transfer(r, ferry::transfer_options().with_timeout(20s));
      CHECK_MESSAGE(read.ok(), read.first_error().message());
    }());
    CHECK(clock_type::now() - t0 > 1500ms); // the two slices did move slowly
    CHECK(slow.region == local);
    CHECK(back == local);
    slow.close();
  }

  TEST_CASE("a transport that throws fails the slices it was handed with the reason, and the others land") {
    std::vector<std::byte> remote(2 << 20), local(2 << 20);
    fill(local, 6);
    ferry::io::io_context ctx;
    auto target = serve_memory(ctx, "target", "127.0.0.2:0", remote);
    ferry::transfer_engine<engine_test::throwing_transport, ferry::tcp_transport> initiator(
        ctx, {.name = "initiator", .slice_size = 256 << 10});
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    auto seg = ctx.run_until(initiator.open_segment(target->endpoint()->to_string()));
    REQUIRE(seg);
    // each request: the first MiB goes over tcp, the second to the transport that throws
    auto check = [&](const ferry::batch_result& r) {
      REQUIRE(r.requests.size() == 2);
      CHECK(r.requests[0].value_or(0) == (1u << 20));
      REQUIRE_FALSE(r.requests[1]);
      CHECK(r.requests[1].error() == errc::internal);
      CHECK(r.requests[1].error().message().find("thrower threw: no room for the slice") !=
            std::string::npos);
      CHECK(std::equal(local.begin(), local.begin() + (1 << 20), remote.begin()));
    };
    transfer_batch b;
    b.write(local.data(), *seg, 0, 1 << 20);
    b.write(local.data() + (1 << 20), *seg, 1 << 20, 1 << 20);
    check(ctx.run_until(initiator.transfer(b)));
    // the same through submit() and wait(), for code without coroutines
    std::fill(remote.begin(), remote.end(), std::byte{0});
    check(initiator.submit(b).wait());
  }

  TEST_CASE("a transport that cannot reach the peer hands its slices to the next one, also with no retries") {
    std::vector<std::byte> remote(1 << 20), local(1 << 20);
    fill(local, 8);
    ferry::io::io_context ctx;
    auto target = serve_memory(ctx, "target", "127.0.0.2:0", remote);
    for (unsigned budget : {0u, 1u}) {
      CAPTURE(budget);
      ferry::transfer_engine<engine_test::unreachable_transport, ferry::tcp_transport> initiator(
          ctx, {.name = "initiator", .slice_size = 256 << 10, .retry_budget = budget});
      REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
      auto seg = ctx.run_until(initiator.open_segment(target->endpoint()->to_string()));
      REQUIRE(seg);
      std::fill(remote.begin(), remote.end(), std::byte{0});
      transfer_batch b;
      b.write(local.data(), *seg, 0, local.size());
      auto r = ctx.run_until(initiator.transfer(b));
      CHECK_MESSAGE(r.ok(), r.first_error().message());
      CHECK(initiator.transport<engine_test::unreachable_transport>().handed == 4);
      CHECK(initiator.routed_bytes("tcp") == local.size());
      CHECK(remote == local);
      ctx.run_until(initiator.shutdown());
    }
  }

  TEST_CASE("a stop request from another thread cancels a batch, and its buffer is released") {
    ferry::io::io_context ctx;
    hand_made_target silent(ctx);
    tcp_engine initiator(ctx, {.name = "initiator"});
    std::vector<std::byte> local(1 << 20);
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    std::stop_source stop;
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(silent.address);
      REQUIRE(seg);
      transfer_batch b;
      b.read(local.data(), *seg, 0, local.size());
      std::thread canceller([&] {
        std::this_thread::sleep_for(100ms);
        // while the batch waits, its buffer is in use and cannot be unregistered
        auto refused = initiator.registry().remove(local.data());
        REQUIRE_FALSE(refused);
        CHECK(refused.error() == errc::busy);
        stop.request_stop();
      });
      auto r = co_await initiator.transfer(b, ferry::transfer_options().with_stop(stop.get_token()));
      canceller.join();
      REQUIRE_FALSE(r.ok());
      CHECK(r.requests[0].error() == errc::cancelled);
    }());
    CHECK(initiator.registry().remove(local.data()).has_value());
    silent.close();
  }

  TEST_CASE("a target killed mid-batch fails it before its deadline, and a restarted one serves the next") {
    kill_mid_batch_then_restart("127.0.0.2:0", 0);
  }

  TEST_CASE("connections dropped by a restarted target are re-established transparently") {
    ferry::io::io_context ctx;
    std::vector<std::byte> remote(1 << 20), local(1 << 20);
    fill(local, 9);
    auto target = std::make_unique<ferry::default_engine>(
        ctx, ferry::engine_options{.name = "t", .listen = "127.0.0.2:0"});
    REQUIRE(target->registry().add(remote.data(), remote.size(), access::read_write));
    REQUIRE(target->start());
    auto address = target->endpoint()->to_string();
    tcp_engine initiator(ctx, {.name = "initiator"});
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    auto seg = ctx.run_until(initiator.open_segment(address));
    REQUIRE(seg);
    transfer_batch b;
    b.write(local.data(), *seg, 0, local.size());
    REQUIRE(ctx.run_until(initiator.transfer(b)).ok());
    target.reset(); // every connection of the initiator is now dead
    std::ranges::fill(remote, std::byte{0});
    target =
        std::make_unique<ferry::default_engine>(ctx, ferry::engine_options{.name = "t", .listen = address});
    REQUIRE(target->registry().add(remote.data(), remote.size(), access::read_write));
    REQUIRE(target->start());
    auto r = ctx.run_until(initiator.transfer(b));
    CHECK_MESSAGE(r.ok(), r.first_error().message());
    CHECK(remote == local);
  }

  TEST_CASE("a notification arrives after the batch's bytes have landed") {
    ferry::io::io_context ctx;
    ferry::default_engine decode(ctx, {.name = "decode", .listen = "127.0.0.2:0"});
    tcp_engine prefill(ctx, {.name = "prefill"});
    std::vector<std::byte> kv(1 << 20), src(1 << 20);
    fill(src, 4);
    REQUIRE(decode.registry().add(kv.data(), kv.size(), access::read_write));
    REQUIRE(decode.start());
    REQUIRE(prefill.registry().add(src.data(), src.size(), access::none));
    bool landed_before_notice = false;
    auto receiver = [&]() -> ferry::task<ferry::result<ferry::notification>> {
      auto n = co_await decode.next_notification();
      landed_before_notice = kv == src;
      co_return n;
    };
    auto sender = [&]() -> ferry::task<ferry::batch_result> {
      auto seg = co_await prefill.open_segment(decode.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch b;
      b.write(src.data(), *seg, 0, src.size());
      co_return co_await prefill.transfer(b, ferry::transfer_options().with_notify("kv ready: request 42"));
    };
    auto [got, sent] = ctx.run_until(ferry::when_all(receiver(), sender()));
    REQUIRE(sent.ok());
    REQUIRE(got);
    CHECK(got->from == "prefill");
    CHECK(got->message == "kv ready: request 42");
    CHECK(landed_before_notice);
  }

  TEST_CASE("notifications nobody takes are kept up to a bound, and refused beyond it with a clear error") {
    ferry::io::io_context ctx;
    ferry::default_engine decode(ctx,
                                 {.name = "decode", .listen = "127.0.0.2:0", .max_pending_notifications = 3});
    tcp_engine prefill(ctx, {.name = "prefill"});
    REQUIRE(decode.start());
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await prefill.open_segment(decode.endpoint()->to_string());
      REQUIRE(seg);
      for (int i = 0; i < 3; ++i) {
        auto sent = co_await prefill.notify(*seg, "block " + std::to_string(i));
        REQUIRE_MESSAGE(sent, sent.error().message());
      }
      auto refused = co_await prefill.notify(*seg, "block 3");
      REQUIRE_FALSE(refused);
      CHECK(refused.error() == errc::out_of_space);
      MESSAGE("a notification beyond the bound: ", refused.error().message());
      auto self_refused = co_await decode.notify(decode.self, "to myself");
      CHECK(self_refused.error() == errc::out_of_space);
      auto first = co_await decode.next_notification();
      REQUIRE(first);
      CHECK(first->message == "block 0");
      auto again = co_await prefill.notify(*seg, "block 4"); // room again
      CHECK(again.has_value());
      for (const char* expected : {"block 1", "block 2", "block 4"}) {
        auto n = co_await decode.next_notification();
        REQUIRE(n);
        CHECK(n->message == expected);
      }
    }());
  }

  TEST_CASE("waiting for a notification can be cancelled") {
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "e"});
    std::stop_source stop;
    auto r = ctx.run_until([&]() -> ferry::task<ferry::result<ferry::notification>> {
      ferry::async_scope s;
      auto later = [&]() -> ferry::task<> {
        co_await ctx.sleep_for(10ms);
        stop.request_stop();
      };
      s.spawn(later());
      auto n = co_await engine.next_notification(stop.get_token());
      co_await s.join();
      co_return n;
    }());
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::cancelled);
  }

  TEST_CASE("a probe measures a round trip and fails fast for a dead peer") {
    ferry::io::io_context ctx;
    auto target = std::make_unique<ferry::default_engine>(
        ctx, ferry::engine_options{.name = "t", .listen = "127.0.0.2:0"});
    REQUIRE(target->start());
    tcp_engine initiator(ctx, {.name = "i", .tcp = {.connect_timeout = 500ms}});
    auto seg = ctx.run_until(initiator.open_segment(target->endpoint()->to_string()));
    REQUIRE(seg);
    auto rtt = ctx.run_until(initiator.probe(*seg));
    REQUIRE(rtt);
    CHECK(rtt->count() > 0);
    CHECK(*rtt < 1s);
    target.reset();
    auto t0 = clock_type::now();
    auto dead = ctx.run_until(initiator.probe(*seg));
    CHECK_FALSE(dead);
    CHECK(clock_type::now() - t0 < 3s);
  }

  TEST_CASE("a target listening on every address is reached at the address it was opened by, or the one it "
            "advertises") {
    // opened by "host:port": the host it answered at, not 0.0.0.0 (which from another host is that host)
    {
      served_pair p(1 << 20, {.name = "initiator"}, {.name = "target", .listen = "0.0.0.0:0"});
      CHECK(p.target.descriptor().endpoint_for("tcp")->address.rfind("0.0.0.0:", 0) == 0);
      const std::string at = "127.0.0.2:" + std::to_string(p.target.endpoint()->port());
      auto seg = p.ctx.run_until(p.initiator.open_segment(at));
      REQUIRE(seg);
      CHECK(p.initiator.find(*seg)->descriptor.endpoint_for("tcp")->address == at);
      fill(p.local, 4);
      transfer_batch w;
      w.write(p.local.data(), *seg, 0, p.local.size());
      auto r = p.ctx.run_until(p.initiator.transfer(w, ferry::transfer_options().with_timeout(5s)));
      CHECK_MESSAGE(r.ok(), r.first_error().message());
      CHECK(p.remote == p.local);
    }
    // with engine_options::advertise, the descriptor names that address; one that is no address is refused
    {
      served_pair p(1 << 20, {.name = "initiator"},
                    {.name = "target", .listen = "0.0.0.0:0", .advertise = "127.0.0.3"});
      CHECK(p.target.descriptor().endpoint_for("tcp")->address ==
            "127.0.0.3:" + std::to_string(p.target.endpoint()->port()));
      ferry::default_engine named(p.ctx, {.name = "x", .listen = "0.0.0.0:0", .advertise = "decode-host"});
      auto refused = named.start();
      REQUIRE_FALSE(refused);
      CHECK(refused.error() == errc::invalid_argument);
    }
    // found in a metadata store with a wildcard address and the boot id of another host: no address is known
    // to reach it, and connecting to 0.0.0.0 would reach a process on this machine instead (here the very
    // target, which would answer): the transfer fails, no transport reaching it
    {
      served_pair p(1 << 20, {.name = "initiator"}, {.name = "target", .listen = "0.0.0.0:0"});
      auto d = p.target.descriptor();
      d.host = "another-host";
      ferry::memory_metadata_store store;
      REQUIRE(ferry::sync_wait(store.put("ferry/segments/target", d.to_json())));
      p.initiator.use_metadata(store);
      auto seg = p.ctx.run_until(p.initiator.open_segment("target"));
      REQUIRE(seg);
      transfer_batch w;
      w.write(p.local.data(), *seg, 0, p.local.size());
      auto r = p.ctx.run_until(p.initiator.transfer(w, ferry::transfer_options().with_timeout(5s)));
      REQUIRE_FALSE(r.ok());
      CHECK(r.first_error().message().find("no transport reaches the target") != std::string::npos);
    }
    // every endpoint is read so, also one a transport writes "host:port#..." (verbs): on its own host,
    // loopback
    {
      ferry::io::io_context ctx;
      tcp_engine e(ctx, {.name = "i"});
      ferry::segment_descriptor d;
      d.name = "wild";
      d.incarnation = 1;
      d.endpoints = {{"tcp", "0.0.0.0:7000"}, {"rdma", "0.0.0.0:7001#2"}, {"other", "[::]:7002"}};
      d.regions = {{0, 4096, access::read_write, "", 0, {}}};
      ferry::memory_metadata_store store;
      e.use_metadata(store);
      // `d` as the store gives it (a new incarnation each time, so that it is taken anew): the endpoints
      auto as_opened = [&]() -> std::vector<ferry::transport_endpoint> {
        ++d.incarnation;
        REQUIRE(ferry::sync_wait(store.put("ferry/segments/wild", d.to_json())));
        auto seg = ctx.run_until(e.open_segment("wild"));
        REQUIRE(seg);
        return e.find(*seg)->descriptor.endpoints;
      };
      d.host = "another-host";
      CHECK(as_opened().empty());
      d.host = e.descriptor().host;
      auto eps = as_opened();
      REQUIRE(eps.size() == 3);
      CHECK(eps[0].address == "127.0.0.1:7000");
      CHECK(eps[1].address == "127.0.0.1:7001#2");
      CHECK(eps[2].address == "[::1]:7002");
      // on this host but in another network namespace (a container with a network of its own): loopback
      // does not reach it there, and nothing else known does
      REQUIRE(e.descriptor().net_namespace != 0);
      d.net_namespace = e.descriptor().net_namespace + 1;
      CHECK(as_opened().empty());
      d.net_namespace = e.descriptor().net_namespace;
      eps = as_opened();
      REQUIRE(eps.size() == 3);
      CHECK(eps[0].address == "127.0.0.1:7000");
    }
  }

  TEST_CASE("a target on this host in a network namespace of its own, listening on every address, is not "
            "taken for one here") {
    // The target: a child process in a new network namespace, listening on 0.0.0.0; its descriptor comes
    // back through the pipe, as a metadata store would hand it over.
    auto child = ferry_test::forked_child::start([](auto report) {
      if (::unshare(CLONE_NEWNET) != 0) {
        report(std::string("skip: unshare(CLONE_NEWNET): ") + std::strerror(errno));
        ::pause();
      }
      ferry::io::io_context ctx;
      std::vector<std::byte> region(1 << 16);
      tcp_engine target(ctx, {.name = "walled", .listen = "0.0.0.0:0"});
      if (!target.registry().add(region.data(), region.size(), access::read_write) || !target.start())
        ::_exit(3);
      report(target.descriptor().to_json());
      ferry::io::io_context::work_guard forever(ctx);
      ctx.run();
      ::_exit(0);
    });
    if (child.line().rfind("skip:", 0) == 0) {
      MESSAGE("skipped: ", child.line(), " (needs CAP_SYS_ADMIN)");
      return;
    }
    auto d = ferry::segment_descriptor::parse(child.line());
    REQUIRE(d);
    ferry::io::io_context ctx;
    tcp_engine e(ctx, {.name = "i"});
    CHECK(d->host == e.descriptor().host);
    CHECK(d->net_namespace != e.descriptor().net_namespace);
    // a process here on the same port, which 127.0.0.1 would reach instead
    const auto port = ferry::io::endpoint::parse(d->endpoint_for("tcp")->address)->port();
    std::vector<std::byte> decoy_region(1 << 16), local(4096, std::byte{0x11});
    tcp_engine decoy(ctx, {.name = "decoy", .listen = "0.0.0.0:" + std::to_string(port)});
    REQUIRE(decoy.registry().add(decoy_region.data(), decoy_region.size(), access::read_write));
    if (auto started = decoy.start(); !started) {
      MESSAGE("skipped: the port is taken here: ", started.error().message());
      return;
    }
    REQUIRE(e.registry().add(local.data(), local.size(), access::none));
    ferry::memory_metadata_store store;
    REQUIRE(ferry::sync_wait(store.put("ferry/segments/walled", d->to_json())));
    e.use_metadata(store);
    auto seg = ctx.run_until(e.open_segment("walled"));
    REQUIRE(seg);
    CHECK(e.find(*seg)->descriptor.endpoints.empty());
    transfer_batch w;
    w.write(local.data(), *seg, 0, local.size());
    auto r = ctx.run_until(e.transfer(w, ferry::transfer_options().with_timeout(5s)));
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(r.first_error().message().find("no transport reaches the target") != std::string::npos,
                  r.first_error().message());
    CHECK(
        std::all_of(decoy_region.begin(), decoy_region.end(), [](std::byte b) { return b == std::byte{0}; }));
  }

  TEST_CASE("a metadata store's value larger than a descriptor may be is refused before it is parsed") {
    ferry::io::io_context ctx;
    ferry::memory_metadata_store store;
    std::string huge = "{\"x\":[" + std::string(17 << 20, ' ') + "]}";
    REQUIRE(ferry::sync_wait(store.put("ferry/segments/huge", huge)));
    tcp_engine e(ctx, {.name = "i"});
    e.use_metadata(store);
    auto seg = ctx.run_until(e.open_segment("huge"));
    REQUIRE_FALSE(seg);
    CHECK(seg.error() == errc::malformed_frame);
    CHECK(seg.error().message().find("more than a segment descriptor may be") != std::string::npos);
  }

  TEST_CASE("an engine whose name peers would refuse says so when it starts, publishes or notifies") {
    ferry::io::io_context ctx;
    for (std::string name : {std::string("caf\xe9"), std::string("two\nlines"), std::string()}) {
      CAPTURE(name);
      ferry::default_engine e(ctx, {.name = name, .listen = "127.0.0.2:0"});
      auto started = e.start();
      REQUIRE_FALSE(started);
      CHECK(started.error() == errc::invalid_argument);
      ferry::memory_metadata_store store;
      e.use_metadata(store);
      auto published = ctx.run_until(e.publish());
      REQUIRE_FALSE(published);
      CHECK(published.error() == errc::invalid_argument);
      auto told = ctx.run_until(e.notify(e.self, "hello"));
      REQUIRE_FALSE(told);
      CHECK(told.error() == errc::invalid_argument);
      ctx.run_until(e.shutdown());
    }
  }

  TEST_CASE("a probe of a host whose connection requests go unanswered fails within the connect timeout") {
    // a listener whose accept queue is full drops further SYNs, as a host that is down does
    int listening = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listening >= 0);
    ::sockaddr_in at{};
    at.sin_family = AF_INET;
    at.sin_addr.s_addr = htonl(0x7f000002); // 127.0.0.2
    REQUIRE(::bind(listening, reinterpret_cast<::sockaddr*>(&at), sizeof at) == 0);
    REQUIRE(::listen(listening, 0) == 0);
    ::socklen_t len = sizeof at;
    REQUIRE(::getsockname(listening, reinterpret_cast<::sockaddr*>(&at), &len) == 0);
    std::vector<int> queued;
    for (int i = 0; i < 3; ++i) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      REQUIRE(fd >= 0);
      (void)::connect(fd, reinterpret_cast<::sockaddr*>(&at), sizeof at);
      queued.push_back(fd);
    }
    std::this_thread::sleep_for(100ms);
    ferry::segment_descriptor d;
    d.name = "unanswered";
    d.incarnation = 1;
    d.host = "elsewhere";
    d.endpoints = {{"tcp", "127.0.0.2:" + std::to_string(ntohs(at.sin_port))}};
    d.regions = {{0, 4096, access::read_write, "", 0, {}}};
    ferry::memory_metadata_store store;
    REQUIRE(ferry::sync_wait(store.put("ferry/segments/unanswered", d.to_json())));
    ferry::io::io_context ctx;
    tcp_engine initiator(ctx, {.name = "i", .tcp = {.connect_timeout = 300ms, .reply_timeout = 5s}});
    initiator.use_metadata(store);
    auto seg = ctx.run_until(initiator.open_segment("unanswered"));
    REQUIRE(seg);
    auto t0 = clock_type::now();
    auto probed = ctx.run_until(initiator.probe(*seg));
    auto took = clock_type::now() - t0;
    CHECK_FALSE(probed);
    CHECK(took < 2s);
    for (int fd : queued)
      ::close(fd);
    ::close(listening);
  }

  TEST_CASE("submit and wait serve code without coroutines") {
    served_pair p(1 << 20);
    fill(p.local, 2);
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    transfer_batch b;
    b.write(p.local.data(), *seg, 0, p.local.size());
    auto handle = p.initiator.submit(b);
    int polls = 0;
    while (!handle.ready() && polls < 1000000)
      ++polls;
    auto r = handle.wait();
    CHECK(r.ok());
    CHECK(p.remote == p.local);
    auto again = p.initiator.submit(b);
    CHECK(again.wait().ok());
  }

  TEST_CASE("a handle waited for twice gives the same result, a failure included") {
    served_pair p(1 << 20);
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    transfer_batch b;
    b.write(p.local.data(), *seg, 0, 4096)
        .write(p.local.data(), *seg, 2 << 20, 4096); // the second: out of bounds
    auto handle = p.initiator.submit(b);
    auto first = handle.wait();
    auto second = handle.wait();
    for (auto* r : {&first, &second}) {
      REQUIRE(r->requests.size() == 2);
      CHECK(r->requests[0]);
      CHECK_FALSE(r->ok());
      CHECK(r->first_error() == errc::out_of_bounds);
    }
  }

  TEST_CASE("handles waited for on several threads take turns driving the engine, and all complete") {
    served_pair p(4 << 20);
    fill(p.local, 8);
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    constexpr int threads = 4, rounds = 20;
    std::atomic<int> ok{0};
    std::vector<std::thread> waiters;
    for (int t = 0; t < threads; ++t)
      waiters.emplace_back([&, t] {
        for (int i = 0; i < rounds; ++i) {
          transfer_batch b;
          std::size_t at = std::size_t(t) << 20;
          b.write(p.local.data() + at, *seg, at, 1 << 20);
          auto h = p.initiator.submit(b);
          while (i % 2 == 0 && !h.ready()) // half the rounds poll first
            std::this_thread::yield();
          auto r = h.wait();
          if (r.ok())
            ++ok;
          else
            std::fprintf(stderr, "thread %d round %d: %s\n", t, i, r.first_error().message().c_str());
        }
      });
    for (auto& w : waiters)
      w.join();
    CHECK(ok == threads * rounds);
    CHECK(p.remote == p.local);
  }

  TEST_CASE("an engine on a background thread serves coroutines and submit from other threads") {
    served_pair p(1 << 20);
    fill(p.local, 6);
    p.initiator.run_in_background();
    auto seg = ferry::sync_wait(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    transfer_batch b;
    b.write(p.local.data(), *seg, 0, p.local.size());
    CHECK(p.initiator.submit(b).wait().ok());
    CHECK(ferry::sync_wait(p.initiator.transfer(b)).ok());
    CHECK(p.remote == p.local);
    ferry::sync_wait(p.initiator.shutdown());
    ferry::sync_wait(p.target.shutdown());
  }

  TEST_CASE(
      "a handle waited for while the engine moves to a background thread completes, driven by one thread") {
    served_pair p(64 << 20);
    fill(p.local, 14);
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    transfer_batch b;
    for (std::size_t at = 0; at < p.local.size(); at += 1 << 20)
      b.write(p.local.data() + at, *seg, at, 1 << 20);
    std::atomic<bool> waiting{false};
    ferry::batch_result r;
    std::thread waiter([&] {
      auto h = p.initiator.submit(b);
      waiting = true;
      r = h.wait(); // drives the loop: its turn ends when the background thread starts
    });
    while (!waiting)
      std::this_thread::yield();
    p.initiator.run_in_background();
    waiter.join();
    CHECK_MESSAGE(r.ok(), r.first_error().message());
    CHECK(p.remote == p.local);
    CHECK(p.initiator.submit(b).wait().ok()); // and the background thread serves what comes next
    ferry::sync_wait(p.initiator.shutdown());
    ferry::sync_wait(p.target.shutdown());
  }

  TEST_CASE("a hundred concurrent batches of many small blocks all land") {
    constexpr std::size_t blocks = 16, block = 16 * 1024, batches = 100;
    served_pair p(batches * blocks * block,
                  {.name = "initiator", .tcp = {.connections_per_peer = 3, .in_flight_per_connection = 4}});
    fill(p.local, 8);
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    std::vector<ferry::task<ferry::batch_result>> all;
    for (std::size_t i = 0; i < batches; ++i) {
      transfer_batch b;
      for (std::size_t j = 0; j < blocks; ++j) {
        std::size_t off = (j * batches + i) * block; // scattered
        b.write(p.local.data() + off, *seg, off, block);
      }
      all.push_back(p.initiator.transfer(std::move(b)));
    }
    auto results = p.ctx.run_until(ferry::when_all(std::move(all)));
    for (auto& r : results)
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
    CHECK(p.remote == p.local);
  }
}

TEST_SUITE("transfer_engine metadata") {
  TEST_CASE("segments published in a metadata store are opened by name") {
    ferry::io::io_context ctx;
    ferry::memory_metadata_store meta;
    ferry::default_engine decode(ctx, {.name = "decode-7", .listen = "127.0.0.2:0"});
    tcp_engine prefill(ctx, {.name = "prefill-7"});
    decode.use_metadata(meta);
    prefill.use_metadata(meta);
    std::vector<std::byte> kv(1 << 20), src(1 << 20);
    fill(src, 12);
    REQUIRE(decode.registry().add(kv.data(), kv.size(), access::read_write));
    REQUIRE(decode.start());
    REQUIRE(prefill.registry().add(src.data(), src.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto missing = co_await prefill.open_segment("decode-7");
      REQUIRE_FALSE(missing);
      CHECK(missing.error() == errc::unknown_segment);
      REQUIRE(co_await decode.publish());
      auto seg = co_await prefill.open_segment("decode-7");
      REQUIRE(seg);
      CHECK(prefill.find(*seg)->descriptor.name == "decode-7");
      transfer_batch b;
      b.write(src.data(), *seg, 0, src.size());
      CHECK((co_await prefill.transfer(b)).ok());
      auto again = co_await prefill.open_segment("decode-7"); // opening again gives the same id
      CHECK(*again == *seg);
    }());
    CHECK(kv == src);
  }

  TEST_CASE("writes that landed in a target that was replaced mid-batch are made again in the new process") {
    replace_mid_batch(replacement::old_goes);
  }

  TEST_CASE(
      "writes that landed before another call found the target replaced are made again in the new one") {
    replace_mid_batch(replacement::reopened);
  }

  TEST_CASE("a write that landed in a target replaced before the batch was cancelled is not reported done") {
    replace_mid_batch(replacement::reopened_then_cancelled);
  }

  TEST_CASE("two engines of the same name at different addresses are two segments") {
    ferry::io::io_context ctx;
    std::vector<std::byte> kv_a(1 << 20), kv_b(1 << 20), src(2 << 20); // outlive the engines
    fill(src, 23);
    // why: both keep the default name, as engines opened by address often do
    ferry::default_engine a(ctx, {.listen = "127.0.0.2:0"}), b(ctx, {.listen = "127.0.0.3:0"});
    REQUIRE(a.registry().add(kv_a.data(), kv_a.size(), access::read_write));
    REQUIRE(b.registry().add(kv_b.data(), kv_b.size(), access::read_write));
    REQUIRE(a.start());
    REQUIRE(b.start());
    tcp_engine initiator(ctx, {.name = "initiator"});
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto to_a = co_await initiator.open_segment(a.endpoint()->to_string());
      auto to_b = co_await initiator.open_segment(b.endpoint()->to_string());
      REQUIRE(to_a);
      REQUIRE(to_b);
      CHECK(*to_a != *to_b);
      transfer_batch batch;
      batch.write(src.data(), *to_a, 0, 1 << 20).write(src.data() + (1 << 20), *to_b, 0, 1 << 20);
      auto r = co_await initiator.transfer(batch);
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      auto again = co_await initiator.open_segment(a.endpoint()->to_string()); // the same process again
      REQUIRE(again);
      CHECK(*again == *to_a);
    }());
    CHECK(std::equal(kv_a.begin(), kv_a.end(), src.begin()));
    CHECK(std::equal(kv_b.begin(), kv_b.end(), src.begin() + (1 << 20)));
  }

  TEST_CASE("an address now served by a segment of another name never gets the old segment's bytes") {
    ferry::io::io_context ctx;
    std::vector<std::byte> kv_x(1 << 20), kv_y(1 << 20), src(1 << 20); // outlive the engines
    fill(src, 29);
    auto x = serve_memory(ctx, "x", "127.0.0.2:0", kv_x);
    const std::string address = x->endpoint()->to_string();
    tcp_engine initiator(ctx, {.name = "initiator", .tcp = {.connect_timeout = 500ms}});
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await open_and_write(initiator, address, src);
      co_await x->shutdown();
      x.reset();
      auto y = serve_memory(ctx, "y", address, kv_y); // x's address, taken by another segment
      transfer_batch batch;
      batch.write(src.data(), seg, 0, src.size());
      auto r = co_await initiator.transfer(batch, ferry::transfer_options().with_timeout(10s));
      CHECK_FALSE(r.ok());
      MESSAGE("a batch to x once y serves its address: ", r.first_error().message());
      auto refreshed = co_await initiator.refresh(seg);
      REQUIRE_FALSE(refreshed);
      CHECK(refreshed.error() == errc::unknown_segment);
      CHECK(initiator.find(seg)->descriptor.name == "x");
      auto to_y = co_await initiator.open_segment(address); // opening the address anew finds y
      REQUIRE(to_y);
      CHECK(*to_y != seg);
      CHECK(initiator.find(*to_y)->descriptor.name == "y");
      co_await y->shutdown();
    }());
    CHECK(std::all_of(kv_y.begin(), kv_y.end(), [](std::byte v) { return v == std::byte{0}; }));
  }

  TEST_CASE(
      "a notification never reaches a process that took over the target's address after its bytes landed") {
    ferry::io::io_context ctx;
    std::vector<std::byte> kv(1 << 20), src(1 << 20); // outlive the engines
    auto first = serve_memory(ctx, "decode", "127.0.0.2:0", kv);
    const std::string address = first->endpoint()->to_string();
    tcp_engine initiator(ctx, {.name = "initiator"});
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await open_and_write(initiator, address, src);
      co_await first->shutdown();
      first.reset();
      auto second = serve_memory(ctx, "decode", address, kv); // restarted: it never had the bytes
      auto sent = co_await initiator.notify(seg, "kv ready");
      REQUIRE_FALSE(sent);
      CHECK(sent.error() == errc::version_mismatch);
      auto ping = co_await initiator.probe(seg);
      CHECK_FALSE(ping);
      ferry::io::deadline soon(ctx, 200ms);
      auto got = co_await second->next_notification(soon.token());
      CHECK_FALSE(got);
      co_await second->shutdown();
    }());
  }

  TEST_CASE("a batch's notification never reaches a process that another call found serving its target "
            "after the bytes landed") {
    // why: a batch notifies its targets one after another; while it waits for the first, another call may
    // find a new process serving the second, which never got the batch's bytes
    ferry::io::io_context ctx;
    std::vector<std::byte> kv_a(1 << 20), kv_b(1 << 20), src(2 << 20); // outlive the engines
    fill(src, 41);
    // a: the test holds up its main loop, where it takes notifications, while the batch notifies it
    engine_with_held_loop a("a", "127.0.0.2:0", kv_a);
    auto b = serve_memory(ctx, "b", "127.0.0.3:0", kv_b);
    const std::string b_address = b->endpoint()->to_string();
    // why: one connection a peer, which the first batch opens: the second's bytes to a need nothing of a's
    // main loop
    tcp_engine initiator(ctx,
                         {.name = "initiator", .tcp = {.connections_per_peer = 1, .reply_timeout = 20s}});
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    ferry::batch_result out;
    ctx.run_until([&]() -> ferry::task<> {
      auto to_a = co_await initiator.open_segment(a.engine.endpoint()->to_string());
      auto to_b = co_await initiator.open_segment(b_address);
      REQUIRE(to_a);
      REQUIRE(to_b);
      transfer_batch batch;
      batch.write(src.data(), *to_a, 0, 1 << 20).write(src.data() + (1 << 20), *to_b, 0, 1 << 20);
      auto warm = co_await initiator.transfer(batch); // opens the data connections while a's loop runs
      REQUIRE_MESSAGE(warm.ok(), warm.first_error().message());
      std::fill(kv_b.begin(), kv_b.end(), std::byte{0});
      a.hold();
      ferry::async_scope scope;
      // why: arguments, not captures: the lambda is gone once spawn() returns
      scope.spawn([](tcp_engine& e, transfer_batch b, ferry::batch_result& to) -> ferry::task<> {
        to = co_await e.transfer(std::move(b), ferry::transfer_options().with_notify("kv ready"));
      }(initiator, batch, out));
      // b's bytes land (b serves on this loop), then the batch waits for a to take its notification
      for (auto until = clock_type::now() + 20s;
           !std::equal(kv_b.begin(), kv_b.end(), src.begin() + (1 << 20)) && clock_type::now() < until;)
        (void)co_await ctx.sleep_for(1ms);
      (void)co_await ctx.sleep_for(300ms);
      co_await b->shutdown();
      b.reset();
      std::vector<std::byte> kv_new(1 << 20);
      auto b_new = serve_memory(ctx, "b", b_address, kv_new); // b restarted: it never got the bytes
      auto refreshed = co_await initiator.refresh(*to_b);     // another call finds it
      CHECK(refreshed);
      CHECK(initiator.find(*to_b)->descriptor.incarnation == b_new->descriptor().incarnation);
      a.let_go();
      co_await scope.join();
      ferry::io::deadline soon(ctx, 300ms);
      auto got = co_await b_new->next_notification(soon.token());
      // why: unless the batch ran b's request again in the new process (it found b replaced before it was
      // done), the new process must not hear of bytes it never got
      if (got)
        CHECK(std::equal(kv_new.begin(), kv_new.end(), src.begin() + (1 << 20)));
      co_await b_new->shutdown();
    }());
    bool landed = std::all_of(out.requests.begin(), out.requests.end(), [](auto& r) { return bool(r); });
    if (landed && out.notify_error) {
      // the batch reached a's notification before b restarted: b's, which follows it, is refused
      CHECK(out.notify_error.code() == errc::version_mismatch);
      MESSAGE("the batch's notification of b: ", out.notify_error.message());
      auto at_a = ferry::sync_wait(a.engine.next_notification());
      REQUIRE(at_a);
      CHECK(at_a->message == "kv ready");
    } else if (landed) {
      MESSAGE("the batch ran b's request again in the new process and notified it");
    } else {
      MESSAGE("the batch failed: ", out.first_error().message());
    }
    CHECK(std::equal(kv_a.begin(), kv_a.end(), src.begin()));
  }

  TEST_CASE(
      "a notification waiting behind another control request to its peer ends at the batch's deadline") {
    ferry::io::io_context ctx;
    std::vector<std::byte> kv(1 << 20), src(1 << 20); // outlive the engines
    fill(src, 47);
    engine_with_held_loop a("a", "127.0.0.2:0", kv);
    tcp_engine initiator(ctx,
                         {.name = "initiator", .tcp = {.connections_per_peer = 1, .reply_timeout = 20s}});
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(a.engine.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch batch;
      batch.write(src.data(), *seg, 0, src.size());
      auto warm = co_await initiator.transfer(batch); // opens the data connection while a's loop runs
      REQUIRE_MESSAGE(warm.ok(), warm.first_error().message());
      a.hold();
      // a ping without a deadline takes the control connection first, and waits: a answers nothing now
      ferry::async_scope scope;
      scope.spawn([](tcp_engine& e, ferry::segment_id to) -> ferry::task<> {
        (void)co_await e.probe(to);
      }(initiator, *seg));
      (void)co_await ctx.sleep_for(50ms);
      auto t0 = clock_type::now();
      auto r = co_await initiator.transfer(
          batch, ferry::transfer_options().with_timeout(1s).with_notify("kv ready"));
      auto took = clock_type::now() - t0;
      REQUIRE(r.requests[0]); // the bytes landed: a's memory takes them on its own loop
      CHECK(r.notify_error == errc::timed_out);
      MESSAGE("notify: ", r.notify_error.message());
      CHECK_MESSAGE(took < 5s, "the batch took ",
                    std::chrono::duration_cast<std::chrono::milliseconds>(took).count(), " ms");
      a.let_go();
      co_await scope.join();
    }());
  }

  TEST_CASE("a segment opened by address and, after it restarted there, by name keeps its one id") {
    ferry::io::io_context ctx;
    ferry::memory_metadata_store meta;
    std::vector<std::byte> kv(1 << 20), src(1 << 20); // outlive the engines
    fill(src, 37);
    auto first = serve_memory(ctx, "kv", "127.0.0.2:0", kv);
    const std::string address = first->endpoint()->to_string();
    tcp_engine initiator(ctx, {.name = "initiator"});
    initiator.use_metadata(meta);
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto by_address = co_await open_and_write(initiator, address, src);
      co_await first->shutdown();
      first.reset();
      auto second = serve_memory(ctx, "kv", address, kv); // the same segment, restarted at its address
      second->use_metadata(meta);
      REQUIRE(co_await second->publish());
      auto by_name = co_await initiator.open_segment("kv");
      REQUIRE(by_name);
      CHECK(*by_name == by_address);
      CHECK(initiator.find(by_address)->descriptor.incarnation == second->descriptor().incarnation);
      co_await second->shutdown();
    }());
  }

  TEST_CASE("two registrations under way at once leave the segment under the one lease that is renewed") {
    kv_on_slow_store t;
    auto both = t.ctx.run_until(ferry::when_all(t.kv.publish(), t.kv.publish())); // e.g. after adding regions
    auto& first = std::get<0>(both);
    auto& second = std::get<1>(both);
    REQUIRE_MESSAGE(first, first.error().message());
    REQUIRE_MESSAGE(second, second.error().message());
    t.check_registered_four_ttls_later();
  }

  TEST_CASE("a store that lost the lease and then failed the put under a new one gets the segment again") {
    kv_on_slow_store t;
    REQUIRE(t.ctx.run_until(t.kv.publish()));
    // the store loses the lease and its key; the renewal registers again, and that put does not answer: a new
    // lease with no key under it must not pass for a registration that the renewal then keeps alive
    t.store.lose_next_lease = true;
    t.store.leased_puts_to_fail = 1;
    t.check_registered_four_ttls_later();
    CHECK_FALSE(t.store.lose_next_lease);
    CHECK(t.store.leased_puts_to_fail == 0);
  }

  TEST_CASE("a process that unpublishes leaves the registration of a successor of the same name in place") {
    ferry::io::io_context ctx;
    ferry::memory_metadata_store meta;
    // why: no lease (a store without leases, or metadata_ttl 0): the key is removed by name
    ferry::default_engine old_kv(ctx, {.name = "kv", .listen = "127.0.0.2:0", .metadata_ttl = 0ms});
    ferry::default_engine new_kv(ctx, {.name = "kv", .listen = "127.0.0.3:0", .metadata_ttl = 0ms});
    for (auto* e : {&old_kv, &new_kv}) {
      REQUIRE(e->start());
      e->use_metadata(meta);
    }
    REQUIRE(ctx.run_until(old_kv.publish()));
    REQUIRE(ctx.run_until(new_kv.publish())); // the successor, while the old one is still going
    REQUIRE(ctx.run_until(old_kv.unpublish()));
    auto held = ferry::sync_wait(meta.get("ferry/segments/kv"));
    REQUIRE(held);
    REQUIRE(held->has_value());
    auto d = ferry::segment_descriptor::parse(**held);
    REQUIRE(d);
    CHECK(d->incarnation == new_kv.descriptor().incarnation);
    ctx.run_until(old_kv.shutdown());
    CHECK(ferry::sync_wait(meta.get("ferry/segments/kv"))->has_value()); // shutting down leaves it too
    ctx.run_until(new_kv.shutdown());
    CHECK_FALSE(ferry::sync_wait(meta.get("ferry/segments/kv"))->has_value()); // its own goes with it
  }

  TEST_CASE("the descriptor handed to peers follows the engine's start and its registrations") {
    ferry::io::io_context ctx;
    tcp_engine engine(ctx, {.name = "e", .listen = "127.0.0.2:0"});
    std::vector<std::byte> a(8192), b(8192);
    REQUIRE(engine.registry().add(a.data(), a.size(), access::read));
    auto before_start = ferry::segment_descriptor::parse(engine.descriptor_json());
    REQUIRE(before_start);
    CHECK(before_start->endpoints.empty());
    CHECK(before_start->regions.size() == 1);
    REQUIRE(engine.start());
    auto started = ferry::segment_descriptor::parse(engine.descriptor_json());
    REQUIRE(started);
    REQUIRE(started->endpoint_for("tcp"));
    CHECK(started->endpoint_for("tcp")->address == engine.endpoint()->to_string());
    CHECK(engine.descriptor_json() == started->to_json()); // the same text while nothing changes
    REQUIRE(engine.registry().add(b.data(), b.size(), access::read_write));
    auto grown = ferry::segment_descriptor::parse(engine.descriptor_json());
    REQUIRE(grown);
    CHECK(grown->regions.size() == 2);
    CHECK(*grown == engine.descriptor());
    REQUIRE(engine.registry().remove(a.data()));
    auto shrunk = ferry::segment_descriptor::parse(engine.descriptor_json());
    REQUIRE(shrunk);
    CHECK(shrunk->regions.size() == 1);
    ctx.run_until(engine.shutdown());
  }

  TEST_CASE("a malformed descriptor in the store is refused with a message") {
    ferry::io::io_context ctx;
    ferry::memory_metadata_store meta;
    tcp_engine engine(ctx, {.name = "e"});
    engine.use_metadata(meta);
    ferry::sync_wait(meta.put("ferry/segments/broken", "{\"name\": 7}"));
    auto r = ctx.run_until(engine.open_segment("broken"));
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::malformed_frame);
    CHECK(r.error().message().find("segment descriptor") != std::string::npos);
  }
}

TEST_SUITE("transfer_engine io_threads") {
  // Both ends with tcp.io_threads: the initiator's connections and the target's accepted ones run on loops of
  // their own; handshakes, notifications and probes are still served on the engine's loop.

  TEST_CASE("with io threads, concurrent batches over several connections move every byte both ways") {
    constexpr std::size_t bytes = 8 << 20;
    served_pair p(bytes,
                  {.name = "initiator",
                   .slice_size = 64 * 1024,
                   .tcp = {.connections_per_peer = 5, .in_flight_per_connection = 4, .io_threads = 3}},
                  {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = 2}});
    fill(p.local, 11);
    std::vector<std::byte> back(bytes);
    REQUIRE(p.initiator.registry().add(back.data(), back.size(), access::none));
    p.ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      // Four batches at once, each of scattered 48 KiB blocks (so slices end mid-block), a quarter each.
      std::vector<ferry::task<ferry::batch_result>> writes;
      for (std::size_t k = 0; k < 4; ++k) {
        transfer_batch b;
        for (std::size_t off = k * 48 * 1024; off < bytes; off += 4 * 48 * 1024)
          b.write(p.local.data() + off, *seg, off, std::min<std::size_t>(48 * 1024, bytes - off));
        writes.push_back(p.initiator.transfer(std::move(b)));
      }
      auto written = co_await ferry::when_all(std::move(writes));
      for (auto& r : written)
        REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      CHECK(p.remote == p.local);
      transfer_batch r;
      r.read(back.data(), *seg, 0, bytes);
      auto rr = co_await p.initiator.transfer(r, ferry::transfer_options().with_notify("all read"));
      REQUIRE_MESSAGE(rr.ok(), rr.first_error().message());
      CHECK(rr.bytes() == bytes);
      auto note = co_await p.target.next_notification();
      REQUIRE(note);
      CHECK(note->message == "all read");
      auto rtt = co_await p.initiator.probe(*seg);
      CHECK_MESSAGE(rtt, rtt.error().message());
    }());
    CHECK(back == p.local);
    CHECK(p.initiator.routed_bytes("tcp") == 2 * bytes);
  }

  TEST_CASE("with io threads, a small batch ahead of a large one on the same connection completes first") {
    // Replies on an I/O thread are handed back to the engine's loop in bunches: the small batch's replies
    // must not wait for the large batch's.
    served_pair p(64 << 20,
                  {.name = "initiator",
                   .slice_size = 64 * 1024,
                   .tcp = {.connections_per_peer = 1, .in_flight_per_connection = 8, .io_threads = 1}},
                  {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = 1}});
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    for (int round = 0; round < 5; ++round) {
      CAPTURE(round);
      clock_type::time_point small_done{}, large_done{};
      auto t0 = clock_type::now();
      auto timed = [&](transfer_batch b, clock_type::time_point& done) -> ferry::task<ferry::batch_result> {
        auto r = co_await p.initiator.transfer(std::move(b));
        done = clock_type::now();
        co_return r;
      };
      transfer_batch small, large;
      small.write(p.local.data(), *seg, 0, 3 * 4096);
      for (int i = 0; i < 4; ++i)
        large.write(p.local.data(), *seg, 0, p.local.size());
      auto [rs, rl] = p.ctx.run_until(ferry::when_all(timed(small, small_done), timed(large, large_done)));
      REQUIRE(rs.ok());
      REQUIRE(rl.ok());
      CHECK(small_done < large_done);
      CHECK(small_done - t0 < 1s);
    }
  }

  TEST_CASE("with io threads, bad requests fail precisely while the rest of the batch lands") {
    served_pair p(1 << 20, {.name = "initiator", .tcp = {.io_threads = 2}},
                  {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = 2}});
    fill(p.local, 12);
    auto r = p.ctx.run_until([&]() -> ferry::task<ferry::batch_result> {
      auto seg = co_await p.initiator.open_segment(p.address());
      REQUIRE(seg);
      transfer_batch b;
      b.write(p.local.data(), *seg, 0, 4096)
          .write(p.local.data(), *seg, (1 << 20) - 100, 4096) // past the end
          .write(p.local.data() + 8192, *seg, 8192, 8192);
      co_return co_await p.initiator.transfer(b);
    }());
    REQUIRE_FALSE(r.ok());
    CHECK(r.requests[0]);
    CHECK(r.requests[1].error() == errc::out_of_bounds);
    CHECK(r.requests[2]);
    CHECK(std::equal(p.local.begin(), p.local.begin() + 4096, p.remote.begin()));
    CHECK(std::equal(p.local.begin() + 8192, p.local.begin() + 16384, p.remote.begin() + 8192));
  }

  TEST_CASE("with io threads, a cancelled batch ends as cancelled and the next one lands") {
    served_pair p(32 << 20, {.name = "initiator", .slice_size = 256 * 1024, .tcp = {.io_threads = 2}},
                  {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = 2}});
    fill(p.local, 13);
    auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    for (int round = 0; round < 5; ++round) {
      CAPTURE(round);
      std::stop_source stop;
      transfer_batch big;
      for (int i = 0; i < 16; ++i) // 512 MiB: longer than the 2 ms before the cancel
        big.write(p.local.data(), *seg, 0, p.local.size());
      auto t0 = clock_type::now();
      auto [r, unused] = p.ctx.run_until(
          ferry::when_all(p.initiator.transfer(big, ferry::transfer_options().with_stop(stop.get_token())),
                          [&]() -> ferry::task<> {
                            co_await p.ctx.sleep_for(2ms);
                            stop.request_stop();
                          }()));
      (void)unused;
      CHECK(clock_type::now() - t0 < 5s);
      REQUIRE_FALSE(r.ok());
      CHECK(r.first_error() == errc::cancelled);
    }
    std::ranges::fill(p.remote, std::byte{0});
    transfer_batch next;
    next.write(p.local.data(), *seg, 0, p.local.size());
    auto r = p.ctx.run_until(p.initiator.transfer(next));
    REQUIRE_MESSAGE(r.ok(), r.first_error().message());
    CHECK(p.remote == p.local);
  }

  TEST_CASE(
      "with io threads, a target killed mid-batch fails it before its deadline, and a restarted one serves") {
    kill_mid_batch_then_restart("127.0.0.3:0", 2);
  }

  TEST_CASE(
      "with io threads, shutting both engines down while batches are in flight ends them, never a hang") {
    for (bool initiator_first : {true, false}) {
      CAPTURE(initiator_first);
      served_pair p(16 << 20, {.name = "initiator", .slice_size = 128 * 1024, .tcp = {.io_threads = 2}},
                    {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = 2}});
      auto seg = p.ctx.run_until(p.initiator.open_segment(p.address()));
      REQUIRE(seg);
      std::vector<ferry::task<ferry::batch_result>> batches;
      for (int k = 0; k < 3; ++k) {
        transfer_batch b;
        for (int i = 0; i < 8; ++i)
          (k % 2 ? b.read(p.local.data(), *seg, 0, p.local.size())
                 : b.write(p.local.data(), *seg, 0, p.local.size()));
        batches.push_back(p.initiator.transfer(std::move(b)));
      }
      auto t0 = clock_type::now();
      auto [results, unused] =
          p.ctx.run_until(ferry::when_all(ferry::when_all(std::move(batches)), [&]() -> ferry::task<> {
            co_await p.ctx.sleep_for(3ms);
            if (initiator_first) {
              co_await p.initiator.shutdown();
              co_await p.target.shutdown();
            } else {
              co_await p.target.shutdown();
              co_await p.initiator.shutdown();
            }
          }()));
      (void)unused;
      CHECK(clock_type::now() - t0 < 10s);
      for (auto& r : results)
        if (!r.ok())
          MESSAGE("ended by the shutdown: ", r.first_error().message());
      CHECK(std::any_of(results.begin(), results.end(), [](auto& r) { return !r.ok(); }));
    }
  }

  TEST_CASE("with io threads, an engine on a background thread serves submit from other threads") {
    served_pair p(4 << 20, {.name = "initiator", .slice_size = 64 * 1024, .tcp = {.io_threads = 2}},
                  {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = 1}});
    fill(p.local, 14);
    p.initiator.run_in_background(); // the target shares its loop: that thread serves both
    auto seg = ferry::sync_wait(p.initiator.open_segment(p.address()));
    REQUIRE(seg);
    std::vector<std::thread> callers;
    std::atomic<int> ok{0};
    for (int t = 0; t < 4; ++t)
      callers.emplace_back([&, t] {
        transfer_batch b;
        b.write(p.local.data() + t * (1 << 20), *seg, t * (1 << 20), 1 << 20);
        if (p.initiator.submit(b).wait().ok())
          ++ok;
      });
    for (auto& c : callers)
      c.join();
    CHECK(ok == 4);
    ferry::sync_wait(p.initiator.shutdown());
    ferry::sync_wait(p.target.shutdown());
    CHECK(p.remote == p.local);
  }
}
