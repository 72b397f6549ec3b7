#pragma once
/// `ferry::io::tcp_listener`: a listening TCP socket; `accept()` yields connected `tcp_socket`s.
///
///   auto l = ferry::io::tcp_listener::listen(ctx, *ferry::io::endpoint::parse("127.0.0.1:0"));
///   auto peer = co_await l->accept();

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/detail/congestion_control.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/operation.hpp"
#include "ferry/io/tcp_socket.hpp"

#include <cerrno>
#include <stop_token>
#include <string_view>
#include <sys/socket.h>
#include <unistd.h>
#include <utility>

namespace ferry::io {

class tcp_listener {
public:
  tcp_listener() = default;
  tcp_listener(tcp_listener&& o) noexcept : ctx_(o.ctx_), fd_(std::exchange(o.fd_, -1)) {}
  tcp_listener& operator=(tcp_listener&& o) noexcept {
    if (this != &o) {
      close();
      ctx_ = o.ctx_;
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~tcp_listener() { close(); }

  /// Binds and listens on `local` (port 0: the kernel picks one; see local_endpoint()).
  static result<tcp_listener> listen(io_context& ctx, const endpoint& local, int backlog = 1024) {
    int fd = ::socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return fail_errno(-errno, "socket");
    tcp_listener l;
    l.ctx_ = &ctx;
    l.fd_ = fd;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, local.data(), local.size()) < 0)
      return fail_errno(-errno, "bind");
    if (::listen(fd, backlog) < 0)
      return fail_errno(-errno, "listen");
    return l;
  }

  /// Chooses the congestion control algorithm of the connections accepted from now on (they inherit it).
  result<void> set_congestion_control(std::string_view name) noexcept {
    return detail::set_congestion_control(fd_, name);
  }

  /// Waits for the next connection.
  task<result<tcp_socket>> accept(std::stop_token stop = {}) {
    detail::io_op d;
    d.code_ = detail::op_code::accept;
    d.fd_ = fd_;
    auto fd = co_await operation<int>(*ctx_, d, "accept", std::move(stop));
    if (!fd)
      co_return fail(fd.error());
    tcp_socket s(*ctx_, *fd);
    s.set_no_delay(true);
    co_return std::move(s);
  }

  /// The address it listens on (with the port the kernel chose).
  result<endpoint> local_endpoint() const {
    ::sockaddr_storage ss{};
    ::socklen_t len = sizeof ss;
    if (::getsockname(fd_, reinterpret_cast<::sockaddr*>(&ss), &len) < 0)
      return fail_errno(-errno, "getsockname");
    return endpoint::from_sockaddr(reinterpret_cast<::sockaddr*>(&ss), len);
  }

  /// Stops listening; a pending accept completes with an error.
  void close() noexcept {
    if (fd_ < 0)
      return;
    ::shutdown(fd_, SHUT_RDWR);
    ctx_->release_fd(fd_);
    ::close(std::exchange(fd_, -1));
  }
  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }

private:
  io_context* ctx_ = nullptr;
  int fd_ = -1;
};

} // namespace ferry::io
