#include "ferry/transport/verbs/gid_selection.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <vector>

using namespace ferry::verbs;

namespace {
std::array<std::uint8_t, 16> ipv4(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d) {
  return {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d};
}
std::array<std::uint8_t, 16> link_local() {
  return {0xfe, 0x80, 0, 0, 0, 0, 0, 0, 2, 0x42, 0xac, 0xff, 0xfe, 0x11, 0, 2};
}
std::array<std::uint8_t, 16> global6() {
  return {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7};
}

// A typical mlx5 RoCE table: link-local v1/v2, then IPv6 global v1/v2, then IPv4-mapped v1/v2.
std::vector<gid_entry> roce_table() {
  return {{0, link_local(), gid_type::roce_v1},      {1, link_local(), gid_type::roce_v2},
          {2, global6(), gid_type::roce_v1},         {3, global6(), gid_type::roce_v2},
          {4, ipv4(10, 0, 0, 5), gid_type::roce_v1}, {5, ipv4(10, 0, 0, 5), gid_type::roce_v2}};
}
} // namespace

TEST_SUITE("verbs gid_selection") {
  TEST_CASE("the address helpers recognise ipv4-mapped, link-local and zero gids") {
    CHECK(is_ipv4_mapped(ipv4(192, 168, 1, 1)));
    CHECK_FALSE(is_ipv4_mapped(global6()));
    CHECK(is_link_local(link_local()));
    CHECK_FALSE(is_link_local(ipv4(1, 2, 3, 4)));
    CHECK(is_zero({}));
  }

  TEST_CASE("roce prefers v2 with an ipv4-mapped address") {
    auto t = roce_table();
    auto c = select_gid(t, IBV_LINK_LAYER_ETHERNET);
    REQUIRE(c);
    CHECK(c->index == 5);
    CHECK(c->type == gid_type::roce_v2);
    CHECK(std::string_view(c->why) == "roce v2, ipv4-mapped");
  }

  TEST_CASE("without ipv4, a global ipv6 v2 entry wins over link-local") {
    auto t = roce_table();
    t.resize(4);
    auto c = select_gid(t, IBV_LINK_LAYER_ETHERNET);
    REQUIRE(c);
    CHECK(c->index == 3);
  }

  TEST_CASE("only link-local entries: v2 before v1") {
    auto t = roce_table();
    t.resize(2);
    auto c = select_gid(t, IBV_LINK_LAYER_ETHERNET);
    REQUIRE(c);
    CHECK(c->index == 1);
    t.resize(1);
    c = select_gid(t, IBV_LINK_LAYER_ETHERNET);
    REQUIRE(c);
    CHECK(c->index == 0);
    CHECK(c->type == gid_type::roce_v1);
  }

  TEST_CASE("zero gids are never chosen and an empty roce table is an error that says why") {
    std::vector<gid_entry> t{{0, {}, gid_type::roce_v2}};
    auto c = select_gid(t, IBV_LINK_LAYER_ETHERNET);
    REQUIRE_FALSE(c);
    CHECK(c.error() == ferry::errc::not_found);
    CHECK(c.error().message().find("no usable GID") != std::string::npos);
  }

  TEST_CASE("infiniband uses index 0") {
    std::vector<gid_entry> t{{0, global6(), gid_type::ib}, {1, global6(), gid_type::ib}};
    auto c = select_gid(t, IBV_LINK_LAYER_INFINIBAND);
    REQUIRE(c);
    CHECK(c->index == 0);
  }

  TEST_CASE("a configured index overrides the choice and must be valid") {
    auto t = roce_table();
    auto c = select_gid(t, IBV_LINK_LAYER_ETHERNET, 2u);
    REQUIRE(c);
    CHECK(c->index == 2);
    CHECK(std::string_view(c->why) == "configured");
    auto missing = select_gid(t, IBV_LINK_LAYER_ETHERNET, 9u);
    REQUIRE_FALSE(missing);
    CHECK(missing.error() == ferry::errc::invalid_argument);
  }

  TEST_CASE("FERRY_VERBS_GID_INDEX is read as a number") {
    ::setenv("FERRY_VERBS_GID_INDEX", "3", 1);
    CHECK(gid_index_from_environment() == 3u);
    ::setenv("FERRY_VERBS_GID_INDEX", "x3", 1);
    CHECK_FALSE(gid_index_from_environment());
    ::unsetenv("FERRY_VERBS_GID_INDEX");
    CHECK_FALSE(gid_index_from_environment());
  }
}
