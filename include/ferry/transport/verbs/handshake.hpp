#pragma once
/// `ferry::verbs::handshake_message`: what two sides exchange to connect reliable-connected queue pairs — the
/// NIC's address (LID, GID and its index, link layer, port, MTU), one (QPN, PSN) per queue pair and, in a
/// reply, the rkey and address of every exposed region (a peer can only reach what is listed, with the
/// permissions its rkey carries). Binary, little-endian, versioned; `decode` validates everything since it
/// arrives from the network.
///
///   auto bytes = msg.encode();
///   ferry::result<ferry::verbs::handshake_message> back = ferry::verbs::handshake_message::decode(bytes);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/detail/region_holding.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace ferry::verbs {

enum class handshake_kind : std::uint8_t {
  request = 1, ///< initiator -> target: my queue pairs, connect yours to them
  reply = 2,   ///< target -> initiator: my queue pairs and my regions' keys
  reject = 3,  ///< target -> initiator: refused, with a reason
};

/// One queue pair: its number and first packet sequence number (24 bits each).
struct qp_endpoint {
  std::uint32_t qpn = 0;
  std::uint32_t psn = 0;
  friend bool operator==(const qp_endpoint&, const qp_endpoint&) = default;
};

/// An exposed region as a peer's NIC addresses it.
struct remote_region {
  std::uint64_t offset = 0; ///< in the segment's offset space
  std::uint64_t length = 0;
  std::uint64_t addr = 0; ///< virtual address (or iova) the rkey is valid for
  std::uint32_t rkey = 0;
  access permissions = access::none;
  friend bool operator==(const remote_region&, const remote_region&) = default;
};

struct handshake_message {
  static constexpr std::uint32_t magic = 0x48565246; // "FRVH" read as little-endian bytes
  static constexpr std::uint16_t version = 1;
  static constexpr std::uint16_t min_version = 1;
  static constexpr std::size_t max_qps = 64;
  static constexpr std::size_t max_regions = 1u << 16;
  static constexpr std::size_t max_reason = 256;
  static constexpr std::size_t max_size = 64 + max_qps * 8 + max_regions * 29 + max_reason;

  handshake_kind kind = handshake_kind::request;
  std::uint64_t incarnation = 0; ///< the sender's segment incarnation (a restart is a new peer)
  std::uint32_t nic = 0;         ///< the sender's NIC index; a request names the target NIC in `peer_nic`
  std::uint32_t peer_nic = 0;    ///< request: which of the target's NICs to connect to
  std::uint16_t nic_count = 1;   ///< how many NICs the sender offers
  std::uint8_t port = 1;
  std::uint8_t mtu = 5;        ///< an ibv_mtu value, 1 (256) .. 5 (4096)
  std::uint8_t link_layer = 1; ///< IBV_LINK_LAYER_INFINIBAND (1) or _ETHERNET (2)
  std::uint8_t gid_index = 0;
  std::uint16_t lid = 0;
  std::array<std::uint8_t, 16> gid{};
  std::vector<qp_endpoint> qps;
  std::vector<remote_region> regions; ///< reply only; sorted by offset, not overlapping
  std::string reason;                 ///< reject only

  std::vector<std::byte> encode() const {
    std::vector<std::byte> out;
    out.reserve(64 + qps.size() * 8 + regions.size() * 29 + reason.size());
    put(out, magic, 4);
    put(out, version, 2);
    put(out, static_cast<std::uint8_t>(kind), 1);
    put(out, 0, 1); // flags, none yet
    put(out, incarnation, 8);
    put(out, nic, 4);
    put(out, peer_nic, 4);
    put(out, nic_count, 2);
    put(out, port, 1);
    put(out, mtu, 1);
    put(out, link_layer, 1);
    put(out, gid_index, 1);
    put(out, lid, 2);
    for (auto b : gid)
      out.push_back(static_cast<std::byte>(b));
    put(out, qps.size(), 1);
    for (auto& q : qps) {
      put(out, q.qpn, 4);
      put(out, q.psn, 4);
    }
    put(out, regions.size(), 4);
    for (auto& r : regions) {
      put(out, r.offset, 8);
      put(out, r.length, 8);
      put(out, r.addr, 8);
      put(out, r.rkey, 4);
      put(out, static_cast<std::uint8_t>(r.permissions), 1);
    }
    put(out, reason.size(), 2);
    for (char c : reason)
      out.push_back(static_cast<std::byte>(c));
    return out;
  }

