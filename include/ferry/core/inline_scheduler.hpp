#pragma once
/// `ferry::inline_scheduler`: `co_await s.schedule()` continues at once on the current thread. The default
/// wherever a scheduler is optional.
///
///   co_await ferry::inline_scheduler{}.schedule();   // no suspension

#include <coroutine>

namespace ferry {

struct inline_scheduler {
  [[nodiscard]] std::suspend_never schedule() const noexcept { return {}; }
  friend bool operator==(inline_scheduler, inline_scheduler) noexcept { return true; }
};

} // namespace ferry
