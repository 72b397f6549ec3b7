#pragma once
/// `ferry::thread_pool`: a fixed set of worker threads; `co_await pool.schedule()` continues on one of them.
/// The pool may be destroyed by code running on one of its own workers (a coroutine that resumed there and
/// then dropped the pool's owner): that worker is let go instead of joined, and finishes once it returns.
///
///   ferry::thread_pool pool(4);
///   co_await pool.schedule();   // now on a worker thread

#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace ferry {

class thread_pool {
  // why: shared with the workers, so that a worker that outlives the pool (see above) still has it
  struct state {
    std::mutex mutex;
    std::condition_variable ready;
    std::deque<std::coroutine_handle<>> queue;
    bool stopping = false;
    std::size_t live = 0; // workers that have not returned yet
  };

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
  explicit thread_pool(std::size_t threads = std::thread::hardware_concurrency())
      : state_(std::make_shared<state>()) {
    if (threads == 0)
      threads = 1;
    workers_.reserve(threads);
    state_->live = threads;
    for (std::size_t i = 0; i < threads; ++i)
      workers_.emplace_back([s = state_] { work(*s); });
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  /// Runs what is queued, then joins the workers (all but the calling one, if it is a worker).
  ~thread_pool() {
    {
      std::lock_guard lock(state_->mutex);
      state_->stopping = true;
    }
    state_->ready.notify_all();
    for (auto& t : workers_) {
      if (t.get_id() == std::this_thread::get_id())
        t.detach();
      else
        t.join();
    }
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
      std::lock_guard lock(state_->mutex);
      // why: while destruction drains the queue, work queued by queued work still runs; after the last
      // worker returned nothing would
      if (state_->stopping && state_->live == 0)
        throw std::logic_error("thread_pool: schedule() after the workers ended");
      state_->queue.push_back(h);
    }
    state_->ready.notify_one();
  }

  static void work(state& s) {
    for (;;) {
      std::coroutine_handle<> h;
      {
        std::unique_lock lock(s.mutex);
        s.ready.wait(lock, [&] { return s.stopping || !s.queue.empty(); });
        if (s.queue.empty()) {
          --s.live;
          return;
        }
        h = s.queue.front();
        s.queue.pop_front();
      }
      h.resume();
    }
  }

  std::shared_ptr<state> state_;
  std::vector<std::thread> workers_;
};

} // namespace ferry
