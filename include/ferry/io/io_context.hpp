#pragma once
/// `ferry::io::io_context`: the event loop that drives ferry's I/O. It runs on io_uring (with the
/// ferry::uring component) and falls back to epoll where io_uring is not permitted. One thread drives it
/// (`run`, `run_one`, `poll`, `run_until`); any thread may `schedule()` onto it or cancel its operations
/// through a stop_token. Completed operations resume their coroutine inline, on the thread that drives the
/// loop.
///
///   ferry::io::io_context ctx;                                   // io_uring if allowed, else epoll
///   ctx.run_until([&]() -> ferry::task<> { co_await ctx.sleep_for(10ms); }());

#include "ferry/core/concepts.hpp"
#include "ferry/core/detail/time_after.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/io/detail/completion_sink.hpp"
#include "ferry/io/detail/epoll_backend.hpp"
#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/detail/op_queue.hpp"
#include "ferry/io/detail/resume_op.hpp"
#include "ferry/io/detail/timer_heap.hpp"
#include "ferry/io/io_backend.hpp"

#if FERRY_WITH_URING
#include "ferry/io/uring/uring_backend.hpp"
#endif

#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <sys/uio.h>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry::io {

namespace detail {
class uring_backend;
}

/// How an io_context is set up.
struct io_context_options {
  /// `automatic` takes io_uring where it is compiled in and permitted, else epoll. The environment variable
  /// FERRY_IO_BACKEND=uring|epoll overrides `automatic`.
  io_backend backend = io_backend::automatic;
  /// Submission queue entries of the ring.
  unsigned queue_depth = 256;
  /// A kernel thread polls the submission queue (io_uring only): lower latency, one core busy while active.
  bool sqpoll = false;
};

class io_context {
public:
  using clock = std::chrono::steady_clock;

  /// Sets the loop up; throws std::system_error with the reason when the requested backend cannot be used.
  explicit io_context(io_context_options options = {}) {
    io_backend wanted = options.backend;
    if (wanted == io_backend::automatic) {
      if (const char* env = std::getenv("FERRY_IO_BACKEND")) {
        std::string_view v(env);
        if (v == "epoll")
          wanted = io_backend::epoll;
        else if (v == "uring")
          wanted = io_backend::uring;
      }
    }
    detail::completion_sink sink{this, &io_context::on_backend_completion};
#if FERRY_WITH_URING
    if (wanted != io_backend::epoll) {
      try {
        uring_ = std::make_unique<detail::uring_backend>(sink, options.queue_depth, options.sqpoll);
        backend_ = io_backend::uring;
        return;
      } catch (const std::system_error& e) {
        if (wanted == io_backend::uring)
          throw;
        note_ = std::string(e.what()) + "; using epoll";
      }
    }
#else
    if (wanted == io_backend::uring)
      throw std::system_error(std::make_error_code(std::errc::function_not_supported),
                              "io_context: built without io_uring (link ferry::uring to use it)");
#endif
    epoll_ = std::make_unique<detail::epoll_backend>(sink);
    backend_ = io_backend::epoll;
  }
  io_context(const io_context&) = delete;
  io_context& operator=(const io_context&) = delete;
  ~io_context() = default;

  /// The backend in use.
  io_backend backend() const noexcept {
    return backend_;
  }
  /// Why the backend differs from the one preferred ("" when it does not).
  const std::string& backend_note() const noexcept {
    return note_;
  }

  // ---- driving the loop ----

  /// Runs handlers until no work is left or stop() is called; returns how many ran.
  std::size_t run() {
    std::size_t n = 0;
    while (std::size_t k = run_one())
      n += k;
    return n;
  }
  /// Blocks until one handler has run (returns 1), or returns 0 when stopped or out of work.
  std::size_t run_one() {
    return step(true);
  }
  /// Runs the handlers that are ready, without blocking; returns how many ran.
  std::size_t poll() {
    std::size_t n = 0;
    while (std::size_t k = step(false))
      n += k;
    return n;
  }
  /// Runs at most one ready handler without blocking.
  std::size_t poll_one() {
    return step(false);
  }
  /// Makes run() and run_one() return as soon as possible, from any thread.
  void stop() noexcept {
    stopped_.store(true, std::memory_order_release);
    wake();
  }
  bool stopped() const noexcept {
    return stopped_.load(std::memory_order_acquire);
  }
  /// Clears a previous stop() so the loop can run again.
  void restart() noexcept {
    stopped_.store(false, std::memory_order_release);
  }

