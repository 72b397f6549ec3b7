#pragma once
/// `ferry::thread_pool`: a fixed set of worker threads; `co_await pool.schedule()` continues on one of them.
///
///   ferry::thread_pool pool(4);
///   co_await pool.schedule();   // now on a worker thread

#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace ferry {

class thread_pool {
public:
  class awaiter {
  public:
    explicit awaiter(thread_pool& p) noexcept : pool_(p) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { pool_.enqueue(h); }
    void await_resume() const noexcept {}

  private:
    thread_pool& pool_;
  };

  /// Starts `threads` workers (at least one).
  explicit thread_pool(std::size_t threads = std::thread::hardware_concurrency()) {
    if (threads == 0)
      threads = 1;
    workers_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i)
      workers_.emplace_back([this] { work(); });
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  /// Runs what is queued, then joins the workers.
  ~thread_pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& t : workers_)
      t.join();
  }

  [[nodiscard]] awaiter schedule() noexcept { return awaiter(*this); }
  std::size_t size() const noexcept { return workers_.size(); }
  /// True when called from one of this pool's workers.
  bool on_worker() const noexcept {
    for (auto& t : workers_)
      if (t.get_id() == std::this_thread::get_id())
        return true;
    return false;
  }

private:
  void enqueue(std::coroutine_handle<> h) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_ && workers_.empty())
        throw std::logic_error("thread_pool: schedule() after destruction began");
      queue_.push_back(h);
    }
    ready_.notify_one();
  }

  void work() {
    for (;;) {
      std::coroutine_handle<> h;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty())
          return;
        h = queue_.front();
        queue_.pop_front();
      }
      h.resume();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::coroutine_handle<>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

} // namespace ferry
