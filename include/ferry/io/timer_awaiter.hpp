#pragma once
/// The awaitable of `io_context::sleep_for` / `sleep_until`: `result<void>`, errc::cancelled when the
/// stop_token fires first. A cancelled timer is removed from the loop at once and never fires later.
///
///   if (auto r = co_await ctx.sleep_for(5ms, token); !r) /* cancelled */;

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/io_context.hpp"

#include <cerrno>
#include <coroutine>
#include <optional>
#include <stop_token>

namespace ferry::io {

class [[nodiscard]] io_context::timer_awaiter {
public:
  timer_awaiter(io_context& ctx, clock::time_point deadline, std::stop_token stop) noexcept
      : ctx_(ctx), stop_(std::move(stop)) {
    op_.deadline_ = deadline;
  }
  /// Movable until it is awaited.
  timer_awaiter(timer_awaiter&& o) noexcept : ctx_(o.ctx_), stop_(std::move(o.stop_)), op_(o.op_) {}
  timer_awaiter& operator=(timer_awaiter&&) = delete;

  bool await_ready() const noexcept { return stop_.stop_requested(); }
  void await_suspend(std::coroutine_handle<> h) {
    op_.handle_ = h;
    op_.complete_ = &on_complete;
    if (stop_.stop_possible()) {
      std::uint64_t id = ctx_.arm_cancel(&op_, true);
      callback_.emplace(stop_, detail::cancel_on_stop{&ctx_, id});
    }
    ctx_.start_timer(&op_);
  }
  result<void> await_resume() noexcept {
    callback_.reset();
    if (stop_.stop_requested() && op_.complete_ == nullptr)
      return fail(errc::cancelled, "sleep");
    if (op_.result_ == -ECANCELED)
      return fail(errc::cancelled, "sleep");
    return {};
  }

private:
  struct op : detail::timer_op {
    std::coroutine_handle<> handle_;
  };
  static void on_complete(detail::op_base* o) noexcept { static_cast<op*>(o)->handle_.resume(); }

  io_context& ctx_;
  std::stop_token stop_;
  op op_;
  std::optional<std::stop_callback<detail::cancel_on_stop>> callback_;
};

inline io_context::timer_awaiter io_context::sleep_for(clock::duration d, std::stop_token stop) noexcept {
  return timer_awaiter(*this, ferry::detail::time_after<clock>(clock::now(), d), std::move(stop));
}
template<class Rep, class Period>
requires(!std::is_same_v<std::chrono::duration<Rep, Period>, std::chrono::steady_clock::duration>)
    io_context::timer_awaiter io_context::sleep_for(std::chrono::duration<Rep, Period> d,
                                                    std::stop_token stop)
noexcept {
  return timer_awaiter(*this, ferry::detail::time_after<clock>(clock::now(), d), std::move(stop));
}

inline io_context::timer_awaiter io_context::sleep_until(clock::time_point t, std::stop_token stop) noexcept {
  return timer_awaiter(*this, t, std::move(stop));
}

} // namespace ferry::io