  /// Drives the loop on this thread until `a` completes, and returns its result (or rethrows). If the context
  /// is stopped before `a` has finished, throws std::runtime_error and leaves `a` as it is, not destroyed:
  /// operations it started may still be in the kernel's hands. Then either keep everything `a` uses alive
  /// until a later run of the context has finished it (it frees itself then), or run the context no more.
  /// The same holds when the loop itself throws (its backend failed: io_uring_submit or epoll_wait with an
  /// error it cannot go on from): the exception goes on to the caller, and unfinished work is left as it is.
  template<awaitable A>
  auto run_until(A&& a) -> std::remove_cvref_t<await_result_t<A>> {
    using R = std::remove_cvref_t<await_result_t<A>>;
    struct state : detail::op_base {
      io_context* ctx_ = nullptr;
      std::atomic<bool> finishing_{false}; // the work ended; its end is posted, or about to be
      std::atomic<bool> done_{false};
    } st;
    st.ctx_ = this;
    st.complete_ = [](detail::op_base* o) noexcept {
      static_cast<state*>(o)->done_.store(true, std::memory_order_release);
    };
    // why: the end is posted to the loop, not flagged from wherever `a` finished (another thread, say): a
    // handler that runs makes step() return, so the loop below looks at done_; a flag and a wake-up alone
    // would leave it waiting in the backend. `st` lives until that handler ran, since this waits for it.
    auto finished = [](void* p) noexcept {
      auto* s = static_cast<state*>(p);
      s->finishing_.store(true, std::memory_order_release);
      s->ctx_->post(s);
    };
    // why: `a` starts here, before the loop first runs; from now on only this thread may touch the backend,
    // and operations that other threads start meanwhile are handed over rather than begun there
    owner_.store(std::this_thread::get_id(), std::memory_order_release);
    auto work = ferry::detail::make_sync_wait_task<R, A>(std::forward<A>(a));
    // Leaves the loop's care of the work: true if it was given up unfinished, false if it had ended (its
    // result is there to take).
    auto let_go = [&]() -> bool {
      for (;;) {
        if (st.done_.load(std::memory_order_acquire))
          return false; // its end was taken in already
        // why: work that has ended has its result; its posted end (perhaps still on its way from another
        // thread) is taken back, since it must not outlive `st`
        if (st.finishing_.load(std::memory_order_acquire)) {
          while (!withdraw_posted(&st))
            std::this_thread::yield();
          return false;
        }
        // why: unfinished work is given up, not destroyed: operations it started may still be in the
        // kernel's hands, and would complete into freed memory. It frees itself if a later run finishes it
        if (work.abandon())
          return true;
        std::this_thread::yield(); // it finished just now: its end is on its way
      }
    };
    return work.drive(ferry::detail::on_finish{&st, finished}, [&] {
      while (!st.done_.load(std::memory_order_acquire)) {
        if (stopped()) {
          if (let_go())
            throw std::runtime_error(
                "io_context::run_until: the context was stopped before the work finished "
                "(the work is left as it is, not destroyed)");
          break;
        }
        try {
          step(true, true);
        } catch (...) {
          // why: the loop failed (its backend): the work is let go as for a stop, since its operations are
          // still in the loop's (and the kernel's) hands
          let_go();
          throw;
        }
      }
    });
  }

  /// Makes `thread` the one that drives the loop from now on (call it when handing the loop to a new thread,
  /// before that thread starts running it, so that no other thread touches the backend meanwhile).
  void hand_over(std::thread::id thread) noexcept {
    owner_.store(thread, std::memory_order_release);
  }

  /// True on the thread that is driving this loop right now.
  bool running_in_this_thread() const noexcept {
    return current() == this;
  }

