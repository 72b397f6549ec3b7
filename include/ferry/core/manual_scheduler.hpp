#pragma once
/// `ferry::manual_scheduler`: a deterministic scheduler for tests. `co_await s.schedule()` parks the
/// coroutine; nothing runs until the test calls `run_one()` or `run_all()`, on the test's own thread.
///
///   ferry::manual_scheduler s;
///   scope.spawn(work_on(s));   // parks at s.schedule()
///   CHECK(s.run_one());        // resumes it here

#include <coroutine>
#include <cstddef>
#include <deque>
#include <mutex>

namespace ferry {

class manual_scheduler {
public:
  class awaiter {
  public:
    explicit awaiter(manual_scheduler& s) noexcept : scheduler_(s) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { scheduler_.enqueue(h); }
    void await_resume() const noexcept {}

  private:
    manual_scheduler& scheduler_;
  };

  manual_scheduler() = default;
  manual_scheduler(const manual_scheduler&) = delete;
  manual_scheduler& operator=(const manual_scheduler&) = delete;

  [[nodiscard]] awaiter schedule() noexcept { return awaiter(*this); }

  /// Resumes the oldest parked coroutine, if any; returns whether one ran.
  bool run_one() {
    std::coroutine_handle<> h;
    {
      std::lock_guard lock(mutex_);
      if (queue_.empty())
        return false;
      h = queue_.front();
      queue_.pop_front();
    }
    h.resume();
    return true;
  }

  /// Resumes parked coroutines (including those parked meanwhile) until none is left; returns how many ran.
  std::size_t run_all() {
    std::size_t n = 0;
    while (run_one())
      ++n;
    return n;
  }

  /// How many coroutines are parked.
  std::size_t pending() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }

private:
  void enqueue(std::coroutine_handle<> h) {
    std::lock_guard lock(mutex_);
    queue_.push_back(h);
  }

  mutable std::mutex mutex_;
  std::deque<std::coroutine_handle<>> queue_;
};

} // namespace ferry
