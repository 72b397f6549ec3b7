#pragma once
/// `ferry::io::wake_signal`: a one-shot signal that a coroutine on an io_context's loop waits for. set() (on
/// the loop) or the waiter's stop (from any thread) wakes it, and it always resumes on the loop: a stop only
/// cancels the timer the waiter sleeps on, which the loop then completes.
///
///   io::wake_signal turn;             // a waiter's, kept where the one who hands over finds it
///   co_await turn.wait(io, stop);     // then look at what the waker left, or at stop
///   turn.set();                       // the waker, on the loop

#include "ferry/core/task.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/timer_awaiter.hpp"

#include <chrono>
#include <stop_token>

namespace ferry::io {

class wake_signal {
public:
  /// Wakes the waiter (or the one that waits next: the signal stays set).
  void set() noexcept { source_.request_stop(); }
  bool is_set() const noexcept { return source_.stop_requested(); }

  /// Waits on `io`'s loop until set() or `stop`; the signal must outlive the wait.
  task<> wait(io_context& io, std::stop_token stop) {
    std::stop_callback relay(stop, [this] { source_.request_stop(); });
    while (!source_.stop_requested()) // why: a long sleep ends by itself once a day; wait on
      (void)co_await io.sleep_for(std::chrono::hours(24), source_.get_token());
  }

private:
  std::stop_source source_;
};

} // namespace ferry::io
