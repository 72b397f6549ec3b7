#include "ferry/transport/verbs/handshake.hpp"

#include <doctest/doctest.h>

using namespace ferry::verbs;

namespace {
handshake_message sample_reply() {
  handshake_message m;
  m.kind = handshake_kind::reply;
  m.incarnation = 0x1122334455667788ull;
  m.nic = 1;
  m.peer_nic = 0;
  m.nic_count = 2;
  m.port = 1;
  m.mtu = 3;
  m.link_layer = 2;
  m.gid_index = 3;
  m.lid = 0;
  m.gid = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
  m.qps = {{0x101, 0x10}, {0x102, 0xffffff}};
  m.regions = {{0, 4096, 0x7f0000000000, 0xabc, ferry::access::read},
               {4096, 1 << 20, 0x7f0000100000, 0xdef, ferry::access::read_write}};
  return m;
}
void set_u16(std::vector<std::byte>& b, std::size_t at, std::uint16_t v) {
  b[at] = std::byte(v & 0xff);
  b[at + 1] = std::byte(v >> 8);
}
} // namespace

TEST_SUITE("verbs handshake") {
  TEST_CASE("a reply round-trips through encode and decode") {
    auto m = sample_reply();
    auto bytes = m.encode();
    auto back = handshake_message::decode(bytes);
    REQUIRE(back);
    CHECK(*back == m);
  }

  TEST_CASE("a request and a reject round-trip") {
    handshake_message req;
    req.kind = handshake_kind::request;
    req.qps = {{7, 1}};
    auto r = handshake_message::decode(req.encode());
    REQUIRE(r);
    CHECK(*r == req);
    handshake_message rej;
    rej.kind = handshake_kind::reject;
    rej.reason = "no such NIC";
    auto j = handshake_message::decode(rej.encode());
    REQUIRE(j);
    CHECK(j->reason == "no such NIC");
  }

  TEST_CASE("a newer or older version is a version mismatch that says who must upgrade") {
    auto bytes = sample_reply().encode();
    set_u16(bytes, 4, handshake_message::version + 1);
    auto newer = handshake_message::decode(bytes);
    REQUIRE_FALSE(newer);
    CHECK(newer.error() == ferry::errc::version_mismatch);
    CHECK(newer.error().message().find("newer") != std::string::npos);
    set_u16(bytes, 4, 0);
    auto older = handshake_message::decode(bytes);
    REQUIRE_FALSE(older);
    CHECK(older.error() == ferry::errc::version_mismatch);
  }

  TEST_CASE("every truncation is refused") {
    auto bytes = sample_reply().encode();
    for (std::size_t n = 0; n < bytes.size(); ++n) {
      auto r = handshake_message::decode(std::span(bytes.data(), n));
      REQUIRE_FALSE(r);
      CHECK(r.error() == ferry::errc::malformed_frame);
    }
    bytes.push_back(std::byte{0});
    CHECK_FALSE(handshake_message::decode(bytes)); // trailing byte
  }

  TEST_CASE("invalid fields are refused with a reason") {
    auto check_bad = [](handshake_message m, const char* needle) {
      auto r = handshake_message::decode(m.encode());
      REQUIRE_FALSE(r);
      CHECK(r.error() == ferry::errc::malformed_frame);
      CHECK(r.error().message().find(needle) != std::string::npos);
    };
    auto m = sample_reply();
    m.mtu = 6;
    check_bad(m, "mtu");
    m = sample_reply();
    m.qps[0].qpn = 0x1000000;
    check_bad(m, "24-bit");
    m = sample_reply();
    m.qps.clear();
    check_bad(m, "no queue pairs");
    m = sample_reply();
    std::swap(m.regions[0], m.regions[1]);
    check_bad(m, "overlapping");
    m = sample_reply();
    m.regions[1].length = 0;
    check_bad(m, "zero");
    m = sample_reply();
    m.regions[1].addr = ~0ull;
    check_bad(m, "overflows");
    m = sample_reply();
    m.regions[0].permissions = ferry::access::none;
    check_bad(m, "access");
    m = sample_reply();
    m.nic = 2;
    check_bad(m, "nic index");
    m = sample_reply();
    m.kind = handshake_kind::request;
    check_bad(m, "only a reply");
    m = sample_reply();
    m.link_layer = 7;
    check_bad(m, "link layer");
  }

  TEST_CASE("region_for finds the region holding a range and nothing else") {
    auto m = sample_reply();
    CHECK(m.region_for(0, 4096) == &m.regions[0]);
    CHECK(m.region_for(4096 + 100, 100) == &m.regions[1]);
    CHECK(m.region_for(4000, 200) == nullptr); // straddles
    CHECK(m.region_for(4096 + (1 << 20), 1) == nullptr);
    CHECK(m.region_for(~0ull, 2) == nullptr);
  }
}
