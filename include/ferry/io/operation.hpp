#pragma once
/// `ferry::io::operation<T>`: the awaitable behind every ferry socket and file call. It describes one system
/// call (recv, send, read at an offset ...), starts it on an io_context when awaited, and yields `result<T>`:
/// the value (bytes moved, a descriptor) or the kernel's error with the name of the call that failed.
/// It works from any coroutine type; cancellation comes from the stop_token given to the call.
///
///   ferry::result<std::size_t> n = co_await sock.recv(buffer, token);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/io_context.hpp"

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <optional>
#include <stop_token>

namespace ferry::io {

template<class T>
class [[nodiscard]] operation {
public:
  /// `what` names the call in error messages and must be a string literal.
  operation(io_context& ctx, const detail::io_op& description, const char* what,
            std::stop_token stop = {}) noexcept
      : ctx_(ctx), what_(what), stop_(std::move(stop)) {
    static_cast<detail::io_op&>(op_) = description;
  }
  /// An operation that yields `e` when awaited, without reaching the kernel (arguments rejected up front).
  static operation failed(io_context& ctx, errc e, const char* what) noexcept {
    return operation(ctx, e, what);
  }
  /// Movable until it is awaited (it registers itself with the context only when awaited).
  operation(operation&& o) noexcept
      : ctx_(o.ctx_), what_(o.what_), stop_(std::move(o.stop_)), preset_(o.preset_), op_(o.op_) {}
  operation& operator=(operation&&) = delete;

  bool await_ready() noexcept {
    if (preset_ != errc{})
      return true;
    if (!stop_.stop_requested())
      return false;
    op_.result_ = -ECANCELED;
    return true;
  }
  bool await_suspend(std::coroutine_handle<> h) {
    op_.handle_ = h;
    op_.complete_ = &on_complete;
    if (stop_.stop_possible()) {
      std::uint64_t id = ctx_.arm_cancel(&op_, false);
      callback_.emplace(stop_, detail::cancel_on_stop{&ctx_, id});
    }
    if (!ctx_.start(&op_))
      return true;
    ctx_.finish_inline(&op_);
    return false;
  }
  result<T> await_resume() noexcept {
    callback_.reset();
    if (preset_ != errc{})
      return fail(preset_, what_);
    int r = op_.result_;
    if (r == -ECANCELED)
      return fail(errc::cancelled, what_);
    if (r < 0)
      return fail_errno(r, what_);
    if constexpr (std::is_void_v<T>)
      return {};
    else
      return static_cast<T>(r);
  }

private:
  operation(io_context& ctx, errc preset, const char* what) noexcept
      : ctx_(ctx), what_(what), preset_(preset) {}

protected:
  /// For derived awaitables that own the msghdr a recvmsg/sendmsg points to.
  void set_message(::msghdr* msg) noexcept { op_.msg_ = msg; }

private:
  struct op : detail::io_op {
    std::coroutine_handle<> handle_;
  };
  static void on_complete(detail::op_base* o) noexcept { static_cast<op*>(o)->handle_.resume(); }

  io_context& ctx_;
  const char* what_;
  std::stop_token stop_;
  errc preset_{};
  op op_;
  std::optional<std::stop_callback<detail::cancel_on_stop>> callback_;
};

} // namespace ferry::io