  /// Keeps run() from returning while the guard lives, even with no operation in flight (a server loop, say).
  class work_guard {
  public:
    explicit work_guard(io_context& ctx) noexcept : ctx_(&ctx) { ctx.outstanding_.fetch_add(1); }
    work_guard(work_guard&& o) noexcept : ctx_(std::exchange(o.ctx_, nullptr)) {}
    work_guard& operator=(work_guard&&) = delete;
    ~work_guard() { reset(); }
    void reset() noexcept {
      if (auto* c = std::exchange(ctx_, nullptr)) {
        c->outstanding_.fetch_sub(1);
        // why: the loop's own thread looks at the count before it blocks again; another thread must wake it
        if (!c->running_in_this_thread())
          c->wake();
      }
    }

  private:
    io_context* ctx_;
  };

  // ---- scheduling and timers ----

  class schedule_awaiter {
  public:
    explicit schedule_awaiter(io_context& ctx) noexcept : ctx_(ctx) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept {
      op_.handle = h;
      ctx_.post(&op_);
    }
    void await_resume() const noexcept {}

  private:
    io_context& ctx_;
    detail::resume_op op_;
  };

  /// Continues the awaiting coroutine on this loop's thread (from any thread).
  [[nodiscard]] schedule_awaiter schedule() noexcept {
    return schedule_awaiter(*this);
  }

  class timer_awaiter;
  /// Completes after `d`, or with errc::cancelled when `stop` is triggered first.
  [[nodiscard]] timer_awaiter sleep_for(clock::duration d, std::stop_token stop = {}) noexcept;
  /// As above, for a duration of another unit; one too long for the clock (`milliseconds::max()`, say) is
  /// "never", not a time in the past.
  template<class Rep, class Period>
  requires(!std::is_same_v<std::chrono::duration<Rep, Period>, std::chrono::steady_clock::duration>)
      [[nodiscard]] timer_awaiter
      sleep_for(std::chrono::duration<Rep, Period> d, std::stop_token stop = {}) noexcept;
  /// Completes at `t`, or with errc::cancelled when `stop` is triggered first.
  [[nodiscard]] timer_awaiter sleep_until(clock::time_point t, std::stop_token stop = {}) noexcept;

  // ---- registered buffers ----

  /// Registers buffers for `file::read_fixed` / `write_fixed` (io_uring pins them once instead of per I/O).
  /// Replaces earlier registrations (also when it fails: then none is left). With epoll they are remembered
  /// and checked, and I/O is ordinary.
  result<void> register_buffers(std::span<const ::iovec> buffers) {
#if FERRY_WITH_URING
    if (uring_) {
      // why: the backend let the earlier registration go before it tried the new one: none is left, and fixed
      // I/O must be refused here rather than sent to the kernel with an index it no longer knows (EFAULT)
      if (int r = uring_->register_buffers(buffers); r < 0) {
        registered_.clear();
        return fail_errno(r, "io_uring_register_buffers");
      }
    }
#endif
    registered_.assign(buffers.begin(), buffers.end());
    return {};
  }
  /// The buffers registered now.
  std::span<const ::iovec> registered_buffers() const noexcept {
    return registered_;
  }

  // ---- for operations (used by ferry's awaitables; not needed by applications) ----

  /// Starts an I/O operation. Returns true when it completed at once (its result is in op->result_ and its
  /// completion function is not called); otherwise the completion function runs later on the loop's thread.
  bool start(detail::io_op* op) {
    outstanding_.fetch_add(1, std::memory_order_relaxed);
    if (!may_touch_backend()) {
      post_remote_start(op);
      return false;
    }
    return start_here(op);
  }

  /// Makes `op` cancellable through request_cancel(id); returns its id.
  std::uint64_t arm_cancel(detail::op_base* op, bool is_timer) {
    std::lock_guard lock(cancel_mutex_);
    op->cancel_id_ = ++last_cancel_id_;
    cancellable_.emplace(op->cancel_id_, cancel_entry{op, is_timer, false});
    return op->cancel_id_;
  }
  /// Called by a stop_callback on any thread: cancel the operation with this id if it is still in flight.
  void request_cancel(std::uint64_t id) noexcept {
    {
      std::lock_guard lock(cancel_mutex_);
      try {
        pending_cancels_.push_back(id);
      } catch (...) {
        return; // why: out of memory while cancelling; the operation still completes by itself
      }
    }
    wake();
  }
  /// Forgets an operation that completed at once.
  void disarm_cancel(detail::op_base* op) noexcept {
    if (op->cancel_id_ == 0)
      return;
    std::lock_guard lock(cancel_mutex_);
    cancellable_.erase(op->cancel_id_);
    op->cancel_id_ = 0;
  }
  /// Ends a started operation's accounting after it completed at once.
  void finish_inline(detail::op_base* op) noexcept {
    disarm_cancel(op);
    outstanding_.fetch_sub(1, std::memory_order_relaxed);
  }

