// The metadata backends against real servers (ferry-metad, etcd, redis-server started by the tests on random
// loopback ports), their faults, and the engine's use of them: leases that outlive no process, lookups that
// fail clearly while transfers go on, descriptors refreshed after a restart.
#include "misbehaving_server.hpp"
#include "servers.hpp"

#include "../../support/forked_child.hpp"

#include "ferry/core/sync_wait.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/metadata/connect_metadata.hpp"
#include "ferry/metadata/host_port.hpp"
#include "ferry/metadata/http/etcd_metadata_store.hpp"
#include "ferry/metadata/http/http_metadata_store.hpp"
#include "ferry/metadata/metad_protocol.hpp"
#include "ferry/metadata/redis/redis_metadata_store.hpp"
#include "ferry/transfer.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <sched.h>
#include <string>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using ferry::sync_wait;

static_assert(ferry::leasing_metadata_store<ferry::metadata_client>);
static_assert(ferry::cas_metadata_store<ferry::metadata_client>);
static_assert(ferry::leasing_metadata_store<ferry::memory_metadata_store>);
static_assert(ferry::leasing_metadata_store<ferry::http_metadata_store>);
static_assert(ferry::cas_metadata_store<ferry::http_metadata_store>);
static_assert(ferry::leasing_metadata_store<ferry::etcd_metadata_store>);
static_assert(ferry::cas_metadata_store<ferry::etcd_metadata_store>);
static_assert(ferry::leasing_metadata_store<ferry::redis_metadata_store>);
static_assert(ferry::cas_metadata_store<ferry::redis_metadata_store>);

namespace {

ferry::metadata_client connect(const std::string& conn) {
  auto m = ferry::connect_metadata(conn);
  REQUIRE_MESSAGE(m, conn << ": " << m.error().message());
  return std::move(*m);
}

/// Polls `key` until it is absent; how long that took, or nullopt after `limit`.
std::optional<std::chrono::milliseconds> wait_until_gone(ferry::metadata_client& m, const std::string& key,
                                                         std::chrono::milliseconds limit) {
  auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < limit) {
    auto v = sync_wait(m.get(key));
    REQUIRE_MESSAGE(v, v.error().message());
    if (!*v)
      return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    std::this_thread::sleep_for(50ms);
  }
  return std::nullopt;
}

/// What every backend must do the same way.
void exercise(const std::string& conn, std::chrono::milliseconds ttl) {
  auto m = connect(conn);
  const std::string odd("{\"json\": [1, 2]}\nline two \xc3\xa9 \0 end", 34);
  CHECK_FALSE(sync_wait(m.get("t/a")).value().has_value());
  REQUIRE(sync_wait(m.put("t/a", "1")));
  REQUIRE(sync_wait(m.put("t/b*[glob]?", odd)));
  REQUIRE(sync_wait(m.put("t0", "outside the prefix")));
  REQUIRE(sync_wait(m.put("t/a", "2"))); // replaces
  CHECK(sync_wait(m.get("t/a")).value() == "2");
  CHECK(sync_wait(m.get("t/b*[glob]?")).value() == odd);
  auto listed = sync_wait(m.list("t/")).value();
  REQUIRE(listed.size() == 2);
  CHECK(listed[0] == std::pair<std::string, std::string>("t/a", "2"));
  CHECK(listed[1] == std::pair<std::string, std::string>("t/b*[glob]?", odd));
  REQUIRE(sync_wait(m.remove("t/a")));
  REQUIRE(sync_wait(m.remove("t/a"))); // absent: no error
  CHECK(sync_wait(m.list("t/")).value().size() == 1);

  // compare-and-set
  CHECK(sync_wait(m.compare_and_set("cas", std::nullopt, "v1")).value());
  CHECK_FALSE(sync_wait(m.compare_and_set("cas", std::nullopt, "v2")).value()); // exists now
  CHECK_FALSE(sync_wait(m.compare_and_set("cas", std::string("wrong"), "v2")).value());
  CHECK(sync_wait(m.get("cas")).value() == "v1");
  CHECK(sync_wait(m.compare_and_set("cas", std::string("v1"), "v2")).value());
  CHECK(sync_wait(m.get("cas")).value() == "v2");

  // leases: renewed, revoked, expired
  auto lease = sync_wait(m.grant(ttl));
  REQUIRE_MESSAGE(lease, lease.error().message());
  REQUIRE(sync_wait(m.put("leased/a", "x", *lease)));
  REQUIRE(sync_wait(m.keep_alive(*lease)));
  CHECK(sync_wait(m.get("leased/a")).value() == "x");
  REQUIRE(sync_wait(m.revoke(*lease)));
  CHECK_FALSE(sync_wait(m.get("leased/a")).value().has_value());

  // A key put again by another client under a lease of its own is that lease's now: the first lease lives on
  // (as in etcd, renewing it succeeds) but never renews, takes back or removes that key
  {
    auto other = connect(conn);
    auto first = sync_wait(m.grant(ttl));
    REQUIRE(first);
    REQUIRE(sync_wait(m.put("leased/taken", "first", *first)));
    auto second = sync_wait(other.grant(ttl));
    REQUIRE(second);
    REQUIRE(sync_wait(other.put("leased/taken", "second", *second)));
    auto still = sync_wait(m.keep_alive(*first));
    CHECK_MESSAGE(still, (still ? std::string() : still.error().message()));
    CHECK(sync_wait(m.get("leased/taken")).value() == "second");
    REQUIRE(sync_wait(other.keep_alive(*second)));
    REQUIRE(sync_wait(m.revoke(*first)));
    CHECK(sync_wait(m.get("leased/taken")).value() == "second");
    REQUIRE(sync_wait(other.revoke(*second)));
    CHECK_FALSE(sync_wait(m.get("leased/taken")).value().has_value());
  }

  auto short_lease = sync_wait(m.grant(ttl));
  REQUIRE(short_lease);
  REQUIRE(sync_wait(m.put("leased/b", "y", *short_lease)));
  REQUIRE(sync_wait(m.put("plain", "stays")));
  auto gone = wait_until_gone(m, "leased/b", ttl + 5s);
  REQUIRE_MESSAGE(gone, "a key outlived its lease by more than 5 s");
  MESSAGE(conn << ": a key under a " << ttl.count() << " ms lease vanished " << gone->count()
               << " ms after it was put");
  auto renewed = sync_wait(m.keep_alive(*short_lease));
  REQUIRE_FALSE(renewed);
  CHECK(renewed.error() == ferry::errc::not_found);
  auto late = sync_wait(m.put("leased/c", "z", *short_lease));
  REQUIRE_FALSE(late);
  CHECK(late.error() == ferry::errc::not_found);
  CHECK(sync_wait(m.get("plain")).value() == "stays");
}

