#pragma once
/// `ferry::io::tcp_socket`: a connected TCP socket driven by an io_context. Single calls (`recv`, `send`,
/// scatter-gather `recv`/`send` over iovecs) move what the kernel takes at once; `recv_all` / `send_all` loop
/// until everything moved. Every call takes an optional stop_token.
///
///   auto s = co_await ferry::io::tcp_socket::connect(ctx, *ferry::io::endpoint::parse("127.0.0.1:9000"));
///   if (s) co_await s->send_all(std::as_bytes(std::span(message)));

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/detail/congestion_control.hpp"
#include "ferry/io/detail/tcp_bytes_moved.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/operation.hpp"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace ferry::io {

class tcp_socket {
public:
  /// A recvmsg/sendmsg over the caller's iovecs (which must outlive the await).
  class [[nodiscard]] vectored_operation : public operation<std::size_t> {
  public:
    vectored_operation(io_context& ctx, const detail::io_op& d, const char* what,
                       std::span<const ::iovec> iov, std::stop_token stop) noexcept
        : operation<std::size_t>(ctx, d, what, std::move(stop)) {
      msg_.msg_iov = const_cast<::iovec*>(iov.data());
      msg_.msg_iovlen = iov.size();
      set_message(&msg_);
    }
    vectored_operation(vectored_operation&& o) noexcept : operation<std::size_t>(std::move(o)), msg_(o.msg_) {
      set_message(&msg_);
    }

  private:
    ::msghdr msg_{};
  };

