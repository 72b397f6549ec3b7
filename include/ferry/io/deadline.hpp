#pragma once
/// `ferry::io::deadline`: a stop_token that fires at a point in time (and whenever an optional parent token
/// fires). Pass its token to any ferry operation to bound it; `expired()` tells a timeout from a
/// cancellation. Create and destroy it on the thread that drives the io_context.
///
///   ferry::io::deadline dl(ctx, 2s);
///   auto n = co_await sock.recv(buf, dl.token());
///   if (!n && dl.expired()) /* timed out */;

#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/io_context.hpp"

#include <chrono>
#include <optional>
#include <stop_token>

namespace ferry::io {

class deadline {
public:
  deadline(io_context& ctx, io_context::clock::duration after, std::stop_token parent = {})
      : deadline(ctx, io_context::clock::now() + after, std::move(parent)) {}
  deadline(io_context& ctx, io_context::clock::time_point at, std::stop_token parent = {}) : ctx_(ctx) {
    timer_.owner_ = this;
    timer_.deadline_ = at;
    timer_.complete_ = &on_fire;
    if (parent.stop_possible())
      parent_.emplace(std::move(parent), forward_stop{&source_});
    ctx_.start_timer(&timer_);
  }
  deadline(const deadline&) = delete;
  deadline& operator=(const deadline&) = delete;
  /// Withdraws the timer if it has not fired.
  ~deadline() {
    if (!fired_)
      ctx_.withdraw_timer(&timer_);
  }

  std::stop_token token() const noexcept { return source_.get_token(); }
  /// True once the point in time has passed (as opposed to a stop from the parent token).
  bool expired() const noexcept { return expired_; }

private:
  struct forward_stop {
    std::stop_source* source;
    void operator()() const noexcept { source->request_stop(); }
  };
  struct op : detail::timer_op {
    deadline* owner_;
  };
  static void on_fire(detail::op_base* o) noexcept {
    auto* self = static_cast<op*>(o)->owner_;
    self->fired_ = true;
    if (o->result_ != -ECANCELED) {
      self->expired_ = true;
      self->source_.request_stop();
    }
  }

  io_context& ctx_;
  std::stop_source source_;
  std::optional<std::stop_callback<forward_stop>> parent_;
  op timer_;
  bool fired_ = false;
  bool expired_ = false;
};

} // namespace ferry::io