std::byte pattern_at(std::size_t i, unsigned seed) {
  return static_cast<std::byte>((i * 131 + seed) & 0xff);
}

constexpr std::size_t target_size = 1 << 20;

/// A target engine in a child process (forked before this process starts threads) that publishes itself as
/// `name` in `conn` with a lease of `ttl`; its buffer holds pattern(seed). Serves until killed; its line is
/// the address it serves on.
ferry_test::forked_child spawn_published(const std::string& conn, const std::string& name, unsigned seed,
                                         std::chrono::milliseconds ttl,
                                         const std::string& listen = "127.0.0.1:0") {
  return ferry_test::forked_child::start([&](auto report) {
    auto meta = ferry::connect_metadata(conn);
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = name, .listen = listen, .metadata_ttl = ttl});
    std::vector<std::byte> data(target_size);
    for (std::size_t i = 0; i < target_size; ++i)
      data[i] = pattern_at(i, seed);
    auto added = engine.registry().add(data.data(), target_size, ferry::access::read_write);
    auto started = added ? engine.start() : ferry::result<void>(ferry::fail(added.error()));
    if (!meta || !started) {
      std::fprintf(stderr, "target child: %s\n", (!meta ? meta.error() : started.error()).message().c_str());
      ::_exit(3);
    }
    engine.use_metadata(*meta);
    if (auto published = ctx.run_until(engine.publish()); !published) {
      std::fprintf(stderr, "target child: publish: %s\n", published.error().message().c_str());
      ::_exit(4);
    }
    report(engine.endpoint()->to_string());
    ferry::io::io_context::work_guard forever(ctx);
    ctx.run();
  });
}

/// Reads the whole target through `engine` and checks it holds pattern(seed).
ferry::task<ferry::batch_result> read_all(ferry::default_engine& engine, ferry::segment_id seg,
                                          std::vector<std::byte>& into) {
  ferry::transfer_batch batch;
  batch.read(into.data(), seg, 0, into.size());
  co_return co_await engine.transfer(std::move(batch), ferry::transfer_options().with_timeout(5s));
}

bool holds_pattern(const std::vector<std::byte>& data, unsigned seed) {
  for (std::size_t i = 0; i < data.size(); ++i)
    if (data[i] != pattern_at(i, seed))
      return false;
  return true;
}

} // namespace

