#pragma once
// The state of one batch in flight: its slices, per-request outcomes, and the awaiting coroutine. Lives in
// the transfer coroutine's frame; everything here runs on the engine's io_context thread.

#include "ferry/core/error.hpp"
#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/transfer/transfer_batch.hpp"
#include "ferry/transport/slice.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <system_error>
#include <vector>

namespace ferry::detail {

/// Whether a failed slice may succeed on another path (connection problems), as opposed to a refusal by the
/// target (bounds, permissions, unknown segment) that would fail the same way again.
inline bool retryable(const error& e) noexcept {
  const auto& code = e.code();
  if (code.category() == ferry_category()) {
    switch (static_cast<errc>(code.value())) {
    case errc::closed:
    case errc::peer_unreachable:
    case errc::short_transfer:
    case errc::timed_out:
    case errc::malformed_frame: // a garbled stream: the connection is dropped, try a fresh one
    case errc::busy: // in use for now: a target at its most connections refused this connection (another of
                     // ours to it may be served), or a region or file was busy
      return true;
    default:
      return false;
    }
  }
  return code.category() == std::system_category() && code.value() != EINVAL && code.value() != EFAULT;
}

class batch_state {
public:
  /// Resubmits a failed slice on another path; false if it cannot (the slice is then failed). A slice failed
  /// with errc::peer_unreachable goes to a transport after the one that failed it, never the same again:
  /// those hand-overs do not count against the retry budget, and end once the transports run out.
  using retry_fn = bool (*)(void* engine, slice* s, const error& why) noexcept;

  /// The most retries a slice gets, whatever engine_options::retry_budget says.
  static constexpr unsigned max_retry_budget = std::numeric_limits<decltype(slice::attempt)>::max();

  batch_state(io::io_context& ctx, std::size_t requests, unsigned retry_budget, void* engine, retry_fn retry)
      // why: a slice counts its tries in 16 bits; a larger budget would wrap that count and never run out
      : ctx_(ctx), requests_(requests), retry_budget_(std::min(retry_budget, max_retry_budget)),
        engine_(engine), retry_(retry) {
    wake_.self_ = this;
    wake_.complete_ = &on_wake;
  }
  batch_state(const batch_state&) = delete;
  batch_state& operator=(const batch_state&) = delete;

  std::vector<slice> slices;

  /// Fails request `index` before any of its slices is submitted.
  void reject(std::size_t index, error e) {
    if (!requests_[index].err)
      requests_[index].err = e;
  }
  bool rejected(std::size_t index) const noexcept { return static_cast<bool>(requests_[index].err); }

  /// Call once the slices vector is final, before submitting any.
  void begin() noexcept { left_ = slices.size(); }

  void settle(slice* s, error e) noexcept {
    if (e) {
      // why: a transport that cannot reach the peer at all hands the slice to the next one that can (the
      // engine's retry function); that is no second try of a path, and it ends once the transports run out,
      // so it leaves the budget alone: with none, a same-host peer whose shared memory turns out unusable is
      // still reached over tcp
      const bool hand_over = e == errc::peer_unreachable;
      if (!aborted_ && retryable(e) && (hand_over || s->attempt < retry_budget_)) {
        if (!hand_over)
          ++s->attempt;
        if (retry_(engine_, s, e))
          return;
      }
      auto& r = requests_[s->request];
      if (!r.err)
        r.err = aborted_ ? abort_reason_ : e;
    } else {
      requests_[s->request].bytes += s->length;
    }
    if (--left_ == 0 && waiter_)
      ctx_.post(&wake_);
  }

  /// Marks the batch as aborted: no more retries, and slices that fail from now on report `reason`.
  void abort(error reason) noexcept {
    if (aborted_.load(std::memory_order_relaxed))
      return;
    abort_reason_ = reason;
    aborted_.store(true, std::memory_order_release);
  }
  /// True once abort() was called (from any thread: transports that run connections on loops of their own
  /// look at it there).
  bool aborted() const noexcept { return aborted_.load(std::memory_order_acquire); }
  bool done() const noexcept { return left_ == 0; }

  /// Where the engine says how to tell, on the loop's thread, whether the batch is past its deadline or
  /// cancelled by its caller before the loop has turned to notice (the check aborts it then).
  using overdue_fn = bool (*)(void* arg) noexcept;
  void watch_overdue(overdue_fn check, void* arg) noexcept {
    overdue_ = check;
    overdue_arg_ = arg;
  }
  /// On the loop's thread: aborted, or found now past its deadline or cancelled (and aborted). For a
  /// transport that works on the loop's thread itself (copies there): the loop's timers do not run while it
  /// does, so the batch's deadline would not be noticed until its work was all done.
  bool overdue() noexcept { return aborted() || (overdue_ && overdue_(overdue_arg_)); }

  /// Resumes the awaiting coroutine once every slice has settled.
  auto wait() noexcept {
    struct awaiter {
      batch_state& b;
      bool await_ready() const noexcept { return b.left_ == 0; }
      void await_suspend(std::coroutine_handle<> h) noexcept { b.waiter_ = h; }
      void await_resume() const noexcept {}
    };
    return awaiter{*this};
  }

  batch_result take_result() const {
    batch_result out;
    out.requests.reserve(requests_.size());
    for (auto& r : requests_) {
      if (r.err)
        out.requests.emplace_back(fail(r.err));
      else
        out.requests.emplace_back(r.bytes);
    }
    return out;
  }

private:
  struct request_state {
    std::uint64_t bytes = 0;
    error err;
  };
  struct wake_op : io::detail::op_base {
    batch_state* self_;
  };
  static void on_wake(io::detail::op_base* op) noexcept {
    static_cast<wake_op*>(op)->self_->waiter_.resume();
  }

  io::io_context& ctx_;
  std::vector<request_state> requests_;
  unsigned retry_budget_;
  void* engine_;
  retry_fn retry_;
  std::size_t left_ = 0;
  std::coroutine_handle<> waiter_;
  wake_op wake_;
  std::atomic<bool> aborted_{false};
  overdue_fn overdue_ = nullptr;
  void* overdue_arg_ = nullptr;
  error abort_reason_;
};

} // namespace ferry::detail

namespace ferry {
inline void slice::settle(error e) noexcept {
  batch->settle(this, e);
}
} // namespace ferry
