#pragma once
// `ferry::tcp::detail::read_ahead`: the bytes of a connection received and not yet consumed. Both ends of the
// tcp transport take frame headers through it, so that one receive picks up every header already waiting (a
// peer keeps several requests or replies in flight) instead of one receive, and one turn of the loop, per
// frame. It holds a few headers only: whatever it takes beyond a header is the start of a payload, copied
// from here into its destination (a few hundred bytes at most); the rest of the payload is received straight
// into place.

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/transport/tcp/frame.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <span>
#include <stop_token>

namespace ferry::tcp::detail {

class read_ahead {
public:
  static constexpr std::size_t capacity = 16 * frame_header::size;
  /// A payload larger than twice this is received with the receiver woken only once this much is waiting.
  // why: every wake-up of the receiving thread is paid by the sender (on loopback the sender's context
  // delivers the packets and wakes the receiver); with 128 KiB a 1 MiB payload wakes its receiver about 8
  // times instead of 16-20. Measured on loopback with bbr: +4-12% for 1 MiB reads and writes over one and
  // four connections; with reno the same within noise (BENCHMARKS.md).
  static constexpr std::size_t wake_batch = 128 * 1024;

  std::size_t size() const noexcept { return end_ - begin_; }

  /// Makes `n` bytes available (n <= capacity); errc::closed when the peer closed, or the socket's error
  /// (errc::cancelled once `stop` is requested).
  task<result<void>> fill(io::tcp_socket& sock, std::size_t n, std::stop_token stop = {}) {
    if (size() >= n)
      co_return result<void>{};
    if (begin_ > 0) {
      std::memmove(buf_.data(), buf_.data() + begin_, size());
      end_ -= begin_;
      begin_ = 0;
    }
    while (end_ < n) {
      auto got = co_await sock.recv(std::span(buf_).subspan(end_), stop);
      if (!got)
        co_return fail(got.error());
      if (*got == 0)
        co_return fail(errc::closed, "tcp: the peer closed the connection");
      end_ += *got;
    }
    co_return result<void>{};
  }

  /// The next `frame_header::size` bytes, consumed (call after fill(sock, frame_header::size)).
  std::span<const std::byte, frame_header::size> take_header() noexcept {
    std::span<const std::byte, frame_header::size> h(buf_.data() + begin_, frame_header::size);
    begin_ += frame_header::size;
    return h;
  }

  /// Receives `into.size()` bytes: what was read ahead first, the rest straight from the socket.
  task<result<void>> take(io::tcp_socket& sock, std::span<std::byte> into, std::stop_token stop = {}) {
    std::size_t have = std::min(size(), into.size());
    if (have) {
      std::memcpy(into.data(), buf_.data() + begin_, have);
      begin_ += have;
    }
    if (have == into.size())
      co_return result<void>{};
    co_return co_await sock.recv_all_batched(into.subspan(have), wake_batch, std::move(stop));
  }

private:
  std::array<std::byte, capacity> buf_;
  std::size_t begin_ = 0, end_ = 0;
};

} // namespace ferry::tcp::detail
