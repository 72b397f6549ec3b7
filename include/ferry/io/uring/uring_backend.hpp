#pragma once
// The io_uring backend (liburing): every operation becomes one submission queue entry whose user_data is the
// operation itself; completions are reaped in batches. Part of the ferry::uring component.

#include "ferry/io/detail/completion_sink.hpp"
#include "ferry/io/detail/io_op.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <liburing.h>
#include <mutex>
#include <span>
#include <string>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace ferry::io::detail {

class uring_backend {
  static constexpr std::uint64_t ignore_tag = 0; // completions of cancel requests
  static constexpr std::uint64_t wake_tag = 1;   // the eventfd read that interrupts a wait

public:
  /// Sets up a ring of `entries`; throws std::system_error saying why io_uring cannot be used.
  uring_backend(completion_sink sink, unsigned entries, bool sqpoll) : sink_(sink) {
    ::io_uring_params params{};
    if (sqpoll) {
      params.flags |= IORING_SETUP_SQPOLL;
      params.sq_thread_idle = 50;
      sqpoll_ = true;
    }
    int r = ::io_uring_queue_init_params(entries, &ring_, &params);
    if (r < 0)
      throw std::system_error(-r, std::system_category(), explain_setup_failure(-r));
    // why: without EXT_ARG (before Linux 5.11) liburing waits with a timeout by queueing a timeout entry of
    // its own, whose completion is no operation of ours; without NODROP (before 5.5) a full completion queue
    // loses completions, and what waits for them hangs. Such a kernel gets the epoll backend instead
    if ((params.features & IORING_FEAT_EXT_ARG) == 0 || (params.features & IORING_FEAT_NODROP) == 0) {
      ::io_uring_queue_exit(&ring_);
      throw std::system_error(ENOSYS, std::system_category(),
                              "io_uring: this kernel's io_uring lacks waits with a timeout argument or "
                              "completions that are never dropped (Linux 5.11 or newer is needed)");
    }
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (wake_fd_ < 0) {
      int e = errno;
      ::io_uring_queue_exit(&ring_);
      throw std::system_error(e, std::system_category(), "eventfd");
    }
    arm_wake();
  }
  uring_backend(const uring_backend&) = delete;
  uring_backend& operator=(const uring_backend&) = delete;
  ~uring_backend() {
    ::io_uring_queue_exit(&ring_);
    ::close(wake_fd_);
  }

  /// Queues the operation; it is submitted with the next wait. Never completes at once.
  bool start(io_op* op) {
    op->cancel_asked_ = false;
    op->start_mark_ = releases_.load(std::memory_order_acquire);
    ::io_uring_sqe* sqe = next_sqe();
    switch (op->code_) {
    case op_code::nop:
      ::io_uring_prep_nop(sqe);
      break;
    case op_code::recv:
      ::io_uring_prep_recv(sqe, op->fd_, op->buf_, op->len_, op->flags_);
      break;
    case op_code::send:
      ::io_uring_prep_send(sqe, op->fd_, op->buf_, op->len_, op->flags_ | MSG_NOSIGNAL);
      break;
    case op_code::recvmsg:
      ::io_uring_prep_recvmsg(sqe, op->fd_, op->msg_, static_cast<unsigned>(op->flags_));
      break;
    case op_code::sendmsg:
      ::io_uring_prep_sendmsg(sqe, op->fd_, op->msg_, static_cast<unsigned>(op->flags_ | MSG_NOSIGNAL));
      break;
    case op_code::accept:
      ::io_uring_prep_accept(sqe, op->fd_, op->addr_, op->addrlen_out_, SOCK_NONBLOCK | SOCK_CLOEXEC);
      break;
    case op_code::connect:
      ::io_uring_prep_connect(sqe, op->fd_, op->addr_, op->addrlen_);
      break;
    case op_code::read:
      ::io_uring_prep_read(sqe, op->fd_, op->buf_, op->len_, op->offset_);
      break;
    case op_code::write:
      ::io_uring_prep_write(sqe, op->fd_, op->buf_, op->len_, op->offset_);
      break;
    case op_code::read_fixed:
      ::io_uring_prep_read_fixed(sqe, op->fd_, op->buf_, op->len_, op->offset_, op->buf_index_);
      break;
    case op_code::write_fixed:
      ::io_uring_prep_write_fixed(sqe, op->fd_, op->buf_, op->len_, op->offset_, op->buf_index_);
      break;
    }
    ::io_uring_sqe_set_data64(sqe, reinterpret_cast<std::uint64_t>(static_cast<op_base*>(op)));
    ++unsubmitted_;
    if (is_file_op(op->code_))
      files_waiting_ = true;
    return false;
  }

