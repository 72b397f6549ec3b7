#pragma once
/// `ferry::io::io_context_pool`: a few io_contexts, each driven by a thread of its own, for I/O that should
/// use more than one core (the connections a TCP server accepts, say). `next()` hands the loops out in turn;
/// a coroutine moves onto one with `co_await pool.next().schedule()` (and its sockets with
/// `tcp_socket::move_to`). Destroying the pool lets each loop finish what it still has and joins its thread,
/// so whatever runs there must have ended, or moved back to another loop, by then.
///
///   ferry::io::io_context_pool pool(2, {.backend = ctx.backend()});
///   co_await pool.next().schedule();   // now on one of the pool's threads

#include "ferry/io/io_context.hpp"

#include <atomic>
#include <cstddef>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

namespace ferry::io {

class io_context_pool {
  struct loop {
    explicit loop(const io_context_options& o) : ctx(o) {}
    io_context ctx;
    std::optional<io_context::work_guard> guard;
    std::thread thread;
  };

public:
  /// Starts `threads` loops (at least one) set up with `options`; throws std::system_error as io_context does
  /// when the backend cannot be used.
  explicit io_context_pool(std::size_t threads, io_context_options options = {}) {
    threads = threads == 0 ? 1 : threads;
    loops_.reserve(threads);
    try {
      for (std::size_t i = 0; i < threads; ++i) {
        auto& l = *loops_.emplace_back(std::make_unique<loop>(options));
        l.guard.emplace(l.ctx);
        l.thread = std::thread([c = &l.ctx] { c->run(); });
        l.ctx.hand_over(l.thread.get_id());
      }
    } catch (...) {
      stop_all(); // why: a loop or thread that failed to start must not leave the others running
      throw;
    }
  }
  io_context_pool(const io_context_pool&) = delete;
  io_context_pool& operator=(const io_context_pool&) = delete;
  ~io_context_pool() { stop_all(); }

  /// The next loop in turn (from any thread).
  io_context& next() noexcept {
    return loops_[next_.fetch_add(1, std::memory_order_relaxed) % loops_.size()]->ctx;
  }
  /// The loop at `i` (0 <= i < size()).
  io_context& at(std::size_t i) noexcept { return loops_[i]->ctx; }
  std::size_t size() const noexcept { return loops_.size(); }

private:
  void stop_all() noexcept {
    for (auto& l : loops_)
      l->guard.reset(); // why: each run() returns once its loop has no work left
    for (auto& l : loops_)
      if (l->thread.joinable())
        l->thread.join();
  }

  std::vector<std::unique_ptr<loop>> loops_;
  std::atomic<std::size_t> next_{0};
};

} // namespace ferry::io
