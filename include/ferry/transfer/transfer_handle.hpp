#pragma once
/// `ferry::transfer_handle`: a batch started with `transfer_engine::submit()`, for code without coroutines.
/// `ready()` checks without blocking; `wait()` blocks until the batch is done. When nobody else drives the
/// engine's io_context (no run_in_background()), both drive it on the calling thread, one thread at a time:
/// handles waited for on several threads take turns. (A thread of yours that runs the io_context itself
/// does not take part in the turns: then call them only from that thread, or use run_in_background().)
///
///   auto h = engine.submit(batch);
///   while (!h.ready()) do_other_work();
///   ferry::batch_result r = h.wait();

#include "ferry/io/io_context.hpp"
#include "ferry/transfer/transfer_batch.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace ferry {

class transfer_handle {
public:
  /// Whose turn it is to drive an engine's loop. Shared by the engine and its handles: a handle's wait() may
  /// still be looking at it while the engine is destroyed.
  struct driver_turn {
    std::mutex driving;                  // held by the thread that drives the loop
    std::atomic<bool> background{false}; // a thread of the engine's own runs the loop
    std::atomic<bool> wanted{false};     // the engine's destructor waits for the turn: handles leave it be
    /// The turn, unless it is taken or wanted by the engine (then nobody else's).
    std::unique_lock<std::mutex> try_take() {
      std::unique_lock<std::mutex> turn(driving, std::defer_lock);
      if (!wanted.load(std::memory_order_acquire))
        (void)turn.try_lock();
      return turn;
    }
  };

  struct shared_state {
    std::mutex mutex;
    std::condition_variable cv;
    std::optional<batch_result> result;
    io::io_context* io = nullptr;
    std::shared_ptr<driver_turn> turn; // the engine's
    bool driven_elsewhere() const noexcept { return turn->background.load(std::memory_order_acquire); }
    void set(batch_result r) {
      std::lock_guard lock(mutex);
      result = std::move(r);
      cv.notify_all();
    }
    bool has_result() {
      std::lock_guard lock(mutex);
      return result.has_value();
    }
  };

  explicit transfer_handle(std::shared_ptr<shared_state> s) noexcept : state_(std::move(s)) {}

  /// True once the batch is done (runs ready handlers first when this thread drives the loop).
  bool ready() {
    // why: a handle may outlive its engine (whose destruction ends every batch); then only the result is left
    if (state_->has_result())
      return true;
    if (!state_->driven_elsewhere())
      if (auto turn = state_->turn->try_take(); turn && !state_->has_result())
        state_->io->poll();
    return state_->has_result();
  }

  /// Blocks until the batch is done and yields its result (the same one each time it is asked).
  batch_result wait() {
    // why: as in ready(): a handle whose batch has ended may have outlived its engine
    std::optional<io::io_context::work_guard> busy; // one for the whole wait: a release may wake the loop
    while (!state_->has_result()) {
      if (state_->driven_elsewhere()) {
        std::unique_lock lock(state_->mutex);
        state_->cv.wait(lock, [&] { return state_->result.has_value(); });
        break;
      }
      auto turn = state_->turn->try_take();
      // why: looked at again with the turn held: another thread's turn may have ended the batch since, and
      // then nothing may be left to run (run_one would wait for ever), nor an engine left to run it
      if (turn && state_->has_result())
        break;
      if (turn && !state_->io->stopped()) {
        // why: keeps run_one() waiting while copies run elsewhere; one handler a turn, so that a thread whose
        // batch the driver's loop finishes takes over if the driver leaves first
        if (!busy)
          busy.emplace(*state_->io);
        state_->io->run_one();
        continue;
      }
      if (turn)
        turn.unlock();
      // another thread drives the loop (it runs what ends this batch too), or the loop was stopped: wait
      // for the result a while, then look again
      std::unique_lock lock(state_->mutex);
      state_->cv.wait_for(lock, std::chrono::milliseconds(1), [&] { return state_->result.has_value(); });
    }
    std::lock_guard lock(state_->mutex);
    return *state_->result;
  }

private:
  std::shared_ptr<shared_state> state_;
};

} // namespace ferry
