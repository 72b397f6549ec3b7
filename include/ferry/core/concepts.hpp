#pragma once
/// Concepts of the core: what can be `co_await`ed, and what a scheduler is.
///
///   static_assert(ferry::awaitable<ferry::task<int>>);
///   static_assert(ferry::scheduler<ferry::thread_pool&>);

#include <concepts>
#include <coroutine>
#include <type_traits>
#include <utility>

namespace ferry {

namespace detail {
template<class T>
concept valid_await_suspend_result =
    std::same_as<T, void> || std::same_as<T, bool> || std::convertible_to<T, std::coroutine_handle<>>;
} // namespace detail

/// An awaiter: the three members `co_await` calls.
template<class A>
concept awaiter = requires(A& a, std::coroutine_handle<> h) {
  { a.await_ready() } -> std::convertible_to<bool>;
  requires detail::valid_await_suspend_result<decltype(a.await_suspend(h))>;
  a.await_resume();
};

namespace detail {
template<class A>
decltype(auto) get_awaiter(A&& a) {
  if constexpr (requires { std::forward<A>(a).operator co_await(); })
    return std::forward<A>(a).operator co_await();
  else if constexpr (requires { operator co_await(std::forward<A>(a)); })
    return operator co_await(std::forward<A>(a));
  else
    return static_cast<A&&>(a);
}
} // namespace detail

/// Something `co_await` accepts from any coroutine whose promise has no await_transform.
template<class A>
concept awaitable = requires(A&& a) {
  { detail::get_awaiter(std::forward<A>(a)) } -> awaiter;
};

/// The type `co_await a` yields.
template<awaitable A>
using await_result_t =
    decltype(std::declval<decltype(detail::get_awaiter(std::declval<A>()))&>().await_resume());

/// A scheduler: `co_await s.schedule()` resumes the caller on the scheduler's execution context.
template<class S>
concept scheduler = requires(S&& s) {
  { s.schedule() } -> awaitable;
};

} // namespace ferry
