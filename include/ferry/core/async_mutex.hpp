#pragma once
/// `ferry::async_mutex`: mutual exclusion between coroutines without blocking a thread. `co_await m.lock()`
/// suspends until the mutex is free and yields a guard that unlocks when destroyed; waiters are served in
/// order, each resumed inline by the coroutine that unlocks.
///
///   auto guard = co_await mutex.lock();

#include <coroutine>
#include <deque>
#include <mutex>
#include <utility>

namespace ferry {

class async_mutex {
public:
  class [[nodiscard]] guard {
  public:
    explicit guard(async_mutex* m) noexcept : m_(m) {}
    guard(guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    guard& operator=(guard&&) = delete;
    ~guard() {
      if (m_)
        m_->unlock();
    }

  private:
    async_mutex* m_;
  };

  async_mutex() = default;
  async_mutex(const async_mutex&) = delete;
  async_mutex& operator=(const async_mutex&) = delete;

  [[nodiscard]] auto lock() noexcept {
    struct awaiter {
      async_mutex& m;
      bool await_ready() {
        std::lock_guard l(m.state_);
        if (m.locked_)
          return false;
        m.locked_ = true;
        return true;
      }
      bool await_suspend(std::coroutine_handle<> h) {
        std::lock_guard l(m.state_);
        if (!m.locked_) { // released between await_ready and here
          m.locked_ = true;
          return false;
        }
        m.waiters_.push_back(h);
        return true;
      }
      guard await_resume() noexcept { return guard(&m); }
    };
    return awaiter{*this};
  }

  bool try_lock() {
    std::lock_guard l(state_);
    if (locked_)
      return false;
    locked_ = true;
    return true;
  }

  /// Hands the mutex to the oldest waiter (resuming it here), or frees it.
  void unlock() {
    std::coroutine_handle<> next;
    {
      std::lock_guard l(state_);
      if (waiters_.empty()) {
        locked_ = false;
        return;
      }
      next = waiters_.front();
      waiters_.pop_front();
    }
    next.resume(); // ownership passes directly: locked_ stays true
  }

private:
  std::mutex state_;
  bool locked_ = false;
  std::deque<std::coroutine_handle<>> waiters_;
};

} // namespace ferry
