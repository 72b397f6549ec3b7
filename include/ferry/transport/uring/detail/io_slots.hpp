#pragma once
// A counting limit for one io_context's coroutines: at most `limit` holders at a time, the others wait in
// arrival order and are resumed through the loop (never inline, so a release never nests a resumption).
// Loop-thread only.

#include "ferry/io/detail/resume_op.hpp"
#include "ferry/io/io_context.hpp"

#include <coroutine>
#include <cstddef>
#include <stop_token>

namespace ferry::detail {

class io_slots {
public:
  io_slots(io::io_context& io, std::size_t limit) noexcept : io_(io), limit_(limit ? limit : 1) {}
  io_slots(const io_slots&) = delete;
  io_slots& operator=(const io_slots&) = delete;

  struct waiter {
    io::detail::resume_op op;
    waiter* next = nullptr;
  };

  /// `if (co_await slots.acquire(stop))` ... release(): true with a slot held; false, holding none, when
  /// `stop` was requested by the time the slot came (a waiter may get it long after it was stopped).
  [[nodiscard]] auto acquire(const std::stop_token& stop = {}) noexcept {
    struct awaiter {
      io_slots& s;
      const std::stop_token& stop;
      waiter w;
      bool await_ready() noexcept {
        if (s.used_ < s.limit_) {
          ++s.used_;
          return true;
        }
        return false;
      }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        w.op.handle = h;
        if (s.tail_)
          s.tail_->next = &w;
        else
          s.head_ = &w;
        s.tail_ = &w;
      }
      bool await_resume() const noexcept {
        if (!stop.stop_requested())
          return true;
        s.release();
        return false;
      }
    };
    return awaiter{*this, stop, {}};
  }

  /// Gives a slot back: to the first waiter (it keeps the count), else to the pool.
  void release() noexcept {
    if (waiter* w = head_) {
      head_ = w->next;
      if (!head_)
        tail_ = nullptr;
      io_.post(&w->op);
      return;
    }
    --used_;
  }

  std::size_t in_use() const noexcept { return used_; }
  std::size_t limit() const noexcept { return limit_; }

private:
  io::io_context& io_;
  std::size_t limit_;
  std::size_t used_ = 0;
  waiter* head_ = nullptr;
  waiter* tail_ = nullptr;
};

} // namespace ferry::detail
