#pragma once
/// `ferry::verbs::select_gid`: picks the GID table entry a port's queue pairs address each other by. On RoCE
/// the choice matters: RoCE v2 (routable, UDP) with an IPv4-mapped address is what data centre fabrics run,
/// then RoCE v2 with a global IPv6 address, then RoCE v2 at all, then RoCE v1. On InfiniBand the LID routes
/// and GID index 0 is used. An explicit index (engine option or FERRY_VERBS_GID_INDEX) overrides the choice.
///
///   auto table = ferry::verbs::query_gid_table(ctx, port);
///   auto pick = ferry::verbs::select_gid(table, IBV_LINK_LAYER_ETHERNET);   // pick->index, pick->why

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <array>
#include <cstdint>
#include <cstdlib>
#include <infiniband/verbs.h>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace ferry::verbs {

enum class gid_type : std::uint8_t { ib, roce_v1, roce_v2 };

/// One valid entry of a port's GID table.
struct gid_entry {
  std::uint32_t index = 0;
  std::array<std::uint8_t, 16> gid{};
  gid_type type = gid_type::ib;
};

/// True for ::ffff:a.b.c.d, the form RoCE v2 uses for an IPv4 address.
constexpr bool is_ipv4_mapped(const std::array<std::uint8_t, 16>& g) noexcept {
  for (int i = 0; i < 10; ++i)
    if (g[i] != 0)
      return false;
  return g[10] == 0xff && g[11] == 0xff;
}
/// True for fe80::/10 (link-local: not routable across subnets).
constexpr bool is_link_local(const std::array<std::uint8_t, 16>& g) noexcept {
  return g[0] == 0xfe && (g[1] & 0xc0) == 0x80;
}
constexpr bool is_zero(const std::array<std::uint8_t, 16>& g) noexcept {
  for (auto b : g)
    if (b != 0)
      return false;
  return true;
}

struct gid_choice {
  std::uint32_t index = 0;
  gid_type type = gid_type::ib;
  const char* why = ""; ///< which rule chose it (for logs and tests)
};

/// Chooses the GID index for a port with `link_layer` (IBV_LINK_LAYER_*) from its valid entries.
/// `wanted` (an explicit index) must name a valid, non-zero entry.
inline result<gid_choice> select_gid(std::span<const gid_entry> table, int link_layer,
                                     std::optional<std::uint32_t> wanted = std::nullopt) {
  if (wanted) {
    for (auto& e : table)
      if (e.index == *wanted && !is_zero(e.gid))
        return gid_choice{e.index, e.type, "configured"};
    return fail(errc::invalid_argument,
                "verbs: the configured GID index is not a valid entry of the port's table");
  }
  if (link_layer != IBV_LINK_LAYER_ETHERNET) {
    // why: InfiniBand routes by LID inside a subnet; index 0 holds the port GID (subnet prefix + GUID)
    for (auto& e : table)
      if (e.index == 0)
        return gid_choice{0, e.type, "infiniband: port GID"};
    return gid_choice{0, gid_type::ib, "infiniband: port GID"};
  }
  struct rule {
    const char* why;
    bool (*match)(const gid_entry&);
  };
  static constexpr rule rules[] = {
      {"roce v2, ipv4-mapped",
       [](const gid_entry& e) { return e.type == gid_type::roce_v2 && is_ipv4_mapped(e.gid); }},
      {"roce v2, global ipv6",
       [](const gid_entry& e) {
         return e.type == gid_type::roce_v2 && !is_link_local(e.gid) && !is_ipv4_mapped(e.gid);
       }},
      {"roce v2", [](const gid_entry& e) { return e.type == gid_type::roce_v2; }},
      {"roce v1", [](const gid_entry& e) { return e.type == gid_type::roce_v1; }},
  };
  for (auto& r : rules)
    for (auto& e : table)
      if (!is_zero(e.gid) && r.match(e))
        return gid_choice{e.index, e.type, r.why};
  return fail(errc::not_found, "verbs: the RoCE port has no usable GID (no IP address on its net device?)");
}

/// The GID index named by FERRY_VERBS_GID_INDEX, if set to a number.
inline std::optional<std::uint32_t> gid_index_from_environment() {
  const char* v = std::getenv("FERRY_VERBS_GID_INDEX");
  if (!v || !*v)
    return std::nullopt;
  char* end = nullptr;
  unsigned long n = std::strtoul(v, &end, 10);
  if (*end != '\0' || n > 0xffff)
    return std::nullopt;
  return static_cast<std::uint32_t>(n);
}

/// The valid entries of `port`'s GID table on an open device.
inline result<std::vector<gid_entry>> query_gid_table(::ibv_context* ctx, std::uint8_t port) {
  ::ibv_port_attr pa{};
  if (int r = ::ibv_query_port(ctx, port, &pa); r != 0)
    return fail_errno(-r, "ibv_query_port");
  ::ibv_device_attr da{};
  if (int r = ::ibv_query_device(ctx, &da); r != 0)
    return fail_errno(-r, "ibv_query_device");
  // why: ibv_query_gid_table lists the valid entries of every port of the device; keep this port's
  std::size_t ports = da.phys_port_cnt > 0 ? da.phys_port_cnt : 1;
  std::vector<::ibv_gid_entry> raw(static_cast<std::size_t>(pa.gid_tbl_len > 0 ? pa.gid_tbl_len : 1) * ports);
  ssize_t n = ::ibv_query_gid_table(ctx, raw.data(), raw.size(), 0);
  if (n < 0)
    return fail_errno(static_cast<int>(n), "ibv_query_gid_table");
  std::vector<gid_entry> out;
  for (ssize_t i = 0; i < n; ++i) {
    auto& r = raw[static_cast<std::size_t>(i)];
    if (r.port_num != port)
      continue;
    gid_entry e;
    e.index = r.gid_index;
    for (std::size_t b = 0; b < 16; ++b)
      e.gid[b] = r.gid.raw[b];
    e.type = r.gid_type == IBV_GID_TYPE_ROCE_V2   ? gid_type::roce_v2
             : r.gid_type == IBV_GID_TYPE_ROCE_V1 ? gid_type::roce_v1
                                                  : gid_type::ib;
    out.push_back(e);
  }
  return out;
}

} // namespace ferry::verbs
