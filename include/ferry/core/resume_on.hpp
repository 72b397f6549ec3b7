#pragma once
/// `ferry::resume_on(scheduler, awaitable)`: awaits `awaitable` and then continues on `scheduler` instead of
/// the thread that completed it. ferry's operations resume inline on the completing thread by default; this
/// names where to continue instead.
///
///   auto n = co_await ferry::resume_on(pool, sock.recv(buf));   // continues on a pool thread

#include "ferry/core/concepts.hpp"
#include "ferry/core/task.hpp"

#include <type_traits>
#include <utility>

namespace ferry {

template<class Scheduler, awaitable A>
requires scheduler<Scheduler&>
auto resume_on(Scheduler& sched, A a) -> task<std::remove_cvref_t<await_result_t<A>>> {
  if constexpr (std::is_void_v<await_result_t<A>>) {
    co_await std::move(a);
    co_await sched.schedule();
  } else {
    auto value = co_await std::move(a);
    co_await sched.schedule();
    co_return value;
  }
}

} // namespace ferry
