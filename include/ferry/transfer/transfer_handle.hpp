#pragma once
/// `ferry::transfer_handle`: a batch started with `transfer_engine::submit()`, for code without coroutines.
/// `ready()` checks without blocking; `wait()` blocks until the batch is done. When nobody else drives the
/// engine's io_context (no run_in_background()), both drive it on the calling thread.
///
///   auto h = engine.submit(batch);
///   while (!h.ready()) do_other_work();
///   ferry::batch_result r = h.wait();

#include "ferry/io/io_context.hpp"
#include "ferry/transfer/transfer_batch.hpp"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace ferry {

class transfer_handle {
public:
  struct shared_state {
    std::mutex mutex;
    std::condition_variable cv;
    std::optional<batch_result> result;
    io::io_context* io = nullptr;
    const std::atomic<bool>* background = nullptr; // the engine's: another thread runs its loop
    bool driven_elsewhere() const noexcept {
      return background && background->load(std::memory_order_acquire);
    }
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
      state_->io->poll();
    return state_->has_result();
  }

  /// Blocks until the batch is done and yields its result (once).
  batch_result wait() {
    // why: as in ready(): a handle whose batch has ended may have outlived its engine
    if (!state_->has_result()) {
      if (state_->driven_elsewhere()) {
        std::unique_lock lock(state_->mutex);
        state_->cv.wait(lock, [&] { return state_->result.has_value(); });
      } else {
        io::io_context::work_guard busy(
            *state_->io); // why: keeps run_one() waiting while copies run elsewhere
        while (!state_->has_result())
          state_->io->run_one();
      }
    }
    std::lock_guard lock(state_->mutex);
    return std::move(*state_->result);
  }

private:
  std::shared_ptr<shared_state> state_;
};

} // namespace ferry
