#include "ferry/transport/verbs/path_health.hpp"

#include "ferry/store/manual_clock.hpp"
#include "ferry/transfer/detail/batch_state.hpp"
#include "ferry/transport/verbs/nic_selector.hpp"

#include <doctest/doctest.h>

#include <vector>

using namespace ferry::verbs;
using namespace std::chrono_literals;
using ferry::store::manual_clock;

TEST_SUITE("verbs path_health") {
  TEST_CASE("completion statuses: done, retry on another path, or fail") {
    CHECK(classify(IBV_WC_SUCCESS) == completion_verdict::done);
    CHECK(classify(IBV_WC_RETRY_EXC_ERR) == completion_verdict::retry_elsewhere);
    CHECK(classify(IBV_WC_RNR_RETRY_EXC_ERR) == completion_verdict::retry_elsewhere);
    CHECK(classify(IBV_WC_WR_FLUSH_ERR) == completion_verdict::retry_elsewhere);
    CHECK(classify(IBV_WC_FATAL_ERR) == completion_verdict::retry_elsewhere);
    CHECK(classify(IBV_WC_REM_ACCESS_ERR) == completion_verdict::fail);
    CHECK(classify(IBV_WC_LOC_PROT_ERR) == completion_verdict::fail);
    CHECK(is_path_fault(IBV_WC_RETRY_EXC_ERR));
    CHECK_FALSE(is_path_fault(IBV_WC_WR_FLUSH_ERR));
    CHECK_FALSE(is_path_fault(IBV_WC_REM_ACCESS_ERR));
  }

  TEST_CASE("the engine retries a failed completion exactly when another path may help") {
    for (auto s : {IBV_WC_RETRY_EXC_ERR, IBV_WC_RNR_RETRY_EXC_ERR, IBV_WC_WR_FLUSH_ERR, IBV_WC_FATAL_ERR,
                   IBV_WC_RESP_TIMEOUT_ERR, IBV_WC_GENERAL_ERR})
      CHECK(ferry::detail::retryable(completion_error(s)));
    for (auto s : {IBV_WC_REM_ACCESS_ERR, IBV_WC_LOC_PROT_ERR, IBV_WC_REM_INV_REQ_ERR, IBV_WC_LOC_LEN_ERR})
      CHECK_FALSE(ferry::detail::retryable(completion_error(s)));
    // a key that no longer reaches the range: a stale descriptor, fetched again by the engine
    CHECK(completion_error(IBV_WC_REM_ACCESS_ERR) == ferry::errc::out_of_bounds);
  }

  TEST_CASE("a path is paused after consecutive faults and re-admitted after the cooldown") {
    manual_clock clock;
    path_health<manual_clock> h(2, {.pause_after = 3, .cooldown = 1000ms, .max_cooldown = 8000ms}, clock);
    CHECK_FALSE(h.on_failure(0));
    CHECK_FALSE(h.on_failure(0));
    h.on_success(0); // a success in between starts the count again
    CHECK_FALSE(h.on_failure(0));
    CHECK_FALSE(h.on_failure(0));
    CHECK(h.usable(0));
    CHECK(h.on_failure(0));
    CHECK_FALSE(h.usable(0));
    CHECK(h.usable(1));
    CHECK_FALSE(h.on_failure(0)); // late completions of the paused path do not extend the pause
    clock.advance(999ms);
    CHECK_FALSE(h.usable(0));
    clock.advance(1ms);
    CHECK(h.usable(0));
  }

  TEST_CASE("a re-admitted path that fails again is paused for twice as long, up to the cap") {
    manual_clock clock;
    path_health<manual_clock> h(1, {.pause_after = 2, .cooldown = 1000ms, .max_cooldown = 3000ms}, clock);
    h.on_failure(0);
    CHECK(h.on_failure(0));
    auto t0 = clock.now();
    CHECK(h.paused_until(0) - t0 == 1000ms);
    clock.advance(1000ms);
    CHECK(h.usable(0));
    CHECK(h.on_failure(0)); // on probation: one fault pauses again
    CHECK(h.paused_until(0) - clock.now() == 2000ms);
    clock.advance(2000ms);
    CHECK(h.on_failure(0));
    CHECK(h.paused_until(0) - clock.now() == 3000ms); // capped
    clock.advance(3000ms);
    h.on_success(0); // recovered: the next pause starts from the base cooldown again
    h.on_failure(0);
    CHECK(h.on_failure(0));
    CHECK(h.paused_until(0) - clock.now() == 1000ms);
  }

  TEST_CASE("a fatal event pauses a path at once") {
    manual_clock clock;
    path_health<manual_clock> h(3, {}, clock);
    h.pause(1);
    CHECK_FALSE(h.usable(1));
    CHECK(h.any_usable());
    h.pause(0);
    h.pause(2);
    CHECK_FALSE(h.any_usable());
  }

  TEST_CASE("injected completion errors move slices off a failing NIC within the retry budget") {
    // Two NICs on the buffer's node; NIC 0's link is down (every completion on it fails with RETRY_EXC).
    manual_clock clock;
    path_health<manual_clock> health(2, {.pause_after = 2, .cooldown = 500ms}, clock);
    nic_selector sel({{"a", 0, -1, true}, {"b", 0, -1, true}});
    const unsigned retry_budget = 3;
    std::vector<int> delivered_on(2, 0);
    int failed = 0;
    for (std::uint64_t k = 0; k < 40; ++k) {
      std::optional<std::size_t> last;
      bool done = false;
      for (unsigned attempt = 0; attempt <= retry_budget && !done; ++attempt) {
        auto nic = sel.pick(
            {.numa_node = 0}, k, [&](std::size_t n) { return health.usable(n); }, last);
        REQUIRE(nic);
        ::ibv_wc_status status = *nic == 0 ? IBV_WC_RETRY_EXC_ERR : IBV_WC_SUCCESS;
        switch (classify(status)) {
        case completion_verdict::done:
          health.on_success(*nic);
          ++delivered_on[*nic];
          done = true;
          break;
        case completion_verdict::retry_elsewhere:
          if (is_path_fault(status))
            health.on_failure(*nic);
          last = nic;
          break;
        case completion_verdict::fail:
          attempt = retry_budget;
          break;
        }
      }
      if (!done)
        ++failed;
    }
    CHECK(failed == 0);
    CHECK(delivered_on[0] == 0);
    CHECK(delivered_on[1] == 40);
    CHECK_FALSE(health.usable(0)); // paused after its second fault
    clock.advance(500ms);
    CHECK(health.usable(0)); // re-admitted after the cooldown
  }
}
