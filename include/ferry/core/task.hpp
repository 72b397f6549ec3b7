#pragma once
/// `ferry::task<T>`: a lazy coroutine that yields one T (or throws). Nothing runs until it is awaited; when
/// it finishes, its awaiter resumes by symmetric transfer (no stack growth through long chains).
///
///   ferry::task<int> answer() { co_return 42; }
///   ferry::task<> caller() { int v = co_await answer(); }

#include <coroutine>
#include <exception>
#include <type_traits>
#include <utility>
#include <variant>

namespace ferry {

template<class T = void>
class task;

namespace detail {

struct task_promise_base {
  struct final_awaiter {
    bool await_ready() noexcept { return false; }
    template<class Promise>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> self) noexcept {
      // why: symmetric transfer to the awaiting coroutine keeps a chain of tasks from growing the stack.
      return self.promise().continuation_;
    }
    void await_resume() noexcept {}
  };

  std::suspend_always initial_suspend() noexcept { return {}; }
  final_awaiter final_suspend() noexcept { return {}; }

  std::coroutine_handle<> continuation_ = std::noop_coroutine();
};

template<class T>
struct task_promise final : task_promise_base {
  task<T> get_return_object() noexcept;
  template<class U>
  requires std::convertible_to<U&&, T>
  void return_value(U&& value) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
    result_.template emplace<1>(std::forward<U>(value));
  }
  void unhandled_exception() noexcept { result_.template emplace<2>(std::current_exception()); }
  T take() {
    if (result_.index() == 2)
      std::rethrow_exception(std::get<2>(result_));
    return std::move(std::get<1>(result_));
  }
  std::variant<std::monostate, T, std::exception_ptr> result_;
};

template<>
struct task_promise<void> final : task_promise_base {
  task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  void take() {
    if (exception_)
      std::rethrow_exception(exception_);
  }
  std::exception_ptr exception_;
};

} // namespace detail

template<class T>
class [[nodiscard]] task {
  static_assert(!std::is_reference_v<T>,
                "task<T&> is not supported: return a pointer or std::reference_wrapper");

public:
  using promise_type = detail::task_promise<T>;
  using value_type = T;

  task() noexcept = default;
  explicit task(std::coroutine_handle<promise_type> h) noexcept : handle_(h) {}
  task(task&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  task& operator=(task&& other) noexcept {
    if (this != &other) {
      if (handle_)
        handle_.destroy();
      handle_ = std::exchange(other.handle_, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() {
    if (handle_)
      handle_.destroy();
  }

  /// True when the task holds a coroutine that has finished.
  bool done() const noexcept { return !handle_ || handle_.done(); }

  auto operator co_await() noexcept {
    struct awaiter {
      std::coroutine_handle<promise_type> handle_;
      bool await_ready() noexcept { return !handle_ || handle_.done(); }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
        handle_.promise().continuation_ = awaiting;
        return handle_;
      }
      T await_resume() { return handle_.promise().take(); }
    };
    return awaiter{handle_};
  }

private:
  std::coroutine_handle<promise_type> handle_;
};

namespace detail {
template<class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>(std::coroutine_handle<task_promise<T>>::from_promise(*this));
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>(std::coroutine_handle<task_promise<void>>::from_promise(*this));
}
} // namespace detail

} // namespace ferry
