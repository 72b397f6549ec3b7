#pragma once
/// `ferry::verbs::completion_worker`: a thread that drains one NIC's completion queue and hands batches of
/// work completions (and asynchronous device events) to the io_context's thread, which owns all transport
/// state. It spins on the queue for a bounded time after the last completion (`spin`: zero for lowest CPU
/// use, some microseconds for lowest latency) and then sleeps on the completion channel.
///
///   ferry::verbs::completion_worker w(ctx, nic, 0, {this, &on_completions, &on_event}, 20us);
///
// why: a thread, not the io_context, waits on the completion channel: io_context offers no readiness wait on
// arbitrary descriptors, and a completion channel must be read through ibv_get_cq_event anyway.

#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/transport/verbs/nic_context.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <infiniband/verbs.h>
#include <memory>
#include <mutex>
#include <poll.h>
#include <span>
#include <sys/eventfd.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace ferry::verbs {

/// An asynchronous event of the device (port down, queue pair fatal, device fatal ...).
struct device_event {
  ::ibv_event_type type{};
  std::uint32_t qp_num = 0; ///< for queue pair events
  std::uint8_t port = 0;    ///< for port events
};

/// Where a worker delivers; both run on the io_context's thread.
struct completion_sink {
  void* owner = nullptr;
  void (*completions)(void* owner, std::size_t nic, std::span<const ::ibv_wc> wcs) noexcept = nullptr;
  void (*event)(void* owner, std::size_t nic, const device_event& e) noexcept = nullptr;
};

class completion_worker {
  // why: shared with the posted operation, which may still sit in the loop's queue after the worker went
  struct shared : io::detail::op_base {
    std::mutex mutex;
    std::vector<::ibv_wc> wcs;
    std::vector<device_event> events;
    bool posted = false;
    bool owner_alive = true;
    completion_sink sink;
    std::size_t nic = 0;
    std::shared_ptr<shared> keep; // set while posted
    std::vector<::ibv_wc> taken_wcs;
    std::vector<device_event> taken_events;
  };

public:
  completion_worker(io::io_context& io, nic_context& nic, std::size_t index, completion_sink sink,
                    std::chrono::microseconds spin = std::chrono::microseconds(0))
      : io_(io), nic_(nic), spin_(spin), state_(std::make_shared<shared>()) {
    state_->sink = sink;
    state_->nic = index;
    state_->complete_ = &deliver;
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }
  completion_worker(const completion_worker&) = delete;
  completion_worker& operator=(const completion_worker&) = delete;
  ~completion_worker() {
    stop();
    if (stop_fd_ >= 0)
      ::close(stop_fd_);
  }

  result<void> start() {
    if (stop_fd_ < 0)
      return fail(errc::invalid_state, "verbs: completion worker has no eventfd");
    if (thread_.joinable())
      return {};
    if (int r = ::ibv_req_notify_cq(nic_.cq(), 0); r != 0)
      return fail_errno(-r, "ibv_req_notify_cq");
    thread_ = std::thread([this] { run(); });
    return {};
  }

  /// Stops the thread; nothing is delivered afterwards.
  void stop() noexcept {
    if (thread_.joinable()) {
      stopping_.store(true);
      std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(stop_fd_, &one, sizeof one);
      thread_.join();
    }
    std::lock_guard lock(state_->mutex);
    state_->owner_alive = false;
  }

private:
  void run() {
    std::vector<::ibv_wc> wcs(64);
    unsigned unacked = 0;
    auto last = std::chrono::steady_clock::now();
    while (!stopping_.load(std::memory_order_relaxed)) {
      int n = ::ibv_poll_cq(nic_.cq(), static_cast<int>(wcs.size()), wcs.data());
      if (n > 0) {
        push(std::span(wcs.data(), static_cast<std::size_t>(n)), {});
        last = std::chrono::steady_clock::now();
        continue;
      }
      if (spin_.count() > 0 && std::chrono::steady_clock::now() - last < spin_)
        continue;
      // Re-arm, then look once more: a completion between the last poll and the arming raises no event.
      ::ibv_req_notify_cq(nic_.cq(), 0);
      n = ::ibv_poll_cq(nic_.cq(), static_cast<int>(wcs.size()), wcs.data());
      if (n > 0) {
        push(std::span(wcs.data(), static_cast<std::size_t>(n)), {});
        last = std::chrono::steady_clock::now();
        continue;
      }
      ::pollfd fds[3] = {
          {nic_.channel()->fd, POLLIN, 0}, {nic_.context()->async_fd, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (::poll(fds, 3, 1000) <= 0)
        continue;
      if (fds[0].revents & POLLIN) {
        ::ibv_cq* cq = nullptr;
        void* cq_context = nullptr;
        while (::ibv_get_cq_event(nic_.channel(), &cq, &cq_context) == 0)
          ++unacked;
        // why: acknowledging takes a lock; do it in batches (every event must be acked before the CQ goes)
        if (unacked >= 64) {
          ::ibv_ack_cq_events(nic_.cq(), unacked);
          unacked = 0;
        }
      }
      if (fds[1].revents & POLLIN) {
        ::ibv_async_event ev{};
        std::vector<device_event> events;
        while (::ibv_get_async_event(nic_.context(), &ev) == 0) {
          device_event d;
          d.type = ev.event_type;
          if (ev.event_type == IBV_EVENT_QP_FATAL || ev.event_type == IBV_EVENT_QP_REQ_ERR ||
              ev.event_type == IBV_EVENT_QP_ACCESS_ERR || ev.event_type == IBV_EVENT_QP_LAST_WQE_REACHED)
            d.qp_num = ev.element.qp ? ev.element.qp->qp_num : 0;
          if (ev.event_type == IBV_EVENT_PORT_ERR || ev.event_type == IBV_EVENT_PORT_ACTIVE)
            d.port = static_cast<std::uint8_t>(ev.element.port_num);
          ::ibv_ack_async_event(&ev);
          events.push_back(d);
        }
        if (!events.empty())
          push({}, events);
      }
    }
    if (unacked)
      ::ibv_ack_cq_events(nic_.cq(), unacked);
  }

  void push(std::span<const ::ibv_wc> wcs, const std::vector<device_event>& events) {
    std::lock_guard lock(state_->mutex);
    state_->wcs.insert(state_->wcs.end(), wcs.begin(), wcs.end());
    state_->events.insert(state_->events.end(), events.begin(), events.end());
    if (state_->posted)
      return;
    state_->posted = true;
    state_->keep = state_;
    io_.post(state_.get());
  }

  // On the loop's thread.
  static void deliver(io::detail::op_base* op) noexcept {
    auto* s = static_cast<shared*>(op);
    std::shared_ptr<shared> keep;
    {
      std::lock_guard lock(s->mutex);
      s->posted = false;
      keep = std::move(s->keep);
      s->taken_wcs.clear();
      s->taken_events.clear();
      s->taken_wcs.swap(s->wcs);
      s->taken_events.swap(s->events);
      if (!s->owner_alive)
        return;
    }
    for (auto& e : s->taken_events)
      s->sink.event(s->sink.owner, s->nic, e);
    if (!s->taken_wcs.empty())
      s->sink.completions(s->sink.owner, s->nic, s->taken_wcs);
  }

  io::io_context& io_;
  nic_context& nic_;
  std::chrono::microseconds spin_;
  std::shared_ptr<shared> state_;
  int stop_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

} // namespace ferry::verbs