  /// Takes back a completion post()ed and not yet run (call it on the thread that drives the loop); false if
  /// it is in neither queue.
  bool withdraw_posted(detail::op_base* op) noexcept {
    bool removed = ready_.remove(op);
    if (!removed) {
      std::lock_guard lock(remote_mutex_);
      removed = remote_ready_.remove(op);
    }
    if (removed)
      outstanding_.fetch_sub(1, std::memory_order_relaxed);
    return removed;
  }

  /// Adds a timer (on the loop's thread, or queued for it).
  void start_timer(detail::timer_op* t) {
    outstanding_.fetch_add(1, std::memory_order_relaxed);
    if (!may_touch_backend()) {
      std::lock_guard lock(remote_mutex_);
      remote_timers_.push_back(t);
      wake_locked();
      return;
    }
    timers_.push(t);
  }

  /// Takes a timer out of the loop before it fires, without running its completion. Call it on the thread
  /// that drives the loop (or before any thread does).
  void withdraw_timer(detail::timer_op* t) noexcept {
    disarm_cancel(t);
    bool removed = timers_.remove(t) || ready_.remove(t);
    if (!removed) {
      std::lock_guard lock(remote_mutex_);
      for (auto it = remote_timers_.begin(); it != remote_timers_.end(); ++it)
        if (*it == t) {
          remote_timers_.erase(it);
          removed = true;
          break;
        }
    }
    if (removed)
      outstanding_.fetch_sub(1, std::memory_order_relaxed);
  }

  /// Before the descriptor is closed: completes every operation waiting on `fd` (epoll), or hands the kernel
  /// the operations queued for it (io_uring), so that none reaches a descriptor that reuses the number.
  void release_fd(int fd) {
    {
      // why: an operation on `fd` started from another thread and not yet taken in by the loop would reach
      // whatever descriptor gets the number after the close: it ends now, cancelled
      std::lock_guard lock(remote_mutex_);
      detail::op_queue keep;
      while (auto* op = static_cast<detail::io_op*>(remote_starts_.pop())) {
        if (op->fd_ == fd) {
          op->result_ = -ECANCELED;
          remote_ready_.push(op);
        } else {
          keep.push(op);
        }
      }
      remote_starts_.splice(keep);
    }
#if FERRY_WITH_URING
    if (uring_)
      uring_->note_released(fd);
#endif
    if (!may_touch_backend())
      return;
    if (epoll_)
      epoll_->release_fd(fd);
#if FERRY_WITH_URING
    if (uring_)
      uring_->release_fd(fd);
#endif
  }

  /// Posts a completion to run on the loop's thread.
  void post(detail::op_base* op) noexcept {
    outstanding_.fetch_add(1, std::memory_order_relaxed);
    if (running_in_this_thread()) {
      ready_.push(op);
      return;
    }
    std::lock_guard lock(remote_mutex_);
    remote_ready_.push(op);
    wake_locked();
  }

private:
  struct cancel_entry {
    detail::op_base* op;
    bool is_timer;
    bool started;
  };

  static io_context*& current() noexcept {
    static thread_local io_context* ctx = nullptr;
    return ctx;
  }
  // why: the backend and the timers belong to the thread that drives the loop (the last one that did, also
  // between its runs; before any run, whoever sets things up). Other threads hand work over through the
  // remote queues.
  bool may_touch_backend() const noexcept {
    auto owner = owner_.load(std::memory_order_acquire);
    return owner == std::thread::id{} || owner == std::this_thread::get_id();
  }

