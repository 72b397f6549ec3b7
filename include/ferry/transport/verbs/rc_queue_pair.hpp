#pragma once
/// `ferry::verbs::rc_queue_pair`: one reliable-connected queue pair on a NIC, reporting to the NIC's
/// completion queue, with its first PSN drawn at random and its state driven by `qp_state_machine`. Only the
/// send queue is used (one-sided READ and WRITE); the receive queue is kept minimal.
///
///   auto qp = ferry::verbs::rc_queue_pair::create(nic, {.max_send_wr = 256});
///   qp->connect(params);   // RESET -> INIT -> RTR -> RTS
///   qp->post(chain.finish());

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/transport/verbs/nic_context.hpp"
#include "ferry/transport/verbs/qp_state_machine.hpp"
#include "ferry/transport/verbs/wr_chain.hpp"

#include <algorithm>
#include <cstdint>
#include <infiniband/verbs.h>
#include <memory>
#include <random>

namespace ferry::verbs {

struct qp_caps {
  std::uint32_t max_send_wr = 256;
  std::uint32_t max_send_sge = 4;
  std::uint32_t max_inline_data = 64;
  std::uint32_t signal_every = 16;
};

class rc_queue_pair {
public:
  rc_queue_pair(const rc_queue_pair&) = delete;
  rc_queue_pair& operator=(const rc_queue_pair&) = delete;
  ~rc_queue_pair() {
    if (qp_) {
      (void)machine_.fail_over(modifier());
      ::ibv_destroy_qp(qp_);
    }
  }

  static result<std::unique_ptr<rc_queue_pair>> create(nic_context& nic, qp_caps caps = {}) {
    ::ibv_qp_init_attr init{};
    init.send_cq = nic.cq();
    init.recv_cq = nic.cq();
    init.qp_type = IBV_QPT_RC;
    init.sq_sig_all = 0;
    init.cap.max_send_wr =
        std::min<std::uint32_t>(caps.max_send_wr, static_cast<std::uint32_t>(nic.max_qp_wr()));
    init.cap.max_send_sge =
        std::min<std::uint32_t>(caps.max_send_sge, static_cast<std::uint32_t>(nic.max_sge()));
    init.cap.max_recv_wr = 1;
    init.cap.max_recv_sge = 1;
    init.cap.max_inline_data = caps.max_inline_data;
    std::unique_ptr<rc_queue_pair> q(new rc_queue_pair);
    q->qp_ = ::ibv_create_qp(nic.pd(), &init);
    if (!q->qp_) {
      // why: some devices refuse inline data on RC queue pairs; try once without
      init.cap.max_inline_data = 0;
      q->qp_ = ::ibv_create_qp(nic.pd(), &init);
      if (!q->qp_)
        return fail_errno(-errno, "ibv_create_qp");
    }
    // ibv_create_qp writes back the capabilities it granted
    q->limits_.max_sge = init.cap.max_send_sge;
    q->limits_.max_inline = init.cap.max_inline_data;
    q->limits_.max_wr = init.cap.max_send_wr;
    q->limits_.signal_every =
        std::max<std::uint32_t>(1, std::min(caps.signal_every, init.cap.max_send_wr / 2));
    q->limits_.max_message = nic.max_message();
    std::random_device rd;
    q->psn_ = rd() & 0xffffff;
    return q;
  }

  std::uint32_t qpn() const noexcept { return qp_->qp_num; }
  std::uint32_t psn() const noexcept { return psn_; }
  qp_state state() const noexcept { return machine_.state(); }
  /// Limits for chains posted on this queue pair (from the capabilities the device granted).
  const chain_limits& limits() const noexcept { return limits_; }

  /// RESET -> INIT -> RTR -> RTS towards the peer described by `p` (its local_psn is taken from here).
  result<void> connect(qp_params p) {
    p.local_psn = psn_;
    return machine_.connect(p, modifier());
  }

  /// Posts a linked chain; on failure nothing from the failing request on was posted.
  result<void> post(::ibv_send_wr* head, ::ibv_send_wr** bad) noexcept {
    if (int r = ::ibv_post_send(qp_, head, bad); r != 0)
      return fail_errno(-r, "ibv_post_send");
    return {};
  }

  /// Moves to ERROR: every outstanding request completes with IBV_WC_WR_FLUSH_ERR.
  void flush() noexcept { (void)machine_.fail_over(modifier()); }

private:
  rc_queue_pair() = default;
  struct modify_qp {
    ::ibv_qp* qp;
    int operator()(const qp_transition& t) const noexcept {
      ::ibv_qp_attr attr = t.attr;
      return ::ibv_modify_qp(qp, &attr, t.mask);
    }
  };
  modify_qp modifier() noexcept { return {qp_}; }

  ::ibv_qp* qp_ = nullptr;
  qp_state_machine machine_;
  chain_limits limits_;
  std::uint32_t psn_ = 0;
};

} // namespace ferry::verbs
