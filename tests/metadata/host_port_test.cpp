#include "ferry/metadata/host_port.hpp"

#include <doctest/doctest.h>

#include <string>

TEST_SUITE("host_port") {
  TEST_CASE("names and IPv4 and IPv6 addresses are taken apart and written back") {
    auto name = ferry::host_port::parse("etcd-0.cluster.local:2379");
    REQUIRE(name);
    CHECK(name->host == "etcd-0.cluster.local");
    CHECK(name->port == 2379);
    CHECK_FALSE(name->is_ipv6());
    CHECK(name->to_string() == "etcd-0.cluster.local:2379");

    auto v4 = ferry::host_port::parse("10.0.0.7:0");
    REQUIRE(v4);
    CHECK(v4->host == "10.0.0.7");
    CHECK(v4->port == 0);

    auto v6 = ferry::host_port::parse("[fd00::7]:65535");
    REQUIRE(v6);
    CHECK(v6->host == "fd00::7");
    CHECK(v6->port == 65535);
    CHECK(v6->is_ipv6());
    CHECK(v6->to_string() == "[fd00::7]:65535");

    auto zoned = ferry::host_port::parse("[fe80::1%eth0]:80");
    REQUIRE(zoned);
    CHECK(zoned->host == "fe80::1%eth0");
  }

  TEST_CASE("anything else is refused with the reason") {
    for (const char* bad :
         {"", ":80", "host", "host:", "host:65536", "host:+80", "host: 80", "host:80x", "::1:80", "[::1]",
          "[]:80", "[127.0.0.1]:80", "[[::1]]:80", "[x:y]:80", "[::1:80", "::1]:80", "[fe80::1%]:80"}) {
      auto parsed = ferry::host_port::parse(bad);
      CHECK_MESSAGE(!parsed, bad);
      if (!parsed) {
        CHECK(parsed.error() == ferry::errc::invalid_argument);
        CHECK(std::string(parsed.error().what()).find("is not HOST:PORT") != std::string::npos);
      }
    }
  }
}
