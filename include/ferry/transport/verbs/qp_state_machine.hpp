#pragma once
/// `ferry::verbs::qp_state_machine`: brings a reliable-connected queue pair from RESET through INIT and RTR
/// (ready to receive) to RTS (ready to send), and to ERROR or back to RESET when it is torn down. Each step
/// is a `qp_transition` — the target state and the exact `ibv_qp_attr` + attribute mask that ibv_modify_qp
/// gets — built by a pure function from `qp_params` (this side's port and the peer's handshake), so the
/// sequence can be checked without hardware; a modifier applies it (ibv_modify_qp on hardware, a recorder in
/// tests).
///
///   ferry::verbs::qp_state_machine sm;
///   auto r = sm.connect(params, [&](const qp_transition& t) { return ibv_modify_qp(qp, &t.attr, t.mask); });

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <array>
#include <cstdint>
#include <infiniband/verbs.h>
#include <string_view>

namespace ferry::verbs {

enum class qp_state : std::uint8_t { reset, init, rtr, rts, error };

constexpr std::string_view to_string(qp_state s) noexcept {
  switch (s) {
  case qp_state::reset:
    return "RESET";
  case qp_state::init:
    return "INIT";
  case qp_state::rtr:
    return "RTR";
  case qp_state::rts:
    return "RTS";
  case qp_state::error:
    return "ERROR";
  }
  return "?";
}

/// Everything the transitions need: this side's port and the peer's queue pair as its handshake told.
struct qp_params {
  std::uint8_t port = 1;
  std::uint16_t pkey_index = 0;
  int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
  ::ibv_mtu mtu = IBV_MTU_4096; ///< the smaller of both ports' active MTUs
  std::uint32_t remote_qpn = 0;
  std::uint32_t remote_psn = 0; ///< the peer's first send PSN: what this side expects to receive
  std::uint32_t local_psn = 0;  ///< this side's first send PSN
  bool roce = false;            ///< Ethernet link layer: address by GID (global route), not LID
  std::uint16_t remote_lid = 0;
  std::array<std::uint8_t, 16> remote_gid{};
  std::uint8_t gid_index = 0; ///< this side's source GID index
  std::uint8_t service_level = 0;
  std::uint8_t traffic_class = 0;
  std::uint8_t hop_limit = 64;
  std::uint8_t max_rd_atomic = 16; ///< outstanding RDMA READs this side issues (and accepts from the peer)
  std::uint8_t min_rnr_timer = 12;
  std::uint8_t timeout = 14; ///< local ACK timeout: 4.096 us * 2^14 = 67 ms
  std::uint8_t retry_count = 7;
  std::uint8_t rnr_retry = 7; ///< 7: retry forever on receiver-not-ready
};

/// One call to ibv_modify_qp.
struct qp_transition {
  qp_state from = qp_state::reset;
  qp_state to = qp_state::reset;
  ::ibv_qp_attr attr{};
  int mask = 0;
};

/// Whether ibv_modify_qp may move a queue pair from `from` to `to` (the subset of the IB spec's table ferry
/// uses; any state may go to ERROR or RESET).
constexpr bool transition_allowed(qp_state from, qp_state to) noexcept {
  if (to == qp_state::error || to == qp_state::reset)
    return true;
  return (from == qp_state::reset && to == qp_state::init) ||
         (from == qp_state::init && to == qp_state::rtr) || (from == qp_state::rtr && to == qp_state::rts);
}

constexpr ::ibv_qp_state to_ibv(qp_state s) noexcept {
  switch (s) {
  case qp_state::reset:
    return IBV_QPS_RESET;
  case qp_state::init:
    return IBV_QPS_INIT;
  case qp_state::rtr:
    return IBV_QPS_RTR;
  case qp_state::rts:
    return IBV_QPS_RTS;
  case qp_state::error:
    return IBV_QPS_ERR;
  }
  return IBV_QPS_ERR;
}

inline qp_transition build_init(const qp_params& p) {
  qp_transition t{qp_state::reset, qp_state::init, {}, 0};
  t.attr.qp_state = IBV_QPS_INIT;
  t.attr.port_num = p.port;
  t.attr.pkey_index = p.pkey_index;
  t.attr.qp_access_flags = static_cast<unsigned>(p.access);
  t.mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
  return t;
}

inline qp_transition build_rtr(const qp_params& p) {
  qp_transition t{qp_state::init, qp_state::rtr, {}, 0};
  t.attr.qp_state = IBV_QPS_RTR;
  t.attr.path_mtu = p.mtu;
  t.attr.dest_qp_num = p.remote_qpn;
  t.attr.rq_psn = p.remote_psn & 0xffffff;
  t.attr.max_dest_rd_atomic = p.max_rd_atomic;
  t.attr.min_rnr_timer = p.min_rnr_timer;
  t.attr.ah_attr.port_num = p.port;
  t.attr.ah_attr.sl = p.service_level;
  if (p.roce) {
    // why: RoCE has no LIDs; every packet carries a GRH addressed by GID
    t.attr.ah_attr.is_global = 1;
    for (std::size_t i = 0; i < 16; ++i)
      t.attr.ah_attr.grh.dgid.raw[i] = p.remote_gid[i];
    t.attr.ah_attr.grh.sgid_index = p.gid_index;
    t.attr.ah_attr.grh.hop_limit = p.hop_limit;
    t.attr.ah_attr.grh.traffic_class = p.traffic_class;
  } else {
    t.attr.ah_attr.dlid = p.remote_lid;
  }
  t.mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
           IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
  return t;
}

inline qp_transition build_rts(const qp_params& p) {
  qp_transition t{qp_state::rtr, qp_state::rts, {}, 0};
  t.attr.qp_state = IBV_QPS_RTS;
  t.attr.sq_psn = p.local_psn & 0xffffff;
  t.attr.timeout = p.timeout;
  t.attr.retry_cnt = p.retry_count;
  t.attr.rnr_retry = p.rnr_retry;
  t.attr.max_rd_atomic = p.max_rd_atomic;
  t.mask = IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
           IBV_QP_MAX_QP_RD_ATOMIC;
  return t;
}

/// To ERROR (flushes outstanding work requests, each completing with IBV_WC_WR_FLUSH_ERR) or RESET.
inline qp_transition build_teardown(qp_state from, qp_state to) {
  qp_transition t{from, to, {}, IBV_QP_STATE};
  t.attr.qp_state = to_ibv(to);
  return t;
}

/// Tracks one queue pair's state and drives it through transitions, refusing those the state does not allow.
class qp_state_machine {
public:
  qp_state state() const noexcept { return state_; }

