#pragma once
// `ferry::io::detail::tcp_bytes_moved`: the bytes a TCP connection has moved in both directions (and
// `tcp_bytes_received`: in), from the kernel's TCP_INFO.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace ferry::io::detail {

/// tcpi_bytes_acked and tcpi_bytes_received of `fd`; zeros when the kernel's tcp_info is too old to carry
/// them.
// why: glibc's struct tcp_info ends before these fields and <linux/tcp.h> clashes with <netinet/tcp.h>; the
// kernel only ever appends to the struct, so the two counters sit at these offsets on every kernel that has
// them (Linux 4.1 and later)
inline std::array<std::uint64_t, 2> tcp_bytes_acked_and_received(int fd) noexcept {
  constexpr std::size_t acked_at = 120, received_at = 128, needed = received_at + 8;
  alignas(8) std::array<std::byte, 256> info{};
  ::socklen_t len = info.size();
  std::array<std::uint64_t, 2> counts{};
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, info.data(), &len) != 0 || len < needed)
    return counts;
  std::memcpy(&counts[0], info.data() + acked_at, 8);
  std::memcpy(&counts[1], info.data() + received_at, 8);
  return counts;
}

/// The bytes `fd` moved both ways: acknowledged by its peer, and received.
inline std::uint64_t tcp_bytes_moved(int fd) noexcept {
  auto [acked, received] = tcp_bytes_acked_and_received(fd);
  return acked + received;
}

/// The bytes `fd` received.
inline std::uint64_t tcp_bytes_received(int fd) noexcept {
  return tcp_bytes_acked_and_received(fd)[1];
}

} // namespace ferry::io::detail
