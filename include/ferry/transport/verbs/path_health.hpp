#pragma once
/// `ferry::verbs::path_health<Clock>`: which paths (a NIC, or a NIC towards one peer) are fit to carry
/// slices. A path whose completions keep failing is paused after `pause_after` faults in a row and
/// re-admitted after a cooldown; one that fails again soon after re-admission is paused for twice as long (up
/// to `max_cooldown`), so a broken link is not hammered with reconnects. `classify` says what a completion
/// status means for the slice: done, retry on another path, or fail (the peer refused it: another path would
/// fail the same way).
///
///   ferry::verbs::path_health<> health(nics, {}, clock);
///   if (classify(wc.status) == completion_verdict::retry_elsewhere) health.on_failure(path);

#include "ferry/core/error.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <infiniband/verbs.h>
#include <vector>

namespace ferry::verbs {

enum class completion_verdict : std::uint8_t {
  done,            ///< the request completed
  retry_elsewhere, ///< the path failed (link, queue pair, peer NIC): another path may succeed
  fail,            ///< the peer or the request itself is at fault: fail without retrying
};

constexpr completion_verdict classify(::ibv_wc_status s) noexcept {
  switch (s) {
  case IBV_WC_SUCCESS:
    return completion_verdict::done;
  case IBV_WC_LOC_LEN_ERR:
  case IBV_WC_LOC_PROT_ERR:
  case IBV_WC_MW_BIND_ERR:
  case IBV_WC_REM_INV_REQ_ERR:
  case IBV_WC_REM_ACCESS_ERR:
  case IBV_WC_REM_OP_ERR:
    return completion_verdict::fail;
  default:
    return completion_verdict::retry_elsewhere;
  }
}

/// Whether a failed completion counts against its path. Flushed requests (IBV_WC_WR_FLUSH_ERR) are only the
/// echo of an earlier error on the same queue pair and do not count again.
constexpr bool is_path_fault(::ibv_wc_status s) noexcept {
  return classify(s) == completion_verdict::retry_elsewhere && s != IBV_WC_WR_FLUSH_ERR;
}

/// The error a slice settles with for a failed completion (the engine retries the retryable ones).
inline error completion_error(::ibv_wc_status s) noexcept {
  switch (s) {
  // why: the engine checks bounds and permissions against the descriptor before it sends; a refusal then
  // means the key no longer reaches the range (the owner unregistered or shrank the region): a stale
  // descriptor, which the engine fetches again and retries with, as for the owner's own out_of_bounds
  case IBV_WC_REM_ACCESS_ERR:
    return error(errc::out_of_bounds,
                 "verbs: the peer's NIC refused the access: its key no longer reaches the range (the region "
                 "was unregistered or shrank)");
  case IBV_WC_LOC_PROT_ERR:
  case IBV_WC_LOC_LEN_ERR:
    return error(errc::out_of_bounds, "verbs: local buffer outside its registration");
  case IBV_WC_REM_INV_REQ_ERR:
  case IBV_WC_REM_OP_ERR:
  case IBV_WC_MW_BIND_ERR:
    return error(errc::invalid_argument, "verbs: the peer rejected the request");
  case IBV_WC_WR_FLUSH_ERR:
    return error(errc::closed, "verbs: flushed after an error on the queue pair");
  case IBV_WC_RETRY_EXC_ERR:
    return error(errc::closed, "verbs: transport retries exceeded (link or peer down)");
  case IBV_WC_RNR_RETRY_EXC_ERR:
    return error(errc::closed, "verbs: receiver-not-ready retries exceeded");
  default:
    return error(errc::closed, "verbs: the queue pair failed");
  }
}

struct health_options {
  unsigned pause_after = 3; ///< consecutive faults that pause a path
  std::chrono::milliseconds cooldown{1000};
  std::chrono::milliseconds max_cooldown{30000};
};

template<class Clock = std::chrono::steady_clock>
class path_health {
  struct state {
    unsigned faults = 0; // in a row
    unsigned pauses = 0; // in a row without a success between them
    typename Clock::time_point paused_until{};
    bool paused = false;
  };

public:
  path_health(std::size_t paths, health_options options, Clock& clock)
      : options_(options), clock_(&clock), paths_(paths) {
    options_.pause_after = std::max(options_.pause_after, 1u);
  }

  std::size_t size() const noexcept { return paths_.size(); }

  /// A request on `path` completed: its fault count starts again.
  void on_success(std::size_t path) noexcept {
    auto& p = paths_[path];
    p.faults = 0;
    p.pauses = 0;
  }

  /// A request on `path` failed through the path; true when this pauses it.
  bool on_failure(std::size_t path) noexcept {
    auto& p = paths_[path];
    if (p.paused && clock_->now() < p.paused_until)
      return false; // already paused: late completions of its queue do not extend the pause
    p.paused = false;
    if (++p.faults < options_.pause_after && p.pauses == 0)
      return false;
    // why: a path re-admitted after a cooldown gets one chance; failing again pauses it for twice as long
    auto cool = options_.cooldown * (1u << std::min(p.pauses, 16u));
    if (cool > options_.max_cooldown)
      cool = options_.max_cooldown;
    p.paused = true;
    p.paused_until = clock_->now() + cool;
    ++p.pauses;
    p.faults = 0;
    return true;
  }

  /// Pauses `path` at once (a fatal async event on its NIC, a port that went down).
  void pause(std::size_t path) noexcept {
    auto& p = paths_[path];
    p.faults = options_.pause_after;
    p.paused = false;
    on_failure(path);
  }

  /// Whether `path` may carry new slices now (not paused, or its cooldown has passed).
  bool usable(std::size_t path) const noexcept {
    auto& p = paths_[path];
    return !p.paused || clock_->now() >= p.paused_until;
  }

  bool any_usable() const noexcept {
    for (std::size_t i = 0; i < paths_.size(); ++i)
      if (usable(i))
        return true;
    return false;
  }

  /// When a paused path is re-admitted (its time point is meaningless if it is not paused).
  typename Clock::time_point paused_until(std::size_t path) const noexcept {
    return paths_[path].paused_until;
  }

private:
  health_options options_;
  Clock* clock_;
  std::vector<state> paths_;
};

} // namespace ferry::verbs