  /// Applies `t` through `modify` (returns 0 or an errno, as ibv_modify_qp does).
  template<class Modify>
  result<void> apply(const qp_transition& t, Modify&& modify) {
    if (t.from != state_ || !transition_allowed(t.from, t.to))
      return fail(errc::invalid_state, "verbs: queue pair transition not allowed from its current state");
    if (int r = modify(t); r != 0) {
      // why: a failed ibv_modify_qp leaves the queue pair in its previous state
      switch (t.to) {
      case qp_state::init:
        return fail_errno(-r, "ibv_modify_qp to INIT");
      case qp_state::rtr:
        return fail_errno(-r, "ibv_modify_qp to RTR");
      case qp_state::rts:
        return fail_errno(-r, "ibv_modify_qp to RTS");
      default:
        return fail_errno(-r, "ibv_modify_qp to ERROR/RESET");
      }
    }
    state_ = t.to;
    return {};
  }

  /// RESET -> INIT -> RTR -> RTS; stops at the first step that fails.
  template<class Modify>
  result<void> connect(const qp_params& p, Modify&& modify) {
    for (auto build : {&build_init, &build_rtr, &build_rts}) {
      auto r = apply(build(p), modify);
      if (!r)
        return r;
    }
    return {};
  }

  /// Moves to ERROR so outstanding work flushes (from any state but RESET, where nothing is outstanding).
  template<class Modify>
  result<void> fail_over(Modify&& modify) {
    if (state_ == qp_state::reset || state_ == qp_state::error)
      return {};
    return apply(build_teardown(state_, qp_state::error), modify);
  }

  /// Back to RESET (from any state), ready to connect again.
  template<class Modify>
  result<void> reset(Modify&& modify) {
    if (state_ == qp_state::reset)
      return {};
    return apply(build_teardown(state_, qp_state::reset), modify);
  }

private:
  qp_state state_ = qp_state::reset;
};

} // namespace ferry::verbs
