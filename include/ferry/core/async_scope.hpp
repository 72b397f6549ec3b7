#pragma once
/// `ferry::async_scope`: starts detached work and lets the owner wait for all of it. Work spawned into a
/// scope starts at once (inline, up to its first suspension); `co_await scope.join()` resumes when every
/// spawned piece has finished and rethrows the first exception any of them threw. `request_stop()` asks
/// spawned work that took `scope.token()` to stop early.
///
///   ferry::async_scope scope;
///   for (auto& c : clients) scope.spawn(serve(c, scope.token()));
///   co_await scope.join();

#include "ferry/core/concepts.hpp"

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stop_token>
#include <utility>

namespace ferry {

class async_scope {
  struct detached {
    struct promise_type {
      async_scope* scope_;
      template<class A>
      promise_type(async_scope& s, A&) noexcept : scope_(&s) {}
      detached get_return_object() noexcept { return {}; }
      std::suspend_never initial_suspend() noexcept { return {}; }
      std::suspend_never final_suspend() noexcept {
        scope_->arrive();
        return {};
      }
      void return_void() noexcept {}
      void unhandled_exception() noexcept { scope_->record(std::current_exception()); }
    };
  };

  template<class A>
  static detached run(async_scope&, A a) {
    // why: the work (and what its frame holds: a socket, say) must be gone before the last finisher resumes
    // the joiner, who may then destroy what it used (its io_context); a parameter would live until this
    // frame is freed, after final_suspend() resumed the joiner
    A work = std::move(a);
    co_await std::move(work);
  }

public:
  async_scope() = default;
  async_scope(const async_scope&) = delete;
  async_scope& operator=(const async_scope&) = delete;
  /// Destroying a scope with work still running is a bug: join first.
  ~async_scope() {
    if (count_.load(std::memory_order_acquire) != 1)
      std::terminate();
  }

  /// Starts `a`; the scope keeps it alive until it finishes.
  template<awaitable A>
  void spawn(A a) {
    count_.fetch_add(1, std::memory_order_relaxed);
    run(*this, std::move(a));
  }

  /// Resumes once every spawned piece of work has finished (at once if none is running).
  [[nodiscard]] auto join() noexcept {
    struct awaiter {
      async_scope& scope_;
      bool await_ready() const noexcept { return scope_.count_.load(std::memory_order_acquire) == 1; }
      bool await_suspend(std::coroutine_handle<> h) noexcept {
        scope_.joiner_ = h;
        // why: the scope holds one count of its own; giving it up here makes the last finisher the resumer.
        if (scope_.count_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          scope_.count_.store(1, std::memory_order_relaxed);
          return false;
        }
        return true;
      }
      void await_resume() {
        std::exception_ptr e;
        {
          std::lock_guard lock(scope_.mutex_);
          e = std::exchange(scope_.exception_, nullptr);
        }
        if (e)
          std::rethrow_exception(e);
      }
    };
    return awaiter{*this};
  }

  /// How many spawned pieces are still running.
  std::size_t active() const noexcept { return count_.load(std::memory_order_acquire) - 1; }

  std::stop_token token() const noexcept { return stop_.get_token(); }
  void request_stop() noexcept { stop_.request_stop(); }

private:
  void arrive() noexcept {
    if (count_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      count_.store(1, std::memory_order_relaxed);
      std::exchange(joiner_, nullptr).resume();
    }
  }
  void record(std::exception_ptr e) noexcept {
    std::lock_guard lock(mutex_);
    if (!exception_)
      exception_ = std::move(e);
  }

  std::atomic<std::size_t> count_{1};
  std::coroutine_handle<> joiner_;
  std::mutex mutex_;
  std::exception_ptr exception_;
  std::stop_source stop_;
};

} // namespace ferry