TEST_SUITE("metadata backends") {
  TEST_CASE("memory:// stores, lists, compares-and-sets and expires leases") {
    exercise("memory://conformance", 1000ms);
  }
  TEST_CASE("http:// (a ferry-metad process) stores, lists, compares-and-sets and expires leases") {
    ferry_test::metad_server metad;
    exercise(metad.connection(), 1000ms);
  }
  TEST_CASE("etcd:// (a real etcd) stores, lists, compares-and-sets and expires leases") {
    ferry_test::etcd_server etcd;
    exercise(etcd.connection(), 1000ms);
  }
  TEST_CASE(
      "a lease as long as a duration holds lives on, not wrapped into a short one, and none is refused") {
    ferry_test::etcd_server etcd;
    for (std::string conn : {std::string("memory://longest"), etcd.connection()}) {
      CAPTURE(conn);
      auto m = connect(conn);
      CHECK(sync_wait(m.grant(0ms)).error() == ferry::errc::invalid_argument);
      auto lease = sync_wait(m.grant(std::chrono::milliseconds::max()));
      REQUIRE_MESSAGE(lease, lease.error().message());
      REQUIRE(sync_wait(m.put("long/k", "v", *lease)));
      std::this_thread::sleep_for(2500ms); // before the fix etcd got a lease of 1 s, the memory store none
      CHECK(sync_wait(m.get("long/k")).value() == std::optional<std::string>("v"));
      CHECK(sync_wait(m.keep_alive(*lease)));
      CHECK(sync_wait(m.revoke(*lease)));
    }
  }

  TEST_CASE("redis:// (a real redis-server) stores, lists, compares-and-sets and expires leases") {
    ferry_test::redis_server redis;
    exercise(redis.connection(), 1000ms);
  }

  TEST_CASE("publish, unpublish and publish again: the second registration is renewed too") {
    auto m = connect("memory://republish");
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "again", .listen = "127.0.0.1:0", .metadata_ttl = 300ms});
    REQUIRE(engine.start());
    engine.use_metadata(m);
    const std::string key = "ferry/segments/again";
    REQUIRE(ctx.run_until(engine.publish()));
    REQUIRE(ctx.run_until(engine.unpublish()));
    CHECK_FALSE(sync_wait(m.get(key)).value().has_value());
    REQUIRE(ctx.run_until(engine.publish()));
    ctx.run_until([&]() -> ferry::task<> { (void)co_await ctx.sleep_for(1200ms); }()); // four TTLs
    CHECK(sync_wait(m.get(key)).value().has_value());
    CHECK_FALSE(engine.registration_error());
    ctx.run_until(engine.shutdown());
    CHECK_FALSE(sync_wait(m.get(key)).value().has_value()); // shutdown unpublishes
  }

  TEST_CASE(
      "a key put again by another writer leaves the old lease: revoking it never deletes the new value") {
    ferry_test::etcd_server etcd;
    ferry_test::redis_server redis;
    ferry_test::metad_server metad;
    for (const auto& conn : {etcd.connection(), redis.connection(), metad.connection()}) {
      CAPTURE(conn);
      auto a = connect(conn), b = connect(conn);
      auto lease = sync_wait(a.grant(5000ms));
      REQUIRE(lease);
      REQUIRE(sync_wait(a.put("ferry/segments/decode-0", "old", *lease)));
      REQUIRE(sync_wait(b.put("ferry/segments/decode-0", "new"))); // a restarted owner, say
      REQUIRE(sync_wait(a.revoke(*lease)));
      CHECK(sync_wait(b.get("ferry/segments/decode-0")).value() == "new");
      auto listed = sync_wait(b.list("ferry/")).value();
      REQUIRE(listed.size() == 1); // no bookkeeping keys show
      CHECK(listed[0].first == "ferry/segments/decode-0");
      auto everything = sync_wait(b.list("")).value();
      CHECK(everything.size() == 1);
    }
  }

  TEST_CASE("each service is reached at an IPv6 address in brackets and a segment published there is found "
            "and read") {
    if (!ferry_test::can_bind("::1")) {
      MESSAGE("skipped: this machine cannot bind ::1 (IPv6 is off)");
      return;
    }
    ferry_test::etcd_server etcd("data", "::1");
    ferry_test::redis_server redis("::1");
    ferry_test::metad_server metad("::1");
    for (const auto& conn : {etcd.connection(), redis.connection(), metad.connection()}) {
      CAPTURE(conn);
      REQUIRE(conn.find("://[::1]:") != std::string::npos);
      auto target = spawn_published(conn, "over-v6", 11, 5000ms, "[::1]:0"); // before this process's threads
      CHECK(target.line().starts_with("[::1]:"));
      auto m = connect(conn);
      REQUIRE(sync_wait(m.put("ferry/v6", "reached")));
      CHECK(sync_wait(m.get("ferry/v6")).value() == "reached");
      REQUIRE(sync_wait(m.remove("ferry/v6")));

      ferry::io::io_context ctx;
      ferry::default_engine engine(ctx, {.name = "finder"});
      engine.use_metadata(m);
      auto seg = ctx.run_until(engine.open_segment("over-v6"));
      REQUIRE_MESSAGE(seg, seg.error().message());
      std::vector<std::byte> got(target_size);
      REQUIRE(engine.registry().add(got.data(), got.size(), ferry::access::read_write));
      auto r = ctx.run_until(read_all(engine, *seg, got));
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      CHECK(holds_pattern(got, 11));
    }
  }

  TEST_CASE("a name server that never answers costs an operation its timeout and a name found before still "
            "reaches its server") {
    ferry_test::metad_server metad;
    ferry_test::redis_server redis;
    const std::string metad_port = std::to_string(metad.process.port());
    const std::string redis_port = std::to_string(redis.process.port());
    ferry_test::temp_dir dir;
    const std::string hosts = (dir.path / "hosts").string(), resolv = (dir.path / "resolv.conf").string(),
                      nsswitch = (dir.path / "nsswitch.conf").string();
    // A process of its own, whose /etc/hosts and /etc/resolv.conf are the test's files (a mount namespace of
    // its own): names resolve from the hosts file, then from a name server on 127.0.0.9:53 that takes every
    // query and answers none (3 s a query, 2 attempts).
    auto child = ferry_test::forked_child::start([&](auto report) {
      auto write = [](const std::string& path, const std::string& text) {
        std::FILE* f = std::fopen(path.c_str(), "w");
        bool ok = f && std::fputs(text.c_str(), f) >= 0;
        return (f && std::fclose(f) == 0) && ok;
      };
      int silent = ::socket(AF_INET, SOCK_DGRAM, 0);
      ::sockaddr_storage at;
      ::socklen_t at_len = ferry_test::socket_address("127.0.0.9", 53, at);
      if (!write(hosts, "127.0.0.1 localhost\n127.0.0.1 ferry-meta.test\n") ||
          !write(resolv, "nameserver 127.0.0.9\noptions timeout:3 attempts:2\n") ||
          ::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          ::mount(hosts.c_str(), "/etc/hosts", nullptr, MS_BIND, nullptr) != 0 ||
          ::mount(resolv.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0 ||
          ::bind(silent, reinterpret_cast<::sockaddr*>(&at), at_len) != 0) {
        report(std::string("skipped: no mount namespace or no silent name server here: ") +
               std::strerror(errno));
        for (;;)
          ::pause();
      }
      const ferry::metadata_options quick{.timeout = 500ms};
      std::string outcome = "ok";
      auto expect = [&](bool ok, const std::string& what) {
        if (!ok && outcome == "ok")
          outcome = what;
      };
      // A name the hosts file knows: found, and remembered.
      auto http = ferry::connect_metadata("http://ferry-meta.test:" + metad_port, quick);
      expect(http && sync_wait(http->put("ferry/by-name", "1")).has_value(), "http: a put by name failed");
      // The name leaves the hosts file: its lookup now waits on the silent name server, and the request (a
      // connection of its own) goes to the address found before.
      expect(write(hosts, "127.0.0.1 localhost\n"), "cannot rewrite the hosts file");
      auto t0 = std::chrono::steady_clock::now();
      auto again = http ? sync_wait(http->get("ferry/by-name")) : ferry::result<std::optional<std::string>>();
      expect(again && again->value_or("") == "1", "http: the name found before was not used: " +
                                                      (again ? std::string() : again.error().message()));
      expect(std::chrono::steady_clock::now() - t0 < 3s, "http: the request waited for the name server");
      auto third = http ? sync_wait(http->get("ferry/by-name")) : ferry::result<std::optional<std::string>>();
      expect(third && third->value_or("") == "1",
             "http: the name found before was not used while its lookup ran");
      // Names never found: each operation fails within its timeout, naming the lookup.
      for (std::string conn :
           {"http://never-found.test:" + metad_port, "redis://never-found.test:" + redis_port,
            std::string("etcd://never-found.test:2379")}) {
        auto m = ferry::connect_metadata(conn, quick);
        t0 = std::chrono::steady_clock::now();
        auto got = m ? sync_wait(m->get("anything")) : ferry::result<std::optional<std::string>>();
        auto took = std::chrono::steady_clock::now() - t0;
        expect(!got &&
                   std::string(got.error().what()).find("did not finish within 500 ms") != std::string::npos,
               conn + ": " + (got ? std::string("succeeded") : got.error().message()));
        expect(took < 2500ms,
               conn + ": took " +
                   std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()) +
                   " ms");
      }
      // A name the name service says does not exist (hosts: files only) is forgotten, address and all.
      expect(write(hosts, "127.0.0.1 localhost\n127.0.0.1 ferry-gone.test\n") &&
                 write(nsswitch, "hosts: files\n") &&
                 ::mount(nsswitch.c_str(), "/etc/nsswitch.conf", nullptr, MS_BIND, nullptr) == 0,
             std::string("cannot set up a name service of files only: ") + std::strerror(errno));
      auto gone = ferry::connect_metadata("http://ferry-gone.test:" + metad_port, quick);
      expect(gone && sync_wait(gone->get("ferry/by-name")).has_value(), "http: a get by name failed");
      expect(write(hosts, "127.0.0.1 localhost\n"), "cannot rewrite the hosts file");
      auto after = gone ? sync_wait(gone->get("ferry/by-name")) : ferry::result<std::optional<std::string>>();
      expect(!after && std::string(after.error().what()).find("cannot look up 'ferry-gone.test'") !=
                           std::string::npos,
             "http: a name gone from the name service was still used: " +
                 (after ? std::string("succeeded") : after.error().message()));
      report(outcome);
      for (;;)
        ::pause();
    });
    if (child.line().starts_with("skipped: ")) {
      MESSAGE(child.line());
      return;
    }
    CHECK(child.line() == "ok");
  }

  TEST_CASE("connection strings: bad ones are refused with the reason") {
    for (const char* bad :
         {"etcd://", "etcd://host", "etcd://host:notaport", "redis://a:1,b:2", "zookeeper://x:1",
          "127.0.0.1:2379", "http://:80", "etcd://h:99999", "etcd://h:0", "redis://::1:6379", "http://[]:80",
          "http://[127.0.0.1]:80", "etcd://[::1:2379"}) {
      auto m = ferry::connect_metadata(bad);
      CHECK_MESSAGE(!m, bad);
      if (!m)
        CHECK(m.error() == ferry::errc::invalid_argument);
    }
    auto a = ferry::metadata_address::parse("etcd://127.0.0.1:2379,127.0.0.1:2381/cluster-a/");
    REQUIRE(a);
    CHECK(a->hosts.size() == 2);
    CHECK(a->prefix == "cluster-a/");
    auto v6 = ferry::metadata_address::parse("etcd://[fd00::7]:2379,10.0.0.2:2379/c");
    REQUIRE(v6);
    auto first = ferry::host_port::parse(v6->hosts[0]);
    REQUIRE(first);
    CHECK(first->host == "fd00::7");
    CHECK(first->port == 2379);
    CHECK(first->to_string() == "[fd00::7]:2379");
    CHECK(connect("p2p").direct());
  }

  TEST_CASE("a service that is down fails every operation quickly, naming the endpoint") {
    int port = ferry_test::free_port();
    std::string where = "127.0.0.1:" + std::to_string(port);
    for (std::string scheme : {"etcd://", "redis://", "http://"}) {
      CAPTURE(scheme);
      auto m = connect(scheme + where);
      auto t0 = std::chrono::steady_clock::now();
      auto got = sync_wait(m.get("anything"));
      REQUIRE_FALSE(got);
      CHECK(got.error() == ferry::errc::peer_unreachable);
      CHECK_MESSAGE(std::string(got.error().what()).find(where) != std::string::npos, got.error().message());
      CHECK(std::chrono::steady_clock::now() - t0 < 5s);
      MESSAGE(got.error().message());

      ferry::io::io_context ctx;
      ferry::default_engine engine(ctx, {.name = "lonely"});
      engine.use_metadata(m);
      auto seg = ctx.run_until(engine.open_segment("someone"));
      REQUIRE_FALSE(seg);
      CHECK(std::string(seg.error().what()).find(where) != std::string::npos);
      auto published = ctx.run_until(engine.publish());
      REQUIRE_FALSE(published);
      CHECK(published.error() == ferry::errc::peer_unreachable);
    }
  }

  TEST_CASE("an etcd endpoint that never completes a connection passes the request to the next one") {
    ferry_test::etcd_server etcd;
    // A listener whose accept queue is full and never taken: the kernel drops further connection requests,
    // so a connect to it times out (rather than being refused).
    int full = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(full >= 0);
    ::sockaddr_storage at;
    ::socklen_t len = ferry_test::socket_address("127.0.0.1", 0, at);
    REQUIRE(::bind(full, reinterpret_cast<::sockaddr*>(&at), len) == 0);
    REQUIRE(::listen(full, 0) == 0);
    REQUIRE(::getsockname(full, reinterpret_cast<::sockaddr*>(&at), &len) == 0);
    const int full_port = ntohs(reinterpret_cast<::sockaddr_in*>(&at)->sin_port);
    std::vector<int> queued;
    for (int i = 0; i < 4; ++i) { // fills the queue; the connects beyond it are left pending
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      (void)::connect(fd, reinterpret_cast<::sockaddr*>(&at), len);
      queued.push_back(fd);
    }
    std::this_thread::sleep_for(100ms);
    auto m = ferry::connect_metadata(
        "etcd://127.0.0.1:" + std::to_string(full_port) + "," + etcd.process.address(), {.timeout = 500ms});
    REQUIRE(m);
    auto put = sync_wait(m->put("ferry/next", "reached"));
    CHECK_MESSAGE(put.has_value(), (put ? std::string() : put.error().message()));
    CHECK(sync_wait(m->get("ferry/next")).value() == "reached");
    for (int fd : queued)
      ::close(fd);
    ::close(full);
  }

  TEST_CASE("a service whose reply trickles, never ends or is endless fails the operation within its bound") {
    using server = ferry_test::misbehaving_server;
    const ferry::metadata_options options{.timeout = 300ms, .max_reply_bytes = 1 << 20};
    for (auto manner : {server::manner::trickle, server::manner::endless_head, server::manner::flood}) {
      for (std::string scheme : {"etcd", "http", "redis"}) {
        CAPTURE(scheme);
        CAPTURE(static_cast<int>(manner));
        server bad(scheme == "redis" ? server::protocol::resp : server::protocol::http, manner);
        auto t0 = std::chrono::steady_clock::now();
        ferry::result<std::optional<std::string>> got;
        if (scheme == "etcd")
          got = sync_wait(ferry::etcd_metadata_store({bad.address()}, options).get("anything"));
        else if (scheme == "http")
          got = sync_wait(ferry::http_metadata_store({bad.address()}, options).get("anything"));
        else
          got = sync_wait(ferry::redis_metadata_store(bad.address(), options).get("anything"));
        auto took = std::chrono::steady_clock::now() - t0;
        REQUIRE_FALSE(got);
        CHECK(bad.accepted() == 1); // a request that was sent is never sent again
        // HTTP: connecting and the whole exchange within twice the timeout; Redis: the reply within it
        CHECK(took < 2 * options.timeout + 1s);
        if (manner == server::manner::flood) {
          CHECK(got.error() == ferry::errc::malformed_frame);
        } else if (scheme == "redis" && manner == server::manner::endless_head) {
          // an array of a million elements: more than 1 MiB may hold, refused as its header arrives
          CHECK(got.error() == ferry::errc::malformed_frame);
          CHECK(took < options.timeout);
        } else {
          CHECK(got.error() == ferry::errc::timed_out);
        }
        CHECK_MESSAGE(std::string(got.error().what()).find(bad.address()) != std::string::npos,
                      got.error().message());
        MESSAGE(scheme, ": ", got.error().message(), " after ",
                std::chrono::duration_cast<std::chrono::milliseconds>(took).count(), " ms");
      }
    }
  }

  TEST_CASE("a redis reply no command asked for is found by the next command and its connection replaced") {
    using ferry_test::misbehaving_server;
    SUBCASE("two replies at once: the command fails, and the next one goes over a new connection") {
      misbehaving_server server(misbehaving_server::protocol::resp, misbehaving_server::manner::two_replies);
      auto m = connect("redis://" + server.address());
      auto first = sync_wait(m.get("k"));
      REQUIRE_FALSE(first);
      CHECK(first.error() == ferry::errc::malformed_frame);
      MESSAGE(first.error().message());
      CHECK(sync_wait(m.get("k")).error() ==
            ferry::errc::malformed_frame); // a new connection, the same again
      CHECK(server.accepted() == 2);
    }
    SUBCASE("a reply that comes after its command's: the next command goes over a new connection") {
      misbehaving_server server(misbehaving_server::protocol::resp,
                                misbehaving_server::manner::late_extra_reply);
      auto m = connect("redis://" + server.address());
      auto first = sync_wait(m.get("k"));
      REQUIRE(first);
      CHECK(first->value() == "v1");
      std::this_thread::sleep_for(200ms); // the extra reply is here now
      auto second = sync_wait(m.get("k"));
      REQUIRE(second);
      CHECK(second->value() == "v1"); // the new connection's first answer, not "extra"
      CHECK(server.accepted() == 2);
    }
  }

  TEST_CASE("ferry-metad answers a chunked request before reading its body, never reads the body as a "
            "request, and serves on") {
    ferry_test::metad_server metad;
    int fd = ferry_test::connect_to(metad.process.port());
    REQUIRE(fd >= 0);
    ::timeval five{5, 0};
    REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &five, sizeof five) == 0);
    // A body without a stated length, which is itself a whole request: were it read as the next request on
    // the connection, it would store a key.
    ferry::metad::request smuggled;
    smuggled.op = ferry::metad::operation::put;
    smuggled.key = "smuggled";
    smuggled.value = "v";
    std::string inner = ferry::metad::encode_request(smuggled);
    std::string bytes =
        "POST /v1/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
        "POST /v1/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
        std::to_string(inner.size()) + "\r\n\r\n" + inner;
    REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
    std::string answer;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0)
      answer.append(buf, static_cast<std::size_t>(n));
    const int why = errno;
    ::close(fd);
    CHECK(answer.starts_with("HTTP/1.1 411"));
    CHECK(answer.find("Content-Length") != std::string::npos);
    CHECK(answer.find("HTTP/1.1 200") == std::string::npos);
    // the server closed the connection (an end, or a reset for the bytes it left unread), no timeout
    CHECK_MESSAGE((n == 0 || why == ECONNRESET), "recv: " << std::strerror(why));
    ferry::http_metadata_store store({metad.process.address()});
    CHECK(sync_wait(store.get("smuggled")).value() == std::nullopt);
    REQUIRE(sync_wait(store.put("k", "v")));
    CHECK(sync_wait(store.get("k")).value() == std::optional<std::string>("v"));
  }

  TEST_CASE("a redis whose key walk never ends fails the listing within its bound") {
    using server = ferry_test::misbehaving_server;
    const ferry::metadata_options options{.timeout = 100ms};
    server bad(server::protocol::resp, server::manner::endless_scan);
    auto t0 = std::chrono::steady_clock::now();
    auto got = sync_wait(ferry::redis_metadata_store(bad.address(), options).list("ferry/"));
    auto took = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(got);
    CHECK(got.error() == ferry::errc::timed_out);
    CHECK(std::string(got.error().what()).find("SCAN") != std::string::npos);
    CHECK(took < ferry::redis_metadata_store::scan_rounds_per_timeout * options.timeout + 1s);
    MESSAGE(got.error().message());
  }

  TEST_CASE(
      "a service whose reply has header lines without end, as fast as it can, is cut off at the reply's "
      "bound in bytes, not only in time") {
    using server = ferry_test::misbehaving_server;
    const ferry::metadata_options options{.timeout = 2s, .max_reply_bytes = 1 << 20};
    for (std::string scheme : {"etcd", "http"}) {
      CAPTURE(scheme);
      server bad(server::protocol::http, server::manner::head_flood);
      ::rusage before{};
      ::getrusage(RUSAGE_SELF, &before);
      auto t0 = std::chrono::steady_clock::now();
      ferry::result<std::optional<std::string>> got;
      if (scheme == "etcd")
        got = sync_wait(ferry::etcd_metadata_store({bad.address()}, options).get("anything"));
      else
        got = sync_wait(ferry::http_metadata_store({bad.address()}, options).get("anything"));
      auto took = std::chrono::steady_clock::now() - t0;
      ::rusage after{};
      ::getrusage(RUSAGE_SELF, &after);
      REQUIRE_FALSE(got);
      CHECK_MESSAGE(got.error() == ferry::errc::malformed_frame, got.error().message());
      CHECK(took < options.timeout); // long before the time bound
      // the header lines it kept: a few MiB, not what it could read in seconds
      CHECK(after.ru_maxrss - before.ru_maxrss < 256 * 1024); // KiB
      MESSAGE(scheme, ": ", got.error().message(), " after ",
              std::chrono::duration_cast<std::chrono::milliseconds>(took).count(), " ms; peak memory grew ",
              (after.ru_maxrss - before.ru_maxrss) / 1024, " MiB");
    }
  }

  TEST_CASE("a service that takes a large request a little at a time fails the operation within its bound") {
    using server = ferry_test::misbehaving_server;
    const ferry::metadata_options options{.timeout = 300ms};
    const std::string large(6 << 20, 'v'); // more than the sockets' buffers hold (4 MiB and 128 KiB)
    for (std::string scheme : {"etcd", "http", "redis"}) {
      CAPTURE(scheme);
      server bad(scheme == "redis" ? server::protocol::resp : server::protocol::http,
                 server::manner::slow_reader);
      auto t0 = std::chrono::steady_clock::now();
      ferry::result<void> put;
      if (scheme == "etcd")
        put = sync_wait(ferry::etcd_metadata_store({bad.address()}, options).put("big", large));
      else if (scheme == "http")
        put = sync_wait(ferry::http_metadata_store({bad.address()}, options).put("big", large));
      else
        put = sync_wait(ferry::redis_metadata_store(bad.address(), options).put("big", large));
      auto took = std::chrono::steady_clock::now() - t0;
      REQUIRE_FALSE(put);
      CHECK(bad.accepted() == 1); // a request that was sent is never sent again
      // the sending within the timeout (HTTP: the whole exchange within twice the timeout), and the time it
      // takes this process to encode 6 MiB (etcd: in base64, into JSON); all of it sent would take 20 s
      CHECK(took < 2 * options.timeout + 3s);
      CHECK_MESSAGE(put.error() == ferry::errc::timed_out, put.error().message());
      MESSAGE(scheme, ": ", put.error().message(), " after ",
              std::chrono::duration_cast<std::chrono::milliseconds>(took).count(), " ms");
    }
  }

  TEST_CASE("a malformed descriptor in the store is rejected with a message, never a crash") {
    ferry_test::etcd_server etcd;
    auto m = connect(etcd.connection());
    REQUIRE(sync_wait(m.put("ferry/segments/garbage", "{not json")));
    REQUIRE(sync_wait(m.put("ferry/segments/wrong-types", R"({"name": 7, "regions": "many"})")));
    REQUIRE(sync_wait(m.put("ferry/segments/empty", "")));
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "reader"});
    engine.use_metadata(m);
    for (const char* name : {"garbage", "wrong-types", "empty"}) {
      auto seg = ctx.run_until(engine.open_segment(name));
      REQUIRE_FALSE(seg);
      CHECK(seg.error() == ferry::errc::malformed_frame);
      CHECK(std::string(seg.error().what()).find("malformed descriptor") != std::string::npos);
      MESSAGE(seg.error().message());
    }
    auto missing = ctx.run_until(engine.open_segment("nobody"));
    REQUIRE_FALSE(missing);
    CHECK(missing.error() == ferry::errc::unknown_segment);
  }

  TEST_CASE("two clusters with different prefixes on one etcd never see each other's keys") {
    ferry_test::etcd_server etcd;
    auto a = connect(etcd.connection("cluster-a"));
    auto b = connect(etcd.connection("cluster-b"));
    REQUIRE(sync_wait(a.put("ferry/segments/x", "A")));
    REQUIRE(sync_wait(b.put("ferry/segments/x", "B")));
    CHECK(sync_wait(a.get("ferry/segments/x")).value() == "A");
    CHECK(sync_wait(b.get("ferry/segments/x")).value() == "B");
    auto listed = sync_wait(a.list("")).value();
    REQUIRE(listed.size() == 1);
    CHECK(listed[0].first == "ferry/segments/x");

    ferry::io::io_context ctx;
    ferry::default_engine in_a(ctx, {.name = "only-in-a", .listen = "127.0.0.1:0"});
    ferry::default_engine in_b(ctx, {.name = "looks-in-b"});
    REQUIRE(in_a.start());
    in_a.use_metadata(a);
    in_b.use_metadata(b);
    REQUIRE(ctx.run_until(in_a.publish()));
    auto seg = ctx.run_until(in_b.open_segment("only-in-a"));
    REQUIRE_FALSE(seg);
    CHECK(seg.error() == ferry::errc::unknown_segment);
    CHECK(ctx.run_until(in_a.open_segment("only-in-a")).value() == in_a.self);
  }

  TEST_CASE("a process killed with SIGKILL vanishes from etcd, redis and ferry-metad within its lease") {
    ferry_test::etcd_server etcd;
    ferry_test::redis_server redis;
    ferry_test::metad_server metad;
    constexpr auto ttl = 2000ms;
    std::vector<std::string> conns{etcd.connection(), redis.connection(), metad.connection()};
    std::vector<ferry_test::forked_child> targets;
    for (auto& c : conns) // all forked before this process starts a thread
      targets.push_back(spawn_published(c, "doomed", 7, ttl));
    for (std::size_t i = 0; i < conns.size(); ++i) {
      CAPTURE(conns[i]);
      auto m = connect(conns[i]);
      auto there = sync_wait(m.get("ferry/segments/doomed"));
      REQUIRE(there);
      REQUIRE(there->has_value());
      // it outlives several renewals while its process lives
      std::this_thread::sleep_for(i == 0 ? ttl + 500ms : 0ms);
      REQUIRE(sync_wait(m.get("ferry/segments/doomed")).value().has_value());
      targets[i].kill();
      auto gone = wait_until_gone(m, "ferry/segments/doomed", ttl + 4s);
      REQUIRE_MESSAGE(gone, "the killed process's segment stayed more than 4 s past its TTL");
      MESSAGE(conns[i] << ": gone " << gone->count() << " ms after SIGKILL (TTL " << ttl.count() << " ms)");
    }
  }

  TEST_CASE("etcd killed and restarted empty: established transfers continue, lookups fail clearly, the "
            "registration comes back") {
    ferry_test::etcd_server etcd;
    constexpr auto ttl = 2000ms;
    auto target = spawn_published(etcd.connection(), "kv-target", 7, ttl);
    auto m = connect(etcd.connection());
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "kv-reader"});
    engine.use_metadata(m);
    auto seg = ctx.run_until(engine.open_segment("kv-target"));
    REQUIRE_MESSAGE(seg, seg.error().message());
    std::vector<std::byte> got(target_size);
    REQUIRE(engine.registry().add(got.data(), got.size(), ferry::access::read_write));
    REQUIRE(ctx.run_until(read_all(engine, *seg, got)).ok());
    CHECK(holds_pattern(got, 7));

    etcd.process.stop();
    auto until = std::chrono::steady_clock::now() + 1s;
    int transfers = 0;
    while (std::chrono::steady_clock::now() < until) {
      std::fill(got.begin(), got.end(), std::byte{0});
      auto r = ctx.run_until(read_all(engine, *seg, got));
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      REQUIRE(holds_pattern(got, 7));
      ++transfers;
    }
    MESSAGE(transfers << " transfers completed while etcd was down");
    auto lookup = ctx.run_until(engine.open_segment("someone-new"));
    REQUIRE_FALSE(lookup);
    CHECK(lookup.error() == ferry::errc::peer_unreachable);
    CHECK(std::string(lookup.error().what()).find(etcd.process.address()) != std::string::npos);

    etcd.restart_empty();
    auto t0 = std::chrono::steady_clock::now();
    bool back = false;
    while (!back && std::chrono::steady_clock::now() - t0 < ttl + 8s) {
      auto v = sync_wait(m.get("ferry/segments/kv-target"));
      back = v && v->has_value();
      if (!back)
        std::this_thread::sleep_for(100ms);
    }
    REQUIRE_MESSAGE(back, "the target did not register again after etcd came back empty");
    MESSAGE("registered again " << std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::steady_clock::now() - t0)
                                       .count()
                                << " ms after etcd came back empty");
    ferry::default_engine fresh(ctx, {.name = "kv-reader-2"});
    fresh.use_metadata(m);
    std::vector<std::byte> again(target_size);
    REQUIRE(fresh.registry().add(again.data(), again.size(), ferry::access::read_write));
    auto seg2 = ctx.run_until(fresh.open_segment("kv-target"));
    REQUIRE_MESSAGE(seg2, seg2.error().message());
    REQUIRE(ctx.run_until(read_all(fresh, *seg2, again)).ok());
    CHECK(holds_pattern(again, 7));
  }

  TEST_CASE("a transfer to a segment whose owner restarted refreshes its descriptor and succeeds") {
    ferry_test::metad_server metad;
    constexpr auto ttl = 5000ms;
    auto first = spawn_published(metad.connection(), "restarts", 7, ttl);
    auto m = connect(metad.connection());
    ferry::io::io_context ctx;
    ferry::default_engine engine(ctx, {.name = "follower"});
    engine.use_metadata(m);
    auto seg = ctx.run_until(engine.open_segment("restarts"));
    REQUIRE(seg);
    std::vector<std::byte> got(target_size);
    REQUIRE(engine.registry().add(got.data(), got.size(), ferry::access::read_write));
    REQUIRE(ctx.run_until(read_all(engine, *seg, got)).ok());
    CHECK(holds_pattern(got, 7));
    auto old_incarnation = engine.find(*seg)->descriptor.incarnation;

    SUBCASE("at a new address") {
      first.kill();
      auto second = spawn_published(metad.connection(), "restarts", 9, ttl);
      auto r = ctx.run_until(read_all(engine, *seg, got));
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      CHECK(holds_pattern(got, 9));
      CHECK(engine.find(*seg)->descriptor.incarnation != old_incarnation);
    }
    SUBCASE("at the same address: the new process is noticed before any byte moves") {
      std::string address = first.line();
      first.kill();
      auto second = spawn_published(metad.connection(), "restarts", 9, ttl, address);
      REQUIRE(second.line() == address);
      auto r = ctx.run_until(read_all(engine, *seg, got));
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      CHECK(holds_pattern(got, 9));
      CHECK(engine.find(*seg)->descriptor.incarnation != old_incarnation);
    }
  }
}
