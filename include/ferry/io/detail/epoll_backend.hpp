#pragma once
// The readiness backend: epoll plus non-blocking system calls. It takes over where io_uring is not permitted
// (sysctl kernel.io_uring_disabled, seccomp filters in containers). Socket operations wait for readiness;
// file operations run at once as pread/pwrite (regular files are always "ready").

#include "ferry/io/detail/completion_sink.hpp"
#include "ferry/io/detail/io_op.hpp"
#include "ferry/io/detail/op_queue.hpp"
#include "ferry/io/detail/perform_syscall.hpp"

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <system_error>
#include <unistd.h>
#include <unordered_map>

namespace ferry::io::detail {

class epoll_backend {
public:
  explicit epoll_backend(completion_sink sink) : sink_(sink) {
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0)
      throw std::system_error(errno, std::system_category(), "epoll_create1");
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) {
      int e = errno;
      ::close(epoll_fd_);
      throw std::system_error(e, std::system_category(), "eventfd");
    }
    ::epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = wake_fd_;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  }
  epoll_backend(const epoll_backend&) = delete;
  epoll_backend& operator=(const epoll_backend&) = delete;
  ~epoll_backend() {
    ::close(wake_fd_);
    ::close(epoll_fd_);
  }

  /// Tries the operation now. Returns true when it completed at once (result in op->result_, not handed to
  /// the sink); otherwise it waits for readiness and is handed to the sink later.
  bool start(io_op* op) {
    int r = perform_syscall(*op);
    if (r != -EAGAIN) {
      op->result_ = r;
      return true;
    }
    auto& st = fds_[op->fd_];
    (waits_for_input(op->code_) ? st.readers_ : st.writers_).push(op);
    rearm(op->fd_, st);
    return false;
  }

  /// Withdraws a waiting operation and completes it with -ECANCELED; no effect if it is not waiting.
  void cancel(io_op* op) {
    auto it = fds_.find(op->fd_);
    if (it == fds_.end())
      return;
    if (!it->second.readers_.remove(op) && !it->second.writers_.remove(op))
      return;
    op->result_ = -ECANCELED;
    sink_(op);
    rearm(op->fd_, it->second);
  }

  /// Ends every operation waiting on `fd` and forgets it (call before closing fd). Each one's call runs a
  /// last time: on a socket that was shut down it ends as it would under io_uring (a receive with 0 bytes, a
  /// send with EPIPE, an accept with EINVAL); one that would still wait, and a connect, end with -ECANCELED.
  void release_fd(int fd) {
    auto it = fds_.find(fd);
    if (it == fds_.end())
      return;
    // why: io_uring lets the kernel end the operations it holds when their socket is shut down, with the
    // call's own result; the same close must not end with another error here
    for (auto* q : {&it->second.readers_, &it->second.writers_})
      while (auto* op = static_cast<io_op*>(q->pop())) {
        // why: a connect still under way reads its socket's error, which is 0 until it ends: not a success
        int r = op->code_ == op_code::connect ? -EAGAIN : perform_syscall(*op);
        op->result_ = r == -EAGAIN ? -ECANCELED : r;
        sink_(op);
      }
    if (it->second.armed_)
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    fds_.erase(it);
  }

  /// Waits up to `timeout` (nullptr: forever; zero: just look) and hands completed operations to the sink.
  /// Returns the number handed over.
  std::size_t wait(const ::timespec* timeout) {
    ::epoll_event events[64];
    int n = ::epoll_pwait2(epoll_fd_, events, 64, timeout, nullptr);
    if (n < 0 && errno == ENOSYS) {
      long long wanted = timeout ? timeout->tv_sec * 1000LL + (timeout->tv_nsec + 999'999) / 1'000'000 : -1;
      int ms = wanted > 0x7fffffff ? 0x7fffffff : static_cast<int>(wanted);
      n = ::epoll_wait(epoll_fd_, events, 64, ms);
    }
    if (n < 0) {
      if (errno == EINTR)
        return 0;
      throw std::system_error(errno, std::system_category(), "epoll_wait");
    }
    std::size_t completed = 0;
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == wake_fd_) {
        std::uint64_t v;
        while (::read(wake_fd_, &v, sizeof v) > 0) {
        }
        continue;
      }
      auto it = fds_.find(fd);
      if (it == fds_.end())
        continue;
      std::uint32_t ev = events[i].events;
      if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
        completed += drain(it->second.readers_);
      if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        completed += drain(it->second.writers_);
      rearm(fd, it->second);
    }
    return completed;
  }

  /// Interrupts a wait from any thread.
  void wake() noexcept {
    std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(wake_fd_, &one, sizeof one);
  }

private:
  struct fd_state {
    op_queue readers_;
    op_queue writers_;
    std::uint32_t armed_ = 0; // the events registered with epoll; 0 when not registered
  };

  /// Completes every operation waiting on the descriptor with -err.
  void fail_waiters(fd_state& st, int err) noexcept {
    for (auto* q : {&st.readers_, &st.writers_})
      while (auto* op = q->pop()) {
        op->result_ = -err;
        sink_(op);
      }
  }

  std::size_t drain(op_queue& q) {
    std::size_t n = 0;
    while (!q.empty()) {
      auto* op = static_cast<io_op*>(q.front());
      int r = perform_syscall(*op);
      if (r == -EAGAIN)
        break;
      q.pop();
      op->result_ = r;
      sink_(op);
      ++n;
    }
    return n;
  }

  void rearm(int fd, fd_state& st) {
    std::uint32_t want =
        (st.readers_.empty() ? 0u : EPOLLIN | EPOLLRDHUP) | (st.writers_.empty() ? 0u : EPOLLOUT);
    if (want == st.armed_)
      return;
    if (want == 0) {
      // why: level-triggered interest with no waiter would spin on a closed peer; drop it until someone
      // waits.
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
      fds_.erase(fd);
      return;
    }
    ::epoll_event ev{};
    ev.events = want;
    ev.data.fd = fd;
    int r = ::epoll_ctl(epoll_fd_, st.armed_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    if (r < 0 && errno == ENOENT)
      r = ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    if (r < 0 && errno == EEXIST)
      r = ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
    if (r < 0) {
      // The descriptor cannot be watched (closed, or not pollable): fail its waiters rather than hang them.
      int err = errno;
      fail_waiters(st, err);
      fds_.erase(fd);
      return;
    }
    st.armed_ = want;
  }

  completion_sink sink_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::unordered_map<int, fd_state> fds_;
};

} // namespace ferry::io::detail