  bool start_here(detail::io_op* op) {
    if (op->cancel_id_ != 0) {
      std::lock_guard lock(cancel_mutex_);
      if (auto it = cancellable_.find(op->cancel_id_); it != cancellable_.end())
        it->second.started = true;
    }
#if FERRY_WITH_URING
    if (uring_)
      return uring_->start(op);
#endif
    if (!epoll_->start(op))
      return false;
    // why: an operation that completes at once lets its coroutine run on without returning to the loop; after
    // a streak of those, deliver one through the ready queue so timers and other coroutines get their turn.
    if (++inline_streak_ < 32)
      return true;
    inline_streak_ = 0;
    ready_.push(op);
    return false;
  }

  void post_remote_start(detail::io_op* op) {
    std::lock_guard lock(remote_mutex_);
    remote_starts_.push(op);
    wake_locked();
  }

  static void on_backend_completion(void* self, detail::op_base* op) noexcept {
    static_cast<io_context*>(self)->ready_.push(op);
  }

  void wake() noexcept {
    std::lock_guard lock(remote_mutex_);
    wake_locked();
  }
  void wake_locked() noexcept {
    if (wake_pending_)
      return;
    wake_pending_ = true;
#if FERRY_WITH_URING
    if (uring_) {
      uring_->wake();
      return;
    }
#endif
    if (epoll_)
      epoll_->wake();
  }

  /// One turn of the loop. Returns the number of handlers run (0 or 1).
  std::size_t step(bool block, bool ignore_outstanding = false) {
    io_context*& cur = current();
    io_context* previous = cur;
    cur = this;
    if (owner_.load(std::memory_order_relaxed) != std::this_thread::get_id())
      owner_.store(std::this_thread::get_id(), std::memory_order_release);
    struct restore {
      io_context*& cur;
      io_context* previous;
      ~restore() { cur = previous; }
    } restore_current{cur, previous};

    for (;;) {
      if (stopped())
        return 0;
      // why: also look for due timers, cancellations and other threads' work every so often while handlers
      // keep queueing more handlers, so that a busy loop cannot starve them.
      if (ready_.empty() || ++handlers_since_gather_ >= 64) {
        handlers_since_gather_ = 0;
        gather(false, ignore_outstanding);
      }
      if (auto* op = ready_.pop()) {
        outstanding_.fetch_sub(1, std::memory_order_relaxed);
        if (op->cancel_id_ != 0)
          disarm_cancel(op);
        op->complete_(op);
#if FERRY_WITH_URING
        if (uring_)
          uring_->flush_files();
#endif
        return 1;
      }
      if (!block)
        return 0;
      if (!ignore_outstanding && outstanding_.load(std::memory_order_acquire) == 0)
        return 0;
      gather(true, ignore_outstanding);
    }
  }