  tcp_socket() = default;
  /// Adopts a connected, non-blocking socket descriptor.
  tcp_socket(io_context& ctx, int fd) noexcept : ctx_(&ctx), fd_(fd) {}
  tcp_socket(tcp_socket&& o) noexcept : ctx_(o.ctx_), fd_(std::exchange(o.fd_, -1)) {}
  tcp_socket& operator=(tcp_socket&& o) noexcept {
    if (this != &o) {
      close();
      ctx_ = o.ctx_;
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~tcp_socket() { close(); }

  /// Connects to `peer` (from `local`, if given: e.g. a distinct loopback address for a test "host").
  static task<result<tcp_socket>> connect(io_context& ctx, endpoint peer, std::stop_token stop = {},
                                          std::optional<endpoint> local = std::nullopt) {
    int fd = ::socket(peer.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      co_return fail_errno(-errno, "socket");
    tcp_socket s(ctx, fd);
    if (local && ::bind(fd, local->data(), local->size()) < 0)
      co_return fail_errno(-errno, "bind");
    detail::io_op d;
    d.code_ = detail::op_code::connect;
    d.fd_ = fd;
    d.addr_ = const_cast<::sockaddr*>(peer.data());
    d.addrlen_ = peer.size();
    auto r = co_await operation<void>(ctx, d, "connect", std::move(stop));
    if (!r)
      co_return fail(r.error());
    s.set_no_delay(true);
    co_return std::move(s);
  }

  /// Receives up to `buffer.size()` bytes; 0 means the peer closed its side.
  operation<std::size_t> recv(std::span<std::byte> buffer, std::stop_token stop = {}) {
    return recv_with(buffer, 0, std::move(stop));
  }
  /// Sends some of `data`; yields how much the kernel took.
  operation<std::size_t> send(std::span<const std::byte> data, std::stop_token stop = {}) {
    return send_with(data, 0, std::move(stop));
  }
  /// Scatter: receives into several buffers in order; 0 means the peer closed its side.
  vectored_operation recv(std::span<const ::iovec> buffers, std::stop_token stop = {}) {
    return vectored(detail::op_code::recvmsg, buffers, 0, std::move(stop));
  }
  /// Gather: sends from several buffers in order; yields how much the kernel took.
  vectored_operation send(std::span<const ::iovec> buffers, std::stop_token stop = {}) {
    return vectored(detail::op_code::sendmsg, buffers, 0, std::move(stop));
  }

  /// Receives exactly `buffer.size()` bytes; errc::closed if the peer closes first.
  task<result<void>> recv_all(std::span<std::byte> buffer, std::stop_token stop = {}) {
    while (!buffer.empty()) {
      auto n = co_await recv_with(buffer, MSG_WAITALL, stop);
      if (!n)
        co_return fail(n.error());
      if (*n == 0)
        co_return fail(errc::closed, "recv");
      buffer = buffer.subspan(*n);
      if (!buffer.empty() && fd_ < 0)
        co_return closed_midway(false);
    }
    co_return result<void>{};
  }
  /// Receives exactly `buffer.size()` bytes like recv_all, asking the kernel to wake the receiver only once
  /// `batch` bytes are waiting (SO_RCVLOWAT) while more than `batch` bytes of the buffer are still to come,
  /// so that a large payload is taken in a few large pieces. The low-water mark is 1 again when it returns.
  // why: the mark never exceeds what is still to arrive (the last `batch` bytes are received with a mark of
  // 1), so a peer that sends exactly the buffer's bytes always completes it; the kernel grows the receive
  // buffer to hold the mark (tcp_set_rcvlowat), so a mark cannot stall the sender either.
  task<result<void>> recv_all_batched(std::span<std::byte> buffer, std::size_t batch,
                                      std::stop_token stop = {}) {
    if (batch > 1 && buffer.size() > 2 * batch) {
      set_receive_low_water(static_cast<int>(batch));
      auto head = co_await recv_all(buffer.first(buffer.size() - batch), stop);
      set_receive_low_water(1);
      if (!head)
        co_return head;
      buffer = buffer.last(batch);
    }
    co_return co_await recv_all(buffer, stop);
  }
  /// Sets SO_RCVLOWAT: a receive waits until this many bytes are here (or the stream ends).
  void set_receive_low_water(int bytes) noexcept {
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof bytes);
  }

  /// Sends all of `data`.
  task<result<void>> send_all(std::span<const std::byte> data, std::stop_token stop = {}) {
    while (!data.empty()) {
      auto n = co_await send_with(data, MSG_WAITALL, stop);
      if (!n)
        co_return fail(n.error());
      data = data.subspan(*n);
      if (!data.empty() && fd_ < 0)
        co_return closed_midway(true);
    }
    co_return result<void>{};
  }
  /// Sends every byte of every buffer (the iovecs are copied; the memory they point to must outlive the
  /// call).
  task<result<void>> send_all(std::span<const ::iovec> buffers, std::stop_token stop = {}) {
    std::vector<::iovec> rest(buffers.begin(), buffers.end());
    co_return co_await transfer_all(rest, true, stop);
  }
  /// Fills every buffer completely; errc::closed if the peer closes first.
  task<result<void>> recv_all(std::span<const ::iovec> buffers, std::stop_token stop = {}) {
    std::vector<::iovec> rest(buffers.begin(), buffers.end());
    co_return co_await transfer_all(rest, false, stop);
  }

  /// Shuts down reading, writing or both (SHUT_RD, SHUT_WR, SHUT_RDWR); pending receives then complete.
  result<void> shutdown(int how = SHUT_RDWR) noexcept {
    if (::shutdown(fd_, how) < 0)
      return fail_errno(-errno, "shutdown");
    return {};
  }
  /// Hands the socket to the loop `ctx`: its operations run there from now on. Call it on the thread that
  /// drives the current loop, with no operation in flight.
  void move_to(io_context& ctx) noexcept {
    if (fd_ >= 0 && ctx_ && ctx_ != &ctx)
      ctx_->release_fd(fd_);
    ctx_ = &ctx;
  }
  /// Ends pending operations and closes the descriptor: on either backend, a waiting receive ends with 0
  /// bytes (recv_all: errc::closed) and a waiting send with EPIPE, as after a shutdown. Call it on the thread
  /// that drives the socket's loop, or while no thread does: from another thread while the loop runs, an
  /// operation waiting on the socket may not end (epoll) or may reach a descriptor that reuses the number
  /// (io_uring). From another thread, end the operations with shutdown() and let the loop's thread close.
  void close() noexcept {
    if (fd_ < 0)
      return;
    ::shutdown(fd_, SHUT_RDWR);
    ctx_->release_fd(fd_);
    ::close(std::exchange(fd_, -1));
  }

  void set_no_delay(bool on) noexcept {
    int v = on ? 1 : 0;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &v, sizeof v);
  }
  /// Chooses the congestion control algorithm (TCP_CONGESTION), e.g. "reno" or "cubic"; an error says why the
  /// kernel refused it (not available, or not allowed to this process).
  result<void> set_congestion_control(std::string_view name) noexcept {
    return detail::set_congestion_control(fd_, name);
  }
  /// The congestion control algorithm in use ("" if it cannot be read).
  std::string congestion_control() const { return detail::congestion_control(fd_); }
  /// Bytes this connection has moved so far, as the kernel counts them: those the peer acknowledged plus
  /// those received (TCP_INFO's tcpi_bytes_acked + tcpi_bytes_received). It changes whenever the stream moves
  /// in either direction, also in the middle of one large send or receive, so a watchdog can tell a slow
  /// transfer from a stalled one. 0 if the kernel does not say (before Linux 4.1).
  std::uint64_t bytes_moved() const noexcept { return detail::tcp_bytes_moved(fd_); }
  /// Sends TCP keepalive probes once the connection sat idle for `idle`, then every `interval`, and drops it
  /// after `probes` unanswered ones.
  void set_keepalive(std::chrono::seconds idle, std::chrono::seconds interval, int probes) noexcept {
    int on = 1, i = static_cast<int>(idle.count()), v = static_cast<int>(interval.count());
    ::setsockopt(fd_, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    ::setsockopt(fd_, IPPROTO_TCP, TCP_KEEPIDLE, &i, sizeof i);
    ::setsockopt(fd_, IPPROTO_TCP, TCP_KEEPINTVL, &v, sizeof v);
    ::setsockopt(fd_, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  }
  /// Sets SO_SNDBUF and SO_RCVBUF (the kernel may adjust them).
  void set_buffer_sizes(int bytes) noexcept {
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  }
  result<endpoint> local_endpoint() const { return name_of(::getsockname, "getsockname"); }
  result<endpoint> remote_endpoint() const { return name_of(::getpeername, "getpeername"); }

  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }
  io_context& context() const noexcept { return *ctx_; }

private:
  // why: MSG_WAITALL lets io_uring finish a whole buffer in one operation instead of one per arriving chunk;
  // the readiness backend adds MSG_DONTWAIT, which takes precedence, and the *_all loops finish the rest.
  operation<std::size_t> recv_with(std::span<std::byte> buffer, int flags, std::stop_token stop) {
    detail::io_op d;
    d.code_ = detail::op_code::recv;
    d.fd_ = fd_;
    d.flags_ = flags;
    d.buf_ = buffer.data();
    d.len_ = clamp(buffer.size());
    return operation<std::size_t>(*ctx_, d, "recv", std::move(stop));
  }
  operation<std::size_t> send_with(std::span<const std::byte> data, int flags, std::stop_token stop) {
    detail::io_op d;
    d.code_ = detail::op_code::send;
    d.fd_ = fd_;
    d.flags_ = flags;
    d.buf_ = const_cast<std::byte*>(data.data());
    d.len_ = clamp(data.size());
    return operation<std::size_t>(*ctx_, d, "send", std::move(stop));
  }
  vectored_operation vectored(detail::op_code code, std::span<const ::iovec> buffers, int flags,
                              std::stop_token stop) {
    detail::io_op d;
    d.code_ = code;
    d.fd_ = fd_;
    d.flags_ = flags;
    return vectored_operation(*ctx_, d, code == detail::op_code::sendmsg ? "sendmsg" : "recvmsg", buffers,
                              std::move(stop));
  }

  static std::uint32_t clamp(std::size_t n) noexcept {
    // why: one call moves at most 1 GiB; larger spans are finished by the *_all loops.
    return static_cast<std::uint32_t>(n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30));
  }

  task<result<void>> transfer_all(std::vector<::iovec>& rest, bool sending, std::stop_token stop) {
    std::size_t first = 0;
    bool moved_any = false;
    // why: sendmsg/recvmsg take at most IOV_MAX buffers per call.
    constexpr std::size_t max_iov = 1024;
    for (;;) {
      // why: empty buffers ask for nothing; a receive of only empty ones would read 0 and look like a close
      while (first < rest.size() && rest[first].iov_len == 0)
        ++first;
      if (first == rest.size())
        break;
      if (moved_any && fd_ < 0)
        co_return closed_midway(sending);
      std::span<const ::iovec> window(rest.data() + first, std::min(rest.size() - first, max_iov));
      // why: one co_await outside the conditional; g++ 12 miscompiles co_await inside conditions
      auto op =
          vectored(sending ? detail::op_code::sendmsg : detail::op_code::recvmsg, window, MSG_WAITALL, stop);
      auto n = co_await std::move(op);
      if (!n)
        co_return fail(n.error());
      if (*n == 0 && !sending)
        co_return fail(errc::closed, "recvmsg");
      std::size_t moved = *n;
      moved_any = true;
      while (moved > 0 && first < rest.size()) {
        auto& v = rest[first];
        std::size_t take = std::min(moved, v.iov_len);
        v.iov_base = static_cast<char*>(v.iov_base) + take;
        v.iov_len -= take;
        moved -= take;
        if (v.iov_len == 0)
          ++first;
      }
    }
    co_return result<void>{};
  }

  /// The end of an *_all call whose socket was closed (on this side) after part of it moved: what the
  /// kernel answers a call on a socket shut down, not an error about the descriptor that is gone.
  // why: io_uring ends a waiting call at the close with the part it moved, and the loop's next call would
  // find no descriptor; the readiness backend ends it at the close with the kernel's answer (EPIPE, or 0
  // bytes received): the two must read alike
  static tl::unexpected<error> closed_midway(bool sending) noexcept {
    return sending ? fail_errno(-EPIPE, "send") : fail(errc::closed, "recv");
  }

  template<class Fn>
  result<endpoint> name_of(Fn fn, const char* what) const {
    ::sockaddr_storage ss{};
    ::socklen_t len = sizeof ss;
    if (fn(fd_, reinterpret_cast<::sockaddr*>(&ss), &len) < 0)
      return fail_errno(-errno, what);
    return endpoint::from_sockaddr(reinterpret_cast<::sockaddr*>(&ss), len);
  }

  io_context* ctx_ = nullptr;
  int fd_ = -1;
};

} // namespace ferry::io
