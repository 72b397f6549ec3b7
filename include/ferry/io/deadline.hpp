#pragma once
/// `ferry::io::deadline`: a stop_token that fires at a point in time (and whenever an optional parent token
/// fires). Pass its token to any ferry operation to bound it; `expired()` tells a timeout from a
/// cancellation. Create and destroy it on the thread that drives the io_context.
///
///   ferry::io::deadline dl(ctx, 2s);
///   auto n = co_await sock.recv(buf, dl.token());
///   if (!n && dl.expired()) /* timed out */;
///
/// Given a progress count (`io::progress`), it fires only once a whole period went by without the count
/// changing: a slow transfer that keeps moving is not a stalled one.
///
///   ferry::io::deadline stall(ctx, 10s, ferry::io::progress{[&] { return sock.bytes_moved(); }});

#include "ferry/core/detail/time_after.hpp"
#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/io_context.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stop_token>

namespace ferry::io {

/// What a deadline asks, when its period is up, for a count of the work done so far (say, bytes moved).
struct progress {
  std::function<std::uint64_t()> count;
  /// A count that moved less than this over a whole period made no progress (a peer that trickles a byte
  /// now and then is as stalled as one that sends nothing).
  std::uint64_t at_least = 1;

  /// Whether a count read as `now` moved enough since `before` (nothing read yet: the benefit of the doubt;
  /// a count that went back, a new connection's, moved too).
  static bool moved(std::optional<std::uint64_t> before, std::uint64_t now, std::uint64_t at_least) noexcept {
    return !before || now < *before || now - *before >= std::max<std::uint64_t>(at_least, 1);
  }
};

class deadline {
public:
  /// `after` too long for the clock (`nanoseconds::max()`, say) is the clock's last time point: never.
  deadline(io_context& ctx, io_context::clock::duration after, std::stop_token parent = {})
      : deadline(ctx, ferry::detail::time_after<io_context::clock>(io_context::clock::now(), after),
                 std::move(parent)) {}
  deadline(io_context& ctx, io_context::clock::time_point at, std::stop_token parent = {}) : ctx_(ctx) {
    arm(at, std::move(parent));
  }
  /// Fires once `period` went by with `made.count()` moving less than `made.at_least`. The count is first
  /// read half a period after this starts (an operation that ends sooner never reads it) and then once a
  /// period: a stall is noticed one to two periods after the last progress, never before a whole one. Without
  /// a count, it fires after `period`.
  // why: reading the count may cost a system call (TCP_INFO); most operations bounded this way end long
  // before half their period, and no count is needed for them
  deadline(io_context& ctx, io_context::clock::duration period, progress made, std::stop_token parent = {})
      : ctx_(ctx), period_(std::max<io_context::clock::duration>(period, std::chrono::milliseconds(1))),
        made_(std::move(made)) {
    arm(ferry::detail::time_after<io_context::clock>(io_context::clock::now(),
                                                     made_.count ? period_ / 2 : period_),
        std::move(parent));
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

  void arm(io_context::clock::time_point at, std::stop_token parent) {
    timer_.owner_ = this;
    timer_.deadline_ = at;
    timer_.complete_ = &on_fire;
    if (parent.stop_possible())
      parent_.emplace(std::move(parent), forward_stop{&source_});
    ctx_.start_timer(&timer_);
  }

  /// With a progress count: true (and the timer armed again) if the count moved since it was last read.
  bool still_moving() {
    if (!made_.count)
      return false;
    std::uint64_t now = made_.count();
    if (!progress::moved(seen_, now, made_.at_least))
      return false;
    seen_ = now;
    // why: the timer just left the heap, which keeps its room: pushing it back allocates nothing
    timer_.deadline_ = ferry::detail::time_after<io_context::clock>(io_context::clock::now(), period_);
    ctx_.start_timer(&timer_);
    return true;
  }

  static void on_fire(detail::op_base* o) noexcept {
    auto* self = static_cast<op*>(o)->owner_;
    if (o->result_ == -ECANCELED) {
      self->fired_ = true;
      return;
    }
    if (self->still_moving())
      return;
    self->fired_ = true;
    self->expired_ = true;
    self->source_.request_stop();
  }

  io_context& ctx_;
  std::stop_source source_;
  std::optional<std::stop_callback<forward_stop>> parent_;
  op timer_;
  io_context::clock::duration period_{};
  progress made_;
  std::optional<std::uint64_t> seen_;
  bool fired_ = false;
  bool expired_ = false;
};

} // namespace ferry::io
