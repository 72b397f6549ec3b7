#pragma once
// Turns a stop request — from any thread, or synchronously at registration — into one call on the
// io_context's thread. `co_await relay.retire()` unregisters and, if a call was posted, waits until it has
// run, so the relay (and whatever its callback touches) can be destroyed safely afterwards.

#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/io_context.hpp"

#include <atomic>
#include <coroutine>
#include <optional>
#include <stop_token>

namespace ferry::detail {

class stop_relay {
public:
  using callback_fn = void (*)(void* arg) noexcept;

  stop_relay(io::io_context& io, callback_fn fn, void* arg) noexcept : io_(io), fn_(fn), arg_(arg) {
    op_.self_ = this;
    op_.complete_ = &run;
  }
  stop_relay(const stop_relay&) = delete;
  stop_relay& operator=(const stop_relay&) = delete;

  /// Starts watching `token` (once).
  void watch(std::stop_token token) {
    if (token.stop_possible())
      callback_.emplace(std::move(token), poster{this});
  }

  /// Stops watching; completes once a posted call (if any) has run.
  auto retire() noexcept {
    callback_.reset(); // waits for a callback running on another thread
    struct awaiter {
      stop_relay& r;
      bool await_ready() const noexcept { return !r.posted_.load(std::memory_order_acquire) || r.ran_; }
      void await_suspend(std::coroutine_handle<> h) noexcept { r.waiter_ = h; }
      void await_resume() const noexcept {}
    };
    return awaiter{*this};
  }

private:
  struct poster {
    stop_relay* r;
    void operator()() const noexcept {
      if (!r->posted_.exchange(true, std::memory_order_acq_rel))
        r->io_.post(&r->op_);
    }
  };
  struct relay_op : io::detail::op_base {
    stop_relay* self_;
  };
  static void run(io::detail::op_base* op) noexcept {
    auto* self = static_cast<relay_op*>(op)->self_;
    self->fn_(self->arg_);
    self->ran_ = true;
    if (self->waiter_)
      self->waiter_.resume();
  }

  io::io_context& io_;
  callback_fn fn_;
  void* arg_;
  relay_op op_;
  std::atomic<bool> posted_{false};
  bool ran_ = false;
  std::coroutine_handle<> waiter_;
  std::optional<std::stop_callback<poster>> callback_;
};

} // namespace ferry::detail
