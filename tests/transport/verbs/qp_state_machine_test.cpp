#include "ferry/transport/verbs/qp_state_machine.hpp"

#include <doctest/doctest.h>

#include <vector>

using namespace ferry::verbs;

namespace {
qp_params roce_params() {
  qp_params p;
  p.port = 1;
  p.mtu = IBV_MTU_1024;
  p.remote_qpn = 0x1234;
  p.remote_psn = 0xabcdef;
  p.local_psn = 0x123456;
  p.roce = true;
  p.remote_gid = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 9};
  p.gid_index = 3;
  return p;
}
} // namespace

TEST_SUITE("verbs qp_state_machine") {
  TEST_CASE("connect drives RESET, INIT, RTR, RTS in order with the expected attributes") {
    std::vector<qp_transition> seen;
    qp_state_machine sm;
    auto p = roce_params();
    auto r = sm.connect(p, [&](const qp_transition& t) {
      seen.push_back(t);
      return 0;
    });
    REQUIRE(r);
    CHECK(sm.state() == qp_state::rts);
    REQUIRE(seen.size() == 3);

    CHECK(seen[0].to == qp_state::init);
    CHECK(seen[0].attr.qp_state == IBV_QPS_INIT);
    CHECK(seen[0].attr.port_num == 1);
    CHECK((seen[0].attr.qp_access_flags & IBV_ACCESS_REMOTE_WRITE) != 0);
    CHECK(seen[0].mask == (IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS));

    auto& rtr = seen[1];
    CHECK(rtr.to == qp_state::rtr);
    CHECK(rtr.attr.qp_state == IBV_QPS_RTR);
    CHECK(rtr.attr.dest_qp_num == 0x1234);
    CHECK(rtr.attr.rq_psn == 0xabcdef);
    CHECK(rtr.attr.path_mtu == IBV_MTU_1024);
    CHECK(rtr.attr.ah_attr.is_global == 1);
    CHECK(rtr.attr.ah_attr.grh.sgid_index == 3);
    CHECK(rtr.attr.ah_attr.grh.dgid.raw[15] == 9);
    CHECK((rtr.mask & IBV_QP_AV) != 0);
    CHECK((rtr.mask & IBV_QP_DEST_QPN) != 0);
    CHECK((rtr.mask & IBV_QP_MAX_DEST_RD_ATOMIC) != 0);
    CHECK((rtr.mask & IBV_QP_SQ_PSN) == 0); // belongs to RTS

    auto& rts = seen[2];
    CHECK(rts.to == qp_state::rts);
    CHECK(rts.attr.sq_psn == 0x123456);
    CHECK(rts.attr.retry_cnt == 7);
    CHECK(rts.attr.timeout == 14);
    CHECK(rts.mask == (IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                       IBV_QP_MAX_QP_RD_ATOMIC));
  }

  TEST_CASE("infiniband addresses the peer by LID, without a global route") {
    auto p = roce_params();
    p.roce = false;
    p.remote_lid = 17;
    auto t = build_rtr(p);
    CHECK(t.attr.ah_attr.is_global == 0);
    CHECK(t.attr.ah_attr.dlid == 17);
  }

  TEST_CASE("PSNs are cut to 24 bits") {
    auto p = roce_params();
    p.remote_psn = 0xff123456;
    p.local_psn = 0xee654321;
    CHECK(build_rtr(p).attr.rq_psn == 0x123456);
    CHECK(build_rts(p).attr.sq_psn == 0x654321);
  }

  TEST_CASE("a failed step stops the sequence and names the step") {
    std::vector<qp_state> seen;
    qp_state_machine sm;
    auto r = sm.connect(roce_params(), [&](const qp_transition& t) {
      seen.push_back(t.to);
      return t.to == qp_state::rtr ? EINVAL : 0;
    });
    REQUIRE_FALSE(r);
    CHECK(sm.state() == qp_state::init);
    CHECK(seen == std::vector<qp_state>{qp_state::init, qp_state::rtr});
    CHECK(r.error().message().find("RTR") != std::string::npos);
  }

  TEST_CASE("transitions out of order are refused without reaching the device") {
    qp_state_machine sm;
    int calls = 0;
    auto modify = [&](const qp_transition&) {
      ++calls;
      return 0;
    };
    auto r = sm.apply(build_rts(roce_params()), modify);
    REQUIRE_FALSE(r);
    CHECK(r.error() == ferry::errc::invalid_state);
    CHECK(calls == 0);
    CHECK(transition_allowed(qp_state::reset, qp_state::init));
    CHECK_FALSE(transition_allowed(qp_state::rts, qp_state::init));
    CHECK_FALSE(transition_allowed(qp_state::reset, qp_state::rtr));
    CHECK(transition_allowed(qp_state::rts, qp_state::error));
  }

  TEST_CASE("teardown goes to ERROR to flush and back to RESET to reconnect") {
    qp_state_machine sm;
    std::vector<qp_transition> seen;
    auto modify = [&](const qp_transition& t) {
      seen.push_back(t);
      return 0;
    };
    REQUIRE(sm.connect(roce_params(), modify));
    REQUIRE(sm.fail_over(modify));
    CHECK(sm.state() == qp_state::error);
    CHECK(seen.back().attr.qp_state == IBV_QPS_ERR);
    CHECK(seen.back().mask == IBV_QP_STATE);
    REQUIRE(sm.fail_over(modify)); // idempotent
    CHECK(seen.size() == 4);
    REQUIRE(sm.reset(modify));
    CHECK(sm.state() == qp_state::reset);
    REQUIRE(sm.connect(roce_params(), modify));
    CHECK(sm.state() == qp_state::rts);
  }
}
