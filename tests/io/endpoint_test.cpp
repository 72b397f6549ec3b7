#include "ferry/io/endpoint.hpp"

#include <doctest/doctest.h>

#include <sys/socket.h>

TEST_SUITE("endpoint") {
  TEST_CASE("IPv4 and IPv6 endpoints parse and print back") {
    auto a = ferry::io::endpoint::parse("127.0.0.2:7000");
    REQUIRE(a);
    CHECK(a->family() == AF_INET);
    CHECK(a->port() == 7000);
    CHECK(a->to_string() == "127.0.0.2:7000");
    auto b = ferry::io::endpoint::parse("[::1]:80");
    REQUIRE(b);
    CHECK(b->family() == AF_INET6);
    CHECK(b->to_string() == "[::1]:80");
    CHECK(ferry::io::endpoint::parse("localhost:1")->to_string() == "127.0.0.1:1");
    CHECK(a->with_port(1).port() == 1);
  }

  TEST_CASE("malformed endpoints are rejected with a reason") {
    for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:12x",
                            "example.com:80", "[zz]:1", "1.2.3.4.5:1"}) {
      CAPTURE(bad);
      auto r = ferry::io::endpoint::parse(bad);
      REQUIRE_FALSE(r);
      CHECK(r.error() == ferry::errc::invalid_argument);
      CHECK(std::string(r.error().what()).rfind("endpoint", 0) == 0);
    }
  }
}
