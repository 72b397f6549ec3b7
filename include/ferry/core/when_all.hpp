#pragma once
/// `ferry::when_all`: awaits several awaitables concurrently and yields all their results once every one has
/// finished. Variadic form: a tuple (void results become `std::monostate`). Range form: a vector (or nothing
/// for void). If any of them throws, the first exception is rethrown after all have finished.
///
///   auto [a, b] = co_await ferry::when_all(fetch(1), fetch(2));
///   std::vector<int> all = co_await ferry::when_all(std::move(tasks));

#include "ferry/core/concepts.hpp"
#include "ferry/core/task.hpp"

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace ferry {
namespace detail {

struct when_all_latch {
  explicit when_all_latch(std::size_t children) noexcept : count_(children + 1) {}
  /// Returns true for the last arrival.
  bool arrive() noexcept { return count_.fetch_sub(1, std::memory_order_acq_rel) == 1; }
  std::atomic<std::size_t> count_;
  std::coroutine_handle<> awaiting_;
};

template<class R>
using when_all_value_t = std::conditional_t<std::is_void_v<R>, std::monostate, std::remove_cvref_t<R>>;

template<class R>
class when_all_child {
public:
  using value_type = when_all_value_t<R>;
  struct promise_base {
    when_all_latch* latch_ = nullptr;
    std::optional<value_type> value_;
    std::exception_ptr exception_;
    std::suspend_always initial_suspend() noexcept { return {}; }
    auto final_suspend() noexcept {
      struct arrive {
        bool await_ready() noexcept { return false; }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<>) noexcept {
          return latch_->arrive() ? latch_->awaiting_ : std::noop_coroutine();
        }
        void await_resume() noexcept {}
        when_all_latch* latch_;
      };
      return arrive{latch_};
    }
    void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  };
  struct void_promise : promise_base {
    void return_void() noexcept { this->value_.emplace(); }
  };
  struct value_promise : promise_base {
    template<class U>
    void return_value(U&& v) {
      this->value_.emplace(std::forward<U>(v));
    }
  };
  struct promise_type : std::conditional_t<std::is_void_v<R>, void_promise, value_promise> {
    when_all_child get_return_object() noexcept {
      return when_all_child(std::coroutine_handle<promise_type>::from_promise(*this));
    }
  };

  explicit when_all_child(std::coroutine_handle<promise_type> h) noexcept : handle_(h) {}
  when_all_child(when_all_child&& o) noexcept : handle_(std::exchange(o.handle_, {})) {}
  when_all_child& operator=(when_all_child&&) = delete;
  ~when_all_child() {
    if (handle_)
      handle_.destroy();
  }

  void start(when_all_latch& latch) noexcept {
    handle_.promise().latch_ = &latch;
    handle_.resume();
  }
  std::exception_ptr exception() const noexcept { return handle_.promise().exception_; }
  value_type take() { return std::move(*handle_.promise().value_); }

private:
  std::coroutine_handle<promise_type> handle_;
};

template<class R, class A>
when_all_child<R> make_when_all_child(A a) {
  if constexpr (std::is_void_v<R>)
    co_await std::move(a);
  else
    co_return co_await std::move(a);
}

/// Starts every child, suspends the parent until the last one arrives.
template<class StartAll>
struct when_all_wait {
  when_all_latch& latch_;
  StartAll start_all_;
  bool await_ready() noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> parent) noexcept {
    latch_.awaiting_ = parent;
    start_all_();
    // why: the parent holds one count of its own, so that children finishing during start_all_ cannot resume
    // it before it has suspended; whoever arrives last resumes it (or it continues without suspending).
    return !latch_.arrive();
  }
  void await_resume() noexcept {}
};

template<class F>
when_all_wait(when_all_latch&, F) -> when_all_wait<F>;

} // namespace detail

/// Awaits all of `as` concurrently; yields a tuple of their results.
template<awaitable... A>
auto when_all(A... as) -> task<std::tuple<detail::when_all_value_t<await_result_t<A>>...>> {
  std::tuple<detail::when_all_child<await_result_t<A>>...> children{
      detail::make_when_all_child<await_result_t<A>>(std::move(as))...};
  detail::when_all_latch latch(sizeof...(A));
  co_await detail::when_all_wait{latch,
                                 [&] { std::apply([&](auto&... c) { (c.start(latch), ...); }, children); }};
  std::exception_ptr first;
  std::apply([&](auto&... c) { ((first = first ? first : c.exception()), ...); }, children);
  if (first)
    std::rethrow_exception(first);
  co_return std::apply([](auto&... c) { return std::make_tuple(c.take()...); }, children);
}

/// Awaits every awaitable of a range concurrently (the range's elements are moved from); yields their results
/// in order, or nothing when they yield void.
template<std::ranges::input_range Range>
requires awaitable<std::ranges::range_value_t<Range>>
auto when_all(Range awaitables) {
  using A = std::ranges::range_value_t<Range>;
  using R = await_result_t<A>;
  using out_t = std::conditional_t<std::is_void_v<R>, void, std::vector<std::remove_cvref_t<R>>>;
  return [](Range range) -> task<out_t> {
    std::vector<detail::when_all_child<R>> children;
    if constexpr (std::ranges::sized_range<Range>)
      children.reserve(std::ranges::size(range));
    for (auto&& a : range)
      children.push_back(detail::make_when_all_child<R>(std::move(a)));
    detail::when_all_latch latch(children.size());
    co_await detail::when_all_wait{latch, [&] {
                                     for (auto& c : children)
                                       c.start(latch);
                                   }};
    for (auto& c : children)
      if (auto e = c.exception())
        std::rethrow_exception(e);
    if constexpr (!std::is_void_v<R>) {
      std::vector<std::remove_cvref_t<R>> out;
      out.reserve(children.size());
      for (auto& c : children)
        out.push_back(c.take());
      co_return out;
    }
  }(std::move(awaitables));
}

} // namespace ferry