  /// Parses and validates; errc::version_mismatch for a version this side does not speak,
  /// errc::malformed_frame with the reason for anything else.
  static result<handshake_message> decode(std::span<const std::byte> in) {
    reader r{in};
    auto bad = [](const char* why) { return fail(errc::malformed_frame, why); };
    std::uint64_t v = 0;
    if (!r.get(v, 4) || v != magic)
      return bad("verbs handshake: bad magic (not a ferry verbs handshake)");
    if (!r.get(v, 2))
      return bad("verbs handshake: truncated");
    if (v > version)
      return fail(errc::version_mismatch,
                  "verbs handshake: the peer speaks a newer version; upgrade this side");
    if (v < min_version)
      return fail(errc::version_mismatch,
                  "verbs handshake: the peer speaks an older version; upgrade the peer");
    handshake_message m;
    if (!r.get(v, 1) || v < 1 || v > 3)
      return bad("verbs handshake: unknown message kind");
    m.kind = static_cast<handshake_kind>(v);
    if (!r.get(v, 1) || v != 0)
      return bad("verbs handshake: unknown flags");
    if (!r.get(m.incarnation, 8))
      return bad("verbs handshake: truncated");
    if (!r.get(v, 4))
      return bad("verbs handshake: truncated");
    m.nic = static_cast<std::uint32_t>(v);
    if (!r.get(v, 4))
      return bad("verbs handshake: truncated");
    m.peer_nic = static_cast<std::uint32_t>(v);
    if (!r.get(v, 2) || v == 0)
      return bad("verbs handshake: nic count missing or zero");
    m.nic_count = static_cast<std::uint16_t>(v);
    if (m.nic >= m.nic_count)
      return bad("verbs handshake: nic index beyond the nic count");
    if (!r.get(v, 1) || v == 0)
      return bad("verbs handshake: port missing or zero");
    m.port = static_cast<std::uint8_t>(v);
    if (!r.get(v, 1) || v < 1 || v > 5)
      return bad("verbs handshake: mtu must be 1 (256) to 5 (4096)");
    m.mtu = static_cast<std::uint8_t>(v);
    if (!r.get(v, 1) || (v != 1 && v != 2))
      return bad("verbs handshake: link layer must be infiniband (1) or ethernet (2)");
    m.link_layer = static_cast<std::uint8_t>(v);
    if (!r.get(v, 1))
      return bad("verbs handshake: truncated");
    m.gid_index = static_cast<std::uint8_t>(v);
    if (!r.get(v, 2))
      return bad("verbs handshake: truncated");
    m.lid = static_cast<std::uint16_t>(v);
    for (auto& b : m.gid) {
      if (!r.get(v, 1))
        return bad("verbs handshake: truncated");
      b = static_cast<std::uint8_t>(v);
    }
    if (!r.get(v, 1) || v > max_qps)
      return bad("verbs handshake: too many queue pairs");
    if (m.kind != handshake_kind::reject && v == 0)
      return bad("verbs handshake: no queue pairs");
    m.qps.resize(v);
    for (auto& q : m.qps) {
      std::uint64_t qpn = 0, psn = 0;
      if (!r.get(qpn, 4) || !r.get(psn, 4))
        return bad("verbs handshake: truncated");
      if (qpn == 0 || qpn > 0xffffff || psn > 0xffffff)
        return bad("verbs handshake: qpn and psn are 24-bit, qpn non-zero");
      q = {static_cast<std::uint32_t>(qpn), static_cast<std::uint32_t>(psn)};
    }
    if (!r.get(v, 4) || v > max_regions)
      return bad("verbs handshake: too many regions");
    if (v != 0 && m.kind != handshake_kind::reply)
      return bad("verbs handshake: only a reply carries regions");
    if (v * 29 > r.left())
      return bad("verbs handshake: truncated");
    m.regions.resize(v);
    for (std::size_t i = 0; i < m.regions.size(); ++i) {
      auto& g = m.regions[i];
      std::uint64_t rkey = 0, acc = 0;
      if (!r.get(g.offset, 8) || !r.get(g.length, 8) || !r.get(g.addr, 8) || !r.get(rkey, 4) ||
          !r.get(acc, 1))
        return bad("verbs handshake: truncated");
      g.rkey = static_cast<std::uint32_t>(rkey);
      if (acc < 1 || acc > 3)
        return bad("verbs handshake: region access must be read, write or read_write");
      g.permissions = static_cast<access>(acc);
      auto max = std::numeric_limits<std::uint64_t>::max();
      if (g.length == 0 || g.offset > max - g.length || g.addr > max - g.length)
        return bad("verbs handshake: region length is zero or overflows");
      if (i > 0 && m.regions[i - 1].offset + m.regions[i - 1].length > g.offset)
        return bad("verbs handshake: regions unsorted or overlapping");
    }
    if (!r.get(v, 2) || v > max_reason || v > r.left())
      return bad("verbs handshake: reason too long or truncated");
    if (v != 0 && m.kind != handshake_kind::reject)
      return bad("verbs handshake: only a reject carries a reason");
    m.reason.resize(v);
    for (auto& c : m.reason) {
      std::uint64_t ch = 0;
      r.get(ch, 1);
      c = static_cast<char>(ch);
    }
    if (r.left() != 0)
      return bad("verbs handshake: trailing bytes");
    return m;
  }

  /// The region holding [offset, offset + length), or nullptr.
  const remote_region* region_for(std::uint64_t offset, std::uint64_t length) const noexcept {
    return ferry::detail::region_holding(regions, offset, length);
  }

  friend bool operator==(const handshake_message&, const handshake_message&) = default;

private:
  static void put(std::vector<std::byte>& out, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i)
      out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
  }
  struct reader {
    std::span<const std::byte> in;
    std::size_t at = 0;
    std::size_t left() const noexcept { return in.size() - at; }
    bool get(std::uint64_t& v, std::size_t bytes) noexcept {
      if (left() < bytes)
        return false;
      v = 0;
      for (std::size_t i = 0; i < bytes; ++i)
        v |= static_cast<std::uint64_t>(in[at + i]) << (8 * i);
      at += bytes;
      return true;
    }
  };
};

} // namespace ferry::verbs