  /// Asks the kernel to cancel an operation in flight; it then completes with -ECANCELED (or its own result
  /// if it finished first).
  void cancel(io_op* op) {
    op->cancel_asked_ = true;
    ::io_uring_sqe* sqe = next_sqe();
    ::io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(static_cast<op_base*>(op)), 0);
    ::io_uring_sqe_set_data64(sqe, ignore_tag);
    ++unsubmitted_;
  }

  /// Before a descriptor is closed: submits what is queued. Sockets are shut down by their owner before
  /// closing, which ends the operations the kernel holds; one still queued here would otherwise reach the
  /// kernel after the close, on whatever descriptor then has the number.
  void release_fd(int) noexcept {
    if (unsubmitted_ && ::io_uring_submit(&ring_) >= 0)
      unsubmitted_ = 0;
    // why: with SQPOLL, submitting only hands the entries to the kernel's polling thread, which may take them
    // after the close; the close waits until it has (a few microseconds; it wakes the thread if it sleeps)
    if (!sqpoll_)
      return;
    // why: bounded: a polling thread that takes nothing (it died) must not hang the loop; what is left then
    // is what the note_released() mark keeps from being submitted again after a cancellation
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    while (::io_uring_sq_ready(&ring_) != 0 && std::chrono::steady_clock::now() < give_up) {
      int r = ::io_uring_submit(&ring_);
      if (r == -EBUSY)
        reap(); // why: the completion queue is full; only this thread drains it
      else if (r < 0 && r != -EAGAIN && r != -EINTR)
        break;
    }
  }

  /// Notes that `fd` is about to be closed (from any thread): an operation on it that the kernel cancelled
  /// unasked is then not submitted again (the number may already name another descriptor).
  void note_released(int fd) {
    if (fd < 0)
      return;
    std::lock_guard lock(released_mutex_);
    if (released_at_.size() <= static_cast<std::size_t>(fd))
      released_at_.resize(static_cast<std::size_t>(fd) + 1, 0);
    released_at_[static_cast<std::size_t>(fd)] = releases_.fetch_add(1, std::memory_order_acq_rel) + 1;
  }

  /// Submits what is queued, waits up to `timeout` (nullptr: forever; zero: just look) for completions and
  /// hands them to the sink. Returns the number handed over.
  std::size_t wait(const ::timespec* timeout) {
    ::io_uring_cqe* cqe = nullptr;
    int r;
    if (timeout && timeout->tv_sec == 0 && timeout->tv_nsec == 0) {
      r = unsubmitted_ ? ::io_uring_submit(&ring_) : 0;
    } else {
      ::__kernel_timespec ts{};
      if (timeout) {
        ts.tv_sec = timeout->tv_sec;
        ts.tv_nsec = timeout->tv_nsec;
      }
      r = ::io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, timeout ? &ts : nullptr, nullptr);
    }
    if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN)
      throw std::system_error(-r, std::system_category(), "io_uring_submit");
    // why: after -EBUSY or -EAGAIN (completions not yet reaped) the queued entries are still waiting; a loop
    // driven by poll() alone must try them again
    if (r >= 0 || r == -ETIME)
      unsubmitted_ = 0;
    files_waiting_ = false;
    return reap();
  }

  /// Submits what is queued if it includes file operations (the loop calls it after each handler).
  // why: a disk's throughput follows how many requests it holds; a file operation queued by a handler goes
  // to the kernel as soon as that handler returns instead of after the rest of the ready queue. What one
  // handler queues (every slice of a batch) still travels in one submission. Sockets keep the lazier
  // batching of wait(), which saves system calls where latency is not the disk's.
  void flush_files() {
    if (!files_waiting_)
      return;
    files_waiting_ = false;
    int r = ::io_uring_submit(&ring_);
    if (r >= 0)
      unsubmitted_ = 0;
  }

  /// Interrupts a wait from any thread.
  void wake() noexcept {
    std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(wake_fd_, &one, sizeof one);
  }

  /// Registers fixed buffers for read_fixed/write_fixed (replacing any registered before).
  int register_buffers(std::span<const ::iovec> buffers) noexcept {
    if (buffers_registered_)
      ::io_uring_unregister_buffers(&ring_);
    buffers_registered_ = false;
    if (buffers.empty())
      return 0;
    int r = ::io_uring_register_buffers(&ring_, buffers.data(), static_cast<unsigned>(buffers.size()));
    buffers_registered_ = r == 0;
    return r;
  }

  /// Why io_uring_setup failed, in words a user can act on.
  static std::string explain_setup_failure(int err) {
    switch (err) {
    case EPERM:
      return "io_uring_setup: not permitted (sysctl kernel.io_uring_disabled is 1 or 2, or a seccomp filter "
             "blocks "
             "io_uring; allow it or use the epoll backend)";
    case ENOSYS:
      return "io_uring_setup: this kernel has no io_uring (Linux 5.11 or newer is needed)";
    case ENOMEM:
      return "io_uring_setup: out of locked memory for the ring (raise RLIMIT_MEMLOCK or use fewer entries)";
    case EINVAL:
      return "io_uring_setup: parameters rejected by this kernel (entries or setup flags)";
    default:
      return "io_uring_setup failed";
    }
  }

