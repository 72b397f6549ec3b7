// The P2P store example's API, in one process: two engines on loopback, the embedded metadata store.
#include "p2p_store.hpp"

#include <ferry/metadata/connect_metadata.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

namespace {

using engine_type = ferry::transfer_engine<ferry::tcp_transport>;

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 7 + seed + i / 4096) & 0xff);
  return v;
}

struct two_peers {
  ferry::metadata_client meta;
  ferry::io::io_context ctx;
  engine_type a{ctx, {.name = "peer-a", .listen = "127.0.0.2:0"}};
  engine_type b{ctx, {.name = "peer-b", .listen = "127.0.0.3:0"}};
  p2p::store<engine_type> sa{a, meta};
  p2p::store<engine_type> sb{b, meta};

  explicit two_peers(const std::string& conn) : meta(ferry::connect_metadata(conn).value()) {
    REQUIRE(a.start());
    REQUIRE(b.start());
    a.use_metadata(meta);
    b.use_metadata(meta);
  }
};

} // namespace

TEST_SUITE("p2p store example") {
  // why: g++ 12 mishandles array and braced temporaries inside co_await expressions; arguments are named
  // first
  TEST_CASE("publish, fetch (verified), list, drop_replica and unpublish") {
    two_peers p("memory://p2p-api");
    // a payload in two buffers of odd sizes, shards that straddle them
    auto first = pattern(300000, 1), second = pattern(123457, 2);
    std::vector<std::byte> into_a(200000), into_b(first.size() + second.size() - 200000), wrong(10);
    const std::string ckpt = "ckpt", all = "p2p/";
    std::vector<std::span<const std::byte>> both{std::span<const std::byte>(first),
                                                 std::span<const std::byte>(second)};
    std::vector<std::span<const std::byte>> only_first{std::span<const std::byte>(first)};
    std::vector<std::span<std::byte>> wrong_size{std::span<std::byte>(wrong)};
    std::vector<std::span<std::byte>> into{std::span<std::byte>(into_a), std::span<std::byte>(into_b)};
    p.ctx.run_until([&]() -> ferry::task<> {
      auto m = co_await p.sa.publish(ckpt, both, 65536);
      REQUIRE_MESSAGE(m, m.error().message());
      CHECK(m->size == first.size() + second.size());
      CHECK(m->shard_count() == (m->size + 65535) / 65536);

      auto again = co_await p.sa.publish(ckpt, only_first, 65536);
      REQUIRE_FALSE(again);
      CHECK(again.error() == ferry::errc::already_exists);

      auto bad = co_await p.sb.fetch(ckpt, wrong_size);
      REQUIRE_FALSE(bad);
      CHECK(bad.error() == ferry::errc::invalid_argument);

      auto report = co_await p.sb.fetch(ckpt, into);
      REQUIRE_MESSAGE(report, report.error().message());
      CHECK(report->bytes == m->size);
      CHECK(report->pulled_from["peer-a"] == m->size);
      std::vector<std::byte> whole(into_a);
      whole.insert(whole.end(), into_b.begin(), into_b.end());
      std::vector<std::byte> expected(first);
      expected.insert(expected.end(), second.begin(), second.end());
      CHECK(whole == expected);

      // peer-b now holds every shard
      for (std::size_t i = 0; i < m->shard_count(); ++i) {
        std::string key = "p2p/holders/ckpt/" + std::to_string(i);
        auto holders = co_await p.meta.get(key);
        REQUIRE(holders);
        CHECK((*holders)->find("peer-b") != std::string::npos);
      }
      auto listed = co_await p.sa.list();
      REQUIRE(listed);
      REQUIRE(listed->size() == 1);
      CHECK((*listed)[0].name == "ckpt");

      auto dropped = co_await p.sb.drop_replica(ckpt);
      REQUIRE(dropped);
      for (std::size_t i = 0; i < m->shard_count(); ++i) {
        std::string key = "p2p/holders/ckpt/" + std::to_string(i);
        auto holders = co_await p.meta.get(key);
        REQUIRE(holders);
        CHECK((*holders)->find("peer-b") == std::string::npos);
      }
      auto unpublished = co_await p.sa.unpublish(ckpt);
      REQUIRE(unpublished);
      auto none = co_await p.sa.list();
      CHECK(none->empty());
      auto gone = co_await p.sb.fetch(ckpt, into);
      REQUIRE_FALSE(gone);
      CHECK(gone.error() == ferry::errc::not_found);
      auto left = co_await p.meta.list(all);
      CHECK(left->empty());
      co_await p.a.shutdown();
      co_await p.b.shutdown();
    }());
  }

  TEST_CASE("a holder that serves wrong bytes is given up and the shard pulled elsewhere") {
    two_peers p("memory://p2p-corrupt");
    auto payload = pattern(256 * 1024, 3);
    std::vector<std::byte> fake(payload.size()), into(payload.size());
    const std::string w = "w", replica_key = "p2p/replicas/w/peer-b", both_holders = R"(["peer-a","peer-b"])";
    std::vector<std::span<const std::byte>> source{std::span<const std::byte>(payload)};
    std::vector<std::span<std::byte>> target{std::span<std::byte>(into)};
    engine_type c(p.ctx, {.name = "peer-c", .listen = "127.0.0.4:0"});
    REQUIRE(c.start());
    c.use_metadata(p.meta);
    p2p::store<engine_type> sc(c, p.meta);
    p.ctx.run_until([&]() -> ferry::task<> {
      auto published = co_await p.sa.publish(w, source, 65536);
      REQUIRE(published);
      // peer-b claims to hold everything, but its copy is garbage
      auto at = p.b.registry().add(fake.data(), fake.size(), ferry::access::read);
      REQUIRE(at);
      auto republished = co_await p.b.publish();
      REQUIRE(republished);
      std::string layout = "[[" + std::to_string(*at) + "," + std::to_string(fake.size()) + "]]";
      auto put = co_await p.meta.put(replica_key, layout);
      REQUIRE(put);
      for (int i = 0; i < 4; ++i) {
        std::string key = "p2p/holders/w/" + std::to_string(i);
        auto claimed = co_await p.meta.put(key, both_holders);
        REQUIRE(claimed);
      }
      auto report = co_await sc.fetch(w, target);
      REQUIRE_MESSAGE(report, report.error().message());
      CHECK(into == payload);
      CHECK(report->pulled_from["peer-a"] == payload.size());
      CHECK(report->retries >=
            1); // peer-b was tried (the least used holder that is not the origin) and failed
      co_await c.shutdown();
      co_await p.a.shutdown();
      co_await p.b.shutdown();
    }());
  }
}