  /// Moves work handed over by other threads, due timers and backend completions into ready_.
  void gather(bool block, bool ignore_outstanding) {
    op_queue_and_starts incoming;
    std::vector<std::uint64_t> cancels;
    {
      std::lock_guard lock(remote_mutex_);
      incoming.ready.splice(remote_ready_);
      incoming.starts.splice(remote_starts_);
      incoming.timers.swap(remote_timers_);
      wake_pending_ = false;
    }
    {
      std::lock_guard lock(cancel_mutex_);
      cancels.swap(pending_cancels_);
    }
    ready_.splice(incoming.ready);
    for (auto* t : incoming.timers) {
      if (cancel_requested(t)) {
        t->result_ = -ECANCELED;
        ready_.push(t);
      } else {
        timers_.push(t);
      }
    }
    while (auto* op = static_cast<detail::io_op*>(incoming.starts.pop())) {
      if (cancel_requested(op)) {
        op->result_ = -ECANCELED;
        ready_.push(op);
      } else if (start_here(op)) {
        ready_.push(op);
      }
    }
    for (std::uint64_t id : cancels)
      cancel_now(id);

    auto now = clock::now();
    while (!timers_.empty() && timers_.top()->deadline_ <= now) {
      auto* t = timers_.top();
      timers_.remove(t);
      t->result_ = 0;
      ready_.push(t);
    }

    ::timespec zero{0, 0};
    ::timespec until{};
    const ::timespec* timeout = &zero;
    if (block && ready_.empty() && !stopped()) {
      timeout = nullptr;
      if (!timers_.empty()) {
        auto ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(timers_.top()->deadline_ - now).count();
        if (ns < 0)
          ns = 0;
        until.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
        until.tv_nsec = static_cast<long>(ns % 1'000'000'000);
        timeout = &until;
      }
      std::lock_guard lock(remote_mutex_);
      if (!remote_ready_.empty() || !remote_starts_.empty() || !remote_timers_.empty())
        timeout = &zero;
      // why: a work_guard let go on another thread after this gather cleared wake_pending_ wakes the loop,
      // but one let go just before may have found the flag still set from a wake-up whose eventfd write an
      // earlier wait already consumed, and written nothing: the count is looked at again here
      if (!ignore_outstanding && outstanding_.load(std::memory_order_acquire) == 0)
        timeout = &zero;
    }
#if FERRY_WITH_URING
    if (uring_) {
      uring_->wait(timeout);
      return;
    }
#endif
    epoll_->wait(timeout);
  }

  struct op_queue_and_starts {
    detail::op_queue ready;
    detail::op_queue starts;
    std::vector<detail::timer_op*> timers;
  };

  bool cancel_requested(detail::op_base* op) {
    if (op->cancel_id_ == 0)
      return false;
    std::lock_guard lock(cancel_mutex_);
    auto it = cancellable_.find(op->cancel_id_);
    return it == cancellable_.end(); // why: cancel_now() already took it out while it waited to be started
  }

  void cancel_now(std::uint64_t id) {
    cancel_entry entry;
    {
      std::lock_guard lock(cancel_mutex_);
      auto it = cancellable_.find(id);
      if (it == cancellable_.end())
        return; // completed meanwhile
      entry = it->second;
      if (!entry.is_timer && !entry.started) {
        cancellable_.erase(it); // not yet handed to the backend: it is failed when its start arrives
        return;
      }
    }
    if (entry.is_timer) {
      auto* t = static_cast<detail::timer_op*>(entry.op);
      if (timers_.remove(t)) {
        t->result_ = -ECANCELED;
        ready_.push(t);
      } else {
        // why: a timer started from another thread may still be on its way here; without its entry it is
        // failed on arrival (gather) instead of sleeping out its time
        std::lock_guard lock(cancel_mutex_);
        cancellable_.erase(id);
      }
      return;
    }
#if FERRY_WITH_URING
    if (uring_) {
      uring_->cancel(static_cast<detail::io_op*>(entry.op));
      return;
    }
#endif
    epoll_->cancel(static_cast<detail::io_op*>(entry.op));
  }

  io_backend backend_ = io_backend::epoll;
  std::string note_;
  std::unique_ptr<detail::epoll_backend> epoll_;
#if FERRY_WITH_URING
  std::unique_ptr<detail::uring_backend> uring_;
#else
  void* uring_unused_ = nullptr; // why: the same layout with and without the component
#endif
  detail::op_queue ready_;
  detail::timer_heap timers_;
  std::atomic<std::size_t> outstanding_{0};
  std::atomic<bool> stopped_{false};
  std::atomic<std::thread::id> owner_{};
  unsigned handlers_since_gather_ = 0;
  unsigned inline_streak_ = 0;

  std::mutex remote_mutex_;
  detail::op_queue remote_ready_;
  detail::op_queue remote_starts_;
  std::vector<detail::timer_op*> remote_timers_;
  bool wake_pending_ = false;

  std::mutex cancel_mutex_;
  std::unordered_map<std::uint64_t, cancel_entry> cancellable_;
  std::vector<std::uint64_t> pending_cancels_;
  std::uint64_t last_cancel_id_ = 0;

  std::vector<::iovec> registered_;
};

namespace detail {
/// The stop_callback of a cancellable operation: asks its io_context, from any thread, to cancel it.
struct cancel_on_stop {
  io_context* ctx_;
  std::uint64_t id_;
  void operator()() const noexcept { ctx_->request_cancel(id_); }
};
} // namespace detail

} // namespace ferry::io

#include "ferry/io/timer_awaiter.hpp"