private:
  ::io_uring_sqe* next_sqe() {
    ::io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
    while (!sqe) {
      // why: the submission queue is full; hand it to the kernel and take the next free slot.
      int r = ::io_uring_submit(&ring_);
      if (r < 0 && r != -EBUSY && r != -EAGAIN && r != -EINTR)
        throw std::system_error(-r, std::system_category(), "io_uring_submit");
      unsubmitted_ = 0;
      sqe = ::io_uring_get_sqe(&ring_);
      if (!sqe)
        reap();
    }
    return sqe;
  }

  std::size_t reap() {
    std::size_t n = 0;
    unsigned head;
    unsigned seen = 0;
    ::io_uring_cqe* cqe;
    bool rearm = false;
    std::vector<io_op*> again; // why: started after the completions are consumed (a start may reap)
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      std::uint64_t tag = ::io_uring_cqe_get_data64(cqe);
      if (tag == ignore_tag)
        continue;
      if (tag == wake_tag) {
        rearm = true;
        continue;
      }
      auto* op = reinterpret_cast<io_op*>(tag); // why: timers and posted work never enter the ring
      op->result_ = cqe->res;
      // why: the kernel cancels what a thread submitted when that thread exits, and the thread that drives a
      // loop may change (a transfer_handle's wait() on one thread, then another's); an operation nobody here
      // asked to cancel has not happened yet, and goes in again, unless its descriptor was released since
      // it started. A connect may have begun: it fails as aborted, which its callers retry.
      if (cqe->res == -ECANCELED && !op->cancel_asked_) {
        if (op->code_ == op_code::connect) {
          op->result_ = -ECONNABORTED;
        } else if (!released_since(op->fd_, op->start_mark_)) {
          again.push_back(op);
          continue;
        }
      }
      sink_(static_cast<op_base*>(op));
      ++n;
    }
    ::io_uring_cq_advance(&ring_, seen);
    for (io_op* op : again)
      start(op);
    if (rearm)
      arm_wake();
    return n;
  }

  void arm_wake() {
    ::io_uring_sqe* sqe = next_sqe();
    ::io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof wake_value_, 0);
    ::io_uring_sqe_set_data64(sqe, wake_tag);
    ++unsubmitted_;
  }

  bool released_since(int fd, std::uint64_t mark) {
    std::lock_guard lock(released_mutex_);
    return fd >= 0 && static_cast<std::size_t>(fd) < released_at_.size() &&
           released_at_[static_cast<std::size_t>(fd)] > mark;
  }

  completion_sink sink_;
  ::io_uring ring_{};
  int wake_fd_ = -1;
  bool sqpoll_ = false;
  std::uint64_t wake_value_ = 0;
  unsigned unsubmitted_ = 0;
  bool buffers_registered_ = false;
  bool files_waiting_ = false;             // a file operation is among the unsubmitted ones
  std::atomic<std::uint64_t> releases_{0}; // descriptors released so far
  std::mutex released_mutex_;
  std::vector<std::uint64_t> released_at_; // by descriptor: the value of releases_ its last release made
};

} // namespace ferry::io::detail
