#pragma once
/// `ferry::sync_wait(awaitable)`: blocks the calling thread until the awaitable completes and returns its
/// value (or rethrows). The bridge from ordinary code into coroutines. Do not call it on a thread that the
/// awaited work needs in order to make progress (an io_context's own thread: use `io_context::run_until`
/// there).
///
///   int v = ferry::sync_wait(answer());

#include "ferry/core/concepts.hpp"

#include <atomic>
#include <condition_variable>
#include <coroutine>
#include <exception>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

namespace ferry {
namespace detail {

/// Called once when a sync_wait_task finishes, from the thread that finished it.
struct on_finish {
  void* context_ = nullptr;
  void (*fn_)(void* context) noexcept = nullptr;
};

template<class R>
struct sync_wait_promise_base {
  on_finish on_finish_;
  std::exception_ptr exception_;
  /// running, finished (on_finish_ called), or abandoned (frees itself once it finishes)
  enum fate : int { running, finished, abandoned };
  std::atomic<int> fate_{running};

  std::suspend_always initial_suspend() noexcept { return {}; }
  auto final_suspend() noexcept {
    struct notify {
      bool await_ready() noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        if (fate_.exchange(finished, std::memory_order_acq_rel) == abandoned) {
          h.destroy(); // why: nobody waits for it any more; nothing here is touched after this
          return;
        }
        f_.fn_(f_.context_);
      }
      void await_resume() noexcept {}
      on_finish f_;
      std::atomic<int>& fate_;
    };
    return notify{on_finish_, fate_};
  }
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
};

template<class R>
struct sync_wait_promise : sync_wait_promise_base<R> {
  std::optional<R> value_;
  template<class U>
  void return_value(U&& v) {
    value_.emplace(std::forward<U>(v));
  }
  R take() { return std::move(*value_); }
};

template<>
struct sync_wait_promise<void> : sync_wait_promise_base<void> {
  void return_void() noexcept {}
  void take() noexcept {}
};

template<class R>
class sync_wait_task {
public:
  struct promise_type : sync_wait_promise<R> {
    sync_wait_task get_return_object() noexcept {
      return sync_wait_task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
  };

  explicit sync_wait_task(std::coroutine_handle<promise_type> h) noexcept : handle_(h) {}
  sync_wait_task(sync_wait_task&& o) noexcept : handle_(std::exchange(o.handle_, {})) {}
  sync_wait_task& operator=(sync_wait_task&&) = delete;
  ~sync_wait_task() {
    if (handle_)
      handle_.destroy();
  }

  /// Starts the coroutine and blocks until it finishes.
  R run() {
    struct event {
      std::mutex mutex_;
      std::condition_variable cv_;
      bool set_ = false;
    } ev;
    // why: set and notify under the lock, so the waiter cannot see `set_` and destroy `ev` before the
    // notifier is done with it.
    auto signal = [](void* p) noexcept {
      auto* e = static_cast<event*>(p);
      std::lock_guard lock(e->mutex_);
      e->set_ = true;
      e->cv_.notify_one();
    };
    return drive(on_finish{&ev, signal}, [&] {
      std::unique_lock lock(ev.mutex_);
      ev.cv_.wait(lock, [&] { return ev.set_; });
    });
  }

  /// Gives up a coroutine that has started and not finished: it is not destroyed with this object (its
  /// operations may still be in the kernel's hands, writing into its frame), and frees itself if it ever
  /// finishes, without calling `finished`. False if it finished meanwhile: `finished` was or is being called,
  /// and this still owns it.
  bool abandon() noexcept {
    int expected = sync_wait_promise_base<R>::running;
    if (!handle_.promise().fate_.compare_exchange_strong(expected, sync_wait_promise_base<R>::abandoned,
                                                         std::memory_order_acq_rel))
      return false;
    handle_ = {};
    return true;
  }

  /// Starts the coroutine, calls `finished` from whichever thread finishes it, and calls `wait()` here, which
  /// must return only after `finished` was called.
  template<class Wait>
  R drive(on_finish finished, Wait&& wait) {
    handle_.promise().on_finish_ = finished;
    handle_.resume();
    wait();
    if (handle_.promise().exception_)
      std::rethrow_exception(handle_.promise().exception_);
    return handle_.promise().take();
  }

private:
  std::coroutine_handle<promise_type> handle_;
};

/// `A`: an awaitable's type as forwarded (an lvalue reference, or a value type for an rvalue).
// why: an rvalue awaitable (a temporary task, typically) moves into the frame, so that the frame owns it: a
// frame that is abandoned (sync_wait_task::abandon) must keep what it awaits alive, and the caller's
// temporary goes as soon as the call returns or throws
template<class R, class A>
sync_wait_task<R> make_sync_wait_task(A a) {
  if constexpr (std::is_void_v<R>)
    co_await std::forward<A>(a);
  else
    co_return co_await std::forward<A>(a);
}

} // namespace detail

/// Runs `a` to completion, blocking this thread, and returns its result (by value).
template<awaitable A>
auto sync_wait(A&& a) -> std::remove_cvref_t<await_result_t<A>> {
  using R = std::remove_cvref_t<await_result_t<A>>;
  return detail::make_sync_wait_task<R, A>(std::forward<A>(a)).run();
}

} // namespace ferry
