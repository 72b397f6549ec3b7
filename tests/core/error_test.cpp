#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <string>
#include <system_error>

TEST_SUITE("error") {
  TEST_CASE("ferry error codes carry their own category and message") {
    std::error_code ec = ferry::errc::out_of_bounds;
    CHECK(std::string(ec.category().name()) == "ferry");
    CHECK(ec.message().find("outside") != std::string::npos);
    CHECK(ec == ferry::errc::out_of_bounds);
  }

  TEST_CASE("generic conditions match where they mean the same") {
    std::error_code ec = ferry::errc::cancelled;
    CHECK(ec == std::errc::operation_canceled);
    CHECK(std::error_code(ferry::errc::timed_out) == std::errc::timed_out);
  }

  TEST_CASE("an error names what failed") {
    auto e = ferry::error::from_errno(ECONNREFUSED, "connect");
    CHECK(e == std::errc::connection_refused);
    CHECK(e.message().rfind("connect: ", 0) == 0);
    CHECK(std::string(e.what()) == "connect");
    ferry::error plain(ferry::errc::busy);
    CHECK(plain.message() == std::error_code(ferry::errc::busy).message());
  }

  TEST_CASE("result carries a value or an error") {
    auto half = [](int v) -> ferry::result<int> {
      if (v % 2)
        return ferry::fail(ferry::errc::invalid_argument, "half: odd");
      return v / 2;
    };
    CHECK(half(4).value() == 2);
    auto r = half(3);
    REQUIRE_FALSE(r);
    CHECK(r.error() == ferry::errc::invalid_argument);
    auto k = ferry::fail_errno(-EBADF, "recv");
    CHECK(k.value() == std::errc::bad_file_descriptor);
  }
}
